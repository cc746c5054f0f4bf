"""The official `ollama` and `openai` Python clients against the Ollama double, with no gateway in between.

If these pass, the double speaks Ollama's wire format (native /api and OpenAI-compatible /v1) well enough
for the real clients, so later tests can aim those clients at the gateway and trust what the double sent.
"""

from __future__ import annotations

import math
import struct

import ollama
import openai
import pytest
from openai import OpenAI

TOKENS = ["Hello", ",", " wor", "ld", " <&>", " ✓"]
TEXT = "".join(TOKENS)


@pytest.fixture
def native(double):
    # headers={...} mirrors how the gateway will be called later; the double ignores the key.
    # A timeout so a double that stops answering fails the test instead of hanging it (the default is none).
    with ollama.Client(host=double.url, headers={"X-API-Key": "x"}, timeout=10) as client:
        yield client


@pytest.fixture
def oai(double):
    # No retries: a 404 or 5xx from the double must surface at once, not after back-off.
    with OpenAI(base_url=double.url + "/v1", api_key="x", max_retries=0, timeout=10) as client:
        yield client


def _last_body(double, path):
    return [r for r in double.requests if r["path"] == path][-1]["body"]


# -- ollama -------------------------------------------------------------------------------------------------


def test_ollama_list(native, double):
    listed = native.list()
    assert [m.model for m in listed.models] == ["llama3.2:latest", "qwen3:latest", "all-minilm:latest"]
    first = listed.models[0]
    assert first.size == 2019393189 and first.digest == double.models[0]["digest"]
    assert first.details.family == "llama" and first.details.parameter_size == "3.2B"
    assert first.modified_at is not None and first.modified_at.utcoffset() is not None
    headers = {k.lower(): v for k, v in double.requests[-1]["headers"].items()}  # httpx sends names lower-cased
    assert headers["x-api-key"] == "x" and headers["user-agent"].startswith("ollama-python/0.6.3")


def test_ollama_chat_whole(native, double):
    double.script(tokens=TOKENS)
    resp = native.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert resp.model == "llama3.2"
    assert resp.message.role == "assistant" and resp.message.content == TEXT
    assert resp.done is True and resp.done_reason == "stop"
    assert resp.eval_count == len(TOKENS) and resp.total_duration > 0
    assert _last_body(double, "/api/chat")["stream"] is False


def test_ollama_chat_stream(native, double):
    double.script(tokens=TOKENS)
    parts = list(native.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert [p.message.content for p in parts] == TOKENS + [""]
    assert [p.done for p in parts] == [False] * len(TOKENS) + [True]
    assert parts[-1].done_reason == "stop" and parts[-1].eval_count == len(TOKENS)
    assert all(p.model == "llama3.2" for p in parts)
    assert _last_body(double, "/api/chat")["stream"] is True


def test_ollama_chat_thinking_model(native, double):
    double.script(tokens=["4"], thinking=["2+2", " is", " 4"])
    resp = native.chat(model="qwen3", messages=[{"role": "user", "content": "2+2?"}], think=True)
    assert resp.message.thinking == "2+2 is 4" and resp.message.content == "4"


def test_ollama_chat_default_reply_and_tool_call(native):
    resp = native.chat(model="llama3.2", messages=[{"role": "user", "content": "echo me"}])
    assert resp.message.content == "You said: echo me"
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "required": ["city"],
                                                              "properties": {"city": {"type": "string"}}}}}]
    resp = native.chat(model="llama3.2", messages=[{"role": "user", "content": "weather in Tokyo?"}], tools=tools)
    (call,) = resp.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Tokyo"}


def test_ollama_generate_whole(native, double):
    double.script(tokens=TOKENS)
    resp = native.generate(model="llama3.2", prompt="say hello")
    assert resp.model == "llama3.2" and resp.response == TEXT
    assert resp.done is True and resp.done_reason == "stop"
    assert resp.context and all(isinstance(i, int) for i in resp.context)
    assert resp.eval_count == len(TOKENS)


def test_ollama_generate_stream(native, double):
    double.script(tokens=TOKENS)
    parts = list(native.generate(model="llama3.2", prompt="say hello", stream=True))
    assert [p.response for p in parts] == TOKENS + [""]
    assert parts[-1].done is True and parts[-1].done_reason == "stop" and parts[-1].context
    assert not any(p.done for p in parts[:-1])


def test_ollama_embed_single_and_list(native):
    one = native.embed(model="all-minilm", input="hello")
    assert one.model == "all-minilm" and len(one.embeddings) == 1
    assert len(one.embeddings[0]) == 384
    assert math.isclose(math.fsum(x * x for x in one.embeddings[0]), 1.0, rel_tol=1e-6)
    many = native.embed(model="all-minilm", input=["hello", "world", "hello"])
    assert len(many.embeddings) == 3 and all(len(v) == 384 for v in many.embeddings)
    assert many.embeddings[0] == many.embeddings[2] == one.embeddings[0] != many.embeddings[1]
    assert many.prompt_eval_count == 3


def test_ollama_show(native, double):
    resp = native.show("llama3.2")
    assert resp.details.family == "llama" and resp.details.quantization_level == "Q4_K_M"
    assert resp.modelinfo["general.architecture"] == "llama"
    assert resp.modelinfo["llama.context_length"] == 131072
    assert "<|user|>" in resp.template and "FROM llama3.2:latest" in resp.modelfile
    assert resp.capabilities == ["completion", "tools"]
    assert _last_body(double, "/api/show") == {"model": "llama3.2"}


def test_ollama_ps(native):
    resp = native.ps()
    (loaded,) = resp.models
    assert loaded.model == "llama3.2:latest" and loaded.size_vram == 2019393189
    assert loaded.context_length == 4096 and loaded.expires_at is not None


@pytest.mark.parametrize("call", [
    lambda c: c.chat(model="ghost", messages=[{"role": "user", "content": "x"}]),
    lambda c: list(c.chat(model="ghost", messages=[{"role": "user", "content": "x"}], stream=True)),
    lambda c: c.generate(model="ghost", prompt="x"),
    lambda c: c.show("ghost"),
    lambda c: c.embed(model="ghost", input="x"),
], ids=["chat", "chat-stream", "generate", "show", "embed"])
def test_ollama_unknown_model_is_404(native, call):
    with pytest.raises(ollama.ResponseError) as info:
        call(native)
    assert info.value.status_code == 404
    assert "ghost" in info.value.error and "not found" in info.value.error


# -- openai -------------------------------------------------------------------------------------------------


def test_openai_models_list(oai):
    models = oai.models.list()
    assert [m.id for m in models] == ["llama3.2:latest", "qwen3:latest", "all-minilm:latest"]
    assert all(m.object == "model" and m.owned_by == "library" and m.created > 1_700_000_000 for m in models)
    # Ollama echoes the name as the path gave it.
    assert oai.models.retrieve("llama3.2").id == "llama3.2"
    assert oai.models.retrieve("llama3.2:latest").owned_by == "library"


def test_openai_chat_whole(oai, double):
    double.script(tokens=TOKENS)
    resp = oai.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert resp.object == "chat.completion" and resp.model == "llama3.2" and resp.id.startswith("chatcmpl-")
    (choice,) = resp.choices
    assert choice.message.role == "assistant" and choice.message.content == TEXT
    assert choice.finish_reason == "stop"
    assert resp.usage.completion_tokens == len(TOKENS)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_openai_chat_stream(oai, double):
    double.script(tokens=TOKENS)
    stream = oai.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}],
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices]
    deltas = [c.choices[0].delta.content for c in content_chunks]
    assert [d for d in deltas if d] == TOKENS
    assert "".join(d or "" for d in deltas) == TEXT
    assert [c.choices[0].finish_reason for c in content_chunks] == [None] * len(TOKENS) + ["stop"]
    assert all(c.object == "chat.completion.chunk" and c.model == "llama3.2" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(TOKENS)


def test_openai_completions(oai, double):
    double.script(tokens=TOKENS)
    resp = oai.completions.create(model="llama3.2", prompt="say hello")
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-")
    assert resp.choices[0].text == TEXT and resp.choices[0].finish_reason == "stop"
    double.script(tokens=TOKENS)
    parts = list(oai.completions.create(model="llama3.2", prompt="say hello", stream=True))
    assert "".join(p.choices[0].text for p in parts) == TEXT
    assert parts[-1].choices[0].finish_reason == "stop"


def f32(vector) -> list:
    return [struct.pack("<f", x) for x in vector]


def test_openai_embeddings_single_and_list(oai, native, double):
    one = oai.embeddings.create(model="all-minilm", input="hello")
    assert one.model == "all-minilm" and len(one.data) == 1 and len(one.data[0].embedding) == 384
    # The client asks for base64 (float32 bytes); they name the very float32 values /api/embed prints.
    assert double.requests[-1]["body"]["encoding_format"] == "base64"
    assert f32(one.data[0].embedding) == f32(native.embed(model="all-minilm", input="hello").embeddings[0])
    many = oai.embeddings.create(model="all-minilm", input=["hello", "world"])
    assert [d.index for d in many.data] == [0, 1] and all(len(d.embedding) == 384 for d in many.data)
    assert many.data[0].embedding == one.data[0].embedding != many.data[1].embedding
    assert many.usage.prompt_tokens == 2


@pytest.mark.parametrize("call, message", [
    (lambda c: c.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}]),
     "model 'ghost' not found"),
    (lambda c: c.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}], stream=True),
     "model 'ghost' not found"),
    (lambda c: c.completions.create(model="ghost", prompt="x"), "model 'ghost' not found"),
    # Each native handler words it its own way (see server/routes.go).
    (lambda c: c.embeddings.create(model="ghost", input="x"), 'model "ghost" not found, try pulling it first'),
    (lambda c: c.models.retrieve("ghost"), "model 'ghost:latest' not found"),
], ids=["chat", "chat-stream", "completions", "embeddings", "model"])
def test_openai_unknown_model_is_not_found(oai, call, message):
    with pytest.raises(openai.NotFoundError) as info:
        call(oai)
    assert info.value.status_code == 404
    assert info.value.message == f"Error code: 404 - {message}"


# -- current Ollama's stricter and newer behaviour, through the official clients --------------------------------


def test_ollama_client_sees_capability_refusals(native):
    with pytest.raises(ollama.ResponseError) as info:
        native.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], think=True)
    assert (info.value.status_code, info.value.error) == (400, '"llama3.2" does not support thinking')
    with pytest.raises(ollama.ResponseError) as info:
        native.generate(model="all-minilm", prompt="hi")
    assert (info.value.status_code, info.value.error) == (400, '"all-minilm" does not support generate')
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    with pytest.raises(ollama.ResponseError) as info:
        native.chat(model="qwen3", messages=[{"role": "user", "content": "hi"}], tools=tools)
    assert info.value.error == "registry.ollama.ai/library/qwen3:latest does not support tools"


def test_ollama_client_logprobs_and_tool_ids(native, double):
    double.script(tokens=TOKENS)
    parts = list(native.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True,
                             logprobs=True, top_logprobs=2))
    assert [p.logprobs[0].token for p in parts[:-1]] == TOKENS
    assert all(len(p.logprobs[0].top_logprobs) == 2 for p in parts[:-1])
    double.reset()
    weather = [{"role": "user", "content": "weather in Tokyo?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
                                                                                     "properties": {}}}}]
    resp = native.chat(model="llama3.2", messages=weather, tools=tools)
    assert resp.message.tool_calls[0].function.name == "get_weather"
    (call,) = [r for r in double.requests if r["path"] == "/api/chat"][-1:]
    assert call["body"]["tools"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("framing", ["odd", "go"])
def test_clients_read_big_lines_in_any_framing(native, oai, double, framing):
    double.script(tokens=TOKENS, framing=framing, big_line_bytes=1_000_000)
    parts = list(native.generate(model="llama3.2", prompt="x", stream=True))
    assert len(parts[0].response) > 999_000 and parts[0].response.startswith(TOKENS[0])
    assert [p.response for p in parts[1:]] == TOKENS[1:] + [""]
    stream = oai.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "x"}], stream=True)
    deltas = [c.choices[0].delta.content for c in stream if c.choices]
    assert len(deltas[0]) > 999_000 and deltas[1:] == TOKENS[1:] + [None]


def test_openai_client_reads_the_current_chunk_shape(oai, double):
    double.script(tokens=["4"], thinking=["2+2", " is", " 4"])
    chunks = list(oai.chat.completions.create(model="qwen3", messages=[{"role": "user", "content": "2+2?"}],
                                              stream=True, stream_options={"include_usage": True}))
    roles = [c.choices[0].delta.role for c in chunks if c.choices]
    assert roles[0] == "assistant" and set(roles[1:]) == {None}
    assert "".join((c.choices[0].delta.model_extra or {}).get("reasoning", "") for c in chunks if c.choices) == \
        "2+2 is 4"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].delta.content is None
    assert chunks[-1].usage.completion_tokens == 4
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "x"}],
                                    reasoning_effort="high")
    assert info.value.status_code == 400 and info.value.body == {
        "message": '"llama3.2" does not support thinking', "type": "invalid_request_error", "param": None,
        "code": None}
