"""Real nginx in front of the real gateway: deploy/nginx.conf and a plain proxy pass each SSE event at once,
and deploy/nginx.conf relays /ollama/ and /v1/ streams through a cold model load, chunk by chunk."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from tests.support import API_KEY, AUTH, ROOT, free_port, post_stream, sse_items, wait_for_access_line

NGINX = Path("/usr/sbin/nginx")
DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
TOKENS = ["one", " two", " three", " four"]
DELAY = 0.4  # between upstream chunks: the last event comes about 1.6 s after the first

# The main file nginx reads: everything it writes stays in the test's directory; the site goes in http {}.
MAIN_CONF = """{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    log_format ids '$request_id $sent_http_x_request_id "$request" $status';
    access_log {dir}/access.log ids;
    {http_extra}
    include {dir}/site.conf;
}}
"""


class Nginx:
    """/usr/sbin/nginx in the foreground, with its config, pid, logs and temp files in `directory`."""

    def __init__(self, directory: Path, site: str, port: int, http_extra: str = ""):
        self.dir, self.port, self.url = directory, port, f"http://127.0.0.1:{port}"
        (directory / "site.conf").write_text(site)
        user = "user root;" if os.geteuid() == 0 else ""  # workers must reach the temp dirs under tmp_path
        (directory / "nginx.conf").write_text(MAIN_CONF.format(user=user, dir=directory, http_extra=http_extra))
        self.process = None

    def start(self, timeout: float = 10.0) -> Nginx:
        conf = self.dir / "nginx.conf"
        self.process = subprocess.Popen(
            [str(NGINX), "-p", f"{self.dir}/", "-e", str(self.dir / "error.log"), "-c", str(conf),
             "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.log('error.log')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen within {timeout} s:\n{self.log('error.log')}")

    def log(self, name: str) -> str:
        path = self.dir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown: open streams are cut
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def run_nginx(tmp_path):
    """Start nginx with the site config `site(port)` (and `http_extra` in http {}); all are stopped after the test."""
    started = []

    def run(site, http_extra="") -> Nginx:
        if not NGINX.is_file():  # a failure, not a skip: CI installs nginx
            pytest.fail(f"{NGINX} not found: these tests need Debian's nginx. Install it with "
                        "scripts/install-test-deps.sh (or apt-get install nginx).", pytrace=False)
        port = free_port()
        directory = tmp_path / f"nginx-{len(started)}"
        directory.mkdir()
        server = Nginx(directory, site(port), port, http_extra)
        started.append(server)
        return server.start()

    yield run
    for server in started:
        server.stop()


def deploy_site(gateway):
    """deploy/nginx.conf, pointed at `gateway` and listening on the test's port."""
    text = DEPLOY_CONF.read_text()
    assert text.count("127.0.0.1:8000") == 1 and text.count("listen 80;") == 1, "the two tokens tests replace"
    return lambda port: (text.replace("127.0.0.1:8000", f"127.0.0.1:{gateway.port}")
                         .replace("listen 80;", f"listen 127.0.0.1:{port};"))


def plain_site(gateway, extra=""):
    """The least one can write: nginx's defaults, proxy buffering on."""
    return lambda port: (f"server {{ listen 127.0.0.1:{port}; "
                         f"location / {{ proxy_pass http://127.0.0.1:{gateway.port}; {extra} }} }}")


def timed_stream(url, double):
    """Stream TOKENS through `url`; return [(seconds since the request, event)] for the data events."""
    double.script(tokens=TOKENS, delay=DELAY)
    started = time.monotonic()
    response = requests.post(url + "/api/llm/stream", json={"prompt": "hi"}, headers=AUTH, stream=True, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    return [(round(t - started, 3), value) for t, kind, value in sse_items(response) if kind == "data"]


def assert_incremental(items):
    assert [v.get("text") for _, v in items[:-1]] == TOKENS, items
    assert items[-1][1]["done"] is True and items[-1][1]["done_reason"] == "stop", items
    times = [t for t, _ in items]
    assert times[0] < 0.5, items  # the first event arrives long before the upstream finishes (about 1.6 s)
    assert times[-1] - times[0] > 1.2, items
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) > DELAY / 2, items  # one arrival per upstream chunk, never a lump


# -- deploy/nginx.conf -------------------------------------------------------------------------------

# A server-wide gzip (as Debian's nginx.conf has, here for every type) and no help from X-Accel-Buffering:
# the site's own lines (HTTP/1.1 upstream, proxy_buffering off) must keep the stream flowing.
HOSTILE = "gzip on; gzip_types *; gzip_min_length 1; proxy_ignore_headers X-Accel-Buffering;"


@pytest.mark.parametrize("http_extra", ["", HOSTILE], ids=["plain-http", "hostile-http"])
def test_deploy_config_streams_each_event_as_it_happens(start_gateway, run_nginx, double, http_extra):
    gateway = start_gateway()
    nginx = run_nginx(deploy_site(gateway), http_extra)
    assert_incremental(timed_stream(nginx.url, double))


def test_deploy_config_closes_the_upstream_when_the_client_hangs_up(start_gateway, run_nginx, double):
    # Silence after the first event (no chunk, no heartbeat for 10 s): no failed write can reveal the
    # hang-up, so only nginx noticing the closed client connection ends the upstream in time.
    gateway = start_gateway(SSE_HEARTBEAT_SECONDS="10")
    nginx = run_nginx(deploy_site(gateway))
    double.script(tokens=["first", " second", " third"], delay=10)
    body = b'{"prompt": "hi"}'
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=10) as sock:
        sock.sendall(b"POST /api/llm/stream HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                     b"X-API-Key: " + API_KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while b"data: " not in received:
            piece = sock.recv(65536)
            assert piece, received
            received += piece
    hung_up = time.monotonic()
    record = double.wait_stream_closed(timeout=2.0)
    assert record["client_gone"] is True and record["completed"] is False, record
    assert record["closed_at"] - hung_up < 2.0, record
    assert record["lines_sent"] == 1, record


def test_deploy_config_forwards_a_request_id_nginx_and_the_gateway_share(start_gateway, run_nginx):
    gateway = start_gateway()
    nginx = run_nginx(deploy_site(gateway))
    kept = requests.get(nginx.url + "/health", headers={"X-Request-ID": "abc-123"}, timeout=10)
    made = requests.get(nginx.url + "/health", timeout=10)
    replaced = requests.get(nginx.url + "/api/llm/models", headers={**AUTH, "X-Request-ID": "bad id"}, timeout=10)
    assert kept.status_code == made.status_code == replaced.status_code == 200
    assert kept.headers["X-Request-ID"] == "abc-123"
    deadline = time.monotonic() + 5
    while len(lines := nginx.log("access.log").splitlines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # nginx logs a request just after its last byte is sent
    assert len(lines) == 3, lines
    # nginx's own $request_id went to the gateway when the client sent none, or one it would refuse.
    assert lines[1].split()[0] == made.headers["X-Request-ID"], lines
    assert lines[2].split()[0] == replaced.headers["X-Request-ID"], lines
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    # The gateway's own request line carries the same id, and the client address nginx forwarded.
    line = wait_for_access_line(gateway, made.headers["X-Request-ID"])  # written when the response ends
    assert re.search(r"mlops_backend.access: GET /health 200 .* forwarded_for=127\.0\.0\.1", line), line


def test_deploy_config_accepts_bodies_up_to_the_gateways_limit(start_gateway, run_nginx):
    gateway = start_gateway()
    nginx = run_nginx(deploy_site(gateway))
    # 2 MiB: over nginx's default of 1 MiB, under the 10 MiB both sides allow; the gateway answers it.
    big = requests.post(nginx.url + "/api/llm/generate", headers=AUTH, timeout=30,
                        json={"prompt": 5, "padding": "x" * (2 << 20)})
    assert big.status_code == 422 and big.headers["Content-Type"] == "application/problem+json", big.text
    # One byte over 10 MiB: nginx refuses it from the Content-Length alone, before any body is sent.
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=10) as sock:
        sock.sendall(b"POST /api/llm/generate HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % ((10 << 20) + 1))
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413") and b"Server: nginx" in head, head


# -- /ollama/ and /v1/ through deploy/nginx.conf --------------------------------------------------

# nginx's default read timeout (60 s), shortened so a test runs in seconds: the catch-all `location /`
# inherits it, so a stream that falls there is cut by a shorter silence than COLD_LOAD, and so is one
# in a location that does not set its own long timeout.
SHORT_READ = "proxy_read_timeout 1s;"
COLD_LOAD = 2.5  # seconds of upstream silence before the first token, as while Ollama loads a model


def ollama_tokens(line: bytes):
    item = json.loads(line)
    assert "error" not in item, item
    return None if item["done"] else item["response"]


def openai_tokens(line: bytes):
    assert line.startswith(b"data: "), line
    if line == b"data: [DONE]":
        return None
    item = json.loads(line[6:])
    assert "error" not in item, item
    return item["choices"][0]["delta"].get("content") or None  # the finish chunk's delta is empty


# path, body, content type, one line's token (None for the lines that close the stream)
RELAYED_STREAMS = {
    "ollama-generate": ("/ollama/api/generate", {"model": "llama3.2", "prompt": "hi"}, "application/x-ndjson",
                        ollama_tokens),
    "v1-chat": ("/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}],
                                         "stream": True}, "text/event-stream", openai_tokens),
}


def timed_lines(response):
    """Yield (seconds since `response.started`, line) per non-empty line, as the bytes arrive."""
    buffer = b""
    for piece in response.iter_content(chunk_size=None):
        now = time.monotonic() - response.started
        buffer += piece
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield round(now, 3), line
    assert not buffer.strip(), buffer  # the stream ended on a line boundary


@pytest.mark.parametrize("http_extra", ["", HOSTILE], ids=["plain-http", "hostile-http"])
@pytest.mark.parametrize("relay", RELAYED_STREAMS, ids=list(RELAYED_STREAMS))
def test_deploy_config_streams_ollama_and_openai_relays_through_a_cold_load(gateway, run_nginx, double, relay,
                                                                             http_extra):
    # Ollama is silent while it loads a model, and these streams carry no heartbeat: nginx's default read
    # timeout (SHORT_READ here) would cut them with a 504 before the first token. Each token must then
    # arrive on its own, as the double writes it, even with gzip on and X-Accel-Buffering ignored (HOSTILE).
    path, body, content_type, token_of = RELAYED_STREAMS[relay]
    nginx = run_nginx(deploy_site(gateway), f"{http_extra} {SHORT_READ}")
    double.script(tokens=TOKENS, first_delay=COLD_LOAD, delay=DELAY)
    started = time.monotonic()
    response = requests.post(nginx.url + path, json=body, headers=AUTH, stream=True, timeout=30)
    response.started = started
    assert response.status_code == 200, (response.status_code, response.text, nginx.log("error.log"))
    assert response.headers["Content-Type"].startswith(content_type), response.headers
    lines = [(t, token_of(line)) for t, line in timed_lines(response)]
    tokens = [(t, token) for t, token in lines if token is not None]
    assert [token for _, token in tokens] == TOKENS, lines
    assert lines[-1][1] is None, lines  # the stream's own end (done, or [DONE]) came through
    times = [t for t, _ in tokens]
    assert times[0] > COLD_LOAD * 0.9, lines  # the silence really happened, longer than SHORT_READ's 1 s
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) > DELAY / 2, lines  # one arrival per upstream chunk, never a lump
    assert times[-1] - times[0] > (len(TOKENS) - 1) * DELAY * 0.75, lines


def test_deploy_config_hands_gunicorn_only_whole_bodies(run_nginx):
    # gunicorn's gevent workers would wait on a trickled body as long as it takes; nginx must read it whole
    # before it even connects upstream (a server-wide setting), even when http {} turns that off.
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        nginx = run_nginx(deploy_site(SimpleNamespace(port=upstream.getsockname()[1])),
                          "proxy_request_buffering off;")
        body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "x" * 50_000}]}).encode()
        with socket.create_connection(("127.0.0.1", nginx.port), timeout=10) as client:
            client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:1000]))
            upstream.settimeout(1.5)
            with pytest.raises(TimeoutError):  # half a body: nginx holds it and opens no upstream connection
                upstream.accept()[0].close()
            client.sendall(body[1000:])
            connection, _ = upstream.accept()
            with connection:
                connection.settimeout(5)
                received = b""
                while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < len(body):
                    piece = connection.recv(65536)
                    assert piece, received[:500]
                    received += piece
                head, forwarded = received.split(b"\r\n\r\n", 1)
                assert b"\r\ncontent-length: %d" % len(body) in head.lower(), head  # whole, not chunked
                assert forwarded == body
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            assert client.recv(65536).startswith(b"HTTP/1.1 200")


# -- a plain proxy_pass, buffering on --------------------------------------------------------------

def test_gateway_asks_proxies_not_to_buffer_its_streams(start_gateway, double):
    gateway = start_gateway()
    double.script(tokens=["a"])
    response = post_stream(gateway, {"prompt": "hi"})
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["Cache-Control"] == "no-cache"
    response.close()


def test_plain_config_streams_thanks_to_x_accel_buffering(start_gateway, run_nginx, double):
    gateway = start_gateway()
    nginx = run_nginx(plain_site(gateway))
    assert_incremental(timed_stream(nginx.url, double))


def test_plain_config_ignoring_the_header_delivers_one_late_lump(start_gateway, run_nginx, double):
    # The control for the test above: without the header's effect, buffering holds every event to the end.
    gateway = start_gateway()
    nginx = run_nginx(plain_site(gateway, "proxy_ignore_headers X-Accel-Buffering;"))
    items = timed_stream(nginx.url, double)
    assert [v.get("text") for _, v in items[:-1]] == TOKENS, items
    assert items[0][0] > len(TOKENS) * DELAY * 0.9, items
    assert items[-1][0] - items[0][0] < 0.1, items
