"""The Ollama client against real sockets: raw servers of our own for the framing, the double for the rest."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from mlops_backend.upstream.client import (ModelNotFound, OllamaBadResponse, OllamaBusy, OllamaClient, OllamaError,
                                           OllamaRejected, OllamaTimeout, OllamaUnreachable)

GENERATE = b'{"model": "llama3.2", "prompt": "x"}'

class OneShotServer:
    """A raw HTTP server on loopback that answers each connection's requests with the bytes it is given."""

    def __init__(self, *answers: bytes, close_after: bool = False):
        self.answers, self.close_after = list(answers), close_after
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while self.answers:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)
            while self.answers:
                if not conn.recv(65536):
                    break
                conn.sendall(self.answers.pop(0))
                if self.close_after:
                    break
            conn.close()

    def close(self):
        self.listener.close()


def answer(status: int, body: bytes, content_type=b"application/json; charset=utf-8", extra=b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status, content_type, len(body), extra, body)


@pytest.fixture
def server():
    made = []

    def make(*answers, **kwargs):
        made.append(OneShotServer(*answers, **kwargs))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.fixture
def make_client():
    """Clients against real servers, closed after the test."""
    made = []

    def make(url, **kwargs):
        kwargs.setdefault("connect_timeout", 1)
        made.append(OllamaClient(url, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_tags_and_version(server, make_client):
    up = server(answer(200, b'{"models":[{"name":"llama3.2:latest","size":1}]}'), answer(200, b'{"version":"0.33.0"}'))
    client = make_client(up.url)
    assert client.tags() == [{"name": "llama3.2:latest", "size": 1}]
    assert client.version(timeout=1) == "0.33.0"
    assert len(up.accepted) == 1  # both on one keep-alive connection


def test_generate_forces_stream_false_and_sends_only_its_own_headers(double, make_client):
    client = make_client(double.url)
    assert client.call("/api/generate", {"model": "llama3.2", "prompt": "p", "stream": True})["response"] == "You said: p"
    sent = double.requests[-1]
    assert sent["body"]["stream"] is False
    assert {k.lower() for k in sent["headers"]} == {"host", "user-agent", "accept", "content-type", "content-length"}


@pytest.mark.parametrize("status, body, error", [
    (404, b'{"error":"model \'m\' not found"}', ModelNotFound),
    (503, b'{"error":"server busy, please try again.  maximum pending requests exceeded"}', OllamaBusy),
    (400, b'{"error":"\\"m\\" does not support thinking"}', OllamaRejected),
    (500, b'{"error":"llama runner process has terminated"}', OllamaError),
])
def test_status_errors(server, make_client, status, body, error):
    client = make_client(server(answer(status, body)).url)
    with pytest.raises(error) as caught:
        client.tags()
    assert type(caught.value) is error
    assert caught.value.upstream_status == status
    if status == 400:
        assert "does not support thinking" in caught.value.detail
    if status == 500:
        assert "llama runner" not in caught.value.detail  # internal text stays in our log
    if status == 404:
        assert "not found" in caught.value.detail
    if status == 503:
        assert caught.value.retry_after == "5"


def test_transport_errors(server, make_client):
    with pytest.raises(OllamaUnreachable):
        make_client("http://127.0.0.1:9").tags()  # refused
    with pytest.raises(OllamaBadResponse) as caught:
        make_client(server(b"", close_after=True).url).tags()  # closed before a byte of an answer
    assert caught.value.before_answer
    with pytest.raises(OllamaBadResponse) as caught:  # closed in the middle of the body
        make_client(server(answer(200, b"")[:-2].replace(b"Length: 0", b"Length: 9") + b"{", close_after=True)
                    .url).tags()
    assert not caught.value.before_answer
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        with pytest.raises(OllamaTimeout):
            make_client(f"http://127.0.0.1:{silent.getsockname()[1]}", first_byte_timeout=0.3).tags()
    finally:
        silent.close()


@pytest.mark.parametrize("raw", [
    answer(200, b"<html>proxy error</html>", b"text/html"),
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}",  # junk in the length
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n",  # junk in a chunk size
    b"NOT HTTP AT ALL\r\n\r\n",
])
def test_what_is_not_a_valid_json_answer_is_a_bad_response(server, make_client, raw):
    with pytest.raises(OllamaBadResponse):
        make_client(server(raw, close_after=True).url).tags()


def test_interim_answers_repeated_headers_and_bodiless_statuses(server, make_client):
    up = server(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(200, b'{"version":"1"}', extra=b"X-A: 1\r\nX-A: 2\r\n"),
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", answer(200, b'{"version":"2"}'))
    client = make_client(up.url)
    stream = client.open("GET", "/api/version")
    assert stream.wait_head(1.0) and stream.headers["x-a"] == "1, 2"  # both values kept, joined as RFC 9110 allows
    assert stream.body() == b'{"version":"1"}'
    stream.close()
    empty = client.open("DELETE", "/api/delete", b"{}")
    assert empty.wait_head(1.0) and empty.status == 204 and empty.body() == b""  # no body, whatever it claims
    empty.close()
    assert client.version(1) == "2" and len(up.accepted) == 1


@pytest.mark.parametrize("path", ["/api/generate x", "/api/generate\r\nX-Injected: 1", "/api/é", "api/tags"])
def test_a_path_that_is_not_percent_encoded_is_never_sent(server, make_client, path):
    up = server(answer(200, b"{}"))
    with pytest.raises(OllamaRejected):
        make_client(up.url).open("GET", path)
    assert up.accepted == []


def read_all(stream) -> list[bytes]:
    assert stream.wait_head(2.0)
    body = b""
    while (payload := stream.read_payload(1.0)) is not None:
        body += payload
    return [line for line in body.split(b"\n") if line]


def test_stream_reads_lines_as_they_come_and_reuses_the_connection(double, make_client):
    client = make_client(double.url, chunk_timeout=5)
    double.script(tokens=["a", "b", "c"])
    local_ports = set()
    for _ in range(3):
        stream = client.open("POST", "/api/generate", GENERATE)
        local_ports.add(stream._exchange.sock.getsockname()[1])
        assert len(read_all(stream)) == 4
        stream.close()
    assert client.call("/api/generate", {"model": "llama3.2", "prompt": "x"})["response"] == "abc"
    assert len(local_ports) == 1  # three streams, one TCP connection
    assert len(client.pool._idle) == 1
    assert len(double.streams) == 3 and all(s["completed"] for s in double.streams), double.streams


def test_fast_path_errors_are_mapped(double, make_client):
    client = make_client(double.url, first_byte_timeout=0.5, chunk_timeout=0.5)
    with pytest.raises(ModelNotFound):
        client.call("/api/generate", {"model": "nope", "prompt": "x"})
    double.script(fault="busy")
    with pytest.raises(OllamaBusy):
        client.call("/api/generate", {"model": "llama3.2", "prompt": "x"})
    double.script(first_delay=3)
    with pytest.raises(OllamaTimeout):
        client.call("/api/generate", {"model": "llama3.2", "prompt": "x"})
    with pytest.raises(OllamaUnreachable):
        make_client("http://127.0.0.1:9").call("/api/generate", {"model": "m", "prompt": "x"})


def test_keep_alive_connection_closed_by_the_server_is_replaced(make_client):
    """A server that closes idle connections without saying so: the next call reconnects."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    body = b'{"model":"m","response":"ok","done":true}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    accepted = []

    def serve():
        for _ in range(2):
            conn, _ = listener.accept()
            accepted.append(conn)
            conn.recv(65536)
            conn.sendall(answer)
            time.sleep(0.1)
            conn.close()  # keep-alive promised, then closed while idle

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = make_client(f"http://127.0.0.1:{listener.getsockname()[1]}")
    assert client.call("/api/generate", {"model": "m", "prompt": "x"})["response"] == "ok"
    time.sleep(0.3)
    assert client.call("/api/generate", {"model": "m", "prompt": "x"})["response"] == "ok"
    thread.join(2)
    listener.close()
    assert len(accepted) == 2


def test_stream_read_returns_empty_on_silence_then_times_out(double, make_client):
    client = make_client(double.url, chunk_timeout=0.6)
    double.script(tokens=["a", "b"], delay=5, framing="go")  # one line per chunk: the first payload is a line
    stream = client.open("POST", "/api/generate", GENERATE)
    try:
        assert stream.wait_head(2.0)
        assert b'"a"' in stream.read_payload(1.0)
        assert stream.read_payload(0.2) == b""  # silence shorter than the timeout: heartbeat time
        with pytest.raises(OllamaTimeout):
            while True:
                stream.read_payload(0.2)
    finally:
        stream.close()
    assert double.wait_stream_closed(2)["client_gone"]


def test_interrupt_stops_the_upstream(double, make_client):
    client = make_client(double.url)
    double.script(tokens=["a"] * 100, delay=0.05)
    stream = client.open("POST", "/api/generate", GENERATE)
    assert stream.wait_head(2.0)
    stream.read_payload(1.0)
    stream.interrupt()
    with pytest.raises(OllamaBadResponse):
        while stream.read_payload(1.0) is not None:
            pass
    stream.close()
    assert double.wait_stream_closed(2)["client_gone"]
