"""HTTP/1.1 plumbing for the Ollama double: gin-style routing, Go net/http framing, paced streams, disconnects.

Framing as Go's net/http does it: a response is buffered up to 2048 bytes; a handler that finishes within
that gets Content-Length, anything longer goes out chunked (HEAD: neither header). Streams are chunked and
flushed as Ollama flushes them; with the script's `framing: "odd"` (the default) the chunk boundaries are
shuffled the way proxies and TCP may shuffle them (see Framer).

Behind TLS (OllamaDouble(tls=...)) the same bytes go through an ssl.SSLSocket; the handshake runs in the
connection's thread, and noticing a departed client reads ahead instead of peeking (see _peer_alive_tls).
"""

from __future__ import annotations

import io
import ipaddress
import random
import select
import socket
import ssl
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote, urlsplit

from .gojson import BodyError, Struct, bind
from .wire import RUNNER_ERROR, dumps, timestamp

POLL = 0.01  # seconds between checks for a departed client or a reset/stop
HANDSHAKE_TIMEOUT = 10.0  # seconds a TLS client may take to finish its handshake
READ_AHEAD_LIMIT = 1 << 20  # pipelined bytes a TLS liveness check will hold for the next request
PLAIN_HTTP_REFUSAL = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
GO_BUFFER = 2048  # net/http's bufferBeforeChunkingSize
JSON_TYPE = "application/json; charset=utf-8"
STATUS_FAULTS = {
    "status_500": (500, "llama runner process has terminated"),
    "busy": (503, "server busy, please try again.  maximum pending requests exceeded"),
    "bad_request": (400, "invalid options: the test double was told to reject this request"),
}
MID_STREAM_FAULTS = ("drop", "malformed", "error_line")
METHOD_ORDER = ("HEAD", "GET", "POST", "DELETE")  # the order gin's method trees were created in
CORS_HEADERS = ("Authorization,Content-Type,User-Agent,Accept,X-Requested-With,OpenAI-Beta,x-stainless-arch,"
                "x-stainless-async,x-stainless-custom-poll-interval,x-stainless-helper-method,x-stainless-lang,"
                "x-stainless-os,x-stainless-package-version,x-stainless-poll-helper,x-stainless-retry-count,"
                "x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout")
_ORIGIN_PATTERNS = [f"{scheme}://{host}{port}" for host in ("localhost", "127.0.0.1", "0.0.0.0")
                    for scheme in ("http", "https") for port in ("", ":*")]
_ORIGIN_PATTERNS += ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
                     "chrome-extension://*", "safari-extension://*", "moz-extension://*", "ms-browser-extension://*"]


class ApiError(Exception):
    """An error answered before any byte of a success response was written."""

    def __init__(self, status: int, message: str, ctype: str = JSON_TYPE, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.ctype, self.extra = status, message, ctype, extra or {}


class Abandon(Exception):
    """The request ends without a (further) response: the client left, or reset()/stop() interrupted it."""


def raw_shutdown(sock, how=socket.SHUT_RDWR):
    """shutdown() of the TCP connection under `sock`. On an SSLSocket, SSLSocket.shutdown would also drop
    the TLS state (later reads and writes then go around TLS, or fail with ValueError in another thread);
    the base method leaves it alone and sends no close_notify: the peer sees the connection die."""
    try:
        socket.socket.shutdown(sock, how)
    except OSError:
        pass


def _plain_http_refusal(sock):
    """What Go's net/http answers a plain HTTP request on a TLS port, then the end of the connection (after
    draining the request, so that closing does not reset the connection under the answer)."""
    try:
        socket.socket.sendall(sock, PLAIN_HTTP_REFUSAL)
        raw_shutdown(sock, socket.SHUT_WR)
        sock.settimeout(0.5)
        while socket.socket.recv(sock, 65536):
            pass
    except OSError:
        pass


class _ReadAhead(io.RawIOBase):
    """The raw stream under a TLS connection's rfile: bytes a liveness check read ahead, then the socket."""

    def __init__(self, sock, held: bytearray):
        super().__init__()
        self.sock, self.held = sock, held

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.held:
            n = min(len(buffer), len(self.held))
            buffer[:n] = self.held[:n]
            del self.held[:n]
            return n
        return self.sock.recv_into(buffer)


def origin_allowed(origin: str) -> bool:
    """OLLAMA_ORIGINS' defaults plus browser extensions, with gin-contrib/cors' '*' wildcards."""
    for pattern in _ORIGIN_PATTERNS:
        if "*" in pattern:
            head, tail = pattern.split("*", 1)
            if origin.startswith(head) and origin.endswith(tail) and len(origin) >= len(head) + len(tail):
                return True
        elif origin == pattern:
            return True
    return False


def host_allowed(host_header: str) -> tuple:
    """(allowed, by_name) for Ollama's check on a loopback listener; by_name: allowed as a name, not an IP."""
    host = host_header
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return addr.is_loopback or addr.is_private or addr.is_unspecified, False
    host = host.lower()
    if host in ("", "localhost", socket.gethostname().lower()):
        return True, True
    return any(host.endswith("." + tld) for tld in ("localhost", "local", "internal")), True


class Framer:
    """Decides the chunk boundaries of one response.

    "go": one chunk per flush, as Ollama writes them (one NDJSON line; for SSE the events of one native line),
    through net/http's 2 KiB buffer (see _bufio).
    "odd": lines that are ready together (no delay between them) may share a chunk, every line over 1 KiB is
    cut into pieces (the first cut inside its first KiB, then every 4 KiB) and about a third of the short
    lines are cut once, at a pseudo-random point; pieces of one line are always written back to back.
    The pseudo-random choices depend only on a line's position in the response, so a test sees the same
    boundaries every time.
    """

    PIECE = 4096

    def __init__(self, mode: str):
        self.mode = mode
        self.rng = random.Random(0x0DD)
        self.count = 0

    def plan(self, run: list) -> list:
        """`run`: [(payload bytes, flush group)] ready to go out now; returns the chunks to write."""
        if self.mode == "go":
            return self._bufio(run)
        chunks, pending = [], b""
        for j, (payload, _group) in enumerate(run):
            split_draw, point_draw, merge_draw = self.rng.random(), self.rng.random(), self.rng.random()
            self.count += 1
            pieces = self._pieces(payload, split_draw, point_draw)
            pieces[0] = pending + pieces[0]
            pending = b""
            chunks.extend(pieces[:-1])
            if j + 1 < len(run) and merge_draw < 0.5:
                pending = pieces[-1]
            else:
                chunks.append(pieces[-1])
        if pending:
            chunks.append(pending)
        return [c for c in chunks if c]

    @staticmethod
    def _bufio(run: list) -> list:
        """net/http's 2 KiB bufio.Writer in front of the chunk writer, flushed after each group (one
        gin c.Stream step): small writes of one step share a chunk, a write that does not fit fills the
        buffer first, a big write into an empty buffer becomes a chunk of its own."""
        chunks, buffer, last = [], b"", None
        for payload, group in run:
            if buffer and group != last:
                chunks.append(buffer)
                buffer = b""
            last = group
            while len(payload) > GO_BUFFER - len(buffer):
                if not buffer:
                    chunks.append(payload)
                    payload = b""
                    break
                room = GO_BUFFER - len(buffer)
                chunks.append(buffer + payload[:room])
                buffer, payload = b"", payload[room:]
            buffer += payload
        if buffer:
            chunks.append(buffer)
        return chunks

    def _pieces(self, payload: bytes, split_draw: float, point_draw: float) -> list:
        if len(payload) > 1024:
            first = 1 + int(point_draw * 1023)
            return [payload[:first]] + [payload[i:i + self.PIECE] for i in range(first, len(payload), self.PIECE)]
        if len(payload) >= 2 and split_draw < 0.35:
            cut = 1 + int(point_draw * (len(payload) - 1))
            return [payload[:cut], payload[cut:]]
        return [payload]


class Transport(BaseHTTPRequestHandler):
    """Request plumbing shared by the native, OpenAI and control routes (mixed in by server.Handler)."""

    protocol_version = "HTTP/1.1"  # persistent connections and chunked streams, as Go's net/http
    routes: dict = {}  # path pattern -> {method: handler method name}; ':name' segments are parameters
    control_routes: dict = {}

    def setup(self):
        self._held = None
        if isinstance(self.request, ssl.SSLSocket):
            # A failed or abandoned handshake raises an OSError (ssl.SSLError), which the server ignores.
            self.request.settimeout(HANDSHAKE_TIMEOUT)
            try:
                self.request.do_handshake()
            except ssl.SSLError as err:
                if err.reason == "HTTP_REQUEST":
                    _plain_http_refusal(self.request)
                raise
            self.request.settimeout(None)
        super().setup()
        # One small chunk per token must leave at once instead of waiting for Nagle's algorithm.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.connection, ssl.SSLSocket):
            self._held = bytearray()
            self.rfile.close()
            self.rfile = io.BufferedReader(_ReadAhead(self.connection, self._held))

    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def send_response(self, code, message=None):
        # Go's net/http sends a Date header but no Server header.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())
        for name, value in getattr(self, "_extra_headers", ()):
            self.send_header(name, value)

    # -- dispatch -------------------------------------------------------------------------------------

    def do_GET(self):
        """Every method goes through one dispatcher, which imitates gin's router and Ollama's middleware."""
        self.double = self.server.double
        self.epoch = self.double._epoch  # set by reset()/stop(): abort every wait in this request
        self.script = self.double._snapshot()
        self._extra_headers = []
        self._framer = Framer(self.script.get("framing", "odd"))
        parts = urlsplit(self.path)
        self.route = parts.path
        self.raw = self._read_body()
        self.record = None
        control = self.control_routes.get(self.route)
        if control is not None:
            handler = control.get(self.command)
            if handler is None:
                return self.send_body(405, b"405 method not allowed", "text/plain")
            return self._run(handler)
        self.record = self.double._record_request(self.command, self.route, dict(self.headers.items()),
                                                  _lenient(self.raw))
        path = unquote(parts.path)  # gin routes on the decoded URL.Path
        handler, self.params, allowed, redirect = self._match(path, self.command)
        if handler is None and redirect is not None:
            return self._redirect(redirect + (f"?{parts.query}" if parts.query else ""))
        if not self._middleware():
            return
        if handler is None:
            if allowed:
                self._extra_headers.append(("Allow", ", ".join(allowed)))
                return self.send_body(405, b"405 method not allowed", "text/plain")
            return self.send_body(404, b"404 page not found", "text/plain")
        self._run(handler)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _run(self, handler: str):
        try:
            getattr(self, handler)()
        except ApiError as err:
            self.send_error_json(err.status, err.message, err.ctype, err.extra)
        except Abandon:
            self.close_connection = True

    def _match(self, path: str, method: str):
        """(handler, params, other methods allowed here, trailing-slash redirect target) for this request."""

        def lookup(candidate: str, wanted: str):
            for pattern, table in self.routes.items():
                params = _match_pattern(pattern, candidate)
                if params is not None and wanted in table:
                    return table[wanted], params
            return None, None

        handler, params = lookup(path, method)
        if handler is not None:
            return handler, params, [], None
        redirect = None
        if path != "/":
            other = path[:-1] if path.endswith("/") else path + "/"
            if lookup(other, method)[0] is not None:
                redirect = other
        allowed = [m for m in METHOD_ORDER if m != method and lookup(path, m)[0] is not None]
        return None, {}, allowed, redirect

    def _redirect(self, location: str):
        # gin's RedirectTrailingSlash: 301 for GET (with Go's little HTML body), 307 for everything else.
        self._extra_headers.append(("Location", location))
        if self.command == "GET":
            body = f'<a href="{location}">Moved Permanently</a>.\n\n'.encode()
            return self.send_body(301, body, "text/html; charset=utf-8")
        return self.send_body(307, b"", "text/html; charset=utf-8" if self.command == "HEAD" else None)

    def _middleware(self) -> bool:
        """gin-contrib/cors, then Ollama's allowed-hosts check; False when they answered the request."""
        origin = self.headers.get("Origin") or ""
        host = self.headers.get("Host") or ""
        if origin and origin not in (f"http://{host}", f"https://{host}"):
            if not origin_allowed(origin):
                self.send_body(403, b"", None)
                return False
            self._extra_headers += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
            if self.command == "OPTIONS":  # a preflight: answered by the CORS middleware itself
                self._extra_headers += [("Access-Control-Allow-Methods", "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"),
                                        ("Access-Control-Allow-Headers", CORS_HEADERS),
                                        ("Access-Control-Max-Age", "43200")]
                self.send_body(204, b"", None)
                return False
        if self.server.loopback:
            allowed, by_name = host_allowed(host)
            if not allowed:
                self.send_body(403, b"", None)
                return False
            if by_name and self.command == "OPTIONS":
                self.send_body(204, b"", None)
                return False
        return True

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def bind(self, struct: Struct) -> dict:
        """The request body bound to a Go struct (see gojson), or the 400 Ollama sends for it."""
        try:
            return bind(self.raw, struct)
        except BodyError as err:
            raise ApiError(400, err.message) from None

    # -- plain responses --------------------------------------------------------------------------

    def send_body(self, status: int, body: bytes, ctype: str | None = JSON_TYPE):
        """A complete response framed as net/http frames a handler's output (no body bytes for HEAD)."""
        head = self.command == "HEAD"
        big = len(body) > GO_BUFFER
        chunked = big and not head and self.request_version != "HTTP/1.0" and status not in (204, 304)
        try:
            self.send_response(status)
            if ctype:
                self.send_header("Content-Type", ctype)
            if not big and (body or not head) and status not in (204, 304):
                self.send_header("Content-Length", str(len(body)))
            elif chunked:
                self.send_header("Transfer-Encoding", "chunked")
            elif big and not head:
                self.close_connection = True  # an HTTP/1.0 peer: the body ends when the connection does
            self.end_headers()
            if head or status in (204, 304):
                return
            if chunked:
                frames = [b"%x\r\n%s\r\n" % (len(c), c) for c in self._framer.plan([(body, 0)])]
                for frame in frames:
                    self.wfile.write(frame)
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def send_json(self, obj, status: int = 200, ctype: str = JSON_TYPE, newline: bool = False):
        """A compact Go-style JSON response (`newline`: written by a json.Encoder, as the /v1 writers do)."""
        self.send_body(status, dumps(obj) + (b"\n" if newline else b""), ctype)

    def send_error_json(self, status: int, message: str, ctype: str = JSON_TYPE, extra: dict | None = None):
        """Ollama's {"error": ...}; /v1 routes wrap it in their API's shape (see OpenAIRoutes.compat_error)."""
        if self.route.startswith("/v1/") and not (extra or {}).get("native"):
            return self.compat_error(status, message, ctype)
        body = {"error": message}
        body.update({k: v for k, v in (extra or {}).items() if k != "native"})
        self.send_json(body, status, ctype)

    # -- waiting while watching the client ----------------------------------------------------------

    def wait(self, seconds, rec=None):
        """Sleep `seconds` (None: until interrupted), checking every POLL s that the client is still there.

        Raises Abandon (after closing `rec`) if the client hung up or reset()/stop() was called.
        """
        end = None if seconds is None else time.monotonic() + seconds
        while not self.epoch.is_set():
            left = POLL if end is None else min(POLL, end - time.monotonic())
            if left <= 0:
                return
            if not self._peer_alive(left):
                self.close_stream(rec, gone=True)
                raise Abandon
        self.close_stream(rec)
        raise Abandon

    def _peer_alive(self, timeout: float) -> bool:
        # A peeked read returning b"" is the client's FIN; a timeout means it is quietly waiting.
        if self._held is not None:
            return self._peer_alive_tls(timeout)
        sock = self.connection
        started = time.monotonic()
        try:
            sock.settimeout(timeout)
            data = sock.recv(1, socket.MSG_PEEK)
        except (socket.timeout, BlockingIOError):
            return True
        except OSError:
            return False
        finally:
            try:
                sock.settimeout(None)
            except OSError:
                pass
        if data:  # pipelined bytes, not a hang-up: sleep instead of spinning on them
            time.sleep(max(0.0, timeout - (time.monotonic() - started)))
        return bool(data)

    def _peer_alive_tls(self, timeout: float) -> bool:
        """_peer_alive for an SSLSocket, which has no MSG_PEEK (and raw bytes are ciphertext): wait with
        select() (or take what OpenSSL already decrypted, pending()), then read without blocking and keep
        what came for the next request (see _ReadAhead), as Go's net/http background read does. b"" is
        the client's close_notify or its FIN (with or without close_notify); a partial record or a TLS
        message without data reads as nothing yet."""
        sock = self.connection
        started = time.monotonic()
        if len(self._held) >= READ_AHEAD_LIMIT:
            time.sleep(timeout)
            return True
        try:
            ready = sock.pending() > 0 or bool(select.select([sock], [], [], timeout)[0])
        except (OSError, ValueError):
            return False
        if not ready:
            return True
        try:
            sock.setblocking(False)
            data = sock.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return True
        except (OSError, ValueError):
            return False
        finally:
            try:
                sock.setblocking(True)
            except OSError:
                pass
        if not data:
            return False
        self._held += data  # pipelined bytes, not a hang-up: keep them and sleep instead of spinning
        time.sleep(max(0.0, timeout - (time.monotonic() - started)))
        return True

    def close_stream(self, rec, completed=False, gone=False):
        """Finish a stream record (no-op without one)."""
        if rec is not None:
            self.double._close_stream(rec, completed=completed, gone=gone)

    def prelude(self, script: dict, rec=None):
        """Apply 'hang', first_delay and the status faults before any byte is written."""
        if script["fault"] == "hang":
            self.wait(None, rec)
        if script["fault"] != "slow_version":  # that fault spends first_delay on /api/version and /api/tags
            self.wait(script["first_delay"], rec)
        if script["fault"] in STATUS_FAULTS:
            self.close_stream(rec)
            raise ApiError(*STATUS_FAULTS[script["fault"]])

    def drop(self, rec=None):
        """Close the TCP connection mid-response (a FIN, so lines already sent still arrive; behind TLS,
        without close_notify)."""
        raw_shutdown(self.connection)
        self.close_stream(rec)
        raise Abandon

    # -- streaming ------------------------------------------------------------------------------------

    def stream(self, rec, groups, ctype, encode, bad_line: bytes, error_line, early_error=None,
               flush_each: bool = False):
        """Send a paced stream. `groups`: lists of items (dicts via `encode`, or bytes) that Ollama writes in
        one flush; the script's `delay` separates groups. Nothing (not even the status line) is written
        before the first item is due. `error_line` is bytes or a callable giving them; `early_error` is
        (status, body, content type) for an error that strikes before anything was written. `flush_each`:
        the writer flushes after every item of a group (the Responses and Anthropic SSE writers flush after
        each event), so "go" framing sends each item as a chunk of its own.
        """
        script = self.script
        fault = script["fault"] if script["fault"] in MID_STREAM_FAULTS else None
        flat = [(g, item) for g, group in enumerate(groups) for item in group]
        fault_at = min(script["fault_after"], len(flat) - 1)  # a fault always replaces the final line
        self._chunked = self.request_version != "HTTP/1.0"  # HTTP/1.0 peers (nginx default) get close-delimited
        self._started = False
        self._stream_ctype = ctype
        run, last_group = [], None
        for i, (group, item) in enumerate(flat):
            if run and group != last_group and script["delay"] > 0:
                self._flush(run, rec)
                run = []
            if i and group != last_group:
                self.wait(script["delay"], rec)
            last_group = group
            if fault and i == fault_at:
                if fault == "drop":
                    self._flush(run, rec)
                    self.drop(rec)
                if fault == "error_line" and not self._started and not run and early_error is not None:
                    self.close_stream(rec)
                    status, body, error_type = early_error
                    return self.send_body(status, body, error_type)
                run.append((bad_line if fault == "malformed" else
                            error_line() if callable(error_line) else error_line,
                            (group, i) if flush_each else group))
                break
            run.append((item if isinstance(item, bytes) else encode(item), (group, i) if flush_each else group))
        self._flush(run, rec)
        self._write_raw(b"0\r\n\r\n" if self._chunked else b"", rec)
        self.close_stream(rec, completed=True)
        if not self._chunked:
            self.close_connection = True

    def _start(self, rec):
        if self._started:
            return
        self._started = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", self._stream_ctype)
            if self._chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
        except OSError:
            self.close_stream(rec, gone=True)
            raise Abandon from None

    def _flush(self, run: list, rec):
        if not run:
            return
        self._start(rec)
        chunks = self._framer.plan(run)
        for chunk in chunks:
            self._write_raw(b"%x\r\n%s\r\n" % (len(chunk), chunk) if self._chunked else chunk, rec)
        if rec is not None:
            rec["lines_sent"] += len(run)
            rec["chunks_sent"] = rec.get("chunks_sent", 0) + len(chunks)

    def _write_raw(self, frame: bytes, rec):
        if not frame:
            return
        try:
            self.wfile.write(frame)
        except OSError:  # BrokenPipe / ConnectionReset: the client is gone
            self.close_stream(rec, gone=True)
            raise Abandon from None

    def finish_unstreamed(self, script: dict, n_items: int, obj, bad_body: bytes, ctype: str = JSON_TYPE,
                          newline: bool = False, error=None):
        """Answer a stream:false request after the time its tokens would take, honouring the faults."""
        self.wait(script["delay"] * max(n_items - 1, 0))
        if script["fault"] == "drop":
            self.drop()
        if script["fault"] == "malformed":
            return self.send_body(200, bad_body, ctype)
        if script["fault"] == "error_line":
            raise error or ApiError(500, RUNNER_ERROR)
        body = obj if isinstance(obj, bytes) else dumps(obj)
        self.send_body(200, body + (b"\n" if newline else b""), ctype)


def _match_pattern(pattern: str, path: str):
    """{param: value} when `path` matches a gin pattern ('/v1/models/:model'), else None."""
    if ":" not in pattern:
        return {} if pattern == path else None
    want, got = pattern.split("/"), path.split("/")
    if len(want) != len(got):
        return None
    params = {}
    for w, g in zip(want, got):
        if w.startswith(":"):
            if not g:
                return None
            params[w[1:]] = g
        elif w != g:
            return None
    return params


def ndjson(item: dict) -> bytes:
    """One NDJSON line; a created_at of None is stamped at send time."""
    if item.get("created_at", "") is None:
        item = {**item, "created_at": timestamp()}
    return dumps(item) + b"\n"


def sse(item: dict) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + dumps(item) + b"\n\n"


def _lenient(raw: bytes):
    import json
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return None
