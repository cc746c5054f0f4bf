"""A fast Ollama-compatible upstream used as the gateway's test double.

Single-threaded asyncio, ``asyncio.Protocol`` based, HTTP/1.1 with keep-alive.
Responses are assembled from pre-encoded byte templates that are cached per
(endpoint, model, token count, pacing) so that the hot path is a dict lookup
and one ``transport.write``.

Pacing is taken from the request's ``options``:

* ``num_predict``           number of tokens (default 10)
* ``bench_first_delay_ms``  delay before the first byte (headers included)
* ``bench_delay_ms``        delay between tokens
* ``bench_tag``             free text stored with the stream record
* ``bench_numbered``        when true, streamed token i reads ``"<i> "`` instead of ``"tok "``,
  so that a client can check that every chunk arrived, in order (the soak scenario S1)

Every streamed or paced request is recorded (start, first byte, end, time the
connection was seen closed, tokens written, completed/aborted).  The records
are served at ``GET /_bench/streams`` and cleared by ``POST /_bench/reset``.
Times are ``time.monotonic()`` values, which on Linux are comparable across
processes (CLOCK_MONOTONIC).

Run: ``python -m benchmarks.upstream --port 0`` prints the URL and serves.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time

TOKEN = "tok "
CREATED_AT = "2024-01-01T00:00:00Z"
VERSION = "0.12.6"
DEFAULT_NUM_PREDICT = 10
MAX_RECORDS = 250_000
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024

_now = time.monotonic
_dumps = json.dumps


def _jb(obj) -> bytes:
    return _dumps(obj, separators=(",", ":")).encode()


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}

STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
CHUNK_END = b"0\r\n\r\n"


def _response(status: int, body: bytes, ctype: bytes = b"application/json; charset=utf-8",
              close: bool = False, head: bool = False) -> bytes:
    out = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
        status, _REASONS.get(status, "Status").encode(), ctype, len(body),
        b"Connection: close\r\n" if close else b"")
    return out if head else out + body


TAGS_BODY = _jb({"models": [{
    "name": "bench:latest", "model": "bench:latest",
    "modified_at": "2024-01-01T00:00:00.000000000Z", "size": 1234567,
    "digest": "0123456789abcdef" * 4,
    "details": {"parent_model": "", "format": "gguf", "family": "bench",
                "families": ["bench"], "parameter_size": "1M",
                "quantization_level": "Q4_0"}}]})
VERSION_BODY = _jb({"version": VERSION})
PS_BODY = b'{"models":[]}'


class Plan:
    """Pre-encoded bytes for one (endpoint, model, n, pacing) combination."""

    __slots__ = ("n", "token_chunk", "final_chunk", "all_stream", "nonstream",
                 "first_s", "delay_s", "numbered", "tok_head", "tok_tail")

    def __init__(self, chat: bool, model: str, n: int, first_ms: float, delay_ms: float,
                 numbered: bool = False):
        self.n = n
        self.numbered = numbered
        self.first_s = first_ms / 1000.0
        self.delay_s = delay_ms / 1000.0
        eval_ns = int(max(n * delay_ms * 1e6, n * 10_000))
        stats = {"done_reason": "stop",
                 "total_duration": int(first_ms * 1e6) + eval_ns + 2_000_000,
                 "load_duration": 1_000_000, "prompt_eval_count": 8,
                 "prompt_eval_duration": 1_000_000, "eval_count": n,
                 "eval_duration": eval_ns}
        if chat:
            tok = {"model": model, "created_at": CREATED_AT,
                   "message": {"role": "assistant", "content": TOKEN}, "done": False}
            fin = {"model": model, "created_at": CREATED_AT,
                   "message": {"role": "assistant", "content": ""}, "done": True}
            whole = {"model": model, "created_at": CREATED_AT,
                     "message": {"role": "assistant", "content": TOKEN * n}, "done": True}
        else:
            tok = {"model": model, "created_at": CREATED_AT, "response": TOKEN, "done": False}
            fin = {"model": model, "created_at": CREATED_AT, "response": "", "done": True}
            whole = {"model": model, "created_at": CREATED_AT, "response": TOKEN * n,
                     "done": True}
        fin.update(stats)
        whole.update(stats)
        self.token_chunk = _chunk(_jb(tok) + b"\n")
        # numbered tokens: the line around the text, split once, so token i costs one format
        self.tok_head, _, self.tok_tail = (_jb(tok) + b"\n").partition(_jb(TOKEN)[1:-1])
        self.final_chunk = _chunk(_jb(fin) + b"\n") + CHUNK_END
        self.all_stream = STREAM_HEAD + self.tokens(0, n) + self.final_chunk
        self.nonstream = _response(200, _jb(whole))

    def tokens(self, start: int, k: int) -> bytes:
        """The chunks of tokens start .. start+k-1."""
        if not self.numbered:
            return self.token_chunk * k
        head, tail = self.tok_head, self.tok_tail
        return b"".join(_chunk(b"%s%d %s" % (head, i, tail)) for i in range(start, start + k))


class Record:
    """What the upstream knows about one generate/chat request."""

    __slots__ = ("id", "path", "stream", "n", "tag", "started", "first_byte", "ended",
                 "tokens", "completed", "aborted", "closed")

    def __init__(self, rid, path, stream, n, tag, started):
        self.id = rid
        self.path = path
        self.stream = stream
        self.n = n
        self.tag = tag
        self.started = started
        self.first_byte = None
        self.ended = None
        self.tokens = 0
        self.completed = False
        self.aborted = False
        self.closed = None

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}


class ServerState:
    def __init__(self):
        self.plans: dict = {}
        self.records: list = []
        self.next_id = 1
        self.dropped = 0
        self.fast_requests = 0
        self.requests = 0
        self.open_connections = 0
        self.peak_connections = 0
        self.connections_total = 0
        self.started = _now()

    def plan(self, chat, model, n, first_ms, delay_ms, numbered=False) -> Plan:
        key = (chat, model, n, first_ms, delay_ms, numbered)
        p = self.plans.get(key)
        if p is None:
            if len(self.plans) > 2048:
                self.plans.clear()
            p = self.plans[key] = Plan(chat, model, n, first_ms, delay_ms, numbered)
        return p

    def new_record(self, path, stream, n, tag, started) -> Record:
        rec = Record(self.next_id, path, stream, n, tag, started)
        self.next_id += 1
        if len(self.records) < MAX_RECORDS:
            self.records.append(rec)
        else:
            self.dropped += 1
        return rec

    def reset(self):
        self.records = []
        self.dropped = 0
        self.fast_requests = 0
        self.requests = 0
        self.peak_connections = self.open_connections
        self.connections_total = 0

    def report(self, query: dict) -> bytes:
        since = int(query.get("since", "0") or 0)
        recs = self.records
        active = sum(1 for r in recs if r.ended is None)
        out = {"now": _now(), "pid": os.getpid(), "last_id": self.next_id - 1,
               "requests": self.requests,
               "fast_requests": self.fast_requests, "recorded": len(recs),
               "dropped": self.dropped, "active": active,
               "completed": sum(1 for r in recs if r.completed),
               "aborted": sum(1 for r in recs if r.aborted),
               "tokens": sum(r.tokens for r in recs),
               "open_connections": self.open_connections,
               "peak_connections": self.peak_connections,
               "connections_total": self.connections_total}
        if query.get("summary") not in ("1", "true"):
            tag = query.get("tag")
            out["streams"] = [r.as_dict() for r in recs
                              if r.id > since and (tag is None or r.tag == tag)]
        return _jb(out)


def _parse_query(q: str) -> dict:
    out = {}
    for part in q.split("&"):
        if part:
            k, _, v = part.partition("=")
            out[k] = v
    return out


def _num(v, default):
    if v is None or isinstance(v, bool):
        return default
    if isinstance(v, (int, float)):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


class Pacer:
    """Writes one paced response; cancelled as soon as the connection is lost."""

    __slots__ = ("proto", "rec", "plan", "stream", "t0", "sent", "handle", "head_sent")

    def __init__(self, proto, rec, plan, stream, t0):
        self.proto = proto
        self.rec = rec
        self.plan = plan
        self.stream = stream
        self.t0 = t0
        self.sent = 0
        self.head_sent = False
        loop = proto.loop
        if stream:
            self.handle = loop.call_at(t0 + plan.first_s, self.step)
        else:
            last = max(plan.n - 1, 0)
            self.handle = loop.call_at(t0 + plan.first_s + last * plan.delay_s, self.finish_nonstream)

    def step(self):
        plan = self.plan
        now = self.proto.loop.time()
        n = plan.n
        if plan.delay_s > 0:
            due = min(n, int((now - self.t0 - plan.first_s) / plan.delay_s + 1e-9) + 1)
        else:
            due = n
        k = max(due - self.sent, 1 if n > self.sent else 0)
        parts = []
        if not self.head_sent:
            parts.append(STREAM_HEAD)
            self.head_sent = True
            self.rec.first_byte = _now()
        if k:
            parts.append(plan.tokens(self.sent, k))
            self.sent += k
        rec = self.rec
        rec.tokens = self.sent
        if self.sent >= n:
            parts.append(plan.final_chunk)
            self.proto.transport.write(b"".join(parts))
            rec.completed = True
            rec.ended = _now()
            self.handle = None
            self.proto.response_done(self)
            return
        self.proto.transport.write(b"".join(parts) if len(parts) > 1 else parts[0])
        self.handle = self.proto.loop.call_at(
            self.t0 + plan.first_s + self.sent * plan.delay_s, self.step)

    def finish_nonstream(self):
        rec = self.rec
        rec.first_byte = rec.ended = _now()
        rec.tokens = self.plan.n
        rec.completed = True
        self.handle = None
        self.proto.transport.write(self.plan.nonstream)
        self.proto.response_done(self)

    def abort(self, now):
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        rec = self.rec
        if not self.stream and self.plan.n:
            # tokens that a real server would have generated by now
            start = self.t0 + self.plan.first_s
            if now >= start:
                d = self.plan.delay_s
                rec.tokens = self.plan.n if d <= 0 else min(self.plan.n, int((now - start) / d) + 1)
        rec.aborted = True
        rec.ended = now
        rec.closed = now


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, state: ServerState, loop):
        self.state = state
        self.loop = loop
        self.transport = None
        self.buf = b""
        self.pacer = None
        self.close_after = False
        self.last_rec = None
        self.lost = False

    # -- connection lifecycle -------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        st = self.state
        st.open_connections += 1
        st.connections_total += 1
        if st.open_connections > st.peak_connections:
            st.peak_connections = st.open_connections

    def connection_lost(self, exc):
        now = _now()
        self.lost = True
        self.state.open_connections -= 1
        if self.pacer is not None:
            self.pacer.abort(now)
            self.pacer = None
        elif self.last_rec is not None and self.last_rec.closed is None:
            self.last_rec.closed = now
        self.buf = b""

    def eof_received(self):
        return False  # close our side too; connection_lost follows

    def data_received(self, data):
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.pacer is not None:
            if len(data) > MAX_BODY_BYTES:
                self.transport.close()
                return
            self.buf = data  # pipelined request waits for the current response
            return
        self._process(data)

    def response_done(self, pacer):
        self.pacer = None
        self.last_rec = pacer.rec
        if self.close_after:
            self.transport.close()
        elif self.buf and not self.lost:
            data, self.buf = self.buf, b""
            self._process(data)

    # -- HTTP parsing ------------------------------------------------------------
    def _fail(self, status, msg):
        self.transport.write(_response(status, _jb({"error": msg}), close=True))
        self.transport.close()
        self.buf = b""

    def _process(self, data):
        while data:
            i = data.find(b"\r\n\r\n")
            if i < 0:
                if len(data) > MAX_HEADER_BYTES:
                    self._fail(431, "request header too large")
                    return
                self.buf = data
                return
            lines = data[:i].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                self._fail(400, "malformed request line")
                return
            method, target, version = parts
            clen = 0
            chunked = False
            close = version == "HTTP/1.0"
            for line in lines[1:]:
                c = line.find(":")
                if c <= 0:
                    continue
                name = line[:c].lower()
                if name == "content-length":
                    try:
                        clen = int(line[c + 1:])
                    except ValueError:
                        self._fail(400, "bad content-length")
                        return
                elif name == "connection":
                    v = line[c + 1:].strip().lower()
                    if v == "close":
                        close = True
                    elif v == "keep-alive":
                        close = False
                elif name == "transfer-encoding":
                    chunked = "chunked" in line[c + 1:].lower()
            start = i + 4
            if chunked:
                got = _dechunk(data, start)
                if got is None:
                    if len(data) > MAX_BODY_BYTES:
                        self._fail(413, "body too large")
                        return
                    self.buf = data
                    return
                body, end = got
            else:
                if clen > MAX_BODY_BYTES:
                    self._fail(413, "body too large")
                    return
                end = start + clen
                if len(data) < end:
                    self.buf = data
                    return
                body = data[start:end]
            data = data[end:]
            self.state.requests += 1
            self.close_after = close
            self._dispatch(method, target, body)
            if self.pacer is not None:
                self.buf = data
                return
            if close:
                self.transport.close()
                return

    # -- routing -----------------------------------------------------------------
    def _dispatch(self, method, target, body):
        path, _, query = target.partition("?")
        w = self.transport.write
        close = self.close_after
        if path == "/api/generate" or path == "/api/chat":
            if method != "POST":
                w(_response(405, b"405 method not allowed", b"text/plain", close))
                return
            self._generate(path, body)
            return
        head = method == "HEAD"
        if method in ("GET", "HEAD"):
            if path == "/api/version":
                w(_response(200, VERSION_BODY, close=close, head=head))
            elif path == "/api/tags":
                w(_response(200, TAGS_BODY, close=close, head=head))
            elif path == "/api/ps":
                w(_response(200, PS_BODY, close=close, head=head))
            elif path == "/":
                w(_response(200, b"Ollama is running", b"text/plain; charset=utf-8", close, head))
            elif path == "/_bench/streams":
                w(_response(200, self.state.report(_parse_query(query)), close=close))
            else:
                w(_response(404, b"404 page not found", b"text/plain", close, head))
            return
        if method == "POST" and path == "/_bench/reset":
            self.state.reset()
            w(_response(200, b'{"ok":true}', close=close))
            return
        w(_response(404, b"404 page not found", b"text/plain", close))

    def _generate(self, path, body):
        close = self.close_after
        w = self.transport.write
        if not body:
            w(_response(400, _jb({"error": "missing request body"}), close=close))
            return
        try:
            req = json.loads(body)
        except ValueError as e:
            w(_response(400, _jb({"error": str(e)}), close=close))
            return
        if not isinstance(req, dict):
            w(_response(400, _jb({"error": "request body must be an object"}), close=close))
            return
        model = req.get("model")
        if not model or not isinstance(model, str):
            w(_response(400, _jb({"error": "model is required"}), close=close))
            return
        opts = req.get("options")
        if not isinstance(opts, dict):
            opts = {}
        n = int(_num(opts.get("num_predict"), DEFAULT_NUM_PREDICT))
        if n < 0:
            n = DEFAULT_NUM_PREDICT
        first_ms = max(0.0, float(_num(opts.get("bench_first_delay_ms"), 0)))
        delay_ms = max(0.0, float(_num(opts.get("bench_delay_ms"), 0)))
        stream = req.get("stream") is not False
        st = self.state
        numbered = bool(opts.get("bench_numbered")) and stream
        plan = st.plan(path == "/api/chat", model, n, first_ms, delay_ms, numbered)
        paced = first_ms > 0 or (delay_ms > 0 and n > 1)
        if not stream and not paced:
            st.fast_requests += 1
            w(plan.nonstream)
            return
        now = _now()
        tag = opts.get("bench_tag")
        rec = st.new_record(path, stream, n, tag if isinstance(tag, str) else None, now)
        if not paced:
            rec.first_byte = rec.ended = now
            rec.tokens = n
            rec.completed = True
            self.last_rec = rec
            w(plan.all_stream)
            return
        self.pacer = Pacer(self, rec, plan, stream, self.loop.time())


def _dechunk(data: bytes, pos: int):
    """Decode a chunked body starting at pos; None when incomplete."""
    out = []
    n = len(data)
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_txt = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_txt, 16)
        except ValueError:
            size = 0
        pos = eol + 2
        if size == 0:
            # skip trailers up to the blank line
            while True:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return b"".join(out), eol + 2
                pos = eol + 2
        if n < pos + size + 2:
            return None
        out.append(data[pos:pos + size])
        pos += size + 2


async def serve(host: str, port: int, ready=None, max_seconds: float = 0.0,
                parent_pid: int = 0, stop_event: asyncio.Event | None = None):
    loop = asyncio.get_running_loop()
    state = ServerState()
    server = await loop.create_server(lambda: UpstreamProtocol(state, loop), host, port,
                                      backlog=4096, reuse_address=True)
    actual = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(f"http://{host}:{actual}")
    stop = stop_event or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    deadline = loop.time() + max_seconds if max_seconds > 0 else None
    gc.freeze()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            if deadline is not None and loop.time() >= deadline:
                break
            if parent_pid and os.getppid() != parent_pid:
                break
    finally:
        server.close()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.upstream",
                                 description="Fast Ollama-compatible upstream for benchmarks")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--max-seconds", type=float, default=3600.0,
                    help="stop by itself after this long (0: never)")
    ap.add_argument("--parent-pid", type=int, default=0,
                    help="stop when this process is no longer our parent")
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        ap.error("loopback addresses only")

    def ready(url):
        print(url, flush=True)

    asyncio.run(serve(args.host, args.port, ready, args.max_seconds, args.parent_pid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
