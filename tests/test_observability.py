"""Observability through real gunicorn: Prometheus metrics summed over workers, usage per key and model
in the database, one access log line per request, and the model pull/delete routes.

Every request here says `Connection: close`: new connections spread over the workers, and no idle
keep-alive connection holds a worker's graceful shutdown for GUNICORN_GRACEFUL_TIMEOUT seconds.
"""

from __future__ import annotations

import json
import re
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from mlops_backend.security.keys import make_entry, new_token, write_entries
from tests.support import API_KEY, AUTH, sse_events, sse_items

CLOSE = {"Connection": "close"}
KEYED = {**AUTH, **CLOSE}
# `2026-11-26 17:23:54,686 INFO 17030 [p-2] mlops_backend.access: GET /api/llm/models 200 9.1ms ...`
TEXT_ACCESS_LINE = re.compile(r"^\S+ \S+ INFO (\d+) \[([^\]]+)\] mlops_backend\.access: (\S+) (\S+) (\d+) ",
                              re.MULTILINE)
ACCESS_FIELDS = {"request_id", "key", "method", "route", "path", "status", "duration_ms", "model", "ttft_ms",
                 "tokens_in", "tokens_out", "client", "forwarded_for"}


# -- helpers ----------------------------------------------------------------------------------------------


def call(method: str, gateway, path: str, headers=None, **kwargs) -> requests.Response:
    """One request on its own connection, read whole and closed (its .json() and headers stay usable)."""
    with requests.request(method, gateway.url + path, headers={**KEYED, **(headers or {})}, timeout=15,
                          **kwargs) as response:
        response.content  # noqa: B018 - read the body before the connection closes
    return response


def stream(gateway, path: str, body: dict, headers=None) -> tuple[requests.Response, list[dict]]:
    """POST a streamed route and return the response (closed) and its data events."""
    with requests.post(gateway.url + path, json=body, headers={**KEYED, **(headers or {})}, stream=True,
                       timeout=15) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(response)
    return response, events


def settle(read, expected, timeout: float = 5.0, interval: float = 0.05):
    """Poll `read()` until it returns `expected`; fail with the last value (pytest shows the difference)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value == expected or time.monotonic() > deadline:
            assert value == expected
            return value
        time.sleep(interval)


def wait_for(check, timeout: float = 5.0, interval: float = 0.05):
    """Poll `check()` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s (last: {value!r})")
        time.sleep(interval)


def scrape(gateway, headers=AUTH) -> dict:
    """GET /metrics and return {(sample name, sorted labels): value}."""
    response = call("GET", gateway, "/metrics", headers=headers)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict, name: str, **labels) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def text_access_lines(gateway) -> dict[str, list[tuple[int, str, str, int]]]:
    """Text-format access lines by request id: [(worker pid, method, path, status), ...]."""
    lines = {}
    for pid, request_id, method, path, status in TEXT_ACCESS_LINE.findall(gateway.log()):
        lines.setdefault(request_id, []).append((int(pid), method, path, int(status)))
    return lines


def json_lines(gateway) -> list[dict]:
    """Every line of the log that starts with `{`, parsed (each must be JSON)."""
    return [json.loads(line) for line in gateway.log().splitlines() if line.startswith("{")]


def access_lines(gateway, request_id: str) -> list[dict]:
    return [line for line in json_lines(gateway)
            if line.get("logger") == "mlops_backend.access" and line.get("request_id") == request_id]


def logged_once(gateway, request_id: str) -> dict:
    """Wait for the request's JSON access line, and check it is the only one."""
    wait_for(lambda: access_lines(gateway, request_id))
    lines = access_lines(gateway, request_id)
    assert len(lines) == 1, lines
    return lines[0]


def answer_from_every_worker(gateway, send, prefix: str, batch: int = 10, batches: int = 30):
    """Call `send(request_id)` (a request on a new connection) in batches until every worker has logged an
    answer (the second worker may still be booting at first); return the ids sent and the text access lines."""
    workers, sent = set(gateway.worker_pids()), []

    def all_logged():  # a line is written just after its response closes
        seen = text_access_lines(gateway)
        return seen if all(rid in seen for rid in sent) else None

    for _ in range(batches):
        for _ in range(batch):
            sent.append(f"{prefix}-{len(sent)}")
            send(sent[-1])
        lines = wait_for(all_logged)
        if {lines[rid][0][0] for rid in sent} == workers:
            return sent, lines
    raise AssertionError(f"{len(sent)} requests, and not every worker of {workers} answered one")


def usage_rows(gateway, key: str | None = "default") -> dict:
    """GET /api/usage[?key=] as {(key, model): (requests, prompt_tokens, completion_tokens, errors)}."""
    response = call("GET", gateway, "/api/usage", params={"key": key} if key else None)
    assert response.status_code == 200, response.text
    return {(row["key_name"], row["model"]): (row["requests"], row["prompt_tokens"], row["completion_tokens"],
                                              row["errors"]) for row in response.json()["usage"]}


# -- 1. metrics ----------------------------------------------------------------------------------------------


def test_metrics_are_summed_over_two_workers(start_gateway, double):
    gateway = start_gateway(WEB_CONCURRENCY="2", METRICS_PUBLIC="false")

    def list_models(request_id):
        assert call("GET", gateway, "/api/llm/models", headers={"X-Request-ID": request_id}).status_code == 200

    sent, lines = answer_from_every_worker(gateway, list_models, "obs-models")
    assert len(gateway.worker_pids()) == 2
    assert all(lines[rid] == [(lines[rid][0][0], "GET", "/api/llm/models", 200)] for rid in sent)
    count = len(sent)

    samples = scrape(gateway)
    assert sample(samples, "mlops_requests_total", route="/api/llm/models", method="GET", status="200") == count
    assert sample(samples, "mlops_request_duration_seconds_count", route="/api/llm/models") == count
    assert sample(samples, "mlops_request_duration_seconds_bucket", route="/api/llm/models", le="+Inf") == count
    assert 0 < sample(samples, "mlops_request_duration_seconds_sum", route="/api/llm/models") < count
    assert sample(samples, "mlops_time_to_first_token_seconds_count", route="/api/llm/stream") == 0

    # A whole answer and a stream: Ollama's token counts by model and type, the stream's TTFT and chunks.
    tokens = ["alpha", " beta", " gamma", " delta"]
    double.script(tokens=tokens)
    whole = call("POST", gateway, "/api/llm/generate", json={"model": "llama3.2", "prompt": "count my tokens"})
    assert whole.status_code == 200, whole.text
    streamed, events = stream(gateway, "/api/llm/stream", {"model": "llama3.2", "prompt": "and these too please"})
    assert [e["text"] for e in events[:-1]] == tokens and events[-1]["done"] is True
    prompt_tokens = whole.json()["prompt_eval_count"] + events[-1]["prompt_eval_count"]
    completion_tokens = whole.json()["eval_count"] + events[-1]["eval_count"]
    assert prompt_tokens > 0 and completion_tokens == 2 * len(tokens)

    unknown = call("POST", gateway, "/api/llm/generate", json={"model": "no-such-model", "prompt": "hi"})
    assert unknown.status_code == 404
    # Each request is counted when its response closes, just before its log line.
    wait_for(lambda: all(rid in text_access_lines(gateway) for rid in
                         (whole.headers["X-Request-ID"], streamed.headers["X-Request-ID"],
                          unknown.headers["X-Request-ID"])))

    samples = scrape(gateway)
    assert sample(samples, "mlops_requests_total", route="/api/llm/generate", method="POST", status="200") == 1
    assert sample(samples, "mlops_requests_total", route="/api/llm/stream", method="POST", status="200") == 1
    assert sample(samples, "mlops_requests_total", route="/api/llm/generate", method="POST", status="404") == 1
    assert sample(samples, "mlops_request_duration_seconds_count", route="/api/llm/generate") == 2
    assert sample(samples, "mlops_time_to_first_token_seconds_count", route="/api/llm/stream") == 1
    assert sample(samples, "mlops_time_to_first_token_seconds_count", route="/api/llm/generate") == 0
    # One upstream line per token, plus the final statistics line (counted as a chunk too).
    assert sample(samples, "mlops_tokens_relayed_total", route="/api/llm/stream") == len(tokens) + 1
    # Counted under the model's own name (llama3.2 is llama3.2:latest to Ollama), whatever the spelling.
    assert sample(samples, "mlops_llm_tokens_total", model="llama3.2:latest", type="prompt") == prompt_tokens
    assert sample(samples, "mlops_llm_tokens_total", model="llama3.2:latest", type="completion") == completion_tokens
    assert sample(samples, "mlops_upstream_errors_total", kind="model_not_found") == 1
    assert sample(samples, "mlops_active_streams") == 0

    # A slow stream is active (in whichever worker holds it) until it ends.
    double.script(tokens=["x"] * 8, delay=0.15)
    with requests.post(gateway.url + "/api/llm/stream", json={"prompt": "slow"}, headers=KEYED, stream=True,
                       timeout=15) as slow:
        items = sse_items(slow)
        assert next(kind for _, kind, _ in items) == "data"
        settle(lambda: sample(scrape(gateway), "mlops_active_streams"), 1.0)
        rest = [value for _, kind, value in items if kind == "data"]
    assert rest[-1]["done"] is True
    settle(lambda: sample(scrape(gateway), "mlops_active_streams"), 0.0)
    assert sample(scrape(gateway), "mlops_requests_total", route="/api/llm/stream", method="POST", status="200") == 2

    # METRICS_PUBLIC=false: an admin key is required.
    anonymous = call("GET", gateway, "/metrics", headers={"X-API-Key": ""})
    assert anonymous.status_code == 401
    assert anonymous.headers["Content-Type"] == "application/problem+json"
    keyed = call("GET", gateway, "/metrics")
    assert keyed.headers["Content-Type"].startswith("text/plain; version=")
    assert keyed.headers["Cache-Control"] == "no-store"

    public = start_gateway(METRICS_PUBLIC="true")
    open_scrape = call("GET", public, "/metrics", headers={"X-API-Key": ""})
    assert open_scrape.status_code == 200
    assert open_scrape.headers["Content-Type"].startswith("text/plain")
    assert any(family.name == "mlops_requests" for family in text_string_to_metric_families(open_scrape.text))


def test_metrics_content_type_is_the_prometheus_text_format(client):
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    # A scraper that asks for OpenMetrics gets it.
    response = client.get("/metrics", headers={**AUTH, "Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")


# -- 2. usage -----------------------------------------------------------------------------------------------


def test_usage_per_key_and_model_across_workers_and_restarts(start_gateway, double, tmp_path):
    other = new_token()
    keys_file = tmp_path / "keys.json"
    write_entries(str(keys_file), [make_entry("batch", other, ["use"])])
    settings = {"WEB_CONCURRENCY": "2", "USAGE_FLUSH_SECONDS": "0.2",
                "DATABASE_URL": f"sqlite:///{tmp_path / 'usage.db'}", "API_KEYS_FILE": str(keys_file)}
    gateway = start_gateway(**settings)

    double.script(tokens=["one", " two", " three"])
    answers = [call("POST", gateway, "/api/llm/generate", json={"model": "llama3.2", "prompt": prompt}).json()
               for prompt in ("first question", "a second, longer question")]
    _, events = stream(gateway, "/api/llm/stream", {"model": "llama3.2", "prompt": "stream it"})
    answers.append(events[-1])
    answers.append(call("POST", gateway, "/api/llm/chat", json={"model": "llama3.2", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]}).json())
    embedded = call("POST", gateway, "/api/llm/embed", json={"model": "all-minilm", "input": ["one two", "three"]})
    assert embedded.status_code == 200, embedded.text
    assert call("POST", gateway, "/api/llm/generate", json={"model": "ghost", "prompt": "hi"}).status_code == 404
    double.script(tokens=["a", " b", " c", " d"], fault="error_line", fault_after=2)
    _, failed = stream(gateway, "/api/llm/stream", {"model": "llama3.2", "prompt": "this one fails"})
    assert [e.get("text") for e in failed[:2]] == ["a", " b"]
    assert failed[-1]["done"] is True and failed[-1]["error"]["status"] == 502
    double.script(tokens=["ok"])
    other_answer = call("POST", gateway, "/api/llm/generate", headers={"X-API-Key": other},
                        json={"model": "llama3.2", "prompt": "from another key"}).json()

    assert [answer["eval_count"] for answer in answers] == [3, 3, 3, 3]  # the three scripted tokens
    assert all(answer["prompt_eval_count"] > 0 for answer in answers)
    llama = (5, sum(a["prompt_eval_count"] for a in answers), sum(a["eval_count"] for a in answers), 1)
    # Rows are named as Ollama names the model; an unknown model counts in the one row "".
    expected = {("default", "llama3.2:latest"): llama,
                ("default", "all-minilm:latest"): (1, embedded.json()["prompt_eval_count"], 0, 0),
                ("default", ""): (1, 0, 0, 1)}
    batch = {("batch", "llama3.2:latest"): (1, other_answer["prompt_eval_count"], other_answer["eval_count"], 0)}
    # Each worker adds its counts every USAGE_FLUSH_SECONDS: poll until the other worker's arrive.
    settle(lambda: usage_rows(gateway), expected)
    assert usage_rows(gateway, key="batch") == batch
    assert usage_rows(gateway, key=None) == {**expected, **batch}
    assert usage_rows(gateway, key="nobody") == {}

    # The counts are in the database: a new gateway on it reports them. This one writes only on exit
    # (SIGTERM): what both its workers count must be there for the next one.
    gateway.stop()
    restarted = start_gateway(**{**settings, "USAGE_FLUSH_SECONDS": "60"})
    assert usage_rows(restarted, key=None) == {**expected, **batch}
    double.script(tokens=["again", " and", " again"])
    more = []

    def generate(request_id):
        answer = call("POST", restarted, "/api/llm/generate", headers={"X-Request-ID": request_id},
                      json={"model": "llama3.2", "prompt": f"after the restart {len(more)}"})
        more.append(answer.json())

    answer_from_every_worker(restarted, generate, "obs-usage", batch=4)
    unknown = call("POST", restarted, "/api/llm/generate", json={"model": "ghost", "prompt": "hi"})
    assert unknown.status_code == 404
    wait_for(lambda: unknown.headers["X-Request-ID"] in text_access_lines(restarted))
    assert restarted.stop() == 0
    expected[("default", "llama3.2:latest")] = (5 + len(more), llama[1] + sum(a["prompt_eval_count"] for a in more),
                                                llama[2] + sum(a["eval_count"] for a in more), 1)
    expected[("default", "")] = (2, 0, 0, 2)
    assert usage_rows(start_gateway(**settings), key=None) == {**expected, **batch}


# -- 3. logs ------------------------------------------------------------------------------------------------


def test_json_access_log_has_one_line_per_request(start_gateway, double):
    gateway = start_gateway(LOG_FORMAT="json")
    secret_prompt = "the-prompt-text-7f3a9c never logged"

    double.script(tokens=["fine", " thanks"])
    whole = call("POST", gateway, "/api/llm/generate", headers={"X-Forwarded-For": "203.0.113.7"},
                 json={"model": "llama3.2", "prompt": secret_prompt})
    assert whole.status_code == 200
    line = logged_once(gateway, whole.headers["X-Request-ID"])
    assert ACCESS_FIELDS <= set(line)
    assert line["level"] == "INFO" and line["pid"] in gateway.worker_pids()
    assert {key: line[key] for key in ("key", "method", "route", "path", "status", "model", "client",
                                       "forwarded_for", "ttft_ms", "tokens_in", "tokens_out")} == {
        "key": "default", "method": "POST", "route": "/api/llm/generate", "path": "/api/llm/generate",
        "status": 200, "model": "llama3.2", "client": "127.0.0.1", "forwarded_for": "203.0.113.7", "ttft_ms": None,
        "tokens_in": whole.json()["prompt_eval_count"], "tokens_out": whole.json()["eval_count"]}
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert "prompt" not in line and "client_gone" not in line

    # A stream's line is written when the stream ends, and its duration covers the whole stream.
    double.script(tokens=["s"] * 5, delay=0.1)  # five pauses of 0.1 s between the six upstream lines
    with requests.post(gateway.url + "/api/llm/stream", json={"prompt": secret_prompt}, headers=KEYED, stream=True,
                       timeout=15) as response:
        request_id = response.headers["X-Request-ID"]
        items = sse_items(response)
        assert next(kind for _, kind, _ in items) == "data"
        assert access_lines(gateway, request_id) == []
        events = [value for _, kind, value in items if kind == "data"]
    assert events[-1]["done"] is True
    line = logged_once(gateway, request_id)
    assert line["route"] == "/api/llm/stream" and line["status"] == 200 and line["model"] == "llama3.2"
    assert line["forwarded_for"] is None
    assert (line["tokens_in"], line["tokens_out"]) == (events[-1]["prompt_eval_count"], events[-1]["eval_count"])
    assert line["duration_ms"] >= 500
    assert line["ttft_ms"] is not None and 0 < line["ttft_ms"] < line["duration_ms"] - 300

    # A client that leaves mid-stream: the line says so, and the upstream call was cancelled.
    double.script(tokens=["x"] * 50, delay=0.1)
    with requests.post(gateway.url + "/api/llm/stream", json={"prompt": "leave early"}, headers=KEYED, stream=True,
                       timeout=15) as response:
        gone_id = response.headers["X-Request-ID"]
        assert next(kind for _, kind, _ in sse_items(response)) == "data"
    line = logged_once(gateway, gone_id)
    assert line["client_gone"] is True and line["status"] == 200 and line["duration_ms"] < 4000
    assert double.wait_stream_closed()["client_gone"] is True

    # Failures are logged once too: no key (401), an unknown model (404, with the upstream error's kind).
    anonymous = call("GET", gateway, "/api/llm/models", headers={"X-API-Key": ""})
    assert anonymous.status_code == 401
    line = logged_once(gateway, anonymous.headers["X-Request-ID"])
    assert (line["key"], line["status"], line["route"]) == (None, 401, "/api/llm/models")
    unknown = call("POST", gateway, "/api/llm/generate", json={"model": "ghost", "prompt": secret_prompt})
    line = logged_once(gateway, unknown.headers["X-Request-ID"])
    assert (line["status"], line["model"], line["upstream_error"]) == (404, "ghost", "model_not_found")

    lines = json_lines(gateway)  # every line starting with "{" parses
    assert sum(line.get("logger") == "mlops_backend.access" and line["route"] != "/health" for line in lines) == 5
    log = gateway.log()
    assert API_KEY not in log
    assert "7f3a9c" not in log

    # LOG_PROMPTS=true puts what was sent in the line.
    prompts = start_gateway(LOG_FORMAT="json", LOG_PROMPTS="true")
    double.script(tokens=["ok"])
    logged = call("POST", prompts, "/api/llm/generate", json={"model": "llama3.2", "prompt": secret_prompt})
    assert logged_once(prompts, logged.headers["X-Request-ID"])["prompt"] == {"prompt": secret_prompt}
    assert API_KEY not in prompts.log()


def test_no_client_value_can_forge_a_text_log_line(start_gateway, double):
    """A path, a model name or X-Forwarded-For with a line break, or with `key=...` of its own, must stay
    inside one quoted value of the request's own line: nothing may start a second line or pose as a field."""
    gateway = start_gateway()  # LOG_FORMAT=text
    forged = "2026-01-01 00:00:00,000 INFO 1 [forged] mlops_backend.access: GET /api/usage 200 1.0ms key=ops"
    path = "/x\n" + forged
    unauthenticated = requests.get(gateway.url + requests.utils.quote(path), headers=CLOSE, timeout=10)
    assert unauthenticated.status_code == 404
    spaced = call("GET", gateway, "/api/llm/models/llama3.2 key=ops\x1b[2J", headers={"X-API-Key": "wrong"})
    assert spaced.status_code == 401
    model = call("POST", gateway, "/ollama/api/show", json={"model": "ghost\r\n" + forged + "\u2028key=ops"})
    assert model.status_code == 400  # not a valid model name, to Ollama
    forwarded = call("GET", gateway, "/health", headers={"X-Forwarded-For": "203.0.113.7 key=ops"})
    stream = call("POST", gateway, "/api/llm/generate", headers={"X-Forwarded-For": "203.0.113.7, key=ops"},
                  json={"model": "llama3.2", "prompt": "hi"})
    ids = [response.headers["X-Request-ID"] for response in (unauthenticated, spaced, model, forwarded, stream)]
    # Each line is written as its response ends.
    wait_for(lambda: all(f"[{rid}] mlops_backend.access: " in gateway.log() for rid in ids))
    log = gateway.log()
    assert not any(line.startswith("2026-01-01") for line in log.splitlines()), log
    for rid in ids:
        (line,) = [text for text in log.splitlines() if f"[{rid}] mlops_backend.access: " in text]
        # The line's words, a quoted value (with what it quotes) counting as one: none is a bare key=ops.
        words = re.findall(r'\S*?"(?:[^"\\]|\\.)*"|\S+', line.split(" mlops_backend.access: ", 1)[1])
        assert "key=ops" not in words and [w for w in words if w.startswith("key=")] in ([], ["key=default"]), words
    (path_line,) = [text for text in log.splitlines() if f"[{ids[0]}] mlops_backend.access: " in text]
    assert json.dumps(path) in path_line  # the path as a JSON string: escaped, quoted, on one line
    (model_line,) = [text for text in log.splitlines() if f"[{ids[2]}] mlops_backend.access: " in text]
    assert "model=" + json.dumps("ghost\r\n" + forged + "\u2028key=ops") in model_line


def test_usage_has_a_row_per_model_ollama_has_and_one_for_every_other_name(start_gateway, double, tmp_path):
    """Names a key was refused, names Ollama does not have, and other spellings of one model must not each
    add a row: a key could otherwise add rows at will (600 a minute from one key)."""
    narrow = new_token()
    keys_file = tmp_path / "keys.json"
    write_entries(str(keys_file), [make_entry("narrow", narrow, ["use"], models=["llama3.2"])])
    gateway = start_gateway(API_KEYS_FILE=str(keys_file), USAGE_FLUSH_SECONDS="0.2")
    for index in range(20):
        assert call("POST", gateway, "/api/llm/generate", json={"model": f"ghost-{index}", "prompt": "hi"}) \
            .status_code == 404
        assert call("POST", gateway, "/ollama/api/chat", headers={"X-API-Key": narrow}, json={
            "model": f"other-{index}", "messages": [{"role": "user", "content": "hi"}]}).status_code == 403
    answers = [call("POST", gateway, "/api/llm/generate", headers={"X-API-Key": narrow},
                    json={"model": spelling, "prompt": "hi"})
               for spelling in ("llama3.2", "LLAMA3.2", "llama3.2:latest", "registry.ollama.ai/library/llama3.2")]
    assert [answer.status_code for answer in answers] == [200] * 4
    tokens = (sum(a.json()["prompt_eval_count"] for a in answers), sum(a.json()["eval_count"] for a in answers))
    settle(lambda: usage_rows(gateway, key=None), {("default", ""): (20, 0, 0, 20), ("narrow", ""): (20, 0, 0, 20),
                                                    ("narrow", "llama3.2:latest"): (4, *tokens, 0)})


# -- 4. pull and delete --------------------------------------------------------------------------------------


def test_pull_streams_progress_then_delete(gateway, double):
    _, events = stream(gateway, "/api/llm/models/pull", {"model": "smollm2"})
    assert events[0] == {"status": "pulling manifest"}
    progress = [event for event in events if "digest" in event]
    assert progress and all(event["digest"].startswith("sha256:") and event["total"] > 0 for event in progress)
    assert any(event.get("completed") == event["total"] for event in progress)
    assert events[-1] == {"done": True, "status": "success"}
    assert not any("error" in event for event in events)
    # The double adds the model just after its final line, so poll.
    wait_for(lambda: "smollm2:latest" in [m["name"] for m in call("GET", gateway, "/api/llm/models").json()["models"]])

    double.script(fault="error_line", fault_after=3)
    _, failed = stream(gateway, "/api/llm/models/pull", {"model": "tinyllama"})
    assert failed[0] == {"status": "pulling manifest"}
    assert all("error" not in event and "done" not in event for event in failed[:-1])
    assert len(failed) == 4
    assert failed[-1]["done"] is True and set(failed[-1]) == {"error", "done"}
    assert failed[-1]["error"]["status"] == 502 and set(failed[-1]["error"]) == {"title", "status", "detail"}
    assert "tinyllama:latest" not in [m["name"] for m in call("GET", gateway, "/api/llm/models").json()["models"]]

    deleted = call("DELETE", gateway, "/api/llm/models/smollm2")
    assert deleted.status_code == 204 and deleted.content == b""
    assert "smollm2:latest" not in [m["name"] for m in call("GET", gateway, "/api/llm/models").json()["models"]]
    again = call("DELETE", gateway, "/api/llm/models/smollm2")
    assert again.status_code == 404
    assert again.headers["Content-Type"] == "application/problem+json"
    assert again.json()["status"] == 404

    for body in ({}, {"model": "smollm2", "bogus": True}, {"model": ""}):
        invalid = call("POST", gateway, "/api/llm/models/pull", json=body)
        assert invalid.status_code == 422, body
        assert invalid.headers["Content-Type"] == "application/problem+json"
    assert [e["field"] for e in call("POST", gateway, "/api/llm/models/pull", json={}).json()["errors"]] == ["model"]
