"""Usage per key and model (requests, prompt and completion tokens, errors), kept in a SQL database.

Requests only add to counters in memory; a background thread adds them to the database every
USAGE_FLUSH_SECONDS (and once more when the process exits), so no request waits on a write and
several workers can share one SQLite file or a PostgreSQL database.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import defaultdict

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..storage import database
from ..storage.tables import MODEL_CHARS
from ..storage.tables import USAGE_FIELDS as FIELDS
from ..storage.tables import usage as usage_table

log = logging.getLogger(__name__)

__all__ = ["FIELDS", "MODEL_CHARS", "UsageStore", "create_engine"]
create_engine = database.create_engine


class UsageStore:
    """Counters per (key, model), added to the database in batches."""

    def __init__(self, url: str, flush_seconds: float):
        self.url, self.flush_seconds = url, flush_seconds
        self._engine = None
        self._pending = defaultdict(lambda: [0, 0, 0, 0])
        self._lock = threading.Lock()
        self._flusher = None
        self._stop = threading.Event()

    def add(self, key_name: str, model: str, prompt_tokens: int = 0, completion_tokens: int = 0,
            error: bool = False) -> None:
        """Count one request (cheap: memory only)."""
        with self._lock:
            counts = self._pending[(key_name, (model or "")[:MODEL_CHARS])]
            counts[0] += 1
            counts[1] += prompt_tokens or 0
            counts[2] += completion_tokens or 0
            counts[3] += 1 if error else 0
        if self._flusher is None:
            self._start_flusher()

    def totals(self) -> list[dict]:
        """Every row in the database, after adding this process's pending counts."""
        self.flush()
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(usage_table).order_by(usage_table.c.key_name, usage_table.c.model))
            return [dict(row._mapping) for row in rows]

    def flush(self) -> None:
        """Add the pending counts to the database; on failure they stay pending for the next try."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(lambda: [0, 0, 0, 0])
        if not pending:
            return
        try:
            with self.engine.begin() as connection:
                # Rows in one order in every worker, so two flushes at once never deadlock (PostgreSQL).
                for (key_name, model), counts in sorted(pending.items()):
                    _add_row(connection, key_name, model, counts)
        except Exception:
            with self._lock:
                for item, counts in pending.items():
                    merged = self._pending[item]
                    for index, value in enumerate(counts):
                        merged[index] += value
            raise

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            engine = create_engine(self.url)
            database.upgrade(engine)  # the schema, by the migrations (once, under their lock)
            self._engine = engine
        return self._engine

    def close(self) -> None:
        """Stop the thread, write what is pending, release the connections."""
        self._stop.set()
        try:
            self.flush()
        except Exception:
            log.exception("Usage counts could not be written on exit")
        if self._engine is not None:
            self._engine.dispose()

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._run, name="usage-flush", daemon=True)
        self._flusher.start()
        atexit.register(self.close)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:
                log.exception("Usage counts could not be written; will retry")


def _add_row(connection, key_name: str, model: str, counts: list) -> None:
    """Add to a row in one statement (INSERT ... ON CONFLICT DO UPDATE), safe against other workers."""
    values = dict(zip(FIELDS, counts))
    insert = _UPSERTS[connection.dialect.name](usage_table).values(key_name=key_name, model=model, **values)
    connection.execute(insert.on_conflict_do_update(
        index_elements=["key_name", "model"],
        set_={field: usage_table.c[field] + insert.excluded[field] for field in FIELDS}))


_UPSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}
