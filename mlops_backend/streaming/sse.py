"""Our Server-Sent Events: the event grammar of /api/llm/stream, chat and pull, framed from Ollama's NDJSON."""

from __future__ import annotations

import json
import re

from flask import Response, request, stream_with_context

from ..errors import stream_error_body
from ..upstream.client import OllamaBadResponse, OllamaStreamError
from .client_watch import watch_client
from .relay import Framing, relay

CONTENT_TYPE = "text/event-stream; charset=utf-8"
# no-cache: proxies and browsers must not store a stream; X-Accel-Buffering: nginx must pass
# each event on at once even where proxy_buffering is on (its default).
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
HEARTBEAT = b": keep-alive\n\n"
PROGRESS = ("status", "digest", "total", "completed", "upstream")
#: Fields of Ollama's last line that are content, not statistics: everything else goes into the done event.
NOT_STATISTICS = {"model", "created_at", "response", "thinking", "message", "done", "context", "logprobs"}

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# JSON may carry U+2028, U+2029 and U+0085 raw; SSE does not split on them, but many line readers
# do (Python's str.splitlines, requests' iter_lines), so they leave escaped.
_LINE_BREAKS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}


def _encode(obj) -> str:
    text = _dumps(obj)
    if "\u2028" in text or "\u2029" in text or "\x85" in text:
        text = text.translate(_LINE_BREAKS)
    return text



def event(obj) -> bytes:
    """Frame one object as an SSE event; JSON escapes newlines, so it is always one data line."""
    return b"data: " + _encode(obj).encode() + b"\n\n"


_TEXT_TAILS = ((b'"response":"', b'","done":false}'), (b'"content":"', b'"},"done":false}'))
#: What the fast path leaves to the full parse: a quote or backslash (an escape), NEL, LINE and PARAGRAPH SEPARATOR.
_SLOW = re.compile(rb'["\\]|\xc2\x85|\xe2\x80[\xa8\xa9]')


def text_event(line: bytes) -> bytes | None:
    """Frame an ordinary token line without parsing it: its text is already JSON-escaped by Ollama.

    Applies only to the common shape, a plain text piece as the last field before "done":false
    (`..."response":"tok","done":false}`, or chat's `..."content":"tok"},"done":false}`) with no
    backslash or Unicode line break in it; returns None for anything else, which is parsed in full.
    Returns b"" for an empty piece (no event).
    """
    for key, tail in _TEXT_TAILS:
        if line.endswith(tail):
            start = line.find(key)
            if start < 0:
                return None
            start += len(key)
            text = line[start:len(line) - len(tail)]
            if _SLOW.search(text) is not None:
                return None
            return b'data: {"text":"' + text + b'"}\n\n' if text else b""
    return None


def chunk_events(obj: dict, out: list) -> bool:
    """Append the events for one upstream object to `out`; return True for the final object.

    A piece's `logprobs` (asked for with "logprobs": true) ride on its text event, or on its
    thinking event when the piece is reasoning; the final event carries every field of Ollama's
    last line but the content (all its statistics, including ones newer than this code).
    """
    if "error" in obj:
        raise OllamaStreamError(str(obj["error"]) or "Ollama reported an error")
    message = obj.get("message")
    source = message if isinstance(message, dict) else obj
    thinking = source.get("thinking")
    text = source.get("content") if source is message else obj.get("response")
    logprobs = obj.get("logprobs")
    if thinking:
        out.append(event({"thinking": thinking, "logprobs": logprobs} if logprobs and not text else
                         {"thinking": thinking}))
    if logprobs and (text or not thinking):
        out.append(event({"text": text or "", "logprobs": logprobs}))
    elif text:
        out.append(b'data: {"text":' + _encode(text).encode() + b"}\n\n")
    if source is message and message.get("tool_calls"):
        out.append(event({"tool_calls": message["tool_calls"]}))
    if obj.get("done"):
        final = {"done": True}
        final.update((key, value) for key, value in obj.items() if key not in NOT_STATISTICS)
        out.append(event(final))
        return True
    return False


def progress_events(obj: dict, out: list) -> bool:
    """Append the event for one line of a pull's progress; return True for the final "success".

    A pull on several upstreams (upstream.fanin) names each line's upstream; an upstream's own
    "success" is then progress, and the final one is the fan-in's, which names none.
    """
    if "error" in obj:
        where = f" ({obj['upstream']})" if "upstream" in obj else ""
        raise OllamaStreamError((str(obj["error"]) or "Ollama reported an error") + where)
    if obj.get("status") == "success" and "upstream" not in obj:
        out.append(event({"done": True, "status": "success"}))
        return True
    out.append(event({key: obj[key] for key in PROGRESS if key in obj}))
    return False


class SSEFraming(Framing):
    """Our SSE grammar: one event per upstream piece, heartbeats while Ollama is silent, a final done or error."""

    heartbeat = HEARTBEAT

    def __init__(self, events=chunk_events, fast=text_event):
        self._events, self._fast, self._out = events, fast, []

    def chunk(self, payload, lines, observation):
        out = self._out = []  # kept until the batch is framed: a failure mid-batch still sends what came before
        for line in lines:
            framed = self._fast(line) if self._fast is not None else None
            if framed is not None:
                if framed:
                    out.append(framed)
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise OllamaBadResponse("Ollama sent a line that is not JSON") from None
            if self._events(obj, out):
                observation.statistics(obj)
                self._out = []
                return b"".join(out), True
        self._out = []
        return b"".join(out), False

    def end(self, observation):
        raise OllamaBadResponse("Ollama's stream ended before its final message")

    def failed(self, error, inside_line):
        return b"".join(self._out) + event(stream_error_body(error))


def stream_response(open_stream, config, observation, events=chunk_events, fast=text_event) -> Response:
    """Start the upstream call and answer with its SSE relay.

    We wait up to STREAM_STATUS_WAIT for Ollama's status line, so early failures (unknown model,
    busy, unreachable) keep their HTTP status; past that the 200 starts and heartbeats cover
    Ollama's silence. A watch on the client's socket interrupts the upstream call the moment
    the client leaves, in either phase. `events` frames each parsed upstream object; `fast`, if
    given, frames common lines without parsing them. `observation` learns the time to the first
    token, the token counts and how the stream ended.
    """
    stream = open_stream()
    watch, ready = watch_client(request.environ, stream, lambda: stream.wait_head(config.stream_status_wait))
    observation.stream_opened()
    body = relay(stream, ready, watch, SSEFraming(events, fast), observation, heartbeat=config.sse_heartbeat_seconds,
                 max_line=config.max_upstream_line_bytes)
    # direct_passthrough: our events are bytes already, so Werkzeug need not re-encode each one.
    return Response(stream_with_context(body), content_type=CONTENT_TYPE, headers=HEADERS, direct_passthrough=True)
