"""More official clients, unchanged, against the real gateway under gunicorn (in front of the Ollama double).

tests/test_compat_clients.py covers ollama-python and openai-python configured in code; this module adds
  1. ollama-js (the npm package `ollama`, pinned in tests/js_clients/package.json), run with node;
  2. LangChain: langchain-ollama's ChatOllama on /ollama and langchain-openai's ChatOpenAI on /v1;
  3. ollama-python configured by its environment only (OLLAMA_HOST, OLLAMA_API_KEY), in a subprocess;
  4. the routes Ollama added for other APIs: the official `anthropic` SDK on /v1/messages, and openai-python's
     `responses` and `audio.transcriptions` on /v1/responses and /v1/audio/transcriptions.
Each client gets a key of its own, so the usage the gateway counted for it can be checked exactly.

The answers checked are the double's deterministic ones (tests/ollama_double/wire.py): a chat answers
"You said: <last user text>" one word a token, a generate "You said: <prompt>", and a chat with tools whose
prompt mentions weather asks for get_weather(city="Tokyo").
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import wave

# pytest.ini makes every warning an error. These versions (requirements-dev.txt) warn neither on import nor in
# the calls made here, so no filter is set; should an upgrade start to, filter that one warning here, narrowly.
import anthropic
import ollama
import openai
import pytest
import requests
import tiktoken
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI
from langchain_openai.chat_models._client_utils import _cached_sync_httpx_client
from openai import OpenAI

from mlops_backend.security.keys import make_entry, new_token
from tests.ollama_double.wire import WEATHER_CALL
from tests.support import API_KEY, ROOT, GatewayProcess, keys_file

JS_DIR = ROOT / "tests" / "js_clients"
JS_INSTALL = "run scripts/install-test-deps.sh (npm ci --prefix tests/js_clients)"
USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "errors")
MODEL = "llama3.2"
ROW = "llama3.2:latest"  # usage rows are named as Ollama names the model
HI = [{"role": "user", "content": "hi"}]
# The double's answer to HI, token by token (wire.default_tokens), and to the prompt "say hello".
HI_TOKENS = ["You", " said:", " hi"]
HI_TEXT = "".join(HI_TOKENS)
HELLO_TOKENS = ["You", " said:", " say", " hello"]
WRONG_KEY = "mlk_not-a-key"
INVALID_KEY_MESSAGE = "The API key is not valid"
NO_KEY_MESSAGE = "Send the API key in X-API-Key or Authorization: Bearer"
WEATHER_TOOL = {"name": "get_weather", "description": "The weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
WEATHER_PROMPT = [{"role": "user", "content": "What is the weather in Tokyo?"}]


# -- keys, the gateway and helpers ----------------------------------------------------------------------------


class Keys:
    """The module's named keys (tokens in the clear; the file holds only their hashes), one per client."""

    js = new_token()          # ollama-js
    lc_ollama = new_token()   # LangChain's ChatOllama
    lc_openai = new_token()   # LangChain's ChatOpenAI
    env = new_token()         # ollama-python configured by its environment
    claude = new_token()      # the anthropic SDK on /v1/messages
    claude_narrow = new_token()  # the anthropic SDK, a key allow-listed to qwen3 only
    responses = new_token()   # openai-python on /v1/responses and /v1/audio/transcriptions
    shared = API_KEY          # the gateway's shared key: every scope (admin: reads /api/usage)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return keys_file(tmp_path_factory, make_entry("js", Keys.js, ["use"]),
                     make_entry("lc_ollama", Keys.lc_ollama, ["use"]), make_entry("lc_openai", Keys.lc_openai, ["use"]),
                     make_entry("env", Keys.env, ["use"]), make_entry("claude", Keys.claude, ["use"]),
                     make_entry("claude_narrow", Keys.claude_narrow, ["use"], models=["qwen3"]),
                     make_entry("responses", Keys.responses, ["use"]))


@pytest.fixture(scope="module")
def gw(double, keys):
    """This module's gateway: the named keys, fast usage writes."""
    process = GatewayProcess(double.url, API_KEYS_FILE=keys, USAGE_FLUSH_SECONDS="0.2").start()
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def _hermetic_client_environment(monkeypatch):
    """What the clients would read from a developer's environment: no ambient keys, hosts or tracing."""
    for name in ("OLLAMA_API_KEY", "OLLAMA_HOST", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE",
                 "OPENAI_ORG_ID", "OPENAI_ORGANIZATION", "OPENAI_PROJECT_ID",
                 "LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY",
                 "LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("ANTHROPIC_")]:
        monkeypatch.delenv(name)


def http(method, url, key=None, **kwargs):
    """A raw request; `Connection: close` so no keep-alive socket delays the gateway's graceful stop."""
    headers = {"Connection": "close", **({"Authorization": f"Bearer {key}"} if key else {}),
               **kwargs.pop("headers", {})}
    return requests.request(method, url, headers=headers, timeout=10, **kwargs)


def usage(gateway, key_name) -> dict:
    """The gateway's usage rows of one key, by model (GET /api/usage?key=NAME, with the admin key)."""
    with http("GET", gateway.url + "/api/usage", Keys.shared, params={"key": key_name}) as response:
        assert response.status_code == 200, response.text
        return {row["model"]: {f: row[f] for f in USAGE_FIELDS} for row in response.json()["usage"]}


def usage_row(gateway, key_name, model=ROW) -> dict:
    return usage(gateway, key_name).get(model, dict.fromkeys(USAGE_FIELDS, 0))


def wait_usage_row(gateway, key_name, model=ROW, timeout=5.0, **wanted) -> dict:
    """Poll until the fields `wanted` of one usage row have those values (a request counts once it has closed)."""
    deadline = time.monotonic() + timeout
    while True:
        row = usage_row(gateway, key_name, model)
        if all(row.get(k) == v for k, v in wanted.items()) or time.monotonic() > deadline:
            assert {k: row.get(k) for k in wanted} == wanted, row
            return row
        time.sleep(0.05)


def added(before: dict, **more) -> dict:
    """The usage fields `more` added to a row read before the calls."""
    return {k: before[k] + v for k, v in more.items()}


def generation_paths(double) -> list[str]:
    return [r["path"] for r in double.requests if r["path"] not in ("/api/tags", "/v1/models")]


# -- 1. ollama-js through /ollama -----------------------------------------------------------------------------


def run_node(script: str, job: dict) -> dict:
    """Run a tests/js_clients script on a job; fail (not skip) when node or the npm packages are missing."""
    missing = [what for what, ok in [("node", shutil.which("node")),
                                     ("tests/js_clients/node_modules/ollama",
                                      (JS_DIR / "node_modules" / "ollama").is_dir())] if not ok]
    if missing:  # a failure, not a skip: CI installs them
        pytest.fail(f"missing {', '.join(missing)}: {JS_INSTALL}", pytrace=False)
    done = subprocess.run(["node", script, json.dumps(job)], cwd=JS_DIR, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, f"{script} exited with {done.returncode}:\n{done.stderr}"
    return json.loads(done.stdout.strip().split("\n")[-1])


def test_ollama_js_package_is_the_pinned_one():
    """package.json pins one exact version, the lock file agrees, and node_modules holds that version."""
    wanted = json.loads((JS_DIR / "package.json").read_text())["dependencies"]["ollama"]
    assert wanted.count(".") == 2 and wanted.replace(".", "").isdigit(), wanted  # exact, no range
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/ollama"]["version"] == wanted
    installed = JS_DIR / "node_modules" / "ollama" / "package.json"
    if not installed.is_file():
        pytest.fail(f"missing tests/js_clients/node_modules/ollama: {JS_INSTALL}", pytrace=False)
    assert json.loads(installed.read_text())["version"] == wanted


def test_ollama_js_list_chat_and_streams(gw, double):
    before = usage_row(gw, "js")
    out = run_node("ollama_check.mjs", {"host": gw.url + "/ollama", "key": Keys.js, "wrongKey": WRONG_KEY,
                                        "model": MODEL})
    # ollama-js keeps the path of `host`: every call goes under /ollama.
    assert out["host"] == gw.url + "/ollama"
    assert out["list"] == {"result": ["llama3.2:latest", "qwen3:latest", "all-minilm:latest"]}

    chat = out["chat"]["result"]
    assert chat["role"] == "assistant" and chat["content"] == HI_TEXT
    assert chat["done"] is True and chat["done_reason"] == "stop" and chat["eval_count"] == len(HI_TOKENS)

    parts = out["chatStream"]["result"]
    assert [p["content"] for p in parts] == HI_TOKENS + [""]
    assert [p["done"] for p in parts] == [False] * len(HI_TOKENS) + [True] and parts[-1]["done_reason"] == "stop"

    generated = out["generateStream"]["result"]
    assert [p["response"] for p in generated] == HELLO_TOKENS + [""]
    assert generated[-1]["done"] is True and generated[-1]["eval_count"] == len(HELLO_TOKENS)

    # A wrong key: ollama-js's ResponseError carries the gateway's 401 and its {"error"} message.
    for call in ("wrongKeyList", "wrongKeyChatStream"):
        assert out[call] == {"error": {"name": "ResponseError", "message": INVALID_KEY_MESSAGE, "status_code": 401}}

    chat_requests = [r for r in double.requests if r["path"] == "/api/chat"]
    assert [r["body"]["stream"] for r in chat_requests] == [False, True]  # the wrong key's never got there
    assert generation_paths(double) == ["/api/chat", "/api/chat", "/api/generate"]
    # The gateway calls Ollama as itself: ollama-js's key stays at the gateway.
    seen = {k.lower(): v for k, v in chat_requests[0]["headers"].items()}
    assert "authorization" not in seen and "x-api-key" not in seen

    finals = [chat, parts[-1], generated[-1]]
    wait_usage_row(gw, "js", **added(before, requests=3, errors=0,
                                     prompt_tokens=sum(p["prompt_eval_count"] for p in finals),
                                     completion_tokens=sum(p["eval_count"] for p in finals)))


# -- 2. LangChain ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_tiktoken(monkeypatch):
    """ChatOpenAI counts tokens with tiktoken only when asked (get_num_tokens*, trimming), and tiktoken would
    then download its BPE files from the internet, which is not reachable here. invoke and stream take the
    counts from the server's `usage` instead; this makes any tiktoken lookup fail the test at once rather
    than hang on a download."""
    def refuse(*args, **kwargs):
        raise AssertionError("tiktoken was asked for an encoding (it would download one)")

    monkeypatch.setattr(tiktoken, "get_encoding", refuse)
    monkeypatch.setattr(tiktoken, "encoding_for_model", refuse)


@pytest.fixture
def chat_ollama():
    """Make ChatOllama models; their (sync) ollama clients are closed after the test, or their pooled sockets
    would be reported unclosed (a ResourceWarning, an error here) whenever they are collected."""
    made = []

    def make(gateway, key):
        made.append(ChatOllama(model=MODEL, base_url=gateway.url + "/ollama",
                               client_kwargs={"headers": {"Authorization": f"Bearer {key}"}, "timeout": 10}))
        return made[-1]

    yield make
    for model in made:
        model._client.close()


@pytest.fixture
def chat_openai():
    """Make ChatOpenAI models; their HTTP clients are closed after the test (as chat_ollama's are). ChatOpenAI
    shares one cached httpx client per base URL and timeout between its instances: that cache is emptied too,
    so the next test's models build a new one instead of finding it closed."""
    made = []

    def make(gateway, key, **options):
        made.append(ChatOpenAI(model=MODEL, base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=10,
                               **options))
        return made[-1]

    yield make
    for model in made:
        model.root_client.close()
    _cached_sync_httpx_client.cache_clear()


def test_langchain_chat_ollama_invoke_and_stream(gw, double, chat_ollama):
    before = usage_row(gw, "lc_ollama")
    model = chat_ollama(gw, Keys.lc_ollama)
    answer = model.invoke("hi")
    assert answer.content == HI_TEXT
    assert answer.response_metadata["model"] == MODEL and answer.response_metadata["done_reason"] == "stop"
    assert answer.usage_metadata["output_tokens"] == len(HI_TOKENS)

    chunks = list(model.stream("hi"))
    assert [c.content for c in chunks if c.content] == HI_TOKENS
    final = sum(chunks[1:], chunks[0])  # LangChain's own aggregation of the chunks
    assert final.content == HI_TEXT and final.response_metadata.get("done_reason") == "stop"
    assert final.usage_metadata["output_tokens"] == len(HI_TOKENS)

    assert generation_paths(double) == ["/api/chat", "/api/chat"]
    assert all(r["body"]["messages"] == HI for r in double.requests if r["path"] == "/api/chat")
    wait_usage_row(gw, "lc_ollama", **added(
        before, requests=2, errors=0,
        prompt_tokens=answer.usage_metadata["input_tokens"] + final.usage_metadata["input_tokens"],
        completion_tokens=answer.usage_metadata["output_tokens"] + final.usage_metadata["output_tokens"]))


def test_langchain_chat_ollama_wrong_key(gw, double, chat_ollama):
    with pytest.raises(ollama.ResponseError) as info:
        chat_ollama(gw, WRONG_KEY).invoke("hi")
    assert info.value.status_code == 401 and info.value.error == INVALID_KEY_MESSAGE
    assert double.requests == []


def test_langchain_chat_openai_invoke_and_stream(gw, double, chat_openai, no_tiktoken):
    before = usage_row(gw, "lc_openai")
    model = chat_openai(gw, Keys.lc_openai)
    answer = model.invoke("hi")
    assert answer.content == HI_TEXT and answer.response_metadata["finish_reason"] == "stop"
    assert answer.usage_metadata["output_tokens"] == len(HI_TOKENS)

    # stream_usage asks for stream_options.include_usage, so the gateway (and LangChain) see the token counts.
    chunks = list(model.stream("hi", stream_usage=True))
    assert [c.content for c in chunks if c.content] == HI_TOKENS
    streamed = sum(chunks[1:], chunks[0])
    assert streamed.content == HI_TEXT and streamed.usage_metadata["output_tokens"] == len(HI_TOKENS)
    assert streamed.response_metadata.get("finish_reason") == "stop"

    # Chat Completions, not the Responses API (which ChatOpenAI picks for some models and options).
    assert generation_paths(double) == ["/v1/chat/completions", "/v1/chat/completions"]
    bodies = [r["body"] for r in double.requests if r["path"] == "/v1/chat/completions"]
    assert [b.get("stream", False) for b in bodies] == [False, True]
    assert bodies[1]["stream_options"] == {"include_usage": True}
    wait_usage_row(gw, "lc_openai", **added(
        before, requests=2, errors=0,
        prompt_tokens=answer.usage_metadata["input_tokens"] + streamed.usage_metadata["input_tokens"],
        completion_tokens=answer.usage_metadata["output_tokens"] + streamed.usage_metadata["output_tokens"]))


def test_langchain_chat_openai_wrong_key(gw, double, chat_openai, no_tiktoken):
    with pytest.raises(openai.AuthenticationError) as info:
        chat_openai(gw, WRONG_KEY).invoke("hi")
    assert info.value.status_code == 401 and info.value.body["message"] == INVALID_KEY_MESSAGE
    assert double.requests == []


# -- 3. ollama-python configured by its environment only ------------------------------------------------------

ENV_ONLY_SCRIPT = """
import json, ollama

def attempt(call):
    try:
        return {"result": call()}
    except ollama.ResponseError as error:
        return {"error": {"status_code": error.status_code, "error": error.error}}

def chat():
    answer = ollama.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    return {"content": answer.message.content, "prompt_eval_count": answer.prompt_eval_count,
            "eval_count": answer.eval_count}

print(json.dumps({"chat": attempt(chat), "list": attempt(lambda: [m.model for m in ollama.list().models])}))
"""


def run_env_only(gateway, tmp_path, **variables) -> dict:
    """ollama-python's module-level functions in a fresh interpreter, configured only by `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update(OLLAMA_HOST=gateway.url + "/ollama", **variables)
    done = subprocess.run([sys.executable, "-c", ENV_ONLY_SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_ollama_python_from_environment(gw, double, tmp_path):
    before = usage_row(gw, "env")
    out = run_env_only(gw, tmp_path, OLLAMA_API_KEY=Keys.env)
    chat = out["chat"]["result"]
    assert chat["content"] == HI_TEXT and chat["eval_count"] == len(HI_TOKENS)
    assert out["list"] == {"result": ["llama3.2:latest", "qwen3:latest", "all-minilm:latest"]}
    assert generation_paths(double) == ["/api/chat"]
    wait_usage_row(gw, "env", **added(before, requests=1, errors=0, prompt_tokens=chat["prompt_eval_count"],
                                      completion_tokens=chat["eval_count"]))


def test_ollama_python_from_environment_without_key(gw, double, tmp_path):
    out = run_env_only(gw, tmp_path)
    refused = {"error": {"status_code": 401, "error": NO_KEY_MESSAGE}}
    assert out == {"chat": refused, "list": refused}
    assert double.requests == []


# -- 4. other APIs Ollama serves: Anthropic's Messages, OpenAI's Responses and transcriptions -----------------
#
# These need the gateway's /v1/messages, /v1/responses and /v1/audio/transcriptions routes, and the double's
# answers on them. The answers are checked by shape (and for agreement between whole and streamed calls)
# until the double's exact ones are settled.


# The ways the anthropic SDK can carry the key. Since anthropic 2.0 the SDK sends `api_key` as
# `Authorization: Bearer` too (1.x sent it as `X-Api-Key`); `X-Api-Key` is what Claude Code and older SDKs
# send, so that form is given as a header of its own.
CREDENTIALS = {"api_key": lambda key: {"api_key": key},
               "auth_token": lambda key: {"auth_token": key},
               "x-api-key": lambda key: {"default_headers": {"X-Api-Key": key}}}


def claude(gateway, key, credential="api_key"):
    """The anthropic SDK on the gateway's root (it calls <root>/v1/messages), no retries."""
    return anthropic.Anthropic(base_url=gateway.url, max_retries=0, timeout=10, **CREDENTIALS[credential](key))


def text_of(message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_anthropic_messages_create(gw, double, credential):
    before = usage_row(gw, "claude")
    with claude(gw, Keys.claude, credential) as client:
        message = client.messages.create(model=MODEL, max_tokens=64, messages=HI)
    assert message.type == "message" and message.role == "assistant" and message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"] and text_of(message).strip()
    assert message.usage.output_tokens > 0
    assert generation_paths(double) == ["/v1/messages"]
    seen = {k.lower() for k in double.requests[-1]["headers"]}
    assert "x-api-key" not in seen and "authorization" not in seen  # the key stays at the gateway
    wait_usage_row(gw, "claude", **added(before, requests=1, errors=0, prompt_tokens=message.usage.input_tokens,
                                         completion_tokens=message.usage.output_tokens))


def test_anthropic_messages_stream(gw, double):
    with claude(gw, Keys.claude) as client:
        whole = client.messages.create(model=MODEL, max_tokens=64, messages=HI)
        with client.messages.stream(model=MODEL, max_tokens=64, messages=HI) as stream:
            texts = list(stream.text_stream)
            final = stream.get_final_message()
        events = list(client.messages.create(model=MODEL, max_tokens=64, messages=HI, stream=True))
    assert len(texts) >= 1 and all(isinstance(t, str) for t in texts)
    assert "".join(texts) == text_of(final) == text_of(whole) != ""  # the double answers alike each time
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "message_delta" in kinds
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(kinds)
    deltas = [e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    assert "".join(deltas) == text_of(whole)
    assert generation_paths(double) == ["/v1/messages"] * 3


def test_anthropic_tool_call(gw, double):
    with claude(gw, Keys.claude) as client:
        message = client.messages.create(model=MODEL, max_tokens=64, messages=WEATHER_PROMPT, tools=[WEATHER_TOOL])
    assert message.stop_reason == "tool_use"
    (call,) = [block for block in message.content if block.type == "tool_use"]
    assert call.name == WEATHER_CALL["function"]["name"] == "get_weather"
    assert call.input == WEATHER_CALL["function"]["arguments"] and call.id


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_anthropic_wrong_key(gw, double, credential):
    with claude(gw, WRONG_KEY, credential) as client, pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(model=MODEL, max_tokens=64, messages=HI)
    assert info.value.status_code == 401
    # The gateway's own errors come in each API's shape: Anthropic's is {"type": "error", "error": {type, message}}
    # (with a request_id beside them, as Anthropic sends).
    body = info.value.body
    assert body["type"] == "error" and body["error"] == {"type": "authentication_error",
                                                         "message": INVALID_KEY_MESSAGE}
    assert double.requests == []


def test_anthropic_key_allow_listed_to_another_model(gw, double):
    with claude(gw, Keys.claude_narrow) as client, pytest.raises(anthropic.PermissionDeniedError) as info:
        client.messages.create(model=MODEL, max_tokens=64, messages=HI)
    assert info.value.status_code == 403
    body = info.value.body
    assert body["type"] == "error" and body["error"] == {
        "type": "permission_error", "message": f"The key 'claude_narrow' may not use the model {MODEL!r}"}
    assert double.requests == []


def openai_client(gateway, key):
    return OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=10)


def test_openai_responses_whole_and_streamed(gw, double):
    before = usage_row(gw, "responses")
    with openai_client(gw, Keys.responses) as client:
        whole = client.responses.create(model=MODEL, input="hi")
        events = list(client.responses.create(model=MODEL, input="hi", stream=True))
    assert whole.object == "response" and whole.status == "completed" and whole.output_text.strip()
    assert whole.usage.output_tokens > 0
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1].response
    assert deltas == completed.output_text == whole.output_text  # the double answers alike each time
    assert generation_paths(double) == ["/v1/responses", "/v1/responses"]
    wait_usage_row(gw, "responses", **added(before, requests=2, errors=0,
                                            prompt_tokens=whole.usage.input_tokens + completed.usage.input_tokens,
                                            completion_tokens=whole.usage.output_tokens
                                            + completed.usage.output_tokens))


def tiny_wav(seconds: float = 0.25, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV of a quiet 440 Hz-ish square wave, made with the standard library only."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        period = rate // 440
        out.writeframes(b"".join((1000 if (i % period) < period // 2 else -1000).to_bytes(2, "little", signed=True)
                                 for i in range(int(seconds * rate))))
    return buffer.getvalue()


def test_openai_audio_transcription(gw, double):
    audio = tiny_wav()
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    with openai_client(gw, Keys.responses) as client:
        transcription = client.audio.transcriptions.create(model=MODEL, file=("tiny.wav", audio, "audio/wav"))
    assert isinstance(transcription.text, str)
    assert generation_paths(double) == ["/v1/audio/transcriptions"]
    # The multipart body reached Ollama whole (the gateway must not ask a JSON object of this route).
    seen = {k.lower(): v for k, v in double.requests[-1]["headers"].items()}
    assert seen["content-type"].startswith("multipart/form-data")


def test_openai_responses_wrong_key(gw, double):
    with openai_client(gw, WRONG_KEY) as client, pytest.raises(openai.AuthenticationError) as info:
        client.responses.create(model=MODEL, input="hi")
    assert info.value.status_code == 401 and info.value.body["message"] == INVALID_KEY_MESSAGE
    assert double.requests == []
