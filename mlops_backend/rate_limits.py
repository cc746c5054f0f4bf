"""Per-key limits: requests per minute (Flask-Limiter) and concurrent streams, on memory:// or Redis.

Both count in the same storage, so with RATE_LIMIT_STORAGE=redis://... a limit holds across every
gunicorn worker and every instance; memory:// counts per process.
"""

from __future__ import annotations

import logging
import time

from flask import g, request
from flask_limiter import Limiter

from . import observe
from .auth import identify
from .errors import ApiError
from .keys import ApiKey

log = logging.getLogger(__name__)

#: A stream counter lives this long after it last rose from zero: it only matters if a worker
#: died (SIGKILL) holding slots, which then come back after this long at the latest.
STREAM_SLOT_TTL = 3600


class RateLimits:
    """The app's Flask-Limiter plus the stream slots; limits come from the key, else the defaults."""

    def __init__(self, gateway):
        self.gateway = gateway
        config = gateway.config
        self.limiter = Limiter(
            key_func=self.caller, storage_uri=config.rate_limit_storage, strategy="moving-window",
            key_prefix="mlops", headers_enabled=False,
            # Storage down (Redis unreachable): serve unlimited and log it, rather than fail every request.
            swallow_errors=True)

    def init_app(self, app, blueprints) -> None:
        """Count every request of `blueprints` against one shared per-key budget."""
        self.limiter.init_app(app)
        self.limiter.request_filter(lambda: request.method == "OPTIONS")
        # Flask-Limiter hooks into every request of the app; only these blueprints are limited, so
        # its check and header hook move to them (measured: a quarter of the CPU of a /health).
        hooks = [(app.before_request_funcs, self.limiter._check_request_limit),
                 (app.after_request_funcs, _hook_of(app.after_request_funcs.get(None, []), self.limiter))]
        for table, hook in hooks:
            if hook is not None and hook in table.get(None, []):
                table[None].remove(hook)
                for blueprint in blueprints:
                    table.setdefault(blueprint.name, []).insert(0, hook)
        for blueprint in blueprints:
            self.limiter.shared_limit(self.per_minute, scope="requests", exempt_when=self.unlimited,
                                      error_message=self.refusal)(blueprint)
        app.after_request(self.add_headers)

    def caller(self) -> str:
        """Whose budget a request spends: its key's name; the client address for unknown keys."""
        key = identify(self.gateway)
        if key is None or not self.gateway.config.auth_enabled:
            return "addr:" + (request.remote_addr or "-")
        return "key:" + key.name

    def requests_per_minute(self) -> int:
        key = identify(self.gateway)
        if key is not None and key.requests_per_minute is not None:
            return key.requests_per_minute
        return self.gateway.config.rate_limit_per_minute

    def per_minute(self) -> str:
        return f"{self.requests_per_minute()}/minute"

    def refusal(self) -> str:
        """The 429's detail."""
        key = identify(self.gateway)
        who = f"The key {key.name!r}" if key is not None else "This client"
        return f"{who} may make {self.requests_per_minute()} requests per minute; see Retry-After"

    def unlimited(self) -> bool:
        return self.requests_per_minute() == 0

    def add_headers(self, response):
        """RateLimit-Limit, -Remaining and -Reset (seconds); Retry-After on a 429."""
        current = self.limiter.current_limit if "api_key" in g else None
        if current is not None:
            reset = max(int(current.reset_at - time.time()), 0)
            response.headers["RateLimit-Limit"] = str(current.limit.amount)
            response.headers["RateLimit-Remaining"] = str(current.remaining)
            response.headers["RateLimit-Reset"] = str(reset)
            if current.breached:
                response.headers["Retry-After"] = str(max(reset, 1))
                observe.current().limited = "requests"
        return response

    def acquire_stream(self, key: ApiKey):
        """Take one of the key's stream slots or refuse with 429; return the release function."""
        limit = key.concurrent_streams if key.concurrent_streams is not None else self.gateway.config.streams_per_key
        if not limit:
            return _nothing
        storage, counter = self.limiter.storage, f"mlops/streams/{key.name}"
        try:
            count = storage.incr(counter, STREAM_SLOT_TTL)
        except Exception:
            log.exception("Stream slots unavailable (rate-limit storage down); not limiting")
            return _nothing
        released = []

        def release():
            if released:
                return
            released.append(True)
            try:
                if storage.incr(counter, STREAM_SLOT_TTL, amount=-1) < 0:
                    storage.clear(counter)
            except Exception:
                log.exception("Could not release a stream slot of %s", key.name)

        if count > limit:
            release()
            observe.current().limited = "streams"
            raise ApiError(429, "Too many streams", f"The key {key.name!r} has {limit} streams open, its limit",
                           slug="too-many-streams", headers={"Retry-After": "1"})
        return release


def _nothing():
    return None


def _hook_of(hooks: list, limiter):
    """Flask-Limiter's after_request hook (a partial bound to `limiter`), if registered."""
    return next((hook for hook in hooks if getattr(hook, "args", (None,))[:1] == (limiter,)), None)
