"""Self-test of the Ollama double, driven over real HTTP with requests, http.client and raw sockets."""

from __future__ import annotations

import http.client
import json
import math
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.ollama_double import OllamaDouble

ROOT = Path(__file__).resolve().parents[1]
HELLO = {"model": "llama3.2", "prompt": "hello world"}


@pytest.fixture(scope="module")
def server():
    with OllamaDouble() as double:
        yield double


@pytest.fixture
def double(server):
    server.reset()
    yield server
    server.reset()


def post(double, path, body, **kw):
    return requests.post(double.url + path, json=body, timeout=kw.pop("timeout", 5), **kw)


def ndjson(resp) -> list:
    return [json.loads(line) for line in resp.iter_lines() if line]


def raw_request(url: str, text: str) -> socket.socket:
    """Open a socket to the double and send `text` (an HTTP request) as is."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(text.encode())
    return sock


def generate_request(body: dict, version: str = "HTTP/1.1") -> str:
    data = json.dumps(body)
    return (f"POST /api/generate {version}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n{data}")


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes; fails if it stays open past `timeout`."""
    data, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        if select.select([sock], [], [], end - time.monotonic())[0]:
            part = sock.recv(65536)
            if not part:
                return data
            data += part
    raise AssertionError(f"connection still open after {timeout} s; got {data[:200]!r}")


# -- catalogue endpoints ---------------------------------------------------------------------------------


def test_root_and_version_bytes(double):
    root = requests.get(double.url + "/", timeout=5)
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["Content-Type"] == "text/plain; charset=utf-8"
    version = requests.get(double.url + "/api/version", timeout=5)
    assert version.content == b'{"version":"0.12.6"}'  # compact, no trailing newline
    assert version.headers["Content-Type"] == "application/json; charset=utf-8"
    assert version.headers["Content-Length"] == "20"
    assert "Server" not in version.headers


def test_tags_shape(double):
    models = requests.get(double.url + "/api/tags", timeout=5).json()["models"]
    assert [m["name"] for m in models] == ["llama3.2:latest", "qwen3:latest", "all-minilm:latest"]
    for m in models:
        assert set(m) == {"name", "model", "modified_at", "size", "digest", "details"}
        assert len(m["digest"]) == 64 and int(m["digest"], 16) >= 0
        assert set(m["details"]) == {"parent_model", "format", "family", "families", "parameter_size",
                                     "quantization_level"}
        assert isinstance(m["size"], int) and m["size"] > 0


def test_ps_and_show(double):
    (loaded,) = requests.get(double.url + "/api/ps", timeout=5).json()["models"]
    assert loaded["name"] == "llama3.2:latest"
    assert {"expires_at", "size_vram", "context_length"} <= set(loaded)
    show = post(double, "/api/show", {"model": "llama3.2"})
    body = show.json()
    assert "tools" in body["capabilities"] and body["details"]["family"] == "llama"
    assert body["model_info"]["llama.context_length"] > 0 and body["modified_at"]
    assert b"\\u003c|user|\\u003e" in show.content and b"<" not in show.content  # Go's HTML escaping
    missing = post(double, "/api/show", {"model": "nope"})
    assert (missing.status_code, missing.content) == (404, b'{"error":"model \'nope\' not found"}')


# -- generation ---------------------------------------------------------------------------------------------


def test_generate_lines_arrive_one_by_one(double):
    double.script(delay=0.4)
    started = time.monotonic()
    with post(double, "/api/generate", HELLO, stream=True) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        it = resp.iter_lines()
        first = json.loads(next(it))
        first_at = time.monotonic()
        second = json.loads(next(it))
        second_at = time.monotonic()
        rest = [json.loads(line) for line in it if line]
    assert first_at - started < 0.3, "line 1 must not wait for line 2"
    assert second_at - first_at >= 0.3
    lines = [first, second, *rest]
    assert [x["response"] for x in lines[:-1]] == ["You", " said:", " hello", " world"]
    assert all(x["done"] is False and x["model"] == "llama3.2" for x in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop" and final["context"]
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0
    assert final["created_at"].endswith("Z")


def test_stream_is_default_and_model_is_echoed(double):
    resp = post(double, "/api/generate", {"model": "LLAMA3.2:Latest", "prompt": "hi"})
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    lines = ndjson(resp)
    assert len(lines) == 4 and {x["model"] for x in lines} == {"LLAMA3.2:Latest"}
    rec = double.wait_stream_closed(2)  # the client can see the end before the record is closed
    assert rec["completed"] and rec["lines_sent"] == 4 and rec["model"] == "LLAMA3.2:Latest"


def test_non_stream_shape(double):
    resp = post(double, "/api/generate", {**HELLO, "stream": False})
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert int(resp.headers["Content-Length"]) == len(resp.content) and not resp.content.endswith(b"\n")
    body = resp.json()
    assert body["response"] == "You said: hello world" and body["done"] is True and body["done_reason"] == "stop"
    assert isinstance(body["context"], list) and body["eval_count"] == 4
    chat = post(double, "/api/chat", {"model": "llama3.2", "stream": False,
                                      "messages": [{"role": "user", "content": "hey"}]}).json()
    assert chat["message"] == {"role": "assistant", "content": "You said: hey"} and "context" not in chat
    assert double.streams == []


def test_chat_stream_and_tool_call(double):
    messages = [{"role": "user", "content": "hello"}]
    lines = ndjson(post(double, "/api/chat", {"model": "llama3.2", "messages": messages}))
    assert "".join(x["message"]["content"] for x in lines) == "You said: hello"
    assert lines[-1]["done"] is True and "context" not in lines[-1]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    weather = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    lines = ndjson(post(double, "/api/chat", {"model": "llama3.2", "messages": weather, "tools": tools}))
    assert len(lines) == 2 and lines[0]["message"]["content"] == ""
    assert lines[0]["message"]["tool_calls"] == [
        {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}}]


def test_qwen3_thinks_first_unless_told_not_to(double):
    lines = ndjson(post(double, "/api/generate", {"model": "qwen3", "prompt": "hi"}))
    thinking = [x for x in lines if x.get("thinking")]
    assert thinking and lines[: len(thinking)] == thinking and all(x["response"] == "" for x in thinking)
    assert "".join(x["response"] for x in lines) == "You said: hi"
    lines = ndjson(post(double, "/api/generate", {"model": "qwen3", "prompt": "hi", "think": False}))
    assert not any("thinking" in x for x in lines)
    chat = ndjson(post(double, "/api/chat", {"model": "qwen3", "messages": [{"role": "user", "content": "x"}]}))
    assert chat[0]["message"]["thinking"] and chat[0]["message"]["content"] == ""


def test_scripted_tokens_are_sent_exactly(double):
    tokens = ["héllo", " 🙂", "\n", "\r", ' "q"', "", "<a&b>", "\\", "\u2028"]
    double.script(tokens=tokens, thinking=["hmm"])
    resp = post(double, "/api/generate", HELLO)
    raw = resp.content
    assert "🙂".encode() in raw and "é".encode() in raw  # raw UTF-8, not \u escapes
    assert b"\\u003ca\\u0026b\\u003e" in raw and b"\\u2028" in raw
    lines = [json.loads(line) for line in raw.split(b"\n") if line]
    assert raw.endswith(b"\n") and len(lines) == len(tokens) + 2
    assert lines[0]["thinking"] == "hmm" and [x["response"] for x in lines[1:-1]] == tokens
    whole = post(double, "/api/generate", {**HELLO, "stream": False}).json()
    assert whole["response"] == "".join(tokens) and whole["thinking"] == "hmm"


def test_load_only_requests(double):
    gen = post(double, "/api/generate", {"model": "llama3.2"})
    assert gen.headers["Content-Type"] == "application/json; charset=utf-8"
    assert gen.json()["done_reason"] == "load" and gen.json()["response"] == ""
    chat = post(double, "/api/chat", {"model": "llama3.2", "messages": []}).json()
    assert chat["done_reason"] == "load" and chat["message"]["content"] == ""
    unload = post(double, "/api/generate", {"model": "llama3.2", "keep_alive": 0}).json()
    assert unload["done_reason"] == "unload"


def test_unknown_model_is_404_before_streaming(double):
    for path, body in (("/api/generate", {"model": "ghost", "prompt": "x"}),
                       ("/api/chat", {"model": "ghost", "messages": [{"role": "user", "content": "x"}]})):
        resp = post(double, path, body)
        assert (resp.status_code, resp.content) == (404, b'{"error":"model \'ghost\' not found"}')
    assert double.streams == []


def test_embed(double):
    body = post(double, "/api/embed", {"model": "all-minilm", "input": ["a", "b", "a"]}).json()
    vectors = body["embeddings"]
    assert len(vectors) == 3 and all(len(v) == 8 for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-6 for v in vectors)
    assert {"total_duration", "load_duration", "prompt_eval_count"} <= set(body)
    single = post(double, "/api/embed", {"model": "llama3.2", "input": "a"}).json()
    assert single["embeddings"] == [vectors[0]] and single["model"] == "llama3.2"
    bad = post(double, "/api/embed", {"model": "all-minilm", "input": 3})
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid input type"})


def test_pull_and_delete(double):
    statuses = [x["status"] for x in ndjson(post(double, "/api/pull", {"model": "phi3"}))]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == [
        "verifying sha256 digest", "writing manifest", "success"]
    layer = [s for s in statuses if s.startswith("pulling ") and s != "pulling manifest"]
    assert len(set(layer)) == 2 and all(len(s) == len("pulling ") + 12 for s in layer)
    names = [m["name"] for m in requests.get(double.url + "/api/tags", timeout=5).json()["models"]]
    assert "phi3:latest" in names
    gone = requests.delete(double.url + "/api/delete", json={"model": "phi3"}, timeout=5)
    assert (gone.status_code, gone.content) == (200, b"")
    again = requests.delete(double.url + "/api/delete", json={"model": "phi3"}, timeout=5)
    assert again.status_code == 404


def test_bad_bodies_routes_and_methods(double):
    bad = requests.post(double.url + "/api/generate", data=b"{nope", timeout=5)
    assert bad.status_code == 400 and bad.json()["error"].startswith("invalid character 'n'")
    empty = requests.post(double.url + "/api/chat", data=b"", timeout=5)
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
    array = requests.post(double.url + "/api/chat", data=b"[]", timeout=5)
    assert array.status_code == 400 and "cannot unmarshal array" in array.json()["error"]
    missing = requests.get(double.url + "/api/nothing", timeout=5)
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert missing.headers["Content-Type"].startswith("text/plain")
    wrong = requests.get(double.url + "/api/generate", timeout=5)
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")


def test_origin_header_is_refused_and_recorded(double):
    resp = post(double, "/api/generate", HELLO, headers={"Origin": "http://evil.example"})
    assert (resp.status_code, resp.content) == (403, b"")
    (seen,) = double.requests
    assert seen["headers"]["Origin"] == "http://evil.example" and seen["body"] == HELLO
    assert seen["method"] == "POST" and seen["path"] == "/api/generate"
    assert double.streams == []


# -- faults -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault, status, message", [
    ("status_500", 500, "llama runner process has terminated"),
    ("busy", 503, "server busy, please try again.  maximum pending requests exceeded"),
    ("bad_request", 400, None),
])
@pytest.mark.parametrize("stream", [True, False])
def test_status_faults(double, fault, status, message, stream):
    double.script(fault=fault)
    resp = post(double, "/api/chat", {"model": "llama3.2", "stream": stream,
                                      "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == status
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert resp.json()["error"] == message if message else resp.json()["error"]


def test_drop_closes_without_terminating_chunk(double):
    double.script(fault="drop", fault_after=2)
    got = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        with post(double, "/api/generate", HELLO, stream=True) as resp:
            for line in resp.iter_lines():
                got.append(json.loads(line))
    assert [x["response"] for x in got] == ["You", " said:"]
    rec = double.wait_stream_closed(2)
    assert (rec["lines_sent"], rec["completed"], rec["client_gone"]) == (2, False, False)


def test_malformed_line_then_proper_end(double):
    double.script(fault="malformed", fault_after=1)
    lines = post(double, "/api/generate", HELLO).content.split(b"\n")
    assert json.loads(lines[0])["response"] == "You"
    assert lines[1] == b'{"response": tru' and lines[2:] == [b""]
    with pytest.raises(ValueError):
        json.loads(lines[1])
    assert double.wait_stream_closed(2)["lines_sent"] == 2


def test_error_line_ends_stream_without_done(double):
    double.script(fault="error_line", fault_after=3)
    lines = ndjson(post(double, "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "a b"}]}))
    assert len(lines) == 4 and lines[-1] == {"error": "an error was encountered while running the model"}
    assert not any(x.get("done") for x in lines)


def test_keep_alive_survives_streams_and_faults(double):
    conn = http.client.HTTPConnection(double.url[7:], timeout=5)
    body, headers = json.dumps(HELLO), {"Content-Type": "application/json"}
    conn.request("POST", "/api/generate", body, headers)
    first = conn.getresponse()
    assert first.read().endswith(b'\n') and not first.will_close
    sock = conn.sock
    double.script(fault="malformed")
    conn.request("POST", "/api/generate", body, headers)
    second = conn.getresponse()
    assert b'{"response": tru' in second.read()
    assert conn.sock is sock, "the connection must be reused after a properly ended stream"
    conn.close()


def test_first_delay_withholds_status_and_headers(double):
    double.script(first_delay=0.4)
    started = time.monotonic()
    with post(double, "/api/generate", HELLO, stream=True) as resp:
        waited = time.monotonic() - started
        assert resp.status_code == 200
    assert waited >= 0.35


def test_slow_version(double):
    double.script(fault="slow_version", first_delay=0.3)
    started = time.monotonic()
    assert requests.get(double.url + "/api/version", timeout=5).json() == {"version": "0.12.6"}
    assert time.monotonic() - started >= 0.28
    double.reset()
    started = time.monotonic()
    requests.get(double.url + "/api/tags", timeout=5)
    assert time.monotonic() - started < 0.2


def test_hang_until_reset(double):
    double.script(fault="hang")
    sock = raw_request(double.url, generate_request(HELLO))
    sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        sock.recv(1)
    double.reset()
    assert read_until_closed(sock, 1.0) == b""
    sock.close()


def test_client_gone_mid_stream_is_noticed(double):
    # The pause exceeds the allowed 0.5 s, so only polling (not a failed write) can pass this test.
    double.script(delay=0.6, tokens=[f" t{i}" for i in range(30)])
    resp = post(double, "/api/generate", HELLO, stream=True)
    it = resp.iter_lines()
    next(it), next(it)
    resp.close()
    closed = time.monotonic()
    rec = double.wait_stream_closed(2)
    assert rec["client_gone"] is True and rec["completed"] is False
    assert rec["closed_at"] - closed < 0.5 and rec["lines_sent"] == 2


def test_client_gone_while_silent_is_noticed(double):
    double.script(first_delay=10)
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(double, "/api/generate", HELLO, timeout=0.3)
    gave_up = time.monotonic()
    rec = double.wait_stream_closed(2)
    assert rec["client_gone"] is True and rec["lines_sent"] == 0 and rec["closed_at"] - gave_up < 0.5


def test_http10_client_gets_close_delimited_stream(double):
    sock = raw_request(double.url, generate_request(HELLO, "HTTP/1.0"))
    data = read_until_closed(sock, 2.0)
    sock.close()
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding" not in head and head.startswith(b"HTTP/1.1 200")
    assert [json.loads(x)["done"] for x in body.splitlines()] == [False] * 4 + [True]


def test_stop_wakes_hangs_and_idle_connections():
    double = OllamaDouble().start()
    idle = http.client.HTTPConnection(double.url[7:], timeout=5)
    idle.request("GET", "/api/version")
    idle.getresponse().read()
    double.script(fault="hang")
    hung = raw_request(double.url, generate_request(HELLO))
    time.sleep(0.1)
    started = time.monotonic()
    double.stop()
    assert time.monotonic() - started < 2.0
    assert not double._thread.is_alive()
    assert read_until_closed(hung, 1.0) == b"" and read_until_closed(idle.sock, 1.0) == b""
    hung.close()
    idle.close()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(double.url + "/", timeout=1)


# -- OpenAI layer -------------------------------------------------------------------------------------------


def test_openai_layer(double):
    models = requests.get(double.url + "/v1/models", timeout=5).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "llama3.2:latest"
    msgs = [{"role": "user", "content": "hi"}]
    chat = post(double, "/v1/chat/completions", {"model": "llama3.2", "messages": msgs}).json()
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["content"] == "You said: hi"
    assert chat["choices"][0]["finish_reason"] == "stop" and chat["usage"]["total_tokens"] > 0
    resp = post(double, "/v1/chat/completions", {"model": "llama3.2", "messages": msgs, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert resp.headers["Content-Type"] == "text/event-stream"
    events = [e for e in resp.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks if c["choices"]) == "You said: hi"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    text = post(double, "/v1/completions", {"model": "llama3.2", "prompt": "yo"}).json()
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "You said: yo"
    emb = post(double, "/v1/embeddings", {"model": "all-minilm", "input": ["a", "b"]}).json()
    assert [d["index"] for d in emb["data"]] == [0, 1] and len(emb["data"][0]["embedding"]) == 8
    missing = post(double, "/v1/chat/completions", {"model": "ghost", "messages": msgs})
    assert missing.status_code == 404
    assert missing.json() == {"error": {"message": "model 'ghost' not found", "type": "not_found_error",
                                        "param": None, "code": None}}


# -- remote control and process mode ----------------------------------------------------------------------


def test_control_endpoint(double):
    assert post(double, "/_double/script", {"tokens": ["a", "b"], "delay": 0}).status_code == 200
    assert post(double, "/api/generate", {**HELLO, "stream": False}).json()["response"] == "ab"
    ndjson(post(double, "/api/generate", HELLO))
    double.wait_stream_closed(2)
    seen = requests.get(double.url + "/_double/requests", timeout=5).json()
    assert [r["path"] for r in seen] == ["/api/generate", "/api/generate"] and seen[0]["body"]["prompt"]
    streams = requests.get(double.url + "/_double/streams", timeout=5).json()
    assert len(streams) == 1 and streams[0]["completed"] and streams[0]["lines_sent"] == 3
    bad = post(double, "/_double/script", {"tokenz": []})
    assert bad.status_code == 400 and "tokenz" in bad.json()["error"]
    assert post(double, "/_double/reset", {}).status_code == 200
    assert requests.get(double.url + "/_double/requests", timeout=5).json() == []
    assert post(double, "/api/generate", {**HELLO, "stream": False}).json()["response"] == "You said: hello world"


def test_runs_as_a_process():
    with subprocess.Popen([sys.executable, "-m", "tests.ollama_double", "--port", "0"], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert select.select([proc.stdout], [], [], 10)[0], "the process printed no URL"
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            assert requests.get(url + "/api/version", timeout=5).json() == {"version": "0.12.6"}
            requests.post(url + "/_double/script", json={"fault": "busy"}, timeout=5)
            assert requests.post(url + "/api/generate", json=HELLO, timeout=5).status_code == 503
        finally:
            proc.terminate()
        assert proc.wait(5) == 0, "SIGTERM must stop the server cleanly"
