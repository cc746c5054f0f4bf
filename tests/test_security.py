"""Auth on every non-public route, CORS for browsers, and the key kept out of sight."""

from __future__ import annotations

import re

import pytest
import requests

from mlops_backend import create_app
from tests.support import API_KEY

PUBLIC = {"/health", "/api/llm/health", "/openapi.json", "/docs/", "/redoc", "/redoc/redoc.standalone.js",
          "/docs/static/<path:filename>", "/oauth2-redirect.html", "/apidocs/index.html"}


def concrete(rule) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", "swagger-ui.css" if "static" in rule.rule else "x", rule.rule)


def test_every_route_but_the_public_ones_refuses_a_request_without_a_key(app, client):
    rules = list(app.url_map.iter_rules())
    assert {rule.rule for rule in rules} >= PUBLIC
    protected = [rule for rule in rules if rule.rule not in PUBLIC]
    assert len(protected) >= 3
    for rule in protected:
        for method in rule.methods - {"OPTIONS", "HEAD"}:
            with client.open(concrete(rule), method=method, json={"prompt": "hi"}) as response:
                assert response.status_code == 401, (rule.rule, method)
            assert response.headers["WWW-Authenticate"]
            response = client.open(concrete(rule), method=method, json={"prompt": "hi"},
                                   headers={"X-API-Key": API_KEY + "x"})
            assert response.status_code == 401, (rule.rule, method)


def test_public_routes_answer_without_a_key(client):
    for path in PUBLIC - {"/docs/static/<path:filename>", "/api/llm/health"}:
        with client.get(path) as response:
            assert response.status_code in (200, 302), path
    with client.get("/docs/static/swagger-ui-bundle.js") as response:
        assert response.status_code == 200


@pytest.mark.parametrize("header", ["X-API-Key", "Authorization"])
def test_both_key_headers_work(client, header):
    value = API_KEY if header == "X-API-Key" else f"Bearer {API_KEY}"
    assert client.get("/api/llm/models", headers={header: value}).status_code == 200


def test_wrong_scheme_is_refused(client):
    assert client.get("/api/llm/models", headers={"Authorization": f"Basic {API_KEY}"}).status_code == 401


def test_auth_disabled_opens_routes(double, close_apps):
    app = create_app({"AUTH_ENABLED": "false", "OLLAMA_BASE_URL": double.url, "DATABASE_URL": "sqlite://"})
    close_apps(app)
    assert app.test_client().get("/api/llm/models").status_code == 200


def test_key_comparison_is_constant_time():
    import inspect

    from mlops_backend import keys

    assert "hmac.compare_digest" in inspect.getsource(keys.KeyRing.identify)


def test_cors_preflight_from_allowed_origin(gateway):
    response = requests.options(gateway.url + "/api/llm/stream", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-API-Key, Content-Type"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"x-api-key", "content-type"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_cors_refuses_other_origins(gateway):
    response = requests.options(gateway.url + "/api/llm/stream", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-API-Key"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_exposes_request_id(gateway):
    response = requests.get(gateway.url + "/health", headers={"Origin": "http://localhost:3000"})
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]
