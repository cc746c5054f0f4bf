"""gunicorn and gevent behaviour: concurrency on one worker, graceful shutdown, released resources."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import requests

from tests.support import API_KEY, post_stream, sse_items


def raw_stream_request(port: int, body: bytes = b'{"prompt": "hi"}') -> socket.socket:
    """Open a stream with a bare socket (cheap enough to hold hundreds at once)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /api/llm/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: "
                 + API_KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 30) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        if b"0\r\n\r\n" in data[-7:]:
            return b"".join(chunks)


def test_one_worker_holds_many_slow_streams_while_health_stays_fast(start_gateway, double):
    gw = start_gateway(SSE_HEARTBEAT_SECONDS="1")
    double.script(tokens=["x"] * 6, delay=0.5)
    socks = [raw_stream_request(gw.port) for _ in range(300)]
    try:
        time.sleep(1.0)
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            assert requests.get(gw.url + "/health", timeout=5).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.1)
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.1, latencies
        results = [read_until_closed(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    complete = sum(r.count(b'data: {"text":"x"}') == 6 and b'"done":true' in r for r in results)
    assert complete == len(socks)
    assert len(gw.worker_pids()) == 1


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def abort_streams(gw, count: int, concurrent: int = 25):
    """Open streams, read their first event, then vanish; `concurrent` at a time."""
    for start in range(0, count, concurrent):
        socks = [raw_stream_request(gw.port) for _ in range(min(concurrent, count - start))]
        for sock in socks:
            sock.settimeout(10)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        for sock in socks:
            sock.close()


def test_aborted_streams_release_fds_and_memory(start_gateway, double):
    # Usage is written within 0.2 s, so the database file is open before the measure starts.
    gw = start_gateway(USAGE_FLUSH_SECONDS="0.2")
    (worker,) = gw.worker_pids()
    double.script(tokens=["t"] * 400, delay=0.02)
    abort_streams(gw, 50)  # warm up: imports, pools and caches settle
    time.sleep(1.5)
    fds, rss = open_fds(worker), rss_kb(worker)
    abort_streams(gw, 300)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and open_fds(worker) > fds:
        time.sleep(0.2)
    assert open_fds(worker) <= fds, (fds, open_fds(worker))
    assert rss_kb(worker) - rss < 8 * 1024, (rss, rss_kb(worker))  # not growing per stream (300 streams)
    assert len(double.streams) == 350 and all(s["closed_at"] is not None for s in double.streams)


def test_sigterm_lets_running_streams_finish_and_refuses_new_connections(start_gateway, double):
    gw = start_gateway(GUNICORN_GRACEFUL_TIMEOUT="20")
    double.script(tokens=[f"w{i}" for i in range(8)], delay=0.4)
    # Connection: close, as an idle keep-alive connection would hold the worker until graceful_timeout.
    response = post_stream(gw, {"prompt": "hi"}, headers={"Connection": "close"})
    items = sse_items(response)
    first = next(items)
    assert first[2] == {"text": "w0"}
    gw.process.send_signal(signal.SIGTERM)
    time.sleep(1.5)  # gevent workers check their alive flag once a second, then close the listener
    refused = threading.Event()
    try:
        requests.get(gw.url + "/health", timeout=2)
    except requests.ConnectionError:
        refused.set()
    rest = [v for _, kind, v in items if kind == "data"]
    assert [e["text"] for e in rest[:-1]] == [f"w{i}" for i in range(1, 8)]
    assert rest[-1]["done"] is True
    assert refused.is_set(), "a new connection was accepted during shutdown"
    assert gw.process.wait(5) == 0  # the last stream done, the worker exits at once

