"""Self-test of the Ollama double, driven over real HTTP with requests, http.client and raw sockets."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import http.client
import itertools
import json
import math
import re
import select
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.ollama_double import OllamaDouble
from tests.ollama_double.gojson import fold, parse_duration
from tests.ollama_double.tls import client_context, make_tls
from tests.ollama_double.wire import VERSION, go_float

ROOT = Path(__file__).resolve().parents[1]
HELLO = {"model": "llama3.2", "prompt": "hello world"}
CA_FILES: dict = {}  # https base URL -> the CA bundle that trusts it (filled by the TLS fixtures)


@pytest.fixture(scope="module")
def server():
    with OllamaDouble() as double:
        yield double


@pytest.fixture
def double(request, server):
    """The module's plain double; with @over_tls, the test runs once over it and once over the TLS one."""
    chosen = request.getfixturevalue("tls_server") if getattr(request, "param", "http") == "https" else server
    chosen.reset()
    yield chosen
    chosen.reset()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """(server SSLContext, CA bundle path): a fresh trustme CA for this module."""
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tls_files):
    with OllamaDouble(tls=tls_files[0]) as double:
        CA_FILES[double.url] = tls_files[1]
        yield double
        CA_FILES.pop(double.url)


over_tls = pytest.mark.parametrize("double", ["http", "https"], indirect=True)


def verify(double):
    """What requests needs for `verify=`: the CA bundle of a TLS double, True otherwise."""
    return CA_FILES.get(double.url if hasattr(double, "url") else double, True)


def post(double, path, body, **kw):
    return requests.post(double.url + path, json=body, timeout=kw.pop("timeout", 5), verify=verify(double), **kw)


def get(double, path, **kw):
    return requests.get(double.url + path, timeout=kw.pop("timeout", 5), verify=verify(double), **kw)


def ndjson(resp) -> list:
    return [json.loads(line) for line in resp.iter_lines() if line]


def connect(url: str, timeout: float = 5) -> socket.socket:
    """A socket to the double at `url`, behind TLS (trusting its CA) for an https URL."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    if url.startswith("https:"):
        try:
            sock = client_context(CA_FILES[url]).wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
    return sock


def http_connection(double, timeout: float = 5) -> http.client.HTTPConnection:
    host, port = double.url.rsplit("/", 1)[-1].split(":")
    if double.url.startswith("https:"):
        return http.client.HTTPSConnection(host, int(port), timeout=timeout, context=client_context(verify(double)))
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def raw_request(url: str, text: str) -> socket.socket:
    """Open a socket (TLS for an https URL) to the double and send `text` (an HTTP request) as is."""
    sock = connect(url)
    sock.sendall(text.encode())
    return sock


def generate_request(body: dict, version: str = "HTTP/1.1") -> str:
    data = json.dumps(body)
    return (f"POST /api/generate {version}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n{data}")


class Raw:
    """One HTTP response read off a raw socket, keeping the chunk boundaries and when each chunk arrived."""

    def __init__(self, status: int, headers: dict, chunks, body: bytes, times: list, head: bytes):
        self.status, self.headers, self.chunks, self.body, self.times, self.head = \
            status, headers, chunks, body, times, head

    def lines(self) -> list:
        return [json.loads(line) for line in self.body.split(b"\n") if line.strip()]


def exchange(double, method: str, path: str, body=None, headers=None, version: str = "HTTP/1.1",
             timeout: float = 10) -> Raw:
    """Send one request on a fresh connection and read the response as framed on the wire."""
    data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    head = {"Host": double.url.split("//")[1], "Content-Length": str(len(data)), "Connection": "close",
            **(headers or {})}
    request = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    with connect(double.url, timeout) as sock:
        sock.sendall(request.encode() + data)
        with sock.makefile("rb") as reader:
            status_line = reader.readline()
            raw_head, fields = status_line, {}
            while True:
                line = reader.readline()
                raw_head += line
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                fields[name.strip().lower()] = value.strip()
            status = int(status_line.split()[1])
            chunks, times, body = None, [], b""
            if method == "HEAD" or status in (204, 304):
                pass
            elif fields.get("transfer-encoding") == "chunked":
                chunks = []
                while True:
                    size = int(reader.readline().strip(), 16)
                    if size == 0:
                        reader.readline()
                        break
                    chunks.append(reader.read(size))
                    times.append(time.monotonic())
                    assert reader.read(2) == b"\r\n"
                body = b"".join(chunks)
            elif "content-length" in fields:
                body = reader.read(int(fields["content-length"]))
            else:
                body = reader.read()
    return Raw(status, fields, chunks, body, times, raw_head)


def line_spans(chunks: list) -> list:
    """For each line of a chunked body (newline included), how many chunks carry part of it."""
    bounds, pos = [], 0
    for chunk in chunks:
        bounds.append((pos, pos + len(chunk)))
        pos += len(chunk)
    body, spans, start = b"".join(chunks), [], 0
    while start < len(body):
        end = body.find(b"\n", start)
        end = len(body) - 1 if end < 0 else end
        spans.append(sum(1 for lo, hi in bounds if lo <= end and hi > start))
        start = end + 1
    return spans


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes; fails if it stays open past `timeout`."""
    data, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending()  # decrypted already: select won't tell
        if pending or select.select([sock], [], [], max(0.0, end - time.monotonic()))[0]:
            try:
                part = sock.recv(65536)
            except ssl.SSLWantReadError:  # part of a TLS record
                continue
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
    assert VERSION == "0.33.0"
    assert version.content == b'{"version":"0.33.0"}'  # compact, no trailing newline
    assert version.headers["Content-Type"] == "application/json; charset=utf-8"
    assert version.headers["Content-Length"] == "20"
    assert "Server" not in version.headers


def test_tags_shape(double):
    models = requests.get(double.url + "/api/tags", timeout=5).json()["models"]
    assert [m["name"] for m in models] == ["llama3.2:latest", "qwen3:latest", "all-minilm:latest"]
    for m in models:  # current servers list capabilities and the context/embedding lengths too
        assert list(m) == ["name", "model", "modified_at", "size", "digest", "details", "capabilities"]
        assert len(m["digest"]) == 64 and int(m["digest"], 16) >= 0
        assert list(m["details"]) == ["parent_model", "format", "family", "families", "parameter_size",
                                      "quantization_level", "context_length", "embedding_length"]
        assert isinstance(m["size"], int) and m["size"] > 0
    assert [m["capabilities"] for m in models] == [["completion", "tools"], ["completion", "thinking"], ["embedding"]]
    assert models[2]["details"]["context_length"] == 512


def test_ps_and_show(double):
    (loaded,) = requests.get(double.url + "/api/ps", timeout=5).json()["models"]
    assert loaded["name"] == "llama3.2:latest"
    assert {"expires_at", "size_vram", "context_length"} <= set(loaded)
    show = post(double, "/api/show", {"model": "llama3.2"})
    body = show.json()
    assert "tools" in body["capabilities"] and body["details"]["family"] == "llama"
    assert body["model_info"]["llama.context_length"] > 0 and body["modified_at"]
    assert b"\\u003c|user|\\u003e" in show.content and b"<" not in show.content  # Go's HTML escaping
    assert len(body["tensors"]) == 255 and body["tensors"][0] == {"name": "token_embd.weight", "type": "Q6_K",
                                                                  "shape": [3072, 128256]}
    assert body["model_info"]["tokenizer.ggml.tokens"] == []  # arrays over 5 items need verbose
    assert list(body)[-3:] == ["tensors", "capabilities", "modified_at"]
    # The handler names the model as it resolved it, tag included.
    missing = post(double, "/api/show", {"model": "nope"})
    assert (missing.status_code, missing.content) == (404, b'{"error":"model \'nope:latest\' not found"}')


# -- generation ---------------------------------------------------------------------------------------------


@over_tls
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
    (call,) = lines[0]["message"]["tool_calls"]
    assert list(call) == ["id", "function"] and re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}
    again = ndjson(post(double, "/api/chat", {"model": "llama3.2", "messages": weather, "tools": tools}))
    assert again[0]["message"]["tool_calls"][0]["id"] == call["id"]  # deterministic


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
    assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)  # all-minilm's embedding_length
    assert vectors[0] == vectors[2] != vectors[1]
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-6 for v in vectors)
    assert {"total_duration", "load_duration", "prompt_eval_count"} <= set(body)
    single = post(double, "/api/embed", {"model": "llama3.2", "input": ["A", "a"]}).json()
    assert [len(v) for v in single["embeddings"]] == [3072, 3072] and single["model"] == "llama3.2"
    assert single["embeddings"][0] == single["embeddings"][1]  # words are lowercased
    bad = post(double, "/api/embed", {"model": "all-minilm", "input": 3})
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid input type"})


def test_embeddings_are_bags_of_words(double):
    texts = ["The cat sat on the mat.", "THE CAT SAT ON THE RED MAT!", "Stock prices fell sharply", "?!"]
    vectors = post(double, "/api/embed", {"model": "all-minilm", "input": texts}).json()["embeddings"]

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b))  # the vectors are normalised

    assert cosine(vectors[0], vectors[1]) > 0.9 > 0.1 > cosine(vectors[0], vectors[2])
    assert all(abs(math.fsum(x * x for x in v) - 1) < 1e-6 for v in vectors)  # no words: the text is one word
    short = post(double, "/api/embed", {"model": "all-minilm", "input": texts[:1], "dimensions": 16}).json()
    assert len(short["embeddings"][0]) == 16 and abs(math.fsum(x * x for x in short["embeddings"][0]) - 1) < 1e-6


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
@over_tls
def test_status_faults(double, fault, status, message, stream):
    double.script(fault=fault)
    resp = post(double, "/api/chat", {"model": "llama3.2", "stream": stream,
                                      "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == status
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert resp.json()["error"] == message if message else resp.json()["error"]


@over_tls
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


@over_tls
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


@over_tls
def test_keep_alive_survives_streams_and_faults(double):
    conn = http_connection(double)
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


@over_tls
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
    assert requests.get(double.url + "/api/version", timeout=5).json() == {"version": VERSION}
    assert time.monotonic() - started >= 0.28
    double.reset()
    started = time.monotonic()
    requests.get(double.url + "/api/tags", timeout=5)
    assert time.monotonic() - started < 0.2


@over_tls
def test_hang_until_reset(double):
    double.script(fault="hang")
    sock = raw_request(double.url, generate_request(HELLO))
    sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        sock.recv(1)
    double.reset()
    assert read_until_closed(sock, 1.0) == b""
    sock.close()


@over_tls
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


@over_tls
def test_client_gone_while_silent_is_noticed(double):
    double.script(first_delay=10)
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(double, "/api/generate", HELLO, timeout=0.3)
    gave_up = time.monotonic()
    rec = double.wait_stream_closed(2)
    assert rec["client_gone"] is True and rec["lines_sent"] == 0 and rec["closed_at"] - gave_up < 0.5


@over_tls
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


@over_tls
def test_openai_layer(double):
    models = get(double, "/v1/models")
    assert models.headers["Content-Type"] == "application/json" and models.content.endswith(b"}\n")  # json.Encoder
    assert models.json()["object"] == "list" and models.json()["data"][0]["id"] == "llama3.2:latest"
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
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == "You said: hi"
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    text = post(double, "/v1/completions", {"model": "llama3.2", "prompt": "yo"}).json()
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "You said: yo"
    assert "logprobs" not in text["choices"][0]
    emb = post(double, "/v1/embeddings", {"model": "all-minilm", "input": ["a", "b"]}).json()
    assert [d["index"] for d in emb["data"]] == [0, 1] and len(emb["data"][0]["embedding"]) == 384
    missing = post(double, "/v1/chat/completions", {"model": "ghost", "messages": msgs})
    assert missing.status_code == 404 and missing.content.endswith(b"}\n")
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
            assert requests.get(url + "/api/version", timeout=5).json() == {"version": VERSION}
            requests.post(url + "/_double/script", json={"fault": "busy"}, timeout=5)
            assert requests.post(url + "/api/generate", json=HELLO, timeout=5).status_code == 503
        finally:
            proc.terminate()
        assert proc.wait(5) == 0, "SIGTERM must stop the server cleanly"


# -- framing as Go's net/http does it -------------------------------------------------------------------------


@over_tls
def test_small_bodies_have_content_length_and_big_ones_are_chunked(double):
    small = exchange(double, "GET", "/api/tags")  # three models: about 1.1 KiB
    assert small.chunks is None and int(small.headers["content-length"]) == len(small.body) < 2048
    assert "transfer-encoding" not in small.headers
    show = exchange(double, "POST", "/api/show", {"model": "llama3.2"})  # tensors make it ~20 KB
    assert show.headers["transfer-encoding"] == "chunked" and "content-length" not in show.headers
    assert len(show.chunks) > 1 and len(show.body) > 2048  # odd framing: several chunks
    assert json.loads(show.body)["details"]["family"] == "llama"
    double.script(framing="go")
    show_go = exchange(double, "POST", "/api/show", {"model": "llama3.2"})
    assert [len(c) for c in show_go.chunks] == [len(show_go.body)]  # net/http: one Write, one chunk
    assert show_go.body == show.body


def test_the_2048_byte_threshold():
    # A catalogue whose /api/tags body is exactly 2048 bytes, then one byte longer.
    def catalogue(name: str) -> list:
        return [{"name": name, "model": "m", "modified_at": "2025-01-01T00:00:00Z", "digest": "0" * 64}]

    with OllamaDouble(models=catalogue("m")) as d:
        base = len(exchange(d, "GET", "/api/tags").body)
    name = "m" * (2048 - base + 1)
    for extra, chunked in ((0, False), (1, True)):
        with OllamaDouble(models=catalogue(name + "x" * extra)) as d:
            got = exchange(d, "GET", "/api/tags")
            assert len(got.body) == 2048 + extra
            assert (got.chunks is not None) is chunked
            assert ("content-length" in got.headers) is not chunked


def test_head_and_http10_framing():
    many = [{"name": f"model-{i}"} for i in range(40)]
    with OllamaDouble(models=many) as d:
        big = exchange(d, "HEAD", "/api/tags")  # > 2 KiB: net/http sends neither length nor chunking
        assert big.status == 200 and "content-length" not in big.headers and "transfer-encoding" not in big.headers
        small = exchange(d, "HEAD", "/api/version")
        assert small.headers["content-length"] == str(len(f'{{"version":"{VERSION}"}}')) and small.body == b""
        old = exchange(d, "GET", "/api/tags", version="HTTP/1.0")
        assert "content-length" not in old.headers and "transfer-encoding" not in old.headers
        assert len(json.loads(old.body)["models"]) == 40  # the body ended when the connection did
        listed = exchange(d, "GET", "/v1/models")
        assert listed.headers["transfer-encoding"] == "chunked" and listed.body.endswith(b"\n")


@over_tls
def test_odd_framing_merges_ready_lines_and_splits_lines(double):
    double.script(tokens=[f" t{i}" for i in range(12)])
    got = exchange(double, "POST", "/api/generate", HELLO)
    lines = got.lines()
    assert [x["response"] for x in lines[:-1]] == [f" t{i}" for i in range(12)] and lines[-1]["done"]
    assert any(chunk.count(b"\n") >= 2 for chunk in got.chunks), "ready lines should share a chunk"
    spans = line_spans(got.chunks)
    assert len(spans) == 13 and max(spans) >= 2, "some line should be cut across chunks"
    assert not all(chunk.endswith(b"\n") for chunk in got.chunks)
    again = exchange(double, "POST", "/api/generate", HELLO)
    assert line_spans(again.chunks) == spans  # deterministic: same cuts for the same stream
    assert [c.count(b"\n") for c in again.chunks] == [c.count(b"\n") for c in got.chunks]
    rec = double.wait_stream_closed(2)
    assert rec["lines_sent"] == 13 and rec["chunks_sent"] == len(again.chunks)


@over_tls
def test_go_framing_is_one_line_per_chunk(double):
    double.script(tokens=[f" t{i}" for i in range(6)], framing="go")
    got = exchange(double, "POST", "/api/generate", HELLO)
    assert all(chunk.count(b"\n") == 1 and chunk.endswith(b"\n") for chunk in got.chunks)
    assert len(got.chunks) == 7
    sse_stream = exchange(double, "POST", "/v1/chat/completions",
                          {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": True,
                           "stream_options": {"include_usage": True}})
    # The finish chunk, the usage chunk and [DONE] come from one native line: one flush, one chunk.
    assert sse_stream.chunks[-1].count(b"data: ") == 3 and sse_stream.chunks[-1].endswith(b"data: [DONE]\n\n")
    assert all(chunk.count(b"data: ") == 1 for chunk in sse_stream.chunks[:-1])


def test_go_framing_imitates_the_2k_buffer():
    from tests.ollama_double.transport import Framer
    run = [(b"a" * 1500, 0), (b"b" * 1000, 0), (b"c" * 10, 1), (b"d" * 3000, 2), (b"e", 3), (b"f", 3)]
    assert [len(c) for c in Framer("go").plan(run)] == [2048, 452, 10, 3000, 2]
    assert Framer("go").plan(run)[0] == b"a" * 1500 + b"b" * 548


@over_tls
def test_odd_framing_keeps_token_timing(double):
    # Each line is due 0.3 s after the previous one; the pieces of one line must arrive together.
    double.script(tokens=["a", "b", "c"], delay=0.3, big_line_bytes=3000)
    got = exchange(double, "POST", "/api/generate", HELLO)
    assert len(got.lines()) == 4
    ends, pos, per_line = [], 0, {}
    for chunk, at in zip(got.chunks, got.times):
        line = got.body[:pos].count(b"\n")
        per_line.setdefault(line, []).append(at)
        pos += len(chunk)
        ends.append(pos)
    assert len(per_line[0]) >= 2, "a 3000-byte line goes out in pieces"
    for times in per_line.values():
        assert max(times) - min(times) < 0.15, "a line's second half is never delayed"
    firsts = [min(per_line[i]) for i in sorted(per_line)]
    assert all(b - a >= 0.25 for a, b in itertools.pairwise(firsts))


@over_tls
def test_big_line_of_ten_megabytes(double):
    size = 10 * 1024 * 1024
    double.script(big_line_bytes=size)
    got = exchange(double, "POST", "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]})
    first = got.body.split(b"\n", 1)[0] + b"\n"
    assert len(first) == size
    # Pieces of 4 KiB; the last one may share its chunk with the short lines that follow.
    assert sorted(len(c) for c in got.chunks)[-3] <= 4096 and max(len(c) for c in got.chunks) < 8192
    assert len(got.chunks) > size // 4096
    line = json.loads(first)
    assert line["message"]["content"].startswith("You") and len(line["message"]["content"]) > size - 200
    assert [x["done"] for x in got.lines()] == [False, False, False, True]
    whole = post(double, "/api/chat", {"model": "llama3.2", "stream": False,
                                       "messages": [{"role": "user", "content": "x"}]}, timeout=30)
    assert len(whole.content) == size and whole.headers["Transfer-Encoding"] == "chunked"
    double.script(big_line_bytes=5000)
    events = exchange(double, "POST", "/v1/chat/completions",
                      {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": True})
    assert len(events.body.split(b"\n\n")[0]) + 2 == 5000


def test_verbose_show_can_be_megabytes(double):
    plain = post(double, "/api/show", {"model": "llama3.2"})
    verbose = post(double, "/api/show", {"model": "llama3.2", "verbose": True})
    assert plain.json()["model_info"]["tokenizer.ggml.tokens"] == []
    assert len(verbose.json()["model_info"]["tokenizer.ggml.tokens"]) == 300
    assert len(verbose.content) > len(plain.content)
    double.script(verbose_show_bytes=4_000_000)
    huge = post(double, "/api/show", {"model": "llama3.2", "verbose": True}, timeout=30)
    assert 3_800_000 < len(huge.content) < 4_200_000 and huge.headers["Transfer-Encoding"] == "chunked"
    assert huge.json()["tensors"] == verbose.json()["tensors"]
    assert len(post(double, "/api/show", {"model": "llama3.2"}).content) == len(plain.content)


# -- JSON keys as Go's encoding/json matches them --------------------------------------------------------------


def test_fold_is_simple_unicode_folding():
    assert fold("STREAM") == fold("Stream") == fold("stream") == fold("\u017ftream")  # long s
    assert fold("\u212aeep_alive") == fold("keep_alive")  # Kelvin sign
    assert fold("\u00df") != fold("ss") and fold("\u1e9e") == fold("\u00df")  # sharp s folds only with capital
    assert fold("\u0131") != fold("i") and fold("\u0130") != fold("i")  # dotless i, dotted capital I
    assert fold("\u0130") != fold("\u0131") and fold("I") == fold("i")
    assert fold("\u03a3") == fold("\u03c3") == fold("\u03c2")  # sigma, final sigma


def test_top_level_keys_fold_and_the_last_one_wins(double):
    whole = post(double, "/api/generate", {"model": "llama3.2", "prompt": "hi", "STREAM": False})
    assert whole.headers["Content-Type"] == "application/json; charset=utf-8" and whole.json()["done"]
    # Both keys fold to `stream`: the later one (true) wins.
    raw = b'{"model":"llama3.2","prompt":"hi","stream":false,"\xc5\xbftream":true}'
    streamed = requests.post(double.url + "/api/generate", data=raw, timeout=5)
    assert streamed.headers["Content-Type"] == "application/x-ndjson"
    raw = b'{"MODEL":"ghost","Model":"llama3.2","prompt":"hi","stream":false}'
    assert requests.post(double.url + "/api/generate", data=raw, timeout=5).json()["model"] == "llama3.2"
    unload = post(double, "/api/generate", {"model": "llama3.2", "\u212aeep_alive": 0})
    assert unload.json()["done_reason"] == "unload"
    # Dotless and dotted i are not i: these keys are unknown, so nothing asks llama3.2 to think.
    for key in ("th\u0131nk", "th\u0130nk"):
        assert post(double, "/api/generate", {"model": "llama3.2", "prompt": "hi", key: True,
                                              "stream": False}).status_code == 200
    assert post(double, "/api/generate", {"model": "llama3.2", "prompt": "hi", "THINK": True}).status_code == 400
    assert post(double, "/api/generate", {"model": "llama3.2", "prompt": "hi", "\u00dfTREAM": False}).headers[
        "Content-Type"] == "application/x-ndjson"  # "ßTREAM" is not "stream"
    v1 = post(double, "/v1/chat/completions", {"MODEL": "llama3.2", "Messages": [{"ROLE": "user", "Content": "x"}],
                                               "\u017fTREAM": True})
    assert v1.headers["Content-Type"] == "text/event-stream"


def test_nested_struct_keys_fold_but_map_keys_do_not(double):
    messages = [{"ROLE": "User", "CONTENT": "ignored", "content": "kept"}]
    chat = post(double, "/api/chat", {"model": "llama3.2", "messages": messages, "stream": False}).json()
    assert chat["message"]["content"] == "You said: kept"  # role lower-cased, last content wins
    tools = [{"TYPE": "function", "Function": {"NAME": "get_weather", "Parameters": {"type": "object"}}}]
    weather = [{"role": "user", "content": "weather in Tokyo?"}]
    called = post(double, "/api/chat", {"model": "llama3.2", "messages": weather, "TOOLS": tools, "stream": False})
    assert called.json()["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    refused = post(double, "/api/chat", {"model": "qwen3", "messages": weather, "T\u00d8OLS": tools})
    assert refused.status_code == 200  # not a key for `tools`
    # options is a Go map: exact keys only.
    limited = post(double, "/api/generate", {**HELLO, "stream": False, "options": {"num_predict": 1}}).json()
    assert (limited["response"], limited["done_reason"]) == ("You", "length")
    ignored = post(double, "/api/generate", {**HELLO, "stream": False, "options": {"NUM_PREDICT": 1}}).json()
    assert ignored["done_reason"] == "stop"
    merged = post(double, "/api/generate", {**HELLO, "stream": False, "options": {"seed": 1},
                                            "OPTIONS": {"num_predict": 2}}).json()
    assert merged["response"] == "You said:"  # a second object for one map field merges into it


@pytest.mark.parametrize("body, message", [
    (b'{"model":"llama3.2","stream":"no"}',
     "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool"),
    (b'{"model":"llama3.2","top_logprobs":2.5}',
     "json: cannot unmarshal number 2.5 into Go struct field GenerateRequest.top_logprobs of type int"),
    (b'{"model":"llama3.2","prompt":["a"]}',
     "json: cannot unmarshal array into Go struct field GenerateRequest.prompt of type string"),
    (b'{"model":"llama3.2","options":[1]}',
     "json: cannot unmarshal array into Go struct field GenerateRequest.options of type map[string]interface {}"),
    (b'{"model":"llama3.2","think":"extreme"}',
     'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, or false)'),
    (b'{"model":"llama3.2","think":1}',
     'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'),
    (b'{"model":"llama3.2","keep_alive":"5 minutes"}', 'time: unknown unit " minutes" in duration "5 minutes"'),
    (b'{"model":"llama3.2","keep_alive":true}', "Unsupported type: 'bool'"),
    (b'{"model":"llama3.2","prompt":NaN}', "invalid character 'N' looking for beginning of value"),
    (b'{"model":"llama3.2","prompt":tru}', "invalid character '}' in literal true (expecting 'e')"),
    (b'[1 2]', "invalid character '2' after array element"),
])
def test_go_decoder_errors(double, body, message):
    resp = requests.post(double.url + "/api/generate", data=body, timeout=5)
    assert (resp.status_code, resp.json()) == (400, {"error": message})


def test_go_decoder_oddities(double):
    chat = requests.post(double.url + "/api/chat", timeout=5,
                         data=b'{"model":"llama3.2","messages":[{"role":"user","content":5}]}').json()
    assert chat == {"error": "json: cannot unmarshal number into Go struct field ChatRequest.messages.content "
                             "of type string"}
    tool = requests.post(double.url + "/api/chat", timeout=5,
                         data=b'{"model":"llama3.2","tools":[{"function":{"name":7}}]}').json()
    assert tool["error"].endswith("Go struct field ToolFunction.tools.function.name of type string")
    # Decode reads one JSON value and never looks at what follows it.
    trailing = requests.post(double.url + "/api/generate", data=b'{"model":"llama3.2","prompt":"hi","stream":false}'
                             b'{"prompt":"ignored"} and garbage', timeout=5)
    assert trailing.json()["response"] == "You said: hi"
    assert requests.post(double.url + "/api/generate", data=b"  \n ", timeout=5).json() == {
        "error": "missing request body"}
    assert parse_duration("1h30m") == 5_400_000_000_000 and parse_duration("-1s") == -1_000_000_000
    assert [go_float(x) for x in (1.0, 1e-7, 0.00001, 1e21, -2.5)] == ["1", "1e-7", "0.00001", "1e+21", "-2.5"]


# -- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, body, message", [
    ("/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "think": True},
     '"llama3.2" does not support thinking'),
    ("/api/generate", {"model": "LLAMA3.2", "prompt": "x", "think": "high"}, '"LLAMA3.2" does not support thinking'),
    ("/api/chat", {"model": "qwen3", "messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "function", "function": {"name": "f"}}]},
     "registry.ollama.ai/library/qwen3:latest does not support tools"),
    ("/api/generate", {"model": "all-minilm", "prompt": "x"}, '"all-minilm" does not support generate'),
    ("/api/chat", {"model": "all-minilm", "messages": [{"role": "user", "content": "x"}]},
     '"all-minilm" does not support chat'),
    ("/api/generate", {"model": "llama3.2", "prompt": "x", "suffix": "y"},
     "registry.ollama.ai/library/llama3.2:latest does not support insert"),
    ("/api/chat", {"model": "llama3.2", "messages": [], "top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
    ("/api/generate", {"model": "ghost", "prompt": "x", "top_logprobs": -1}, "top_logprobs must be between 0 and 20"),
    ("/api/generate", {"model": "bad name!", "prompt": "x"}, "invalid model name"),
    ("/api/chat", {"model": " ", "messages": []}, "model is required"),
])
def test_capability_refusals(double, path, body, message):
    resp = post(double, path, body)
    assert (resp.status_code, resp.json()) == (400, {"error": message})
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert double.streams == []


def test_think_levels_and_false(double):
    for level in (True, "low", "medium", "high", "max"):
        lines = ndjson(post(double, "/api/generate", {"model": "qwen3", "prompt": "hi", "think": level}))
        assert lines[0]["thinking"], level
    quiet = post(double, "/api/chat", {"model": "llama3.2", "think": False, "stream": False,
                                       "messages": [{"role": "user", "content": "hi"}]})
    assert quiet.status_code == 200 and "thinking" not in quiet.json()["message"]
    assert post(double, "/api/generate", {"model": "llama3.2", "prompt": "hi", "think": None}).status_code == 200
    bad_option = post(double, "/api/generate", {**HELLO, "options": {"temperature": "hot"}})
    assert (bad_option.status_code, bad_option.json()) == (
        500, {"error": 'option "temperature" must be of type float32'})


def test_cloud_models_need_a_signed_in_server(double):
    for path, body in (("/api/chat", {"model": "gpt-oss:120b-cloud", "messages": []}),
                       ("/api/generate", {"model": "kimi:cloud", "prompt": "x"}),
                       ("/v1/chat/completions", {"model": "gpt-oss:120b-cloud",
                                                 "messages": [{"role": "user", "content": "x"}]})):
        resp = post(double, path, body)
        assert resp.status_code == 401 and resp.json()["error"] == "unauthorized", path
        assert resp.json()["signin_url"].startswith("https://ollama.com/connect?name=")
    conflict = post(double, "/api/generate", {"model": "x:cloud:local", "prompt": "x"})
    assert conflict.json() == {"error": 'use either :local or :cloud, not both: "x:cloud:local"'}
    local = post(double, "/api/generate", {"model": "llama3.2:local", "prompt": "x", "stream": False}).json()
    assert local["model"] == "llama3.2:local" and local["response"] == "You said: x"


# -- routes a current server has ----------------------------------------------------------------------------


def test_copy(double):
    done = post(double, "/api/copy", {"source": "llama3.2", "destination": "backup:v1"})
    assert (done.status_code, done.content, done.headers["Content-Length"]) == (200, b"", "0")
    tags = requests.get(double.url + "/api/tags", timeout=5).json()["models"]
    assert tags[0]["name"] == "backup:v1" and tags[0]["digest"] == tags[1]["digest"]
    assert post(double, "/api/generate", {"model": "backup:v1", "prompt": "x"}).status_code == 200
    missing = post(double, "/api/copy", {"source": "ghost", "destination": "x"})
    assert (missing.status_code, missing.json()) == (404, {"error": 'model "ghost" not found'})
    invalid = post(double, "/api/copy", {"source": "llama3.2", "destination": "a/b/c/d"})
    assert (invalid.status_code, invalid.json()) == (400, {"error": 'destination "a/b/c/d" is invalid'})
    assert post(double, "/api/copy", {"destination": "x"}).json() == {"error": 'source "" is invalid'}


def test_create(double):
    resp = post(double, "/api/create", {"model": "mario", "from": "llama3.2", "system": "You are Mario."})
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    statuses = [x["status"] for x in ndjson(resp)]
    assert statuses[:4] == [f"using existing layer sha256:{s}" for s in statuses_digests(statuses[:4])]
    assert statuses[4].startswith("creating new layer sha256:") and statuses[-2:] == ["writing manifest", "success"]
    mario = post(double, "/api/show", {"model": "mario"}).json()
    assert mario["capabilities"] == ["completion", "tools"]
    neither = post(double, "/api/create", {"model": "luigi"})
    assert (neither.status_code, neither.json()) == (400, {"error": "neither 'from' or 'files' was specified"})
    assert neither.headers["Content-Type"] == "application/json"  # the error came out of the stream writer
    quiet = post(double, "/api/create", {"model": "peach", "from": "qwen3", "stream": False})
    assert (quiet.json(), quiet.headers["Content-Type"]) == ({"status": "success"}, "application/json")
    lost = ndjson(post(double, "/api/create", {"model": "toad", "from": "ghost"}))
    assert lost == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
    assert post(double, "/api/create", {"model": "x", "files": {"../w.gguf": "sha256:" + "0" * 64}}).json() == {
        "error": "file path must be relative"}
    assert post(double, "/api/create", {"model": "bad name!", "from": "llama3.2"}).json() == {
        "error": "invalid model name"}


def statuses_digests(statuses: list) -> list:
    return [s.rsplit(":", 1)[-1] for s in statuses]


def test_blobs_then_create_from_files(double):
    data = b"GGUF fake weights"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    head = exchange(double, "HEAD", f"/api/blobs/{digest}")
    assert head.status == 404 and head.body == b"" and int(head.headers["content-length"]) > 0
    wrong = exchange(double, "POST", "/api/blobs/sha256:" + "a" * 64, data)
    assert wrong.status == 400
    assert json.loads(wrong.body) == {"error": f'digest mismatch, expected "sha256:{"a" * 64}", got "{digest}"'}
    # The upload was kept under what it really is, mismatch or not.
    assert exchange(double, "HEAD", f"/api/blobs/{digest}").status == 200
    fresh = exchange(double, "POST", "/api/blobs/sha256:" + hashlib.sha256(b"other").hexdigest(), b"other")
    assert (fresh.status, fresh.body) == (201, b"")
    assert exchange(double, "POST", f"/api/blobs/{digest}", data).status == 200  # already there
    bad = exchange(double, "HEAD", "/api/blobs/md5:abc")
    assert bad.status == 400 and "content-length" in bad.headers
    created = ndjson(post(double, "/api/create", {"model": "fromfile", "files": {"model.gguf": digest}}))
    assert [x["status"] for x in created] == ["parsing GGUF", f"using existing layer {digest}", "writing manifest",
                                               "success"]
    missing = post(double, "/api/create", {"model": "nofile", "files": {"model.gguf": "sha256:" + "b" * 64}})
    assert missing.status_code == 500 and "no such file or directory" in missing.json()["error"]


def test_push_is_refused_without_an_account(double):
    lines = ndjson(post(double, "/api/push", {"model": "llama3.2"}))
    assert lines == [{"status": "retrieving manifest"}, {"error": "unauthorized: access denied"}]
    unknown = ndjson(post(double, "/api/push", {"model": "ghost"}))
    assert unknown[:2] == [{"status": "retrieving manifest"}, {"status": "couldn't retrieve manifest"}]
    assert unknown[2]["error"].endswith("/manifests/registry.ollama.ai/library/ghost/latest: no such file or directory")
    quiet = post(double, "/api/push", {"model": "llama3.2", "stream": False})
    assert (quiet.status_code, quiet.json()) == (500, {"error": "unauthorized: access denied"})
    assert post(double, "/api/push", {}).json() == {"error": "model is required"}


def test_account_and_cloud_routes_of_a_signed_out_server(double):
    me = post(double, "/api/me", {})
    assert me.status_code == 401 and list(me.json()) == ["error", "signin_url"]
    url = me.json()["signin_url"]
    assert re.fullmatch(r"https://ollama\.com/connect\?name=[^&]+&key=[A-Za-z0-9_-]+", url)
    assert base64.urlsafe_b64decode(url.rsplit("=", 1)[-1] + "==").startswith(b"ssh-ed25519 ")
    out = post(double, "/api/signout", {})
    assert (out.status_code, out.json()) == (401, {"error": "you are not currently signed in"})
    key = requests.delete(double.url + "/api/user/keys/c3NoLWVkMjU1MTk", timeout=5)
    assert (key.status_code, key.json()) == (401, {"error": "you are not currently signed in"})
    status = requests.get(double.url + "/api/status", timeout=5)
    assert status.json() == {"cloud": {"disabled": False, "source": "none"}}
    for path in ("/api/experimental/web_search", "/api/experimental/web_fetch"):
        empty = requests.post(double.url + path, data=b" ", timeout=5)
        assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
        asked = requests.post(double.url + path, data=b'{"query": "ollama"}', timeout=5)
        assert asked.status_code == 401 and asked.json()["signin_url"] == url
    recs = requests.get(double.url + "/api/experimental/model-recommendations", timeout=5).json()["recommendations"]
    assert recs and all({"model", "description"} <= set(r) for r in recs)
    paths = [r["path"] for r in double.requests]
    assert paths[:3] == ["/api/me", "/api/signout", "/api/user/keys/c3NoLWVkMjU1MTk"]


@pytest.mark.parametrize("method, path, status, allow", [
    ("HEAD", "/", 200, None), ("HEAD", "/api/version", 200, None), ("HEAD", "/api/tags", 200, None),
    ("HEAD", "/api/ps", 405, "GET"), ("HEAD", "/api/show", 405, "POST"), ("HEAD", "/v1/models", 405, "GET"),
    ("GET", "/api/generate", 405, "POST"), ("POST", "/api/tags", 405, "HEAD, GET"), ("PUT", "/", 405, "HEAD, GET"),
    ("GET", "/api/blobs/sha256:x", 405, "HEAD, POST"), ("GET", "/api/user/keys/k", 405, "DELETE"),
    ("GET", "/api/nothing", 404, None), ("HEAD", "/api/nothing", 404, None), ("GET", "/v1/models/a/b", 404, None),
])
def test_methods_and_paths(double, method, path, status, allow):
    got = exchange(double, method, path)
    assert got.status == status and got.headers.get("allow") == allow
    if method == "HEAD":
        assert got.body == b""
    elif status == 405:
        assert (got.body, got.headers["content-type"]) == (b"405 method not allowed", "text/plain")
    assert double.requests[-1]["method"] == method and double.requests[-1]["path"] == path


def test_trailing_slash_redirects(double):
    get = exchange(double, "GET", "/api/tags/?x=1")
    assert (get.status, get.headers["location"]) == (301, "/api/tags?x=1")
    assert get.body == b'<a href="/api/tags?x=1">Moved Permanently</a>.\n\n'
    posted = exchange(double, "POST", "/api/chat/", {"model": "llama3.2"})
    assert (posted.status, posted.headers["location"], posted.body) == (307, "/api/chat", b"")
    assert exchange(double, "GET", "/v1/models/").headers["location"] == "/v1/models"


def test_host_and_origin_checks(double):
    evil = exchange(double, "GET", "/api/tags", headers={"Host": "evil.example"})
    assert (evil.status, evil.body) == (403, b"")
    assert exchange(double, "GET", "/api/tags", headers={"Host": "ollama.internal:11434"}).status == 200
    assert exchange(double, "GET", "/api/tags", headers={"Host": "10.1.2.3"}).status == 200
    options = exchange(double, "OPTIONS", "/api/chat", headers={"Host": "localhost:11434"})
    assert options.status == 204
    assert exchange(double, "OPTIONS", "/api/chat").status == 405  # an IP host goes on to the router
    allowed = exchange(double, "GET", "/api/version", headers={"Origin": "http://localhost:5173"})
    assert allowed.status == 200 and allowed.headers["access-control-allow-origin"] == "http://localhost:5173"
    preflight = exchange(double, "OPTIONS", "/api/chat", headers={"Origin": "app://ollama"})
    assert preflight.status == 204 and "POST" in preflight.headers["access-control-allow-methods"]
    assert exchange(double, "GET", "/api/version", headers={"Origin": "https://evil.example"}).status == 403
    assert len(double.requests) == 8  # refused or not, every request was seen


# -- current fields ---------------------------------------------------------------------------------------------


def test_logprobs_on_chunks_and_whole_answers(double):
    body = {"model": "qwen3", "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 3}
    got = exchange(double, "POST", "/api/chat", body)
    lines = got.lines()
    for line in lines[:-1]:
        (entry,) = line["logprobs"]
        piece = line["message"]["content"] or line["message"]["thinking"]
        assert entry["token"] == piece and entry["bytes"] == list(piece.encode())
        assert entry["logprob"] < 0 and len(entry["top_logprobs"]) == 3 and entry["top_logprobs"][0]["token"] == piece
    assert "logprobs" not in lines[-1]
    # Go's field order: chat puts logprobs after done, generate after the metrics.
    assert b'"done":false,"logprobs":[{"token":' in got.body
    final = got.body.split(b"\n")[-2]
    assert re.search(rb'"done":true,"done_reason":"stop","total_duration":\d+,"load_duration":\d+,'
                     rb'"prompt_eval_count":\d+,"prompt_eval_duration":\d+,"eval_count":\d+,"eval_duration":\d+\}$',
                     final)
    whole = post(double, "/api/generate", {"model": "llama3.2", "prompt": "a b", "logprobs": True,
                                           "stream": False})
    assert [e["token"] for e in whole.json()["logprobs"]] == ["You", " said:", " a", " b"]
    assert all("top_logprobs" not in e for e in whole.json()["logprobs"])
    assert re.search(rb'"eval_duration":\d+,"logprobs":\[', whole.content)
    plain = post(double, "/api/generate", {**HELLO, "stream": False, "top_logprobs": 5}).json()
    assert "logprobs" not in plain  # top_logprobs alone asks for nothing


def test_tool_results_carry_the_call_id(double):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    ask = [{"role": "user", "content": "weather in Tokyo?"}]
    first = post(double, "/api/chat", {"model": "llama3.2", "messages": ask, "tools": tools, "stream": False}).json()
    (call,) = first["message"]["tool_calls"]
    follow = ask + [first["message"], {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather",
                                       "tool_call_id": call["id"]}]
    answer = post(double, "/api/chat", {"model": "llama3.2", "messages": follow, "tools": tools,
                                        "stream": False}).json()
    assert answer["message"]["content"] == "The tool said: sunny, 21 C" and "tool_calls" not in answer["message"]
    assert double.requests[-1]["body"]["messages"][-1]["tool_call_id"] == call["id"]
    v1 = post(double, "/v1/chat/completions", {"model": "llama3.2", "messages": ask, "tools": tools}).json()
    (v1_call,) = v1["choices"][0]["message"]["tool_calls"]
    assert v1_call["id"] == call["id"] and v1_call["function"]["arguments"] == '{"city":"Tokyo"}'
    assert v1["choices"][0]["finish_reason"] == "tool_calls"


# -- the OpenAI layer as current Ollama shapes it ----------------------------------------------------------------


def sse_chunks(raw: bytes) -> list:
    events = [e for e in raw.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events)
    return [e[6:] for e in events]


@over_tls
def test_v1_stream_shape(double):
    body = {"model": "qwen3", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    events = sse_chunks(post(double, "/v1/chat/completions", body).content)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks[:-2]]
    assert deltas[0]["role"] == "assistant" and all("role" not in d for d in deltas[1:])
    thinking = [d for d in deltas if "reasoning" in d]
    assert "".join(d["reasoning"] for d in thinking) == "Okay, the user wants an echo."
    assert all(d["content"] == "" for d in thinking)
    assert "".join(d["content"] for d in deltas) == "You said: hi"
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 10,
                                                                   "total_tokens": 22}
    assert len({c["created"] for c in chunks}) == 1 and len({c["id"] for c in chunks}) == 1
    assert list(chunks[0]) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    called = [json.loads(e) for e in sse_chunks(post(double, "/v1/chat/completions", {
        "model": "llama3.2", "messages": [{"role": "user", "content": "weather?"}], "tools": tools,
        "stream": True}).content)[:-1]]
    assert called[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert called[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}


def test_v1_completions_stream_shape(double):
    body = {"model": "qwen3", "prompt": "hi", "stream": True, "stream_options": {"include_usage": True}}
    chunks = [json.loads(e) for e in sse_chunks(post(double, "/v1/completions", body).content)[:-1]]
    assert list(chunks[0]) == ["id", "object", "created", "choices", "model", "system_fingerprint", "usage"]
    texts = [c["choices"][0]["text"] for c in chunks[:-1]]
    assert texts[:7] == [""] * 7 and "".join(texts) == "You said: hi"  # thinking lines arrive as empty text
    assert all(c["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0} for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10


def test_v1_error_flavours(double):
    msgs = [{"role": "user", "content": "x"}]
    empty = post(double, "/v1/chat/completions", {"model": "llama3.2", "messages": []})
    assert empty.headers["Content-Type"] == "application/json; charset=utf-8" and not empty.content.endswith(b"\n")
    assert empty.json()["error"]["message"] == "[] is too short - 'messages'"
    think = post(double, "/v1/chat/completions", {"model": "llama3.2", "messages": msgs, "reasoning_effort": "high"})
    assert think.headers["Content-Type"] == "application/json" and think.content.endswith(b"}\n")
    assert think.json()["error"] == {"message": '"llama3.2" does not support thinking',
                                     "type": "invalid_request_error", "param": None, "code": None}
    effort = post(double, "/v1/chat/completions", {"model": "qwen3", "messages": msgs, "reasoning_effort": "huge"})
    assert effort.json()["error"]["message"].startswith('invalid reasoning value: "huge"')
    quiet = post(double, "/v1/chat/completions", {"model": "qwen3", "messages": msgs, "reasoning_effort": "none"})
    assert "reasoning" not in quiet.json()["choices"][0]["message"]
    prompt = post(double, "/v1/completions", {"model": "llama3.2", "prompt": ["a"]})
    assert prompt.json()["error"]["message"] == ("json: cannot unmarshal array into Go struct field "
                                                 "CompletionRequest.prompt of type string")
    missing = post(double, "/v1/embeddings", {"model": "ghost", "input": "x"})
    assert missing.json()["error"]["message"] == 'model "ghost" not found, try pulling it first'
    limited = post(double, "/v1/chat/completions", {"model": "llama3.2", "messages": msgs, "max_tokens": 1}).json()
    assert limited["choices"][0]["finish_reason"] == "length"


def test_v1_mid_stream_error_becomes_an_empty_chunk(double):
    double.script(fault="error_line", fault_after=2)
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "a b c"}], "stream": True}
    events = sse_chunks(post(double, "/v1/chat/completions", body).content)
    assert len(events) == 3 and b"[DONE]" not in events  # the error line unmarshals to an empty response
    assert json.loads(events[-1])["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]
    assert json.loads(events[-1])["model"] == ""
    double.script(fault="error_line", fault_after=0)
    early = post(double, "/v1/chat/completions", body)
    assert early.status_code == 500 and early.json()["error"]["type"] == "api_error"
    native = post(double, "/api/generate", HELLO)
    assert (native.status_code, native.headers["Content-Type"]) == (500, "application/json")


def test_v1_embeddings_base64_and_models(double):
    floats = post(double, "/v1/embeddings", {"model": "all-minilm", "input": "hi"}).json()["data"][0]["embedding"]
    packed = post(double, "/v1/embeddings", {"model": "all-minilm", "input": "hi", "encoding_format": "base64"})
    decoded = struct.unpack("<384f", base64.b64decode(packed.json()["data"][0]["embedding"]))
    assert [struct.pack("<f", x) for x in decoded] == [struct.pack("<f", x) for x in floats]
    bad = post(double, "/v1/embeddings", {"model": "all-minilm", "input": "hi", "encoding_format": "int8"})
    assert bad.json()["error"]["message"] == ("Invalid value for 'encoding_format' = int8. Supported values: "
                                              "['float', 'base64'].")
    assert post(double, "/v1/embeddings", {"model": "all-minilm", "input": []}).json()["error"]["message"] == \
        "invalid input"
    one = requests.get(double.url + "/v1/models/llama3.2", timeout=5).json()
    assert one == {"id": "llama3.2", "object": "model", "created": one["created"], "owned_by": "library"}
    gone = requests.get(double.url + "/v1/models/ghost", timeout=5)
    assert gone.json()["error"]["message"] == "model 'ghost:latest' not found"


# -- loaded models (/api/ps) ---------------------------------------------------------------------------------

PS_KEYS = ["name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"]
TRIO = [{"name": "alpha"}, {"name": "beta", "capabilities": ["completion", "thinking"]},
        {"name": "emb", "capabilities": ["embedding"]}]


def ps_names(double) -> list:
    return [m["name"] for m in get(double, "/api/ps").json()["models"]]


def test_loaded_lists_exactly_those_models():
    with OllamaDouble(models=TRIO, loaded=["beta", "EMB:latest"]) as d:
        models = get(d, "/api/ps").json()["models"]
        assert [m["name"] for m in models] == ["beta:latest", "emb:latest"] == d.loaded
        assert all(list(m) == PS_KEYS for m in models) and models[0]["size_vram"] == models[0]["size"]
        assert [m["name"] for m in d.models] == ["alpha:latest", "beta:latest", "emb:latest"]  # installed
        d.set_loaded([])
        assert get(d, "/api/ps").json() == {"models": []} and d.loaded == []
        d.set_loaded(["emb", "alpha", "emb"])
        assert ps_names(d) == ["emb:latest", "alpha:latest"]  # the order given, duplicates dropped
        with pytest.raises(ValueError, match="'ghost'.*not installed"):
            d.set_loaded(["ghost"])
        with pytest.raises(ValueError):
            d.set_loaded("alpha")  # a list of names, not one
        assert ps_names(d) == ["emb:latest", "alpha:latest"]  # a refused call changes nothing
        d.set_loaded(None)  # the default: the first installed completion model
        assert ps_names(d) == ["alpha:latest"]
        d.reset()
        assert ps_names(d) == ["beta:latest", "emb:latest"]  # the constructor's
    with pytest.raises(ValueError, match="not installed"):
        OllamaDouble(models=TRIO, loaded=["llama3.2"])


def test_default_loaded_follows_the_catalogue(double):
    assert double.loaded == ["llama3.2:latest"]
    assert ndjson(post(double, "/api/pull", {"model": "smollm2"}))[-1] == {"status": "success"}
    assert double.loaded == ["smollm2:latest"]  # as before: the first completion model, newest first
    with OllamaDouble(models=[{"name": "emb", "capabilities": ["embedding"]}]) as d:
        assert ps_names(d) == []


def test_generations_load_their_model(double):
    assert post(double, "/api/generate", {"model": "qwen3", "prompt": "x", "stream": False}).status_code == 200
    assert ps_names(double) == ["llama3.2:latest", "qwen3:latest"]  # the latest expiry first, as Ollama sorts
    assert post(double, "/api/embed", {"model": "all-minilm", "input": "x"}).status_code == 200
    assert double.loaded == ["llama3.2:latest", "all-minilm:latest", "qwen3:latest"]
    double.set_loaded([])
    post(double, "/v1/chat/completions", {"model": "qwen3", "messages": [{"role": "user", "content": "x"}]})
    ndjson(post(double, "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}))
    assert double.loaded == ["llama3.2:latest", "qwen3:latest"]
    # A refused request loads nothing: the scheduler never handed out a runner.
    double.script(fault="busy")
    assert post(double, "/api/generate", {"model": "all-minilm", "prompt": "x"}).status_code == 400  # no generate
    double.set_loaded([])
    assert post(double, "/api/generate", {"model": "qwen3", "prompt": "x"}).status_code == 503
    assert double.loaded == []
    double.script()
    assert post(double, "/api/generate", {"model": "qwen3"}).json()["done_reason"] == "load"  # load only
    assert double.loaded == ["qwen3:latest"]


def test_keep_alive_zero_unloads_and_short_keep_alives_expire(double):
    double.set_loaded(["llama3.2"])
    unload = post(double, "/api/generate", {"model": "llama3.2", "keep_alive": 0}).json()
    assert unload["done_reason"] == "unload" and double.loaded == []
    # keep_alive 0 with a prompt: loaded while it runs, gone once it is over.
    double.script(delay=0.2, tokens=["a", "b", "c"])
    with post(double, "/api/chat", {"model": "qwen3", "keep_alive": "0s", "stream": True,
                                    "messages": [{"role": "user", "content": "x"}]}, stream=True) as resp:
        lines = resp.iter_lines()
        next(lines)
        assert double.loaded == ["qwen3:latest"]
        assert [json.loads(line)["done"] for line in lines if line][-1] is True
    double.wait_stream_closed(2)
    assert double.loaded == []
    double.script()
    forever = post(double, "/api/generate", {"model": "qwen3", "prompt": "x", "keep_alive": -1, "stream": False})
    assert forever.status_code == 200
    (entry,) = get(double, "/api/ps").json()["models"]
    assert int(entry["expires_at"][:4]) > 2300  # Go: now + the longest time.Duration
    post(double, "/api/embed", {"model": "all-minilm", "input": "x", "keep_alive": 0.3})
    assert double.loaded == ["qwen3:latest", "all-minilm:latest"]
    time.sleep(0.4)
    assert double.loaded == ["qwen3:latest"]  # its keep_alive ran out


def test_control_endpoint_for_loaded(double):
    url = double.url + "/_double/loaded"
    got = requests.post(url, json={"loaded": ["qwen3"]}, timeout=5)
    assert got.status_code == 200 and got.json() == {
        "loaded": ["qwen3:latest"], "installed": ["llama3.2:latest", "qwen3:latest", "all-minilm:latest"]}
    assert requests.get(url, timeout=5).json()["loaded"] == ["qwen3:latest"] == ps_names(double)
    assert requests.post(url, json=["all-minilm", "llama3.2"], timeout=5).json()["loaded"] == [
        "all-minilm:latest", "llama3.2:latest"]
    bad = requests.post(url, json={"loaded": ["ghost"]}, timeout=5)
    assert bad.status_code == 400 and "ghost" in bad.json()["error"]
    assert requests.post(url, json={"loaded": None}, timeout=5).json()["loaded"] == ["llama3.2:latest"]
    assert [r["path"] for r in double.requests] == ["/api/ps"]  # control routes are not recorded


# -- restarting on the same port -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_restart_serves_again_on_the_same_port(scheme, tls_files):
    d = OllamaDouble(loaded=["qwen3"], tls=tls_files[0] if scheme == "https" else None).start()
    CA_FILES[d.url] = tls_files[1]
    url, port = d.url, d.port
    try:
        assert port != 0 and url == f"{scheme}://127.0.0.1:{port}"
        pooled = http_connection(d)
        pooled.request("GET", "/api/version")
        first = pooled.getresponse()
        assert first.read() == b'{"version":"0.33.0"}' and not first.will_close
        # verify= on each call: REQUESTS_CA_BUNDLE in the environment would override a Session's .verify.
        idle = requests.Session()
        assert idle.get(url + "/api/version", timeout=5, verify=verify(d)).status_code == 200  # pooled, idle
        assert post(d, "/api/generate", {**HELLO, "stream": False}).status_code == 200
        assert d.loaded == ["qwen3:latest", "llama3.2:latest"]
        d.script(delay=0.5, tokens=[f" t{i}" for i in range(20)])
        streaming = post(d, "/api/generate", HELLO, stream=True)
        lines = streaming.iter_lines()
        next(lines)
        started = time.monotonic()
        d.stop()
        assert time.monotonic() - started < 2.0 and not d.running
        with pytest.raises(requests.exceptions.ChunkedEncodingError):  # the open stream ended, unfinished
            list(lines)
        streaming.close()
        assert read_until_closed(pooled.sock, 1.0) == b""  # the idle keep-alive connection got EOF
        with pytest.raises(requests.exceptions.ConnectionError):
            get(d, "/api/version", timeout=1)
        seen = len(d.requests)
        d.start()
        assert (d.url, d.port, d.running) == (url, port, True)
        # The old keep-alive connection is dead: an error, never an answer from the new server.
        with pytest.raises((OSError, http.client.HTTPException)):
            pooled.request("GET", "/api/version")
            pooled.getresponse().read()
        pooled.close()
        assert len(d.requests) == seen
        fresh = http_connection(d)
        fresh.request("GET", "/api/version")
        assert fresh.getresponse().read() == b'{"version":"0.33.0"}'
        fresh.close()
        assert idle.get(url + "/api/version", timeout=5, verify=verify(d)).json() == {"version": VERSION}  # redialled
        idle.close()
        # A fresh server process: run-time loads are gone, the configured ones are back; the records and the
        # script (the test's set-up, like the catalogue) stay.
        assert d.loaded == ["qwen3:latest"] and len(d.requests) == seen + 2
        assert d._snapshot()["delay"] == 0.5
        d.script()
        assert post(d, "/api/generate", {**HELLO, "stream": False}).json()["response"] == "You said: hello world"
    finally:
        d.stop()
        CA_FILES.pop(url, None)


def test_three_upstreams_one_goes_away_and_comes_back(tls_files):
    a = OllamaDouble(models=[{"name": "alpha"}], loaded=["alpha"])
    b = OllamaDouble(models=[{"name": "beta"}, {"name": "gamma"}], loaded=[])
    c = OllamaDouble(models=[{"name": "delta"}, {"name": "emb", "capabilities": ["embedding"]}], loaded=["emb"],
                     tls=tls_files[0])
    with a, b, c:
        CA_FILES[c.url] = tls_files[1]
        try:
            assert len({a.port, b.port, c.port}) == 3 and c.url.startswith("https://")
            assert [ps_names(d) for d in (a, b, c)] == [["alpha:latest"], [], ["emb:latest"]]
            assert post(b, "/api/generate", {"model": "gamma", "prompt": "x", "stream": False}).status_code == 200
            assert post(b, "/api/generate", {"model": "alpha", "prompt": "x"}).status_code == 404  # not on b
            b.stop()
            with pytest.raises(requests.exceptions.ConnectionError):
                get(b, "/api/ps", timeout=1)
            assert ps_names(a) == ["alpha:latest"] and ps_names(c) == ["emb:latest"]
            b.set_loaded(["beta"])  # what b has loaded when it comes back
            b.start()
            assert ps_names(b) == ["beta:latest"]
            assert [m["name"] for m in get(b, "/api/tags").json()["models"]] == ["beta:latest", "gamma:latest"]
        finally:
            CA_FILES.pop(c.url, None)


# -- TLS ---------------------------------------------------------------------------------------------------------


def test_tls_double_speaks_https_only_to_those_who_trust_it(tls_server, tls_files):
    d = tls_server
    assert d.url == f"https://127.0.0.1:{d.port}" and d.tls is tls_files[0]
    assert requests.get(d.url + "/api/version", verify=tls_files[1], timeout=5).json() == {"version": VERSION}
    with pytest.raises(requests.exceptions.SSLError):  # the system's CAs do not know the test CA
        requests.get(d.url + "/api/version", timeout=5)
    localhost = d.url.replace("127.0.0.1", "localhost")
    assert requests.get(localhost + "/api/tags", verify=tls_files[1], timeout=5).status_code == 200
    plain = requests.get(d.url.replace("https:", "http:") + "/api/version", timeout=5)
    assert (plain.status_code, plain.text) == (400, "Client sent an HTTP request to an HTTPS server.\n")  # as Go
    with connect(d.url) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3") and sock.selected_alpn_protocol() in (None, "http/1.1")
    with pytest.raises(TypeError):
        OllamaDouble(tls=True)


def test_tls_100_generations_on_one_keep_alive_connection(tls_server):
    d = tls_server
    d.reset()
    conn = http_connection(d, timeout=10)
    headers = {"Content-Type": "application/json"}
    sock = None
    for i in range(100):
        stream = i % 2 == 0  # chunked NDJSON and Content-Length bodies in turn
        conn.request("POST", "/api/generate", json.dumps({**HELLO, "prompt": f"n{i}", "stream": stream}), headers)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200 and not resp.will_close, i
        if stream:
            lines = [json.loads(line) for line in body.splitlines()]
            assert "".join(x["response"] for x in lines) == f"You said: n{i}" and lines[-1]["done"], i
        else:
            assert json.loads(body)["response"] == f"You said: n{i}", i
        sock = sock or conn.sock
        assert conn.sock is sock, f"request {i} needed a new connection"
    conn.close()
    assert d.connections == 1 and len(d.requests) == 100
    assert len(d.streams) == 50 and all(s["completed"] and not s["client_gone"] for s in d.streams)


def test_tls_100_streams_over_pooled_connections(tls_server, tls_files):
    d = tls_server
    d.reset()
    d.script(tokens=[f" t{i}" for i in range(8)], delay=0.002)
    local = threading.local()
    sessions, errors = [], []

    def one(i: int):
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            sessions.append(session)
        try:
            # verify= on each call: REQUESTS_CA_BUNDLE in the environment would override a Session's .verify.
            with session.post(d.url + "/api/chat", json={"model": "llama3.2", "messages": [
                    {"role": "user", "content": f"m{i}"}]}, stream=True, timeout=10, verify=tls_files[1]) as resp:
                lines = [json.loads(line) for line in resp.iter_lines() if line]
            if resp.status_code != 200 or "".join(x["message"]["content"] for x in lines) != "".join(
                    f" t{k}" for k in range(8)) or not lines[-1]["done"]:
                errors.append((i, resp.status_code, lines[-1:]))
        except Exception as err:  # noqa: BLE001 - every failure counts
            errors.append((i, repr(err)))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(100)))
    for session in sessions:
        session.close()
    assert errors == []
    assert len(d.streams) == 100 and all(s["completed"] and not s["client_gone"] for s in d.streams)
    assert d.connections == len(sessions) <= 8  # each thread's connection carried all its streams


def test_tls_close_notify_mid_stream_is_a_hang_up(tls_server):
    # A client that ends TLS properly (close_notify) but keeps the TCP connection open has still gone.
    d = tls_server
    d.reset()
    d.script(delay=0.6, tokens=[f" t{i}" for i in range(30)])
    sock = raw_request(d.url, generate_request(HELLO))
    try:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        sock.setblocking(False)
        with pytest.raises(ssl.SSLError):  # close_notify is out; the peer's is not back yet
            sock.unwrap()
        said_goodbye = time.monotonic()
        rec = d.wait_stream_closed(2)
        assert rec["client_gone"] is True and rec["completed"] is False
        assert rec["closed_at"] - said_goodbye < 0.5
    finally:
        sock.close()


@over_tls
def test_pipelined_requests_are_not_a_hang_up(double):
    # The next requests arrive while the stream is paused: the hang-up check sees them (behind TLS it has to
    # read them, and must hand them on to the next request).
    double.script(delay=0.15, tokens=["a", "b", "c"])
    version = "GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    sock = raw_request(double.url, generate_request(HELLO))
    try:
        data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 OK")
        sock.sendall((generate_request({**HELLO, "stream": False}) + version).encode())
        data += read_until_closed(sock, 5.0)
    finally:
        sock.close()
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 3 and data.endswith(b'{"version":"0.33.0"}')
    assert b'"response":"abc"' in data
    (rec,) = double.streams
    assert rec["completed"] and not rec["client_gone"] and rec["lines_sent"] == 4
    assert [r["path"] for r in double.requests] == ["/api/generate", "/api/generate", "/api/version"]


def test_tls_stop_wakes_hangs_and_idle_connections(tls_files):
    d = OllamaDouble(tls=tls_files[0]).start()
    CA_FILES[d.url] = tls_files[1]
    try:
        idle = http_connection(d)
        idle.request("GET", "/api/version")
        idle.getresponse().read()
        d.script(fault="hang")
        hung = raw_request(d.url, generate_request(HELLO))
        time.sleep(0.1)
        started = time.monotonic()
        d.stop()
        assert time.monotonic() - started < 2.0 and not d._thread.is_alive()
        assert read_until_closed(hung, 1.0) == b"" and read_until_closed(idle.sock, 1.0) == b""
        hung.close()
        idle.close()
    finally:
        d.stop()
        CA_FILES.pop(d.url, None)


# -- status faults on the /v1 routes -------------------------------------------------------------------------------


@pytest.mark.parametrize("fault, status, kind", [
    ("busy", 503, "api_error"), ("status_500", 500, "api_error"), ("bad_request", 400, "invalid_request_error"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("stream", [True, False])
def test_status_faults_on_v1(double, fault, status, kind, path, stream):
    from tests.ollama_double.transport import STATUS_FAULTS
    double.script(fault=fault)
    body = {"model": "llama3.2", "stream": stream}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"})
    resp = post(double, path, body)
    # The scheduler's refusal, through the /v1 writer: OpenAI's shape, json.Encoder's newline.
    assert resp.status_code == status
    assert (resp.headers["Content-Type"], resp.content[-2:]) == ("application/json", b"}\n")
    assert resp.json() == {"error": {"message": STATUS_FAULTS[fault][1], "type": kind, "param": None, "code": None}}
    assert all(s["closed_at"] is not None and not s["completed"] for s in double.streams)


def test_faults_leave_embeddings_alone(double):
    double.script(fault="busy")
    assert post(double, "/api/embed", {"model": "all-minilm", "input": "x"}).status_code == 200
    assert post(double, "/v1/embeddings", {"model": "all-minilm", "input": "x"}).status_code == 200
    assert get(double, "/v1/models").status_code == 200
    assert post(double, "/api/generate", {"model": "llama3.2"}).status_code == 503  # load-only too
