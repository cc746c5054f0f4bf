"""Quick checks of the benchmark's fast upstream and its load client.

The upstream runs as a subprocess (as the harness runs it); the tests talk to
it over raw sockets so that framing (chunks, Content-Length) is checked too.
"""

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import loadgen

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def upstream():
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.upstream", "--port", "0", "--max-seconds", "120"],
        cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), (url, proc.stderr.read() if proc.poll() else "")
        yield int(url.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()


def _request(port, method, path, body=None):
    return loadgen.build_request(method, path, "127.0.0.1", port, body)


def _raw(port, method, path, body=None, timeout=5.0):
    """Send one request (Connection: close not used) and read one whole response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(_request(port, method, path, body))
        buf = b""
        chunks = []
        reader = loadgen.ResponseReader(None, chunks.append)
        while True:
            data = s.recv(65536)
            if not data:
                reader.eof()
                break
            buf += data
            if reader.feed(data):
                break
        return reader.status, reader.headers, b"".join(chunks), buf


def _split_chunks(raw: bytes):
    """Split a chunked HTTP body into its chunk payloads (strictly)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    out = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n", body
            return out
        out.append(body[:size])
        assert body[size:size + 2] == b"\r\n"
        body = body[size + 2:]


def _streams(port, query=""):
    st, _, body, _ = _raw(port, "GET", "/_bench/streams" + query)
    assert st == 200
    return json.loads(body)


def test_version_and_tags(upstream):
    st, hdrs, body, _ = _raw(upstream, "GET", "/api/version")
    assert st == 200 and json.loads(body) == {"version": "0.12.6"}
    st, hdrs, body, _ = _raw(upstream, "GET", "/api/tags")
    assert st == 200
    assert hdrs["content-type"].startswith("application/json")
    models = json.loads(body)["models"]
    assert [m["name"] for m in models] == ["bench:latest"]
    m = models[0]
    for key in ("name", "model", "modified_at", "size", "digest", "details"):
        assert key in m, key
    assert len(m["digest"]) == 64


def test_streamed_generate_one_line_per_chunk(upstream):
    body = {"model": "bench", "prompt": "hi", "options": {"num_predict": 7}}
    st, hdrs, payload, raw = _raw(upstream, "POST", "/api/generate", body)
    assert st == 200
    assert hdrs["content-type"] == "application/x-ndjson"
    assert hdrs["transfer-encoding"] == "chunked"
    chunks = _split_chunks(raw)
    assert len(chunks) == 8  # 7 tokens + final line, each its own chunk
    lines = [json.loads(c) for c in chunks]
    assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in chunks)
    assert [ln["response"] for ln in lines[:-1]] == ["tok "] * 7
    assert all(ln["done"] is False and ln["model"] == "bench" for ln in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["eval_count"] == 7
    for key in ("total_duration", "load_duration", "prompt_eval_count",
                "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int), key


def test_chat_stream_and_non_stream(upstream):
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}],
            "stream": False, "options": {"num_predict": 3}}
    st, hdrs, payload, _ = _raw(upstream, "POST", "/api/chat", body)
    assert st == 200 and int(hdrs["content-length"]) == len(payload)
    obj = json.loads(payload)
    assert obj["message"] == {"role": "assistant", "content": "tok tok tok "}
    assert obj["done"] is True and obj["eval_count"] == 3


def test_non_stream_generate_body(upstream):
    body = {"model": "bench", "prompt": "hi", "stream": False, "options": {"num_predict": 5}}
    st, hdrs, payload, raw = _raw(upstream, "POST", "/api/generate", body)
    assert st == 200
    assert "transfer-encoding" not in hdrs
    assert int(hdrs["content-length"]) == len(payload)
    obj = json.loads(payload)
    assert obj["response"] == "tok " * 5
    assert obj["done"] is True and obj["done_reason"] == "stop" and obj["eval_count"] == 5


def test_keep_alive_serves_several_requests_on_one_connection(upstream):
    req = _request(upstream, "POST", "/api/generate",
                   {"model": "bench", "stream": False, "options": {"num_predict": 2}})
    with socket.create_connection(("127.0.0.1", upstream), timeout=5) as s:
        s.sendall(req * 3)  # pipelined
        got = 0
        buf = b""
        while got < 3:
            data = s.recv(65536)
            assert data, "connection closed early"
            buf += data
            while True:
                rd = loadgen.ResponseReader()
                if not rd.feed(buf):
                    break
                assert rd.status == 200
                buf = rd.leftover
                got += 1
    assert got == 3


def test_bad_requests(upstream):
    st, _, payload, _ = _raw(upstream, "POST", "/api/generate", b"{not json")
    assert st == 400 and "error" in json.loads(payload)
    st, _, payload, _ = _raw(upstream, "POST", "/api/generate", {"prompt": "x"})
    assert st == 400
    st, _, _, _ = _raw(upstream, "GET", "/nope")
    assert st == 404


def test_first_delay_is_respected(upstream):
    body = {"model": "bench", "prompt": "hi",
            "options": {"num_predict": 4, "bench_first_delay_ms": 300, "bench_delay_ms": 50}}
    with socket.create_connection(("127.0.0.1", upstream), timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(_request(upstream, "POST", "/api/generate", body))
        s.settimeout(0.2)
        with pytest.raises(socket.timeout):
            s.recv(1)  # nothing at all, not even headers, before the first token
        s.settimeout(5)
        first = s.recv(65536)
        t_first = time.monotonic() - t0
        assert first.startswith(b"HTTP/1.1 200 OK")
        rd = loadgen.ResponseReader()
        buf = first
        while not rd.feed(buf):
            buf = s.recv(65536)
            assert buf
        t_end = time.monotonic() - t0
    assert 0.28 <= t_first < 0.6, t_first
    assert t_end >= 0.28 + 3 * 0.05 - 0.01, t_end  # three more tokens, 50 ms apart


def test_close_is_recorded_and_generation_stops(upstream):
    tag = f"close-{time.time_ns()}"
    body = {"model": "bench", "prompt": "hi",
            "options": {"num_predict": 1000, "bench_delay_ms": 20, "bench_tag": tag}}
    s = socket.create_connection(("127.0.0.1", upstream), timeout=5)
    s.sendall(_request(upstream, "POST", "/api/generate", body))
    seen = b""
    while seen.count(b'"done":false') < 3:
        data = s.recv(65536)
        assert data
        seen += data
    t_close = time.monotonic()
    s.close()
    rec = None
    for _ in range(200):
        recs = _streams(upstream, f"?tag={tag}")["streams"]
        if recs and recs[0]["closed"] is not None:
            rec = recs[0]
            break
        time.sleep(0.01)
    assert rec is not None, "upstream never recorded the close"
    assert rec["aborted"] is True and rec["completed"] is False
    assert 0 <= rec["closed"] - t_close < 0.5
    assert 3 <= rec["tokens"] < 20
    time.sleep(0.1)
    again = _streams(upstream, f"?tag={tag}")["streams"][0]
    assert again["tokens"] == rec["tokens"]  # no token written after the close
    # a completed stream is recorded as such
    tag2 = tag + "-b"
    body = {"model": "bench", "prompt": "hi",
            "options": {"num_predict": 3, "bench_delay_ms": 5, "bench_tag": tag2}}
    st, _, _, _ = _raw(upstream, "POST", "/api/generate", body)
    assert st == 200
    done = _streams(upstream, f"?tag={tag2}")["streams"][0]
    assert done["completed"] is True and done["aborted"] is False and done["tokens"] == 3


def test_load_client_against_upstream(upstream):
    async def go():
        req = _request(upstream, "POST", "/api/generate",
                       {"model": "bench", "stream": False, "options": {"num_predict": 10}})
        snap = await loadgen.nonstream_load("127.0.0.1", upstream, req, 4, 0.5)
        sreq = _request(upstream, "POST", "/api/generate",
                        {"model": "bench", "options": {"num_predict": 20, "bench_delay_ms": 2}})
        ss = loadgen.StreamSet("127.0.0.1", upstream, sreq, 5, 20, timeout=10)
        streams = await ss.run()
        short = await loadgen.run_stream("127.0.0.1", upstream, sreq, 21, timeout=10)
        cut = await loadgen.run_stream(
            "127.0.0.1", upstream,
            _request(upstream, "POST", "/api/generate",
                     {"model": "bench", "options": {"num_predict": 500, "bench_delay_ms": 5}}),
            500, close_after_tokens=4, timeout=10)
        return snap, streams, short, cut

    snap, streams, short, cut = asyncio.run(go())
    assert snap["bad"] == 0 and snap["ok"] > 100, snap
    assert [r.intact for r in streams] == [True] * 5
    assert all(r.tokens == 20 and r.ttft is not None and r.ttft >= 0 for r in streams)
    assert short.done and not short.intact  # wrong token count is not intact
    assert cut.closed_by == "client" and cut.t_close is not None
    assert 4 <= cut.tokens < 500 and not cut.intact


SAMPLE_SSE = (
    b": connected\n\n"
    b"data: {\"text\": \"Hel\"}\n\n"
    b": heartbeat\r\n\r\n"
    b"data: {\"text\": \"lo\"}\r\n\r\n"
    b"event: message\ndata: {\"text\":\n\n"  # incomplete JSON: bad event
    b"data: {\"text\": \" wor\"}\n\n"
    b":\n\n"
    b"data: {\"error\": {\"code\": \"upstream_error\", \"message\": \"boom\"}, \"done\": true}\n\n"
)


@pytest.mark.parametrize("step", [0, 1, 3, 7])
def test_sse_parser_heartbeats_and_error(step):
    tally, parser = loadgen.parse_sse_bytes(SAMPLE_SSE, step)
    assert parser.comments == 3
    assert tally.tokens == 3 and tally.text_len == len("Hello wor")
    assert tally.bad == 1
    assert tally.done is True
    assert tally.error == {"code": "upstream_error", "message": "boom"}


def test_sse_parser_multiline_data_and_done():
    p = loadgen.SSEParser()
    events = p.feed(b"event: x\ndata: {\"a\":\ndata: 1}\n\n")
    assert events == [("x", "{\"a\":\n1}")]
    events = p.feed(b"data: {\"done\": true, \"eval_count\": 2}\r")
    assert events == []
    events = p.feed(b"\n\r\n")
    assert events == [("message", "{\"done\": true, \"eval_count\": 2}")]


def test_stream_client_over_http_sse():
    """The whole client path: chunked HTTP, SSE with heartbeats, error event."""
    good = (b": hb\n\n" + b"".join(b"data: {\"text\": \"tok \"}\n\n" for _ in range(4))
            + b": hb\n\n" + b"data: {\"done\": true, \"eval_count\": 4}\n\n")
    bad = b"data: {\"text\": \"tok \"}\n\n: hb\n\ndata: {\"error\": {\"message\": \"x\"}, \"done\": true}\n\n"

    async def serve(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        payload = bad if b"/bad" in head else good
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(payload), 5):  # split events across chunks
            piece = payload[i:i + 5]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()  # wait for the client to close
        writer.close()

    async def go():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            ok = await loadgen.run_stream("127.0.0.1", port,
                                          _request(port, "POST", "/good", {}), 4, timeout=5)
            ko = await loadgen.run_stream("127.0.0.1", port,
                                          _request(port, "POST", "/bad", {}), 1, timeout=5)
        finally:
            server.close()
        return ok, ko

    ok, ko = asyncio.run(go())
    assert ok.intact and ok.tokens == 4 and ok.heartbeats == 2 and ok.body_complete
    assert ok.final == {"done": True, "eval_count": 4}
    assert not ko.intact and ko.tokens == 1 and ko.error == {"message": "x"}
