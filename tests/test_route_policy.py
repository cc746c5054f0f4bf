"""Scopes as an allow-list of upstream routes, and the cloud scope, through the real gateway under gunicorn.

Every refusal is checked twice: the status the client sees, and that nothing reached the Ollama double
(its request log), since a 403 after the request was relayed would protect nothing.
"""

from __future__ import annotations

import pytest
import requests

from mlops_backend.config import Config, ConfigError
from mlops_backend.security.keys import make_entry, new_token, write_entries
from mlops_backend.upstream.model_names import canonical, is_cloud
from mlops_backend.security.route_policy import ROUTES, parse_open_routes, required_scope
from tests.support import API_KEY, GatewayProcess

HI = [{"role": "user", "content": "hi"}]


class Keys:
    use = new_token()
    admin = new_token()
    cloud = new_token()        # use + cloud
    admin_cloud = new_token()  # admin + cloud


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy-keys") / "keys.toml"
    write_entries(str(path), [make_entry("use", Keys.use, ["use"]), make_entry("admin", Keys.admin, ["admin"]),
                              make_entry("cloud", Keys.cloud, ["use", "cloud"]),
                              make_entry("admin-cloud", Keys.admin_cloud, ["admin", "cloud"])])
    return str(path)


@pytest.fixture(scope="module")
def gw(double, keys_file):
    process = GatewayProcess(double.url, API_KEYS_FILE=keys_file,
                             OPEN_UPSTREAM_ROUTES="GET /ollama/api/status=admin, DELETE /ollama/api/user/keys/*=admin,"
                                                  "POST /ollama/api/me=use").start()
    yield process
    process.stop()


def call(gateway, method, path, key, json=None):
    response = requests.request(method, gateway.url + path, headers={"Authorization": f"Bearer {key}",
                                                                     "Connection": "close"}, json=json, timeout=10)
    response.close()
    return response


def reached(double) -> list[str]:
    return [f'{r["method"]} {r["path"]}' for r in double.requests]


# -- the table ---------------------------------------------------------------------------------------------

def test_each_scope_has_exactly_the_routes_the_design_lists():
    use = {"GET /ollama/", "GET /ollama/api/version", "GET /ollama/api/tags", "GET /ollama/api/ps",
           "POST /ollama/api/show", "POST /ollama/api/generate", "POST /ollama/api/chat", "POST /ollama/api/embed",
           "POST /ollama/api/embeddings", "POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings",
           "POST /v1/responses", "POST /v1/messages", "POST /v1/audio/transcriptions", "GET /v1/models",
           "GET /v1/models/*"}
    admin = {"POST /ollama/api/pull", "POST /ollama/api/push", "POST /ollama/api/create", "POST /ollama/api/copy",
             "DELETE /ollama/api/delete"}
    cloud = {"POST /ollama/api/experimental/web_search", "POST /ollama/api/experimental/web_fetch"}
    table = {f"{method} {path}": scope for (method, path), scope in ROUTES.items()}
    assert table == {**dict.fromkeys(use, "use"), **dict.fromkeys(admin, "admin"), **dict.fromkeys(cloud, "cloud")}


@pytest.mark.parametrize("method,path", [
    ("POST", "/ollama/api/signout"), ("DELETE", "/ollama/api/user/keys/abc"), ("POST", "/ollama/api/me"),
    ("GET", "/ollama/api/status"), ("GET", "/ollama/api/experimental/model-recommendations"),
    ("POST", "/ollama/api/blobs/sha256:00"), ("HEAD", "/ollama/api/blobs/sha256:00"), ("POST", "/ollama/api/future"),
    ("POST", "/v1/messages/count_tokens"), ("GET", "/v1/responses"), ("POST", "/v1/audio/translations"),
    ("GET", "/ollama/api/generate"), ("HEAD", "/ollama/api/ps"), ("POST", "/ollama/api/Generate"),
])
def test_routes_off_the_list_need_no_scope_anyone_has(method, path):
    assert required_scope(method, path) is None


def test_head_only_where_ollama_has_it():
    assert [required_scope("HEAD", p) for p in ("/ollama/", "/ollama/api/version", "/ollama/api/tags")] == ["use"] * 3


@pytest.mark.parametrize("raw", ["GET /api/status=admin", "PUT /ollama/api/x=use", "GET /ollama/api/x=root",
                                 "GET /ollama/api/../pull=use", "GET /ollama/api/x", "GET /ollama//x=use"])
def test_open_upstream_routes_refuses_what_it_cannot_read(raw):
    with pytest.raises(ConfigError, match="OPEN_UPSTREAM_ROUTES"):
        Config.from_mapping({"API_KEY": API_KEY, "OPEN_UPSTREAM_ROUTES": raw})


def test_open_upstream_routes_opens_a_route_and_a_prefix():
    extra = parse_open_routes("GET /ollama/api/status=admin ,DELETE  /ollama/api/user/keys/*=admin")
    assert required_scope("GET", "/ollama/api/status", extra) == "admin"
    assert required_scope("DELETE", "/ollama/api/user/keys/abc", extra) == "admin"
    assert required_scope("DELETE", "/ollama/api/user/keys/", extra) is None
    assert required_scope("POST", "/ollama/api/status", extra) is None


@pytest.mark.parametrize("name,cloud", [
    ("gpt-oss:120b-cloud", True), ("gpt-oss:20b:cloud", True), ("deepseek-v3.1:671B-CLOUD", True),
    (" qwen3-coder:480b-cloud ", True), ("llama3.2", False), ("my-cloud", False), ("cloud/llama3.2", False),
    ("host:5000/x-cloud", False), ("llama3.2:latest", False)])
def test_cloud_names_follow_ollamas_rule(name, cloud):
    assert is_cloud(name) is cloud


@pytest.mark.parametrize("name", ["llama3.2", "LLAMA3.2", " llama3.2:Latest ", "registry.ollama.ai/library/llama3.2",
                                  "library/llama3.2:latest", "llama3.2:local"])
def test_spellings_of_one_model_have_one_canonical_name(name):
    assert canonical(name) == "llama3.2:latest"


# -- through the gateway ------------------------------------------------------------------------------------

USE_CALLS = [("GET", "/ollama/", None), ("GET", "/ollama/api/version", None), ("GET", "/ollama/api/tags", None),
             ("GET", "/ollama/api/ps", None), ("POST", "/ollama/api/show", {"model": "llama3.2"}),
             ("POST", "/ollama/api/generate", {"model": "llama3.2", "prompt": "hi", "stream": False}),
             ("POST", "/ollama/api/chat", {"model": "llama3.2", "messages": HI, "stream": False}),
             ("POST", "/ollama/api/embed", {"model": "all-minilm", "input": "hi"}),
             ("POST", "/ollama/api/embeddings", {"model": "all-minilm", "prompt": "hi"}),
             ("POST", "/v1/chat/completions", {"model": "llama3.2", "messages": HI}),
             ("POST", "/v1/completions", {"model": "llama3.2", "prompt": "hi"}),
             ("POST", "/v1/embeddings", {"model": "all-minilm", "input": "hi"}),
             ("GET", "/v1/models", None), ("GET", "/v1/models/llama3.2", None)]
ADMIN_CALLS = [("POST", "/ollama/api/pull", {"model": "tinyllama", "stream": False}),
               ("POST", "/ollama/api/copy", {"source": "llama3.2", "destination": "llama-copy"}),
               ("POST", "/ollama/api/create", {"model": "mario", "from": "llama3.2", "stream": False}),
               ("POST", "/ollama/api/push", {"model": "llama3.2", "stream": False}),
               ("DELETE", "/ollama/api/delete", {"model": "llama3.2"})]


def test_a_use_key_reaches_every_use_route(gw, double):
    for method, path, body in USE_CALLS:
        response = call(gw, method, path, Keys.use, body)
        assert response.status_code == 200, (path, response.status_code, response.text)
    assert len(double.requests) == len(USE_CALLS)


@pytest.mark.parametrize("method,path,body", ADMIN_CALLS)
def test_admin_routes_refuse_a_use_key_and_serve_an_admin_key(gw, double, method, path, body):
    refused = call(gw, method, path, Keys.use, body)
    assert refused.status_code == 403 and "lacks the 'admin' scope" in refused.json()["error"]
    assert reached(double) == []
    answered = call(gw, method, path, Keys.admin, body)  # push may fail at the registry: it reached Ollama
    assert answered.status_code != 403, answered.text
    assert reached(double) == [f"{method} {path.removeprefix('/ollama')}"]


@pytest.mark.parametrize("method,path", [
    ("POST", "/ollama/api/signout"), ("GET", "/ollama/api/experimental/model-recommendations"),
    ("POST", "/ollama/api/blobs/sha256:" + "0" * 64), ("POST", "/ollama/api/future"),
    ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/audio/translations"), ("GET", "/v1/files"),
    ("POST", "/ollama/v1/files"),
])
def test_routes_no_scope_lists_answer_403_to_every_key(gw, double, method, path):
    for key in (Keys.use, Keys.admin, Keys.admin_cloud, API_KEY):
        response = call(gw, method, path, key, {"model": "llama3.2"})
        assert response.status_code == 403, (key, response.text)
        message = response.json()["error"]
        assert "not relayed to any key" in (message if isinstance(message, str) else message["message"])
        if "/v1/messages" in path:  # Anthropic's error shape
            assert response.json()["type"] == "error" and message["type"] == "permission_error"
    assert reached(double) == []


@pytest.mark.parametrize("method,path", [("DELETE", "/ollama/api/user/keys/c3NoLWVk"), ("GET", "/ollama/api/status"),
                                         ("POST", "/ollama/api/me")])
def test_account_routes_are_closed_unless_opened(gateway, double, method, path):
    response = call(gateway, method, path, API_KEY)
    assert response.status_code == 403 and "OPEN_UPSTREAM_ROUTES" in response.json()["error"]
    assert reached(double) == []


def test_a_wrong_method_or_spelling_is_refused_before_ollama(gw, double):
    wrong_method = call(gw, "GET", "/ollama/api/generate", Keys.admin)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"
    assert call(gw, "POST", "/ollama/api/Generate", Keys.admin, {"model": "llama3.2"}).status_code == 404
    assert call(gw, "POST", "/ollama/api/generate/", Keys.admin, {"model": "llama3.2"}).status_code == 404
    assert call(gw, "HEAD", "/ollama/api/ps", Keys.admin).status_code == 405
    assert reached(double) == []
    head = call(gw, "HEAD", "/ollama/api/tags", Keys.use)
    assert head.status_code == 200 and head.content == b""
    assert reached(double) == ["GET /api/tags"]


def test_open_upstream_routes_opens_routes_for_their_scope_only(gw, double):
    assert call(gw, "GET", "/ollama/api/status", Keys.use).status_code == 403
    assert reached(double) == []
    assert call(gw, "GET", "/ollama/api/status", Keys.admin).status_code < 500
    assert call(gw, "DELETE", "/ollama/api/user/keys/c3NoLWVk", Keys.admin).status_code < 500
    assert call(gw, "POST", "/ollama/api/me", Keys.use).status_code < 500
    assert reached(double) == ["GET /api/status", "DELETE /api/user/keys/c3NoLWVk", "POST /api/me"]


# -- the cloud scope ----------------------------------------------------------------------------------------

CLOUD_CALLS = [
    ("POST", "/api/llm/generate", {"model": "gpt-oss:120b-cloud", "prompt": "hi"}),
    ("POST", "/api/llm/stream", {"model": "gpt-oss:20b:cloud", "prompt": "hi"}),
    ("POST", "/api/llm/chat", {"model": "gpt-oss:120b-cloud", "messages": HI}),
    ("GET", "/api/llm/models/gpt-oss:120b-cloud", None),
    ("POST", "/ollama/api/chat", {"model": "qwen3-coder:480B-Cloud", "messages": HI}),
    ("POST", "/ollama/api/show", {"name": "gpt-oss:120b-cloud"}),
    ("POST", "/ollama/api/experimental/web_search", {"query": "news"}),
    ("POST", "/ollama/api/experimental/web_fetch", {"url": "https://example.com"}),
    ("POST", "/v1/chat/completions", {"model": "gpt-oss:120b-cloud", "messages": HI}),
    ("GET", "/v1/models/gpt-oss:120b-cloud", None),
    ("POST", "/v1/chat/completions", {"model": "llama3.2", "messages": HI, "tools": [{"type": "web_search"}]}),
    ("POST", "/ollama/api/chat", {"model": "llama3.2", "messages": HI, "tools": [{"type": "web_fetch_20250910"}]}),
]
ADMIN_CLOUD_CALLS = [("POST", "/ollama/api/pull", {"model": "gpt-oss:120b-cloud"}),
                     ("POST", "/ollama/api/create", {"model": "mine", "from": "gpt-oss:120b-cloud"}),
                     ("POST", "/ollama/api/copy", {"source": "gpt-oss:120b-cloud", "destination": "mine"}),
                     ("POST", "/api/llm/models/pull", {"model": "gpt-oss:20b:cloud"})]


@pytest.mark.parametrize("method,path,body", CLOUD_CALLS)
def test_cloud_models_and_tools_need_the_cloud_scope(gw, double, method, path, body):
    for key in (Keys.use, Keys.admin, API_KEY):  # the shared key has use and admin by default, not cloud
        response = call(gw, method, path, key, body)
        assert response.status_code == 403, (key, response.text)
        assert "lacks the 'cloud' scope" in response.text
    assert reached(double) == []
    answered = call(gw, method, path, Keys.cloud, body)
    assert answered.status_code != 403, answered.text
    assert len(double.requests) == 1


@pytest.mark.parametrize("method,path,body", ADMIN_CLOUD_CALLS)
def test_admin_routes_naming_a_cloud_model_need_admin_and_cloud(gw, double, method, path, body):
    for key in (Keys.admin, Keys.cloud):
        assert call(gw, method, path, key, body).status_code == 403
    assert reached(double) == []
    assert call(gw, method, path, Keys.admin_cloud, body).status_code != 403
    assert len(double.requests) == 1


def test_a_tool_type_spelled_twice_is_refused(gw, double):
    body = {"model": "llama3.2", "messages": HI, "tools": [{"type": "function", "TYPE": "web_search"}]}
    response = call(gw, "POST", "/v1/chat/completions", Keys.use, body)
    assert response.status_code == 400 and "Ambiguous field" in response.text
    assert reached(double) == []


def test_api_key_scopes_can_give_the_shared_key_cloud(start_gateway, double):
    gateway = start_gateway(API_KEY_SCOPES="use,cloud")
    assert call(gateway, "POST", "/ollama/api/chat", API_KEY, {"model": "x:cloud", "messages": HI}).status_code != 403
    assert call(gateway, "DELETE", "/ollama/api/delete", API_KEY, {"model": "llama3.2"}).status_code == 403
