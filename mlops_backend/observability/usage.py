"""Usage per key and model (requests, prompt and completion tokens, errors, tokens answered from the
response cache), kept in a SQL database:
running totals (`usage`) and the same counts per UTC day (`usage_daily`).

Requests only add to counters in memory; a background thread adds them to the database every
USAGE_FLUSH_SECONDS (and once more when the process exits), so no request waits on a write and
several workers can share one SQLite file or a PostgreSQL database.
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
import time
from collections import defaultdict
from datetime import date

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import metrics
from ..storage import database
from ..storage.tables import MODEL_CHARS
from ..storage.tables import USAGE_FIELDS as FIELDS
from ..storage.tables import usage as usage_table
from ..storage.tables import usage_daily as daily_table

log = logging.getLogger(__name__)

__all__ = ["FIELDS", "GROUPS", "MODEL_CHARS", "UsageStore", "create_engine", "parse_day"]
create_engine = database.create_engine

#: What the daily rows are summed over, by `group`: each row has its date and these columns.
GROUPS = {None: ("key_name", "model"), "day": (), "key": ("key_name",), "model": ("model",)}
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_day(text: str) -> str:
    """Return `text` if it is a calendar date written YYYY-MM-DD, else raise ValueError."""
    # date.fromisoformat alone would also take 20261201 and 2026-W48-1 (Python 3.11).
    if not _DAY.fullmatch(text or ""):
        raise ValueError(f"{text!r} is not a date written YYYY-MM-DD")
    date.fromisoformat(text)  # 2026-02-30 raises ValueError
    return text


class UsageStore:
    """Counters per (UTC day, key, model), added to the database in batches.

    `clock` gives the time (Unix seconds) that dates a request, when it is counted; `key_labels=False`
    leaves key names out of the Prometheus token counter (METRICS_KEY_LABELS).
    """

    def __init__(self, url: str, flush_seconds: float, clock=time.time, key_labels: bool = True):
        self.url, self.flush_seconds = url, flush_seconds
        self.clock, self.key_labels = clock, key_labels
        self._engine = None
        self._pending = defaultdict(lambda: [0] * len(FIELDS))
        self._lock = threading.Lock()
        self._flusher = None
        self._stop = threading.Event()

    def add(self, key_name: str, model: str, prompt_tokens: int = 0, completion_tokens: int = 0,
            error: bool = False, cached_tokens: int = 0) -> None:
        """Count one request on today's date (UTC) (cheap: memory only)."""
        day = time.strftime("%Y-%m-%d", time.gmtime(self.clock()))
        prompt_tokens, completion_tokens = prompt_tokens or 0, completion_tokens or 0
        with self._lock:
            counts = self._pending[(day, key_name, (model or "")[:MODEL_CHARS])]
            counts[0] += 1
            counts[1] += prompt_tokens
            counts[2] += completion_tokens
            counts[3] += 1 if error else 0
            counts[4] += cached_tokens or 0
        metrics.count_key_tokens(key_name if self.key_labels else "", prompt_tokens, completion_tokens)
        if self._flusher is None:
            self._start_flusher()

    def totals(self) -> list[dict]:
        """Every row of the running totals, after adding this process's pending counts."""
        self.flush()
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(usage_table).order_by(usage_table.c.key_name, usage_table.c.model))
            return [dict(row._mapping) for row in rows]

    def daily(self, since: str | None = None, until: str | None = None, group: str | None = None,
              key_name: str | None = None) -> list[dict]:
        """The daily rows from `since` to `until` (YYYY-MM-DD, both included; None: no bound), summed as
        GROUPS[group] says, in order of date, then key and model; only `key_name`'s rows if given."""
        self.flush()
        table = daily_table
        columns = [table.c.date, *(table.c[name] for name in GROUPS[group])]
        query = (sa.select(*columns, *(sa.func.sum(table.c[field]).label(field) for field in FIELDS))
                 .group_by(*columns).order_by(*columns))
        if since is not None:
            query = query.where(table.c.date >= since)
        if until is not None:
            query = query.where(table.c.date <= until)
        if key_name is not None:
            query = query.where(table.c.key_name == key_name)
        with self.engine.connect() as connection:
            # int(): PostgreSQL's SUM of a BIGINT is a NUMERIC, which arrives as a Decimal.
            return [{**row._mapping, **{field: int(row._mapping[field]) for field in FIELDS}}
                    for row in connection.execute(query)]

    def flush(self) -> None:
        """Add the pending counts to the database; on failure they stay pending for the next try."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(lambda: [0] * len(FIELDS))
        if not pending:
            return
        totals = defaultdict(lambda: [0] * len(FIELDS))
        for (_, key_name, model), counts in pending.items():
            for index, value in enumerate(counts):
                totals[(key_name, model)][index] += value
        try:
            with self.engine.begin() as connection:
                # Rows in one order in every worker (totals, then days), so two flushes at once never
                # deadlock (PostgreSQL).
                for (key_name, model), counts in sorted(totals.items()):
                    _add_row(connection, usage_table, {"key_name": key_name, "model": model}, counts)
                for (day, key_name, model), counts in sorted(pending.items()):
                    _add_row(connection, daily_table, {"date": day, "key_name": key_name, "model": model}, counts)
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


def _add_row(connection, table: sa.Table, row: dict, counts: list) -> None:
    """Add to a row in one statement (INSERT ... ON CONFLICT DO UPDATE), safe against other workers."""
    values = dict(zip(FIELDS, counts))
    insert = _UPSERTS[connection.dialect.name](table).values(**row, **values)
    connection.execute(insert.on_conflict_do_update(
        index_elements=list(row), set_={field: table.c[field] + insert.excluded[field] for field in FIELDS}))


_UPSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}
