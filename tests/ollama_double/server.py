"""OllamaDouble: the server's lifecycle, script, records and control endpoints."""

from __future__ import annotations

import copy
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

SCRIPT_DEFAULTS = {"tokens": None, "thinking": None, "first_delay": 0.0, "delay": 0.0, "fault": None, "fault_after": 2}
FAULTS = (None, "status_500", "busy", "bad_request", "drop", "malformed", "error_line", "hang", "slow_version")


class Handler(NativeRoutes, OpenAIRoutes, Transport):
    """The request handler: routes plus the control endpoints other processes use."""

    routes = {
        "/": {"GET": "api_root"}, "/api/version": {"GET": "api_version"}, "/api/tags": {"GET": "api_tags"},
        "/api/ps": {"GET": "api_ps"}, "/api/show": {"POST": "api_show"}, "/api/generate": {"POST": "api_generate"},
        "/api/chat": {"POST": "api_chat"}, "/api/embed": {"POST": "api_embed"},
        "/api/embeddings": {"POST": "api_embeddings"}, "/api/pull": {"POST": "api_pull"},
        "/api/delete": {"DELETE": "api_delete"},
        "/v1/models": {"GET": "v1_models"}, "/v1/models/{model}": {"GET": "v1_model"},
        "/v1/chat/completions": {"POST": "v1_chat"}, "/v1/completions": {"POST": "v1_completions"},
        "/v1/embeddings": {"POST": "v1_embeddings"},
        "/_double/script": {"POST": "ctl_script"}, "/_double/reset": {"POST": "ctl_reset"},
        "/_double/streams": {"GET": "ctl_streams"}, "/_double/requests": {"GET": "ctl_requests"},
    }

    def ctl_script(self):
        try:
            self.double.script(**self.json_body())
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
        """Set how the next generate/chat requests behave until reset(); replaces any earlier script.

        Keys: tokens, thinking (lists of str), first_delay, delay (seconds), fault (see FAULTS), fault_after (int).
        """
        unknown = sorted(set(kw) - set(SCRIPT_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown script keys: {', '.join(unknown)}")
        new = {**SCRIPT_DEFAULTS, **kw}
        if new["fault"] not in FAULTS:
            raise ValueError(f"unknown fault {new['fault']!r}; expected one of {FAULTS}")
        for key in ("tokens", "thinking"):
            if new[key] is not None:
                if isinstance(new[key], str) or not all(isinstance(t, str) for t in new[key]):
                    raise ValueError(f"{key} must be a list of strings")
                new[key] = list(new[key])
        for key in ("first_delay", "delay", "fault_after"):
            new[key] = (int if key == "fault_after" else float)(new[key])
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
        rec = {"path": path, "model": model, "lines_sent": 0, "started": time.monotonic(), "closed_at": None,
               "client_gone": False, "completed": False}
        with self._lock:
            self.streams.append(rec)
        return rec

    def _close_stream(self, rec, completed=False, gone=False):
        with self._lock:
            if rec["closed_at"] is None:
                rec.update(completed=completed, client_gone=gone, closed_at=time.monotonic())
                self._lock.notify_all()
