"""The real redis-server the rate-limit tests rely on: it answers, keeps data, flushes, and goes away."""

from __future__ import annotations

import pytest
import redis

from tests.redis_server import RedisServer


def test_answers_ping_on_loopback(redis_url):
    assert redis_url.startswith("redis://127.0.0.1:") and redis_url.endswith("/0")
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping() is True
        client.set("left:behind", "1")  # the next test that asks for redis_url must not see it


def test_each_test_starts_empty(redis_url):
    """redis_url flushes first, so keys a test leaves behind (as the ping test does) are gone."""
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


def test_value_set_is_read_back_and_flush_empties_it(redis_server, redis_url):
    with redis.Redis.from_url(redis_url) as client:
        client.set("limit:key", "3")
        client.incr("limit:key")
        assert client.get("limit:key") == b"4"
        redis_server.flush()
        assert client.get("limit:key") is None
        assert client.dbsize() == 0


def test_stop_frees_the_port():
    server = RedisServer().start()
    try:
        with server.client() as client:
            assert client.ping() is True
    finally:
        assert server.stop() is not None
    with server.client() as client, pytest.raises(redis.ConnectionError, match="refused"):
        client.ping()
