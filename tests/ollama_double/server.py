"""OllamaDouble: the server's lifecycle, script, records and control endpoints."""

from __future__ import annotations

import copy
import errno
import ipaddress
import json
import socketserver
import ssl
import sys
import threading
import time
from http.server import ThreadingHTTPServer

from .anthropic_layer import AnthropicRoutes
from .audio_layer import TranscriptionRoutes
from .gojson import FOREVER
from .native import NativeRoutes
from .openai_layer import OpenAIRoutes
from .responses_layer import ResponsesRoutes
from .transport import ApiError, Transport, raw_shutdown
from .wire import DEFAULT_MODELS, dumps, make_model, name_key, parse_name, ps_entry

SCRIPT_DEFAULTS = {"tokens": None, "thinking": None, "first_delay": 0.0, "delay": 0.0, "fault": None, "fault_after": 2,
                   "framing": "odd", "big_line_bytes": 0, "verbose_show_bytes": 0}
FAULTS = (None, "status_500", "busy", "bad_request", "drop", "malformed", "error_line", "hang", "slow_version")
FRAMINGS = ("odd", "go")
KEEP_ALIVE = 300 * 1_000_000_000  # OLLAMA_KEEP_ALIVE's default, 5m, in nanoseconds


class Handler(NativeRoutes, OpenAIRoutes, ResponsesRoutes, AnthropicRoutes, TranscriptionRoutes, Transport):
    """The request handler: Ollama's routes (as registered in server/routes.go) plus the control endpoints.

    Besides /api/* (native.py) and the OpenAI-compatible /v1 routes (openai_layer.py), it serves the routes Ollama
    added for other APIs: POST /v1/responses (responses_layer.py), POST /v1/messages, Anthropic's Messages API
    (anthropic_layer.py: Anthropic's error shape, `event:`/`data:` SSE records flushed one by one), and
    POST /v1/audio/transcriptions (audio_layer.py: multipart/form-data in, `{"text": ...}` or plain text out, all
    at the end). Each module's docstring lists the facts it re-implements.
    """

    routes = {
        "/": {"HEAD": "api_root", "GET": "api_root"},
        "/api/version": {"HEAD": "api_version", "GET": "api_version"},
        "/api/status": {"GET": "api_status"},
        "/api/pull": {"POST": "api_pull"}, "/api/push": {"POST": "api_push"},
        "/api/tags": {"HEAD": "api_tags", "GET": "api_tags"},
        "/api/show": {"POST": "api_show"}, "/api/delete": {"DELETE": "api_delete"},
        "/api/me": {"POST": "api_me"}, "/api/signout": {"POST": "api_signout"},
        "/api/user/keys/:encodedKey": {"DELETE": "api_signout"},
        "/api/create": {"POST": "api_create"},
        "/api/blobs/:digest": {"POST": "api_blob_post", "HEAD": "api_blob_head"},
        "/api/copy": {"POST": "api_copy"},
        "/api/experimental/web_search": {"POST": "api_web"}, "/api/experimental/web_fetch": {"POST": "api_web"},
        "/api/experimental/model-recommendations": {"GET": "api_recommendations"},
        "/api/ps": {"GET": "api_ps"}, "/api/generate": {"POST": "api_generate"}, "/api/chat": {"POST": "api_chat"},
        "/api/embed": {"POST": "api_embed"}, "/api/embeddings": {"POST": "api_embeddings"},
        "/v1/chat/completions": {"POST": "v1_chat"}, "/v1/completions": {"POST": "v1_completions"},
        "/v1/embeddings": {"POST": "v1_embeddings"}, "/v1/models": {"GET": "v1_models"},
        "/v1/models/:model": {"GET": "v1_model"},
        "/v1/responses": {"POST": "v1_responses"},
        "/v1/audio/transcriptions": {"POST": "v1_transcriptions"},
        "/v1/messages": {"POST": "v1_messages"},
    }
    control_routes = {
        "/_double/script": {"POST": "ctl_script"}, "/_double/reset": {"POST": "ctl_reset"},
        "/_double/streams": {"GET": "ctl_streams"}, "/_double/requests": {"GET": "ctl_requests"},
        "/_double/loaded": {"GET": "ctl_loaded", "POST": "ctl_loaded"},
    }

    def ctl_script(self):
        try:
            body = json.loads(self.raw or b"{}")
            if not isinstance(body, dict):
                raise TypeError("the script must be a JSON object")
            self.double.script(**body)
        except (TypeError, ValueError) as err:
            raise ApiError(400, str(err)) from None
        self.send_json({"script": self.double._snapshot()})

    def ctl_reset(self):
        self.double.reset()
        self.send_json({"reset": True})

    def ctl_streams(self):
        with self.double._lock:
            self.send_body(200, dumps(self.double.streams))

    def ctl_requests(self):
        with self.double._lock:
            self.send_body(200, dumps(self.double.requests))

    def ctl_loaded(self):
        # POST {"loaded": ["name", ...]} (or a bare list; null: the default) is set_loaded(); GET reads it back.
        if self.command == "POST":
            try:
                body = json.loads(self.raw or b"null")
                names = body.get("loaded") if isinstance(body, dict) else body
                self.double.set_loaded(names)
            except (TypeError, ValueError) as err:
                raise ApiError(400, str(err)) from None
        self.send_json({"loaded": self.double.loaded, "installed": [m["name"] for m in list(self.double.models)]})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # so `--port 11434` can be restarted at once
    request_queue_size = 512  # the default backlog of 5 drops SYNs under benchmark load

    def __init__(self, address, double, verbose=False, tls=None):
        self.double, self.verbose, self.tls = double, verbose, tls
        try:
            self.loopback = ipaddress.ip_address(address[0]).is_loopback  # Ollama checks Host only then
        except ValueError:
            self.loopback = address[0] == "localhost"
        self.active, self.active_lock = {}, threading.Lock()
        super().__init__(address, Handler)

    def server_bind(self):
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall in sandboxes.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self):
        sock, address = super().get_request()
        if self.tls is not None:
            # The handshake happens in the connection's own thread (Transport.setup), never in the accept loop.
            try:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError):
                sock.close()
                raise OSError("TLS wrap failed") from None
        return sock, address

    def process_request(self, request, client_address):
        # Track each connection so stop() can wake idle keep-alive readers and join their threads.
        thread = threading.Thread(target=self._serve, args=(request, client_address), daemon=True)
        with self.active_lock:
            self.active[request] = thread
        with self.double._lock:
            self.double.connections += 1
        thread.start()

    def shutdown_request(self, request):
        # Go's tls.Conn.Close sends close_notify before closing; do the same (without waiting for the peer's).
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(0.0)
                request.unwrap()
            except (OSError, ValueError):
                pass
        super().shutdown_request(request)

    def _serve(self, request, client_address):
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self.active_lock:
                self.active.pop(request, None)

    def handle_error(self, request, client_address):
        # Clients hanging up is routine here; print only real bugs.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close_connections(self) -> list:
        """Shut every open connection down; return the threads serving them."""
        with self.active_lock:
            items = list(self.active.items())
        for sock, _ in items:
            raw_shutdown(sock)  # the TCP connection itself: a TLS one gets no close_notify, as when a server dies
        return [thread for _, thread in items]


class OllamaDouble:
    """An Ollama-compatible HTTP server on loopback, with scripted pacing and faults, recording what it saw.

    models   the installed models (dicts for wire.make_model; default: wire.DEFAULT_MODELS). `double.models`
             is the live list /api/tags shows (pulls, copies and deletes change it; reset() restores it).
    loaded   names of installed models that /api/ps lists when the server comes up (default None: the first
             installed completion model, whichever that is at the time). See set_loaded() and `loaded`.
    port     0 picks a free port on the first start(); the double keeps it, so stop() then start() serves
             again at the same `url`.
    tls      an ssl.SSLContext for the server side (see tls.make_tls): the double then speaks HTTPS and
             `url` is https://HOST:PORT.

    Times in records (`time`, `started`, `closed_at`) are time.monotonic() values; on Linux they are
    comparable across processes. `connections` counts the TCP connections accepted (since reset()).
    """

    def __init__(self, models=None, *, loaded=None, host: str = "127.0.0.1", port: int = 0, verbose: bool = False,
                 tls: ssl.SSLContext | None = None):
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise TypeError(f"tls must be an ssl.SSLContext (server side), not {type(tls).__name__}")
        self._catalogue = [make_model(m) for m in (DEFAULT_MODELS if models is None else models)]
        self.models = copy.deepcopy(self._catalogue)
        self.host, self.port, self.verbose, self.tls = host, port, verbose, tls
        self.url = None
        self.requests, self.streams = [], []
        self.connections = 0
        self.blobs = {}  # "sha256-<hex>" -> size, for /api/blobs and /api/create
        self._lock = threading.Condition()
        self._script = dict(SCRIPT_DEFAULTS)
        self._epoch = threading.Event()
        self._server = self._thread = None
        self._started_once = False
        # What is loaded: _baseline is what a (re)started server has loaded (None: the first completion model,
        # tracked live); _auto and _resident are the current state: name key -> expiry in time.time_ns()
        # nanoseconds, or None for "pinned" (listed as expiring in five minutes, never unloaded by time).
        self._loaded_config = None if loaded is None else self._resolve_names(loaded, self._catalogue)
        self._baseline = self._loaded_config
        self._auto, self._resident = True, {}
        self._apply_baseline()

    def start(self) -> "OllamaDouble":
        """Bind host:port and serve in a daemon thread; return self.

        The first start with port 0 picks a free port and remembers it: a restart (start() after stop())
        binds the same one again, retrying for a few seconds while the old connections wind down. A restart
        is a fresh server process: what generations loaded is gone, and /api/ps lists the `loaded` given to
        the constructor (or to the last set_loaded()) again; installed models and the records are kept.
        """
        if self._server is None:
            restart = self._started_once
            with self._lock:
                self._epoch = threading.Event()
                self._apply_baseline()
            deadline = time.monotonic() + 5.0
            while True:
                try:
                    server = _Server((self.host, self.port), self, self.verbose, self.tls)
                    break
                except OSError as err:
                    if not restart or err.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self._server, self._started_once = server, True
            self.port = server.server_address[1]
            self.url = f"{'https' if self.tls is not None else 'http'}://{self.host}:{self.port}"
            self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="ollama-double", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Whether the server is serving (between start() and stop())."""
        return self._server is not None

    def stop(self):
        """Stop serving, wake waiting handlers, close connections and join threads (about 2 s at most).

        Open connections, idle keep-alive ones included, are shut down at the TCP level (a FIN; behind TLS
        without close_notify): clients see EOF or a reset, and streams in flight end without their last chunk.
        """
        server, self._server = self._server, None
        if server is None:
            return
        self._epoch.set()
        server.shutdown()
        server.server_close()
        deadline = time.monotonic() + 2.0
        for thread in server.close_connections():
            thread.join(max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def script(self, **kw):
        """Set how the next requests behave until reset(); replaces any earlier script.

        Keys:
          tokens, thinking   lists of str: the answer (and thinking) of every generate/chat request
                             (default: "You said: <prompt>", and a short thought on thinking models).
          first_delay        seconds before anything (status line included) is sent, like a model load.
          delay              seconds between streamed lines (0: all lines are ready at once).
          fault, fault_after one of FAULTS; the mid-stream ones strike at line `fault_after`. error_line at
                             line 0 is a real 500 (nothing was written yet), as current Ollama answers.
                             Which routes each fault affects:
                               status_500, busy, bad_request: the generation routes /api/generate, /api/chat,
                                 /v1/chat/completions and /v1/completions (and the chat behind /v1/responses,
                                 /v1/messages and /v1/audio/transcriptions), streamed or not, load-only requests
                                 too (not keep_alive 0 unloads), answered after first_delay with 500 / 503 / 400
                                 (the model is then not loaded): {"error": ...} on /api,
                                 OpenAI's {"error": {"message", "type": "api_error" (400: invalid_request_error),
                                 ...}} with Content-Type application/json and a newline on /v1 (the scheduler's
                                 refusal coming through the /v1 writer, as Ollama sends it); on /v1/messages
                                 Anthropic's {"type": "error", "error": {"type": "api_error" (503:
                                 overloaded_error, 400: invalid_request_error), "message"}, "request_id"}.
                                 busy is Ollama's ErrMaxQueue.
                               hang: those generation routes wait (silently) until reset() or stop().
                               drop, malformed, error_line: those generation routes but for load-only requests
                                 (streamed: at line `fault_after`; stream:false: the whole body; /v1/messages
                                 streams: an error line yields no event, the stream just ends; transcriptions:
                                 after the headers went out, an error line leaves the body empty), and the
                                 progress streams of /api/pull, /api/push and /api/create (a pull that faulted
                                 installs nothing).
                               slow_version: /api/version and /api/tags wait first_delay (generation then
                                 starts at once).
                             No fault touches the embedding routes (/api/embed, /api/embeddings, /v1/embeddings),
                             /api/show, /api/ps, /v1/models or the /_double/ control routes.
          framing            "odd" (default): chunk boundaries as a proxy or TCP may shuffle them; lines
                             ready together may share a chunk, lines over 1 KiB and some short ones are cut
                             into pieces sent back to back (deterministic; a line's second half is never
                             delayed); non-streamed bodies over 2 KiB come in several chunks.
                             "go": exactly one chunk per flush, as Ollama writes (one NDJSON line; for /v1,
                             the SSE events produced by one native line, cut where net/http's 2 KiB buffer
                             fills) and one chunk per chunked body.
          big_line_bytes     N > 0: the first line that carries text (or thinking) is padded with plain ASCII
                             text to exactly N bytes (the SSE event, for /v1), and a stream:false answer to
                             N bytes; in "odd" framing such a line goes out in pieces of 4 KiB.
          verbose_show_bytes N > 0: /api/show with "verbose": true grows its model_info vocabulary until the
                             body is about N bytes (without it a verbose answer is ~40 KB, a plain one ~20 KB).
        """
        unknown = sorted(set(kw) - set(SCRIPT_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown script keys: {', '.join(unknown)}")
        new = {**SCRIPT_DEFAULTS, **kw}
        if new["fault"] not in FAULTS:
            raise ValueError(f"unknown fault {new['fault']!r}; expected one of {FAULTS}")
        if new["framing"] not in FRAMINGS:
            raise ValueError(f"unknown framing {new['framing']!r}; expected one of {FRAMINGS}")
        for key in ("tokens", "thinking"):
            if new[key] is not None:
                if isinstance(new[key], str) or not all(isinstance(t, str) for t in new[key]):
                    raise ValueError(f"{key} must be a list of strings")
                new[key] = list(new[key])
        for key in ("first_delay", "delay", "fault_after", "big_line_bytes", "verbose_show_bytes"):
            new[key] = (float if key in ("first_delay", "delay") else int)(new[key])
            if new[key] < 0:
                raise ValueError(f"{key} must not be negative")
        with self._lock:
            self._script = new

    def reset(self):
        """Clear the script and the records, restore the model list and the constructor's `loaded`, and abort
        requests still in flight."""
        with self._lock:
            self._script = dict(SCRIPT_DEFAULTS)
            self.requests.clear()
            self.streams.clear()
            self.blobs.clear()
            self.connections = 0
            self.models[:] = copy.deepcopy(self._catalogue)
            self._baseline = self._loaded_config
            self._apply_baseline()
            old, self._epoch = self._epoch, threading.Event()
        old.set()

    # -- loaded models (/api/ps) ---------------------------------------------------------------------------

    def set_loaded(self, names):
        """Make /api/ps list exactly these installed models (in this order); None: back to the default (the
        first installed completion model). They stay loaded (never expire) until a keep_alive 0 request
        unloads them; generations for other models load those too. This also becomes what a restarted server
        has loaded; reset() goes back to the constructor's `loaded`. ValueError for a name not installed.
        """
        with self._lock:
            self._baseline = None if names is None else self._resolve_names(names, list(self.models))
            self._apply_baseline()

    @property
    def loaded(self) -> list:
        """The names /api/ps lists now, in its order (the latest expiry first, as Ollama sorts)."""
        return [model["name"] for model, _expires in self._ps_rows()]

    @staticmethod
    def _key(model: dict):
        parts = parse_name(model["name"])
        return name_key(parts) if parts is not None else model["name"].lower()

    def _resolve_names(self, names, models: list) -> list:
        if isinstance(names, (str, bytes)) or not all(isinstance(n, str) for n in names):
            raise ValueError("loaded must be a list of model names")
        installed = {self._key(m): m for m in reversed(models)}  # the first of equal names wins
        keys = []
        for name in names:
            parts = parse_name(name.strip())
            key = name_key(parts) if parts is not None else None
            if key not in installed:
                raise ValueError(f"cannot load {name!r}: not installed (installed: "
                                 f"{', '.join(m['name'] for m in models) or 'none'})")
            if key not in keys:
                keys.append(key)
        return keys

    def _apply_baseline(self):
        self._auto = self._baseline is None
        self._resident = {key: None for key in self._baseline or ()}

    def _auto_model(self, models: list):
        return next((m for m in models if "completion" in m["capabilities"]), None) if self._auto else None

    def _ps_rows(self) -> list:
        """[(model, expires_ns)] for /api/ps; drops what has expired, as Ollama's scheduler unloads it."""
        now = time.time_ns()
        soon = now + KEEP_ALIVE
        with self._lock:
            models = list(self.models)
            installed = {}
            for model in models:
                installed.setdefault(self._key(model), model)
            rows = []
            auto = self._auto_model(models)
            if auto is not None and self._key(auto) not in self._resident:
                rows.append((auto, soon))
            for key, expires in list(self._resident.items()):
                if (expires is not None and expires <= now) or key not in installed:
                    del self._resident[key]  # expired, or deleted: no longer in memory
                else:
                    rows.append((installed[key], soon if expires is None else expires))
        rows.sort(key=lambda row: -row[1])  # stable: equal expiries keep their order
        return rows

    def _ps_body(self) -> dict:
        return {"models": [ps_entry(model, expires) for model, expires in self._ps_rows()]}

    def _load(self, model: dict, keep_alive):
        """A request for `model` got past the scheduler: it is loaded now (keep_alive in ns, None: default)."""
        key = self._key(model)
        now = time.time_ns()
        with self._lock:
            auto = self._auto_model(list(self.models))
            if keep_alive is None:
                if key in self._resident:
                    if self._resident[key] is not None:
                        self._resident[key] = now + KEEP_ALIVE
                elif auto is None or self._key(auto) != key:
                    self._resident[key] = now + KEEP_ALIVE
            else:
                self._resident[key] = now + (KEEP_ALIVE if keep_alive == 0 else min(keep_alive, FOREVER))

    def _unload(self, model: dict):
        """keep_alive 0: the model leaves memory (once its request has finished)."""
        key = self._key(model)
        with self._lock:
            self._resident.pop(key, None)
            auto = self._auto_model(list(self.models))
            if auto is not None and self._key(auto) == key:
                self._auto = False

    def wait_stream_closed(self, timeout: float = 5.0) -> dict:
        """Block until the most recent stream record has closed_at set, and return that record."""
        with self._lock:
            if not self._lock.wait_for(lambda: self.streams and self.streams[-1]["closed_at"] is not None, timeout):
                raise TimeoutError(f"no closed stream within {timeout} s: {self.streams[-1:]}")
            return self.streams[-1]

    # -- called by handler threads ----------------------------------------------------------------------

    def _snapshot(self) -> dict:
        with self._lock:
            return dict(self._script)

    def _record_request(self, method, path, headers, body) -> dict:
        record = {"method": method, "path": path, "headers": headers, "body": body, "time": time.monotonic()}
        with self._lock:
            self.requests.append(record)
        return record

    def _open_stream(self, path, model) -> dict:
        rec = {"path": path, "model": model, "lines_sent": 0, "chunks_sent": 0, "started": time.monotonic(),
               "closed_at": None, "client_gone": False, "completed": False}
        with self._lock:
            self.streams.append(rec)
        return rec

    @staticmethod
    def _blob_key(digest: str) -> str:
        return digest.replace(":", "-", 1)

    def _close_stream(self, rec, completed=False, gone=False):
        with self._lock:
            if rec["closed_at"] is None:
                rec.update(completed=completed, client_gone=gone, closed_at=time.monotonic())
                self._lock.notify_all()
