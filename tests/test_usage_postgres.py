"""Usage accounting on a real PostgreSQL (tests/postgres_server.py), as the README promises: DATABASE_URL
may name PostgreSQL, and several gunicorn workers add to the same rows with INSERT ... ON CONFLICT DO UPDATE.

First the UsageStore itself (one store, then two flushing into the same rows at once, as two workers
would), then the real gateway: gunicorn with two workers, its counts read back through GET /api/usage,
and still there after a restart. Three tests pin what only PostgreSQL shows (SQLite neither enforces
VARCHAR lengths nor locks rows, and creates tables one writer at a time): two workers' flushes must not
deadlock, two workers may create the table at once, and a model name longer than its column must not
block a worker's counts.
"""

from __future__ import annotations

import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
import sqlalchemy as sa

from mlops_backend.upstream.model_names import canonical
from mlops_backend.observability.usage import UsageStore
from mlops_backend.storage import database
from tests.support import AUTH, sse_events

KEYED = {**AUTH, "Connection": "close"}  # a new connection per request: they spread over the workers
# `2026-11-26 17:23:54,686 INFO 17030 [p-2] mlops_backend.access: GET /api/llm/models 200 9.1ms ...`
ACCESS_LINE = re.compile(r"^\S+ \S+ INFO (\d+) \[([^\]]+)\] mlops_backend\.access: ", re.MULTILINE)


def rows(store_or_url) -> dict:
    """The usage table as {(key, model): (requests, prompt_tokens, completion_tokens, errors)}."""
    store = store_or_url if isinstance(store_or_url, UsageStore) else UsageStore(store_or_url, 3600)
    try:
        return {(row["key_name"], row["model"]): (row["requests"], row["prompt_tokens"], row["completion_tokens"],
                                                  row["errors"]) for row in store.totals()}
    finally:
        if store is not store_or_url:
            store.close()


def settle(read, expected, timeout: float = 10.0, interval: float = 0.05):
    """Poll `read()` until it returns `expected`; fail with the last value (pytest shows the difference)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value == expected or time.monotonic() > deadline:
            assert value == expected
            return value
        time.sleep(interval)


def run_threads(target, args_list) -> list[str]:
    """Run target(*args) in one thread each, all at once; return the errors they raised, as text."""
    errors = []

    def run(*args):
        try:
            target(*args)
        except Exception as error:  # noqa: BLE001 - reported to the test, which asserts there are none
            errors.append(f"{type(error).__name__}: {str(error).splitlines()[0]}")

    threads = [threading.Thread(target=run, args=args) for args in args_list]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    return errors


# -- 1. UsageStore on PostgreSQL ---------------------------------------------------------------------------


def test_counts_wait_in_memory_then_add_up_exactly(postgres_url):
    store = UsageStore(postgres_url, flush_seconds=3600)  # flushed here by hand, never by its thread
    try:
        store.add("alice", "llama3.2", 11, 7)
        store.add("alice", "llama3.2", 5, 3, error=True)
        store.add("alice", "", 0, 0, error=True)  # a request that named no model
        store.add("bob", "llama3.2", None, None)  # Ollama gave no counts
        assert rows(postgres_url) == {}  # nothing written before a flush (the table is there, empty)

        store.flush()
        expected = {("alice", "llama3.2"): (2, 16, 10, 1), ("alice", ""): (1, 0, 0, 1),
                    ("bob", "llama3.2"): (1, 0, 0, 0)}
        assert rows(postgres_url) == expected
        store.flush()  # nothing pending: nothing added twice
        assert rows(postgres_url) == expected

        # The next batch adds to the existing rows (the ON CONFLICT DO UPDATE branch), and to a new one.
        store.add("alice", "llama3.2", 2**40, 1)  # BIGINT: more tokens than an INTEGER holds
        store.add("bob", "all-minilm", 9, 0)
        assert rows(store) == {**expected, ("alice", "llama3.2"): (3, 16 + 2**40, 11, 1),
                               ("bob", "all-minilm"): (1, 9, 0, 0)}
    finally:
        store.close()
    engine = sa.create_engine(postgres_url)
    try:
        columns = {column["name"]: column["type"] for column in sa.inspect(engine).get_columns("usage")}
    finally:
        engine.dispose()
    assert all(isinstance(columns[name], sa.BigInteger) for name in ("requests", "prompt_tokens", "completion_tokens",
                                                                     "errors"))


def test_two_stores_flushing_at_once_into_the_same_rows_give_exact_sums(postgres_url):
    """Two stores (two workers) with their own flush threads, every 5 ms, while three threads each add to
    the same nine rows: every count arrives, once."""
    stores = [UsageStore(postgres_url, flush_seconds=0.005) for _ in range(2)]
    for store in stores:
        store.engine  # noqa: B018 - the table exists before the race (creating it at once is tested below)
    keys = [(f"key-{k}", f"model-{m}") for k in range(3) for m in range(3)]
    expected = {}
    lock = threading.Lock()

    def add(store, seed):
        chance = random.Random(seed)
        for n in range(1500):
            key, model = chance.choice(keys)
            prompt, completion, error = chance.randrange(50), chance.randrange(20), n % 7 == 0
            store.add(key, model, prompt, completion, error)
            with lock:
                total = expected.get((key, model), (0, 0, 0, 0))
                expected[(key, model)] = (total[0] + 1, total[1] + prompt, total[2] + completion, total[3] + error)
            if n % 25 == 0:
                time.sleep(0.001)  # let the flush threads run in between

    try:
        assert run_threads(add, [(store, seed) for seed, store in enumerate(stores * 3)]) == []
        assert sum(count[0] for count in expected.values()) == 9000
        # Each store's own thread writes its counts: poll until the last batches are in.
        settle(lambda: rows(postgres_url), expected)
    finally:
        for store in stores:
            store.close()
    assert rows(postgres_url) == expected


def test_two_stores_flushing_the_same_rows_in_opposite_orders_do_not_deadlock(postgres_url):
    """Two workers that counted the same rows in opposite orders flush at the same moment. Were the rows
    upserted in that order, each would lock one and wait for the other's: PostgreSQL aborts one flush
    (DeadlockDetected), so GET /api/usage, which flushes first, answers 500, and a worker's exit flush
    loses its counts. Here each flush pauses after its first row until the other holds one too (or 0.5 s)."""
    first, second = UsageStore(postgres_url, 3600), UsageStore(postgres_url, 3600)
    both_hold_a_row = threading.Barrier(2, timeout=0.5)

    def after_the_first_upsert(store):
        upserts = []

        def before_execute(connection, cursor, statement, parameters, context, executemany):
            if statement.startswith("INSERT"):
                upserts.append(statement)
                if len(upserts) == 2:  # the first row is locked: wait (a little) until the other holds one too
                    try:
                        both_hold_a_row.wait()
                    except threading.BrokenBarrierError:
                        pass  # the other waits on our lock: the rows are taken in the same order

        sa.event.listen(store.engine, "before_cursor_execute", before_execute)

    try:
        for store in (first, second):
            after_the_first_upsert(store)
        first.add("alice", "a")
        first.add("alice", "b")
        second.add("alice", "b")
        second.add("alice", "a")
        assert run_threads(UsageStore.flush, [(first,), (second,)]) == []
        assert rows(postgres_url) == {("alice", "a"): (2, 0, 0, 0), ("alice", "b"): (2, 0, 0, 0)}
    finally:
        first.close()
        second.close()


def test_two_stores_migrating_at_once_both_work(postgres_url, monkeypatch):
    """Two workers' first flushes both find the database unmigrated and both migrate (a fresh 2-worker
    gateway met this as a 500 from GET /api/usage about one run in ten, when each created the table
    itself). The advisory lock runs the migrations once; the second store then finds them done, and
    both write their counts."""
    stores = [UsageStore(postgres_url, 3600) for _ in range(2)]
    both_checked = threading.Barrier(2, timeout=5)
    met = []  # the stores that found the database unmigrated while the other had too
    unmigrated = database.current

    def current(engine):
        revision = unmigrated(engine)
        if revision is None:
            try:
                both_checked.wait()
                met.append(True)
            except threading.BrokenBarrierError:
                pass
        return revision

    monkeypatch.setattr(database, "current", current)
    try:
        for store in stores:
            store.add("alice", "a", 1, 1)
        assert run_threads(UsageStore.flush, [(store,) for store in stores]) == []
        assert len(met) == 2, "the two stores did not both find the schema missing: the race was not run"
        assert rows(postgres_url) == {("alice", "a"): (2, 2, 2, 0)}
        assert unmigrated(stores[0].engine) == database.head()
    finally:
        for store in stores:
            store.close()


def test_a_model_name_longer_than_the_column_does_not_block_the_counts(postgres_url):
    """The model column is VARCHAR(255), but /api/llm/* take 256 characters and the /ollama and /v1 routes
    any length. PostgreSQL refuses a longer value (StringDataRightTruncation), and a batch holding one
    would fail on every flush: that worker's usage never written again, its GET /api/usage a 500.
    The name is counted cut to 255 characters."""
    store = UsageStore(postgres_url, 3600)
    try:
        store.add("alice", "m" * 256, 1, 1, error=True)  # valid for /api/llm/generate, unknown to Ollama
        store.add("alice", "m" * 4000, 2, 2, error=True)  # /v1/models/<name> takes any length
        store.add("alice", "llama3.2", 3, 4)
        store.flush()
        assert rows(store) == {("alice", "m" * 255): (2, 3, 3, 2), ("alice", "llama3.2"): (1, 3, 4, 0)}
    finally:
        store.close()


# -- 2. the gateway on PostgreSQL --------------------------------------------------------------------------


def usage(gateway) -> dict:
    """GET /api/usage as {(key, model): (requests, prompt_tokens, completion_tokens, errors)}."""
    with requests.get(gateway.url + "/api/usage", headers=KEYED, timeout=15) as response:
        assert response.status_code == 200, f"{response.text}\n{gateway.log()[-4000:]}"
        return {(row["key_name"], row["model"]): (row["requests"], row["prompt_tokens"], row["completion_tokens"],
                                                  row["errors"]) for row in response.json()["usage"]}


def generate(gateway, n: int) -> tuple[str, str, int, int]:
    request_id = f"pg-generate-{n}"
    with requests.post(gateway.url + "/api/llm/generate", headers={**KEYED, "X-Request-ID": request_id},
                       json={"model": "llama3.2", "prompt": "count me " * (n % 5 + 1)}, timeout=15) as response:
        assert response.status_code == 200, response.text
        answer = response.json()
    return request_id, "llama3.2", answer["prompt_eval_count"], answer["eval_count"]


def stream(gateway, n: int) -> tuple[str, str, int, int]:
    request_id = f"pg-stream-{n}"
    with requests.post(gateway.url + "/api/llm/stream", headers={**KEYED, "X-Request-ID": request_id},
                       json={"model": "llama3.2", "prompt": "stream " * (n % 4 + 1)}, stream=True,
                       timeout=15) as response:
        assert response.status_code == 200, response.text
        final = sse_events(response)[-1]
    assert final["done"] is True and "error" not in final, final
    return request_id, "llama3.2", final["prompt_eval_count"], final["eval_count"]


def embed(gateway, n: int) -> tuple[str, str, int, int]:
    request_id = f"pg-embed-{n}"
    with requests.post(gateway.url + "/api/llm/embed", headers={**KEYED, "X-Request-ID": request_id},
                       json={"model": "all-minilm", "input": ["one two", "three four five"][: n % 2 + 1]},
                       timeout=15) as response:
        assert response.status_code == 200, response.text
        answer = response.json()
    return request_id, "all-minilm", answer["prompt_eval_count"], 0


def send(gateway, count: int, start: int = 0) -> list[tuple[str, str, int, int]]:
    """`count` generate, stream and embed requests, six at a time; each one's (request id, model, tokens)."""
    calls = [(generate, stream, embed)[n % 3] for n in range(start, start + count)]
    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(lambda call, n: call(gateway, n), calls, range(start, start + count)))


def expect(answers, base: dict | None = None) -> dict:
    """The usage rows that `answers` add to `base` (rows name the model as Ollama does: `llama3.2:latest`)."""
    expected = dict(base or {})
    for _, model, prompt, completion in answers:
        row = ("default", canonical(model))
        total = expected.get(row, (0, 0, 0, 0))
        expected[row] = (total[0] + 1, total[1] + prompt, total[2] + completion, total[3])
    return expected


def send_to_both_workers(gateway, start: int) -> list[tuple[str, str, int, int]]:
    """Send batches until each of the two workers has answered some (they take connections as they come)."""
    workers, answers = set(gateway.worker_pids()), []
    assert len(workers) == 2
    for _ in range(10):
        answers += send(gateway, 24, start + len(answers))
        sent = {answer[0] for answer in answers}
        deadline = time.monotonic() + 5  # an access line is written just after its response closes
        while True:
            served = {int(pid) for pid, request_id in ACCESS_LINE.findall(gateway.log()) if request_id in sent}
            logged = {request_id for _, request_id in ACCESS_LINE.findall(gateway.log())}
            if sent <= logged or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if served == workers:
            return answers
    raise AssertionError(f"{len(answers)} requests, and not both workers of {workers} answered one")


def test_gateway_counts_exactly_across_two_workers_and_restarts(start_gateway, double, postgres_url):
    settings = {"DATABASE_URL": postgres_url, "USAGE_FLUSH_SECONDS": "0.2", "WEB_CONCURRENCY": "2"}
    gateway = start_gateway(**settings)  # its workers create the table
    double.script(tokens=["one", " two", " three"])

    answers = send_to_both_workers(gateway, 0)
    assert {model for _, model, _, _ in answers} == {"llama3.2", "all-minilm"}
    assert all(prompt > 0 for _, _, prompt, _ in answers)
    assert {completion for _, model, _, completion in answers if model == "llama3.2"} == {3}  # the scripted tokens
    expected = expect(answers)
    # Each worker adds its counts every USAGE_FLUSH_SECONDS: poll until the other worker's arrive.
    settle(lambda: usage(gateway), expected)
    assert rows(postgres_url) == expected  # the same, read from PostgreSQL directly

    # A new gateway on the same database reports them. This one writes only on exit (SIGTERM): what both
    # its workers count, flushed at the same moment into the same rows, must be there for the next one.
    assert gateway.stop() == 0
    restarted = start_gateway(**{**settings, "USAGE_FLUSH_SECONDS": "60"})
    assert usage(restarted) == expected
    more = send_to_both_workers(restarted, len(answers))
    assert restarted.stop() == 0
    assert usage(start_gateway(**settings)) == expect(more, expected)
