"""Talk to Ollama: plain Python, no Flask; every failure becomes an OllamaError with a kind.

Light calls (version, model lists) go through one pooled requests.Session. Generations and
streams, the hot paths, go through `upstream.UpstreamPool`, which frames HTTP itself (see
its docstring for the measured reason).
"""

from __future__ import annotations

import contextlib
import json
import logging

import requests
from requests.adapters import HTTPAdapter

import socket

from .ndjson import DEFAULT_MAX_LINE, LineTooLong
from .http import UpstreamClosed, UpstreamPool, gevent_active

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


class OllamaStreamError(OllamaError):
    """Ollama reported an error inside a stream that had already started."""

    kind = "model_error"


@contextlib.contextmanager
def deadline(seconds: float, what: str):
    """Bound a whole call in time under gevent; requests alone only bounds each read."""
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
    """A small client for the Ollama endpoints the gateway relays."""

    def __init__(self, base_url: str, *, connect_timeout: float = 5.0, first_byte_timeout: float = 300.0,
                 chunk_timeout: float = 300.0, request_timeout: float = 900.0, pool_size: int = 256,
                 max_line_bytes: int = DEFAULT_MAX_LINE):
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.chunk_timeout = chunk_timeout
        self.request_timeout = request_timeout
        self.max_line_bytes = max_line_bytes
        self.session = requests.Session()
        # No proxies or .netrc from the environment: the gateway talks to one known server.
        self.session.trust_env = False
        # The session sends only its own headers, so a browser's Origin or Host never reaches
        # Ollama (it answers those with 403).
        self.session.headers.update({"User-Agent": "mlops-backend", "Accept-Encoding": "identity"})
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.pool = UpstreamPool(self.base_url, connect_timeout, max_idle=pool_size, max_line=max_line_bytes)

    @classmethod
    def from_config(cls, config) -> OllamaClient:
        """Build a client from the gateway's Config."""
        return cls(config.ollama_base_url, connect_timeout=config.ollama_connect_timeout,
                   first_byte_timeout=config.ollama_first_byte_timeout, chunk_timeout=config.ollama_chunk_timeout,
                   request_timeout=config.ollama_request_timeout, max_line_bytes=config.max_upstream_line_bytes)

    def close(self) -> None:
        """Close every pooled connection."""
        self.pool.close()
        self.session.close()

    def version(self, timeout: float) -> str:
        """Return Ollama's version, failing within `timeout` seconds whatever Ollama does."""
        with deadline(timeout, "Ollama's version check"):
            data = self._json("GET", "/api/version", timeout=(min(timeout, self.connect_timeout), timeout))
        return str(data.get("version", "unknown"))

    def tags(self) -> list:
        """Return the installed models as Ollama lists them."""
        with deadline(self.request_timeout, "Listing models"):
            data = self._json("GET", "/api/tags", timeout=(self.connect_timeout, self.first_byte_timeout))
        return data.get("models") or []

    def show(self, name: str) -> dict:
        """Return a model's details (capabilities, parameters, template, model_info)."""
        with deadline(self.request_timeout, "Reading the model's details"):
            return self._json("POST", "/api/show", json={"model": name},
                              timeout=(self.connect_timeout, self.first_byte_timeout), model=name)

    def running(self) -> list:
        """Return the models loaded in memory now."""
        with deadline(self.request_timeout, "Listing running models"):
            data = self._json("GET", "/api/ps", timeout=(self.connect_timeout, self.first_byte_timeout))
        return data.get("models") or []

    def delete(self, name: str) -> None:
        """Delete an installed model (ModelNotFound if it is not installed)."""
        with deadline(self.request_timeout, "Deleting the model"):
            response = self._send("DELETE", "/api/delete", json={"model": name}, stream=True,
                                  timeout=(self.connect_timeout, self.first_byte_timeout))
            with response:
                _raise_for_status(response.status_code, response.headers, self._bounded(response), "/api/delete", name)

    def call(self, path: str, payload: dict) -> dict:
        """POST `payload` with stream false and return the JSON answer (the fast path)."""
        with deadline(self.request_timeout, "The call to Ollama"):
            stream = self.open_stream(path, {**payload, "stream": False})
            try:
                while not stream.wait_head(self.first_byte_timeout):
                    pass
                body = stream.body()
            finally:
                stream.close()
        try:
            return json.loads(body)
        except ValueError:
            raise OllamaBadResponse(f"Ollama's answer to {path} is not JSON") from None

    def open_raw(self, method: str, path: str, body: bytes) -> OllamaStream:
        """Send a request as the client wrote it (the pass-through routes); read the answer as it comes."""
        return OllamaStream(self, self._request(method, path, body), None)

    def open_stream(self, path: str, payload: dict) -> OllamaStream:
        """Send a call (streamed unless `payload` says otherwise); its answer is read from the result."""
        body = json.dumps({"stream": True, **payload}).encode()
        return OllamaStream(self, self._request("POST", path, body), payload.get("model"))

    def _request(self, method: str, path: str, body: bytes):
        try:
            return self.pool.request(method, path, body)
        except socket.timeout:
            raise OllamaUnreachable(f"No connection to Ollama within {self.connect_timeout:g} s") from None
        except OSError:
            raise OllamaUnreachable("Ollama is not reachable") from None
        except ValueError:
            raise OllamaRejected("The path cannot be sent to Ollama as it is") from None

    def _json(self, method, path, *, model=None, **kwargs):
        response = self._send(method, path, stream=True, **kwargs)
        with response:
            content = self._bounded(response)
            _raise_for_status(response.status_code, response.headers, content, path, model)
            try:
                return json.loads(content)
            except ValueError:
                raise OllamaBadResponse(f"Ollama's answer to {path} is not JSON") from None

    def _bounded(self, response) -> bytes:
        """The whole body, refused past MAX_UPSTREAM_LINE_BYTES (a JSON answer is one line)."""
        pieces, size = [], 0
        try:
            for piece in response.iter_content(65536):
                pieces.append(piece)
                size += len(piece)
                if size > self.max_line_bytes:
                    raise OllamaBadResponse(str(LineTooLong(self.max_line_bytes)))
        except requests.RequestException:
            raise OllamaBadResponse("The connection to Ollama dropped mid-response") from None
        return b"".join(pieces)

    def _send(self, method, path, **kwargs):
        try:
            return self.session.request(method, self.base_url + path, **kwargs)
        except requests.ConnectTimeout:
            raise OllamaUnreachable(f"No connection to Ollama within {self.connect_timeout:g} s") from None
        except requests.ReadTimeout:
            raise OllamaTimeout(f"Ollama did not answer within {self.first_byte_timeout:g} s") from None
        except requests.ConnectionError as exc:
            if _refused(exc):
                raise OllamaUnreachable("Ollama is not reachable") from None
            raise OllamaBadResponse("The connection to Ollama dropped before it answered") from None
        except requests.RequestException as exc:
            raise OllamaBadResponse(f"The call to Ollama failed ({type(exc).__name__})") from None


class OllamaStream:
    """A call on the fast path: wait for its head, then read its NDJSON lines or its body.

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
        """The answer's headers, names in lower case."""
        return self._exchange.headers

    def wait_head(self, wait: float, raw: bool = False) -> bool:
        """Wait up to `wait` s for the status line; raise the mapped error for a failure status
        (unless `raw`: the pass-through routes hand Ollama's own errors on)."""
        exchange = self._exchange
        try:
            if not exchange.wait_head(wait, self._client.first_byte_timeout):
                return False
            if exchange.status >= 400 and not raw:
                body = exchange.read_body(self._client.chunk_timeout)
                _raise_for_status(exchange.status, exchange.headers, body, "", self._model)
        except OSError as exc:
            raise _transport_error(exc, self._client.first_byte_timeout) from None
        except ValueError:
            raise OllamaBadResponse("Ollama's answer is not valid HTTP") from None
        return True

    def read_lines(self, wait: float) -> list[bytes] | None:
        """Return the next lines; [] after `wait` seconds of silence; None at the end of the body."""
        try:
            return self._exchange.read_lines(wait, self._client.chunk_timeout)
        except OSError as exc:
            raise _transport_error(exc, self._client.chunk_timeout) from None
        except LineTooLong as exc:
            raise OllamaBadResponse(str(exc)) from None
        except ValueError:
            raise OllamaBadResponse("Ollama's stream was not valid HTTP chunked framing") from None

    def read_payload(self, wait: float) -> bytes | None:
        """Return the body bytes that came, unchanged; b"" after `wait` seconds of silence; None at the end."""
        try:
            return self._exchange.read_payload(wait, self._client.chunk_timeout)
        except OSError as exc:
            raise _transport_error(exc, self._client.chunk_timeout) from None
        except ValueError:
            raise OllamaBadResponse("Ollama's answer was not valid HTTP chunked framing") from None

    def body(self) -> bytes:
        """Read the whole body of a non-streamed answer."""
        try:
            return self._exchange.read_body(self._client.chunk_timeout)
        except OSError as exc:
            raise _transport_error(exc, self._client.chunk_timeout) from None
        except LineTooLong as exc:
            raise OllamaBadResponse(str(exc)) from None
        except ValueError:
            raise OllamaBadResponse("Ollama's answer is not valid HTTP") from None

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
        return OllamaBadResponse("The connection to Ollama dropped before it answered")
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


def _refused(exc: requests.ConnectionError) -> bool:
    """Tell a connection that never opened from one that dropped after opening."""
    text = repr(exc)
    return any(word in text for word in ("NewConnectionError", "NameResolutionError", "Connection refused",
                                          "Failed to establish", "No route to host"))


def _error_message(content: bytes) -> str:
    """Return the text of Ollama's `{"error": ...}` body, or '' when it has none."""
    try:
        body = json.loads(content[:65536] or b"{}")
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else ""
