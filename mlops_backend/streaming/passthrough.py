"""Relay a request to Ollama as the client wrote it, and its answer as Ollama wrote it.

The Ollama-native (`/ollama/...`), OpenAI-compatible and Anthropic-compatible (`/v1/...`) routes
use this: bodies go out unchanged (decoded, if the client compressed them) and come back
unchanged, streamed as they arrive (NDJSON stays NDJSON, SSE stays SSE). The gateway only watches
them pass: the token counts for usage and metrics, and a stream that fails mid-way ends with one
error record in the stream's own format (dialects.py).
"""

from __future__ import annotations

import json
import logging

from flask import Response, request, stream_with_context

from ..extensions import current_gateway
from ..observability import observe
from ..security.auth import authenticate
from ..upstream.client import OllamaBadResponse, deadline
from .client_watch import watch_client
from .dialects import ANTHROPIC, OLLAMA, OPENAI, RESPONSES, Dialect
from .relay import Framing
from .relay import relay as stream_relay

__all__ = ["ANTHROPIC", "OLLAMA", "OPENAI", "RESPONSES", "relay"]

log = logging.getLogger(__name__)

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class PassthroughFraming(Framing):
    """The body as Ollama wrote it, passed on whole record by whole record as it arrives; its lines only read
    for token counts and errors.

    A record cut by a read waits for its end (or the body's), so a stream that fails mid-record ends
    with the dialect's error record after the last whole one, never glued to half a record.
    """

    __slots__ = ("dialect", "_held", "_max", "_finished", "_rewrite")

    def __init__(self, dialect: Dialect, max_held: int, rewrite=None):
        self.dialect, self._max, self._rewrite = dialect, max_held, rewrite
        self._held: list[bytes] = []
        self._finished = False

    def chunk(self, payload, lines, observation):
        dialect = self.dialect
        for line in lines:
            if dialect.marker in line:
                _note_counts(line, dialect, observation)
            elif line.startswith(dialect.error_starts):  # Ollama's own error record, passed on
                observation.stream_failed, observation.upstream_error = True, "model_error"
        if lines and not self._finished:
            self._finished = any(dialect.is_final(line) for line in lines)
        held = self._held
        if held:
            held.append(payload)
            if b"\n" not in payload:  # kept in pieces, joined once: a long line costs linear time
                return b"", False
            payload = b"".join(held)
            held.clear()
        cut = payload.rfind(dialect.boundary) + len(dialect.boundary)
        if cut < len(dialect.boundary):  # no whole record yet
            if len(payload) <= self._max:
                held.append(payload)
                return b"", False
            cut = len(payload)
        elif cut < len(payload):
            held.append(payload[cut:])
        if self._rewrite is not None:
            return self._rewrite(payload[:cut]), False
        return payload[:cut], False

    def end(self, observation):
        """The body ended: what is left of it (a last record without its terminator) goes as it is; a body
        that ended before the stream's final record gets the dialect's error record after it."""
        held = b"".join(self._held)
        self._held.clear()
        if held and self._rewrite is not None:
            held = self._rewrite(held)
        if self._finished or (held and self.dialect.is_final(held.rpartition(b"\n")[2])):  # a last line, unended
            return held
        error = OllamaBadResponse("Ollama ended the stream before its final event")
        observation.stream_failed, observation.upstream_error = True, error.kind
        log.warning("Stream ended with an error: %s", error.detail)
        if held and not held.endswith(self.dialect.boundary):
            held += self.dialect.boundary
        return held + self.dialect.stream_error(error)

    def failed(self, error, inside_line):
        return self.dialect.stream_error(error)


def relay(method: str, path: str, body: bytes, dialect: Dialect, *, streaming: bool, slot: bool, keep=None,
          rewrite=None, model: str | None = None, session: str | None = None, upstream: str | None = None,
          content_type: str = "application/json", headers: tuple = ()) -> Response:
    """Send the request to Ollama (the upstream the router picks for `model`) and answer with its status, type
    and body.

    Whether the answer is read whole or passed on as it comes is the route's (and the body's
    `stream`) decision, never the framing's: Go answers bodies over 2 KiB chunked, so a model
    list is as likely to come chunked as a stream is. `slot` takes one of the key's slots for
    generations in flight (generations and streams). `keep`, if given, filters a whole JSON
    answer (a key's model allow-list on model lists, a stored Responses answer's id). `rewrite`, if
    given, takes a stream's whole records as they pass and returns what goes instead (a stored
    Responses stream's id); without it they pass untouched. `content_type` and `headers` (name,
    value) pairs go to Ollama with the body.
    """
    gateway = current_gateway()
    config = gateway.config
    observation = observe.current()
    if slot:
        observation.on_finish.append(gateway.limits.acquire_slot(authenticate(gateway)))
    stream = gateway.upstreams.open(method, path, body, model=model, session=session, upstream=upstream,
                                    note=observation.served_by, content_type=content_type, headers=headers)

    def answer():
        """Wait for Ollama's head; read a whole answer (and any failure) at once, or return None for a stream."""
        while not stream.wait_head(1.0, raw=True):
            pass
        if streaming and stream.status < 400:
            return None
        with deadline(config.ollama_request_timeout, "The call to Ollama"):
            return stream.body()

    watch, data = watch_client(request.environ, stream, answer)
    if data is not None:
        watch.stop()
        return _whole(stream, data, dialect, observation, keep)
    observation.stream_opened()
    framing = PassthroughFraming(dialect, config.max_upstream_line_bytes, rewrite)
    body = stream_relay(stream, True, watch, framing, observation, heartbeat=1.0,
                        max_line=config.max_upstream_line_bytes)
    return Response(stream_with_context(body), status=stream.status,
                    content_type=stream.headers.get("content-type", "application/octet-stream"), headers=HEADERS,
                    direct_passthrough=True)


def _whole(stream, data: bytes, dialect, observation, keep) -> Response:
    """A whole answer: note its token counts (and filter it, if asked), pass it on."""
    stream.close()
    content_type = stream.headers.get("content-type", "application/json")
    if stream.status >= 400:
        observation.upstream_error = "model_not_found" if stream.status == 404 else "upstream_error"
    elif content_type.startswith("application/json"):
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            observation.tokens_in, observation.tokens_out = dialect.counts(answer)
            if keep is not None:
                data = json.dumps(keep(answer)).encode()
    return Response(data, status=stream.status, content_type=content_type)


def _note_counts(line: bytes, dialect, observation) -> None:
    try:
        answer = dialect.parse_line(line)
    except ValueError:
        return
    if isinstance(answer, dict):
        prompt, completion = dialect.counts(answer)
        observation.tokens_in = prompt if prompt is not None else observation.tokens_in
        observation.tokens_out = completion if completion is not None else observation.tokens_out
