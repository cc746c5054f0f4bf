"""The engine for DATABASE_URL, and bringing its schema up to date with the Alembic migrations.

Every worker (and every app a test or a host builds) runs `upgrade()` when it first uses the
database; the migrations run once, under a lock that serialises workers and instances: a
PostgreSQL advisory lock, or a lock file next to a SQLite database. The version is kept in a table
of our own (`mlops_alembic_version`), so an app that mounts the gateway may use Alembic for its own
tables in the same database.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "mlops_alembic_version"
SUPPORTED = ("sqlite", "postgresql")
_ADVISORY_LOCK = 0x6D6C6F7073  # "mlops": one lock id for every instance migrating one PostgreSQL database


def create_engine(url: str) -> sa.Engine:
    """An engine for `url`; SQLite gets a busy timeout (workers share the file), foreign keys, its directory,
    and for a file the write-ahead log (see _sqlite_wal)."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in SUPPORTED:
        raise ValueError(f"DATABASE_URL: {parsed.get_backend_name()} is not supported (use sqlite or postgresql)")
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if not parsed.database or parsed.database == ":memory:":
        # One shared connection, or each thread would see its own empty database.
        engine = sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_wal)
    sa.event.listen(engine, "connect", _sqlite_foreign_keys)
    return engine


def _sqlite_wal(dbapi_connection, _record) -> None:
    """The write-ahead log, synced at checkpoints: a commit (a usage flush, say) no longer waits on fsync
    while it holds its gevent worker's loop (measured: tens of ms every USAGE_FLUSH_SECONDS in the rollback
    journal), and readers never wait on a writer. A power cut may lose the last commits, never the file."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_foreign_keys(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")  # ON DELETE CASCADE, as PostgreSQL does it
    cursor.close()


# Alembic is imported where it is used: it takes most of a second to import, and a worker that finds its
# database up to date needs only MigrationContext (gunicorn queues the first requests behind the import).


def alembic_config(connection=None):
    """Alembic's configuration for our migrations, on `connection` (no alembic.ini needed)."""
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision the code knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current(engine: sa.Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Apply every migration the database lacks, once, whichever worker or instance gets there first."""
    if revision == "head" and current(engine) == head():
        return
    from alembic import command

    with engine.connect() as connection, _migration_lock(engine, connection):
        command.upgrade(alembic_config(connection), revision)
        connection.commit()


@contextlib.contextmanager
def _migration_lock(engine: sa.Engine, connection):
    if engine.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": _ADVISORY_LOCK})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": _ADVISORY_LOCK})
            connection.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(os.path.abspath(database) + ".migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Database:
    """DATABASE_URL for the services: one engine, opened (and migrated) when first used."""

    def __init__(self, url: str):
        self.url = url
        self._engine = None

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            engine = create_engine(self.url)
            upgrade(engine)
            self._engine = engine
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
