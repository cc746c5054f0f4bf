"""The OpenAPI document: valid, complete, with security and examples; the UIs work offline."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from mlops_backend.docs import REDOC_JS


def test_document_is_valid_openapi_3(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    validate(document)


def test_every_route_is_documented(app, client):
    paths = client.get("/openapi.json").get_json()["paths"]
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert path in paths, path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths[path], (path, method)


def test_security_scheme_and_public_routes(client):
    document = client.get("/openapi.json").get_json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKeyAuth"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerAuth"]["scheme"] == "bearer"
    assert {"ApiKeyAuth": []} in document["security"]
    assert document["paths"]["/health"]["get"]["security"] == []
    assert "security" not in document["paths"]["/api/llm/models"]["get"]


def test_errors_examples_and_stream_are_described(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    generate = paths["/api/llm/generate"]["post"]
    assert {"200", "400", "401", "404", "413", "422", "502", "503", "504"} <= set(generate["responses"])
    assert generate["requestBody"]["content"]["application/json"]["example"]["prompt"]
    problem = generate["responses"]["422"]["content"]["application/problem+json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/Problem"}
    stream = paths["/api/llm/stream"]["post"]["responses"]["200"]
    assert "text/event-stream" in stream["content"]
    assert '"done": true' in stream["description"] and '"error"' in stream["description"]
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    assert schemas["GenerateRequest"]["required"] == ["prompt"]
    assert schemas["Options"]["properties"]["top_p"]["maximum"] == 1


def test_swagger_ui_is_served_locally(client):
    page = client.get("/docs/").get_data(as_text=True)
    assert "/openapi.json" in page
    assets = re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', page)
    assert len(assets) >= 2
    for asset in assets:
        with client.get(asset) as response:
            assert response.status_code == 200, asset


def test_redoc_is_served_locally(client):
    page = client.get("/redoc").get_data(as_text=True)
    assert '<redoc spec-url="/openapi.json">' in page
    assert 'src="/redoc/redoc.standalone.js"' in page
    with client.get("/redoc/redoc.standalone.js") as response, open(REDOC_JS, "rb") as bundle:
        assert response.status_code == 200 and len(response.data) > 500_000
        assert bundle.read(100) == response.data[:100]


def test_every_non_streaming_example_works_as_try_it_out_would_send_it(app, client):
    """Swagger UI's "Try it out" sends the documented example: each must succeed against Ollama."""
    from tests.support import API_KEY

    paths = client.get("/openapi.json").get_json()["paths"]
    operations = [(method, path, operation) for path, methods in paths.items() for method, operation in methods.items()
                  if operation["operationId"].startswith("llm_")]  # keyed LLM routes only
    tried = []
    # A delete goes last: the other examples use the model it removes.
    for method, path, operation in sorted(operations, key=lambda item: item[0] == "delete"):
        success = min(code for code in operation["responses"] if code.startswith("2"))
        if "text/event-stream" in operation["responses"][success].get("content", {}):
            continue
        url = path
        for parameter in operation.get("parameters", []):
            url = url.replace("{%s}" % parameter["name"], parameter["example"])
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example")
        response = client.open(url, method=method.upper(), json=body, headers={"X-API-Key": API_KEY})
        assert response.status_code == int(success), (method, path, response.get_data(as_text=True))
        tried.append(operation["operationId"])
    # models, generate, chat, embed, model details, running, delete
    assert len(tried) == 7, tried
