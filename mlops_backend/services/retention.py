"""CONVERSATION_RETENTION_DAYS: every worker purges what is older, hourly, in the background (the deletes
are idempotent, so workers and instances doing it at once only repeat each other)."""

from __future__ import annotations

import logging
import random
import threading

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 3600.0


class Retention:
    def __init__(self, purge, days: float, interval: float = INTERVAL_SECONDS, first_wait: float | None = None):
        """`purge(seconds)` deletes what is older than `seconds` and returns the counts. The first purge comes
        after `first_wait` seconds (default: 1 to 60 at random, so workers started together do not all
        purge at one moment)."""
        self._purge, self._age, self._interval = purge, days * 86400, interval
        self._first = random.uniform(1, 60) if first_wait is None else first_wait
        self._stop = threading.Event()
        self._thread = None

    def start(self) -> Retention:
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        wait = self._first
        while not self._stop.wait(wait):
            try:
                counts = self._purge(self._age)
                if any(counts.values()):
                    log.info("Retention: deleted %(conversations)d conversations and %(responses)d stored "
                             "responses", counts)
            except Exception:
                log.exception("Retention: the purge failed; will retry")
            wait = self._interval

    def close(self) -> None:
        self._stop.set()
