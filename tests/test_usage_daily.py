"""Usage over time (issue 15): daily rows beside the running totals, GET /api/usage?since=&until=&group=,
`flask usage export`, and the Prometheus token counter per key.

The day boundary is crossed with an injected clock, never by sleeping: a request is dated when it is
counted, so counts taken before midnight and flushed after it still land on the day before.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from mlops_backend.observability.usage import UsageStore, parse_day
from mlops_backend.security.keys import make_entry, new_token, write_entries
from tests.support import API_KEY, AUTH, ROOT

KEYED = {**AUTH, "Connection": "close"}
FIELDS = ("requests", "prompt_tokens", "completion_tokens", "errors")
COLUMNS = (*FIELDS, "cached_tokens")  # every count a row has (cached_tokens: tested in test_cache.py)
# 2026-12-01 23:59:58 UTC: two seconds before the day ends.
BEFORE_MIDNIGHT = datetime(2026, 12, 1, 23, 59, 58, tzinfo=timezone.utc).timestamp()


class Clock:
    """A clock a test moves by hand (Unix seconds)."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def counts(row: dict) -> tuple:
    return tuple(row[field] for field in FIELDS)


def by_columns(rows: list[dict]) -> dict:
    """Rows as {(date, key_name?, model?): (requests, prompt_tokens, completion_tokens, errors)}."""
    return {tuple(value for name, value in row.items() if name not in COLUMNS): counts(row) for row in rows}


def settle(read, expected, timeout: float = 10.0, interval: float = 0.05):
    """Poll `read()` until it returns `expected`; fail with the last value (pytest shows the difference)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value == expected or time.monotonic() > deadline:
            assert value == expected
            return value
        time.sleep(interval)


def call(method: str, gateway, path: str, headers=None, **kwargs) -> requests.Response:
    """One request on its own connection, read whole and closed."""
    with requests.request(method, gateway.url + path, headers={**KEYED, **(headers or {})}, timeout=15,
                          **kwargs) as response:
        response.content  # noqa: B018 - read the body before the connection closes
    return response


def utc_day(offset: int = 0) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=offset)).strftime("%Y-%m-%d")


# -- 1. the store, with its clock injected -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'daily.db'}"
    return request.getfixturevalue("postgres_url")


def test_daily_rows_across_a_day_boundary(url):
    clock = Clock(BEFORE_MIDNIGHT)
    store = UsageStore(url, flush_seconds=3600, clock=clock)  # flushed here by hand, never by its thread
    try:
        store.add("alice", "llama3.2:latest", 10, 5)
        store.add("alice", "", 0, 0, error=True)
        store.add("bob", "llama3.2:latest", 7, 3)
        clock.now += 3  # 2026-12-02 00:00:01, and nothing flushed yet: the counts above stay on Dec 1
        store.add("alice", "llama3.2:latest", 2, 1)
        store.add("bob", "all-minilm:latest", 4, 0)
        store.flush()

        assert by_columns(store.daily()) == {
            ("2026-12-01", "alice", ""): (1, 0, 0, 1),
            ("2026-12-01", "alice", "llama3.2:latest"): (1, 10, 5, 0),
            ("2026-12-01", "bob", "llama3.2:latest"): (1, 7, 3, 0),
            ("2026-12-02", "alice", "llama3.2:latest"): (1, 2, 1, 0),
            ("2026-12-02", "bob", "all-minilm:latest"): (1, 4, 0, 0)}
        assert list(store.daily()[0]) == ["date", "key_name", "model", *COLUMNS]  # in order: date, key, model
        assert by_columns(store.daily(group="day")) == {("2026-12-01",): (3, 17, 8, 1), ("2026-12-02",): (2, 6, 1, 0)}
        assert by_columns(store.daily(group="key")) == {
            ("2026-12-01", "alice"): (2, 10, 5, 1), ("2026-12-01", "bob"): (1, 7, 3, 0),
            ("2026-12-02", "alice"): (1, 2, 1, 0), ("2026-12-02", "bob"): (1, 4, 0, 0)}
        assert by_columns(store.daily(group="model")) == {
            ("2026-12-01", ""): (1, 0, 0, 1), ("2026-12-01", "llama3.2:latest"): (2, 17, 8, 0),
            ("2026-12-02", "all-minilm:latest"): (1, 4, 0, 0), ("2026-12-02", "llama3.2:latest"): (1, 2, 1, 0)}
        # since and until are both included; key_name narrows any grouping
        assert by_columns(store.daily("2026-12-02", "2026-12-02", "day")) == {("2026-12-02",): (2, 6, 1, 0)}
        assert by_columns(store.daily(until="2026-12-01", group="day")) == {("2026-12-01",): (3, 17, 8, 1)}
        assert by_columns(store.daily("2026-12-03")) == {}
        assert by_columns(store.daily(group="day", key_name="bob")) == {("2026-12-01",): (1, 7, 3, 0),
                                                                        ("2026-12-02",): (1, 4, 0, 0)}

        # The running totals stay as they were: one row per key and model, all days together.
        assert {(row["key_name"], row["model"]): counts(row) for row in store.totals()} == {
            ("alice", ""): (1, 0, 0, 1), ("alice", "llama3.2:latest"): (2, 12, 6, 0),
            ("bob", "llama3.2:latest"): (1, 7, 3, 0), ("bob", "all-minilm:latest"): (1, 4, 0, 0)}

        # A later flush adds to the day's existing row (ON CONFLICT DO UPDATE), as a second worker would.
        store.add("alice", "llama3.2:latest", 2**40, 1)  # BIGINT
        other = UsageStore(url, flush_seconds=3600, clock=clock)
        try:
            other.add("alice", "llama3.2:latest", 1, 1)
            other.flush()
        finally:
            other.close()
        assert by_columns(store.daily("2026-12-02", group="key")) == {
            ("2026-12-02", "alice"): (3, 2 + 2**40 + 1, 3, 0), ("2026-12-02", "bob"): (1, 4, 0, 0)}
        assert all(type(row["prompt_tokens"]) is int for row in store.daily(group="day"))  # no Decimal (PostgreSQL)
    finally:
        store.close()


def test_dates_are_written_yyyy_mm_dd_and_exist():
    assert parse_day("2026-12-01") == "2026-12-01"
    assert parse_day("2028-02-29") == "2028-02-29"
    for text in ("20261201", "2026-W48-1", "2026-1-05", "2026-02-30", "2026-13-01", "2026-12-01T00:00", "",
                 " 2026-12-01"):
        with pytest.raises(ValueError):
            parse_day(text)


# -- 2. GET /api/usage by day, through gunicorn ---------------------------------------------------------------


@pytest.fixture
def keyed_gateway(start_gateway, tmp_path):
    """A gateway with the shared admin key and a named `use` key, writing usage every 0.2 s."""
    token = new_token()
    keys_path = tmp_path / "keys.json"
    write_entries(str(keys_path), [make_entry("daily-user", token, ["use"])])

    def start(**env):
        return start_gateway(USAGE_FLUSH_SECONDS="0.2", DATABASE_URL=f"sqlite:///{tmp_path / 'usage.db'}",
                             API_KEYS_FILE=str(keys_path), WEB_CONCURRENCY="2", **env)
    return start, token


def generate(gateway, prompt: str, key: str = API_KEY, model: str = "llama3.2") -> requests.Response:
    return call("POST", gateway, "/api/llm/generate", headers={"X-API-Key": key},
                json={"model": model, "prompt": prompt})


def usage(gateway, **params) -> list[dict]:
    response = call("GET", gateway, "/api/usage", params=params)
    assert response.status_code == 200, response.text
    return response.json()["usage"]


def test_usage_by_day_key_and_model_beside_the_running_totals(keyed_gateway, double):
    start, token = keyed_gateway
    gateway = start()
    double.script(tokens=["one", " two", " three"])
    first, today = generate(gateway, "first question").json(), utc_day()
    second = generate(gateway, "a second question", key=token).json()
    assert generate(gateway, "hi", model="ghost").status_code == 404
    totals = {("default", "llama3.2:latest"): (1, first["prompt_eval_count"], 3, 0), ("default", ""): (1, 0, 0, 1),
              ("daily-user", "llama3.2:latest"): (1, second["prompt_eval_count"], 3, 0)}
    # The running totals answer as before: no date, one row per key and model.
    settle(lambda: {(row["key_name"], row["model"]): counts(row) for row in usage(gateway)}, totals)
    assert all("date" not in row for row in usage(gateway))
    assert {row["key_name"] for row in usage(gateway, key="daily-user")} == {"daily-user"}

    if utc_day() != today:  # the requests straddled midnight UTC: the exact rows below would not hold
        pytest.skip("midnight UTC passed during the test")
    period = {"since": today, "until": today}
    assert by_columns(usage(gateway, **period)) == {(today, *item): value for item, value in totals.items()}
    prompts = first["prompt_eval_count"] + second["prompt_eval_count"]
    assert by_columns(usage(gateway, **period, group="day")) == {(today,): (3, prompts, 6, 1)}
    assert by_columns(usage(gateway, **period, group="key")) == {
        (today, "daily-user"): totals[("daily-user", "llama3.2:latest")],
        (today, "default"): (2, first["prompt_eval_count"], 3, 1)}
    assert by_columns(usage(gateway, **period, group="model")) == {
        (today, ""): (1, 0, 0, 1), (today, "llama3.2:latest"): (2, prompts, 6, 0)}
    assert by_columns(usage(gateway, since=today, group="model", key="daily-user")) == {
        (today, "llama3.2:latest"): totals[("daily-user", "llama3.2:latest")]}
    assert usage(gateway, until=utc_day(-1)) == [] and usage(gateway, since=utc_day(1)) == []
    assert by_columns(usage(gateway, group="day")) == by_columns(usage(gateway, **period, group="day"))  # no bounds

    for params, field in (({"since": "2026-13-01"}, "since"), ({"since": "20261201"}, "since"),
                          ({"until": "yesterday"}, "until"), ({"since": "2026-12-02", "until": "2026-12-01"}, "since"),
                          ({"group": "week"}, "group"), ({"since": ""}, "since")):
        refused = call("GET", gateway, "/api/usage", params=params)
        assert refused.status_code == 422, (params, refused.text)
        assert refused.headers["Content-Type"].startswith("application/problem+json")
        assert [error["field"] for error in refused.json()["errors"]] == [field]
    for params in ({}, {"since": today}):  # a `use` key reads no usage, by day or in total
        assert call("GET", gateway, "/api/usage", headers={"X-API-Key": token}, params=params).status_code == 403


def test_flask_usage_export_writes_csv_and_json(tmp_path):
    url = f"sqlite:///{tmp_path / 'export.db'}"
    clock = Clock(BEFORE_MIDNIGHT)
    store = UsageStore(url, flush_seconds=3600, clock=clock)
    try:
        store.add("alice", "llama3.2:latest", 10, 5)
        store.add("bob", "llama3.2:latest", 7, 3, error=True)
        clock.now += 3
        store.add("alice", "llama3.2:latest", 2, 1)
    finally:
        store.close()

    def export(*arguments) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "usage", "export", *arguments],
                              check=False, cwd=ROOT,
                              env={"DATABASE_URL": url, "API_KEY": "k" * 32, "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=60)

    result = export("--since", "2026-12-01", "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert list(csv.reader(io.StringIO(result.stdout))) == [
        ["date", "key_name", "model", *COLUMNS],
        ["2026-12-01", "alice", "llama3.2:latest", "1", "10", "5", "0", "0"],
        ["2026-12-01", "bob", "llama3.2:latest", "1", "7", "3", "1", "0"],
        ["2026-12-02", "alice", "llama3.2:latest", "1", "2", "1", "0", "0"]]
    grouped = export("--since", "2026-12-01", "--until", "2026-12-01", "--group", "day")  # csv by default
    assert grouped.returncode == 0, grouped.stderr
    assert grouped.stdout == "date,requests,prompt_tokens,completion_tokens,errors,cached_tokens\n2026-12-01,2,17,8,1,0\n"
    as_json = export("--since", "2026-12-02", "--group", "key", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {"usage": [{"date": "2026-12-02", "key_name": "alice", "requests": 1,
                                                     "prompt_tokens": 2, "completion_tokens": 1, "errors": 0,
                                                     "cached_tokens": 0}]}
    for arguments, hint in ((["--since", "2026-12-32"], "--since"), (["--since", "2026-12-02", "--until", "2026-12-01"],
                                                                     "--since"),
                            (["--since", "2026-12-01", "--group", "week"], "--group"), ([], "--since")):
        refused = export(*arguments)
        assert refused.returncode != 0 and hint in refused.stderr, (arguments, refused.stderr)
        assert refused.stdout == ""


# -- 3. the Prometheus token counter per key ------------------------------------------------------------------


def key_tokens(gateway) -> tuple[dict, str]:
    """mlops_key_tokens_total as {(key, type): value}, and the whole /metrics text."""
    response = call("GET", gateway, "/metrics")
    assert response.status_code == 200, response.text
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "mlops_key_tokens_total":
                found[(sample.labels["key"], sample.labels["type"])] = sample.value
    return found, response.text


@pytest.mark.parametrize("key_labels", ["true", "false"])
def test_tokens_per_key_in_prometheus(keyed_gateway, double, key_labels):
    start, token = keyed_gateway
    gateway = start(METRICS_KEY_LABELS=key_labels)
    double.script(tokens=["one", " two", " three"])
    answers = [generate(gateway, "first question").json(), generate(gateway, "and a second one").json()]
    named = generate(gateway, "from the named key", key=token).json()
    shared = (sum(a["prompt_eval_count"] for a in answers), sum(a["eval_count"] for a in answers))
    if key_labels == "true":
        expected = {("default", "prompt"): shared[0], ("default", "completion"): shared[1],
                    ("daily-user", "prompt"): named["prompt_eval_count"], ("daily-user", "completion"): 3}
    else:  # one series per type, key="" (no label, to Prometheus), whatever the number of keys
        expected = {("", "prompt"): shared[0] + named["prompt_eval_count"], ("", "completion"): shared[1] + 3}
    settle(lambda: key_tokens(gateway)[0], expected)
    text = key_tokens(gateway)[1]
    assert ('daily-user' in text) is (key_labels == "true")
    assert API_KEY not in text and token not in text  # names only, never a key
