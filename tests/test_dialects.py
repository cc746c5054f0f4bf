"""The pass-through framing: whole records only, token counts per dialect, one clean error record on failure.

Fed the pieces a real socket delivers (Go's chunks cut lines anywhere), without a server: the relay
loop itself is exercised through gunicorn by the compatibility tests.
"""

from __future__ import annotations

import json

import pytest

from mlops_backend.streaming.dialects import ANTHROPIC, OLLAMA, OPENAI, RESPONSES
from mlops_backend.streaming.passthrough import PassthroughFraming
from mlops_backend.upstream.client import OllamaBadResponse
from mlops_backend.upstream.ndjson import Lines


class Observation:
    tokens_in = tokens_out = None
    stream_failed = False
    upstream_error = None


def feed(dialect, pieces, max_held=1 << 20):
    """Run pieces through Lines and the framing as the relay loop does; return (sent pieces, framing, obs)."""
    framing, lines, observation = PassthroughFraming(dialect, max_held), Lines(max(max_held, 1 << 10)), Observation()
    sent = []
    for piece in pieces:
        data, final = framing.chunk(piece, lines.feed(piece), observation)
        assert final is False
        sent.append(data)
    return sent, framing, observation


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def sse(name, data) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


ANTHROPIC_STREAM = b"".join([
    sse("message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 12,
                                                                                      "output_tokens": 0}}}),
    sse("content_block_start", {"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}),
    sse("ping", {"type": "ping"}),
    sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": "Hello"}}),
    sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                          "usage": {"input_tokens": 12, "output_tokens": 5}}),
    sse("message_stop", {"type": "message_stop"}),
])
RESPONSES_STREAM = b"".join([
    sse("response.created", {"type": "response.created", "sequence_number": 0,
                             "response": {"id": "resp_1", "status": "in_progress", "usage": None}}),
    sse("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 1,
                                       "delta": "say \"usage\":{ twice"}),
    sse("response.completed", {"type": "response.completed", "sequence_number": 2,
                               "response": {"id": "resp_1", "status": "completed",
                                            "usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}}}),
])
OPENAI_STREAM = (b'data: {"id":"c","choices":[{"delta":{"content":"Hi"}}]}\n\n'
                 b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
                 b"data: [DONE]\n\n")
OLLAMA_STREAM = (b'{"model":"m","response":"Hi","done":false}\n'
                 b'{"model":"m","response":"","done":true,"prompt_eval_count":3,"eval_count":8}\n')
STREAMS = {"anthropic": (ANTHROPIC, ANTHROPIC_STREAM, (12, 5)), "responses": (RESPONSES, RESPONSES_STREAM, (9, 4)),
           "openai": (OPENAI, OPENAI_STREAM, (7, 2)), "ollama": (OLLAMA, OLLAMA_STREAM, (3, 8))}


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20])
def test_every_byte_passes_once_in_order_and_the_counts_are_read(name, size):
    dialect, stream, counts = STREAMS[name]
    sent, framing, observation = feed(dialect, cut(stream, size))
    assert b"".join(sent) + framing.end(observation) == stream
    assert (observation.tokens_in, observation.tokens_out) == counts
    assert not observation.stream_failed


@pytest.mark.parametrize("name", STREAMS)
def test_only_whole_records_are_sent(name):
    dialect, stream, _ = STREAMS[name]
    sent, _, _ = feed(dialect, cut(stream, 5))
    for data in filter(None, sent):
        assert data.endswith(dialect.boundary)


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("at", [0.3, 0.5, 0.9])
def test_a_stream_cut_mid_record_ends_with_one_parseable_error_record(name, at):
    dialect, stream, _ = STREAMS[name]
    where = int(len(stream) * at)
    sent, framing, _ = feed(dialect, cut(stream[:where], 9))
    out = b"".join(sent) + framing.failed(OllamaBadResponse("The connection to Ollama dropped mid-response"), True)
    records = [r for r in out.split(dialect.boundary) if r.strip()]
    assert stream.startswith(b"".join(r + dialect.boundary for r in records[:-1]))  # what came before, whole
    last = records[-1]
    if dialect is OLLAMA:
        assert json.loads(last) == {"error": "The connection to Ollama dropped mid-response"}
        return
    fields = dict(line.split(b": ", 1) for line in last.split(b"\n"))
    error = json.loads(fields[b"data"])
    if dialect is ANTHROPIC:
        assert fields[b"event"] == b"error"
        assert error == {"type": "error", "error": {"type": "api_error",
                                                    "message": "The connection to Ollama dropped mid-response"}}
    elif dialect is RESPONSES:
        assert fields[b"event"] == b"error"
        assert error == {"type": "error", "code": "bad_response", "param": None,
                         "message": "The connection to Ollama dropped mid-response"}
    else:
        assert error["error"]["message"] == "The connection to Ollama dropped mid-response"


def test_a_busy_upstream_is_anthropics_overloaded_error():
    from mlops_backend.upstream.client import OllamaBusy

    record = ANTHROPIC.stream_error(OllamaBusy("Ollama is busy; try again shortly"))
    assert json.loads(record.split(b"data: ", 1)[1])["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize("name,line", [
    ("anthropic", sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})),
    ("responses", sse("response.failed", {"type": "response.failed", "response": {"status": "failed"}})),
    ("responses", sse("error", {"type": "error", "code": "x", "message": "y"})),
    ("openai", b'data: {"error":{"message":"boom"}}\n\n'),
    ("ollama", b'{"error":"model runner crashed"}\n'),
])
def test_ollamas_own_error_records_pass_and_mark_the_stream_failed(name, line):
    dialect = STREAMS[name][0]
    sent, framing, observation = feed(dialect, [line[:4], line[4:]])
    assert b"".join(sent) == line and observation.stream_failed and observation.upstream_error == "model_error"


def test_a_long_record_is_held_in_pieces_and_joined_once():
    """A 4 MiB record arriving 4 KiB at a time goes out once, whole, when it ends."""
    record = b'data: {"x":"' + b"a" * (4 << 20) + b'"}\n\n'
    pieces = cut(record, 4096) + [b"data: [DONE]\n\n"]
    sent, framing, _ = feed(OPENAI, pieces, max_held=8 << 20)
    assert [len(s) for s in sent if s] == [len(record), 14]
    assert framing.end(Observation()) == b""


def test_a_record_that_never_ends_is_sent_once_it_passes_the_limit():
    stop = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    sent, framing, observation = feed(ANTHROPIC, [b"event: x\n", b"data: " + b"a" * 200 + b"\n", stop], max_held=100)
    assert b"".join(sent) + framing.end(observation) == b"event: x\ndata: " + b"a" * 200 + b"\n" + stop
    assert sent[1]  # not held for ever


def test_a_body_without_a_last_newline_is_sent_at_its_end():
    sent, framing, observation = feed(OLLAMA, [b'{"a":1}\n{"done":', b"true}"])
    assert b"".join(sent) == b'{"a":1}\n'
    assert framing.end(observation) == b'{"done":true}'
    assert not observation.stream_failed


FINAL = {"ollama": b'{"model":"m","done":true,"eval_count":1}\n', "pull": b'{"status":"success"}\n',
         "openai": b"data: [DONE]\n\n",
         "responses": sse("response.completed", {"type": "response.completed", "response": {"usage": {}}}),
         "incomplete": sse("response.incomplete", {"type": "response.incomplete", "response": {}}),
         "anthropic": sse("message_stop", {"type": "message_stop"})}
DIALECT_OF = {"ollama": OLLAMA, "pull": OLLAMA, "openai": OPENAI, "responses": RESPONSES, "incomplete": RESPONSES,
              "anthropic": ANTHROPIC}


@pytest.mark.parametrize("name", FINAL)
def test_a_stream_that_ends_with_its_final_record_gets_nothing_more(name):
    sent, framing, observation = feed(DIALECT_OF[name], [FINAL[name][:5], FINAL[name][5:]])
    assert b"".join(sent) == FINAL[name] and framing.end(observation) == b""
    assert not observation.stream_failed


@pytest.mark.parametrize("name", FINAL)
def test_a_stream_cut_before_its_final_record_ends_with_one_error_record(name):
    """Ollama's Anthropic and Responses writers just stop when a generation fails mid-way; the client must
    still learn that the stream failed, not take the half answer for a whole one."""
    dialect = DIALECT_OF[name]
    first = b'{"response":"a"}\n' if dialect is OLLAMA else sse("x", {"type": "x"})
    sent, framing, observation = feed(dialect, [first, first[:7]])
    last = framing.end(observation)
    assert b"".join(sent) == first
    assert last.startswith(first[:7] + dialect.boundary)  # the cut record, ended, then the error record
    assert last.endswith(dialect.stream_error(OllamaBadResponse("Ollama ended the stream before its final event")))
    assert observation.stream_failed and observation.upstream_error == "bad_response"
