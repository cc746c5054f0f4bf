"""Shared fixtures: the Ollama double, the real gateway under gunicorn, and an in-process app."""

from __future__ import annotations

import pytest

from mlops_backend import create_app
from tests.ollama_double import OllamaDouble
from tests.support import API_KEY, GatewayProcess


@pytest.fixture(scope="session")
def double():
    """One Ollama double for the session; each test starts from a clean script."""
    server = OllamaDouble().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset_double(request):
    if "double" in request.fixturenames:
        request.getfixturevalue("double").reset()


@pytest.fixture(scope="session")
def gateway(double):
    """The real service: gunicorn with one gevent worker, in front of the double."""
    process = GatewayProcess(double.url).start()
    yield process
    process.stop()


@pytest.fixture
def start_gateway(double):
    """Start extra gateways with their own settings; all are stopped after the test."""
    started = []

    def start(**env):
        process = GatewayProcess(env.pop("OLLAMA_BASE_URL", double.url), **env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def close_apps():
    """Close the Ollama connections of in-process apps a test builds (they pool sockets)."""
    apps = []
    yield apps.append
    for built in apps:
        built.extensions["mlops_backend"].close()


@pytest.fixture
def app(double, close_apps):
    """An in-process app (Flask's test client) for checks that need no real server."""
    built = create_app({"API_KEY": API_KEY, "OLLAMA_BASE_URL": double.url, "DEFAULT_MODEL": "llama3.2",
                        "DATABASE_URL": "sqlite://"})
    close_apps(built)
    return built


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server for the session (started only by tests that ask for Redis)."""
    from tests.redis_server import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied first so no test sees another's keys."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL cluster for the session (started only by tests that ask for PostgreSQL)."""
    from tests.postgres_server import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """A new, empty database on the session's PostgreSQL, so no test sees another's rows."""
    return postgres_server.create_database()
