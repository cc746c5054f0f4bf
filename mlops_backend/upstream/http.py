"""HTTP/1.1 to Ollama on pooled keep-alive sockets, framed by hand, for the hot calls.

requests spends about 700 µs of CPU preparing, sending and parsing one small call (its
settings merge, cookie jar, urllib3's pool keys and http.client's email-based header parser);
a generation through the gateway has a budget of 400 µs in all. Generations and streams
therefore go through this small client: one sendall per request, the head parsed with
bytes.split, the body read in large reads (ndjson.ChunkedLines) with socket timeouts that
are safe to hit, since no library holds half-parsed state. Everything else uses requests.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import time
from urllib.parse import unquote, urlsplit

from .ndjson import DEFAULT_MAX_LINE, ChunkedLines, LineTooLong

READ_SIZE = 65536
MAX_HEAD = 65536
#: A path as it may stand in the request line: printable ASCII, no space (RFC 9112 request-target).
_PATH = re.compile(r"/[\x21-\x7e]*")
_DIGITS = re.compile(r"[0-9]{1,19}")


class _Reader:
    """Receive into one shared buffer under gevent, instead of a fresh 64 KiB bytes per read.

    sock.recv(65536) allocates 64 KiB and shrinks it to what came: with thousands of slow streams
    that churn fragments the heap. Under gevent every greenlet runs on one OS thread and copies
    the bytes out before it can switch, so one buffer serves them all; with real threads each
    read allocates as before.
    """

    def __init__(self):
        self._view = memoryview(bytearray(READ_SIZE))
        self.shared = False

    def recv(self, sock) -> bytes:
        if not self.shared:
            return sock.recv(READ_SIZE)
        count = sock.recv_into(self._view)
        return self._view[:count].tobytes()


_reader = _Reader()


class UpstreamClosed(ConnectionError):
    """The connection closed before a whole response head arrived."""


class UpstreamPool:
    """Idle keep-alive sockets to one server, reused last-in first-out."""

    def __init__(self, base_url: str, connect_timeout: float, max_idle: int = 256, max_line: int = DEFAULT_MAX_LINE):
        parts = urlsplit(base_url)
        self.max_line = max_line
        self.tls = parts.scheme == "https"
        self.address = (parts.hostname, parts.port or (443 if self.tls else 80))
        self.prefix = parts.path.rstrip("/").encode()
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: list[socket.socket] = []
        self._tls_context = ssl.create_default_context() if self.tls else None
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        head = [f"Host: {host}:{self.address[1]}", "User-Agent: mlops-backend", "Accept: application/json",
                "Content-Type: application/json"]
        if parts.username:
            token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
            head.append(f"Authorization: Basic {token}")
        self._headers = ("\r\n".join(head) + "\r\n").encode()
        _reader.shared = gevent_active()

    def request(self, method: str, path: str, body: bytes) -> Exchange:
        """Send one request on a pooled (or new) connection; return the exchange awaiting its answer."""
        if not _PATH.fullmatch(path):
            # A space or line break in the request line would let a client write its own request to Ollama.
            raise ValueError(f"not a percent-encoded path: {path[:80]!r}")
        message = b"%s %s%s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            method.encode(), self.prefix, path.encode(), self._headers, len(body), body)
        while self._idle:
            sock = self._idle.pop()
            if _alive(sock):
                try:
                    sock.sendall(message)
                    return Exchange(self, sock, message, reused=True)
                except OSError:
                    pass
            sock.close()
        sock = self._connect()
        sock.sendall(message)
        return Exchange(self, sock, message, reused=False)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls_context is not None:
            sock = self._tls_context.wrap_socket(sock, server_hostname=self.address[0])
        return sock

    def release(self, sock: socket.socket) -> None:
        """Keep a connection whose last response was read to its end."""
        if len(self._idle) < self.max_idle:
            self._idle.append(sock)
        else:
            sock.close()

    def close(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._idle.pop().close()


def gevent_active() -> bool:
    """Tell whether gevent patched sockets (gunicorn's gevent worker): one OS thread runs every greenlet."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")


def _alive(sock: socket.socket) -> bool:
    """Tell whether an idle keep-alive socket is still open (the server may have closed it)."""
    try:
        sock.setblocking(False)
        try:
            return sock.recv(1, socket.MSG_PEEK) != b""
        finally:
            sock.setblocking(True)
    except BlockingIOError:
        return True  # nothing to read: open and idle, as it should be
    except OSError:
        return False


_END = object()     # the body is complete
_CLOSED = object()  # the server closed a body that ends with the connection


class Exchange:
    """One request's answer: its head, then its body as bytes or as NDJSON lines."""

    __slots__ = ("_pool", "sock", "_message", "_reused", "_buffer", "status", "headers", "_decoder",
                 "_last_data", "closed", "complete")

    def __init__(self, pool, sock, message, reused):
        self._pool, self.sock, self._message, self._reused = pool, sock, message, reused
        self._buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self._decoder = None
        self._last_data = time.monotonic()
        self.closed = False
        self.complete = False

    def wait_head(self, wait: float, limit: float) -> bool:
        """Read the status line and headers; False if `wait` passed first.

        Raises TimeoutError once nothing came for `limit` seconds since the request was sent,
        UpstreamClosed if the connection closed first.
        """
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                self._parse_head(end)
                if self.status:
                    return True
                continue
            if len(self._buffer) > MAX_HEAD:
                raise ValueError("response head too large")
            data = self._recv(wait, limit)
            if data is None:
                return False
            if not data:
                if self._reused and not self._buffer:
                    self._retry_on_new_connection()
                    continue
                raise UpstreamClosed("Ollama closed the connection before answering")
            self._buffer += data

    def _retry_on_new_connection(self):
        # A keep-alive connection the server closed while idle: nothing was processed, send again.
        self.sock.close()
        self.sock = self._pool._connect()
        self.sock.sendall(self._message)
        self._reused = False

    def _recv(self, wait: float, limit: float) -> bytes | None:
        """Receive what is there; None after `wait` seconds of silence; TimeoutError past `limit`."""
        silent = time.monotonic() - self._last_data
        if silent >= limit:
            raise TimeoutError(f"Ollama sent nothing for {silent:.1f} s")
        self.sock.settimeout(max(min(wait, limit - silent), 0.001))
        try:
            data = _reader.recv(self.sock)
        except socket.timeout:
            if time.monotonic() - self._last_data >= limit:
                raise TimeoutError(f"Ollama sent nothing for {limit:g} s") from None
            return None
        except ConnectionResetError:
            data = b""
        self._last_data = time.monotonic()
        return data

    def _parse_head(self, end: int) -> None:
        lines = self._buffer[:end].decode("latin-1").split("\r\n")
        self._buffer = self._buffer[end + 4:]
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP response: {lines[0][:60]!r}")
        self.status = int(parts[1])
        if 100 <= self.status < 200:  # an interim answer (100 Continue): the real head follows
            self.status, self.headers = 0, {}
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                self._parse_head(end)
            return
        headers = self.headers
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = None
        if self.status in (204, 304):
            length = 0  # never a body, whatever the headers say
        elif not chunked and "content-length" in headers:
            if not _DIGITS.fullmatch(headers["content-length"]):
                raise ValueError("Content-Length is not a number")
            length = int(headers["content-length"])
        self._decoder = ChunkedLines(chunked and length is None, length, self._pool.max_line)
        if length == 0:
            self._decoder.finished = True

    def read_lines(self, wait: float, limit: float) -> list[bytes] | None:
        """Return the next complete NDJSON lines; [] after `wait` of silence; None at the end of the body."""
        decoder = self._decoder
        while True:
            data = self._incoming(wait, limit)
            if data is None:
                return []
            if data is _CLOSED:  # a body that ends when the connection does: its last line may be unterminated
                tail = decoder.leftover()
                return [tail] if tail.strip() else None
            if data is _END:
                return None
            lines = decoder.feed(data)
            if decoder.finished:
                self._finish()
            if lines:
                return lines

    def read_payload(self, wait: float, limit: float) -> bytes | None:
        """Return the body bytes that arrived, as they are; b"" after `wait` of silence; None at the end."""
        decoder = self._decoder
        while True:
            data = self._incoming(wait, limit)
            if data is None:
                return b""
            if data is _CLOSED or data is _END:
                return None
            payload = decoder.payload(data)
            if decoder.finished:
                self._finish()
            if payload:
                return payload

    def _incoming(self, wait: float, limit: float):
        """The next raw bytes of the body: buffered ones first; None after `wait` of silence; _END when
        the body is complete; _CLOSED when the server closed a body delimited by the connection."""
        if self._buffer:
            data, self._buffer = self._buffer, b""
            return data
        decoder = self._decoder
        if decoder.finished:
            self._finish()
            return _END
        data = self._recv(wait, limit)
        if data is None or data:
            return data
        if decoder.chunked or decoder.remaining is not None:
            raise ConnectionError("Ollama closed the connection mid-response")
        decoder.finished = True
        self.close()
        return _CLOSED

    def read_body(self, limit: float) -> bytes:
        """Read the whole body (a non-streamed answer), then release the connection.

        A body longer than MAX_UPSTREAM_LINE_BYTES raises LineTooLong: a whole JSON answer is one line.
        """
        decoder = self._decoder
        pieces = []
        size = 0
        while not decoder.finished:
            data, self._buffer = self._buffer, b""
            if not data:
                data = self._recv(limit, limit)
                if data is None:
                    raise TimeoutError(f"Ollama sent nothing for {limit:g} s")
                if not data:
                    if decoder.chunked or decoder.remaining is not None:
                        raise ConnectionError("Ollama closed the connection mid-response")
                    self.close()  # a body that ends when the connection does
                    return b"".join(pieces)
            pieces.append(decoder.payload(data))
            size += len(pieces[-1])
            if size > self._pool.max_line:
                raise LineTooLong(self._pool.max_line)
        self._finish()
        return b"".join(pieces)

    def _finish(self) -> None:
        """Return the connection to the pool if the body ended cleanly and the server keeps it open."""
        if self.closed:
            return
        self.complete = True
        self.closed = True
        if self._buffer or self._decoder.spare or "close" in self.headers.get("connection", "").lower():
            self.sock.close()
        else:
            self._pool.release(self.sock)

    def interrupt(self) -> None:
        """Shut the connection down from anywhere (the gevent hub, another greenlet) to stop Ollama."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Close the connection unless it already went back to the pool."""
        if not self.closed:
            self.closed = True
            self.interrupt()
            self.sock.close()
