"""Relay a request to Ollama as the client wrote it, and its answer as Ollama wrote it.

The Ollama-native (`/ollama/...`) and OpenAI-compatible (`/v1/...`) routes use this: bodies go
out unchanged and come back unchanged, streamed as they arrive (NDJSON stays NDJSON, SSE stays
SSE). The gateway only watches them pass: the final line's token counts for usage and metrics,
and a stream that fails mid-way ends with one error line in the stream's own format.
"""

from __future__ import annotations

import json
import logging

from flask import Response, request, stream_with_context

from ..extensions import current_gateway
from ..observability import observe
from ..security.auth import authenticate
from ..upstream.client import deadline
from .client_watch import watch_client
from .relay import Framing
from .relay import relay as stream_relay

log = logging.getLogger(__name__)

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Dialect:
    """How one API frames a failed stream and reports token counts."""

    #: Bytes that mark a line worth parsing for token counts.
    marker = b""
    #: How a line reporting a failure starts.
    error_start = b""

    def stream_error(self, message: str) -> bytes:
        raise NotImplementedError

    def counts(self, answer: dict) -> tuple[int | None, int | None]:
        """(prompt tokens, completion tokens) of a whole answer or of a stream's last line."""
        raise NotImplementedError

    def parse_line(self, line: bytes) -> dict | None:
        raise NotImplementedError


class OllamaDialect(Dialect):
    """NDJSON; Ollama itself ends a failed stream with an `{"error": "..."}` line."""

    marker = b'"done":true'
    error_start = b'{"error"'

    def stream_error(self, message: str) -> bytes:
        return json.dumps({"error": message}).encode() + b"\n"

    def counts(self, answer: dict):
        return answer.get("prompt_eval_count"), answer.get("eval_count")

    def parse_line(self, line: bytes):
        return json.loads(line)


class OpenAIDialect(Dialect):
    """SSE `data: {...}` chunks then `data: [DONE]`; usage in the answer or in a chunk's `usage`."""

    marker = b'"usage":{'
    error_start = b'data: {"error"'

    def stream_error(self, message: str) -> bytes:
        error = {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
        return b"data: " + json.dumps(error).encode() + b"\n\n"

    def counts(self, answer: dict):
        usage = answer.get("usage") or {}
        return usage.get("prompt_tokens"), usage.get("completion_tokens")

    def parse_line(self, line: bytes):
        return json.loads(line[len(b"data: "):]) if line.startswith(b"data: ") else None


OLLAMA = OllamaDialect()
OPENAI = OpenAIDialect()


class PassthroughFraming(Framing):
    """The body as Ollama wrote it, passed on as it arrives; its lines only read for token counts and errors."""

    def __init__(self, dialect: Dialect):
        self.dialect = dialect

    def chunk(self, payload, lines, observation):
        dialect = self.dialect
        for line in lines:
            if dialect.marker in line:
                _note_counts(line, dialect, observation)
            elif line.startswith(dialect.error_start):  # Ollama's own error line, passed on
                observation.stream_failed, observation.upstream_error = True, "model_error"
        return payload, False

    def failed(self, error, inside_line):
        return (b"\n" if inside_line else b"") + self.dialect.stream_error(error.detail)


def relay(method: str, path: str, body: bytes, dialect: Dialect, *, streaming: bool, slot: bool, keep=None,
          model: str | None = None, session: str | None = None, upstream: str | None = None) -> Response:
    """Send the request to Ollama (the upstream the router picks for `model`) and answer with its status, type
    and body.

    Whether the answer is read whole or passed on as it comes is the route's (and the body's
    `stream`) decision, never the framing's: Go answers bodies over 2 KiB chunked, so a model
    list is as likely to come chunked as a stream is. `slot` takes one of the key's slots for
    generations in flight (generations and streams). `keep`, if given, filters a whole JSON
    answer (a key's model allow-list on model lists).
    """
    gateway = current_gateway()
    config = gateway.config
    observation = observe.current()
    if slot:
        observation.on_finish.append(gateway.limits.acquire_slot(authenticate(gateway)))
    stream = gateway.upstreams.open(method, path, body, model=model, session=session, upstream=upstream,
                                    note=observation.served_by)

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
    body = stream_relay(stream, True, watch, PassthroughFraming(dialect), observation, heartbeat=1.0,
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
