"""The one relay loop: an upstream answer to the client as it arrives, in the framing of its route.

Every stream the gateway sends goes through `relay()`: our SSE routes (generate, chat, pull) and
the pass-through ones (Ollama's NDJSON, OpenAI's SSE). The loop reads the body as it comes,
splits it into lines in one place (upstream.ndjson.Lines: bounded, linear), and hands both to the
route's Framing, which decides what the client gets. The loop owns the rest of the contract: a
stream always ends, with the framing's final line or one error line; heartbeats while Ollama is
silent (when the framing has them); a client that leaves releases the upstream call.
"""

from __future__ import annotations

import logging
import time

from ..upstream.client import OllamaBadResponse, OllamaError, OllamaTimeout
from ..upstream.ndjson import Lines, LineTooLong

log = logging.getLogger(__name__)

#: How long a finished stream waits for the end of Ollama's body, so its connection can be reused.
DRAIN_SECONDS = 0.05


class Framing:
    """What the client receives for one kind of stream."""

    #: Sent while Ollama is silent (an SSE comment), or None when the format has no such line.
    heartbeat: bytes | None = None

    def chunk(self, payload: bytes, lines: list[bytes], observation) -> tuple[bytes, bool]:
        """(bytes to send now, True when this was the stream's final line) for what just arrived."""
        raise NotImplementedError

    def end(self, observation) -> bytes:
        """The body ended: what to send last; raise if a stream of this kind may not end so."""
        return b""

    def failed(self, error: OllamaError, inside_line: bool) -> bytes:
        """The one line that ends a stream that failed."""
        raise NotImplementedError


def relay(stream, ready: bool, watch, framing: Framing, observation, *, heartbeat: float, max_line: int):
    """Yield the bytes of one stream; it always ends with the framing's last line or one error line."""
    lines = Lines(max_line)
    try:
        while not ready:
            if framing.heartbeat is not None:
                yield framing.heartbeat  # the first one also sends our headers: the client knows we are here
            ready = stream.wait_head(heartbeat)
        sent = time.monotonic()
        while True:
            payload = stream.read_payload(max(heartbeat - (time.monotonic() - sent), 0.001))
            if payload is None:
                last = framing.end(observation)
                if last:
                    yield last
                return
            if payload:
                complete = lines.feed(payload)
                observation.chunks += len(complete)
                data, final = framing.chunk(payload, complete, observation)
                if data:
                    if observation.ttft is None:
                        observation.first_token()
                    yield data
                    sent = time.monotonic()
                if final:
                    # The client has the last line; the end of the body lets the connection be reused.
                    stream.drain(DRAIN_SECONDS)
                    return
            elif framing.heartbeat is not None:
                yield framing.heartbeat
                sent = time.monotonic()
    except Exception as exc:  # every failure of a started stream becomes its final line
        if watch.gone:
            log.info("Client went away; upstream call closed")
            observation.client_gone = True
            return
        error = as_ollama_error(exc)
        observation.stream_failed, observation.upstream_error = True, error.kind
        log.warning("Stream ended with an error: %s", error.detail)
        yield framing.failed(error, lines.inside_line)
    finally:
        watch.stop()
        stream.close()


def as_ollama_error(exc: Exception) -> OllamaError:
    """Name a failure of a started stream the way the error table does."""
    if isinstance(exc, OllamaError):
        return exc
    if isinstance(exc, LineTooLong):
        return OllamaBadResponse(str(exc))
    if isinstance(exc, TimeoutError):
        return OllamaTimeout(str(exc))
    if isinstance(exc, (ConnectionError, OSError)):
        return OllamaBadResponse("The connection to Ollama dropped mid-stream")
    if isinstance(exc, ValueError):
        return OllamaBadResponse("Ollama's stream was not valid HTTP chunked framing")
    log.exception("Unexpected error in a stream")
    return OllamaError("The stream failed inside the gateway")
