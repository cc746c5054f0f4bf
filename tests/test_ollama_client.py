"""The Ollama client: status and transport errors mapped to kinds (with `responses`), streams against the double."""

from __future__ import annotations

import pytest
import requests
import responses

from mlops_backend.ollama import (ModelNotFound, OllamaBadResponse, OllamaBusy, OllamaClient, OllamaError,
                                  OllamaRejected, OllamaTimeout, OllamaUnreachable)

BASE = "http://ollama.test:11434"


@pytest.fixture
def client():
    return OllamaClient(BASE, connect_timeout=1, first_byte_timeout=2, chunk_timeout=2)


@responses.activate
def test_tags_and_version(client):
    responses.get(f"{BASE}/api/tags", json={"models": [{"name": "llama3.2:latest", "size": 1}]})
    responses.get(f"{BASE}/api/version", json={"version": "0.12.6"})
    assert client.tags() == [{"name": "llama3.2:latest", "size": 1}]
    assert client.version(timeout=1) == "0.12.6"


@responses.activate
def test_generate_forces_stream_false_and_sends_no_browser_headers(client):
    responses.post(f"{BASE}/api/generate", json={"model": "m", "response": "hi", "done": True})
    assert client.generate({"model": "m", "prompt": "p"})["response"] == "hi"
    sent = responses.calls[0].request
    assert b'"stream": false' in sent.body
    assert "Origin" not in sent.headers and sent.headers["User-Agent"] == "mlops-backend"


@responses.activate
@pytest.mark.parametrize("status, body, error", [
    (404, {"error": "model 'm' not found"}, ModelNotFound),
    (503, {"error": "server busy, please try again.  maximum pending requests exceeded"}, OllamaBusy),
    (400, {"error": "\"m\" does not support thinking"}, OllamaRejected),
    (500, {"error": "llama runner process has terminated"}, OllamaError),
])
def test_status_errors(client, status, body, error):
    responses.post(f"{BASE}/api/generate", json=body, status=status)
    with pytest.raises(error) as caught:
        client.generate({"model": "m", "prompt": "p"})
    assert type(caught.value) is error
    assert caught.value.upstream_status == status
    if status == 400:
        assert "does not support thinking" in caught.value.detail
    if status == 500:
        assert "llama runner" not in caught.value.detail  # internal text stays in our log
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


def test_stream_reads_lines_as_they_come_and_reuses_the_connection(double):
    client = OllamaClient(double.url, chunk_timeout=5)
    double.script(tokens=["a", "b", "c"])
    local_ports = set()
    for _ in range(3):
        stream = client.open_stream("/api/generate", {"model": "llama3.2", "prompt": "x"})
        local_ports.add(stream._sock.getsockname()[1])
        lines = []
        while (batch := stream.read_lines(1.0)) is not None:
            lines += batch
            if b'"done":true' in batch[-1]:
                stream.clean = True
                break
        stream.close()
        assert len(lines) == 4
    assert len(local_ports) == 1  # three streams, one TCP connection
    assert all(s["completed"] for s in double.streams)


def test_stream_read_returns_empty_on_silence_then_times_out(double):
    client = OllamaClient(double.url, chunk_timeout=0.6)
    double.script(tokens=["a", "b"], delay=5)
    stream = client.open_stream("/api/generate", {"model": "llama3.2", "prompt": "x"})
    try:
        assert b'"a"' in stream.read_lines(1.0)[0]
        assert stream.read_lines(0.2) == []  # silence shorter than the timeout: heartbeat time
        with pytest.raises(TimeoutError):
            while True:
                stream.read_lines(0.2)
    finally:
        stream.close()
    assert double.wait_stream_closed(2)["client_gone"]


def test_interrupt_stops_the_upstream(double):
    client = OllamaClient(double.url)
    double.script(tokens=["a"] * 100, delay=0.05)
    stream = client.open_stream("/api/generate", {"model": "llama3.2", "prompt": "x"})
    stream.read_lines(1.0)
    stream.interrupt()
    with pytest.raises(ConnectionError):
        while stream.read_lines(1.0) is not None:
            pass
    stream.close()
    assert double.wait_stream_closed(2)["client_gone"]
