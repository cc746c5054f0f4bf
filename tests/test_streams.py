"""The stream contract through real gunicorn: framing, events, faults, heartbeats, cancellation."""

from __future__ import annotations

import json
import socket
import time

import pytest
from tests.support import AUTH, post_stream, sse_events, sse_items
from tests.test_api import assert_problem

#: Every statistic of Ollama's final line reaches the done event.
STATS = {"done_reason", "total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
         "eval_duration"}


def test_framing_headers(gateway):
    response = post_stream(gateway, {"prompt": "hi"})
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in response.headers
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert response.headers["X-Request-ID"]
    sse_events(response)


def test_awkward_chunks_round_trip_exactly_and_empty_ones_are_dropped(gateway, double):
    tokens = ["line\none", "\r", "carriage\r\nreturn", ' "quoted" ', "\\back\\slash", "", "é漢字",
              "emoji 🦙🚀", "<tag> & </tag>", "\u2028sep", "data: fake\n\nevent"]
    double.script(tokens=tokens)
    events = sse_events(post_stream(gateway, {"prompt": "hi"}))
    assert [e["text"] for e in events[:-1]] == [t for t in tokens if t]
    assert events[-1]["done"] is True


def test_thinking_chunks_become_thinking_events(gateway, double):
    double.script(thinking=["Let me", " think"], tokens=["Answer"])
    events = sse_events(post_stream(gateway, {"model": "qwen3", "prompt": "hi", "think": True}))
    assert events[:3] == [{"thinking": "Let me"}, {"thinking": " think"}, {"text": "Answer"}]
    assert set(events[3]) == {"done"} | STATS


def test_early_errors_keep_their_http_status(gateway, double):
    assert_problem(post_stream(gateway, {"model": "missing", "prompt": "hi"}), 404)
    assert_problem(post_stream(gateway, {"prompt": ""}), 422)
    double.script(fault="status_500")
    assert_problem(post_stream(gateway, {"prompt": "hi"}), 502)
    double.script(fault="bad_request")
    assert_problem(post_stream(gateway, {"prompt": "hi"}), 400)


@pytest.mark.parametrize("fault, status", [("drop", 502), ("malformed", 502), ("error_line", 502)])
def test_started_stream_ends_with_one_error_event(gateway, double, fault, status):
    double.script(tokens=["one", "two", "three", "four"], fault=fault, fault_after=2)
    response = post_stream(gateway, {"prompt": "hi"})
    assert response.status_code == 200
    events = sse_events(response)  # also proves no half-written event
    assert events[:2] == [{"text": "one"}, {"text": "two"}]
    assert len(events) == 3, events
    error = events[-1]
    assert error["done"] is True
    assert error["error"]["status"] == status
    assert set(error["error"]) == {"title", "status", "detail"}
    assert "Traceback" not in str(error)


def test_silence_between_chunks_past_the_timeout_ends_with_504_event(start_gateway, double):
    gw = start_gateway(OLLAMA_TIMEOUT="1.2", SSE_HEARTBEAT_SECONDS="0.4")
    double.script(tokens=["one", "two"], delay=30)
    started = time.monotonic()
    items = list(sse_items(post_stream(gw, {"prompt": "hi"})))
    data = [v for _, kind, v in items if kind == "data"]
    assert data[0] == {"text": "one"}
    assert data[-1]["error"]["status"] == 504 and data[-1]["done"] is True
    assert 1.0 < time.monotonic() - started < 4
    assert sum(kind == "comment" for _, kind, _ in items) >= 2  # heartbeats while it waited


def test_silence_before_first_byte_past_the_timeout_ends_with_504_event(start_gateway, double):
    gw = start_gateway(OLLAMA_TIMEOUT="1.5", SSE_HEARTBEAT_SECONDS="0.4")
    double.script(first_delay=30)
    response = post_stream(gw, {"prompt": "hi"})
    assert response.status_code == 200  # past STREAM_STATUS_WAIT the stream has begun
    data = sse_events(response)
    assert data == [data[-1]] and data[-1]["error"]["status"] == 504


def test_heartbeats_cover_silence_before_and_between_chunks(start_gateway, double):
    gw = start_gateway(SSE_HEARTBEAT_SECONDS="0.3")
    double.script(tokens=["a", "b"], first_delay=1.5, delay=1.5)
    started = time.monotonic()
    items = list(sse_items(post_stream(gw, {"prompt": "hi"})))
    times = [started] + [t for t, _, _ in items]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert max(gaps) < 0.3 + 0.25, gaps  # never a byte-less gap longer than one interval (plus slack)
    kinds = [kind for _, kind, _ in items]
    first_data = kinds.index("data")
    assert kinds[:first_data].count("comment") >= 3  # before Ollama's first byte
    assert kinds[first_data + 1:].count("comment") >= 3  # between two chunks


def test_disconnect_while_tokens_flow_closes_upstream_within_a_second(gateway, double):
    double.script(tokens=[f"t{i} " for i in range(200)], delay=0.05)
    response = post_stream(gateway, {"prompt": "hi"})
    items = sse_items(response)
    for _ in range(3):
        next(items)
    left = time.monotonic()
    response.close()
    record = double.wait_stream_closed(timeout=3)
    assert record["client_gone"] and not record["completed"]
    assert record["closed_at"] - left < 1.0
    assert record["lines_sent"] < 60


def test_disconnect_while_ollama_is_silent_closes_upstream_within_a_heartbeat(start_gateway, double):
    gw = start_gateway(SSE_HEARTBEAT_SECONDS="2")
    double.script(first_delay=60)
    response = post_stream(gw, {"prompt": "hi"})
    assert next(sse_items(response))[1] == "comment"  # the stream began; Ollama has sent nothing
    left = time.monotonic()
    response.close()
    record = double.wait_stream_closed(timeout=5)
    assert record["client_gone"] and record["lines_sent"] == 0
    assert record["closed_at"] - left < 2.0


def test_disconnect_while_ollama_pauses_mid_stream_closes_upstream_within_a_heartbeat(start_gateway, double):
    gw = start_gateway(SSE_HEARTBEAT_SECONDS="2")
    double.script(tokens=["first", "second"], delay=60)  # e.g. a long pause between two tokens
    response = post_stream(gw, {"prompt": "hi"})
    assert next(item for item in sse_items(response) if item[1] == "data")[2] == {"text": "first"}
    left = time.monotonic()
    response.close()
    record = double.wait_stream_closed(timeout=5)
    assert record["client_gone"] and record["lines_sent"] == 1
    assert record["closed_at"] - left < 2.0


def test_disconnect_during_status_wait_closes_upstream(gateway, double):
    double.script(first_delay=60)
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        body = b'{"prompt": "hi"}'
        sock.sendall(b"POST /api/llm/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: "
                     + AUTH["X-API-Key"].encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(0.1)  # inside the gateway's STREAM_STATUS_WAIT: no status line yet
    left = time.monotonic()
    record = double.wait_stream_closed(timeout=3)
    assert record["client_gone"]
    assert record["closed_at"] - left < 1.0


def test_unicode_line_separators_leave_escaped_for_line_readers(gateway, double):
    tokens = ["a\u2028b", "c\x85d", "e\u2029f"]
    double.script(tokens=tokens)
    response = post_stream(gateway, {"prompt": "hi"})
    raw = response.content
    for separator in ("\u2028", "\u2029", "\x85"):
        assert separator.encode() not in raw
    # requests' iter_lines splits on every Unicode line break, as str.splitlines does.
    lines = [line for line in raw.decode().splitlines() if line.startswith("data: ")]
    texts = [json.loads(line[6:]).get("text") for line in lines]
    assert texts[:3] == tokens
