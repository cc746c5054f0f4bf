"""Compare HTTP/1.1 clients for the gateway's hot upstream calls: CPU cost and protocol correctness.

Candidates (each as the thinnest adapter that does what the gateway needs: one keep-alive pooled
connection to one server, ``POST /api/generate`` with a ~100-byte JSON body, read a whole small JSON
answer, or read a chunked NDJSON stream yielding the body bytes as they arrive, then give the
connection back to the pool):

  gateway         mlops_backend.upstream.http (our pooled sockets, httptools parsing): the reference
  (gateway, the gateway's own framing before issue 12, measured 67.8 vs 76.4 us a whole call and
   24.4 vs 31.0 us a lone token against httptools in this harness; it is gone from the tree)
  h11             sans-IO: our socket, recv_into one shared buffer, h11 events
  http.client     HTTPConnection + HTTPResponse.read1
  urllib3         HTTPConnectionPool, preload_content=False, .read1()
  urllib3-stream  the same, body read with .stream(None) (urllib3's own chunk decoder)
  geventhttpclient HTTPClient (llhttp parser); streaming needs its private _body_buffer/_sock
  llhttp          geventhttpclient's response parser (llhttp) used sans-IO: our socket, pool and
                  one-line request writer, llhttp frames the answer
  httptools       the same design on httptools' public HttpResponseParser (llhttp, as used by uvloop)
  requests        Session, reference only

Measured under gevent (monkey.patch_all() first, as gunicorn's gevent worker does) against the
project's benchmark upstream (benchmarks/upstream.py, started here in its own process pinned to CPU 1;
this process is pinned to CPU 0):

  whole   CPU µs per non-streamed call (~300-byte Content-Length answer)
  stream  CPU µs per chunk of 500-line chunked NDJSON streams written in one go
  paced   CPU µs per chunk when the upstream paces lines (bench_delay_ms), so each recv gets one chunk;
          streams one after another, so this process sleeps between chunks (a full wake-up per chunk)
  concurrent  the same paced streams, --concurrency of them at once on as many pooled connections
          (the lone-token case under load: the process stays busy, each recv still gets ~one chunk)

CPU is this process's user+system time over the calls, best/median over --reps rounds; in every round
all candidates run (in a rotated order), so ratios to gateway are taken within a round.
The correctness part runs each adapter against a tiny raw-socket server (gevent StreamServer).

Run (from a checkout, the venv active):

    .venv/bin/python benchmarks/clients.py          # from the repository (geventhttpclient, if wanted:
                                                    # pip install geventhttpclient; skipped when missing)
    options: --reps 5 --calls 20000 --streams 200 --paced-streams 8 --paced-delay-ms 1.5
             --concurrency 16 --concurrent-rounds 3 --modes whole,stream,paced,concurrent
             --only gateway,h11 --no-bench --no-checks --json results.json --quick
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import gevent.server  # noqa: E402

LIMIT = 30.0        # the gateway's chunk/first-byte timeout: a socket timeout on every read
WAIT = 1.0          # the gateway reads streams in waits of ~1 s (heartbeats, client watch)
PATH = "/api/generate"
READ_SIZE = 65536
BASE_HEADERS = [("User-Agent", "mlops-backend"), ("Accept", "application/json"),
                ("Content-Type", "application/json")]


def _body(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


WHOLE_BODY = _body({"model": "bench", "prompt": "Why is the sky blue? Answer briefly.", "stream": False,
                    "options": {"num_predict": 10}})
STREAM_LINES = 500


def stream_body(delay_ms=0.0):
    opts = {"num_predict": STREAM_LINES - 1}
    if delay_ms:
        opts["bench_delay_ms"] = delay_ms
    return _body({"model": "bench", "prompt": "Why is the sky blue?", "stream": True, "options": opts})


class Refused(Exception):
    """An adapter refused to send something before touching the network."""


# --------------------------------------------------------------------------------------------------
# Adapters.  Each: open(method, path, body) -> call with .status, .header_values(name),
# .read_some(wait=None) -> bytes (some body bytes) | b"" (wait elapsed; only when wait given) | None
# (end: connection back in the pool), .read_all(), .interrupt(), .close().
# `waits` says whether a read with a wait that elapses leaves the call usable (measured with WAIT).
# --------------------------------------------------------------------------------------------------

_BUF = bytearray(READ_SIZE)
_VIEW = memoryview(_BUF)


def _alive(sock) -> bool:
    """An idle keep-alive socket is still open (same check as the gateway pool)."""
    try:
        sock.setblocking(False)
        try:
            return sock.recv(1, socket.MSG_PEEK) != b""
        finally:
            sock.setblocking(True)
    except BlockingIOError:
        return True
    except OSError:
        return False


def _shutdown(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


class HandFramed:
    name = "gateway"
    waits = True

    def __init__(self, base):
        from mlops_backend.upstream.http import UpstreamPool
        self.pool = UpstreamPool(base, connect_timeout=5.0)

    def open(self, method, path, body):
        try:
            ex = self.pool.request(method, path, body)
        except ValueError as e:
            raise Refused(str(e)) from None
        while not ex.wait_head(WAIT, LIMIT):
            pass
        return HandCall(ex)

    def close(self):
        self.pool.close()


class HandCall:
    __slots__ = ("ex",)

    def __init__(self, ex):
        self.ex = ex

    @property
    def status(self):
        return self.ex.status

    def header_values(self, name):
        v = self.ex.headers.get(name.lower())  # a repeated header's values joined with ", " (RFC 9110)
        return [] if v is None else [part.strip() for part in v.split(",")]

    def read_some(self, wait=None):
        ex = self.ex
        while True:
            data = ex.read_payload(wait or WAIT, LIMIT)
            if data or data is None or wait:
                return data

    def read_all(self):
        return self.ex.read_body(LIMIT)

    def interrupt(self):
        self.ex.interrupt()

    def close(self):
        self.ex.close()


class H11Adapter:
    name = "h11"
    waits = True

    def __init__(self, base):
        import h11
        self.h11 = h11
        u = urlsplit(base)
        self.addr = (u.hostname, u.port)
        self.headers = [(b"Host", f"{u.hostname}:{u.port}".encode())] + [
            (k.encode(), v.encode()) for k, v in BASE_HEADERS]
        self.idle = []

    def _connect(self):
        sock = socket.create_connection(self.addr, timeout=5.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(LIMIT)
        return sock

    def open(self, method, path, body):
        h11 = self.h11
        try:
            req = h11.Request(method=method, target=path,
                              headers=self.headers + [(b"Content-Length", b"%d" % len(body))])
        except h11.LocalProtocolError as e:
            raise Refused(str(e)) from None
        reused = False
        while self.idle:
            sock, conn = self.idle.pop()
            if _alive(sock):
                reused = True
                break
            sock.close()
        else:
            sock, conn = self._connect(), h11.Connection(h11.CLIENT)
        message = conn.send(req) + (conn.send(h11.Data(data=body)) if body else b"") + conn.send(h11.EndOfMessage())
        try:
            sock.sendall(message)
        except OSError:
            if not reused:
                raise
            reused = False
            sock, conn = self._reconnect(sock, req, body)
        call = H11Call(self, sock, conn)
        try:
            while True:
                ev = call._next(None)
                t = type(ev)
                if t is h11.Response:
                    call.status = ev.status_code
                    call.headers = ev.headers
                    return call
                if t is h11.InformationalResponse:
                    continue
                if t is h11.ConnectionClosed and reused:  # idle connection closed by the server: resend
                    reused = False
                    call.sock, call.conn = self._reconnect(sock, req, body)
                    continue
                raise ConnectionError(f"no response ({ev!r})")
        except h11.RemoteProtocolError as e:
            call.sock.close()
            raise ValueError(str(e)) from None

    def _reconnect(self, old, req, body):
        h11 = self.h11
        old.close()
        sock, conn = self._connect(), h11.Connection(h11.CLIENT)
        sock.sendall(conn.send(req) + (conn.send(h11.Data(data=body)) if body else b"") + conn.send(h11.EndOfMessage()))
        return sock, conn

    def close(self):
        while self.idle:
            self.idle.pop()[0].close()


class H11Call:
    __slots__ = ("pool", "sock", "conn", "status", "headers", "done")

    def __init__(self, pool, sock, conn):
        self.pool, self.sock, self.conn = pool, sock, conn
        self.status, self.headers, self.done = 0, [], False

    def _next(self, wait):
        conn = self.conn
        while True:
            ev = conn.next_event()
            if ev is not self.pool.h11.NEED_DATA:
                return ev
            sock = self.sock
            if wait is not None:
                sock.settimeout(wait)
            try:
                n = sock.recv_into(_BUF)
            except socket.timeout:
                return None
            except ConnectionResetError:
                n = 0
            conn.receive_data(_VIEW[:n] if n else b"")

    def header_values(self, name):
        name = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k == name]

    def read_some(self, wait=None):
        h11 = self.pool.h11
        if self.done:
            return None
        try:
            ev = self._next(wait)
        except h11.RemoteProtocolError as e:
            self.close()
            raise ValueError(str(e)) from None
        if ev is None:
            return b""
        t = type(ev)
        if t is h11.Data:
            return bytes(ev.data)
        if t is h11.EndOfMessage:
            self._finish()
            return None
        if t is h11.ConnectionClosed:
            self.close()
            return None
        raise ValueError(f"unexpected event {ev!r}")

    def read_all(self):
        pieces = []
        while True:
            data = self.read_some()
            if data is None:
                return b"".join(pieces)
            pieces.append(data)

    def _finish(self):
        self.done = True
        conn, h11 = self.conn, self.pool.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.sock.settimeout(LIMIT)
            self.pool.idle.append((self.sock, conn))
        else:
            self.sock.close()

    def interrupt(self):
        _shutdown(self.sock)

    def close(self):
        if not self.done:
            self.done = True
            _shutdown(self.sock)
            self.sock.close()


class HttpClientAdapter:
    name = "http.client"
    waits = False

    def __init__(self, base):
        import http.client
        self.http = http.client
        u = urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.headers = dict(BASE_HEADERS)
        self.idle = []

    def _new(self):
        conn = self.http.HTTPConnection(self.host, self.port, timeout=LIMIT)
        return conn

    def open(self, method, path, body):
        reused = False
        while self.idle:
            conn = self.idle.pop()
            if conn.sock is not None and _alive(conn.sock):
                reused = True
                break
            conn.close()
        else:
            conn = self._new()
        for _ in range(2):
            try:
                conn.request(method, path, body, self.headers)
                resp = conn.getresponse()
                break
            except self.http.InvalidURL as e:
                self.idle.append(conn)
                raise Refused(str(e)) from None
            except (self.http.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if not reused:
                    raise
                reused = False
        return HttpClientCall(self, conn, resp)

    def close(self):
        while self.idle:
            self.idle.pop().close()


class HttpClientCall:
    __slots__ = ("pool", "conn", "resp", "done")

    def __init__(self, pool, conn, resp):
        self.pool, self.conn, self.resp, self.done = pool, conn, resp, False

    @property
    def status(self):
        return self.resp.status

    def header_values(self, name):
        return self.resp.msg.get_all(name) or []

    def read_some(self, wait=None):
        if self.done:
            return None
        if wait is not None:
            self.conn.sock.settimeout(wait)
        try:
            data = self.resp.read1(READ_SIZE)
        except socket.timeout:
            return b""
        except self.pool.http.IncompleteRead as e:
            self.close()
            raise ValueError(f"IncompleteRead {e!r}") from None
        if data:
            return data
        self._finish()
        return None

    def read_all(self):
        try:
            data = self.resp.read()
        except self.pool.http.IncompleteRead as e:
            self.close()
            raise ValueError(f"IncompleteRead {e!r}") from None
        self._finish()
        return data

    def _finish(self):
        self.done = True
        if self.resp.will_close or self.conn.sock is None:
            self.conn.close()
        else:
            self.pool.idle.append(self.conn)

    def interrupt(self):
        _shutdown(self.conn.sock)

    def close(self):
        if not self.done:
            self.done = True
            _shutdown(self.conn.sock)
            self.conn.close()


class Urllib3Adapter:
    name = "urllib3"
    waits = False
    use_stream = False

    def __init__(self, base):
        import urllib3
        self.urllib3 = urllib3
        u = urlsplit(base)
        self.headers = dict(BASE_HEADERS)
        self.retries = urllib3.Retry(total=1, read=False, redirect=False, status=False)
        self.pool = urllib3.HTTPConnectionPool(
            u.hostname, u.port, maxsize=128, block=False, retries=self.retries,
            timeout=urllib3.Timeout(connect=5.0, read=LIMIT))

    def open(self, method, path, body):
        r = self.pool.urlopen(method, path, body=body, headers=self.headers, retries=self.retries,
                              redirect=False, preload_content=False, assert_same_host=False)
        return Urllib3Call(self, r)

    def whole(self, path, body):  # the thinnest whole call: urllib3 reads the body and releases itself
        r = self.pool.urlopen("POST", path, body=body, headers=self.headers, retries=self.retries,
                              redirect=False, preload_content=True, assert_same_host=False)
        return r.data

    def close(self):
        self.pool.close()


class Urllib3StreamAdapter(Urllib3Adapter):
    name = "urllib3-stream"
    use_stream = True


class Urllib3Call:
    __slots__ = ("pool", "r", "it", "done")

    def __init__(self, pool, r):
        self.pool, self.r, self.it, self.done = pool, r, None, False

    @property
    def status(self):
        return self.r.status

    def header_values(self, name):
        return self.r.headers.getlist(name)

    def read_some(self, wait=None):
        if self.done:
            return None
        exc = self.pool.urllib3.exceptions
        if wait is not None:
            if self.r.connection is None:
                raise ConnectionError("urllib3 closed the connection on the read timeout")
            self.r.connection.sock.settimeout(wait)
        try:
            if self.pool.use_stream:
                if self.it is None:
                    self.it = self.r.stream(None)
                data = next(self.it, b"")
            else:
                data = self.r.read1(READ_SIZE)
        except (socket.timeout, exc.ReadTimeoutError):
            return b""
        except exc.ProtocolError as e:
            self.close()
            raise ValueError(f"{type(e).__name__}: {e}") from None
        if data:
            return data
        self.done = True
        self.r.release_conn()
        return None

    def read_all(self):
        exc = self.pool.urllib3.exceptions
        try:
            data = self.r.read()
        except exc.ProtocolError as e:
            self.close()
            raise ValueError(f"{type(e).__name__}: {e}") from None
        self.done = True
        self.r.release_conn()
        return data

    def interrupt(self):
        conn = self.r.connection
        _shutdown(conn.sock if conn is not None else None)

    def close(self):
        if not self.done:
            self.done = True
            self.interrupt()
            self.r.close()
            self.r.release_conn()


class GeventHttpClientAdapter:
    name = "geventhttpclient"
    waits = True

    def __init__(self, base):
        from geventhttpclient import HTTPClient
        from geventhttpclient.response import HTTPParseError
        self.HTTPParseError = HTTPParseError
        u = urlsplit(base)
        self.client = HTTPClient(u.hostname, u.port, concurrency=128, connection_timeout=5.0,
                                 network_timeout=LIMIT, block_size=READ_SIZE, headers=dict(BASE_HEADERS))

    def open(self, method, path, body):
        try:
            r = self.client.request(method, path, body=body)
        except ValueError as e:
            raise Refused(str(e)) from None
        except self.HTTPParseError as e:
            raise ValueError(f"{type(e).__name__}: {e}") from None
        return GhcCall(self, r)

    def whole(self, path, body):
        r = self.client.request("POST", path, body=body)
        return r.read()

    def close(self):
        self.client.close()


class GhcCall:
    __slots__ = ("pool", "r")

    def __init__(self, pool, r):
        self.pool, self.r = pool, r

    @property
    def status(self):
        return self.r.status_code

    def header_values(self, name):
        return self.r.info().getlist(name)

    def read_some(self, wait=None):
        # No public "what has arrived" read: read(n) waits for n bytes. Use its parser's buffer.
        r = self.r
        buf = r._body_buffer
        try:
            while not buf:
                if r.message_complete:
                    return None
                sock = r._sock
                if sock is None:
                    raise ConnectionError("connection closed")
                if wait is not None:
                    sock.settimeout(wait)
                try:
                    data = sock.recv(READ_SIZE)
                except socket.timeout:
                    return b""
                finally:
                    if wait is not None:
                        sock.settimeout(LIMIT)
                if not data:
                    raise ConnectionError("connection closed mid-response")
                r.feed(data)
        except self.pool.HTTPParseError as e:
            r.release()
            raise ValueError(f"{type(e).__name__}: {e}") from None
        except BaseException:
            r.release()
            raise
        data = bytes(buf)
        del buf[:]
        return data

    def read_all(self):
        try:
            return self.r.read()
        except self.pool.HTTPParseError as e:
            raise ValueError(f"{type(e).__name__}: {e}") from None

    def interrupt(self):
        _shutdown(self.r._sock)

    def close(self):
        self.r.release()


class LlhttpAdapter:
    """geventhttpclient's llhttp parser used sans-IO (like h11): our socket and pool, our one-line request
    writer (as the gateway client's), llhttp frames the response. Only its response class is used."""
    name = "llhttp"
    waits = True

    def __init__(self, base):
        import re
        from geventhttpclient.response import HTTPParseError, HTTPResponse
        self.HTTPParseError = HTTPParseError
        self._path = re.compile(r"/[\x21-\x7e]*")

        class Parser(HTTPResponse):
            """Body pieces kept as they come; the end of the final (non-1xx) answer remembered."""

            def __init__(self, method):
                super().__init__(method=method)
                self.pieces = []
                self.done = False
                self.spare = False

            def _on_body(self, buf):
                self.pieces.append(bytes(buf))

            def _on_message_begin(self):
                if self.done:  # bytes after the end of the answer: never reuse this connection
                    self.spare = True
                    return
                super()._on_message_begin()

            def _on_message_complete(self):
                super()._on_message_complete()
                if self.get_code() >= 200:
                    self.done = True

        self.Parser = Parser
        u = urlsplit(base)
        self.addr = (u.hostname, u.port)
        head = [f"Host: {u.hostname}:{u.port}"] + [f"{k}: {v}" for k, v in BASE_HEADERS]
        self._headers = ("\r\n".join(head) + "\r\n").encode()
        self.idle = []

    def _connect(self):
        sock = socket.create_connection(self.addr, timeout=5.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(LIMIT)
        return sock

    def open(self, method, path, body):
        if not self._path.fullmatch(path):
            raise Refused(f"not a percent-encoded path: {path[:80]!r}")
        message = b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            method.encode(), path.encode(), self._headers, len(body), body)
        reused = False
        while self.idle:
            sock = self.idle.pop()
            if _alive(sock):
                reused = True
                break
            sock.close()
        else:
            sock = self._connect()
        try:
            sock.sendall(message)
        except OSError:
            if not reused:
                raise
            reused = False
            sock.close()
            sock = self._connect()
            sock.sendall(message)
        p = self.Parser(method)
        try:
            while not (p.headers_complete and p.get_code() >= 200):
                try:
                    n = sock.recv_into(_BUF)
                except ConnectionResetError:
                    n = 0
                if not n:
                    if reused and not p.message_begun:  # idle connection closed by the server: resend
                        reused = False
                        sock.close()
                        sock = self._connect()
                        sock.sendall(message)
                        continue
                    raise ConnectionError("closed before the answer's head")
                p.feed(_VIEW[:n].tobytes())
        except self.HTTPParseError as e:
            sock.close()
            raise ValueError(f"{type(e).__name__}: {e}") from None
        except BaseException:
            sock.close()
            raise
        return LlhttpCall(self, sock, p)

    def close(self):
        while self.idle:
            self.idle.pop().close()


class LlhttpCall:
    __slots__ = ("pool", "sock", "p", "status", "headers", "finished")

    def __init__(self, pool, sock, p):
        self.pool, self.sock, self.p = pool, sock, p
        self.status = p.get_code()
        self.headers = p.info().copy()
        self.finished = False

    def header_values(self, name):
        return self.headers.getlist(name)

    def read_some(self, wait=None):
        p = self.p
        while True:
            pieces = p.pieces
            if pieces:
                data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces.clear()
                if p.done:
                    self._finish()
                return data
            if p.done:
                self._finish()
                return None
            if self.finished:
                return None
            sock = self.sock
            if wait is not None:
                sock.settimeout(wait)
            try:
                n = sock.recv_into(_BUF)
            except socket.timeout:
                return b""
            except ConnectionResetError:
                n = 0
            try:
                if n:
                    p.feed(_VIEW[:n].tobytes())
                else:
                    p.feed(b"")  # end of input: completes a body delimited by the close, else an error
                    if not p.done:
                        raise ConnectionError("closed mid-response")
            except self.pool.HTTPParseError as e:
                self.close()
                raise ValueError(f"{type(e).__name__}: {e}") from None
            except BaseException:
                self.close()
                raise

    def read_all(self):
        pieces = []
        while True:
            data = self.read_some()
            if data is None:
                return b"".join(pieces)
            pieces.append(data)

    def _finish(self):
        if self.finished:
            return
        self.finished = True
        p = self.p
        if not p.spare and p.should_keep_alive():
            self.sock.settimeout(LIMIT)
            self.pool.idle.append(self.sock)
        else:
            self.sock.close()

    def interrupt(self):
        _shutdown(self.sock)

    def close(self):
        if not self.finished:
            self.finished = True
            _shutdown(self.sock)
            self.sock.close()


class HttptoolsAdapter(LlhttpAdapter):
    """httptools (MagicStack's llhttp binding, uvloop's parser) used sans-IO, with its public callbacks:
    our socket, pool and one-line request writer, as in LlhttpAdapter."""
    name = "httptools"

    def __init__(self, base):
        import re
        import httptools
        self.HTTPParseError = httptools.HttpParserError
        self._path = re.compile(r"/[\x21-\x7e]*")
        u = urlsplit(base)
        self.addr = (u.hostname, u.port)
        head = [f"Host: {u.hostname}:{u.port}"] + [f"{k}: {v}" for k, v in BASE_HEADERS]
        self._headers = ("\r\n".join(head) + "\r\n").encode()
        self.idle = []
        no_body = {204, 304}

        class Parser:
            """The callbacks httptools calls; one per answer. llhttp knows 1xx/204/304; HEAD is ours."""
            __slots__ = ("parser", "head", "headers", "pieces", "done", "spare", "status", "message_begun",
                         "headers_complete", "length_known", "keep")

            def __init__(self, method):
                self.head = method == "HEAD"
                self.parser = httptools.HttpResponseParser(self)
                self.headers, self.pieces = [], []
                self.done = self.spare = self.message_begun = self.headers_complete = False
                self.status = 0
                self.length_known = False

            def on_message_begin(self):
                if self.done:
                    self.spare = True
                self.message_begun = True
                self.headers = []

            def on_header(self, name, value):
                self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

            def on_headers_complete(self):
                status = self.parser.get_status_code()
                if status >= 200:
                    self.status = status
                    self.headers_complete = True
                    # read it now: after the end of the message llhttp no longer says keep-alive
                    self.keep = self.parser.should_keep_alive()
                    self.length_known = any(k in ("content-length", "transfer-encoding") for k, _ in self.headers)
                    if self.head or status in no_body:
                        self.done = True  # llhttp would wait for a HEAD answer's body: the answer ends here

            def on_body(self, body):
                if self.done:
                    self.spare = True
                else:
                    self.pieces.append(body)

            def on_message_complete(self):
                if self.status:
                    self.done = True

            def feed(self, data):
                if self.done:  # bytes after the end of the answer (HEAD): never reuse this connection
                    self.spare = True
                    return
                self.parser.feed_data(data)

            def get_code(self):
                return self.status or 100

            def should_keep_alive(self):
                return self.keep

            def info(self):
                return self.headers

        self.Parser = Parser

    def open(self, method, path, body):
        call = super().open(method, path, body)
        return HttptoolsCall(call)


class HttptoolsCall(LlhttpCall):
    __slots__ = ()

    def __init__(self, call):
        self.pool, self.sock, self.p = call.pool, call.sock, call.p
        self.status = self.p.status
        self.headers = self.p.headers
        self.finished = False

    def header_values(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def read_some(self, wait=None):
        p = self.p
        if not p.done and not p.length_known and p.headers_complete:
            # a body delimited by the close of the connection (never from Ollama)
            try:
                return super().read_some(wait)
            except ConnectionError:
                p.done = True
                self.finished = True
                self.sock.close()
                return None
        return super().read_some(wait)


class RequestsAdapter:
    name = "requests"
    waits = False

    def __init__(self, base):
        import requests
        import requests.adapters
        self.requests = requests
        self.base = base.rstrip("/")
        self.s = requests.Session()
        self.s.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=128, max_retries=1))
        self.s.headers.update(dict(BASE_HEADERS))

    def open(self, method, path, body):
        try:
            r = self.s.request(method, self.base + path, data=body, stream=True, timeout=(5.0, LIMIT),
                               allow_redirects=False)
        except self.requests.exceptions.ChunkedEncodingError as e:
            raise ValueError(str(e)) from None
        except self.requests.exceptions.InvalidURL as e:
            raise Refused(str(e)) from None
        return RequestsCall(self, r)

    def whole(self, path, body):
        return self.s.request("POST", self.base + path, data=body, timeout=(5.0, LIMIT),
                              allow_redirects=False).content

    def close(self):
        self.s.close()


class RequestsCall:
    __slots__ = ("pool", "r", "it", "done")

    def __init__(self, pool, r):
        self.pool, self.r, self.it, self.done = pool, r, None, False

    @property
    def status(self):
        return self.r.status_code

    def header_values(self, name):
        return self.r.raw.headers.getlist(name)

    def read_some(self, wait=None):
        if self.done:
            return None
        ex = self.pool.requests.exceptions
        if wait is not None:
            if self.r.raw.connection is None:
                raise ConnectionError("urllib3 closed the connection on the read timeout")
            self.r.raw.connection.sock.settimeout(wait)
        if self.it is None:
            self.it = self.r.iter_content(None)
        try:
            data = next(self.it, b"")
        except (ex.ConnectionError, ex.Timeout) as e:
            if "timed out" in str(e):
                return b""
            raise
        except ex.ChunkedEncodingError as e:
            self.close()
            raise ValueError(str(e)) from None
        if data:
            return data
        self.done = True
        self.r.close()
        return None

    def read_all(self):
        try:
            data = self.r.content
        except self.pool.requests.exceptions.ChunkedEncodingError as e:
            raise ValueError(str(e)) from None
        self.done = True
        self.r.close()
        return data

    def interrupt(self):
        conn = self.r.raw.connection
        _shutdown(conn.sock if conn is not None else None)

    def close(self):
        if not self.done:
            self.done = True
            self.interrupt()
            self.r.close()


ADAPTERS = [HandFramed, H11Adapter, HttpClientAdapter, Urllib3Adapter, Urllib3StreamAdapter,
            GeventHttpClientAdapter, LlhttpAdapter, HttptoolsAdapter, RequestsAdapter]


def whole_call(adapter, path, body):
    w = getattr(adapter, "whole", None)
    if w is not None:
        return w(path, body)
    return adapter.open("POST", path, body).read_all()


# --------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------

def start_upstream(repo):
    def pin():
        if len(os.sched_getaffinity(0)) > 1 and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.upstream", "--port", "0", "--max-seconds", "3600",
                             "--parent-pid", str(os.getpid())], cwd=repo, stdout=subprocess.PIPE,
                            preexec_fn=pin)
    url = proc.stdout.readline().decode().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"upstream did not start: {url!r}")
    return proc, url


def raw_get(url, method, path):
    """One request on its own connection (Connection: close); returns the body."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
    return data.split(b"\r\n\r\n", 1)[1]


def upstream_summary(url):
    return json.loads(raw_get(url, "GET", "/_bench/streams?summary=1"))


def cpu():
    return time.process_time()


def bench_whole(adapter, calls):
    gc.collect()
    body = WHOLE_BODY
    t0, w0 = cpu(), time.perf_counter()
    for _ in range(calls):
        whole_call(adapter, PATH, body)
    return (cpu() - t0) / calls * 1e6, time.perf_counter() - w0


def run_stream(adapter, body, wait):
    call = adapter.open("POST", PATH, body)
    n = reads = 0
    read = call.read_some
    while True:
        data = read(wait)
        if data is None:
            break
        if data:
            reads += 1
            n += data.count(b"\n")
    return n, reads


def bench_stream(adapter, streams, body):
    gc.collect()
    wait = WAIT if adapter.waits else None
    lines = reads = 0
    t0, w0 = cpu(), time.perf_counter()
    for _ in range(streams):
        n, r = run_stream(adapter, body, wait)
        lines += n
        reads += r
    used = cpu() - t0
    if lines != streams * STREAM_LINES:
        raise AssertionError(f"{adapter.name}: {lines} lines, expected {streams * STREAM_LINES}")
    return used / lines * 1e6, time.perf_counter() - w0, reads / streams


def bench_concurrent(adapter, conc, rounds, body):
    """`conc` paced streams at once, each on its own pooled connection: the lone-token case under load."""
    gc.collect()
    wait = WAIT if adapter.waits else None
    totals = []

    def worker():
        lines = reads = 0
        for _ in range(rounds):
            n, r = run_stream(adapter, body, wait)
            lines += n
            reads += r
        totals.append((lines, reads))

    t0, w0 = cpu(), time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(conc)], raise_error=True)
    used = cpu() - t0
    lines = sum(t[0] for t in totals)
    reads = sum(t[1] for t in totals)
    if lines != conc * rounds * STREAM_LINES:
        raise AssertionError(f"{adapter.name}: {lines} lines, expected {conc * rounds * STREAM_LINES}")
    return used / lines * 1e6, time.perf_counter() - w0, reads / lines


def benchmark(args, names):
    proc, url = start_upstream(args.repo)
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {0})
    print(f"upstream {url} pid {proc.pid}; affinity self={sorted(os.sched_getaffinity(0))} "
          f"upstream={sorted(os.sched_getaffinity(proc.pid))}", flush=True)
    adapters = {}
    for cls in ADAPTERS:
        if cls.name not in names:
            continue
        try:
            adapters[cls.name] = cls(url)
        except ImportError as e:
            print(f"skip {cls.name}: {e}", flush=True)
    sbody, pbody = stream_body(), stream_body(args.paced_delay_ms)
    sizes = {}
    # warm up and check: answers right, connections reused
    for name, a in adapters.items():
        raw_get(url, "POST", "/_bench/reset")
        sizes[name] = len(whole_call(a, PATH, WHOLE_BODY))
        for _ in range(200):
            whole_call(a, PATH, WHOLE_BODY)
        for _ in range(3):
            run_stream(a, sbody, WAIT if a.waits else None)
        s = upstream_summary(url)
        print(f"warm {name:16s} whole body {sizes[name]} B, connections opened for 201 calls + 3 streams: "
              f"{s['connections_total'] - 1}", flush=True)
    results = {n: {"whole": [], "stream": [], "paced": [], "paced_reads": [], "stream_reads": [],
                   "concurrent": [], "concurrent_reads": []} for n in adapters}
    order = list(adapters)
    for rep in range(args.reps):
        k = rep % len(order)
        for name in order[k:] + order[:k]:
            a = adapters[name]
            calls = args.calls if name != "requests" else max(args.calls // 4, 1000)
            us = wall = us_s = wall_s = reads_s = us_p = wall_p = reads_p = float("nan")
            if "whole" in args.modes:
                us, wall = bench_whole(a, calls)
            results[name]["whole"].append(us)
            raw_get(url, "POST", "/_bench/reset")
            if "stream" in args.modes:
                us_s, wall_s, reads_s = bench_stream(a, args.streams, sbody)
            results[name]["stream"].append(us_s)
            results[name]["stream_reads"].append(reads_s)
            raw_get(url, "POST", "/_bench/reset")
            if "paced" in args.modes:
                us_p, wall_p, reads_p = bench_stream(a, args.paced_streams, pbody)
            results[name]["paced"].append(us_p)
            results[name]["paced_reads"].append(reads_p)
            raw_get(url, "POST", "/_bench/reset")
            us_c = wall_c = reads_c = float("nan")
            if "concurrent" in args.modes:
                us_c, wall_c, reads_c = bench_concurrent(a, args.concurrency, args.concurrent_rounds, pbody)
            results[name]["concurrent"].append(us_c)
            results[name]["concurrent_reads"].append(reads_c)
            print(f"rep {rep} {name:16s} whole {us:7.1f} µs ({wall:5.1f} s)  stream {us_s:6.2f} µs/chunk "
                  f"({reads_s:.0f} reads/stream)  paced {us_p:6.2f} µs/chunk ({reads_p:.0f} reads/stream, "
                  f"{wall_p:4.1f} s)  concurrent {us_c:6.2f} µs/chunk ({reads_c:.3f} reads/chunk, {wall_c:4.1f} s)",
                  flush=True)
    proc.terminate()
    proc.wait(10)
    for a in adapters.values():
        a.close()
    return summarize(results, sizes)


MEASURES = ("whole", "stream", "paced", "concurrent")


def summarize(results, sizes):
    base = results.get("gateway")
    out = {}
    for name, r in results.items():
        row = {"whole_body_bytes": sizes.get(name)}
        for m in MEASURES:
            v = r[m]
            row[m] = {"runs": [round(x, 2) for x in v], "best": min(v), "median": statistics.median(v),
                      "spread": (min(v), max(v))}
            if base:
                ratios = [x / b for x, b in zip(v, base[m])]
                row[m]["ratio_median"] = statistics.median(ratios)
                row[m]["ratio_spread"] = (min(ratios), max(ratios))
                row[m]["ratio_best"] = min(v) / min(base[m])
        row["stream_reads_per_stream"] = statistics.median(r["stream_reads"])
        row["paced_reads_per_stream"] = statistics.median(r["paced_reads"])
        row["concurrent_reads_per_chunk"] = statistics.median(r["concurrent_reads"])
        out[name] = row
    print("\n%-16s " % "client" + "  ".join("%-33s" % f"{m} µs" for m in MEASURES))
    print("%-16s " % "" + "  ".join("%-33s" % "best   median [min - max] ratio" for m in MEASURES))
    for name, row in out.items():
        cells = []
        for m in MEASURES:
            c = row[m]
            cells.append("%6.1f %6.1f [%5.1f-%5.1f] %4.2fx" % (c["best"], c["median"], c["spread"][0], c["spread"][1],
                                                              c.get("ratio_median", float("nan"))))
        print("%-16s %s" % (name, "  ".join(cells)))
    return out


# --------------------------------------------------------------------------------------------------
# Correctness against a raw-socket server
# --------------------------------------------------------------------------------------------------

class RawServer:
    """Answers each request with the next scripted response (bytes, or a function of the socket)."""

    def __init__(self, responses, close_after=None):
        self.responses = list(responses)
        self.close_after = close_after
        self.connections = 0
        self.requests = []
        self.received = b""
        self.eof_at = []
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def handle(self, sock, addr):
        self.connections += 1
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = sock.recv(65536)
                    if not d:
                        self.eof_at.append(time.monotonic())
                        return
                    self.received += d
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(buf) < length:
                    d = sock.recv(65536)
                    if not d:
                        return
                    self.received += d
                    buf += d
                buf = buf[length:]
                self.requests.append(head.split(b"\r\n")[0])
                if not self.responses:
                    sock.sendall(b"HTTP/1.1 500 Unscripted\r\nContent-Length: 0\r\n\r\n")
                    continue
                resp = self.responses.pop(0)
                if callable(resp):
                    resp(sock)
                else:
                    sock.sendall(resp)
                if self.close_after is not None and not self.responses:
                    gevent.sleep(self.close_after)
                    sock.close()
                    return
        except OSError:
            self.eof_at.append(time.monotonic())

    def stop(self):
        self.server.stop(timeout=0.5)


OK2 = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\nok"
HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def _read_all_some(call, wait=None):
    pieces = []
    while True:
        d = call.read_some(wait)
        if d is None:
            return b"".join(pieces)
        pieces.append(d)


def _then_hello(a, srv):
    """A second call on the same adapter must get 'hello' on the same connection."""
    body = a.open("GET", "/next", b"").read_all()
    return body == b"hello" and srv.connections == 1, f"next={body!r} conns={srv.connections}"


def check_dup_headers(a, srv):
    call = a.open("POST", PATH, b"{}")
    body = call.read_all()
    got = call.header_values("x-dup"), call.header_values("set-cookie")
    ok = got == (["one", "two"], ["a=1", "b=2"]) and body == b"ok"
    return ok, f"x-dup={got[0]} set-cookie={got[1]}"


def check_nobody(method, status_ok):
    def check(a, srv):
        call = a.open(method, PATH if method != "HEAD" else "/api/tags", b"" if method == "HEAD" else b"{}")
        body = call.read_all()
        ok, detail = _then_hello(a, srv)
        return ok and body == b"" and call.status == status_ok, f"status={call.status} body={body!r} {detail}"
    return check


def check_reuse(a, srv):
    body = a.open("POST", PATH, b"{}").read_all()
    ok, detail = _then_hello(a, srv)
    return ok and body == b"ok", f"body={body!r} {detail}"


def check_continue(a, srv):
    call = a.open("POST", PATH, b"{}")
    body = call.read_all()
    return call.status == 200 and body == b"ok", f"status={call.status} body={body!r}"


def check_refused_body(a, srv):
    """The answer is malformed: reading it must raise, not hand on a body."""
    t0 = time.monotonic()
    try:
        call = a.open("POST", PATH, b"{}")
        body = _read_all_some(call)
    except (ValueError, ConnectionError, OSError) as e:
        return True, f"refused: {type(e).__name__}: {str(e)[:70]}"
    except (TypeError, AttributeError, NameError, KeyError, AssertionError) as e:
        return False, f"adapter bug {type(e).__name__}: {str(e)[:70]}"
    except Exception as e:  # noqa: BLE001  (a library error type we did not map)
        return True, f"refused: {type(e).__name__}: {str(e)[:70]}"
    took = time.monotonic() - t0
    how = " (length ignored: read until the server closed)" if took > 0.25 else ""
    return False, f"ACCEPTED status={call.status} body={body!r}{how}"


def check_bad_path(path):
    def check(a, srv):
        try:
            call = a.open("POST", path, b"{}")
            call.read_all()
        except Refused as e:
            return srv.received == b"", f"refused before sending ({str(e)[:50]}); server got {len(srv.received)} B"
        except Exception as e:  # noqa: BLE001
            return srv.received == b"", f"{type(e).__name__}: {str(e)[:50]}; server got {len(srv.received)} B"
        line = srv.requests[0] if srv.requests else srv.received[:80]
        injected = b"X-Injected" in srv.received.split(b"\r\n\r\n")[0].split(b"\r\n", 1)[-1]
        return False, f"SENT request line {line!r}{' HEADER INJECTED' if injected else ''}"
    return check


def _stall(sock):
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"6\r\nfirst\n\r\n")
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    RawServer.last_eof = time.monotonic()
    raise OSError("client went away")


def check_interrupt(a, srv):
    call = a.open("POST", PATH, b"{}")
    first = call.read_some()
    out = {}

    def reader():
        try:
            while True:
                d = call.read_some()
                if d is None:
                    out["end"] = "end of body (None)"
                    return
        except BaseException as e:  # noqa: BLE001
            out["end"] = f"{type(e).__name__}"
        finally:
            out["t"] = time.monotonic()

    g = gevent.spawn(reader)
    gevent.sleep(0.2)
    t0 = time.monotonic()
    call.interrupt()
    g.join(2)
    if not g.dead:
        g.kill()
        return False, "reader still blocked 2 s after interrupt"
    took = (out["t"] - t0) * 1000
    gevent.sleep(0.05)
    eof = (getattr(RawServer, "last_eof", 0) - t0) * 1000
    try:
        call.close()
    except Exception:  # noqa: BLE001
        pass
    body = a.open("GET", "/next", b"").read_all()
    ok = took < 100 and body == b"hello" and 0 < eof < 100 and first == b"first\n"
    return ok, (f"reader ended in {took:.1f} ms ({out['end']}), server saw EOF after {eof:.1f} ms; "
                f"next call {body!r} on connection #{srv.connections}")


def _slow(sock):
    sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\na\n\r\n")
    gevent.sleep(0.3)
    sock.sendall(b"2\r\nb\n\r\n0\r\n\r\n")


def check_wait_timeout(a, srv):
    """A read whose wait elapses (the gateway's heartbeat/client-watch loop) must leave the stream usable."""
    call = a.open("POST", PATH, b"{}")
    pieces, silences = [], 0
    try:
        while True:
            d = call.read_some(0.1)
            if d is None:
                break
            if d == b"":
                silences += 1
            pieces.append(d)
    except Exception as e:  # noqa: BLE001
        return False, f"after {silences} elapsed wait(s): {type(e).__name__}: {str(e)[:60]}"
    body = b"".join(pieces)
    ok = body == b"a\nb\n" and silences >= 1
    try:
        nxt = a.open("GET", "/next", b"").read_all()
    except Exception as e:  # noqa: BLE001
        return False, f"body {body!r}, then next call failed: {type(e).__name__}"
    return ok and nxt == b"hello", f"body {body!r} after {silences} elapsed waits, next {nxt!r}"


def check_stale(a, srv):
    """The server closed an idle keep-alive connection: the next call retries on a new one."""
    a.open("POST", PATH, b"{}").read_all()
    gevent.sleep(0.1)
    body = a.open("POST", PATH, b"{}").read_all()
    return body == b"hello", f"second call {body!r}, connections {srv.connections}"


def _ok_then_close(sock):
    sock.sendall(OK2)
    gevent.sleep(0.02)
    sock.close()
    raise OSError("closed by the server")


def _chunked(size_line):
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\n" +
            b"abcdefghijklmnopqrstuvwxyz" + b"\r\n0\r\n\r\n")


def _clen(v):
    return b"HTTP/1.1 200 OK\r\nContent-Length: " + v + b"\r\n\r\nok"


CHECKS = [
    ("duplicate headers kept", [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
                                b"X-Dup: one\r\nX-Dup: two\r\n\r\nok"], None, check_dup_headers),
    ("200 + body, conn reused", [OK2, HELLO], None, check_reuse),
    ("204, no body, conn reused", [b"HTTP/1.1 204 No Content\r\n\r\n", HELLO], None, check_nobody("POST", 204)),
    ("304 + Content-Length, no body", [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 300\r\nETag: \"x\"\r\n\r\n",
                                       HELLO], None, check_nobody("POST", 304)),
    ("HEAD + Content-Length, no body", [b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n", HELLO], None,
     check_nobody("HEAD", 200)),
    ("100 Continue before head", [b"HTTP/1.1 100 Continue\r\n\r\n" + OK2], None, check_continue),
    ("chunk size '1a' (control)", [_chunked(b"1a")], None,
     lambda a, s: (lambda r: (not r[0], r[1]))(check_refused_body(a, s))),
    ("chunk size '+1a' refused", [_chunked(b"+1a")], 0.3, check_refused_body),
    ("chunk size '0x1a' refused", [_chunked(b"0x1a")], 0.3, check_refused_body),
    ("chunk size ' 1a' refused", [_chunked(b" 1a")], 0.3, check_refused_body),
    ("Content-Length '+2' refused", [_clen(b"+2")], 0.3, check_refused_body),
    ("Content-Length '0x2' refused", [_clen(b"0x2")], 0.3, check_refused_body),
    ("Content-Length '2a' refused", [_clen(b"2a")], 0.3, check_refused_body),
    ("Content-Length '2, 3' refused", [_clen(b"2, 3")], 0.3, check_refused_body),
    ("path with space refused", [OK2], None, check_bad_path("/api/generate x")),
    ("path with CR LF refused", [OK2], None, check_bad_path("/api/generate\r\nX-Injected: 1")),
    ("interrupt a blocked read", [_stall, HELLO], None, check_interrupt),
    ("elapsed wait leaves stream usable", [_slow, HELLO], None, check_wait_timeout),
    ("stale idle connection retried", [_ok_then_close, HELLO], None, check_stale),
]


def correctness(names):
    table = {}
    for cls in ADAPTERS:
        if cls.name not in names:
            continue
        table[cls.name] = {}
        for title, responses, close_after, check in CHECKS:
            srv = RawServer(responses, close_after)
            RawServer.last_eof = 0
            try:
                a = cls(srv.url)
            except ImportError as e:
                table[cls.name][title] = (None, f"not installed: {e}")
                srv.stop()
                continue
            try:
                with gevent.Timeout(3):
                    ok, detail = check(a, srv)
            except gevent.Timeout:
                ok, detail = False, "HUNG (3 s)"
            except Exception as e:  # noqa: BLE001
                ok, detail = False, f"error {type(e).__name__}: {str(e)[:90]}"
            finally:
                try:
                    a.close()
                except Exception:  # noqa: BLE001
                    pass
                srv.stop()
            table[cls.name][title] = (ok, detail)
            print(f"{cls.name:16s} {'PASS' if ok else 'FAIL'}  {title:34s} {detail}", flush=True)
    return table


# --------------------------------------------------------------------------------------------------

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_repo = os.environ.get("MLOPS_REPO") or os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=default_repo, help="checkout holding mlops_backend/ and benchmarks/")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--paced-streams", type=int, default=8)
    ap.add_argument("--paced-delay-ms", type=float, default=1.5)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--concurrent-rounds", type=int, default=3)
    ap.add_argument("--modes", default="whole,stream,paced,concurrent", help="which measures to run")
    ap.add_argument("--only", default="", help="comma-separated adapter names")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--no-checks", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small counts, to try the script")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.calls, args.streams, args.paced_streams, args.concurrent_rounds = 2, 2000, 20, 2, 1
    sys.path.insert(0, args.repo)
    names = set(args.only.split(",")) if args.only else {c.name for c in ADAPTERS}
    import importlib.metadata as md
    versions = {}
    for dist in ("gevent", "h11", "urllib3", "requests", "geventhttpclient", "httptools"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    print(f"python {sys.version.split()[0]}  {versions}", flush=True)
    out = {"versions": versions, "python": sys.version.split()[0], "args": vars(args)}
    if not args.no_checks:
        out["checks"] = correctness(names)
    if not args.no_bench:
        out["bench"] = benchmark(args, names)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
