"""One request on the router's candidates, in order, moved to the next while nothing of an answer arrived."""

from __future__ import annotations

import time

from .client import OllamaBadResponse, OllamaUnreachable


class RoutedStream:
    """A call on the best candidate, moved to the next one while nothing of an answer has arrived.

    It reads like an OllamaStream (wait_head, read_payload, body, interrupt, close) and holds one of
    its upstream's in-flight counts until closed. The router's on_call hook sees it (router.Call): its
    extra headers go out with it, and it hears of the upstream, the time waited on Ollama and the end.
    """

    __slots__ = ("_router", "_candidates", "_method", "_path", "_body", "_model", "_session", "_note",
                 "_content_type", "_headers", "_stream", "_release", "upstream", "_error", "_call")

    def __init__(self, router, candidates, method, path, body, model, session, note,
                 content_type="application/json", headers=()):
        self._router, self._candidates = router, list(candidates)
        self._method, self._path, self._body, self._model = method, path, body, model
        self._call = router.on_call(method, path)
        self._content_type = content_type
        self._headers = (*headers, *self._call.headers) if self._call.headers else headers
        self._session, self._note = session, note
        self._stream = self._release = self.upstream = self._error = None
        try:
            self._next(None)
        except BaseException:
            self._call.closed()
            raise

    def _next(self, reason: str | None) -> None:
        """Open the request on the next candidate that takes a connection; raise the last error if none does."""
        router = self._router
        if self._stream is not None:
            self.close()
            router.failed(self.upstream, reason)
            router.hooks.failover(self.upstream.name, reason)
            self._stream = None
        while self._candidates:
            upstream = self._candidates.pop(0)
            if not upstream.up:
                upstream.probing = True
            try:
                stream = upstream.client.open(self._method, self._path, self._body, self._model, self._content_type,
                                              self._headers)
            except OllamaUnreachable as error:
                router.failed(upstream, "unreachable")
                self._error = error
                if self._candidates:
                    router.hooks.failover(upstream.name, "unreachable")
                continue
            self._stream, self.upstream = stream, upstream
            self._release = router.counter.acquire(upstream.name)
            self._call.sent(upstream)
            if self._note is not None:
                self._note(upstream.name)
            return
        raise self._error

    @property
    def status(self) -> int:
        return self._stream.status

    @property
    def headers(self) -> dict:
        return self._stream.headers

    def wait_head(self, wait: float, raw: bool = False) -> bool:
        """Wait for the status line; a failure before any byte of an answer moves on to the next candidate."""
        while True:
            started = time.monotonic()
            try:
                arrived = self._stream.wait_head(wait, raw=True)
            except OllamaBadResponse as error:
                # The connection closed before a byte of the answer: the request may have been processed, so
                # only a request without side effects (GET, HEAD) is sent again, to another upstream.
                if self._candidates and error.before_answer and self._method in ("GET", "HEAD"):
                    self._next("reset")
                    continue
                self._router.failed(self.upstream, "reset")
                raise
            finally:
                self._call.waited(time.monotonic() - started)
            if not arrived:
                return False
            status = self._stream.status
            if status >= 500 and self._candidates:
                self._next("busy" if status == 503 else "status_5xx")
                continue
            if status < 500:
                self._router.succeeded(self.upstream)
                self._router.remember(self._session, self.upstream)
            else:
                self._router.failed(self.upstream, "busy" if status == 503 else "status_5xx")
            if not raw:
                self._stream.raise_for_status()
            return True

    def read_payload(self, wait: float):
        return self._stream.read_payload(wait)

    def body(self) -> bytes:
        started = time.monotonic()
        try:
            return self._stream.body()
        finally:
            self._call.waited(time.monotonic() - started)

    def drain(self, wait: float) -> None:
        self._stream.drain(wait)

    def interrupt(self) -> None:
        self._stream.interrupt()

    def close(self) -> None:
        """Release the connection and the in-flight count (once); status and headers stay readable."""
        if self._release is not None:
            self._stream.close()
            self._release()
            self._release = None
            self._call.closed()
