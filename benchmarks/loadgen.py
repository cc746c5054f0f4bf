"""Raw-socket asyncio load client (stdlib only).

* ``NonStreamLoad``  - N keep-alive connections sending the same POST in a loop,
  checking that each answer is a 200 with a complete JSON body.
* ``run_stream`` / ``StreamSet`` / ``run_stream_pool`` - streaming requests whose
  body is either the gateway's SSE (``text/event-stream``) or Ollama's NDJSON;
  per stream: time to first token, tokens, whether it ended intact.
* cancellation: ``run_stream(..., close_after_tokens=K)`` or
  ``close_after_s=S`` closes the socket and records the close time.
* ``http_request`` - a small one-shot HTTP client for control calls.

All times are ``time.monotonic()`` values.
"""

from __future__ import annotations

import asyncio
import json
import time

_now = time.monotonic
_loads = json.loads


# --------------------------------------------------------------------------
# request building
# --------------------------------------------------------------------------
def build_request(method: str, path: str, host: str, port: int, body=None,
                  headers: dict | None = None, close: bool = False) -> bytes:
    if body is None:
        payload = b""
    elif isinstance(body, (bytes, bytearray)):
        payload = bytes(body)
    else:
        payload = json.dumps(body, separators=(",", ":")).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    hdrs = dict(headers or {})
    if payload and not any(k.lower() == "content-type" for k in hdrs):
        hdrs["Content-Type"] = "application/json"
    for k, v in hdrs.items():
        lines.append(f"{k}: {v}")
    if payload or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(payload)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


# --------------------------------------------------------------------------
# incremental HTTP/1.1 response reader
# --------------------------------------------------------------------------
_HEAD, _CSIZE, _CDATA, _CCRLF, _TRAILER, _LENGTH, _EOF, _DONE = range(8)


class ResponseReader:
    """Feeds raw bytes; calls on_head(status, headers) then on_body(bytes).

    ``feed`` returns True once the whole response has been read.  Bytes after
    the end of the response are kept in ``leftover``.
    """

    __slots__ = ("on_head", "on_body", "buf", "phase", "remaining", "status",
                 "headers", "keep_alive", "leftover", "head_only")

    def __init__(self, on_head=None, on_body=None, head_only: bool = False):
        self.on_head = on_head
        self.on_body = on_body
        self.buf = b""
        self.phase = _HEAD
        self.remaining = 0
        self.status = 0
        self.headers: dict = {}
        self.keep_alive = True
        self.leftover = b""
        self.head_only = head_only

    def _body(self, b: bytes):
        if b and self.on_body is not None:
            self.on_body(b)

    def feed(self, data: bytes) -> bool:
        buf = self.buf + data if self.buf else data
        self.buf = b""
        while True:
            ph = self.phase
            if ph == _HEAD:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    self.buf = buf
                    return False
                lines = buf[:i].decode("latin-1").split("\r\n")
                buf = buf[i + 4:]
                status_line = lines[0].split(" ", 2)
                try:
                    self.status = int(status_line[1])
                except (IndexError, ValueError):
                    self.status = -1
                hdrs = {}
                for line in lines[1:]:
                    c = line.find(":")
                    if c > 0:
                        hdrs[line[:c].strip().lower()] = line[c + 1:].strip()
                self.headers = hdrs
                conn = hdrs.get("connection", "").lower()
                self.keep_alive = not (conn == "close" or status_line[0] == "HTTP/1.0"
                                       and conn != "keep-alive")
                if self.on_head is not None:
                    self.on_head(self.status, hdrs)
                if self.status == 100:  # interim response: start over
                    self.phase = _HEAD
                    continue
                if self.head_only or self.status in (204, 304):
                    self.phase = _DONE
                elif "chunked" in hdrs.get("transfer-encoding", "").lower():
                    self.phase = _CSIZE
                elif "content-length" in hdrs:
                    try:
                        self.remaining = int(hdrs["content-length"])
                    except ValueError:
                        self.remaining = 0
                    self.phase = _LENGTH if self.remaining > 0 else _DONE
                else:
                    self.phase = _EOF
                    self.keep_alive = False
            elif ph == _LENGTH:
                r = self.remaining
                if len(buf) < r:
                    self.remaining = r - len(buf)
                    self._body(buf)
                    return False
                self._body(buf[:r])
                buf = buf[r:]
                self.remaining = 0
                self.phase = _DONE
            elif ph == _CSIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    self.buf = buf
                    return False
                try:
                    size = int(buf[:i].split(b";", 1)[0].strip() or b"0", 16)
                except ValueError:
                    size = 0
                buf = buf[i + 2:]
                if size == 0:
                    self.phase = _TRAILER
                else:
                    self.remaining = size
                    self.phase = _CDATA
            elif ph == _CDATA:
                r = self.remaining
                if len(buf) < r:
                    self.remaining = r - len(buf)
                    self._body(buf)
                    return False
                self._body(buf[:r])
                buf = buf[r:]
                self.phase = _CCRLF
            elif ph == _CCRLF:
                if len(buf) < 2:
                    self.buf = buf
                    return False
                buf = buf[2:]
                self.phase = _CSIZE
            elif ph == _TRAILER:
                i = buf.find(b"\r\n")
                if i < 0:
                    self.buf = buf
                    return False
                if i == 0:
                    buf = buf[2:]
                    self.phase = _DONE
                else:
                    buf = buf[i + 2:]
            elif ph == _EOF:
                self._body(buf)
                return False
            else:  # _DONE
                self.leftover = buf
                return True

    def eof(self) -> bool:
        """The peer closed; True if that completes the response."""
        if self.phase == _EOF:
            self.phase = _DONE
            return True
        return self.phase == _DONE


# --------------------------------------------------------------------------
# SSE parsing
# --------------------------------------------------------------------------
class SSEParser:
    """Incremental text/event-stream parser.

    ``feed(bytes)`` returns the list of complete events as (event_type, data)
    tuples.  Comment lines (starting with ':', used as heartbeats) are
    counted in ``comments`` and never produce an event.  Lines may end with
    LF, CRLF or CR.
    """

    __slots__ = ("_buf", "_data", "_event", "comments")

    def __init__(self):
        self._buf = b""
        self._data: list = []
        self._event = ""
        self.comments = 0

    def feed(self, chunk: bytes) -> list:
        buf = self._buf + chunk if self._buf else chunk
        tail = b""
        if b"\r" in buf:
            if buf.endswith(b"\r"):  # may be the first half of CRLF
                buf, tail = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = lines.pop() + tail
        events = []
        for line in lines:
            if not line:
                if self._data:
                    events.append((self._event or "message", "\n".join(self._data)))
                    self._data = []
                self._event = ""
                continue
            if line[0] == 58:  # ':'
                self.comments += 1
                continue
            field, sep, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data.append(value.decode("utf-8", "replace"))
            elif field == b"event":
                self._event = value.decode("utf-8", "replace")
            # id / retry / unknown fields: ignored
        return events


class StreamTally:
    """Token accounting for one stream, fed SSE events or NDJSON lines."""

    __slots__ = ("tokens", "text_len", "done", "error", "final", "t_first_token",
                 "t_last_token", "events", "bad", "numbered", "disorder", "next_number")

    def __init__(self, numbered: bool = False):
        self.numbered = numbered  # tokens read "<i> " (upstream option bench_numbered)
        self.disorder = 0  # numbered tokens that were not the next number
        self.next_number = 0  # resynchronised on a gap, so one lost chunk counts once
        self.tokens = 0
        self.text_len = 0
        self.done = False
        self.error = None
        self.final = None
        self.t_first_token = None
        self.t_last_token = None
        self.events = 0
        self.bad = 0

    def _token(self, text):
        now = _now()
        if self.t_first_token is None:
            self.t_first_token = now
        self.t_last_token = now
        if self.numbered:
            try:
                number = int(text)
            except ValueError:
                number = -1
            if number != self.next_number:
                self.disorder += 1
            self.next_number = number + 1
        self.tokens += 1
        self.text_len += len(text)

    def sse_event(self, event: str, data: str):
        self.events += 1
        try:
            obj = _loads(data)
        except ValueError:
            self.bad += 1
            return
        if not isinstance(obj, dict):
            self.bad += 1
            return
        err = obj.get("error")
        if err or event == "error":
            self.error = err or obj
            self.done = True
            self.final = obj
            return
        done = obj.get("done") is True
        text = obj.get("text")
        if isinstance(text, str) and (text or not done):
            self._token(text)
        if done:
            self.done = True
            self.final = obj

    def ndjson_line(self, line: bytes):
        self.events += 1
        try:
            obj = _loads(line)
        except ValueError:
            self.bad += 1
            return
        if not isinstance(obj, dict):
            self.bad += 1
            return
        if obj.get("error"):
            self.error = obj["error"]
            self.done = True
            self.final = obj
            return
        text = obj.get("response")
        if text is None:
            msg = obj.get("message")
            text = msg.get("content") if isinstance(msg, dict) else None
        done = obj.get("done") is True
        if isinstance(text, str) and (text or not done):
            self._token(text)
        if done:
            self.done = True
            self.final = obj


def parse_sse_bytes(data: bytes, chunk_size: int = 0) -> tuple:
    """Parse a complete SSE byte string (optionally fed in pieces): (tally, parser)."""
    p = SSEParser()
    t = StreamTally()
    step = chunk_size or len(data) or 1
    for i in range(0, len(data), step):
        for ev, d in p.feed(data[i:i + step]):
            t.sse_event(ev, d)
    return t, p


# --------------------------------------------------------------------------
# streaming client
# --------------------------------------------------------------------------
class StreamResult:
    __slots__ = ("index", "status", "content_type", "t_start", "t_sent", "t_headers",
                 "t_first_byte", "t_first_token", "t_last_token", "t_close", "t_end",
                 "tokens", "text_len", "done", "error", "conn_error", "body_complete",
                 "closed_by", "timed_out", "heartbeats", "events", "bad", "final",
                 "expected", "intact", "body_excerpt", "disorder")

    def __init__(self, index=0, expected=None):
        self.index = index
        self.expected = expected
        self.status = 0
        self.content_type = ""
        self.t_start = self.t_sent = self.t_headers = self.t_first_byte = None
        self.t_first_token = self.t_last_token = self.t_close = self.t_end = None
        self.tokens = 0
        self.text_len = 0
        self.done = False
        self.error = None
        self.conn_error = None
        self.body_complete = False
        self.closed_by = None
        self.timed_out = False
        self.heartbeats = 0
        self.events = 0
        self.bad = 0
        self.final = None
        self.intact = False
        self.body_excerpt = None
        self.disorder = 0

    @property
    def ttft(self):
        if self.t_first_token is None or self.t_sent is None:
            return None
        return self.t_first_token - self.t_sent

    def to_dict(self):
        d = {k: getattr(self, k) for k in self.__slots__}
        d["ttft"] = self.ttft
        return d


class StreamStats:
    """Live counters shared by the streams of a StreamSet."""

    def __init__(self):
        self.connecting = 0
        self.connected = 0
        self.headers = 0
        self.first_token = 0
        self.finished = 0
        self.tokens = 0


class _StreamConn(asyncio.Protocol):
    def __init__(self, res: StreamResult, request: bytes, fut, close_after_tokens,
                 close_after_s, abort_close, stats, numbered=False):
        self.res = res
        self.request = request
        self.fut = fut
        self.close_after_tokens = close_after_tokens
        self.close_after_s = close_after_s
        self.abort_close = abort_close
        self.stats = stats
        self.transport = None
        self.tally = StreamTally(numbered)
        self.sse = None
        self.mode = None  # "sse" | "ndjson" | "raw"
        self.nd_buf = b""
        self.raw = []
        self.timer = None
        self.reader = ResponseReader(self._on_head, self._on_body)

    def connection_made(self, transport):
        self.transport = transport
        res = self.res
        if self.stats:
            self.stats.connected += 1
        res.t_sent = _now()
        transport.write(self.request)
        if self.close_after_s is not None:
            self.timer = asyncio.get_running_loop().call_later(
                self.close_after_s, self.client_close)

    def _on_head(self, status, headers):
        res = self.res
        res.t_headers = _now()
        res.status = status
        ct = headers.get("content-type", "")
        res.content_type = ct
        if self.stats:
            self.stats.headers += 1
        if status == 200 and "text/event-stream" in ct:
            self.mode = "sse"
            self.sse = SSEParser()
        elif status == 200 and "ndjson" in ct:
            self.mode = "ndjson"
        else:
            self.mode = "raw"

    def _on_body(self, data):
        mode = self.mode
        if mode == "sse":
            tally = self.tally
            for ev, d in self.sse.feed(data):
                tally.sse_event(ev, d)
        elif mode == "ndjson":
            buf = self.nd_buf + data if self.nd_buf else data
            lines = buf.split(b"\n")
            self.nd_buf = lines.pop()
            tally = self.tally
            for line in lines:
                if line.strip():
                    tally.ndjson_line(line)
        else:
            if sum(len(x) for x in self.raw) < 65536:
                self.raw.append(data)

    def data_received(self, data):
        res = self.res
        if res.t_first_byte is None:
            res.t_first_byte = _now()
        if res.closed_by is not None:
            return
        before = self.tally.tokens
        complete = self.reader.feed(data)
        tally = self.tally
        if tally.tokens and not before and self.stats:
            self.stats.first_token += 1
            self.stats.tokens += tally.tokens
        elif self.stats:
            self.stats.tokens += tally.tokens - before
        if complete:
            res.body_complete = True
            res.closed_by = "self"
            self.transport.close()
            return
        cat = self.close_after_tokens
        if cat is not None and tally.tokens >= cat:
            self.client_close()

    def eof_received(self):
        if self.reader.eof():
            self.res.body_complete = True
        return False

    def client_close(self):
        res = self.res
        if res.closed_by is not None or self.transport is None:
            return
        res.t_close = _now()
        res.closed_by = "client"
        if self.abort_close:
            self.transport.abort()
        else:
            self.transport.close()

    def connection_lost(self, exc):
        res = self.res
        res.t_end = _now()
        if self.timer is not None:
            self.timer.cancel()
        if res.closed_by is None:
            res.closed_by = "server"
        if exc is not None and res.conn_error is None and res.closed_by == "server":
            res.conn_error = repr(exc)
        if self.mode == "ndjson" and self.nd_buf.strip():
            self.tally.ndjson_line(self.nd_buf)
            self.nd_buf = b""
        _finalize(res, self.tally, self.sse, self.raw)
        if self.stats:
            self.stats.finished += 1
        if not self.fut.done():
            self.fut.set_result(res)


def _finalize(res: StreamResult, tally: StreamTally, sse, raw):
    res.tokens = tally.tokens
    res.text_len = tally.text_len
    res.done = tally.done
    res.error = tally.error
    res.final = tally.final
    res.t_first_token = tally.t_first_token
    res.t_last_token = tally.t_last_token
    res.events = tally.events
    res.bad = tally.bad
    res.disorder = tally.disorder
    res.heartbeats = sse.comments if sse is not None else 0
    if raw:
        body = b"".join(raw)
        res.body_excerpt = body[:500].decode("utf-8", "replace")
        if res.error is None and res.status != 200:
            try:
                res.error = _loads(body)
            except ValueError:
                res.error = res.body_excerpt
    res.intact = (res.status == 200 and res.done and res.error is None and res.bad == 0
                  and res.disorder == 0
                  and (res.expected is None or res.tokens == res.expected))


async def run_stream(host: str, port: int, request: bytes, expected_tokens=None, *,
                     close_after_tokens=None, close_after_s=None, abort_close=False,
                     timeout: float = 60.0, index: int = 0, stats: StreamStats | None = None,
                     numbered: bool = False) -> StreamResult:
    """One streaming request on a fresh connection; ``numbered``: check tokens are 0, 1, 2..."""
    loop = asyncio.get_running_loop()
    res = StreamResult(index, expected_tokens)
    res.t_start = _now()
    fut = loop.create_future()
    conn = _StreamConn(res, request, fut, close_after_tokens, close_after_s, abort_close, stats,
                       numbered)
    if stats:
        stats.connecting += 1
    try:
        await asyncio.wait_for(loop.create_connection(lambda: conn, host, port), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        res.conn_error = repr(e) or type(e).__name__
        res.t_end = _now()
        if stats:
            stats.finished += 1
        return res
    remaining = max(0.1, timeout - (_now() - res.t_start))
    try:
        await asyncio.wait_for(asyncio.shield(fut), remaining)
    except asyncio.TimeoutError:
        res.timed_out = True
        if res.closed_by is None:
            res.closed_by = "timeout"
        conn.transport.abort()
        await fut
    except asyncio.CancelledError:
        if conn.transport is not None:
            conn.transport.abort()
        raise
    return res


class StreamSet:
    """Open ``n`` streams, in batches, and keep live counters in ``stats``."""

    def __init__(self, host, port, request, n, expected_tokens=None, *, batch=0,
                 batch_interval=0.0, timeout=60.0, close_after_tokens=None,
                 close_after_s=None):
        self.host = host
        self.port = port
        self.request = request
        self.n = n
        self.expected = expected_tokens
        self.batch = batch or n
        self.batch_interval = batch_interval
        self.timeout = timeout
        self.close_after_tokens = close_after_tokens
        self.close_after_s = close_after_s
        self.stats = StreamStats()
        self.results: list = []
        self.t_all_started = None

    def _req(self, i):
        return self.request(i) if callable(self.request) else self.request

    async def run(self) -> list:
        tasks = []
        for i in range(self.n):
            if i and i % self.batch == 0 and self.batch_interval > 0:
                await asyncio.sleep(self.batch_interval)
            tasks.append(asyncio.create_task(run_stream(
                self.host, self.port, self._req(i), self.expected,
                close_after_tokens=self.close_after_tokens, close_after_s=self.close_after_s,
                timeout=self.timeout, index=i, stats=self.stats)))
        self.t_all_started = _now()
        try:
            self.results = list(await asyncio.gather(*tasks))
        except asyncio.CancelledError:
            for t in tasks:
                t.cancel()
            raise
        return self.results


async def run_stream_pool(host, port, request, concurrency, duration, expected_tokens=None,
                          timeout=60.0) -> list:
    """Keep ``concurrency`` streams in flight for ``duration`` seconds."""
    results = []
    end = _now() + duration

    async def worker(w):
        while _now() < end:
            results.append(await run_stream(host, port, request, expected_tokens,
                                            timeout=timeout, index=len(results)))

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return results


# --------------------------------------------------------------------------
# non-streaming keep-alive load
# --------------------------------------------------------------------------
def default_validate(body: bytes) -> bool:
    try:
        obj = _loads(body)
    except ValueError:
        return False
    return (isinstance(obj, dict) and obj.get("done") is True
            and isinstance(obj.get("response"), str))


class _LoadConn(asyncio.Protocol):
    __slots__ = ("load", "transport", "reader", "body", "t0")

    def __init__(self, load):
        self.load = load
        self.transport = None
        self.reader = None
        self.body = []
        self.t0 = 0.0

    def connection_made(self, transport):
        self.transport = transport
        self.load.live += 1
        self.send()

    def send(self):
        self.body = []
        self.reader = ResponseReader(None, self.body.append)
        self.t0 = _now()
        self.transport.write(self.load.request)

    def data_received(self, data):
        if self.reader.feed(data):
            self.complete()

    def complete(self):
        load = self.load
        rd = self.reader
        load.record(rd.status, b"".join(self.body), _now() - self.t0)
        if not rd.keep_alive:
            self.transport.close()
        elif load.running:
            self.send()
        else:
            self.transport.close()

    def eof_received(self):
        if self.reader is not None and self.reader.eof():
            self.complete()
        return False

    def connection_lost(self, exc):
        load = self.load
        load.live -= 1
        if load.running and self.reader is not None and self.reader.phase != _DONE:
            load.record(-2, b"", 0.0)  # request in flight lost with the connection
        load.conn_lost(self, exc)


class NonStreamLoad:
    """N keep-alive connections repeating one request as fast as answers come."""

    def __init__(self, host, port, request: bytes, connections: int, validate=default_validate):
        self.host = host
        self.port = port
        self.request = request
        self.connections = connections
        self.validate = validate
        self.running = False
        self.live = 0
        self.reconnects = 0
        self.connect_errors = 0
        self._pending = set()
        self.reset()

    def reset(self):
        self.ok = 0
        self.bad = 0
        self.statuses: dict = {}
        self.bad_samples: list = []
        self.latencies: list = []
        self.t_reset = _now()

    def record(self, status, body, latency):
        if status == 200 and self.validate(body):
            self.ok += 1
            self.latencies.append(latency)
        else:
            self.bad += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if len(self.bad_samples) < 5:
                self.bad_samples.append({"status": status,
                                         "body": body[:300].decode("utf-8", "replace")})

    async def _connect(self):
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _LoadConn(self), self.host, self.port)
        except OSError:
            self.connect_errors += 1
            if self.running:
                await asyncio.sleep(0.05)
                self._spawn()

    def _spawn(self):
        t = asyncio.get_running_loop().create_task(self._connect())
        self._pending.add(t)
        t.add_done_callback(self._pending.discard)

    def conn_lost(self, conn, exc):
        if self.running:
            self.reconnects += 1
            self._spawn()

    async def start(self):
        self.running = True
        self.reset()
        for _ in range(self.connections):
            self._spawn()
        await asyncio.sleep(0)

    def snapshot(self) -> dict:
        el = _now() - self.t_reset
        lat = sorted(self.latencies)
        return {"ok": self.ok, "bad": self.bad, "elapsed": el,
                "rps": self.ok / el if el > 0 else 0.0,
                "latency_p50_ms": percentile(lat, 50) * 1000 if lat else None,
                "latency_p99_ms": percentile(lat, 99) * 1000 if lat else None,
                "statuses": dict(self.statuses), "bad_samples": list(self.bad_samples),
                "reconnects": self.reconnects, "connect_errors": self.connect_errors}

    async def stop(self, grace: float = 2.0):
        self.running = False
        end = _now() + grace
        while self.live > 0 and _now() < end:
            await asyncio.sleep(0.01)
        for t in list(self._pending):
            t.cancel()


async def nonstream_load(host, port, request, connections, duration, warmup=0.0,
                         validate=default_validate) -> dict:
    load = NonStreamLoad(host, port, request, connections, validate)
    await load.start()
    if warmup:
        await asyncio.sleep(warmup)
        load.reset()
    await asyncio.sleep(duration)
    snap = load.snapshot()
    await load.stop()
    return snap


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def percentile(sorted_values, p):
    """Linear-interpolated percentile of an already sorted list."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return sorted_values[0]
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


async def http_request(host, port, method, path, body=None, headers=None, timeout=10.0):
    """One request on a fresh connection; returns (status, headers, body bytes)."""
    async def go():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(build_request(method, path, host, port, body, headers, close=True))
            chunks = []
            rr = ResponseReader(None, chunks.append, head_only=(method == "HEAD"))
            while True:
                data = await reader.read(65536)
                if not data:
                    rr.eof()
                    break
                if rr.feed(data):
                    break
            return rr.status, rr.headers, b"".join(chunks)
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)
