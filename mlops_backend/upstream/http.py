"""HTTP/1.1 to Ollama on pooled keep-alive sockets, its answers parsed by httptools (llhttp).

The socket stays ours: one sendall per request, large reads with timeouts that are safe to hit
(the parser holds no half-read state of ours), and interrupt() shuts the socket down from any
greenlet to cancel a call. httptools, the parser uvicorn uses, does the framing: the status line
and headers (duplicates kept, joined as RFC 9110 allows), Content-Length and chunked bodies
(strictly: `+1a`, `0x1a`, a Content-Length of `2, 3` are errors), interim 1xx answers, and no
body for 204 or 304. Measured against h11, http.client, urllib3 and geventhttpclient: see
benchmarks/clients.py and the README.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import select
import socket
import ssl
import time
from urllib.parse import unquote, urlsplit

import httptools

from .ndjson import DEFAULT_MAX_LINE, LineTooLong

READ_SIZE = 65536
MAX_HEAD = 65536
#: A path as it may stand in the request line: printable ASCII, no space (RFC 9112 request-target).
_PATH = re.compile(r"/[\x21-\x7e]*")
_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"}
#: A header name (an RFC 9110 token) and a value (visible ASCII, spaces and tabs: no line break).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")


def sendable_header(name: str, value: str) -> bool:
    """Whether a header can go upstream as it is: a token for a name, visible ASCII for a value."""
    return bool(_HEADER_NAME.fullmatch(name) and _HEADER_VALUE.fullmatch(value))


class UpstreamClosed(ConnectionError):
    """The connection closed before a byte of the answer arrived: the request may or may not have been read."""


class UpstreamPool:
    """Idle keep-alive sockets to one server, reused last-in first-out, TLS verified when https."""

    def __init__(self, base_url: str, connect_timeout: float, max_idle: int = 256, max_line: int = DEFAULT_MAX_LINE,
                 ca_bundle: str | None = None):
        parts = urlsplit(base_url)
        self.tls = parts.scheme == "https"
        self.address = (parts.hostname, parts.port or (443 if self.tls else 80))
        self._family = _literal_family(parts.hostname)
        self.prefix = parts.path.rstrip("/").encode()
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.max_line = max_line
        self._idle: list[socket.socket] = []
        # Certificates are verified (the system's CAs, or the upstream's own ca_bundle), host names checked.
        self._tls_context = ssl.create_default_context(cafile=ca_bundle) if self.tls else None
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        head = [f"Host: {host}:{self.address[1]}", "User-Agent: mlops-backend", "Accept: application/json"]
        if parts.username:
            token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
            head.append(f"Authorization: Basic {token}")
        self._common = ("\r\n".join(head) + "\r\n").encode()
        self._headers = self._common + b"Content-Type: application/json\r\n"

    def request(self, method: str, path: str, body: bytes, content_type: str = "application/json",
                headers: tuple = ()) -> Exchange:
        """Send one request on a pooled (or new) connection; return the exchange awaiting its answer.

        `headers` are extra (name, value) pairs, such as anthropic-version. OSError: no connection
        could be opened. ValueError: the method, path or a header cannot be sent as it is.
        """
        if method not in _METHODS or not _PATH.fullmatch(path):
            # A space or line break in the request line would let a client write its own request to Ollama.
            raise ValueError(f"not a method and percent-encoded path: {method[:10]!r} {path[:80]!r}")
        head = self._headers
        if headers or content_type != "application/json":
            extra = [("Content-Type", content_type), *headers]
            if not all(sendable_header(name, value) for name, value in extra):
                raise ValueError("a header name or value that cannot be sent as it is")
            head = self._common + "".join(f"{name}: {value}\r\n" for name, value in extra).encode()
        message = b"%s %s%s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            method.encode(), self.prefix, path.encode(), head, len(body), body)
        while self._idle:
            sock = self._idle.pop()
            if _still_open(sock):
                try:
                    sock.sendall(message)
                    return Exchange(self, sock, method)
                except OSError:
                    pass  # the server had closed it: nothing was read, so a new connection takes the request
            sock.close()
        sock = self._connect()
        sock.sendall(message)
        return Exchange(self, sock, method)

    def _connect(self) -> socket.socket:
        if self._family is None:  # a name: resolved for every new connection, so DNS changes are followed
            sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        else:
            # An address: connect to it. create_connection would ask getaddrinfo first, which under gevent
            # is a round trip through its thread pool for every new connection (a queue at 1,000 streams).
            sock = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.connect_timeout)
                sock.connect(self.address)
            except BaseException:
                sock.close()
                raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls_context is not None:
            try:
                sock = self._tls_context.wrap_socket(sock, server_hostname=self.address[0])
            except BaseException:
                sock.close()
                raise
        return sock

    def release(self, sock: socket.socket) -> None:
        """Keep a connection whose last answer was read to its end."""
        if len(self._idle) < self.max_idle:
            self._idle.append(sock)
        else:
            sock.close()

    def close(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._idle.pop().close()


def _literal_family(host: str):
    """AF_INET or AF_INET6 for an IP address written out, None for a name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


def gevent_active() -> bool:
    """Tell whether gevent patched sockets (gunicorn's gevent worker): one OS thread runs every greenlet."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")


def _still_open(sock: socket.socket) -> bool:
    """Tell whether an idle keep-alive socket is still open: an idle one has nothing to read.

    Something to read means the server closed it (or sent what it should not have). A plain socket
    is peeked at (2 us); a TLS one is polled on its descriptor, since an SSLSocket refuses MSG_PEEK
    (18 us under gevent, so only where it is needed).
    """
    if isinstance(sock, ssl.SSLSocket):
        if sock.pending():
            return False
        poller = select.poll()  # poll, not select: descriptors past 1024 are common with thousands of streams
        try:
            poller.register(sock, select.POLLIN | select.POLLPRI)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False
    try:
        sock.setblocking(False)
        try:
            sock.recv(1, socket.MSG_PEEK)
            return False  # the end of the connection, or bytes nobody asked for: not reusable either way
        finally:
            sock.setblocking(True)
    except BlockingIOError:
        return True  # nothing to read: open and idle, as it should be
    except OSError:
        return False


class Exchange:
    """One request's answer: its head, then its body as it arrives; parsed by httptools' callbacks."""

    __slots__ = ("_pool", "sock", "_parser", "_method", "status", "headers", "_pieces", "_size", "_head_seen",
                 "_interim", "_last_data", "_received", "_keep_alive", "closed", "complete")

    def __init__(self, pool, sock, method):
        self._pool, self.sock, self._method = pool, sock, method
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self._pieces: list[bytes] = []
        self._size = 0
        self._head_seen = self._interim = False
        self._last_data = time.monotonic()
        self._received = 0
        self._keep_alive = False
        self.closed = False
        self.complete = False

    # -- httptools callbacks (its public protocol) ------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1").strip()
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real head follows
            self._interim = True
            self.headers = {}
            return
        self.status, self._head_seen = status, True
        # Asked now: once the message is over llhttp no longer says whether the connection stays open.
        self._keep_alive = self._parser.should_keep_alive()
        if self._method == "HEAD":  # llhttp does not know the method: a HEAD answer ends with its head
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.complete:  # a HEAD answer's body, which should not exist: dropped, connection not reused
            self._keep_alive = False
            return
        self._pieces.append(body)
        self._size += len(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self.complete = True

    # -- reading ------------------------------------------------------------------------------------------

    def wait_head(self, wait: float, limit: float) -> bool:
        """Read the status line and headers; False if `wait` passed first.

        TimeoutError once nothing came for `limit` seconds since the request was sent; UpstreamClosed
        if the connection closed before any byte of an answer; ValueError for what is not HTTP.
        """
        while not self._head_seen:
            data = self._recv(wait, limit)
            if data is None:
                return False
            if not data:
                if not self._received:
                    raise UpstreamClosed("Ollama closed the connection before answering")
                raise ConnectionError("Ollama closed the connection in the middle of its answer's head")
            self._received += len(data)
            if not self._head_seen and self._received > MAX_HEAD:
                raise ValueError("response head too large")
            self._feed(data)
        return True

    def read_payload(self, wait: float, limit: float) -> bytes | None:
        """Return the body bytes that arrived; b"" after `wait` of silence; None at the end of the body."""
        while not self._pieces:
            if self.complete:
                self._finish()
                return None
            data = self._recv(wait, limit)
            if data is None:
                return b""
            if not data:
                if self._until_close():
                    self.complete = True
                    self.close()
                    continue
                raise ConnectionError("Ollama closed the connection mid-response")
            self._feed(data)
        pieces, self._pieces, self._size = self._pieces, [], 0
        if self.complete:
            self._finish()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read_body(self, limit: float) -> bytes:
        """Read the whole body (a non-streamed answer), then release the connection.

        A body longer than MAX_UPSTREAM_LINE_BYTES raises LineTooLong: a whole JSON answer is one line.
        """
        pieces, size = [], 0
        while True:
            data = self.read_payload(limit, limit)
            if data is None:
                return b"".join(pieces)
            if data == b"":
                raise TimeoutError(f"Ollama sent nothing for {limit:g} s")
            pieces.append(data)
            size += len(data)
            if size > self._pool.max_line:
                raise LineTooLong(self._pool.max_line)

    def drain(self, wait: float) -> None:
        """After the last line a relay needs: read the end of the body for up to `wait` s, so the
        connection goes back to the pool (the final chunk of a stream often comes in a read of its own)."""
        deadline = time.monotonic() + wait
        try:
            while not self.complete and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0 or self.read_payload(left, left + 1.0) is not None:
                    return  # silence, or more body than its end: the caller closes the connection
        except (OSError, ValueError):
            return
        self._finish()

    def _feed(self, data: bytes) -> None:
        if self.complete:  # bytes after the answer (a HEAD answer's body): the connection cannot be reused
            self._keep_alive = False
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise ValueError("Ollama switched protocols") from None
        except httptools.HttpParserError as exc:
            if not self.complete:
                raise ValueError(f"not a valid HTTP answer: {exc}") from None
            self.closed = True  # bytes after the answer: the connection cannot be reused
            self.sock.close()

    def _until_close(self) -> bool:
        """A body delimited by the end of the connection (no Content-Length, not chunked)."""
        return self._head_seen and "content-length" not in self.headers and "transfer-encoding" not in self.headers

    def _recv(self, wait: float, limit: float) -> bytes | None:
        """Receive what is there; None after `wait` seconds of silence; TimeoutError past `limit`."""
        silent = time.monotonic() - self._last_data
        if silent >= limit:
            raise TimeoutError(f"Ollama sent nothing for {silent:.1f} s")
        self.sock.settimeout(max(min(wait, limit - silent), 0.001))
        try:
            data = self.sock.recv(READ_SIZE)
        except socket.timeout:
            if time.monotonic() - self._last_data >= limit:
                raise TimeoutError(f"Ollama sent nothing for {limit:g} s") from None
            return None
        except ConnectionResetError:
            data = b""
        self._last_data = time.monotonic()
        return data

    def _finish(self) -> None:
        """Return the connection to the pool if the answer ended cleanly and the server keeps it open."""
        if self.closed:
            return
        self.closed = True
        if self._keep_alive:
            self._pool.release(self.sock)
        else:
            self.sock.close()

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
