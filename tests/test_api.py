"""Every endpoint and error mapping, through real gunicorn (gevent worker) against the Ollama double."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.ollama_double.wire import VERSION
from tests.support import API_KEY, AUTH, post_stream, sse_events, sse_items, wait_for_access_line

PROBLEM = "application/problem+json"


def assert_problem(response, status, title=None):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["type"].startswith("urn:mlops-backend:problem:")
    assert body["title"] and body["detail"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "Traceback" not in response.text
    if title:
        assert body["title"] == title
    return body


# -- health -------------------------------------------------------------------------------------------

def test_liveness_answers_without_key_and_never_calls_ollama(gateway, double):
    response = requests.get(gateway.url + "/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": "0.1.0"}
    assert double.requests == []


def test_readiness_reports_ollama_version_and_the_url_only_to_admin_keys(gateway, double):
    response = requests.get(gateway.url + "/api/llm/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["ollama"] == {"version": VERSION}  # what the double reports, as Ollama would; no URL
    (upstream,) = body["upstreams"]
    assert upstream["name"] == double.url.split("//")[1] and upstream["status"] == "up"
    assert upstream["version"] == VERSION and "url" not in upstream
    admin = requests.get(gateway.url + "/api/llm/health", headers=AUTH).json()
    assert admin["ollama"]["url"] == double.url and admin["upstreams"][0]["url"] == double.url


def test_readiness_strips_credentials_from_the_url(start_gateway, double):
    host = double.url.split("//")[1]
    gw = start_gateway(OLLAMA_BASE_URL=f"http://admin:s3cret@{host}")
    response = requests.get(gw.url + "/api/llm/health", headers=AUTH)
    assert response.json()["ollama"]["url"] == f"http://{host}"
    wait_for_access_line(gw, response.headers["X-Request-ID"])  # written when the response ends
    assert "s3cret" not in gw.log()


def test_readiness_answers_503_within_its_timeout_when_ollama_hangs(start_gateway, double):
    gw = start_gateway(OLLAMA_HEALTH_TIMEOUT="1")
    double.script(fault="slow_version", first_delay=30)
    started = time.monotonic()
    response = requests.get(gw.url + "/api/llm/health", timeout=10)
    elapsed = time.monotonic() - started
    assert_problem(response, 503)
    assert elapsed < 1.8, elapsed


def test_readiness_503_when_ollama_is_down(start_gateway):
    gw = start_gateway(OLLAMA_BASE_URL="http://127.0.0.1:9")
    assert_problem(requests.get(gw.url + "/api/llm/health"), 503, "Ollama not ready")


# -- models and generate ------------------------------------------------------------------------------

def test_models_keep_ollamas_fields(gateway):
    response = requests.get(gateway.url + "/api/llm/models", headers=AUTH)
    assert response.status_code == 200
    models = response.json()["models"]
    assert {m["name"] for m in models} >= {"llama3.2:latest", "qwen3:latest"}
    for model in models:
        assert {"name", "modified_at", "size", "digest", "details"} <= set(model)


def test_generate_returns_the_answer_and_statistics(gateway, double):
    response = requests.post(gateway.url + "/api/llm/generate", headers=AUTH,
                             json={"model": "llama3.2", "prompt": "hello there", "stream": True,
                                   "options": {"temperature": 0.2, "stop": ["\n"], "seed": 7}, "keep_alive": "5m"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] == "You said: hello there"
    assert body["model"] == "llama3.2" and body["done"] is True and body["done_reason"] == "stop"
    for key in ("total_duration", "load_duration", "prompt_eval_count", "eval_count", "eval_duration"):
        assert isinstance(body[key], int)
    sent = double.requests[-1]
    assert sent["path"] == "/api/generate"
    assert sent["body"]["stream"] is False  # the route decides, whatever the client said
    assert sent["body"]["options"] == {"temperature": 0.2, "stop": ["\n"], "seed": 7}


def test_a_single_stop_string_reaches_ollama_as_the_list_it_requires(gateway, double):
    # Ollama's Options.FromMap takes only an array for `stop` (a bare string is its 500).
    response = requests.post(gateway.url + "/api/llm/generate", headers=AUTH,
                             json={"prompt": "hi", "options": {"stop": "\n"}})
    assert response.status_code == 200, response.text
    assert double.requests[-1]["body"]["options"] == {"stop": ["\n"]}


def test_every_statistic_and_field_of_the_answer_is_kept(gateway, double):
    body = requests.post(gateway.url + "/api/llm/generate", headers=AUTH, json={"prompt": "hi"}).json()
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                "eval_duration", "created_at"):
        assert key in body, key
    assert "context" not in body  # generate's deprecated token ids are left out


@pytest.mark.parametrize("route", ["/api/llm/generate", "/api/llm/stream"])
def test_current_ollama_fields_pass_on_generate(gateway, double, route):
    body = {"model": "qwen3", "prompt": "hi", "think": "max", "logprobs": True, "top_logprobs": 2,
            "truncate": False, "shift": True}
    response = requests.post(gateway.url + route, headers=AUTH, json=body)
    assert response.status_code == 200, response.text
    sent = double.requests[-1]["body"]
    assert {key: sent[key] for key in ("think", "logprobs", "top_logprobs", "truncate", "shift")} == {
        "think": "max", "logprobs": True, "top_logprobs": 2, "truncate": False, "shift": True}


def test_logprobs_ride_on_each_text_event_and_whole_answers_keep_them(gateway, double):
    double.script(tokens=["Hel", "lo"])
    body = {"model": "llama3.2", "prompt": "hi", "logprobs": True, "top_logprobs": 1}
    events = sse_events(post_stream(gateway, body))
    texts = [event for event in events if "text" in event]
    assert [event["text"] for event in texts] == ["Hel", "lo"]
    assert all(event["logprobs"] and {"token", "logprob"} <= set(event["logprobs"][0]) for event in texts)
    assert texts[0]["logprobs"][0]["token"] == "Hel"
    assert all(len(event["logprobs"][0]["top_logprobs"]) == 1 for event in texts)
    whole = requests.post(gateway.url + "/api/llm/generate", headers=AUTH, json=body).json()
    assert [entry["token"] for entry in whole["logprobs"]] == ["Hel", "lo"]


@pytest.mark.parametrize("think", [True, False, "low", "medium", "high", "max"])
def test_every_think_value_ollama_takes_is_accepted(gateway, double, think):
    response = requests.post(gateway.url + "/api/llm/generate", headers=AUTH,
                             json={"model": "qwen3", "prompt": "hi", "think": think})
    assert response.status_code == 200, response.text


def test_generate_uses_default_model(gateway, double):
    response = requests.post(gateway.url + "/api/llm/generate", headers=AUTH, json={"prompt": "hi"})
    assert response.status_code == 200
    assert double.requests[-1]["body"]["model"] == "llama3.2"


def test_bearer_token_is_accepted(gateway):
    response = requests.get(gateway.url + "/api/llm/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200


def test_browser_origin_and_host_are_not_forwarded(gateway, double):
    response = requests.post(gateway.url + "/api/llm/generate", json={"prompt": "hi"},
                             headers={**AUTH, "Origin": "http://localhost:3000", "Host": "evil.example"})
    assert response.status_code == 200, response.text
    headers = {k.lower(): v for k, v in double.requests[-1]["headers"].items()}
    assert "origin" not in headers
    assert headers["host"].startswith("127.0.0.1:")
    assert "x-api-key" not in headers


# -- streaming ----------------------------------------------------------------------------------------

def test_stream_relays_every_chunk_then_done(gateway, double):
    double.script(tokens=["Hel", "lo", " wor", "ld"])
    response = post_stream(gateway, {"model": "llama3.2", "prompt": "hi"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = sse_events(response)
    assert [e["text"] for e in events[:-1]] == ["Hel", "lo", " wor", "ld"]
    final = events[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert {"total_duration", "load_duration", "prompt_eval_count", "eval_count", "eval_duration"} <= set(final)


def test_stream_first_event_arrives_before_upstream_finishes(gateway, double):
    double.script(tokens=["a", "b", "c", "d"], delay=0.4)
    started = time.monotonic()
    response = post_stream(gateway, {"prompt": "hi"})
    items = [(t - started, v) for t, kind, v in sse_items(response) if kind == "data"]
    first_at, last_at = items[0][0], items[-1][0]
    assert items[0][1] == {"text": "a"}
    assert first_at < 0.35, items
    assert last_at - first_at > 1.0, items  # events spread over the upstream's pacing


# -- errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/llm/generate", "/api/llm/stream"])
def test_unknown_model_is_404(gateway, path):
    response = requests.post(gateway.url + path, headers=AUTH, json={"model": "nope:1b", "prompt": "hi"})
    assert_problem(response, 404, "Model not found")


@pytest.mark.parametrize("path", ["/api/llm/generate", "/api/llm/stream"])
def test_malformed_json_is_400(gateway, path):
    response = requests.post(gateway.url + path, headers={**AUTH, "Content-Type": "application/json"},
                             data=b'{"prompt": ')
    assert_problem(response, 400, "Malformed JSON")


def test_non_json_body_is_400(gateway):
    response = requests.post(gateway.url + "/api/llm/generate", headers=AUTH, data={"prompt": "hi"})
    assert_problem(response, 400)


def test_json_that_is_not_an_object_is_400(gateway):
    response = requests.post(gateway.url + "/api/llm/generate", headers=AUTH, json=["prompt"])
    assert_problem(response, 400)


def test_schema_violations_are_422_naming_every_field(gateway):
    response = requests.post(gateway.url + "/api/llm/generate", headers=AUTH, json={
        "prompt": 5, "options": {"temperature": -1, "top_p": 2, "top_k": 1.5, "stop": [1], "bogus": 1},
        "format": "yaml", "keep_alive": True, "extra": 1})
    body = assert_problem(response, 422)
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"prompt", "options.temperature", "options.top_p", "options.top_k", "options.stop",
                      "options.bogus", "format", "keep_alive", "extra"}


def test_missing_prompt_is_422(gateway):
    body = assert_problem(requests.post(gateway.url + "/api/llm/generate", headers=AUTH, json={}), 422)
    assert [e["field"] for e in body["errors"]] == ["prompt"]


def test_missing_model_without_default_is_422(start_gateway):
    gw = start_gateway(DEFAULT_MODEL="")
    body = assert_problem(requests.post(gw.url + "/api/llm/generate", headers=AUTH, json={"prompt": "x"}), 422)
    assert [e["field"] for e in body["errors"]] == ["model"]


def test_ollama_unreachable_is_503(start_gateway):
    gw = start_gateway(OLLAMA_BASE_URL="http://127.0.0.1:9")
    assert_problem(requests.get(gw.url + "/api/llm/models", headers=AUTH), 503, "Ollama unreachable")
    assert_problem(post_stream(gw, {"prompt": "hi"}), 503, "Ollama unreachable")


@pytest.mark.parametrize("path", ["/api/llm/generate", "/api/llm/stream"])
def test_ollama_busy_is_503_with_retry_after(gateway, double, path):
    double.script(fault="busy")
    response = requests.post(gateway.url + path, headers=AUTH, json={"prompt": "hi"})
    assert_problem(response, 503, "Ollama busy")
    assert int(response.headers["Retry-After"]) > 0


def test_ollama_timeout_is_504(start_gateway, double):
    gw = start_gateway(OLLAMA_TIMEOUT="0.5")
    double.script(first_delay=5)
    assert_problem(requests.post(gw.url + "/api/llm/generate", headers=AUTH, json={"prompt": "hi"}), 504,
                   "Ollama timed out")


def test_whole_request_timeout_is_504(start_gateway, double):
    gw = start_gateway(OLLAMA_REQUEST_TIMEOUT="0.6")
    double.script(delay=0.3)  # the double trickles: each read is quick, the whole call is not
    started = time.monotonic()
    response = requests.post(gw.url + "/api/llm/generate", headers=AUTH, json={"prompt": "one two three four"})
    assert_problem(response, 504)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("fault", ["status_500", "drop"])
def test_other_ollama_failures_are_502(gateway, double, fault):
    double.script(fault=fault, fault_after=0)
    response = requests.post(gateway.url + "/api/llm/generate", headers=AUTH, json={"prompt": "hi"})
    body = assert_problem(response, 502)
    assert "llama runner" not in body["detail"]  # Ollama's internal message stays in our log


def test_unknown_route_and_wrong_method_are_problem_json(gateway):
    assert_problem(requests.get(gateway.url + "/api/llm/nothing", headers=AUTH), 404)
    response = requests.put(gateway.url + "/api/llm/generate", headers=AUTH)
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


def test_body_over_limit_is_413_before_it_is_read(start_gateway):
    gw = start_gateway(MAX_BODY_BYTES="2048")
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST /api/llm/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-API-Key: " + API_KEY.encode() + b"\r\nContent-Length: 50000000\r\n\r\n" + b"{" * 1000)
        sock.settimeout(5)
        head = sock.recv(65536)  # answered though 49,999,000 bytes were never sent
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"application/problem+json" in head


def test_request_id_is_kept_or_made(gateway):
    response = requests.get(gateway.url + "/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    response = requests.get(gateway.url + "/health", headers={"X-Request-ID": "bad id with spaces"})
    assert response.headers["X-Request-ID"] not in ("", "bad id with spaces")
    assert "[abc-123] mlops_backend.access: GET /health 200" in wait_for_access_line(gateway, "abc-123")
    made = wait_for_access_line(gateway, response.headers["X-Request-ID"])  # the log carries the id it made
    assert "mlops_backend.access: GET /health 200" in made and "bad id" not in made


def test_key_never_reaches_logs_or_bodies(gateway):
    response = requests.get(gateway.url + "/api/llm/models", headers={"X-API-Key": "wrong-key-value-123"})
    assert_problem(response, 401)
    assert "wrong-key-value-123" not in response.text
    line = wait_for_access_line(gateway, response.headers["X-Request-ID"])  # written when the response ends
    assert "GET /api/llm/models 401" in line
    assert API_KEY not in gateway.log() and "wrong-key-value-123" not in gateway.log()
