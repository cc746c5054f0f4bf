"""The Ollama client: requests calls with `responses`; the fast path (framed by hand) against real sockets."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
import responses

from mlops_backend.upstream.client import (ModelNotFound, OllamaBadResponse, OllamaBusy, OllamaClient, OllamaError,
                                  OllamaRejected, OllamaTimeout, OllamaUnreachable)

BASE = "http://ollama.test:11434"


@pytest.fixture
def client():
    client = OllamaClient(BASE, connect_timeout=1, first_byte_timeout=2, chunk_timeout=2)
    yield client
    client.close()


@pytest.fixture
def make_client():
    """Clients of the fast path against real servers, closed after the test."""
    made = []

    def make(url, **kwargs):
        made.append(OllamaClient(url, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()


@responses.activate
def test_tags_and_version(client):
    responses.get(f"{BASE}/api/tags", json={"models": [{"name": "llama3.2:latest", "size": 1}]})
    responses.get(f"{BASE}/api/version", json={"version": "0.12.6"})
    assert client.tags() == [{"name": "llama3.2:latest", "size": 1}]
    assert client.version(timeout=1) == "0.12.6"


def test_generate_forces_stream_false_and_sends_only_its_own_headers(double, make_client):
    client = make_client(double.url)
    assert client.call("/api/generate", {"model": "llama3.2", "prompt": "p", "stream": True})["response"] == "You said: p"
    sent = double.requests[-1]
    assert sent["body"]["stream"] is False
    assert {k.lower() for k in sent["headers"]} == {"host", "user-agent", "accept", "content-type", "content-length"}


@responses.activate
@pytest.mark.parametrize("status, body, error", [
    (404, {"error": "model 'm' not found"}, ModelNotFound),
    (503, {"error": "server busy, please try again.  maximum pending requests exceeded"}, OllamaBusy),
    (400, {"error": "\"m\" does not support thinking"}, OllamaRejected),
    (500, {"error": "llama runner process has terminated"}, OllamaError),
])
def test_status_errors(client, status, body, error):
    responses.get(f"{BASE}/api/tags", json=body, status=status)
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


@responses.activate
@pytest.mark.parametrize("exception, error", [
    (requests.ConnectTimeout(), OllamaUnreachable),
    (requests.ConnectionError("Failed to establish a new connection: [Errno 111] Connection refused"),
     OllamaUnreachable),
    (requests.ConnectionError("Connection aborted. RemoteDisconnected"), OllamaBadResponse),
    (requests.ReadTimeout(), OllamaTimeout),
])
def test_transport_errors(client, exception, error):
    responses.get(f"{BASE}/api/tags", body=exception)
    with pytest.raises(error):
        client.tags()


@responses.activate
def test_non_json_answer_is_a_bad_response(client):
    responses.get(f"{BASE}/api/tags", body="<html>proxy error</html>")
    with pytest.raises(OllamaBadResponse):
        client.tags()


def read_all(stream) -> list[bytes]:
    assert stream.wait_head(2.0)
    lines = []
    while (batch := stream.read_lines(1.0)) is not None:
        lines += batch
    return lines


def test_stream_reads_lines_as_they_come_and_reuses_the_connection(double, make_client):
    client = make_client(double.url, chunk_timeout=5)
    double.script(tokens=["a", "b", "c"])
    local_ports = set()
    for _ in range(3):
        stream = client.open_stream("/api/generate", {"model": "llama3.2", "prompt": "x"})
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
    double.script(tokens=["a", "b"], delay=5)
    stream = client.open_stream("/api/generate", {"model": "llama3.2", "prompt": "x"})
    try:
        assert stream.wait_head(2.0)
        assert b'"a"' in stream.read_lines(1.0)[0]
        assert stream.read_lines(0.2) == []  # silence shorter than the timeout: heartbeat time
        with pytest.raises(OllamaTimeout):
            while True:
                stream.read_lines(0.2)
    finally:
        stream.close()
    assert double.wait_stream_closed(2)["client_gone"]


def test_interrupt_stops_the_upstream(double, make_client):
    client = make_client(double.url)
    double.script(tokens=["a"] * 100, delay=0.05)
    stream = client.open_stream("/api/generate", {"model": "llama3.2", "prompt": "x"})
    assert stream.wait_head(2.0)
    stream.read_lines(1.0)
    stream.interrupt()
    with pytest.raises(OllamaBadResponse):
        while stream.read_lines(1.0) is not None:
            pass
    stream.close()
    assert double.wait_stream_closed(2)["client_gone"]
