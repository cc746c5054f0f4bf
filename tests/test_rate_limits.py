"""Per-key limits against the real gateway under gunicorn: requests per minute and concurrent streams.

Every test starts its own gateway (and, for Redis, empties the session's redis-server), so no test
waits for a minute-long window to pass. Requests that must reach gunicorn's workers evenly go out
on new connections (no keep-alive), and the workers that answered are read back from the access
lines of the gateway's log by request id.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from mlops_backend.security.keys import make_entry, write_entries
from tests.support import AUTH, free_port, post_stream, sse_items, wait_for_access_line

PREFLIGHT = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "X-API-Key, Content-Type"}
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
#: `2026-11-26 17:16:57,605 INFO <pid> [<request id>] mlops_backend.access: POST /api/llm/generate 200 4.0ms ...`
ACCESS_LINE = re.compile(r"^\S+ \S+ \w+ (?P<pid>\d+) \[(?P<rid>[^\]]+)\] mlops_backend\.access: "
                         r"(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) ", re.MULTILINE)
SLOW = {"tokens": ["x"] * 20, "delay": 0.1}  # a stream of about 2 s
MEMORY_WARNING = "RATE_LIMIT_STORAGE=memory:// with 2 workers"
#: Concurrency of each round of requests sent until both workers answered some: one after another
#: first, then from threads, since at times one worker accepts every connection of a round.
ROUNDS = (1, 4, 8) + (16,) * 12


class Answer:
    """What the tests need from one response, read and closed at once."""

    def __init__(self, response: requests.Response):
        with response:
            self.status = response.status_code
            self.headers = response.headers
            self.content_type = response.headers.get("Content-Type", "")
            self.json = response.json() if self.content_type.endswith("json") else None
        self.request_id = self.headers.get("X-Request-ID")


def call(gateway, method: str, path: str, headers=None, json=None) -> Answer:
    """One request on a new connection (Connection: close), so gunicorn may hand it to any worker."""
    response = requests.request(method, gateway.url + path, headers={"Connection": "close", **(headers or {})},
                                json=json, timeout=30)
    return Answer(response)


def models(gateway, headers=AUTH) -> Answer:
    return call(gateway, "GET", "/api/llm/models", headers)


def generate(gateway, headers=AUTH) -> Answer:
    return call(gateway, "POST", "/api/llm/generate", headers, {"prompt": "hi"})


def as_key(token: str) -> dict:
    return {"X-API-Key": token}


def keys_file(tmp_path, *entries) -> str:
    """Write a keys file of (name, token, limits) and return its path for API_KEYS_FILE."""
    path = tmp_path / "keys.json"
    write_entries(str(path), [make_entry(name, token, ["use"], **limits) for name, token, limits in entries])
    return str(path)


def assert_refused(answer: Answer, key: str, limit: int) -> None:
    """The 429 of an exhausted budget: problem+json naming the key and its limit, with every header."""
    assert answer.status == 429, (answer.status, answer.json)
    assert answer.content_type == "application/problem+json"
    assert answer.json["status"] == 429
    assert answer.json["type"].endswith(":too-many-requests")
    assert repr(key) in answer.json["detail"] and f"{limit} requests per minute" in answer.json["detail"]
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.headers["RateLimit-Limit"] == str(limit)
    assert answer.headers["RateLimit-Remaining"] == "0"
    assert 0 <= int(answer.headers["RateLimit-Reset"]) <= 60


def assert_unlimited(answer: Answer) -> None:
    assert answer.status == 200, (answer.status, answer.json)
    assert not any(name in answer.headers for name in (*RATE_HEADERS, "Retry-After"))


def access_lines(gateway) -> dict[str, dict]:
    """Request id -> {pid, method, path, status} from the gateway's access lines."""
    return {m["rid"]: {"pid": int(m["pid"]), "method": m["method"], "path": m["path"], "status": int(m["status"])}
            for m in ACCESS_LINE.finditer(gateway.log())}


def served_by(gateway, answers, timeout: float = 5.0) -> dict[str, int]:
    """Request id -> worker pid for `answers`, waiting for lines written when a response ends (streams)."""
    wanted = {a.request_id for a in answers}
    assert None not in wanted
    deadline = time.monotonic() + timeout
    while True:
        lines = access_lines(gateway)
        if wanted <= set(lines) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    missing = wanted - set(lines)
    assert not missing, f"no access line for {missing}:\n{gateway.log()}"
    for answer in answers:
        assert lines[answer.request_id]["status"] == answer.status
    return {rid: lines[rid]["pid"] for rid in wanted}


def per_pid(answers, pids: dict[str, int]) -> dict[int, dict[int, int]]:
    """pid -> {status: count}."""
    counts: dict[int, dict[int, int]] = {}
    for answer in answers:
        by_status = counts.setdefault(pids[answer.request_id], {})
        by_status[answer.status] = by_status.get(answer.status, 0) + 1
    return counts


def burst(send, count: int, concurrency: int) -> list[Answer]:
    """`count` calls of `send()`, one after another (concurrency 1) or from a thread pool."""
    if concurrency == 1:
        return [send() for _ in range(count)]
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda _: send(), range(count)))


# -- requests per minute, memory://, one worker --------------------------------------------------------------


def test_budget_counts_down_then_refuses_with_problem_and_headers(start_gateway):
    gateway = start_gateway(RATE_LIMIT_PER_MINUTE=5)
    answers = [models(gateway) for _ in range(5)]
    for remaining, answer in zip(range(4, -1, -1), answers):
        assert answer.status == 200, answer.json
        assert answer.headers["RateLimit-Limit"] == "5"
        assert answer.headers["RateLimit-Remaining"] == str(remaining)
        assert answer.headers["RateLimit-Reset"].isdigit() and 0 <= int(answer.headers["RateLimit-Reset"]) <= 60
        assert "Retry-After" not in answer.headers

    refused = models(gateway)
    assert_refused(refused, "default", 5)
    assert int(refused.headers["Retry-After"]) >= int(refused.headers["RateLimit-Reset"])
    assert refused.json["request_id"] == refused.request_id
    # The refusal is in the log line of that request (written once the response is closed).
    served_by(gateway, [refused])
    line = re.search(rf"\[{refused.request_id}\] mlops_backend\.access: .*", gateway.log())[0]
    assert " 429 " in line and "rate_limited=requests" in line and "key=default" in line
    # One worker counting in memory is exact: no warning about memory://.
    assert "RATE_LIMIT_STORAGE=memory://" not in gateway.log()


def test_routes_of_the_blueprints_share_one_budget(start_gateway):
    gateway = start_gateway(RATE_LIMIT_PER_MINUTE=5)
    spent = [models(gateway), generate(gateway), models(gateway), call(gateway, "GET", "/api/usage", AUTH),
             generate(gateway)]
    assert [a.status for a in spent] == [200] * 5, [a.json for a in spent]
    assert [a.headers["RateLimit-Remaining"] for a in spent] == ["4", "3", "2", "1", "0"]

    assert_refused(generate(gateway), "default", 5)
    assert_refused(models(gateway), "default", 5)
    assert_refused(call(gateway, "GET", "/api/usage", AUTH), "default", 5)


def test_health_and_cors_preflights_are_never_counted_nor_refused(start_gateway):
    gateway = start_gateway(RATE_LIMIT_PER_MINUTE=3)
    for _ in range(10):
        health = call(gateway, "GET", "/health")
        assert health.status == 200
        assert not any(name in health.headers for name in RATE_HEADERS)
        preflight = call(gateway, "OPTIONS", "/api/llm/generate", PREFLIGHT)
        assert preflight.status == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert not any(name in preflight.headers for name in (*RATE_HEADERS, "Retry-After"))

    # Twenty uncounted requests later the whole budget is still there...
    assert [models(gateway).headers["RateLimit-Remaining"] for _ in range(3)] == ["2", "1", "0"]
    assert_refused(models(gateway), "default", 3)
    # ...and with it spent, health checks and preflights still pass.
    assert call(gateway, "GET", "/health").status == 200
    preflight = call(gateway, "OPTIONS", "/api/llm/generate", PREFLIGHT)
    assert preflight.status == 200 and "Retry-After" not in preflight.headers


def test_each_key_has_its_own_budget_and_its_own_limit_overrides_the_default(start_gateway, tmp_path):
    path = keys_file(tmp_path, ("alice", "alice-token-0123456789", {}), ("bob", "bob-token-0123456789", {}),
                     ("carol", "carol-token-0123456789", {"requests_per_minute": 2}),
                     ("erin", "erin-token-0123456789", {"requests_per_minute": 8}),
                     ("dave", "dave-token-0123456789", {"requests_per_minute": 0}))
    gateway = start_gateway(RATE_LIMIT_PER_MINUTE=5, API_KEYS_FILE=path)
    alice, bob = as_key("alice-token-0123456789"), as_key("bob-token-0123456789")

    assert [models(gateway, alice).status for _ in range(5)] == [200] * 5
    assert_refused(models(gateway, alice), "alice", 5)
    # Alice spent hers; Bob and the shared key still have their whole budgets.
    assert [models(gateway, bob).headers["RateLimit-Remaining"] for _ in range(5)] == ["4", "3", "2", "1", "0"]
    assert_refused(models(gateway, bob), "bob", 5)
    assert models(gateway).headers["RateLimit-Remaining"] == "4"

    carol = as_key("carol-token-0123456789")
    answers = [models(gateway, carol) for _ in range(2)]
    assert [(a.status, a.headers["RateLimit-Limit"], a.headers["RateLimit-Remaining"]) for a in answers] == [
        (200, "2", "1"), (200, "2", "0")]
    assert_refused(models(gateway, carol), "carol", 2)

    erin = as_key("erin-token-0123456789")
    answers = [models(gateway, erin) for _ in range(8)]
    assert [a.status for a in answers] == [200] * 8
    assert answers[-1].headers["RateLimit-Limit"] == "8" and answers[-1].headers["RateLimit-Remaining"] == "0"
    assert_refused(models(gateway, erin), "erin", 8)

    # requests_per_minute 0 on the key: unlimited although the default is 5.
    for _ in range(12):
        assert_unlimited(models(gateway, as_key("dave-token-0123456789")))


def test_zero_per_minute_means_no_limit(start_gateway):
    gateway = start_gateway(RATE_LIMIT_PER_MINUTE=0)
    for index in range(50):
        assert_unlimited(generate(gateway) if index % 2 else models(gateway))


# -- concurrent streams, memory://, one worker ---------------------------------------------------------------


class OpenStream:
    """A stream whose first data event has arrived; the rest is read (or dropped) later."""

    def __init__(self, response: requests.Response):
        self.response = response
        self.items = sse_items(response)
        self.first = next(value for _, kind, value in self.items if kind == "data")

    def read_to_end(self) -> list[dict]:
        events = [self.first] + [value for _, kind, value in self.items if kind == "data"]
        self.response.close()
        return events

    def close(self):
        self.response.close()


@pytest.fixture
def streams():
    """Open streams (and refused ones) of a test; all kept open until its end, then closed.

    Kept: dropping an accepted stream's reader would close its connection (urllib3 closes it when
    the body's generator is discarded unfinished), and with it free the gateway's slot.
    """
    opened = []

    def open_stream(gateway, headers=None, body=None):
        response = post_stream(gateway, body or {"prompt": "hi"}, {"Connection": "close", **(headers or {})})
        opened.append(response)
        if response.status_code != 200:
            return Answer(response)
        stream = OpenStream(response)
        opened.append(stream)
        return stream

    yield open_stream
    for item in opened:
        item.close()


def assert_too_many_streams(answer, key: str = "default", limit: int = 2) -> None:
    assert isinstance(answer, Answer) and answer.status == 429, answer
    assert answer.content_type == "application/problem+json"
    assert answer.json["type"].endswith(":too-many-streams")
    assert answer.json["status"] == 429
    assert answer.json["detail"] == f"The key {key!r} has {limit} generations in flight, its limit; see Retry-After"
    assert int(answer.headers["Retry-After"]) >= 1


def accepted_within(open_stream, gateway, seconds: float, headers=None) -> OpenStream:
    """Try a new stream until one is accepted; fail if none is within `seconds`."""
    started = time.monotonic()
    while True:
        attempt = open_stream(gateway, headers)
        if isinstance(attempt, OpenStream):
            return attempt
        assert_too_many_streams(attempt)
        assert time.monotonic() - started < seconds, f"no stream slot came back within {seconds} s"
        time.sleep(0.05)


def test_third_stream_is_refused_and_a_finished_stream_gives_its_slot_back(start_gateway, double, streams):
    gateway = start_gateway(STREAMS_PER_KEY=2)
    double.script(**SLOW)
    first = streams(gateway)
    double.script(tokens=["y"] * 100, delay=0.1)  # the others outlast the first by far
    second = streams(gateway)
    assert isinstance(first, OpenStream) and isinstance(second, OpenStream)
    assert first.first == {"text": "x"} and second.first == {"text": "y"}
    assert_too_many_streams(streams(gateway))
    assert_too_many_streams(streams(gateway))  # a refusal takes no slot either

    events = first.read_to_end()
    assert [e.get("text") for e in events[:-1]] == ["x"] * 20 and events[-1]["done"] is True
    third = accepted_within(streams, gateway, 1.0)
    assert third.first == {"text": "y"}
    # Two open again (second and third): the next one is refused.
    assert_too_many_streams(streams(gateway))


def test_a_stream_the_client_closes_early_gives_its_slot_back(start_gateway, double, streams):
    gateway = start_gateway(STREAMS_PER_KEY=2)
    double.script(**SLOW)
    first, second = streams(gateway), streams(gateway)
    assert isinstance(first, OpenStream) and isinstance(second, OpenStream)
    assert_too_many_streams(streams(gateway))

    first.close()  # about 1.9 s of the stream left
    third = accepted_within(streams, gateway, 1.0)
    assert third.first == {"text": "x"}
    assert_too_many_streams(streams(gateway))


def test_a_keys_own_concurrent_streams_overrides_the_default(start_gateway, double, streams, tmp_path):
    path = keys_file(tmp_path, ("solo", "solo-token-0123456789", {"concurrent_streams": 1}),
                     ("wide", "wide-token-0123456789", {"concurrent_streams": 3}),
                     ("free", "free-token-0123456789", {"concurrent_streams": 0}))
    gateway = start_gateway(STREAMS_PER_KEY=2, API_KEYS_FILE=path)
    double.script(**SLOW)
    solo, wide = as_key("solo-token-0123456789"), as_key("wide-token-0123456789")

    assert isinstance(streams(gateway, solo), OpenStream)
    assert_too_many_streams(streams(gateway, solo), "solo", 1)
    assert all(isinstance(streams(gateway, wide), OpenStream) for _ in range(3))
    assert_too_many_streams(streams(gateway, wide), "wide", 3)
    # 0 on the key: no stream limit, though the default is 2.
    assert all(isinstance(streams(gateway, as_key("free-token-0123456789")), OpenStream) for _ in range(4))
    # The shared key keeps the default of 2, untouched by the others' streams.
    assert all(isinstance(streams(gateway), OpenStream) for _ in range(2))
    assert_too_many_streams(streams(gateway), "default", 2)


def test_a_stream_refused_before_it_starts_keeps_no_slot(start_gateway, double, streams):
    gateway = start_gateway(STREAMS_PER_KEY=2)
    double.script(**SLOW)
    for _ in range(4):
        refused = streams(gateway, body={"model": "no-such-model", "prompt": "hi"})
        assert isinstance(refused, Answer) and refused.status == 404, refused.json
        assert refused.content_type == "application/problem+json"
    # Had the 404s held their slots, both of these would be refused.
    assert all(isinstance(streams(gateway), OpenStream) for _ in range(2))
    assert_too_many_streams(streams(gateway))


# -- Redis: one budget across gunicorn's workers --------------------------------------------------------------


def spread_over_workers(gateway, send, count: int, reset, check) -> tuple[list[Answer], dict[str, int]]:
    """Send `count` requests, each on a new connection, until both workers answered some of one round.

    Each round starts from `reset()` (fresh counters) and its answers must pass `check(answers)`; a
    round that one worker took alone is sent again with more concurrency.
    """
    workers = set(gateway.worker_pids())
    assert len(workers) == 2, workers
    for concurrency in ROUNDS:
        reset()
        answers = burst(send, count, concurrency)
        check(answers)
        pids = served_by(gateway, answers)
        assert set(pids.values()) <= workers
        if set(pids.values()) == workers:
            return answers, pids
    raise AssertionError(f"one worker answered every round; the other never did:\n{gateway.log()}")


def test_redis_counts_one_budget_across_two_workers(start_gateway, redis_server, redis_url):
    gateway = start_gateway(WEB_CONCURRENCY=2, RATE_LIMIT_STORAGE=redis_url, RATE_LIMIT_PER_MINUTE=10)
    rounds = []

    def check(answers):
        rounds.append(len(answers))
        statuses = sorted(a.status for a in answers)
        assert statuses.count(200) == 10 and statuses.count(429) == 20, statuses
        for answer in answers:
            assert answer.headers["RateLimit-Limit"] == "10"
            if answer.status == 429:
                assert_refused(answer, "default", 10)
        if len(rounds) == 1:  # sent one after another: the shared count runs down 9..0 exactly once
            remaining = [a.headers["RateLimit-Remaining"] for a in answers if a.status == 200]
            assert remaining == [str(n) for n in range(9, -1, -1)]

    answers, pids = spread_over_workers(gateway, lambda: models(gateway), 30, redis_server.flush, check)
    counts = per_pid(answers, pids)
    print(f"\nredis, 2 workers, 10/minute, 30 requests in round {len(rounds)}: {counts}")
    assert len(counts) == 2 and sum(sum(c.values()) for c in counts.values()) == 30
    assert sum(c.get(200, 0) for c in counts.values()) == 10
    assert MEMORY_WARNING not in gateway.log()


class _Accepted:
    """An accepted stream's status and request id (its body is left to the test)."""

    def __init__(self, response):
        self.status = response.status_code
        self.headers = response.headers
        self.request_id = response.headers.get("X-Request-ID")


def test_redis_counts_stream_slots_across_two_workers(start_gateway, double, redis_server, redis_url):
    gateway = start_gateway(WEB_CONCURRENCY=2, RATE_LIMIT_STORAGE=redis_url, STREAMS_PER_KEY=2)
    double.script(tokens=["x"] * 100, delay=0.05)  # 5 s: every stream of a round is still open at its end
    opened: list = []  # responses, and the readers of accepted ones (kept, or their connections close)
    rounds = []

    def send():
        response = post_stream(gateway, {"prompt": "hi"}, {"Connection": "close"})
        opened.append(response)
        if response.status_code != 200:
            return Answer(response)
        stream = OpenStream(response)
        opened.append(stream)
        return _Accepted(response)

    def reset():
        for item in opened:
            item.close()
        opened.clear()
        redis_server.flush()

    def check(answers):
        accepted = [a for a in answers if a.status == 200]
        rounds.append((len(accepted), len(answers) - len(accepted)))
        assert len(accepted) == 2, [a.status for a in answers]
        for answer in answers:
            if answer.status != 200:
                assert_too_many_streams(answer)
        # Close the accepted streams so their access lines (written when a stream ends) name their worker.
        for item in opened:
            item.close()

    try:
        answers, pids = spread_over_workers(gateway, send, 12, reset, check)
    finally:
        reset()
    counts = per_pid(answers, pids)
    print(f"\nredis, 2 workers, 2 streams, 12 stream requests, rounds (accepted, refused): {rounds}; last: {counts}")
    assert len(counts) == 2
    # A worker holding fewer than 2 streams itself refused one: it counted the other worker's streams.
    assert any(by_status.get(429, 0) and by_status.get(200, 0) < 2 for by_status in counts.values()), counts


def test_memory_with_two_workers_counts_per_worker_and_warns(start_gateway):
    gateway = start_gateway(WEB_CONCURRENCY=2, RATE_LIMIT_STORAGE="memory://", RATE_LIMIT_PER_MINUTE=10)
    assert MEMORY_WARNING in gateway.log()
    assert "set RATE_LIMIT_STORAGE=redis://" in gateway.log()

    workers = gateway.worker_pids()
    answers, pids = [], {}
    # Fresh gateway, so no reset between rounds: keep sending until both workers have answered.
    for concurrency in ROUNDS:
        answers += burst(lambda: models(gateway), 30, concurrency)
        pids = served_by(gateway, answers)
        if set(pids.values()) == set(workers):
            break
    counts = per_pid(answers, pids)
    print(f"\nmemory://, 2 workers, 10/minute, {len(answers)} requests: {counts}")
    assert len(counts) == 2, counts
    # Each worker let its own 10 through: more than the key's 10 in total.
    for by_status in counts.values():
        assert by_status.get(200, 0) == min(10, sum(by_status.values()))
    assert sum(c.get(200, 0) for c in counts.values()) > 10


# -- Redis down: serve, unlimited, and say so ----------------------------------------------------------------


def test_unreachable_redis_fails_open_and_logs_it(start_gateway, double, streams):
    port = free_port()  # nobody listens there
    gateway = start_gateway(RATE_LIMIT_STORAGE=f"redis://127.0.0.1:{port}/0", RATE_LIMIT_PER_MINUTE=3,
                            STREAMS_PER_KEY=1)
    for index in range(8):
        answer = generate(gateway) if index % 2 else models(gateway)
        assert answer.status == 200, (answer.status, answer.json)
    # The failure is reported in the log, in our format, before any stream.
    assert re.search(r"ERROR \d+ \[\w+\] mlops_backend.security.rate_limits: Failed to rate limit",
                     gateway.log()), gateway.log()
    # Two streams at once although the key may hold one: slots are not counted either.
    double.script(tokens=["a"] * 5, delay=0.1)
    both = streams(gateway), streams(gateway)
    assert all(isinstance(stream, OpenStream) for stream in both)
    for stream in both:
        events = stream.read_to_end()
        assert [e.get("text") for e in events[:-1]] == ["a"] * 5 and events[-1]["done"] is True
    for stream in both:  # a stream's line is written when it ends: wait for both before reading what is missing
        assert " 200 " in wait_for_access_line(gateway, stream.response.headers["X-Request-ID"])
    log = gateway.log()
    assert " 500 " not in log and "Unhandled error" not in log
    assert "Generation slots unavailable (rate-limit storage down); not limiting" in log
    assert f"connecting to 127.0.0.1:{port}. Connection refused" in log


# -- defaults: a shared key is never capped; wrong keys are --------------------------------------------------


def test_with_nothing_configured_a_shared_key_is_never_refused(start_gateway, double):
    """The seed's frontend: every browser user on one API_KEY. 200 streams at once, then more requests in a
    minute than the old default of 600, all through that key: none is refused."""
    gateway = start_gateway(AUTH_FAILURES_PER_MINUTE=None)  # every limit at the gateway's own default
    double.script(tokens=["x"] * 5, delay=0.4)

    def one_stream(_):
        with post_stream(gateway, {"prompt": "hi"}, {"Connection": "close"}, timeout=60) as response:
            if response.status_code != 200:
                return response.status_code, None
            return 200, [value for _, kind, value in sse_items(response) if kind == "data"]

    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(one_stream, range(200)))
    assert [status for status, _ in results] == [200] * 200
    assert all([e.get("text") for e in events[:-1]] == ["x"] * 5 and events[-1]["done"] for _, events in results)
    # They were open together: the double saw at least 150 of them streaming at one moment.
    spans = [(s["started"], s["closed_at"]) for s in double.streams]
    peak = max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)
    print(f"\n200 concurrent streams through the shared key with the defaults: all 200; peak open at once: {peak}")
    assert peak >= 150

    double.reset()
    sessions = [requests.Session() for _ in range(16)]

    def generations(session):
        return [session.post(gateway.url + "/api/llm/generate", json={"prompt": "hi"}, headers=AUTH,
                             timeout=30).status_code for _ in range(60)]

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        statuses = [status for batch in pool.map(generations, sessions) for status in batch]
    elapsed = time.monotonic() - started
    for session in sessions:
        session.close()
    print(f"960 generations in {elapsed:.1f} s through the shared key: {statuses.count(200)} x 200")
    assert statuses == [200] * 960 and elapsed < 60  # more than 600 inside one minute


def wrong_key(gateway, headers=None) -> Answer:
    return models(gateway, {"X-API-Key": "not-a-key-0123456789abcdef", **(headers or {})})


def test_wrong_keys_from_one_address_get_429_once_its_budget_is_spent(start_gateway):
    gateway = start_gateway(AUTH_FAILURES_PER_MINUTE=None)  # 60 a minute by default
    for _ in range(100):  # CORS preflights are never counted
        assert call(gateway, "OPTIONS", "/api/llm/models", PREFLIGHT).status == 200
    answers = [wrong_key(gateway) for _ in range(200)]
    statuses = [answer.status for answer in answers]
    print(f"\n200 wrong keys in a row from one address: {statuses.count(401)} x 401, then {statuses.count(429)} x 429")
    assert statuses == [401] * 60 + [429] * 140
    refused = answers[-1]
    assert refused.content_type == "application/problem+json" and refused.json["status"] == 429
    assert "missing or wrong API key" in refused.json["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert models(gateway, {}).status == 429  # no key at all spends the same budget
    # A valid key from the same address never spends it, and is never refused by it.
    assert_unlimited(models(gateway))
    # Behind a trusted proxy (127.0.0.1 by default), each client address behind it has its own budget.
    assert wrong_key(gateway, {"X-Forwarded-For": "203.0.113.7"}).status == 401


def test_a_forwarded_address_counts_only_from_a_trusted_proxy(start_gateway):
    gateway = start_gateway(AUTH_FAILURES_PER_MINUTE=3, FORWARDED_ALLOW_IPS="192.0.2.1")
    statuses = [wrong_key(gateway, {"X-Forwarded-For": f"203.0.113.{n}"}).status for n in range(5)]
    assert statuses == [401] * 3 + [429] * 2  # 127.0.0.1 is not trusted here: X-Forwarded-For is ignored
