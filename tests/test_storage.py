"""The database's schema comes from the Alembic migrations, and they build exactly what storage/tables.py
declares, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from mlops_backend.storage import database
from mlops_backend.storage.tables import metadata
from tests.support import ROOT


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    return request.getfixturevalue("postgres_url")


def differences(engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": database.VERSION_TABLE})
        return compare_metadata(context, metadata)


def test_the_migrations_build_exactly_the_declared_tables(url):
    engine = database.create_engine(url)
    try:
        assert database.current(engine) is None
        database.upgrade(engine)
        assert database.current(engine) == database.head()
        assert differences(engine) == []
        assert set(sa.inspect(engine).get_table_names()) == set(metadata.tables) | {database.VERSION_TABLE}
        database.upgrade(engine)  # again: nothing to do, nothing fails
    finally:
        engine.dispose()


def test_a_database_from_before_the_migrations_keeps_its_usage(url):
    """Gateways before the migrations made the usage table with create_all; its rows survive the upgrade."""
    engine = database.create_engine(url)
    old = sa.Table("usage", sa.MetaData(), sa.Column("key_name", sa.String(64), primary_key=True),
                   sa.Column("model", sa.String(255), primary_key=True),
                   *(sa.Column(field, sa.BigInteger, nullable=False, default=0)
                     for field in ("requests", "prompt_tokens", "completion_tokens", "errors")))
    try:
        old.create(engine)  # as create_all made it then
        with engine.begin() as connection:
            connection.execute(old.insert().values(
                key_name="alice", model="llama3.2", requests=3, prompt_tokens=4, completion_tokens=5, errors=0))
        database.upgrade(engine)
        with engine.connect() as connection:
            assert connection.execute(sa.select(metadata.tables["usage"].c.requests)).scalar_one() == 3
        assert differences(engine) == []
    finally:
        engine.dispose()


def test_deleting_a_conversation_deletes_its_messages(url):
    """ON DELETE CASCADE holds on SQLite too (its foreign keys are off unless each connection turns them on)."""
    engine = database.create_engine(url)
    conversations, messages = metadata.tables["conversations"], metadata.tables["messages"]
    try:
        database.upgrade(engine)
        with engine.begin() as connection:
            connection.execute(conversations.insert().values(id="c1", key_name="k", created_at=1, updated_at=1))
            connection.execute(messages.insert().values(conversation_id="c1", position=0, role="user", content="hi",
                                                        interrupted=False, created_at=1))
            connection.execute(conversations.delete().where(conversations.c.id == "c1"))
            assert connection.execute(sa.select(sa.func.count()).select_from(messages)).scalar_one() == 0
    finally:
        engine.dispose()


def test_flask_db_upgrade_migrates_the_configured_database(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT,
                            env={"DATABASE_URL": url, "API_KEY": "k" * 32, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    engine = database.create_engine(url)
    try:
        assert database.current(engine) == database.head()
    finally:
        engine.dispose()
    assert f"at revision {database.head()}" in result.stdout


def test_conversations_purge_deletes_what_is_older(tmp_path):
    from mlops_backend.storage.tables import conversations, messages, responses

    url = f"sqlite:///{tmp_path}/purge.db"
    engine = database.create_engine(url)
    day = 86400
    import time as clock

    now = clock.time()
    try:
        database.upgrade(engine)
        with engine.begin() as connection:
            for name, age in (("old", 31 * day), ("new", 29 * day)):
                connection.execute(conversations.insert().values(id=name, key_name="k", created_at=now - age,
                                                                 updated_at=now - age))
                connection.execute(messages.insert().values(conversation_id=name, position=0, role="user",
                                                            content="hi", interrupted=False, created_at=now - age))
                connection.execute(responses.insert().values(id=f"resp_{name}", key_name="k", input=[], output=[],
                                                             created_at=now - age))
        result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "conversations", "purge",
                                 "--older-than", "30d"], cwd=ROOT,
                                env={"DATABASE_URL": url, "API_KEY": "k" * 32, "PATH": "/usr/bin:/bin"},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "Deleted 1 conversations and 1 stored responses older than 30d" in result.stdout
        with engine.connect() as connection:
            assert connection.execute(sa.select(conversations.c.id)).scalars().all() == ["new"]
            assert connection.execute(sa.select(messages.c.conversation_id)).scalars().all() == ["new"]
            assert connection.execute(sa.select(responses.c.id)).scalars().all() == ["resp_new"]
        bad = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "conversations", "purge",
                              "--older-than", "soon"], cwd=ROOT,
                             env={"DATABASE_URL": url, "API_KEY": "k" * 32, "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and "30d" in bad.stderr
    finally:
        engine.dispose()


def test_retention_purges_in_the_background():
    import threading

    from mlops_backend.services.retention import Retention

    calls, done = [], threading.Event()

    def purge(seconds):
        calls.append(seconds)
        if len(calls) == 2:
            done.set()
        return {"conversations": 0, "responses": 0}

    retention = Retention(purge, days=2, interval=0.01, first_wait=0.01)
    retention.start()
    try:
        assert done.wait(5)
    finally:
        retention.close()
    assert calls[:2] == [2 * 86400, 2 * 86400]
