"""Talk to one Ollama server: plain Python, no Flask; every failure becomes an OllamaError with a kind.

Every call, light (version, model lists) or hot (generations, streams), goes through one pool of
keep-alive connections (http.UpstreamPool, its answers parsed by httptools).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket

from .http import UpstreamClosed, UpstreamPool, gevent_active
from .ndjson import DEFAULT_MAX_LINE, LineTooLong

log = logging.getLogger(__name__)


class OllamaError(Exception):
    """Ollama failed; `kind` names the failure (the error module maps kinds to HTTP statuses)."""

    kind = "upstream_error"

    def __init__(self, detail: str, *, upstream_status: int | None = None, retry_after: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.upstream_status = upstream_status
        self.retry_after = retry_after


class OllamaUnreachable(OllamaError):
    kind = "unreachable"


class OllamaTimeout(OllamaError):
    kind = "timeout"


class OllamaBusy(OllamaError):
    kind = "busy"


class ModelNotFound(OllamaError):
    kind = "model_not_found"


class OllamaRejected(OllamaError):
    kind = "rejected"


class OllamaBadResponse(OllamaError):
    kind = "bad_response"
    #: True when the connection closed before a byte of the answer (the request may have been read or not).
    before_answer = False


class OllamaStreamError(OllamaError):
    """Ollama reported an error inside a stream that had already started."""

    kind = "model_error"


@contextlib.contextmanager
def deadline(seconds: float, what: str):
    """Bound a whole call in time under gevent; socket timeouts alone only bound each read."""
    if not gevent_active():
        yield
        return
    import gevent

    timer = gevent.Timeout(seconds)
    timer.start()
    try:
        yield
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise OllamaTimeout(f"{what} took longer than {seconds:g} s") from None
    finally:
        timer.close()


class OllamaClient:
    """A small client for the Ollama endpoints the gateway relays, on one pool of connections."""

    def __init__(self, base_url: str, *, connect_timeout: float = 5.0, first_byte_timeout: float = 300.0,
                 chunk_timeout: float = 300.0, request_timeout: float = 900.0, pool_size: int = 256,
                 max_line_bytes: int = DEFAULT_MAX_LINE, ca_bundle: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.chunk_timeout = chunk_timeout
        self.request_timeout = request_timeout
        self.max_line_bytes = max_line_bytes
        # Only our own headers go out, so a browser's Origin or Host never reaches Ollama (it answers those
        # with 403).
        self.pool = UpstreamPool(self.base_url, connect_timeout, max_idle=pool_size, max_line=max_line_bytes,
                                 ca_bundle=ca_bundle)

    @classmethod
    def from_config(cls, config, spec) -> OllamaClient:
        """Build the client of one upstream (upstreams.UpstreamSpec) with the gateway's timeouts and limits."""
        return cls(spec.url, connect_timeout=config.ollama_connect_timeout,
                   first_byte_timeout=config.ollama_first_byte_timeout, chunk_timeout=config.ollama_chunk_timeout,
                   request_timeout=config.ollama_request_timeout, max_line_bytes=config.max_upstream_line_bytes,
                   ca_bundle=spec.ca_bundle)

    def close(self) -> None:
        """Close every pooled connection."""
        self.pool.close()

    def version(self, timeout: float) -> str:
        """Return Ollama's version, failing within `timeout` seconds whatever Ollama does."""
        return str(self.fetch("GET", "/api/version", timeout=timeout).get("version", "unknown"))

    def tags(self) -> list:
        """Return the installed models as Ollama lists them."""
        return self.fetch("GET", "/api/tags").get("models") or []

    def show(self, name: str) -> dict:
        """Return a model's details (capabilities, parameters, template, model_info)."""
        return self.fetch("POST", "/api/show", {"model": name}, model=name)

    def running(self) -> list:
        """Return the models loaded in memory now."""
        return self.fetch("GET", "/api/ps").get("models") or []

    def delete(self, name: str) -> None:
        """Delete an installed model (ModelNotFound if it is not installed)."""
        self.fetch("DELETE", "/api/delete", {"model": name}, model=name, empty=True)

    def call(self, path: str, payload: dict) -> dict:
        """POST `payload` with stream false and return the JSON answer."""
        return self.fetch("POST", path, {**payload, "stream": False}, model=payload.get("model"))

    def fetch(self, method: str, path: str, payload: dict | None = None, *, timeout: float | None = None,
              model=None, empty: bool = False) -> dict:
        """One whole call, bounded by `timeout` (else OLLAMA_REQUEST_TIMEOUT); its JSON answer or the mapped error."""
        limit = self.request_timeout if timeout is None else timeout
        body = json.dumps(payload).encode() if payload is not None else b""
        with deadline(limit, f"The call to Ollama's {path}"):
            return whole_answer(self.open(method, path, body, model), min(limit, self.first_byte_timeout), path,
                                empty)

    def open(self, method: str, path: str, body: bytes = b"", model=None, content_type: str = "application/json",
             headers: tuple = ()) -> OllamaStream:
        """Send a request (a body as the client wrote it, or ours); read the answer as it comes from the result."""
        try:
            exchange = self.pool.request(method, path, body, content_type, headers)
        except socket.timeout:
            raise OllamaUnreachable(f"No connection to Ollama within {self.connect_timeout:g} s") from None
        except OSError:
            raise OllamaUnreachable("Ollama is not reachable") from None
        except ValueError:
            raise OllamaRejected("The path or a header cannot be sent to Ollama as it is") from None
        return OllamaStream(self, exchange, model)


def whole_answer(stream, wait: float, path: str, empty: bool = False) -> dict:
    """Wait for a call's head, raise its mapped error or read its JSON object whole; the stream is closed."""
    try:
        while not stream.wait_head(wait):
            pass
        content = stream.body()
    finally:
        stream.close()
    if empty and not content:
        return {}
    try:
        answer = json.loads(content)
    except ValueError:
        raise OllamaBadResponse(f"Ollama's answer to {path} is not JSON") from None
    if not isinstance(answer, dict):
        raise OllamaBadResponse(f"Ollama's answer to {path} is not a JSON object")
    return answer


class OllamaStream:
    """A call under way: wait for its head, then read its body as it arrives, or whole.

    Transport failures come out as OllamaErrors, so callers handle one family of errors.
    """

    __slots__ = ("_client", "_exchange", "_model")

    def __init__(self, client: OllamaClient, exchange, model):
        self._client, self._exchange, self._model = client, exchange, model

    @property
    def status(self) -> int:
        return self._exchange.status

    @property
    def headers(self) -> dict:
        """The answer's headers, names in lower case (a repeated header's values joined with ", ")."""
        return self._exchange.headers

    def wait_head(self, wait: float, raw: bool = False) -> bool:
        """Wait up to `wait` s for the status line; raise the mapped error for a failure status
        (unless `raw`: the pass-through routes hand Ollama's own errors on)."""
        try:
            if not self._exchange.wait_head(wait, self._client.first_byte_timeout):
                return False
        except OSError as exc:
            raise _transport_error(exc, self._client.first_byte_timeout) from None
        except ValueError:
            raise OllamaBadResponse("Ollama's answer is not valid HTTP") from None
        if not raw:
            self.raise_for_status()
        return True

    def raise_for_status(self) -> None:
        """Raise the mapped error for a failure status, with Ollama's error text (read whole, bounded)."""
        if self.status >= 400:
            _raise_for_status(self.status, self.headers, self._read_error(), "", self._model)

    def _read_error(self) -> bytes:
        try:
            return self._exchange.read_body(self._client.chunk_timeout)
        except (OSError, ValueError):
            return b""

    def read_payload(self, wait: float) -> bytes | None:
        """Return the body bytes that came, unchanged; b"" after `wait` seconds of silence; None at the end."""
        try:
            return self._exchange.read_payload(wait, self._client.chunk_timeout)
        except OSError as exc:
            raise _transport_error(exc, self._client.chunk_timeout) from None
        except LineTooLong as exc:
            raise OllamaBadResponse(str(exc)) from None
        except ValueError:
            raise OllamaBadResponse("Ollama's answer was not valid HTTP chunked framing") from None

    def body(self) -> bytes:
        """Read the whole body of a non-streamed answer (at most MAX_UPSTREAM_LINE_BYTES)."""
        try:
            return self._exchange.read_body(self._client.chunk_timeout)
        except OSError as exc:
            raise _transport_error(exc, self._client.chunk_timeout) from None
        except LineTooLong as exc:
            raise OllamaBadResponse(str(exc)) from None
        except ValueError:
            raise OllamaBadResponse("Ollama's answer is not valid HTTP") from None

    def drain(self, wait: float) -> None:
        """Read what is left of the body (its end) for up to `wait` s, so the connection can be reused."""
        self._exchange.drain(wait)

    def interrupt(self) -> None:
        """Stop the call now, from any greenlet or the gevent hub; Ollama stops generating."""
        self._exchange.interrupt()

    def close(self) -> None:
        """Release the connection (back to the pool only after a complete answer)."""
        self._exchange.close()


def _transport_error(exc: OSError, limit: float) -> OllamaError:
    if isinstance(exc, TimeoutError):
        return OllamaTimeout(f"Ollama sent nothing for {limit:g} s")
    if isinstance(exc, UpstreamClosed):
        error = OllamaBadResponse("The connection to Ollama dropped before it answered")
        error.before_answer = True
        return error
    return OllamaBadResponse("The connection to Ollama dropped mid-response")


def _raise_for_status(status: int, headers, body: bytes, path: str, model) -> None:
    """Raise the OllamaError for a failure status (Ollama's error text is logged, not shown)."""
    if status < 400:
        return
    message = _error_message(body)
    log.warning("Ollama answered %s %s: %s", status, path, message)
    if status == 404:
        raise ModelNotFound(f"Model {model!r} is not available on the Ollama server" if model else message,
                            upstream_status=status)
    if status == 503:
        raise OllamaBusy("Ollama is busy; try again shortly", upstream_status=status,
                         retry_after=headers.get("Retry-After") or headers.get("retry-after") or "5")
    if status == 400:
        raise OllamaRejected(message or "Ollama rejected the request", upstream_status=status)
    raise OllamaError(f"Ollama failed with status {status}", upstream_status=status)


def _error_message(content: bytes) -> str:
    """Return the text of Ollama's `{"error": ...}` body, or '' when it has none."""
    try:
        body = json.loads(content[:65536] or b"{}")
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else ""
