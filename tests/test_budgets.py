"""Token budgets (security/budgets.py): tokens per minute, UTC day and UTC month per key, counted in Redis or
in the database, against the real gateway under gunicorn.

Each answer's tokens are added when its response ends, just before its access line is written, so a
test that needs the count settled waits for that line (by request id) before the next request.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
import sqlalchemy as sa

from mlops_backend.config import Config
from mlops_backend.security.budgets import Budgets, DatabaseWindows, window
from mlops_backend.security.keys import ApiKey
from mlops_backend.storage.database import Database
from mlops_backend.storage.tables import token_windows
from tests.support import API_KEY, AUTH, post_stream, sse_events, wait_for_access_line

KEYED = {**AUTH, "Connection": "close"}  # a new connection per request: they spread over the workers
#: `2026-11-26 17:16:57,605 INFO <pid> [<request id>] mlops_backend.access: ...`
PID = re.compile(r"^\S+ \S+ \w+ (\d+) \[")
UNSET = {"TOKENS_PER_MINUTE": None, "TOKENS_PER_DAY": None, "TOKENS_PER_MONTH": None}
#: What a new connection sends (the budgets' client has one of its own), not a request.
CONNECTING = ("hello", "client", "select", "auth")
HEADERS = ("X-Budget-Remaining-Minute", "X-Budget-Remaining-Day", "X-Budget-Remaining-Month")


class Answer:
    """One response, read and closed at once, with the tokens Ollama counted for it."""

    def __init__(self, response: requests.Response):
        with response:
            self.status = response.status_code
            self.headers = response.headers
            self.json = response.json() if "json" in response.headers.get("Content-Type", "") else None
        self.request_id = self.headers.get("X-Request-ID")
        body = self.json if self.status == 200 else {}
        self.tokens = body.get("prompt_eval_count", 0) + body.get("eval_count", 0)


def generate(gateway, path="/api/llm/generate", body=None) -> Answer:
    return Answer(requests.post(gateway.url + path, json=body or {"prompt": "hi"}, headers=KEYED, timeout=30))


def settled(gateway, answer: Answer) -> int:
    """Wait until the answer's tokens are counted (its access line is written after); return its worker's pid."""
    return int(PID.match(wait_for_access_line(gateway, answer.request_id)).group(1))


def until_refused(gateway, budget: int, limit: int = 40, settle=None) -> tuple[list[Answer], Answer, set]:
    """Generate one request at a time until the first 429; check each passed exactly while the sum was under
    `budget`. `settle(total)`, if given, waits until the shared count holds the sum so far. Return the answers,
    the refusal and the workers that answered."""
    answers, spent, pids = [], 0, set()
    for _ in range(limit):
        if settle is not None and spent:
            settle(spent)
        answer = generate(gateway)
        pids.add(settled(gateway, answer))
        if spent >= budget:
            assert answer.status == 429, (spent, answer.status, answer.json)
            return answers, answer, pids
        assert answer.status == 200, (spent, answer.status, answer.json)
        assert answer.tokens > 0
        spent += answer.tokens
        answers.append(answer)
    raise AssertionError(f"never refused after {limit} requests")


def seconds_to_midnight() -> float:
    return (int(time.time()) // 86400 + 1) * 86400 - time.time()


def assert_refused(answer: Answer, what: str, reset_in: float) -> None:
    """The 429 of a spent budget: problem+json naming the key and the budget, Retry-After to the window's end."""
    assert answer.status == 429
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json["type"].endswith(":token-budget-spent") and answer.json["status"] == 429
    assert "'default'" in answer.json["detail"] and what in answer.json["detail"]
    assert abs(int(answer.headers["Retry-After"]) - reset_in) <= 2, (answer.headers["Retry-After"], reset_in)


def total(read, expected, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value == expected


def db_tokens(url: str, window_id: str, key: str = "default") -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.select(sa.func.coalesce(sa.func.sum(token_windows.c.tokens), 0)).where(
                token_windows.c.key_name == key, token_windows.c.window == window_id)).scalar()
    finally:
        engine.dispose()


# -- the windows and the limits, in-process -------------------------------------------------------------------


def test_windows_are_utc_calendar_windows():
    now = 1796131623.5  # 2026-12-01T13:27:03.5Z
    assert window("minute", now) == (f"minute:{int(now // 60)}", (int(now // 60) + 1) * 60)
    assert window("day", now) == ("day:2026-12-01", 1796169600.0)  # 2026-12-02T00:00:00Z
    assert window("month", now) == ("month:2026-12", 1798761600.0)  # 2027-01-01T00:00:00Z
    assert window("month", 1770000000) == ("month:2026-02", 1772323200.0)  # Feb 2026 -> 2026-03-01
    assert window("day", 1796169599.999)[0] == "day:2026-12-01" and window("day", 1796169600)[0] == "day:2026-12-02"


def _budgets(**config) -> Budgets:
    return Budgets(SimpleNamespace(config=Config.from_mapping({"API_KEY": API_KEY, **config}),
                                   database=Database("sqlite://")))


def test_a_keys_own_budget_overrides_the_default_and_zero_means_unlimited():
    budgets = _budgets(TOKENS_PER_DAY="100", TOKENS_PER_MONTH="5000")
    assert budgets.limits(ApiKey("k")) == {"minute": None, "day": 100, "month": 5000}
    assert budgets.limits(ApiKey("k", tokens_per_day=7, tokens_per_minute=3)) == {"minute": 3, "day": 7,
                                                                                  "month": 5000}
    assert budgets.limits(ApiKey("k", tokens_per_day=0, tokens_per_month=0)) == {"minute": None, "day": None,
                                                                                "month": None}
    assert _budgets().limits(ApiKey("k", tokens_per_day=9)) == {"minute": None, "day": 9, "month": None}


def test_remaining_counts_down_in_the_database():
    budgets = _budgets(TOKENS_PER_DAY="100")
    key = ApiKey("team", tokens_per_minute=50)
    assert budgets.remaining(key) == {"minute": 50, "day": 100, "month": None}
    now = time.time()
    budgets.store.add("team", [window("minute", now), window("day", now)], 30, now)
    budgets.store.add("team", [window("day", now)], 80, now)
    assert budgets.remaining(key) == {"minute": 20, "day": 0, "month": None}
    assert budgets.remaining(ApiKey("other", tokens_per_day=0)) == {"minute": None, "day": None, "month": None}
    budgets.close()
    budgets.store.database.close()


def test_the_database_store_writes_in_batches_and_keeps_what_it_could_not_write(tmp_path):
    url = f"sqlite:///{tmp_path}/b.db"
    store = DatabaseWindows(Database(url))
    now = time.time()
    day = window("day", now)
    store.add("team", [day], 10, now)
    store.add("team", [day], 5, now)
    assert store.spent("team", [day[0]]) == {day[0]: 15} and db_tokens(url, day[0], "team") == 0  # pending
    store.flush()
    assert db_tokens(url, day[0], "team") == 15 and store.spent("team", [day[0]]) == {day[0]: 15}
    broken = DatabaseWindows(SimpleNamespace(engine=sa.create_engine(f"sqlite:///{tmp_path}/none/x.db")))
    broken.add("team", [day], 7, now)
    with pytest.raises(sa.exc.OperationalError):
        broken.flush()
    assert broken._pending == {("team", day[0]): [7, day[1]]}
    broken._pending.clear()  # nothing left for its flusher to retry
    broken.close()
    store.add("team", [day], 1, now)
    store.close()  # writes what is pending
    assert db_tokens(url, day[0], "team") == 16
    store.database.close()


class CountingStore:
    """A store that only counts its calls (what a request costs in round trips)."""

    def __init__(self):
        self.reads, self.writes = 0, 0

    def spent(self, name, windows):
        self.reads += 1
        return {}

    def add(self, name, windows, tokens, now):
        self.writes += 1

    def close(self):
        pass


@pytest.mark.parametrize("config,reads", [({}, 0), ({"TOKENS_PER_DAY": "0"}, 0), ({"TOKENS_PER_DAY": "1000000"}, 5),
                                          ({"TOKENS_PER_MINUTE": "9999", "TOKENS_PER_MONTH": "99999"}, 5)])
def test_a_request_costs_one_read_and_one_write_with_a_budget_and_none_without(double, close_apps, config, reads):
    from mlops_backend import create_app

    app = create_app({"API_KEY": API_KEY, "OLLAMA_BASE_URL": double.url, "DEFAULT_MODEL": "llama3.2",
                      "DATABASE_URL": "sqlite://", **config})
    close_apps(app)
    store = app.extensions["mlops_backend"].budgets.store = CountingStore()
    client = app.test_client()
    for _ in range(5):
        client.post("/api/llm/generate", headers=AUTH, json={"prompt": "hi"}).close()
    assert (store.reads, store.writes) == (reads, reads)


def test_a_keys_own_day_budget_refuses_in_process(double, close_apps):
    from mlops_backend import create_app

    app = create_app({"API_KEY": API_KEY, "OLLAMA_BASE_URL": double.url, "DEFAULT_MODEL": "llama3.2",
                      "DATABASE_URL": "sqlite://"})
    close_apps(app)
    keys = app.extensions["mlops_backend"].keys
    keys.shared = ApiKey("default", keys.shared.scopes, tokens_per_day=20)  # until the keys file carries budgets
    client = app.test_client()
    statuses = []
    for _ in range(3):
        response = client.post("/api/llm/generate", headers=AUTH, json={"prompt": "hi"})
        statuses.append((response.status_code, response.headers.get("X-Budget-Remaining-Day")))
        response.close()
    assert statuses == [(200, "5"), (200, "0"), (429, "0")]  # 15 tokens an answer: 15, then 30 >= 20
    assert app.extensions["mlops_backend"].budgets.remaining(keys.shared)["day"] == 0


# -- the real gateway -------------------------------------------------------------------------------------------


def test_a_day_budget_passes_until_spent_then_429_until_midnight_utc(start_gateway, double, tmp_path):
    gateway = start_gateway(TOKENS_PER_DAY=100, DATABASE_URL=f"sqlite:///{tmp_path}/gw.db")
    double.script(tokens=["a", "b", "c", "d", "e"])  # 12 prompt + 5 completion tokens: 17 an answer
    answers, refused, _ = until_refused(gateway, 100)
    assert len(answers) == 6  # 6 x 17 = 102: the sixth passed at 85, and ended over the budget
    spent = 0
    for answer in answers:
        spent += answer.tokens
        assert answer.headers["X-Budget-Remaining-Day"] == str(max(100 - spent, 0))  # its own tokens included
        assert "X-Budget-Remaining-Minute" not in answer.headers and "X-Budget-Remaining-Month" not in answer.headers
    assert_refused(refused, "100 tokens per day", seconds_to_midnight())
    assert refused.headers["X-Budget-Remaining-Day"] == "0"
    assert spent == 102
    total(lambda: db_tokens(f"sqlite:///{tmp_path}/gw.db", window("day", time.time())[0]), 102)
    line = wait_for_access_line(gateway, refused.request_id)
    assert "rate_limited=tokens" in line
    # Every API answers in its own shape, with Retry-After; the admin routes stay open.
    ollama = generate(gateway, "/ollama/api/generate", {"model": "llama3.2", "prompt": "hi", "stream": False})
    assert ollama.status == 429 and "100 tokens per day" in ollama.json["error"]
    openai = generate(gateway, "/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "user",
                                                                                           "content": "hi"}]})
    assert openai.status == 429 and openai.json["error"]["type"] == "rate_limit_error"
    assert openai.json["error"]["code"] == "token_budget_spent"
    anthropic = generate(gateway, "/v1/messages", {"model": "llama3.2", "max_tokens": 9,
                                                   "messages": [{"role": "user", "content": "hi"}]})
    assert anthropic.status == 429 and anthropic.json["error"]["type"] == "rate_limit_error"
    for answer in (ollama, openai, anthropic):
        assert abs(int(answer.headers["Retry-After"]) - seconds_to_midnight()) <= 2
    usage = requests.get(gateway.url + "/api/usage", headers=AUTH, timeout=10)
    assert usage.status_code == 200 and not any(name in usage.headers for name in HEADERS)
    assert requests.get(gateway.url + "/health", timeout=10).status_code == 200


def test_pass_through_usage_counts_against_the_budget(start_gateway, tmp_path):
    gateway = start_gateway(TOKENS_PER_DAY=40, DATABASE_URL=f"sqlite:///{tmp_path}/gw.db")
    bodies = [("/v1/chat/completions", {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}),
              ("/v1/messages", {"model": "llama3.2", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}),
              ("/ollama/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}],
                                    "stream": False})]
    spent = 0
    for path, body in bodies:
        answer = generate(gateway, path, body)
        settled(gateway, answer)
        assert answer.status == 200
        usage = answer.json.get("usage", {})
        spent += (usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0) + usage.get("input_tokens", 0)
                  + usage.get("output_tokens", 0) + answer.tokens)
    assert spent > 40
    total(lambda: db_tokens(f"sqlite:///{tmp_path}/gw.db", window("day", time.time())[0]), spent)
    assert generate(gateway).status == 429


def test_tokens_per_minute_refuse_until_the_next_minute(start_gateway, double, tmp_path):
    if time.time() % 60 > 45:  # the window must not turn over in the middle of the test
        time.sleep(61 - time.time() % 60)
    gateway = start_gateway(TOKENS_PER_MINUTE=30, TOKENS_PER_MONTH=1_000_000, DATABASE_URL=f"sqlite:///{tmp_path}/g.db")
    answers, refused, _ = until_refused(gateway, 30)
    assert len(answers) == 2  # 15 tokens an answer
    assert answers[0].headers["X-Budget-Remaining-Minute"] == "15"
    assert answers[0].headers["X-Budget-Remaining-Month"] == "999985"
    assert "X-Budget-Remaining-Day" not in answers[0].headers
    assert_refused(refused, "30 tokens per minute", 60 - time.time() % 60)
    assert refused.headers["X-Budget-Remaining-Month"] == "999970"


def test_a_stream_running_when_the_budget_is_spent_is_not_cut(start_gateway, double, tmp_path):
    url = f"sqlite:///{tmp_path}/gw.db"
    gateway = start_gateway(TOKENS_PER_DAY=30, DATABASE_URL=url)
    double.script(tokens=["x"] * 20, delay=0.1)  # a stream of about 2 s
    stream = post_stream(gateway, {"prompt": "hi"}, {"Connection": "close"})
    assert stream.status_code == 200 and stream.headers["X-Budget-Remaining-Day"] == "30"
    events = []
    reader = threading.Thread(target=lambda: events.extend(sse_events(stream)), daemon=True)
    reader.start()
    double.script(tokens=["y"] * 3)  # the whole answers beside it: 15 tokens each
    whole = [generate(gateway) for _ in range(3)]
    for answer in whole:
        settled(gateway, answer)
    assert [a.status for a in whole] == [200, 200, 429]
    reader.join(10)
    assert len(events) == 21 and events[-1]["done"] is True and "error" not in events[-1]
    settled(gateway, SimpleNamespace(request_id=stream.headers["X-Request-ID"]))
    streamed = events[-1]["prompt_eval_count"] + events[-1]["eval_count"]
    total(lambda: db_tokens(url, window("day", time.time())[0]), 30 + streamed)
    stream.close()


def test_redis_counts_one_budget_exactly_across_two_workers(start_gateway, double, redis_server, redis_url):
    gateway = start_gateway(WEB_CONCURRENCY=2, RATE_LIMIT_STORAGE=redis_url, TOKENS_PER_DAY=100)
    double.script(tokens=["a", "b", "c", "d", "e", "f"])  # 18 tokens an answer

    def counted() -> int:
        with redis_server.client() as client:
            return int(client.get(f"mlops/budget/default/{window('day', time.time())[0]}") or 0)

    for round_ in range(8):  # one at a time, until a round's requests were answered by both workers
        redis_server.flush()
        answers, refused, pids = until_refused(gateway, 100)
        assert len(answers) == 6 and counted() == sum(a.tokens for a in answers) == 108
        assert_refused(refused, "100 tokens per day", seconds_to_midnight())
        if len(pids) == 2:
            break
    else:
        raise AssertionError(f"one worker answered every round:\n{gateway.log()}")
    print(f"\nredis, 2 workers: the 429 came exactly past 100 tokens in round {round_ + 1}")
    with redis_server.client() as client:
        ttl = client.ttl(f"mlops/budget/default/{window('day', time.time())[0]}")
    assert seconds_to_midnight() <= ttl <= seconds_to_midnight() + 62

    # At once, from threads: every answered request counts exactly once, whichever worker ended it; those
    # that started while the budget was left all pass (the check is at the start).
    redis_server.flush()
    double.script(tokens=["x"] * 5, delay=0.05)
    with ThreadPoolExecutor(16) as pool:
        burst = list(pool.map(lambda _: generate(gateway), range(32)))
    pids = {settled(gateway, answer) for answer in burst}
    answered = [a for a in burst if a.status == 200]
    assert all(a.status in (200, 429) for a in burst) and len(answered) >= 6
    total(counted, sum(a.tokens for a in answered))
    print(f"burst of 32 over {len(pids)} workers: {len(answered)} answered, {counted()} tokens counted")


def test_no_budget_means_no_redis_command(start_gateway, redis_server, redis_url):
    def commands(gateway) -> dict:
        """Redis's command counts over 10 generations (commands inside the slots' scripts included)."""
        with redis_server.client() as client:
            client.config_resetstat()
        for _ in range(10):
            settled(gateway, generate(gateway))
        with redis_server.client() as client:
            stats = client.info("commandstats")
        gateway.stop()
        return {name[len("cmdstat_"):]: value["calls"] for name, value in stats.items()}

    without = commands(start_gateway(RATE_LIMIT_STORAGE=redis_url, **UNSET))
    assert without.get("mget", 0) == without.get("incrby", 0) == 0
    with redis_server.client() as client:
        assert client.keys("mlops/budget/*") == []
    budgeted = commands(start_gateway(RATE_LIMIT_STORAGE=redis_url, TOKENS_PER_DAY=1_000_000,
                                      TOKENS_PER_MONTH=10_000_000))
    added = {name: calls - without.get(name, 0) for name, calls in budgeted.items()
             if calls != without.get(name, 0) and not name.startswith(CONNECTING)}
    # One MGET of both windows per request, and one pipelined INCRBY + EXPIRE per window when it ends.
    assert added == {"mget": 10, "incrby": 20, "expire": 20}, (without, budgeted)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_database_counts_one_budget_across_two_workers(start_gateway, double, tmp_path, request, database):
    url = f"sqlite:///{tmp_path}/gw.db" if database == "sqlite" else request.getfixturevalue("postgres_url")
    gateway = start_gateway(WEB_CONCURRENCY=2, TOKENS_PER_DAY=100, DATABASE_URL=url)
    double.script(tokens=["a", "b", "c", "d", "e", "f", "g"])  # 19 tokens an answer
    # Each worker writes its counts every half second: wait for them, so the other worker sees them too.
    answers, refused, pids = until_refused(
        gateway, 100, settle=lambda spent: total(lambda: db_tokens(url, window("day", time.time())[0]), spent))
    assert len(answers) == 6 and db_tokens(url, window("day", time.time())[0]) == 114
    assert_refused(refused, "100 tokens per day", seconds_to_midnight())
    print(f"\n{database}, 2 workers: answered by {len(pids)} of them")


def test_a_keys_own_budget_from_the_keys_file_overrides_the_default(start_gateway, tmp_path):
    from mlops_backend.security.keys import make_entry, write_entries

    path = tmp_path / "keys.toml"
    write_entries(str(path), [make_entry("team", "mlk_team-token-0123456789", ["use"], tokens_per_day=20),
                              make_entry("free", "mlk_free-token-0123456789", ["use"], tokens_per_day=0)])
    gateway = start_gateway(API_KEYS_FILE=str(path), TOKENS_PER_DAY=1000, DATABASE_URL=f"sqlite:///{tmp_path}/g.db")

    def as_key(token):
        return Answer(requests.post(gateway.url + "/api/llm/generate", json={"prompt": "hi"},
                                    headers={"X-API-Key": token, "Connection": "close"}, timeout=30))

    team = [as_key("mlk_team-token-0123456789") for _ in range(3)]
    assert [(a.status, a.headers.get("X-Budget-Remaining-Day")) for a in team] == [(200, "5"), (200, "0"), (429, "0")]
    assert "'team'" in team[2].json["detail"] and "20 tokens per day" in team[2].json["detail"]
    free = as_key("mlk_free-token-0123456789")  # 0: unlimited, whatever the default
    assert free.status == 200 and not any(name in free.headers for name in HEADERS)
    assert generate(gateway).headers["X-Budget-Remaining-Day"] == "985"  # the shared key: the default
