"""The routes Ollama added for other APIs (/v1/responses, /v1/messages, /v1/audio/transcriptions) and the
OpenAI layer under the Ollama base URL (/ollama/v1/...), through the real gateway under gunicorn.

The official clients' own checks are in tests/test_more_clients.py; this module checks what a client
cannot see from its side: what reached Ollama (the double's request log), the shape of every error per
API, the audio form's checks, the cloud scope for the tool types of each API, and cancellation.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from mlops_backend.security.keys import make_entry, new_token
from tests.support import API_KEY, GatewayProcess, keys_file, wait_for_access_line

HI = [{"role": "user", "content": "hi"}]
MODEL = "llama3.2"
NARROW = new_token()  # a key allow-listed to another model


@pytest.fixture(scope="module")
def gw(double, tmp_path_factory):
    keys = keys_file(tmp_path_factory, make_entry("narrow", NARROW, ["use"], models=["qwen3"]))
    process = GatewayProcess(double.url, API_KEYS_FILE=keys, MAX_AUDIO_BYTES="4096").start()
    yield process
    process.stop()


def call(gateway, method, path, key=API_KEY, headers=None, **kwargs):
    sent = {"Connection": "close", **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    response = requests.request(method, gateway.url + path, headers=sent, timeout=15, **kwargs)
    response.close()
    return response


def reached(double) -> list[str]:
    return [f'{r["method"]} {r["path"]}' for r in double.requests]


# -- /ollama/v1: the OpenAI layer where Ollama's base URL serves it -------------------------------------------

V1_CALLS = [
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": "all-minilm", "input": "hi"}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "hi"}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/llama3.2", None),
]


@pytest.mark.parametrize("method,path,body", V1_CALLS)
def test_ollama_v1_serves_exactly_what_v1_serves(gw, double, method, path, body):
    direct = call(gw, method, path, json=body)
    under = call(gw, method, "/ollama" + path, json=body)
    assert direct.status_code == under.status_code == 200, (direct.text, under.text)
    assert direct.headers["Content-Type"] == under.headers["Content-Type"]
    assert set(direct.json()) == set(under.json())
    assert reached(double) == [f"{method} {path}"] * 2  # both relayed to Ollama's own /v1 route


def test_ollama_v1_keeps_the_v1_checks(gw, double):
    refused = call(gw, "POST", "/ollama/v1/chat/completions", NARROW, json={"model": MODEL, "messages": HI})
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"  # OpenAI's shape, as Ollama's /v1 answers
    assert call(gw, "POST", "/ollama/v1/chat/completions", "mlk_wrong", json={"model": MODEL}).status_code == 401
    assert reached(double) == []


# -- every error in the shape of its API ----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/ollama/nope", "/ollama/api/nope", "/ollama/api/tags/x/y"])
def test_unknown_routes_under_ollama_answer_in_ollamas_shape(gw, double, path):
    response = call(gw, "GET", path)
    assert response.status_code in (403, 404), response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    assert reached(double) == []


def test_no_key_under_ollama_is_ollamas_shape_and_elsewhere_problem_json(gw, double):
    ollama = call(gw, "GET", "/ollama/api/tags", key=None)
    assert ollama.status_code == 401 and list(ollama.json()) == ["error"]
    ours = call(gw, "GET", "/api/llm/models", key=None)
    assert ours.status_code == 401 and ours.headers["Content-Type"] == "application/problem+json"
    assert reached(double) == []


@pytest.mark.parametrize("path", ["/v1/messages/count_tokens", "/v1/messages/batches", "/ollama/v1/messages/x"])
def test_anthropic_routes_answer_in_anthropics_shape(gw, double, path):
    response = call(gw, "POST", path, json={"model": MODEL, "messages": HI})
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "permission_error" and body["error"]["message"]
    assert reached(double) == []


def test_messages_errors_of_the_gateway_are_anthropics_shape(gw, double):
    bad_json = call(gw, "POST", "/v1/messages", data=b"{", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400
    assert bad_json.json()["type"] == "error" and bad_json.json()["error"]["type"] == "invalid_request_error"
    narrow = call(gw, "POST", "/v1/messages", NARROW, json={"model": MODEL, "max_tokens": 9, "messages": HI})
    assert narrow.status_code == 403 and narrow.json()["error"]["type"] == "permission_error"
    assert reached(double) == []


def test_responses_errors_of_the_gateway_are_openais_shape(gw, double):
    narrow = call(gw, "POST", "/v1/responses", NARROW, json={"model": MODEL, "input": "hi"})
    assert narrow.status_code == 403
    assert narrow.json()["error"]["type"] == "permission_error" and narrow.json()["error"]["message"]
    assert reached(double) == []


# -- what reaches Ollama ----------------------------------------------------------------------------------------

def test_anthropic_headers_pass_and_credentials_stay(gw, double):
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024-04-04,prompt-caching",
               "x-api-key": API_KEY, "Cookie": "session=secret", "anthropic-dangerous-direct-browser-access": "true"}
    response = call(gw, "POST", "/v1/messages", key=None, headers=headers,
                    json={"model": MODEL, "max_tokens": 16, "messages": HI})
    assert response.status_code == 200, response.text
    [seen] = double.requests
    sent = {name.lower(): value for name, value in seen["headers"].items()}
    assert sent["anthropic-version"] == "2023-06-01"
    assert sent["anthropic-beta"] == "tools-2024-04-04,prompt-caching"
    assert not {"x-api-key", "authorization", "cookie", "anthropic-dangerous-direct-browser-access"} & set(sent)


def test_anthropic_headers_are_not_sent_to_other_routes(gw, double):
    response = call(gw, "POST", "/v1/chat/completions", headers={"anthropic-version": "2023-06-01"},
                    json={"model": MODEL, "messages": HI})
    assert response.status_code == 200
    assert "anthropic-version" not in {name.lower() for name in double.requests[0]["headers"]}


def test_a_header_value_a_client_smuggles_a_line_into_is_refused(gw, double):
    # gunicorn refuses CR, LF and NUL itself; a byte beyond ASCII passes it, and must not pass on to Ollama.
    response = call(gw, "POST", "/v1/messages", headers={"anthropic-beta": "tools\xff"},
                    json={"model": MODEL, "max_tokens": 16, "messages": HI})
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "error"
    assert reached(double) == []


# -- the cloud scope for the tool types of each API -------------------------------------------------------------

@pytest.mark.parametrize("path,body", [
    ("/v1/responses", {"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]}),
    ("/v1/responses", {"model": MODEL, "input": "hi", "tools": [{"type": "web_search_preview_2025_03_11"}]}),
    ("/v1/responses", {"model": MODEL, "input": "hi",
                       "tools": [{"type": "namespace", "name": "x", "tools": [{"type": "web_search"}]}]}),
    ("/v1/responses", {"model": "gpt-oss:120b-cloud", "input": "hi"}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 9, "messages": HI,
                      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 9, "messages": HI,
                      "tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}),
    ("/ollama/v1/messages", {"model": "qwen3-coder:480b-cloud", "max_tokens": 9, "messages": HI}),
])
def test_web_search_tools_and_cloud_models_need_the_cloud_scope(gw, double, path, body):
    response = call(gw, "POST", path, json=body)
    assert response.status_code == 403, response.text
    assert "lacks the 'cloud' scope" in response.text
    if path.endswith("/messages"):
        assert response.json()["error"]["type"] == "permission_error" and response.json()["type"] == "error"
    else:
        assert response.json()["error"]["type"] == "permission_error"
    assert reached(double) == []


# -- the audio form ---------------------------------------------------------------------------------------------

WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40)


def transcribe(gateway, key=API_KEY, files=None, data=None, **kwargs):
    files = {"file": ("a.wav", WAV, "audio/wav")} if files is None else files
    data = {"model": MODEL} if data is None else data
    return call(gateway, "POST", "/v1/audio/transcriptions", key, files=files, data=data, **kwargs)


@pytest.mark.parametrize("files,data,message", [
    ({"notes": ("n.txt", b"x", "text/plain")}, None, "file is required"),
    ({"file": ("a.wav", b"", "audio/wav")}, None, "audio file is empty"),
    (None, {}, "model is required"),
    (None, {"model": "  "}, "model is required"),
    (None, {"model": [MODEL, "qwen3"]}, "sent 2 times"),
    ({"file": ("a.wav", WAV, "audio/wav"), "FILE": ("b.wav", WAV, "audio/wav")}, None, None),
])
def test_the_form_is_checked_before_ollama(gw, double, files, data, message):
    response = transcribe(gw, files=files, data=data)
    if message is None:  # a field spelled another way is not Ollama's `file`: dropped, the form is sound
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert reached(double) == []


def test_a_body_that_is_not_a_form_is_400(gw, double):
    response = call(gw, "POST", "/v1/audio/transcriptions", json={"model": MODEL, "file": "x"})
    assert response.status_code == 400 and "multipart/form-data" in response.json()["error"]["message"]
    assert reached(double) == []


def test_audio_over_max_audio_bytes_is_413(gw, double):
    response = transcribe(gw, files={"file": ("a.wav", WAV + bytes(5000), "audio/wav")})
    assert response.status_code == 413, response.text
    assert "MAX_AUDIO_BYTES" in response.json()["error"]["message"]
    far_over = transcribe(gw, files={"file": ("a.wav", bytes(3 << 20), "audio/wav")})
    assert far_over.status_code == 413  # beyond the request's own limit: not read at all
    assert reached(double) == []


def test_the_allow_list_holds_on_the_forms_model(gw, double):
    response = transcribe(gw, NARROW)
    assert response.status_code == 403 and response.json()["error"]["type"] == "permission_error"
    assert transcribe(gw, data={"model": "whisper:cloud"}).status_code == 403
    assert reached(double) == []


def test_ollama_gets_a_form_of_the_gateways_making(gw, double):
    response = transcribe(gw, files={"file": ('../../etc/"x".wav', WAV, 'audio/wav"; x=1')},
                          data={"model": MODEL, "language": "en", "stray": "dropped"})
    assert response.status_code == 200, response.text
    [seen] = double.requests
    content_type = {k.lower(): v for k, v in seen["headers"].items()}["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    assert int({k.lower(): v for k, v in seen["headers"].items()}["content-length"]) < len(WAV) + 2048


# -- streams on the new routes: slots, cancellation, usage and the log line ------------------------------------

STREAMED = [("/v1/responses", {"model": MODEL, "input": "hi", "stream": True}),
            ("/v1/messages", {"model": MODEL, "max_tokens": 99, "messages": HI, "stream": True}),
            ("/ollama/v1/chat/completions", {"model": MODEL, "messages": HI, "stream": True})]


@pytest.mark.parametrize("path,body", STREAMED)
def test_a_client_that_leaves_releases_the_upstream(gw, double, path, body):
    double.script(tokens=[f"t{i} " for i in range(200)], delay=0.05)
    response = requests.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                             stream=True, timeout=15)
    assert response.status_code == 200
    pieces = response.iter_content(chunk_size=None)
    read = b""
    while read.count(b"\n\n") < 4:
        read += next(pieces)
    left = time.monotonic()
    response.close()
    record = double.wait_stream_closed(timeout=3)
    assert record["client_gone"] and not record["completed"]
    assert record["closed_at"] - left < 1.0


@pytest.mark.parametrize("path,body", STREAMED[:2])
def test_a_stream_holds_a_slot(start_gateway, double, path, body):
    gateway = start_gateway(STREAMS_PER_KEY=1)
    double.script(tokens=["x "] * 30, delay=0.05)
    first = requests.post(gateway.url + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                          stream=True, timeout=15)
    assert first.status_code == 200
    refused = call(gateway, "POST", path, json=body)
    assert refused.status_code == 429, refused.text
    assert "generations in flight" in refused.text and "Retry-After" in refused.headers
    if path == "/v1/messages":
        assert refused.json()["type"] == "error" and refused.json()["error"]["type"] == "rate_limit_error"
    else:
        assert refused.json()["error"]["type"] == "rate_limit_error"
    first.content  # read to its end: the slot comes back
    first.close()
    assert call(gateway, "POST", path, json=body).status_code == 200


@pytest.mark.parametrize("path,body,prompt,completion", [
    ("/v1/responses", {"model": MODEL, "input": "hi", "stream": True}, "input_tokens", "output_tokens"),
    ("/v1/messages", {"model": MODEL, "max_tokens": 99, "messages": HI, "stream": True},
     "input_tokens", "output_tokens"),
])
def test_streamed_usage_reaches_the_log_line(gw, double, path, body, prompt, completion):
    response = call(gw, "POST", path, json=body)
    assert response.status_code == 200
    events = [json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")]
    usage = {}
    for event in events:  # Responses: response.completed; Anthropic: message_start, then message_delta
        usage.update((event.get("response") or {}).get("usage") or {})
        usage.update((event.get("message") or {}).get("usage") or {})
        usage.update(event.get("usage") or {})
    assert usage[completion] > 0, events
    line = wait_for_access_line(gw, response.headers["X-Request-ID"])
    assert f"POST {path} 200 " in line and "key=default" in line, line
    assert f"tokens_in={usage[prompt]} tokens_out={usage[completion]}" in line, line


@pytest.mark.parametrize("path,body", STREAMED[:2])
def test_a_stream_ollama_cuts_short_ends_with_one_error_event(gw, double, path, body):
    """Ollama's Responses and Anthropic writers stop without a word when a generation fails mid-way (no
    response.completed, no message_stop); the gateway ends such a stream with the API's error event, so a
    client never takes half an answer for a whole one."""
    double.script(tokens=["a ", "b ", "c ", "d "], fault="error_line", fault_after=2)
    response = call(gw, "POST", path, json=body)
    assert response.status_code == 200
    records = [record for record in response.text.split("\n\n") if record]
    events = [record.split("\n", 1)[0] for record in records]
    assert events[-1] == "event: error" and events.count("event: error") == 1, events
    assert not {"event: message_stop", "event: response.completed"} & set(events)
    error = json.loads(records[-1].split("data: ", 1)[1])
    if path == "/v1/messages":
        assert error == {"type": "error", "error": {"type": "api_error", "message":
                                                    "Ollama ended the stream before its final event"}}
    else:
        assert error["type"] == "error" and error["code"] == "bad_response"
    line = wait_for_access_line(gw, response.headers["X-Request-ID"])
    assert "upstream_error=bad_response" in line, line
