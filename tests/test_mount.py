"""Mounting the gateway in an existing Flask app: our routes, auth and errors only under our prefix."""

from __future__ import annotations

from flask import Flask

from mlops_backend import init_gateway
from tests.support import API_KEY


def host_app(double):
    app = Flask("host")

    @app.get("/hello")
    def hello():
        return "hello from the host app"

    @app.get("/boom")
    def boom():
        raise ValueError("host bug")

    init_gateway(app, url_prefix="/ai", config={"API_KEY": API_KEY, "OLLAMA_BASE_URL": double.url,
                                                 "DEFAULT_MODEL": "llama3.2"})
    return app


def test_host_routes_and_ours_work_side_by_side(double, close_apps):
    app = host_app(double)
    close_apps(app)
    client = app.test_client()
    assert client.get("/hello").get_data(as_text=True) == "hello from the host app"
    assert client.get("/ai/health").get_json()["status"] == "ok"
    assert client.get("/ai/api/llm/models", headers={"X-API-Key": API_KEY}).status_code == 200
    response = client.post("/ai/api/llm/generate", headers={"X-API-Key": API_KEY}, json={"prompt": "hi"})
    assert response.get_json()["response"] == "You said: hi"


def test_our_auth_and_errors_apply_only_to_our_routes(double, close_apps):
    app = host_app(double)
    close_apps(app)
    client = app.test_client()
    assert client.get("/hello").status_code == 200  # no key needed on the host's own route
    denied = client.get("/ai/api/llm/models")
    assert denied.status_code == 401 and denied.content_type == "application/problem+json"
    invalid = client.post("/ai/api/llm/generate", headers={"X-API-Key": API_KEY}, json={"prompt": 1})
    assert invalid.status_code == 422 and invalid.content_type == "application/problem+json"
    assert "X-Request-ID" in invalid.headers and "X-Request-ID" not in client.get("/hello").headers
    app.testing = False
    host_error = client.get("/boom")  # the host's own error page, not our problem+json
    assert host_error.status_code == 500 and host_error.content_type.startswith("text/html")
    host_404 = client.get("/missing")
    assert host_404.status_code == 404 and host_404.content_type.startswith("text/html")
