"""Slots for a key's generations in flight: leases that a dead worker cannot keep.

A slot is held while a generation (streamed or not) runs. In Redis each key's slots are a sorted
set of lease ids scored by their expiry, which the worker holding them pushes forward every third
of SLOT_LEASE_SECONDS (30); a worker killed with SIGKILL stops renewing, so its leases lapse within
SLOT_LEASE_SECONDS and the slots are free again. With memory:// the slots live in the worker, and
die with it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import defaultdict

log = logging.getLogger(__name__)


# KEYS[1]: the key's set; ARGV: lease id, limit, lease seconds. Redis's own clock, so every
# instance agrees on when a lease expires. Returns 1 when the slot was taken, 0 when all are held.
_ACQUIRE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return 1
"""
# KEYS: the sets to count; the leases not yet expired in each, on Redis's clock.
_COUNT = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('ZCOUNT', key, '(' .. now, '+inf')
end
return counts
"""
# KEYS[1]: the key's set; ARGV: lease seconds, then the lease ids this worker still holds in it.
_RENEW = """
local now = redis.call('TIME')
local expiry = tonumber(now[1]) + tonumber(now[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
end
redis.call('EXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return 1
"""


class MemorySlots:
    """Slots counted in this process (RATE_LIMIT_STORAGE=memory://)."""

    def __init__(self):
        self._held = defaultdict(int)
        self._lock = threading.Lock()

    def acquire(self, name: str, limit: int) -> str | None:
        """Take one of `name`'s `limit` slots; return its lease id, or None when all are held."""
        with self._lock:
            if self._held[name] >= limit:
                return None
            self._held[name] += 1
            return name

    def release(self, name: str, lease: str) -> None:
        with self._lock:
            self._held[name] -= 1
            if self._held[name] <= 0:
                del self._held[name]

    def count(self, names) -> dict[str, int]:
        """The slots held now, per name."""
        with self._lock:
            return {name: self._held.get(name, 0) for name in names}

    def close(self) -> None:
        """Nothing to release: the counts die with the process."""


class RedisSlots:
    """Slots shared by every worker and instance through Redis, as renewed leases."""

    def __init__(self, url: str, lease_seconds: float, prefix: str = "mlops/slots/"):
        import redis

        # redis-py reads unix sockets as unix://; the limits library's spelling is redis+unix://.
        self._redis = redis.Redis.from_url(url.replace("redis+unix://", "unix://", 1), socket_timeout=5,
                                           socket_connect_timeout=5)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._count = self._redis.register_script(_COUNT)
        self._prefix = prefix
        self.lease_seconds = lease_seconds
        self._held: dict[str, set] = defaultdict(set)
        self._lock = threading.Lock()
        self._renewer = None
        self._stop = threading.Event()

    def acquire(self, name: str, limit: int) -> str | None:
        lease = uuid.uuid4().hex
        if not self._acquire(keys=[self._prefix + name], args=[lease, limit, self.lease_seconds]):
            return None
        with self._lock:
            self._held[name].add(lease)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._run, name="slot-leases", daemon=True)
                self._renewer.start()
        return lease

    def release(self, name: str, lease: str) -> None:
        with self._lock:
            self._held[name].discard(lease)
            if not self._held[name]:
                del self._held[name]
        self._redis.zrem(self._prefix + name, lease)

    def count(self, names) -> dict[str, int]:
        """The leases held now (by any worker or instance), per name, in one round trip."""
        names = list(names)
        counts = self._count(keys=[self._prefix + name for name in names]) if names else []
        return dict(zip(names, (int(count) for count in counts)))

    def renew(self) -> None:
        """Push the expiry of every lease this process holds forward by a whole lease."""
        with self._lock:
            held = {name: list(leases) for name, leases in self._held.items()}
        if not held:
            return
        pipeline = self._redis.pipeline(transaction=False)
        for name, leases in held.items():
            self._renew(keys=[self._prefix + name], args=[self.lease_seconds, *leases], client=pipeline)
        pipeline.execute()

    def close(self) -> None:
        self._stop.set()
        self._redis.close()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self.renew()
            except Exception:
                log.exception("Could not renew the generation slots this worker holds; will retry")


def slots_for(storage_uri: str, lease_seconds: float):
    """The slots for RATE_LIMIT_STORAGE: in this process for memory://, else in Redis."""
    return MemorySlots() if storage_uri.startswith("memory://") else RedisSlots(storage_uri, lease_seconds)


class InFlight:
    """Requests in flight per upstream, counted on slots (shared by every worker and instance on Redis)."""

    def __init__(self, slots):
        self.slots = slots

    def acquire(self, name: str):
        """Count one more request on `name`; return the function that uncounts it."""
        try:
            lease = self.slots.acquire("upstream:" + name, 1 << 30)
        except Exception:
            log.exception("In-flight counts unavailable (rate-limit storage down); routing on what is known")
            return _nothing

        def release():
            try:
                self.slots.release("upstream:" + name, lease)
            except Exception:
                log.exception("Could not release an in-flight count of %s (its lease lapses by itself)", name)
        return release

    def counts(self, names) -> dict[str, int]:
        names = list(names)
        try:
            counts = self.slots.count(["upstream:" + name for name in names])
        except Exception:
            log.exception("In-flight counts unavailable (rate-limit storage down); routing on what is known")
            return dict.fromkeys(names, 0)
        return {name: counts["upstream:" + name] for name in names}


def _nothing():
    return None
