"""OllamaDouble: the server's lifecycle, script, records and control endpoints."""

from __future__ import annotations

import copy
import ipaddress
import json
import socket
import socketserver
import sys
import threading
import time
from http.server import ThreadingHTTPServer

from .native import NativeRoutes
from .openai_layer import OpenAIRoutes
from .transport import ApiError, Transport
from .wire import DEFAULT_MODELS, dumps, make_model

SCRIPT_DEFAULTS = {"tokens": None, "thinking": None, "first_delay": 0.0, "delay": 0.0, "fault": None, "fault_after": 2,
                   "framing": "odd", "big_line_bytes": 0, "verbose_show_bytes": 0}
FAULTS = (None, "status_500", "busy", "bad_request", "drop", "malformed", "error_line", "hang", "slow_version")
FRAMINGS = ("odd", "go")


class Handler(NativeRoutes, OpenAIRoutes, Transport):
    """The request handler: Ollama's routes (as registered in server/routes.go) plus the control endpoints."""

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
    }
    control_routes = {
        "/_double/script": {"POST": "ctl_script"}, "/_double/reset": {"POST": "ctl_reset"},
        "/_double/streams": {"GET": "ctl_streams"}, "/_double/requests": {"GET": "ctl_requests"},
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # so `--port 11434` can be restarted at once
    request_queue_size = 512  # the default backlog of 5 drops SYNs under benchmark load

    def __init__(self, address, double, verbose=False):
        self.double, self.verbose = double, verbose
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

    def process_request(self, request, client_address):
        # Track each connection so stop() can wake idle keep-alive readers and join their threads.
        thread = threading.Thread(target=self._serve, args=(request, client_address), daemon=True)
        with self.active_lock:
            self.active[request] = thread
        thread.start()

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
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return [thread for _, thread in items]


class OllamaDouble:
    """An Ollama-compatible HTTP server on loopback, with scripted pacing and faults, recording what it saw.

    Times in records (`time`, `started`, `closed_at`) are time.monotonic() values; on Linux they are
    comparable across processes.
    """

    def __init__(self, models=None, *, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self._catalogue = [make_model(m) for m in (DEFAULT_MODELS if models is None else models)]
        self.models = copy.deepcopy(self._catalogue)
        self.host, self.port, self.verbose = host, port, verbose
        self.url = None
        self.requests, self.streams = [], []
        self.blobs = {}  # "sha256-<hex>" -> size, for /api/blobs and /api/create
        self._lock = threading.Condition()
        self._script = dict(SCRIPT_DEFAULTS)
        self._epoch = threading.Event()
        self._server = self._thread = None

    def start(self) -> "OllamaDouble":
        """Bind host:port (0: a free port) and serve in a daemon thread; return self."""
        if self._server is None:
            self._epoch = threading.Event()
            self._server = _Server((self.host, self.port), self, self.verbose)
            self.url = f"http://{self.host}:{self._server.server_address[1]}"
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="ollama-double", daemon=True)
            self._thread.start()
        return self

    def stop(self):
        """Stop serving, wake waiting handlers, close connections and join threads (about 2 s at most)."""
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
        """Clear the script and the records, restore the model list, and abort requests still in flight."""
        with self._lock:
            self._script = dict(SCRIPT_DEFAULTS)
            self.requests.clear()
            self.streams.clear()
            self.blobs.clear()
            self.models[:] = copy.deepcopy(self._catalogue)
            old, self._epoch = self._epoch, threading.Event()
        old.set()

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

    def _record_request(self, method, path, headers, body):
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body,
                                  "time": time.monotonic()})

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
