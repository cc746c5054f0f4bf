"""Per-key limits: requests per minute (the `limits` library) and generations in flight, on memory:// or Redis.

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
from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

from ..observability import observe
from .auth import identify
from ..errors import ApiError
from .keys import ApiKey
from ..observability.request_context import client_address

log = logging.getLogger(__name__)

#: How often a storage failure is logged (each request in between is served unlimited, silently).
STORAGE_ERROR_LOG_SECONDS = 60.0


class RateLimits:
    """The requests-per-minute budgets (the `limits` library's moving window) and the generation slots.

    A request whose key has no per-minute limit touches no storage: the check is a few attribute
    reads, so limits cost nothing until configured. (Flask-Limiter did this job before; its hooks
    resolved every declared limit on every request, a tenth of a generation's CPU with none set.)
    """

    def __init__(self, gateway):
        self.gateway = gateway
        self.window = MovingWindowRateLimiter(storage_from_string(gateway.config.rate_limit_storage))
        self.slots = gateway.slots
        self._items: dict[int, RateLimitItemPerMinute] = {}
        self._storage_logged = 0.0

    def init_app(self, app, blueprints) -> None:
        """Check the budgets first on every request of `blueprints`; add the RateLimit headers after."""
        for blueprint in blueprints:
            app.before_request_funcs.setdefault(blueprint.name, []).insert(0, self.check)
            app.after_request_funcs.setdefault(blueprint.name, []).append(self.after)
        # Token budgets (security/budgets.py) run after the blueprints' key checks, beside these limits.
        if self.gateway.budgets is not None:
            self.gateway.budgets.init_app(app, blueprints)

    # -- the budgets -------------------------------------------------------------------------------------

    def check(self):
        """Refuse with 429 a key past its requests per minute, or an address past its failed keys.

        A valid key spends its own budget (shared by every limited route); a missing or wrong key is
        tested against its address's budget here and spends it only if the answer is a 401 (after()),
        so a valid key never spends or meets it.
        """
        if request.method == "OPTIONS":
            return
        config = self.gateway.config
        key = identify(self.gateway)
        if key is None:
            amount = config.auth_failures_per_minute
            if not amount:
                return
            limit = g.rate_limit = (self._item(amount), "auth-failures", self.address(), "auth_failures")
            if self._safely(self.window.test, limit, True):
                return
        else:
            amount = key.requests_per_minute if key.requests_per_minute is not None else config.rate_limit_per_minute
            if not amount:
                return
            caller = "key:" + key.name if config.auth_enabled else self.address()
            limit = g.rate_limit = (self._item(amount), "requests", caller, "requests")
            if self._safely(self.window.hit, limit, True):
                return
        g.rate_limited = True
        observe.current().limited = limit[3]
        raise TooManyRequests(self.refusal(key, amount))

    def after(self, response):
        """Count a 401 against its address; add RateLimit-Limit, -Remaining, -Reset, and Retry-After on a 429."""
        limit = g.get("rate_limit")
        if limit is None:
            return response
        item, scope, caller, _ = limit
        if scope == "auth-failures" and response.status_code == 401 and not g.get("rate_limited"):
            self._safely(self.window.hit, limit, True)
        stats = self._safely(self.window.get_window_stats, limit, None)
        if stats is not None:
            reset = max(int(stats.reset_time - time.time()), 0)
            response.headers["RateLimit-Limit"] = str(item.amount)
            response.headers["RateLimit-Remaining"] = str(stats.remaining)
            response.headers["RateLimit-Reset"] = str(reset)
            if g.get("rate_limited"):
                response.headers["Retry-After"] = str(max(reset, 1))
        return response

    def refusal(self, key: ApiKey | None, amount: int) -> str:
        """The 429's detail."""
        if key is None:
            return (f"More than {amount} requests a minute with a missing or wrong API key came from this "
                    "address; see Retry-After")
        return f"The key {key.name!r} may make {amount} requests per minute; see Retry-After"

    def address(self) -> str:
        """The client's address (behind a trusted proxy, the one it forwards)."""
        return "addr:" + client_address(self.gateway.config.forwarded_allow_ips)

    def _item(self, amount: int) -> RateLimitItemPerMinute:
        item = self._items.get(amount)
        if item is None:
            item = self._items[amount] = RateLimitItemPerMinute(amount)
        return item

    def _safely(self, operation, limit, fallback):
        """operation(item, "mlops", scope, caller); on a storage failure (Redis down) `fallback`: the
        request is served unlimited, and the failure logged at most once a minute."""
        item, scope, caller, _ = limit
        try:
            return operation(item, "mlops", scope, caller)
        except Exception:
            now = time.monotonic()
            if now - self._storage_logged >= STORAGE_ERROR_LOG_SECONDS:
                self._storage_logged = now
                log.exception("Failed to rate limit (rate-limit storage down); not limiting")
            return fallback

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

def _nothing():
    return None

