"""Token budgets per key: tokens (prompt + completion) per minute, per UTC day and per UTC month.

Off unless configured (TOKENS_PER_MINUTE, TOKENS_PER_DAY, TOKENS_PER_MONTH, or a key's own), and
then free for keys without one: no storage call at all. For a key with a budget, a request reads
all of its windows in one round trip when it starts, and is refused with 429 while any is spent;
its tokens are added when its answer ends, so a stream already running is never cut (a window can
end over its budget by what was in flight when it ran out). The counts live where the rate limits
do, shared by every worker and instance: Redis (RATE_LIMIT_STORAGE=redis://..., one pipelined write
per answer), else the `token_windows` table of DATABASE_URL (written in batches, twice a second).
"""

from __future__ import annotations

import atexit
import calendar
import logging
import math
import threading
import time
from functools import partial

import sqlalchemy as sa
from flask import g, request
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..errors import ApiError
from ..observability import observe
from ..storage.tables import token_windows
from .auth import identify
from .keys import ApiKey

log = logging.getLogger(__name__)

WINDOWS = ("minute", "day", "month")
#: Blueprints whose requests can make a model spend tokens; the admin routes (usage, metrics, the
#: key's own budget) stay open to a key that spent its budget.
CHECKED_BLUEPRINTS = {"llm", "models", "conversations", "documents", "ollama", "openai"}
HEADER = "X-Budget-Remaining-"
#: Counters outlive their window by this much, so instances whose clocks differ a little agree.
GRACE_SECONDS = 60


def window(name: str, now: float) -> tuple[str, float]:
    """The UTC calendar window `name` that holds `now`: its id ("day:2026-12-01") and when it ends."""
    if name == "minute":
        minute = int(now // 60)
        return f"minute:{minute}", (minute + 1) * 60.0
    day = time.gmtime(now)
    if name == "day":
        start = calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0))
        return time.strftime("day:%Y-%m-%d", day), start + 86400.0
    year, month = (day.tm_year + 1, 1) if day.tm_mon == 12 else (day.tm_year, day.tm_mon + 1)
    return time.strftime("month:%Y-%m", day), float(calendar.timegm((year, month, 1, 0, 0, 0)))


class Budgets:
    """The budgets of every key: checked at a request's start, spent when its answer ends."""

    def __init__(self, gateway):
        self.gateway = gateway
        config = gateway.config
        self.defaults = {"minute": config.tokens_per_minute, "day": config.tokens_per_day,
                         "month": config.tokens_per_month}
        storage = config.rate_limit_storage
        self.store = DatabaseWindows(gateway.database) if storage.startswith("memory://") else RedisWindows(storage)

    def init_app(self, app, blueprints) -> None:
        """Check the budget on every request of the token-spending `blueprints`, after their key check."""
        for blueprint in blueprints:
            if blueprint.name in CHECKED_BLUEPRINTS:
                app.before_request_funcs.setdefault(blueprint.name, []).append(self.check)
                app.after_request_funcs.setdefault(blueprint.name, []).append(add_headers)

    def limits(self, key: ApiKey) -> dict:
        """Window name -> the key's budget in tokens, None when unlimited (its own, else the default)."""
        own = {"minute": key.tokens_per_minute, "day": key.tokens_per_day, "month": key.tokens_per_month}
        return {name: (own[name] if own[name] is not None else self.defaults[name]) or None for name in WINDOWS}

    def remaining(self, key: ApiKey) -> dict:
        """Window name -> tokens left now, None when unlimited; raises when the storage is unreachable."""
        limits = self.limits(key)
        budgeted = {name: limit for name, limit in limits.items() if limit}
        if not budgeted:
            return limits
        return {**limits, **self._remaining(key.name, budgeted, time.time())[0]}

    def check(self) -> None:
        """Refuse a request whose key spent a window (429 with Retry-After); else count its tokens at the end."""
        key = identify(self.gateway) if request.method != "OPTIONS" else None
        if key is None:
            return
        budgeted = {name: limit for name, limit in self.limits(key).items() if limit}
        if not budgeted:
            return
        now = time.time()
        try:
            remaining, resets = self._remaining(key.name, budgeted, now)
        except Exception:
            # As the rate limits do: storage down means serving unlimited, and saying so in the log.
            log.exception("Token budgets unavailable (storage down); not limiting %s", key.name)
            remaining = None
        observation = observe.current()
        if remaining is not None:
            g.budget_remaining = remaining
            spent = [name for name in WINDOWS if name in remaining and remaining[name] <= 0]
            if spent:
                observation.limited = "tokens"
                raise refusal(key.name, {name: budgeted[name] for name in spent},
                              max(resets[name] for name in spent) - now)
        observation.on_finish.append(partial(self._spend, key.name, tuple(budgeted), observation))

    def close(self) -> None:
        """Write what is pending and release the storage's connections."""
        self.store.close()

    def _remaining(self, name: str, budgeted: dict, now: float) -> tuple[dict, dict]:
        windows = {window_name: window(window_name, now) for window_name in budgeted}
        spent = self.store.spent(name, [ident for ident, _ in windows.values()])
        remaining = {window_name: max(limit - spent.get(windows[window_name][0], 0), 0)
                     for window_name, limit in budgeted.items()}
        return remaining, {window_name: end for window_name, (_, end) in windows.items()}

    def _spend(self, name: str, budgeted: tuple, observation) -> None:
        """Add the answer's tokens to the windows it ends in (runs when the response closes)."""
        tokens = (observation.tokens_in or 0) + (observation.tokens_out or 0)
        if tokens <= 0:
            return
        now = time.time()
        try:
            self.store.add(name, [window(window_name, now) for window_name in budgeted], tokens, now)
        except Exception:
            log.exception("Could not count %d tokens of %s against its budget (storage down)", tokens, name)


def refusal(name: str, spent: dict, seconds: float) -> ApiError:
    """The 429 of a spent budget, rendered in the route's API shape by its blueprint's handlers."""
    what = ", ".join(f"{limit} tokens per {window_name}" for window_name, limit in spent.items())
    retry = max(math.ceil(seconds), 1)
    resets = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + retry))
    return ApiError(429, "Token budget spent", f"The key {name!r} has spent its {what} (UTC windows); it may "
                    f"send again at {resets}; see Retry-After", slug="token-budget-spent",
                    headers={"Retry-After": str(retry)})


def add_headers(response):
    """X-Budget-Remaining-Minute, -Day, -Month for the key's budgeted windows, less the tokens already known
    (a whole answer's own; a stream's headers leave before its tokens are counted)."""
    remaining = g.get("budget_remaining")
    if remaining:
        observation = observe.current()
        known = (observation.tokens_in or 0) + (observation.tokens_out or 0)
        for window_name, left in remaining.items():
            response.headers[HEADER + window_name.title()] = str(max(left - known, 0))
    return response


class RedisWindows:
    """Counters in Redis, one per key and window, removed by Redis once the window is over."""

    def __init__(self, url: str, prefix: str = "mlops/budget/"):
        import redis

        # redis-py reads unix sockets as unix://; the limits library's spelling is redis+unix://.
        self._redis = redis.Redis.from_url(url.replace("redis+unix://", "unix://", 1), socket_timeout=5,
                                           socket_connect_timeout=5)
        self.prefix = prefix

    def spent(self, name: str, windows: list) -> dict:
        """Window id -> tokens spent, for every window of `name` in one MGET."""
        values = self._redis.mget([f"{self.prefix}{name}/{ident}" for ident in windows])
        return {ident: int(value or 0) for ident, value in zip(windows, values)}

    def add(self, name: str, windows: list, tokens: int, now: float) -> None:
        """INCRBY then EXPIRE per window, all pipelined: one round trip."""
        pipeline = self._redis.pipeline(transaction=False)
        for ident, end in windows:
            counter = f"{self.prefix}{name}/{ident}"
            pipeline.incrby(counter, tokens)
            pipeline.expire(counter, math.ceil(end - now) + GRACE_SECONDS)
        pipeline.execute()

    def close(self) -> None:
        self._redis.close()


class DatabaseWindows:
    """Counters in the `token_windows` table (no Redis configured), added in batches like usage's.

    A commit costs more than the rest of a request (SQLite's fsync: about 1.5 ms here), so answers
    only add to this worker's pending counts, which a background thread writes every FLUSH_SECONDS
    (and at exit); a read adds them in, so the worker itself is exact and other workers see them
    within FLUSH_SECONDS. Rows of ended windows are purged about once a minute.
    """

    FLUSH_SECONDS = 0.5
    PURGE_SECONDS = 60.0

    def __init__(self, database):
        self.database = database
        self._pending: dict = {}  # (key name, window id) -> [tokens, window end]
        self._flushing: dict = {}  # what a flush is writing now, still counted by reads until committed
        self._lock = threading.Lock()
        self._flusher = None
        self._stop = threading.Event()
        self._purged = 0.0

    def spent(self, name: str, windows: list) -> dict:
        with self.database.engine.connect() as connection:
            spent = dict(connection.execute(_READ, {"name": name, "windows": windows}).all())
        with self._lock:
            for ident in windows:
                for held in (self._pending, self._flushing):
                    if (name, ident) in held:
                        spent[ident] = spent.get(ident, 0) + held[(name, ident)][0]
        return spent

    def add(self, name: str, windows: list, tokens: int, now: float) -> None:
        """Count the tokens in memory (cheap); the flusher writes them."""
        with self._lock:
            for ident, end in windows:
                self._pending.setdefault((name, ident), [0, end])[0] += tokens
        if self._flusher is None:
            self._start_flusher()

    def flush(self) -> None:
        """Add the pending counts to their rows (INSERT ... ON CONFLICT DO UPDATE) in one transaction; on
        failure they stay pending for the next try."""
        with self._lock:
            if not self._pending or self._flushing:
                return
            self._flushing, self._pending = self._pending, {}
        # Rows in one order in every worker, so two flushes at once never deadlock (PostgreSQL).
        rows = [{"name": name, "window": ident, "tokens": tokens, "end": end}
                for (name, ident), (tokens, end) in sorted(self._flushing.items())]
        now = time.time()
        try:
            with self.database.engine.begin() as connection:
                connection.execute(_UPSERTS[connection.dialect.name], rows)
                if now - self._purged > self.PURGE_SECONDS:
                    self._purged = now
                    connection.execute(_PURGE, {"before": now - GRACE_SECONDS})
        except Exception:
            with self._lock:
                for item, (tokens, end) in self._flushing.items():
                    self._pending.setdefault(item, [0, end])[0] += tokens
                self._flushing = {}
            raise
        with self._lock:
            self._flushing = {}

    def close(self) -> None:
        """Stop the flusher and write what is pending (the engine is the gateway's database's)."""
        self._stop.set()
        try:
            self.flush()
        except Exception:
            log.exception("Token budget counts could not be written on exit")

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._run, name="budget-flush", daemon=True)
        self._flusher.start()
        atexit.register(self.close)

    def _run(self) -> None:
        while not self._stop.wait(self.FLUSH_SECONDS):
            try:
                self.flush()
            except Exception:
                log.exception("Token budget counts could not be written; will retry")


def _upsert(insert):
    statement = insert(token_windows).values(key_name=sa.bindparam("name"), window=sa.bindparam("window"),
                                             tokens=sa.bindparam("tokens"), expires_at=sa.bindparam("end"))
    return statement.on_conflict_do_update(index_elements=["key_name", "window"],
                                           set_={"tokens": token_windows.c.tokens + statement.excluded.tokens})


# Built once: building SQLAlchemy statements per request cost more than running them.
_READ = sa.select(token_windows.c.window, token_windows.c.tokens).where(
    token_windows.c.key_name == sa.bindparam("name"), token_windows.c.window.in_(sa.bindparam("windows", expanding=True)))
_PURGE = token_windows.delete().where(token_windows.c.expires_at < sa.bindparam("before"))
_UPSERTS = {"sqlite": _upsert(sqlite_insert), "postgresql": _upsert(postgresql_insert)}
