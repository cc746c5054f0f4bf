"""HTTP/1.1 plumbing for the Ollama double: dispatch, bodies, paced chunked streams, disconnect detection."""

from __future__ import annotations

import json
import socket
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from .wire import RUNNER_ERROR, dumps, go_json_error, go_type_error, timestamp

POLL = 0.01  # seconds between checks for a departed client or a reset/stop
JSON_TYPE = "application/json; charset=utf-8"
STATUS_FAULTS = {
    "status_500": (500, "llama runner process has terminated"),
    "busy": (503, "server busy, please try again.  maximum pending requests exceeded"),
    "bad_request": (400, "invalid options: the test double was told to reject this request"),
}
MID_STREAM_FAULTS = ("drop", "malformed", "error_line")


class ApiError(Exception):
    """An error answered before any byte of a success response was written."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Abandon(Exception):
    """The request ends without a (further) response: the client left, or reset()/stop() interrupted it."""


class Transport(BaseHTTPRequestHandler):
    """Request plumbing shared by the native, OpenAI and control routes (mixed in by server.Handler)."""

    protocol_version = "HTTP/1.1"  # persistent connections and chunked streams, as Go's net/http
    routes: dict = {}  # path -> {method: handler method name}

    def setup(self):
        super().setup()
        # One small chunk per token must leave at once instead of waiting for Nagle's algorithm.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def send_response(self, code, message=None):
        # Go's net/http sends a Date header but no Server header.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def do_GET(self):
        """Every method goes through one dispatcher so unknown methods get gin's 405."""
        self.double = self.server.double
        self.epoch = self.double._epoch  # set by reset()/stop(): abort every wait in this request
        self.route = urlsplit(self.path).path
        self.raw = self._read_body()
        control = self.route.startswith("/_double/")
        if not control:
            self.double._record_request(self.command, self.route, dict(self.headers.items()), _lenient(self.raw))
            if self.headers.get("Origin") is not None:
                return self.send_body(403, b"", None)  # Ollama refuses origins it was not told to allow
        table = self.routes.get(self.route)
        if table is None and self.route.startswith("/v1/models/"):
            table = self.routes["/v1/models/{model}"]
        if table is None:
            return self.send_body(404, b"404 page not found", "text/plain")
        handler = table.get("GET" if self.command == "HEAD" else self.command)
        if handler is None:
            return self.send_body(405, b"405 method not allowed", "text/plain")
        try:
            getattr(self, handler)()
        except ApiError as err:
            self.send_error_json(err.status, err.message)
        except Abandon:
            self.close_connection = True

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

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

    def json_body(self) -> dict:
        """The request body as a JSON object, or the 400 Ollama sends for a missing or bad one."""
        if not self.raw.strip():
            raise ApiError(400, "missing request body")
        text = self.raw.decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except json.JSONDecodeError as err:
            raise ApiError(400, go_json_error(text, err)) from None
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise ApiError(400, go_type_error(body, "api." + self.route.rsplit("/", 1)[-1].title() + "Request"))
        return body

    # -- plain responses --------------------------------------------------------------------------

    def send_body(self, status: int, body: bytes, ctype: str | None = JSON_TYPE):
        """A complete response with Content-Length (no body bytes for HEAD)."""
        try:
            self.send_response(status)
            if ctype:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def send_json(self, obj, status: int = 200):
        """A compact Go-style JSON response."""
        self.send_body(status, dumps(obj))

    def send_error_json(self, status: int, message: str):
        """Ollama's {"error": ...}, or the OpenAI error object on /v1 routes."""
        if self.route.startswith("/v1/"):
            kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
            return self.send_json({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)
        self.send_json({"error": message}, status)

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
        """Close the TCP connection mid-response (a FIN, so lines already sent still arrive)."""
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_stream(rec)
        raise Abandon

    # -- streaming ------------------------------------------------------------------------------------

    def stream(self, rec, items, ctype, script, encode, bad_line: bytes, error_line: bytes):
        """Send each item (dict via `encode`, or bytes) as its own chunk, with the script's pacing and faults."""
        fault = script["fault"] if script["fault"] in MID_STREAM_FAULTS else None
        fault_at = min(script["fault_after"], len(items) - 1)  # a fault always replaces the final line
        self._chunked = self.request_version != "HTTP/1.0"  # HTTP/1.0 peers (nginx default) get close-delimited
        try:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            if self._chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Connection", "close")
            self.end_headers()
        except OSError:
            self.close_stream(rec, gone=True)
            raise Abandon from None
        for i, item in enumerate(items):
            if i:
                self.wait(script["delay"], rec)
            if fault and i == fault_at:
                if fault == "drop":
                    self.drop(rec)
                self._write(bad_line if fault == "malformed" else error_line, rec)
                break
            self._write(item if isinstance(item, bytes) else encode(item), rec)
        self._write(b"", rec)
        self.close_stream(rec, completed=True)
        if not self._chunked:
            self.close_connection = True

    def _write(self, payload: bytes, rec):
        frame = payload
        if self._chunked:
            frame = b"%x\r\n%s\r\n" % (len(payload), payload) if payload else b"0\r\n\r\n"
        if not frame:
            return
        try:
            self.wfile.write(frame)
        except OSError:  # BrokenPipe / ConnectionReset: the client is gone
            self.close_stream(rec, gone=True)
            raise Abandon from None
        if payload and rec is not None:
            rec["lines_sent"] += 1

    def finish_unstreamed(self, script: dict, n_items: int, obj, bad_body: bytes):
        """Answer a stream:false request after the time its tokens would take, honouring the faults."""
        self.wait(script["delay"] * max(n_items - 1, 0))
        if script["fault"] == "drop":
            self.drop()
        if script["fault"] == "malformed":
            return self.send_body(200, bad_body)
        if script["fault"] == "error_line":
            raise ApiError(500, RUNNER_ERROR)
        self.send_json(obj)


def ndjson(item: dict) -> bytes:
    """One NDJSON line; a created_at of None is stamped at send time."""
    if item.get("created_at", "") is None:
        item = {**item, "created_at": timestamp()}
    return dumps(item) + b"\n"


def sse(item: dict) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + dumps(item) + b"\n\n"


def _lenient(raw: bytes):
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return None
