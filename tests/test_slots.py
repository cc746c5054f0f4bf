"""Generation slots (STREAMS_PER_KEY): every generation in flight holds one, streamed or not, and a worker
killed with SIGKILL cannot keep its slots in Redis beyond one lease."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from mlops_backend.security.slots import MemorySlots, RedisSlots
from tests.support import AUTH, post_stream, sse_items


def generate(gateway, body=None, path="/api/llm/generate"):
    response = requests.post(gateway.url + path, json=body or {"prompt": "hi"},
                             headers={**AUTH, "Connection": "close"}, timeout=30)
    response.close()
    return response


def in_background(call):
    """Run `call` in a thread; return a function that waits for and returns its result."""
    result = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()

    def join():
        thread.join(30)
        return result[0]
    return join


def wait_until_generating(double, count=1, timeout=5.0):
    deadline = time.monotonic() + timeout
    while sum(1 for r in double.requests if r["path"] in ("/api/generate", "/api/chat", "/v1/chat/completions")) \
            < count:
        assert time.monotonic() < deadline, "the generation never reached the double"
        time.sleep(0.02)


@pytest.mark.parametrize("path,body,concurrent", [
    ("/api/llm/generate", {"prompt": "hi"}, {"prompt": "hi"}),
    ("/api/llm/chat", {"messages": [{"role": "user", "content": "hi"}]}, {"prompt": "hi"}),
    ("/ollama/api/generate", {"model": "llama3.2", "prompt": "hi", "stream": False}, {"prompt": "hi"}),
    ("/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
     {"prompt": "hi"}),
])
def test_a_whole_generation_holds_a_slot_while_it_runs(start_gateway, double, path, body, concurrent):
    gateway = start_gateway(STREAMS_PER_KEY=1)
    double.script(tokens=["slow"] * 10, delay=0.15)  # a whole answer after about 1.5 s
    first = in_background(lambda: generate(gateway, body, path))
    wait_until_generating(double)
    refused = generate(gateway, concurrent)
    assert refused.status_code == 429 and "1 generations in flight" in refused.json()["detail"]
    assert first().status_code == 200
    assert generate(gateway, concurrent).status_code == 200  # given back when the answer ended


def test_a_stream_and_a_whole_generation_share_the_slots(start_gateway, double):
    gateway = start_gateway(STREAMS_PER_KEY=2)
    double.script(tokens=["x"] * 20, delay=0.1)
    stream = post_stream(gateway, {"prompt": "hi"}, {"Connection": "close"})
    whole = in_background(lambda: generate(gateway))
    wait_until_generating(double, 2)
    assert post_stream(gateway, {"prompt": "hi"}, {"Connection": "close"}).status_code == 429
    assert whole().status_code == 200
    assert [kind for _, kind, _ in sse_items(stream)].count("data") == 21
    stream.close()


def test_memory_slots_count_and_give_back():
    slots = MemorySlots()
    leases = [slots.acquire("k", 2), slots.acquire("k", 2)]
    assert None not in leases and slots.acquire("k", 2) is None
    assert slots.acquire("other", 2) is not None
    slots.release("k", leases[0])
    assert slots.acquire("k", 2) is not None


def test_redis_leases_lapse_unless_renewed(redis_server, redis_url):
    holder, other = RedisSlots(redis_url, lease_seconds=1), RedisSlots(redis_url, lease_seconds=1)
    try:
        lease = holder.acquire("k", 1)
        assert lease is not None and other.acquire("k", 1) is None
        for _ in range(3):  # renewed: still held after three lease lengths
            time.sleep(0.5)
            holder.renew()
        assert other.acquire("k", 1) is None
        with holder._lock:  # stop renewing, as a dead worker would
            holder._held.clear()
        time.sleep(1.2)
        assert other.acquire("k", 1) is not None
    finally:
        holder.close()
        other.close()


def test_slots_of_a_worker_killed_with_sigkill_come_back_within_a_lease(start_gateway, double, redis_server,
                                                                        redis_url):
    gateway = start_gateway(RATE_LIMIT_STORAGE=redis_url, STREAMS_PER_KEY=1, SLOT_LEASE_SECONDS=3)
    double.script(tokens=["x"] * 600, delay=0.05)  # 30 s: it would hold the slot for the whole test
    stream = post_stream(gateway, {"prompt": "hi"}, {"Connection": "close"})
    assert stream.status_code == 200
    assert post_stream(gateway, {"prompt": "hi"}, {"Connection": "close"}).status_code == 429
    worker = gateway.worker_pids()[0]
    os.kill(worker, signal.SIGKILL)  # no finally, no release: only the lease can give the slot back
    stream.close()
    killed_at = time.monotonic()
    while gateway.worker_pids() in ([], [worker]):  # gunicorn starts a new worker
        time.sleep(0.05)
        assert time.monotonic() - killed_at < 20
    double.script(tokens=["y"])
    while True:
        try:
            response = post_stream(gateway, {"prompt": "hi"}, {"Connection": "close"})
        except requests.ConnectionError:
            time.sleep(0.1)
            continue
        waited = time.monotonic() - killed_at
        if response.status_code == 200:
            break
        assert response.status_code == 429
        response.close()
        assert waited < 10, "the dead worker's slot was not free again within 10 s (lease: 3 s)"
        time.sleep(0.2)
    events = [value for _, kind, value in sse_items(response) if kind == "data"]
    assert events[0] == {"text": "y"} and events[-1]["done"] is True
    print(f"\nslot of a SIGKILLed worker free again after {waited:.1f} s (SLOT_LEASE_SECONDS=3)")
    assert waited >= 1.5  # it was held until the lease lapsed, not given back by anyone
