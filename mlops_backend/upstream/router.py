"""Several Ollama servers behind one gateway: what each has, which one serves a request, failover.

Each upstream's installed and loaded models are read in the background (/api/tags, /api/ps) with
its health (/api/version) every UPSTREAM_REFRESH_SECONDS. A request for model M goes to one of the
healthy upstreams that have M, ranked by: M already loaded there (a cold load costs seconds to
minutes), the fewest requests in flight for its max_parallel, its weight, and the upstream that
served the conversation's earlier turns. A failure before the first byte of an answer (refused or
reset before anything was sent, a connect timeout, a 503 or another 5xx head) moves the request to
the next candidate, up to UPSTREAM_RETRIES; consecutive failures take an upstream out for
UPSTREAM_COOLDOWN_SECONDS, after which one request probes it. With one upstream nothing is
discovered: every request goes to it, as with a single OLLAMA_BASE_URL.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from .client import ModelNotFound, OllamaError, OllamaUnreachable, deadline, whole_answer
from .conversations import spread
from .model_names import canonical
from .routed import RoutedStream

log = logging.getLogger(__name__)

#: Conversations remembered per worker (the upstream that served each), oldest forgotten first.
AFFINITY_ENTRIES = 10000
#: A request naming a model no upstream is known to have refreshes the view at most this often.
UNKNOWN_REFRESH_SECONDS = 1.0


class Upstream:
    """One Ollama server: its client, what it has, and its health."""

    __slots__ = ("spec", "name", "client", "installed", "loaded", "version", "failures", "open_until", "probing",
                 "refreshed")

    def __init__(self, spec, client):
        self.spec, self.name, self.client = spec, spec.name, client
        static = frozenset(canonical(m) for m in spec.models) if spec.models is not None else None
        self.installed = static  # canonical names; None until discovered (or a static list)
        self.loaded = frozenset()
        self.version = None
        self.failures = 0
        self.open_until = 0.0  # circuit open (out of rotation) until then; 0: closed
        self.probing = False
        self.refreshed = 0.0

    @property
    def up(self) -> bool:
        return self.open_until == 0.0

    def has(self, wanted: str) -> bool:
        """True when the model named `wanted` (a canonical name) is installed here."""
        return self.installed is not None and wanted in self.installed


class NoCounter:
    """In-flight counts kept in this process (the default; with Redis, the security.slots leases)."""

    def __init__(self):
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, name: str):
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1

        def release():
            with self._lock:
                self._counts[name] -= 1
        return release

    def counts(self, names) -> dict[str, int]:
        return {name: self._counts.get(name, 0) for name in names}


class Hooks:
    """What the router reports (metrics); the app passes one that counts in Prometheus."""

    def failure(self, upstream: str, reason: str) -> None:
        """A call to `upstream` failed (unreachable, busy, status_5xx, reset, refresh)."""

    def failover(self, upstream: str, reason: str) -> None:
        """A request left `upstream` for the next candidate."""

    def state(self, upstream: str, up: bool) -> None:
        """An upstream went out of rotation (up False) or came back."""


class Call:
    """What the app notes of one routed call; this default notes nothing. `headers` go out with it (a
    traceparent, say); sent() names the upstream it went to, waited() the time it spent waiting on
    Ollama's head or whole body, closed() its end. Kept generic so upstream/ knows no tracing library."""

    __slots__ = ()
    headers: tuple = ()

    def sent(self, upstream: Upstream) -> None:
        """The call went to `upstream` (the last one counts, after a failover)."""

    def waited(self, seconds: float) -> None:
        """The call waited this long on Ollama (for its head, or a whole body)."""

    def closed(self) -> None:
        """The call is over (answered, failed or abandoned)."""


NO_CALL = Call()


def _no_call(method: str, path: str) -> Call:
    return NO_CALL


class Router:
    """Route each request to an upstream, fail over before the first byte, keep the view of each fresh."""

    def __init__(self, specs, make_client, *, counter=None, hooks=None, refresh_seconds=5.0, retries=2,
                 failures=3, cooldown=10.0, health_timeout=2.0):
        self.upstreams = [Upstream(spec, make_client(spec)) for spec in specs]
        self.by_name = {u.name: u for u in self.upstreams}
        self.single = len(self.upstreams) == 1
        self.counter = counter or NoCounter()
        self.hooks = hooks or Hooks()
        self.refresh_seconds, self.retries = refresh_seconds, retries
        self.failure_limit, self.cooldown, self.health_timeout = failures, cooldown, health_timeout
        self._affinity: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._turn = 0
        self._last_unknown_refresh = 0.0
        self._thread = None
        self._stop = threading.Event()
        #: on_call(method, path) -> Call: the app's view of each routed call (Server-Timing, tracing).
        self.on_call = _no_call
        for upstream in self.upstreams:
            self.hooks.state(upstream.name, True)

    # -- discovery -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Read every upstream's models and health now and then every refresh_seconds (not with one upstream)."""
        if self.single or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="upstream-refresh", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        for upstream in self.upstreams:
            upstream.client.close()

    def _run(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:
                log.exception("Refreshing the upstreams failed; will retry")
            if self._stop.wait(self.refresh_seconds):
                return

    def refresh(self) -> None:
        """Ask every upstream at once for its version, installed and loaded models; bounded by health_timeout.

        One refresh at a time: a request that needs one while another is under way waits for it.
        """
        with self._refreshing:
            self._refresh_all()

    def _refresh_all(self) -> None:
        with ThreadPoolExecutor(len(self.upstreams)) as pool:
            list(pool.map(self._refresh_one, self.upstreams))

    def _refresh_one(self, upstream: Upstream) -> None:
        client = upstream.client
        try:
            upstream.version = client.version(self.health_timeout)
            tags = client.fetch("GET", "/api/tags", timeout=self.health_timeout).get("models") or []
            ps = client.fetch("GET", "/api/ps", timeout=self.health_timeout).get("models") or []
        except OllamaError as error:
            if upstream.up:
                log.warning("Upstream %s is out of rotation: %s", upstream.name, error.detail)
            self.hooks.failure(upstream.name, "refresh")
            self._open(upstream)
            return
        if upstream.spec.models is None:
            upstream.installed = frozenset(canonical(m.get("name") or "") for m in tags if isinstance(m, dict))
        upstream.loaded = frozenset(canonical(m.get("name") or "") for m in ps if isinstance(m, dict))
        upstream.refreshed = time.monotonic()
        self.succeeded(upstream)

    def knows(self, wanted: str) -> bool:
        """True when some upstream is known to have the model `wanted` (canonical); else refresh at once (at
        most once a second)."""
        if self.single or any(u.has(wanted) for u in self.upstreams):
            return True
        with self._refreshing:  # a refresh under way (this worker's first, say) may bring it: wait for it
            if any(u.has(wanted) for u in self.upstreams):
                return True
            now = time.monotonic()
            if now - self._last_unknown_refresh >= UNKNOWN_REFRESH_SECONDS:
                self._last_unknown_refresh = now
                self._refresh_all()
        return any(u.has(wanted) for u in self.upstreams)

    # -- health ----------------------------------------------------------------------------------------

    def succeeded(self, upstream: Upstream) -> None:
        was_up = upstream.up
        upstream.failures, upstream.open_until, upstream.probing = 0, 0.0, False
        if not was_up:
            log.info("Upstream %s is back in rotation", upstream.name)
            self.hooks.state(upstream.name, True)

    def failed(self, upstream: Upstream, reason: str) -> None:
        self.hooks.failure(upstream.name, reason)
        upstream.failures += 1
        if upstream.probing or upstream.failures >= self.failure_limit:
            if upstream.up:
                log.warning("Upstream %s is out of rotation for %g s after %d failures", upstream.name,
                            self.cooldown, upstream.failures)
            self._open(upstream)

    def _open(self, upstream: Upstream) -> None:
        was_up = upstream.up
        upstream.open_until, upstream.probing = time.monotonic() + self.cooldown, False
        if was_up:
            self.hooks.state(upstream.name, False)

    def _available(self, upstream: Upstream, now: float) -> bool:
        """In rotation, or out of it past its cooldown with no probe under way (the next request probes)."""
        return upstream.up or (now >= upstream.open_until and not upstream.probing)

    # -- routing ---------------------------------------------------------------------------------------

    def candidates(self, model: str | None, session: str | None = None) -> list[Upstream]:
        """The upstreams that may serve `model`, best first (ModelNotFound when none has it)."""
        if self.single:
            return list(self.upstreams)
        now = time.monotonic()
        wanted = canonical(model) if model is not None else None
        if wanted is not None and not self.knows(wanted):
            raise ModelNotFound(f"Model {model!r} is not available on any Ollama server")
        pool = [u for u in self.upstreams if (wanted is None or u.has(wanted)) and self._available(u, now)]
        if len(pool) < 2:
            if not pool:
                raise OllamaUnreachable("No Ollama server that has this model is reachable" if model else
                                        "No Ollama server is reachable")
            return pool
        counts = self.counter.counts([u.name for u in pool])
        served = self._affinity.get(session) if session else None
        self._turn += 1
        turn, size = self._turn, len(pool)

        def rank(item):
            index, upstream = item
            return (0 if wanted in upstream.loaded else 1, counts[upstream.name] / upstream.spec.max_parallel,
                    -upstream.spec.weight, 0 if upstream.name == served else 1,
                    spread(session, upstream.name) if session else (index - turn) % size)

        return [upstream for _, upstream in sorted(enumerate(pool), key=rank)]

    def remember(self, session: str | None, upstream: Upstream) -> None:
        """Note which upstream served a conversation's turn (its next turns prefer it)."""
        if session:
            with self._lock:
                self._affinity[session] = upstream.name
                self._affinity.move_to_end(session)
                while len(self._affinity) > AFFINITY_ENTRIES:
                    self._affinity.popitem(last=False)

    def named(self, name: str) -> Upstream:
        """The upstream called `name` (UnknownUpstream, a 400, if there is none)."""
        if name not in self.by_name:
            raise UnknownUpstream(name, list(self.by_name))
        return self.by_name[name]

    def in_rotation(self) -> list[Upstream]:
        """The upstreams in rotation now (with one upstream: that one, whatever its state)."""
        now = time.monotonic()
        return [u for u in self.upstreams if self.single or self._available(u, now)]

    def open(self, method: str, path: str, body: bytes, *, model: str | None = None, session: str | None = None,
             upstream: str | None = None, note=None, content_type: str = "application/json",
             headers: tuple = ()) -> RoutedStream:
        """Send a request to the best candidate (or the upstream named); its answer is read from the result.

        `content_type` and `headers` (extra (name, value) pairs) go out with it."""
        if upstream is not None:
            candidates = [self.named(upstream)]
        else:
            candidates = self.candidates(model, session)
        return RoutedStream(self, candidates[: 1 + self.retries], method, path, body, model, session, note,
                            content_type, headers)

    def fetch(self, method: str, path: str, payload: dict | None = None, **route) -> dict:
        """A whole call on the best candidate (with failover): its JSON answer, or the mapped error."""
        body = json.dumps(payload).encode() if payload is not None else b""
        first = self.upstreams[0].client
        with deadline(first.request_timeout, f"The call to Ollama's {path}"):
            return whole_answer(self.open(method, path, body, **route), first.first_byte_timeout, path)

    def call(self, path: str, payload: dict, **route) -> dict:
        """POST `payload` with stream false to the best candidate and return its JSON answer."""
        return self.fetch("POST", path, {**payload, "stream": False}, **route)

    def fan_out(self, call, upstreams=None) -> list:
        """Run call(upstream) on every upstream in rotation at once; [(upstream, result or OllamaError)]."""
        chosen = upstreams if upstreams is not None else self.in_rotation()

        def one(upstream):
            try:
                return upstream, call(upstream)
            except OllamaError as error:
                return upstream, error

        if len(chosen) == 1:
            return [one(chosen[0])]
        with ThreadPoolExecutor(len(chosen) or 1) as pool:
            return list(pool.map(one, chosen))

    def in_flight(self) -> dict[str, int]:
        return self.counter.counts([u.name for u in self.upstreams])


class UnknownUpstream(OllamaError):
    """?upstream= names no configured upstream."""

    kind = "rejected"

    def __init__(self, name: str, names: list):
        super().__init__(f"No upstream is named {name!r} (there are: {', '.join(names)})")
