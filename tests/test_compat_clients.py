"""The official `ollama` and `openai` Python clients, unchanged, against the real gateway under gunicorn.

tests/test_official_clients_double.py shows the same calls work against the Ollama double directly;
here they go through the gateway's pass-through routes (`/ollama/...` and `/v1/...`) behind its keys,
so what the clients see must be what the double sent, and what the gateway adds (keys, scopes, model
allow-lists, usage, limits, its own errors) must arrive in each API's own shape.
"""

from __future__ import annotations

import json
import re
import time

import ollama
import openai
import pytest
import requests
from openai import OpenAI

from mlops_backend.security.keys import make_entry, new_token
from tests.ollama_double.wire import VERSION
from tests.support import API_KEY, GatewayProcess, keys_file

TOKENS = ["Hello", ",", " wor", "ld", " <&>", " ✓"]
TEXT = "".join(TOKENS)
USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "errors")
HI = [{"role": "user", "content": "hi"}]


# -- gateways, keys and clients -----------------------------------------------------------------------------


class Keys:
    """The module's named keys (tokens in the clear; the file holds only their hashes)."""

    use = new_token()      # scope "use", every model
    narrow = new_token()   # scope "use", only llama3.2
    meter = new_token()    # scope "use", only for the usage test, so its counts are exact
    shared = API_KEY       # the gateway's shared key: every scope (admin included)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return keys_file(tmp_path_factory, make_entry("use", Keys.use, ["use"]),
                     make_entry("narrow", Keys.narrow, ["use"], models=["llama3.2"]),
                     make_entry("meter", Keys.meter, ["use"]))


@pytest.fixture(scope="module")
def gw(double, keys):
    """This module's gateway (what start_gateway does, kept for the whole module): named keys, fast usage writes."""
    process = GatewayProcess(double.url, API_KEYS_FILE=keys, USAGE_FLUSH_SECONDS="0.2").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def faulty_gw(double, keys):
    """A gateway that gives up on Ollama after 0.3 s of silence between two chunks."""
    process = GatewayProcess(double.url, API_KEYS_FILE=keys, USAGE_FLUSH_SECONDS="0.2",
                             OLLAMA_CHUNK_TIMEOUT="0.3").start()
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def _no_ambient_ollama_key(monkeypatch):
    # ollama-python sends $OLLAMA_API_KEY when no Authorization header is given: the "no key" case must send none.
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)


def native_client(gateway, key=None, **headers):
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return ollama.Client(host=gateway.url + "/ollama", headers=headers, timeout=10)


def openai_client(gateway, key, **options):
    # No retries: a 4xx/5xx (429 included) must surface at once, not after back-off.
    return OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=10, **options)


@pytest.fixture
def native(gw, double):
    with native_client(gw, Keys.use) as client:
        yield client


@pytest.fixture
def oai(gw, double):
    with openai_client(gw, Keys.use) as client:
        yield client


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def http(method, url, key=None, **kwargs):
    """A raw request (requests). `Connection: close`: urllib3 keeps a keep-alive socket open for as long as
    the response object lives (pytest.raises tracebacks keep frames alive), and gunicorn's graceful stop
    waits on idle keep-alive connections, which would add GUNICORN_GRACEFUL_TIMEOUT to each teardown."""
    headers = {"Connection": "close", **(bearer(key) if key else {}), **kwargs.pop("headers", {})}
    return requests.request(method, url, headers=headers, timeout=10, **kwargs)


def usage(gateway, key_name) -> dict:
    """The gateway's usage rows of one key, by model."""
    with http("GET", gateway.url + "/api/usage", Keys.shared, params={"key": key_name}) as response:
        assert response.status_code == 200, response.text
        return {row["model"]: {f: row[f] for f in USAGE_FIELDS} for row in response.json()["usage"]}


def wait_usage(gateway, key_name, expected: dict, timeout: float = 5.0) -> dict:
    """Poll until the key's rows equal `expected` (a request is counted once its response has closed)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = usage(gateway, key_name)
        if rows == expected or time.monotonic() > deadline:
            assert rows == expected
            return rows
        time.sleep(0.05)


def wait_usage_row(gateway, key_name, model, timeout=5.0, **wanted):
    """Poll until the fields `wanted` of one usage row have those values."""
    deadline = time.monotonic() + timeout
    while True:
        row = usage(gateway, key_name).get(model, {})
        if all(row.get(k) == v for k, v in wanted.items()) or time.monotonic() > deadline:
            assert {k: row.get(k) for k in wanted} == wanted
            return row
        time.sleep(0.05)


def ndjson_lines(response) -> list[bytes]:
    body = b"".join(response.iter_content(chunk_size=None))
    assert body.endswith(b"\n"), body
    return body.split(b"\n")[:-1]


def sse_data(response) -> list[bytes]:
    """The payloads of a raw SSE body's `data: ` lines (every event one line, then a blank line)."""
    body = b"".join(response.iter_content(chunk_size=None))
    events = body.split(b"\n\n")
    assert events[-1] == b"", body
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events[:-1]), body
    return [e[len(b"data: "):] for e in events[:-1]]


# -- 1. ollama-python through /ollama -----------------------------------------------------------------------


def test_ollama_list_show_ps_version(native, double):
    assert [m.model for m in native.list().models] == ["llama3.2:latest", "qwen3:latest", "all-minilm:latest"]
    first = native.list().models[0]
    assert first.digest == double.models[0]["digest"] and first.details.parameter_size == "3.2B"
    shown = native.show("llama3.2")
    assert shown.modelinfo["llama.context_length"] == 131072 and "<|user|>" in shown.template
    assert shown.capabilities == ["completion", "tools"]
    (loaded,) = native.ps().models
    assert loaded.model == "llama3.2:latest" and loaded.context_length == 4096
    # ollama-python 0.6.3 has no version() method: its own httpx client, on the same base URL.
    assert native._client.get("/api/version").json() == {"version": VERSION}
    root = native._client.get("/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    # The gateway calls Ollama as itself: the client's key never reaches Ollama.
    seen = {k.lower(): v for k, v in double.requests[-1]["headers"].items()}
    assert double.requests[-1]["path"] == "/" and "authorization" not in seen and "x-api-key" not in seen


def test_ollama_chat_whole_and_streamed(native, double):
    double.script(tokens=TOKENS)
    resp = native.chat(model="llama3.2", messages=HI)
    assert resp.message.role == "assistant" and resp.message.content == TEXT
    assert resp.done is True and resp.done_reason == "stop" and resp.eval_count == len(TOKENS)
    parts = list(native.chat(model="llama3.2", messages=HI, stream=True))
    assert [p.message.content for p in parts] == TOKENS + [""]
    assert [p.done for p in parts] == [False] * len(TOKENS) + [True]
    assert parts[-1].done_reason == "stop" and parts[-1].eval_count == len(TOKENS)
    assert [r["body"]["stream"] for r in double.requests if r["path"] == "/api/chat"] == [False, True]


def test_ollama_generate_whole_and_streamed(native, double):
    double.script(tokens=TOKENS)
    resp = native.generate(model="llama3.2", prompt="say hello")
    assert resp.response == TEXT and resp.done_reason == "stop" and resp.context
    parts = list(native.generate(model="llama3.2", prompt="say hello", stream=True))
    assert [p.response for p in parts] == TOKENS + [""]
    assert parts[-1].done is True and not any(p.done for p in parts[:-1]) and parts[-1].context == resp.context


def test_ollama_embed_single_and_list(native):
    one = native.embed(model="all-minilm", input="hello")
    assert one.model == "all-minilm" and len(one.embeddings) == 1 and len(one.embeddings[0]) == 384
    many = native.embed(model="all-minilm", input=["hello", "world", "hello"])
    assert many.embeddings[0] == many.embeddings[2] == one.embeddings[0] != many.embeddings[1]
    assert many.prompt_eval_count == 3


@pytest.mark.parametrize("call", [
    lambda c: c.chat(model="ghost", messages=HI),
    lambda c: list(c.chat(model="ghost", messages=HI, stream=True)),
    lambda c: c.generate(model="ghost", prompt="x"),
    lambda c: c.show("ghost"),
    lambda c: c.embed(model="ghost", input="x"),
], ids=["chat", "chat-stream", "generate", "show", "embed"])
def test_ollama_unknown_model_is_404(native, call):
    with pytest.raises(ollama.ResponseError) as info:
        call(native)
    assert info.value.status_code == 404 and "ghost" in info.value.error and "not found" in info.value.error


@pytest.mark.parametrize("key, message", [
    (None, "Send the API key in X-API-Key or Authorization: Bearer"),
    ("mlk_not-a-key", "The API key is not valid"),
], ids=["no-key", "wrong-key"])
def test_ollama_without_a_valid_key_is_401(gw, double, key, message):
    with native_client(gw, key) as client:
        for call in (client.list, lambda: list(client.chat(model="llama3.2", messages=HI, stream=True))):
            with pytest.raises(ollama.ResponseError) as info:
                call()
            # ResponseError took `error` out of the gateway's {"error": "..."} body.
            assert info.value.status_code == 401 and info.value.error == message
    assert double.requests == []


@pytest.mark.parametrize("call", [
    lambda c: c.pull("tinyllama"),
    lambda c: list(c.pull("tinyllama", stream=True)),
    lambda c: c.delete("llama3.2"),
    lambda c: c.copy("llama3.2", "llama-copy"),
    lambda c: c.push("llama3.2"),
    lambda c: c.create(model="mine", from_="llama3.2"),
], ids=["pull", "pull-stream", "delete", "copy", "push", "create"])
def test_ollama_use_key_cannot_change_models(native, double, call):
    with pytest.raises(ollama.ResponseError) as info:
        call(native)
    assert info.value.status_code == 403 and info.value.error == "The key 'use' lacks the 'admin' scope"
    assert double.requests == []


def test_ollama_admin_key_pulls_and_deletes(gw, double):
    with native_client(gw, Keys.shared) as admin:
        progress = list(admin.pull("tinyllama", stream=True))
        assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
        assert any(p.completed == p.total and p.total for p in progress)
        assert "tinyllama:latest" in [m.model for m in admin.list().models]
        assert admin.delete("tinyllama").status == "success"
        assert "tinyllama:latest" not in [m.model for m in admin.list().models]
    assert [r["path"] for r in double.requests] == ["/api/pull", "/api/tags", "/api/delete", "/api/tags"]


def test_ollama_allow_listed_key(gw, double):
    with native_client(gw, Keys.narrow) as client:
        assert [m.model for m in client.list().models] == ["llama3.2:latest"]
        assert [m.model for m in client.ps().models] == ["llama3.2:latest"]
        assert client.chat(model="llama3.2:latest", messages=HI).message.content == "You said: hi"
        for model in ("qwen3", "all-minilm"):
            with pytest.raises(ollama.ResponseError) as info:
                client.chat(model=model, messages=HI)
            assert info.value.status_code == 403
            assert info.value.error == f"The key 'narrow' may not use the model {model!r}"


# -- 2. openai-python through /v1 ---------------------------------------------------------------------------


def test_openai_models(oai):
    assert [m.id for m in oai.models.list()] == ["llama3.2:latest", "qwen3:latest", "all-minilm:latest"]
    model = oai.models.retrieve("llama3.2")  # Ollama echoes the name the path gave
    assert model.id == "llama3.2" and model.object == "model" and model.owned_by == "library"


def test_openai_chat_whole(oai, double):
    double.script(tokens=TOKENS)
    resp = oai.chat.completions.create(model="llama3.2", messages=HI)
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    (choice,) = resp.choices
    assert choice.message.content == TEXT and choice.finish_reason == "stop"
    assert resp.usage.completion_tokens == len(TOKENS)


def test_openai_chat_stream(oai, double):
    double.script(tokens=TOKENS)
    chunks = list(oai.chat.completions.create(model="llama3.2", messages=HI, stream=True))
    assert all(c.choices and c.object == "chat.completion.chunk" for c in chunks)  # no usage chunk unasked
    assert [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content] == TOKENS
    assert [c.choices[0].finish_reason for c in chunks] == [None] * len(TOKENS) + ["stop"]
    assert all(c.usage is None for c in chunks) and len({c.id for c in chunks}) == 1


def test_openai_chat_stream_with_usage(oai, double):
    double.script(tokens=TOKENS)
    with oai.chat.completions.create(model="llama3.2", messages=HI, stream=True,
                                     stream_options={"include_usage": True}) as stream:
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(TOKENS)
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + len(TOKENS)


def test_openai_completions(oai, double):
    double.script(tokens=TOKENS)
    resp = oai.completions.create(model="llama3.2", prompt="say hello")
    assert resp.object == "text_completion" and resp.choices[0].text == TEXT
    assert resp.choices[0].finish_reason == "stop"
    parts = list(oai.completions.create(model="llama3.2", prompt="say hello", stream=True))
    assert "".join(p.choices[0].text for p in parts) == TEXT and parts[-1].choices[0].finish_reason == "stop"


def test_openai_embeddings_single_and_list(oai, native):
    one = oai.embeddings.create(model="all-minilm", input="hello")
    # The openai client asks for base64 (float32) vectors: equal to the native ones at float32 precision.
    assert len(one.data) == 1
    assert one.data[0].embedding == pytest.approx(native.embed(model="all-minilm", input="hello").embeddings[0],
                                                  rel=1e-6, abs=1e-7)
    many = oai.embeddings.create(model="all-minilm", input=["hello", "world"])
    assert [d.index for d in many.data] == [0, 1] and many.data[0].embedding == one.data[0].embedding
    assert many.usage.prompt_tokens == 2


@pytest.mark.parametrize("call", [
    lambda c: c.chat.completions.create(model="ghost", messages=HI),
    lambda c: c.chat.completions.create(model="ghost", messages=HI, stream=True),
    lambda c: c.completions.create(model="ghost", prompt="x"),
    lambda c: c.embeddings.create(model="ghost", input="x"),
    lambda c: c.models.retrieve("ghost"),
], ids=["chat", "chat-stream", "completions", "embeddings", "model"])
def test_openai_unknown_model_is_not_found(oai, call):
    with pytest.raises(openai.NotFoundError) as info:
        call(oai)
    # The wording varies by handler ('ghost', "ghost", 'ghost:latest'): the status is what counts.
    assert info.value.status_code == 404 and "ghost" in info.value.message and "not found" in info.value.message


def test_openai_wrong_key_is_authentication_error(gw, double):
    with openai_client(gw, "mlk_not-a-key") as client, pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="llama3.2", messages=HI)
    assert info.value.status_code == 401
    assert info.value.body == {"message": "The API key is not valid", "type": "authentication_error",
                               "param": None, "code": "unauthorized"}
    assert info.value.response.headers["www-authenticate"].startswith("ApiKey")
    assert double.requests == []


def test_openai_x_api_key_header(gw, double):
    # X-API-Key wins over the (wrong) Bearer token the SDK always sends.
    with openai_client(gw, "not-a-key", default_headers={"X-API-Key": Keys.use}) as client:
        assert len(client.models.list().data) == 3
        double.script(tokens=TOKENS)
        assert client.chat.completions.create(model="llama3.2", messages=HI).choices[0].message.content == TEXT


def test_openai_allow_listed_key(gw, double):
    with openai_client(gw, Keys.narrow) as client:
        assert [m.id for m in client.models.list()] == ["llama3.2:latest"]
        assert client.models.retrieve("llama3.2").id == "llama3.2"
        for call in (lambda: client.chat.completions.create(model="qwen3", messages=HI),
                     lambda: client.chat.completions.create(model="qwen3", messages=HI, stream=True),
                     lambda: client.embeddings.create(model="all-minilm", input="x"),
                     lambda: client.models.retrieve("qwen3")):
            with pytest.raises(openai.PermissionDeniedError) as info:
                call()
            assert info.value.status_code == 403
            assert info.value.body["type"] == "permission_error" and info.value.body["code"] == "forbidden"
            assert "may not use the model" in info.value.body["message"]
    assert [r["path"] for r in double.requests] == ["/v1/models", "/v1/models/llama3.2"]


# -- 3. byte for byte ---------------------------------------------------------------------------------------


VARYING = [(re.compile(rb'"created_at":"[^"]*"'), b'"created_at":""'),
           (re.compile(rb'"(\w+_duration)":\d+'), rb'"\1":0'),
           (re.compile(rb'"id":"(chatcmpl|cmpl)-\d+"'), rb'"id":"\1-0"'),
           (re.compile(rb'"created":\d+'), b'"created":0')]


def steady(line: bytes) -> bytes:
    """The line with the fields that vary per call (timestamps, durations, ids) blanked."""
    for pattern, replacement in VARYING:
        line = pattern.sub(replacement, line)
    return line


def without_varying(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("created_at", "created", "id") and not k.endswith("_duration")}


def test_native_stream_relayed_byte_for_byte(gw, double):
    body = {"model": "llama3.2", "prompt": "say hello"}
    double.script(tokens=TOKENS)
    with http("POST", double.url + "/api/generate", json=body, stream=True) as direct:
        expected = ndjson_lines(direct)
    with http("POST", gw.url + "/ollama/api/generate", Keys.use, json=body, stream=True) as relayed:
        assert relayed.status_code == 200
        assert relayed.headers["Content-Type"] == "application/x-ndjson"
        got = ndjson_lines(relayed)
    assert len(got) == len(expected) == len(TOKENS) + 1
    assert [without_varying(json.loads(line)) for line in got] == [without_varying(json.loads(x)) for x in expected]
    # Not re-encoded on the way: Go's \u003c\u0026\u003e escapes and the raw UTF-8 of ✓ arrive as Ollama wrote them.
    assert [steady(line) for line in got] == [steady(line) for line in expected]
    assert b'" \\u003c\\u0026\\u003e"' in got[4] and " ✓".encode() in got[5]
    # And the body went to Ollama unchanged.
    direct_body, relayed_body = [r["body"] for r in double.requests]
    assert relayed_body == direct_body == body


def test_native_whole_answer_relayed_byte_for_byte(gw, double):
    with http("POST", double.url + "/api/show", json={"model": "llama3.2"}) as direct, \
            http("POST", gw.url + "/ollama/api/show", Keys.use, json={"model": "llama3.2"}) as relayed:
        assert relayed.status_code == direct.status_code == 200
        assert relayed.content == direct.content and b"\\u003c|user|\\u003e" in relayed.content
        assert relayed.headers["Content-Type"] == direct.headers["Content-Type"]


def test_openai_stream_relayed_byte_for_byte(gw, double):
    body = {"model": "llama3.2", "messages": HI, "stream": True}
    double.script(tokens=TOKENS)
    with http("POST", double.url + "/v1/chat/completions", json=body, stream=True) as direct:
        expected = sse_data(direct)
    with http("POST", gw.url + "/v1/chat/completions", Keys.use, json=body, stream=True) as relayed:
        assert relayed.status_code == 200
        assert relayed.headers["Content-Type"] == "text/event-stream"
        got = sse_data(relayed)
    assert len(got) == len(expected) == len(TOKENS) + 2 and got[-1] == expected[-1] == b"[DONE]"
    assert [without_varying(json.loads(x)) for x in got[:-1]] == [without_varying(json.loads(x)) for x in expected[:-1]]
    assert [steady(x) for x in got] == [steady(x) for x in expected]


# -- 4. usage -----------------------------------------------------------------------------------------------


def test_usage_counts_what_ollama_reported(gw, double):
    """Every call of one key lands in /api/usage with the token counts the clients were shown."""
    with native_client(gw, Keys.meter) as native, openai_client(gw, Keys.meter) as oai:
        double.script(tokens=TOKENS)
        chat = native.chat(model="llama3.2", messages=HI)
        generated = list(native.generate(model="llama3.2", prompt="say hello there", stream=True))[-1]
        completion = oai.completions.create(model="llama3.2", prompt="one two three")
        embedded = native.embed(model="all-minilm", input=["a b", "c"])
        oai_embedded = oai.embeddings.create(model="all-minilm", input="x y z")
        double.script(tokens=TOKENS)
        whole = oai.chat.completions.create(model="qwen3", messages=HI)
        with oai.chat.completions.create(model="qwen3", messages=HI, stream=True,
                                         stream_options={"include_usage": True}) as stream:
            streamed = list(stream)[-1].usage
        without_usage = list(oai.chat.completions.create(model="qwen3", messages=HI, stream=True))
        assert without_usage[-1].usage is None
        with pytest.raises(ollama.ResponseError):
            native.chat(model="ghost", messages=HI)
        with pytest.raises(openai.NotFoundError):
            oai.chat.completions.create(model="ghost", messages=HI)
    counts = [chat.prompt_eval_count, chat.eval_count, generated.prompt_eval_count, generated.eval_count,
              completion.usage.prompt_tokens, completion.usage.completion_tokens, embedded.prompt_eval_count,
              oai_embedded.usage.prompt_tokens, whole.usage.prompt_tokens, whole.usage.completion_tokens,
              streamed.prompt_tokens, streamed.completion_tokens]
    assert all(isinstance(n, int) and n > 0 for n in counts), counts
    # Rows are named as Ollama names the model (`llama3.2` is `llama3.2:latest`); names Ollama does not
    # have share the one row "", so no request can add rows at will.
    wait_usage(gw, "meter", {
        "llama3.2:latest": {"requests": 3, "errors": 0,
                     "prompt_tokens": chat.prompt_eval_count + generated.prompt_eval_count
                     + completion.usage.prompt_tokens,
                     "completion_tokens": chat.eval_count + generated.eval_count + completion.usage.completion_tokens},
        "all-minilm:latest": {"requests": 2, "errors": 0, "completion_tokens": 0,
                       "prompt_tokens": embedded.prompt_eval_count + oai_embedded.usage.prompt_tokens},
        # The stream without include_usage counts as a request with no tokens (none were reported).
        "qwen3:latest": {"requests": 3, "errors": 0,
                         "prompt_tokens": whole.usage.prompt_tokens + streamed.prompt_tokens,
                         "completion_tokens": whole.usage.completion_tokens + streamed.completion_tokens},
        "": {"requests": 2, "errors": 2, "prompt_tokens": 0, "completion_tokens": 0},
    })
    log = gw.log()
    assert re.search(rf"POST /ollama/api/chat 200 \S+ .*key=meter model=llama3\.2 .*tokens_in={chat.prompt_eval_count} "
                     rf"tokens_out={chat.eval_count}", log)
    assert re.search(r"POST /v1/chat/completions 404 \S+ .*key=meter model=ghost .*upstream_error=model_not_found", log)
    with http("GET", gw.url + "/metrics", Keys.shared) as response:
        metrics = response.text
    assert 'mlops_requests_total{method="POST",route="/ollama/api/<path:route>",status="200"}' in metrics
    assert 'mlops_requests_total{method="POST",route="/v1/chat/completions",status="404"}' in metrics
    assert re.search(r'mlops_llm_tokens_total\{model="qwen3:latest",type="completion"\} [1-9]', metrics)


# -- 5. guarantees ------------------------------------------------------------------------------------------


def test_client_leaving_mid_stream_releases_ollama(gw, double):
    double.script(tokens=[f" t{i}" for i in range(100)], delay=0.05)
    with native_client(gw, Keys.use) as client:
        parts = client.chat(model="llama3.2", messages=HI, stream=True)
        assert [next(parts).message.content for _ in range(3)] == [" t0", " t1", " t2"]
        parts.close()  # closes the httpx response mid-body: the connection to the gateway goes away
        left = time.monotonic()
        record = double.wait_stream_closed(timeout=5)
    assert record["path"] == "/api/chat" and record["client_gone"] and not record["completed"]
    assert record["closed_at"] - left < 1.0 and record["lines_sent"] < 60


STREAM_FAULTS = {"drop": {"fault": "drop", "fault_after": 2},
                 "timeout": {"delay": 1.0}}  # 1 s of silence after the first line; the gateway waits 0.3 s
FAULT_MESSAGES = {"drop": "The connection to Ollama dropped mid-response", "timeout": "Ollama sent nothing for 0.3 s"}
#: The error kind each fault is, as the OpenAI error's `code` names it.
FAULT_CODES = {"drop": "bad_response", "timeout": "timeout"}


@pytest.mark.parametrize("fault", STREAM_FAULTS)
def test_native_stream_fault_ends_with_one_error_line(faulty_gw, double, fault):
    expect_lines = 2 if fault == "drop" else 1
    before = usage(faulty_gw, "use").get("llama3.2:latest", {"requests": 0, "errors": 0})
    double.script(tokens=TOKENS, **STREAM_FAULTS[fault])
    with native_client(faulty_gw, Keys.use) as client:
        parts, stream = [], client.chat(model="llama3.2", messages=HI, stream=True)
        with pytest.raises(ollama.ResponseError) as info:
            for part in stream:
                parts.append(part.message.content)
    assert parts == TOKENS[:expect_lines] and info.value.error == FAULT_MESSAGES[fault]

    double.script(tokens=TOKENS, **STREAM_FAULTS[fault])
    with http("POST", faulty_gw.url + "/ollama/api/chat", Keys.use, json={"model": "llama3.2", "messages": HI},
              stream=True) as response:
        assert response.status_code == 200 and response.headers["Content-Type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in ndjson_lines(response)]
    assert [line["message"]["content"] for line in lines[:-1]] == TOKENS[:expect_lines]
    assert lines[-1] == {"error": FAULT_MESSAGES[fault]}
    # Both failed streams are counted as requests and as errors.
    wait_usage_row(faulty_gw, "use", "llama3.2:latest", requests=before["requests"] + 2, errors=before["errors"] + 2)


@pytest.mark.parametrize("fault", STREAM_FAULTS)
def test_openai_stream_fault_ends_with_one_error_event(faulty_gw, double, fault):
    expect_chunks = 2 if fault == "drop" else 1
    before = usage(faulty_gw, "use").get("llama3.2:latest", {"requests": 0, "errors": 0})
    double.script(tokens=TOKENS, **STREAM_FAULTS[fault])
    with openai_client(faulty_gw, Keys.use) as client:
        deltas = []
        with pytest.raises(openai.APIError) as info:
            for chunk in client.chat.completions.create(model="llama3.2", messages=HI, stream=True):
                deltas.append(chunk.choices[0].delta.content)
    assert deltas == TOKENS[:expect_chunks] and info.value.message == FAULT_MESSAGES[fault]
    assert info.value.body == {"message": FAULT_MESSAGES[fault], "type": "api_error", "param": None,
                               "code": FAULT_CODES[fault]}

    double.script(tokens=TOKENS, **STREAM_FAULTS[fault])
    with http("POST", faulty_gw.url + "/v1/chat/completions", Keys.use, stream=True,
              json={"model": "llama3.2", "messages": HI, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["Content-Type"] == "text/event-stream"
        events = sse_data(response)
    chunks = [json.loads(e) for e in events]
    assert [c["choices"][0]["delta"]["content"] for c in chunks[:-1]] == TOKENS[:expect_chunks]
    assert chunks[-1] == {"error": {"message": FAULT_MESSAGES[fault], "type": "api_error", "param": None,
                                    "code": FAULT_CODES[fault]}}
    wait_usage_row(faulty_gw, "use", "llama3.2:latest", requests=before["requests"] + 2, errors=before["errors"] + 2)


def test_ollama_error_line_from_ollama_passes_through(gw, double):
    """Ollama's own mid-stream `{"error": ...}` line reaches the client as ollama-python expects it."""
    double.script(tokens=TOKENS, fault="error_line", fault_after=3)
    with native_client(gw, Keys.use) as client:
        parts = []
        with pytest.raises(ollama.ResponseError) as info:
            for part in client.generate(model="llama3.2", prompt="x", stream=True):
                parts.append(part.response)
    assert parts == TOKENS[:3] and info.value.error == "an error was encountered while running the model"


def test_malformed_line_from_ollama_is_relayed_as_is(gw, double):
    """A line Ollama garbled is passed on unchanged (the relay does not re-parse), so the client's JSON decoder
    fails on it; since no final line came, the gateway's error line ends the stream after it."""
    double.script(tokens=TOKENS, fault="malformed", fault_after=2)
    with native_client(gw, Keys.use) as client:
        parts = []
        with pytest.raises(json.JSONDecodeError):  # the garbled line comes first, as Ollama sent it
            for part in client.chat(model="llama3.2", messages=HI, stream=True):
                parts.append(part.message.content)
    assert parts == TOKENS[:2]
    double.script(tokens=TOKENS, fault="malformed", fault_after=2)
    with http("POST", gw.url + "/ollama/api/chat", Keys.use, json={"model": "llama3.2", "messages": HI},
              stream=True) as response:
        lines = ndjson_lines(response)
    assert lines[-2] == b'{"response": tru'
    assert json.loads(lines[-1]) == {"error": "Ollama ended the stream before its final event"}
    assert [json.loads(line)["message"]["content"] for line in lines[:-2]] == TOKENS[:2]


def test_rate_limit_429_in_each_api_shape(start_gateway, double):
    gateway = start_gateway(RATE_LIMIT_PER_MINUTE="2")
    message = "The key 'default' may make 2 requests per minute; see Retry-After"
    with native_client(gateway, Keys.shared) as native, openai_client(gateway, Keys.shared) as oai:
        native.list()
        assert len(oai.models.list().data) == 3
        with pytest.raises(ollama.ResponseError) as native_info:
            native.chat(model="llama3.2", messages=HI)
        with pytest.raises(openai.RateLimitError) as openai_info:
            oai.chat.completions.create(model="llama3.2", messages=HI)
    assert native_info.value.status_code == 429 and native_info.value.error == message
    refused = openai_info.value
    assert refused.status_code == 429 and int(refused.response.headers["retry-after"]) >= 1
    assert refused.body == {"message": message, "type": "rate_limit_error", "param": None, "code": "too_many_requests"}
    with http("POST", gateway.url + "/ollama/api/chat", json={"model": "llama3.2", "messages": HI},
              headers={"X-API-Key": Keys.shared}) as response:
        assert response.status_code == 429 and response.json() == {"error": message}
        assert int(response.headers["Retry-After"]) >= 1 and response.headers["Content-Type"] == "application/json"
    assert [r["path"] for r in double.requests] == ["/api/tags", "/v1/models"]


# -- what the relay refuses, and Ollama's own error lines -----------------------------------------------------


@pytest.mark.parametrize("path,body", [
    ("/ollama/api/chat", {"model": "llama3.2", "MODEL": "qwen3", "messages": HI}),
    ("/ollama/api/copy", {"source": "llama3.2", "destination": "x", "Destination": "y"}),
    ("/ollama/api/generate", {"model": "llama3.2", "prompt": "hi", "stream": False, "\u017ftream": True}),
    ("/v1/chat/completions", {"model": "llama3.2", "Model": "qwen3", "messages": HI}),
])
def test_a_model_field_spelled_another_way_is_refused(gw, double, path, body):
    """Ollama (Go) matches JSON keys without regard to case: a second spelling could dodge the allow-list."""
    before = len(double.requests)
    with http("POST", gw.url + path, Keys.shared, json=body) as response:
        assert response.status_code == 400, response.text
        assert "ambiguous field" in response.text.lower()
    assert len(double.requests) == before  # never relayed


@pytest.mark.parametrize("method,path,status", [
    ("HEAD", "/ollama/api/blobs/sha256:" + "0" * 64, 403),  # blobs are not on any scope's list
    ("POST", "/ollama/api/blobs/sha256:" + "0" * 64, 403),
    ("HEAD", "/ollama/api/ps", 405),  # Ollama has HEAD only on /, version and tags
    ("POST", "/ollama/api/pull/", 404),
])
def test_routes_the_relay_does_not_pass_on(gw, double, method, path, status):
    before = len(double.requests)
    with http(method, gw.url + path, Keys.shared, data=b"{}") as response:
        assert response.status_code == status, (response.status_code, response.text)
        if method != "HEAD":
            assert "error" in response.json()
    assert len(double.requests) == before


def test_ollamas_own_error_line_counts_as_an_error(gw, double):
    double.script(tokens=TOKENS, fault="error_line", fault_after=2)
    with http("POST", gw.url + "/ollama/api/chat", Keys.shared, json={"model": "qwen3", "messages": HI},
              stream=True) as response:
        lines = ndjson_lines(response)
    assert json.loads(lines[-1]).keys() == {"error"}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with http("GET", gw.url + "/api/usage?key=default", Keys.shared) as usage:
            rows = {row["model"]: row for row in usage.json()["usage"]}
        if rows.get("qwen3:latest", {}).get("errors"):
            break
        time.sleep(0.1)
    assert rows["qwen3:latest"]["errors"] >= 1, rows


def test_a_dotted_path_is_not_relayed(gw, double):
    """Sent raw (requests would resolve the dots): a path that could mean another route is refused."""
    import http.client

    before = len(double.requests)
    connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        connection.request("POST", "/ollama/api/x/../pull", body=b"{}",
                           headers={"Authorization": f"Bearer {Keys.use}", "Connection": "close"})
        response = connection.getresponse()
        status, body = response.status, response.read()
    finally:
        connection.close()
    assert status in (403, 404), (status, body)  # never relayed as the use key's "x/../pull"
    assert len(double.requests) == before
