"""Per-key limits: requests per minute (Flask-Limiter) and generations in flight, on memory:// or Redis.

Both are off unless configured (RATE_LIMIT_PER_MINUTE, STREAMS_PER_KEY, or a key's own `limits`),
as in nginx or LiteLLM: one shared key serving a whole frontend must not be capped by a default.
What is on by default is a small budget per client address for requests with a missing or wrong
key (AUTH_FAILURES_PER_MINUTE), which slows anyone guessing keys. With
RATE_LIMIT_STORAGE=redis://... every limit holds across every gunicorn worker and every instance;
memory:// counts per process.
"""

from __future__ import annotations

import logging
import time

from flask import g, request
from flask_limiter import Limiter

from ..observability import observe
from .auth import identify
from ..errors import ApiError
from .keys import ApiKey
from ..observability.request_context import client_address

log = logging.getLogger(__name__)


class RateLimits:
    """The app's Flask-Limiter plus the generation slots; limits come from the key, else the defaults."""

    def __init__(self, gateway):
        self.gateway = gateway
        config = gateway.config
        self.limiter = Limiter(
            key_func=self.caller, storage_uri=config.rate_limit_storage, strategy="moving-window",
            key_prefix="mlops", headers_enabled=False,
            # Storage down (Redis unreachable): serve unlimited and log it, rather than fail every request.
            swallow_errors=True)
        self.slots = gateway.slots

    def init_app(self, app, blueprints) -> None:
        """Count every request of `blueprints` against one shared per-key budget, and failed keys per address."""
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
            # Tested before the request, counted only when it ends in 401: a valid key never spends it.
            self.limiter.shared_limit(self.failures_per_minute, scope="auth-failures", key_func=self.address,
                                      exempt_when=self.not_guessing, deduct_when=_unauthorized,
                                      error_message=self.failure_refusal)(blueprint)
        app.after_request(self.add_headers)
        # Token budgets (security/budgets.py) run after the blueprints' key checks, beside these limits.
        if self.gateway.budgets is not None:
            self.gateway.budgets.init_app(app, blueprints)

    def caller(self) -> str:
        """Whose budget a request spends: its key's name; the client address when auth is off."""
        key = identify(self.gateway)
        if key is None or not self.gateway.config.auth_enabled:
            return self.address()
        return "key:" + key.name

    def address(self) -> str:
        """The client's address (behind a trusted proxy, the one it forwards)."""
        return "addr:" + client_address(self.gateway.config.forwarded_allow_ips)

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
        return f"The key {key.name!r} may make {self.requests_per_minute()} requests per minute; see Retry-After"

    def unlimited(self) -> bool:
        """No per-key budget: none configured, or no valid key (that spends the address's budget instead)."""
        return identify(self.gateway) is None or self.requests_per_minute() == 0

    def failures_per_minute(self) -> str:
        return f"{self.gateway.config.auth_failures_per_minute}/minute"

    def failure_refusal(self) -> str:
        return (f"More than {self.gateway.config.auth_failures_per_minute} requests a minute with a missing or wrong "
                "API key came from this address; see Retry-After")

    def not_guessing(self) -> bool:
        """A valid key (or auth off) never spends the address's budget of failed keys."""
        return self.gateway.config.auth_failures_per_minute == 0 or identify(self.gateway) is not None

    def add_headers(self, response):
        """RateLimit-Limit, -Remaining and -Reset (seconds) when a limit applies; Retry-After on a 429."""
        current = self.limiter.current_limit if "api_key" in g else None
        if current is not None:
            reset = max(int(current.reset_at - time.time()), 0)
            response.headers["RateLimit-Limit"] = str(current.limit.amount)
            response.headers["RateLimit-Remaining"] = str(current.remaining)
            response.headers["RateLimit-Reset"] = str(reset)
            if current.breached:
                response.headers["Retry-After"] = str(max(reset, 1))
                observe.current().limited = "auth_failures" if identify(self.gateway) is None else "requests"
        return response

    def acquire_slot(self, key: ApiKey):
        """Take one of the key's slots for a generation in flight, or refuse with 429; return the release."""
        limit = key.concurrent_streams if key.concurrent_streams is not None else self.gateway.config.streams_per_key
        if not limit:
            return _nothing
        name = key.name
        try:
            lease = self.slots.acquire(name, limit)
        except Exception:
            log.exception("Generation slots unavailable (rate-limit storage down); not limiting")
            return _nothing
        if lease is None:
            observe.current().limited = "streams"
            raise ApiError(429, "Too many requests in flight",
                           f"The key {name!r} has {limit} generations in flight, its limit; see Retry-After",
                           slug="too-many-streams", headers={"Retry-After": "1"})
        released = []

        def release():
            if released:
                return
            released.append(True)
            try:
                self.slots.release(name, lease)
            except Exception:
                log.exception("Could not release a generation slot of %s (its lease lapses by itself)", name)

        return release

def _unauthorized(response) -> bool:
    return response.status_code == 401


def _nothing():
    return None


def _hook_of(hooks: list, limiter):
    """Flask-Limiter's after_request hook (a partial bound to `limiter`), if registered."""
    return next((hook for hook in hooks if getattr(hook, "args", (None,))[:1] == (limiter,)), None)
