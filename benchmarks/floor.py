"""The stack's floor: a bare WSGI relay to the upstream, run under the gateway's gunicorn setup.

What the gateway costs beyond this is the price of Flask, validation, observability and
everything else it does; what this costs is the price of gunicorn + gevent + http.client + json
doing the least equivalent work.  So the benchmark targets are ratios to this floor.

Routes (the two the benchmarks load, plus the health check the harness waits on):

* ``POST /api/llm/generate``: check ``X-API-Key``, parse the body, POST
  ``{"model","prompt","stream":false,"options"}`` to the upstream's ``/api/generate`` on a
  kept-alive ``http.client.HTTPConnection``, parse the answer, return the gateway's shape
  (``model``, ``response``, ``done`` and the statistics).
* ``POST /api/llm/stream``: the same with ``"stream": true``; every NDJSON line is parsed and
  framed as one Server-Sent Event, ``data: {"text": ...}`` per token and a final
  ``data: {"done": true, ...statistics}``.  The client's socket is watched from the gevent hub
  (as the gateway does), so a client that hangs up closes the upstream connection at once.
* ``GET /health``: ``{"status": "ok"}``.

Configured from the environment: ``FLOOR_UPSTREAM_URL`` (``http://host:port``),
``FLOOR_API_KEY``, ``FLOOR_POOL_MAX`` (idle upstream connections kept, default 256).
Run: ``gunicorn -c benchmarks/floor_gunicorn.py benchmarks.floor:app``.  Standard library only,
plus gevent when gunicorn's gevent worker runs it (it has monkey-patched sockets by then, so
http.client is cooperative).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from urllib.parse import urlsplit

_url = urlsplit(os.environ.get("FLOOR_UPSTREAM_URL", "http://127.0.0.1:11434"))
UP_HOST = _url.hostname or "127.0.0.1"
UP_PORT = _url.port or 80
API_KEY = os.environ.get("FLOOR_API_KEY", "")
POOL_MAX = int(os.environ.get("FLOOR_POOL_MAX", "256"))
UP_TIMEOUT = 300.0

NOT_STATISTICS = {"model", "created_at", "response", "thinking", "message", "done", "context"}
JSON_HEADERS = [("Content-Type", "application/json")]
SSE_HEADERS = [("Content-Type", "text/event-stream; charset=utf-8"),
               ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_loads = json.loads

_idle: list = []  # kept-alive upstream connections, one per process (one gevent worker)


# --------------------------------------------------------------------------
# upstream connections
# --------------------------------------------------------------------------
def _connection() -> tuple:
    """An idle pooled connection, or a new one; the flag says which (a pooled one may be stale)."""
    if _idle:
        return _idle.pop(), True
    return http.client.HTTPConnection(UP_HOST, UP_PORT, timeout=UP_TIMEOUT), False


def _release(conn, resp):
    """Give a connection whose response was read to the end back to the pool, else close it."""
    if resp.isclosed() and not resp.will_close and len(_idle) < POOL_MAX:
        _idle.append(conn)
    else:
        conn.close()


class ClientGone(Exception):
    """The client hung up while we waited for the upstream's answer."""


def _post(payload: dict, environ=None):
    """POST /api/generate; returns (conn, response, watch).

    With ``environ`` the client's socket is watched from the moment the request is sent (a
    paced upstream may send nothing, not even its headers, for a long while); the caller owns
    the watch.  A stale pooled connection is retried on a new one.
    """
    body = _dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    while True:
        conn, pooled = _connection()
        watch = None
        try:
            conn.request("POST", "/api/generate", body, headers)
            if environ is not None:
                watch = ClientWatch(environ, conn.sock)
            return conn, conn.getresponse(), watch
        except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
            conn.close()
            if watch is not None:
                watch.stop()
                if watch.gone:
                    raise ClientGone() from None
            if not pooled:
                raise
        except BaseException:
            conn.close()
            if watch is not None:
                watch.stop()
            raise


def _upstream_body(req: dict, stream: bool) -> dict:
    opts = req.get("options")
    return {"model": req.get("model"), "prompt": req.get("prompt", ""), "stream": stream,
            "options": opts if isinstance(opts, dict) else {}}


# --------------------------------------------------------------------------
# the client's socket
# --------------------------------------------------------------------------
class ClientWatch:
    """Shut the upstream socket down from the gevent hub as soon as the client hangs up.

    A WSGI app only learns of a disconnect when a write fails, which while the upstream is
    silent may be never; the gateway watches the socket for readability, so the floor does too
    (otherwise M5 would compare the gateway with a floor that does less).  Shutting the upstream
    socket down sends the FIN the upstream measures and wakes the greenlet blocked on it.
    """

    __slots__ = ("gone", "_sock", "_up", "_watcher")

    def __init__(self, environ, upstream_sock):
        self.gone = False
        self._watcher = None
        self._up = upstream_sock
        sock = environ.get("gunicorn.socket") or environ.get("gunicorn.sock")
        if sock is None or upstream_sock is None:
            return
        try:
            import gevent
        except ImportError:
            return
        self._sock = getattr(sock, "_sock", sock)
        self._watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
        self._watcher.start(self._readable)

    def _readable(self):
        try:
            data = self._sock.recv(1, _PEEK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.stop()
        if not data:
            self.gone = True
            try:
                self._up.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None


# --------------------------------------------------------------------------
# routes
# --------------------------------------------------------------------------
def _json(start_response, status: str, obj):
    body = _dumps(obj).encode()
    start_response(status, JSON_HEADERS + [("Content-Length", str(len(body)))])
    return [body]


def _error(start_response, status: str, detail: str):
    code = int(status.split(" ", 1)[0])
    return _json(start_response, status,
                 {"error": {"title": status.split(" ", 1)[1], "status": code, "detail": detail},
                  "done": True})


def _statistics(obj: dict) -> dict:
    out = {"done": True}
    for k, v in obj.items():
        if k not in NOT_STATISTICS:
            out[k] = v
    return out


def generate(req, start_response):
    conn, resp, _ = _post(_upstream_body(req, False))
    try:
        data = resp.read()
    except BaseException:
        conn.close()
        raise
    _release(conn, resp)
    if resp.status != 200:
        return _error(start_response, "502 Bad Gateway", f"upstream answered {resp.status}")
    obj = _loads(data)
    out = {"model": obj.get("model"), "response": obj.get("response", "")}
    out.update(_statistics(obj))
    return _json(start_response, "200 OK", out)


def stream(req, environ, start_response):
    conn, resp, watch = _post(_upstream_body(req, True), environ)
    if resp.status != 200:
        watch.stop()
        resp.read()
        _release(conn, resp)
        return _error(start_response, "502 Bad Gateway", f"upstream answered {resp.status}")
    start_response("200 OK", SSE_HEADERS)
    return _relay(conn, resp, watch)


def _relay(conn, resp, watch):
    """Yield one event per upstream line; on every exit the upstream connection is released."""
    finished = False
    try:
        while True:
            line = resp.readline()
            if not line:
                break
            if not line.strip():
                continue
            obj = _loads(line)
            if "error" in obj:
                yield b"data: " + _dumps({"error": {"title": "Bad Gateway", "status": 502,
                                                    "detail": str(obj["error"])},
                                          "done": True}).encode() + b"\n\n"
                break
            if obj.get("done") is True:
                yield b"data: " + _dumps(_statistics(obj)).encode() + b"\n\n"
                resp.read()  # the chunked terminator: the connection can be reused
                finished = True
                break
            text = obj.get("response")
            if text:
                yield b"data: " + _dumps({"text": text}).encode() + b"\n\n"
    except (OSError, http.client.HTTPException, ValueError):
        if not watch.gone:
            yield (b'data: {"error":{"title":"Bad Gateway","status":502,'
                   b'"detail":"upstream stream broke"},"done":true}\n\n')
    finally:
        # GeneratorExit (the client left and gunicorn closed us) lands here too
        watch.stop()
        if finished and not watch.gone:
            _release(conn, resp)
        else:
            resp.close()
            conn.close()


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    if path == "/health":
        return _json(start_response, "200 OK", {"status": "ok"})
    if path not in ("/api/llm/generate", "/api/llm/stream"):
        return _error(start_response, "404 Not Found", "no such route")
    if method != "POST":
        return _error(start_response, "405 Method Not Allowed", "POST only")
    if environ.get("HTTP_X_API_KEY") != API_KEY:
        return _error(start_response, "401 Unauthorized", "missing or wrong X-API-Key")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        req = _loads(environ["wsgi.input"].read(length) if length else b"{}")
    except ValueError:
        return _error(start_response, "400 Bad Request", "body is not JSON")
    if not isinstance(req, dict):
        return _error(start_response, "400 Bad Request", "body must be an object")
    try:
        if path == "/api/llm/stream":
            return stream(req, environ, start_response)
        return generate(req, start_response)
    except ClientGone:
        return _error(start_response, "499 Client Closed Request", "the client hung up")
    except (OSError, http.client.HTTPException, ValueError) as e:
        return _error(start_response, "502 Bad Gateway", f"upstream: {type(e).__name__}")
