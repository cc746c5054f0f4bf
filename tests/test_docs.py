"""The OpenAPI document: valid, complete, with security and examples; the UIs work offline."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from mlops_backend import docs
from mlops_backend.docs import REDOC_JS

#: The event streams and the object each event's data carries.
STREAMS = {"/api/llm/stream": "StreamEvent", "/api/llm/chat/stream": "ChatStreamEvent",
           "/api/llm/models/pull": "PullEvent"}


def test_document_is_valid_openapi_3(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"] == "3.2.0"
    validate(document)


def test_swagger_ui_reads_a_valid_3_0_rendition(client):
    """flasgger's Swagger UI (3.28) renders only documents whose `openapi` starts with "3.0.": /docs
    loads the 3.0.3 rendition, which validates as 3.0 and says the same but for the streams' items."""
    page = client.get("/docs/").get_data(as_text=True)
    (url,) = re.findall(r'\burl: "([^"]+)"', page)
    assert url == "/openapi.json?openapi=3.0"
    document = client.get(url).get_json()
    assert document["openapi"] == "3.0.3"
    validate(document)
    full = client.get("/openapi.json").get_json()
    assert document["paths"].keys() == full["paths"].keys()
    assert document["components"]["schemas"].keys() == full["components"]["schemas"].keys()
    for path, name in STREAMS.items():
        media = document["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]
        assert media["schema"] == {"$ref": f"#/components/schemas/{name}"} and "itemSchema" not in media
    # ReDoc (2.5.4 reads 3.2 documents) keeps the full one.
    assert '<redoc spec-url="/openapi.json">' in client.get("/redoc").get_data(as_text=True)


def test_each_event_of_a_stream_is_described_with_its_json_data(client):
    """OpenAPI 3.2: `itemSchema` describes one event as SSE parsers give it, its `data` the JSON text of
    an open object (the relay may add fields) naming every field the gateway sends."""
    document = client.get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    for path, name in STREAMS.items():
        media = document["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]
        assert "schema" not in media, path
        item = media["itemSchema"]
        assert item["type"] == "object" and item["required"] == ["data"], path
        assert item["properties"]["data"] == {"type": "string", "contentMediaType": "application/json",
                                              "contentSchema": {"$ref": f"#/components/schemas/{name}"}}, path
        assert schemas[name]["additionalProperties"] is True, name
    statistics = {"done_reason", "total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                  "eval_count", "eval_duration"}
    assert {"text", "thinking", "logprobs", "done", "error"} | statistics <= schemas["StreamEvent"]["properties"].keys()
    assert schemas["StreamEvent"]["properties"].keys() | {"tool_calls"} == schemas["ChatStreamEvent"]["properties"].keys()
    assert {"status", "digest", "total", "completed", "done", "error"} <= schemas["PullEvent"]["properties"].keys()
    error = schemas["StreamError"]
    assert set(error["required"]) == {"title", "status", "detail"} and error["additionalProperties"] is True


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
    # Every keyed route is documented with the key and its 401, the services' and key management's included.
    for path, method in [("/api/llm/conversations", "post"), ("/api/llm/conversations/{conversation_id}", "get"),
                         ("/api/llm/conversations/{conversation_id}/messages", "post"),
                         ("/api/llm/documents", "post"), ("/api/keys", "get"), ("/api/key", "get")]:
        operation = document["paths"][path][method]
        assert "security" not in operation and "401" in operation["responses"], (path, method)
    assert "404" in document["paths"]["/api/llm/conversations/{conversation_id}/messages"]["post"]["responses"]


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


def test_a_missing_redoc_bundle_is_a_404_problem_and_redoc_still_answers(client, monkeypatch, tmp_path):
    """Where scripts/fetch-redoc.sh has not run, the bundle's route is a 404 problem (it was a 500), and
    /redoc says how to install it and where the document and Swagger UI are."""
    monkeypatch.setattr(docs, "REDOC_JS", str(tmp_path / "redoc" / "redoc.standalone.js"))
    response = client.get("/redoc/redoc.standalone.js")
    assert response.status_code == 404 and response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["status"] == 404 and problem["type"].endswith(":not-found"), problem
    assert "fetch-redoc.sh" in problem["detail"] and problem["request_id"] == response.headers["X-Request-ID"]
    page = client.get("/redoc")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "scripts/fetch-redoc.sh" in text and "<script" not in text and "<redoc" not in text
    assert 'href="/openapi.json"' in text and 'href="/docs/"' in text


def test_every_non_streaming_example_works_as_try_it_out_would_send_it(app, client):
    """Swagger UI's "Try it out" sends the documented example: each must succeed against Ollama."""
    from tests.support import API_KEY

    paths = client.get("/openapi.json").get_json()["paths"]
    operations = [(method, path, operation) for path, methods in paths.items() for method, operation in methods.items()
                  if operation["operationId"].startswith(("llm_", "models_"))]  # keyed LLM and model routes
    tried = []
    # A delete goes last: the other examples use the model it removes.
    for method, path, operation in sorted(operations, key=lambda item: item[0] == "delete"):
        success = min(code for code in operation["responses"] if code.startswith("2"))
        if "text/event-stream" in operation["responses"][success].get("content", {}):
            continue
        url = path
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                url = url.replace("{%s}" % parameter["name"], parameter["example"])
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example")
        response = client.open(url, method=method.upper(), json=body, headers={"X-API-Key": API_KEY})
        assert response.status_code == int(success), (method, path, response.get_data(as_text=True))
        tried.append(operation["operationId"])
    # models, generate, chat, embed, model details, running, delete
    assert len(tried) == 7, tried
