"""Auth on every non-public route, CORS for browsers, and the key kept out of sight."""

from __future__ import annotations

import re

import pytest
import requests

from mlops_backend import create_app
from tests.ollama_double.native import VERSION
from tests.support import API_KEY

PUBLIC = {"/health", "/api/llm/health", "/openapi.json", "/docs/", "/redoc", "/redoc/redoc.standalone.js",
          "/docs/static/<path:filename>", "/oauth2-redirect.html", "/apidocs/index.html", "/ollama/"}
#: Public only for GET (and HEAD) of these paths, under OLLAMA_VERSION_PUBLIC: Ollama's probes.
PROBES = ("/ollama/", "/ollama/api/version")


def concrete(rule) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", "swagger-ui.css" if "static" in rule.rule else "x", rule.rule)


def test_every_route_but_the_public_ones_refuses_a_request_without_a_key(double, close_apps):
    # Two wrong requests for each route and method: more than AUTH_FAILURES_PER_MINUTE's default allows.
    app = create_app({"API_KEY": API_KEY, "OLLAMA_BASE_URL": double.url, "DATABASE_URL": "sqlite://",
                      "AUTH_FAILURES_PER_MINUTE": "0"})
    close_apps(app)
    client = app.test_client()
    rules = list(app.url_map.iter_rules())
    assert {rule.rule for rule in rules} >= PUBLIC
    protected = [rule for rule in rules if rule.rule not in PUBLIC]
    assert len(protected) >= 3
    for rule in protected:
        for method in rule.methods - {"OPTIONS", "HEAD"}:
            if (concrete(rule), method) == ("/ollama/api/x", "GET"):
                assert client.get("/ollama/api/version").status_code == 200  # the one public route under it
            with client.open(concrete(rule), method=method, json={"prompt": "hi"}) as response:
                assert response.status_code == 401, (rule.rule, method)
            assert response.headers["WWW-Authenticate"]
            response = client.open(concrete(rule), method=method, json={"prompt": "hi"},
                                   headers={"X-API-Key": API_KEY + "x"})
            assert response.status_code == 401, (rule.rule, method)


def test_ollamas_probes_answer_without_a_key_but_check_a_key_that_is_sent(client, double):
    for path in PROBES:
        for method in ("GET", "HEAD"):
            assert client.open(path, method=method).status_code == 200, (path, method)
        wrong = client.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.is_json and "error" in wrong.get_json()
    assert client.get("/ollama/api/version").get_json() == {"version": VERSION}
    assert client.post("/ollama/api/version").status_code == 401  # only GET and HEAD are probes
    assert client.get("/ollama/api/tags").status_code == 401


def test_ollama_version_public_false_asks_for_a_key(double, close_apps):
    app = create_app({"API_KEY": API_KEY, "OLLAMA_BASE_URL": double.url, "DATABASE_URL": "sqlite://",
                      "OLLAMA_VERSION_PUBLIC": "false"})
    close_apps(app)
    client = app.test_client()
    for path in PROBES:
        refused = client.get(path)
        assert refused.status_code == 401 and refused.get_json() == {"error": "Send the API key in X-API-Key or "
                                                                              "Authorization: Bearer"}
        assert client.get(path, headers={"X-API-Key": API_KEY}).status_code == 200


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


def test_identify_compares_every_key_in_constant_time_wherever_the_match_is(tmp_path, monkeypatch):
    """identify() runs hmac.compare_digest on the shared key and on every stored hash, whichever key matches
    (the first stored, the last, the shared one, none): no `==`, no early exit, so the time it takes does
    not tell which key matched, nor how much of one was right."""
    from mlops_backend.security import keys

    tokens = [keys.new_token() for _ in range(4)]
    path = tmp_path / "keys.json"
    keys.write_entries(str(path), [keys.make_entry(f"key{i}", token, ["use"]) for i, token in enumerate(tokens)])
    ring = keys.KeyRing(API_KEY, str(path))
    stored = [keys.digest(token).encode() for token in tokens]
    compared = []
    real = keys.hmac.compare_digest

    def counting(a, b):
        compared.append(tuple(sorted(x.encode() if isinstance(x, str) else bytes(x) for x in (a, b))))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", counting)
    cases = [(tokens[0], "key0"), (tokens[-1], "key3"), (tokens[1], "key1"), (API_KEY, keys.SHARED_KEY_NAME),
             (keys.new_token(), None), (API_KEY[:-1] + "x", None), ("short", None)]
    for presented, name in cases:
        compared.clear()
        found = ring.identify(presented)
        assert (found.name if found else None) == name, presented
        hashed = keys.digest(presented).encode()
        expected = [(presented.encode(), API_KEY.encode())] + [(hashed, row) for row in stored]
        assert sorted(compared) == sorted(tuple(sorted(pair)) for pair in expected), presented


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
