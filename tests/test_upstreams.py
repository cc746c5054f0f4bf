"""Several Ollama servers behind one gateway, through real gunicorn: routing, failover, merged views, health.

Three doubles play three GPU boxes with different models installed and loaded; each records what it
served, so every test reads which box a request reached.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from mlops_backend.security.keys import make_entry, new_token, write_entries
from tests.ollama_double import OllamaDouble
from tests.support import AUTH, GatewayProcess, post_stream, sse_events, sse_items

LLAMA = {"name": "llama3.2", "capabilities": ["completion", "tools"]}
QWEN = {"name": "qwen3", "capabilities": ["completion", "thinking"]}
MINILM = {"name": "all-minilm", "capabilities": ["embedding"]}
HI = [{"role": "user", "content": "hi"}]
NARROW = new_token()


def served(double, path="/api/generate") -> int:
    return sum(1 for record in double.requests if record["path"] == path)


def upstreams_file(tmp_path, *entries, name="upstreams.toml") -> str:
    lines = []
    for name, double, extra in entries:
        lines += ["[[upstreams]]", f'name = "{name}"', f'url = "{double.url}"'] + [f"{k} = {json.dumps(v)}" for k, v
                                                                                   in extra.items()]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def wait_until(check, timeout=5.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not true within {timeout} s (last: {value!r})"
        time.sleep(interval)


def health(gateway) -> dict:
    return {u["name"]: u for u in requests.get(gateway.url + "/api/llm/health", headers=AUTH, timeout=10)
            .json()["upstreams"]}


def generate(gateway, model="llama3.2", **kwargs):
    response = requests.post(gateway.url + "/api/llm/generate", headers={**AUTH, **kwargs.pop("headers", {})},
                             json={"model": model, "prompt": "hi", **kwargs}, timeout=30)
    response.close()
    return response


@pytest.fixture(scope="module")
def boxes():
    """a: llama3.2 and qwen3, nothing loaded; b: llama3.2, loaded; c: qwen3 and all-minilm, nothing loaded."""
    started = {"a": OllamaDouble([LLAMA, QWEN], loaded=[]).start(), "b": OllamaDouble([LLAMA], loaded=["llama3.2"])
               .start(), "c": OllamaDouble([QWEN, MINILM], loaded=[]).start()}
    yield started
    for double in started.values():
        double.stop()


@pytest.fixture
def fresh(boxes, request):
    for double in boxes.values():
        if not double.running:
            double.start()
        double.reset()
    if "gw" in request.fixturenames:  # an earlier test's faults may have taken one out: wait for it to return
        gateway = request.getfixturevalue("gw")
        wait_until(lambda: all(u["status"] == "up" for u in health(gateway).values()))
    return boxes


@pytest.fixture(scope="module")
def gw(boxes, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstreams")
    keys = tmp / "keys.json"
    write_entries(str(keys), [make_entry("narrow", NARROW, ["use"], models=["qwen3"])])
    path = upstreams_file(tmp, ("a", boxes["a"], {}), ("b", boxes["b"], {}), ("c", boxes["c"], {}))
    process = GatewayProcess(boxes["a"].url, OLLAMA_UPSTREAMS_FILE=path, UPSTREAM_REFRESH_SECONDS="0.3",
                             UPSTREAM_COOLDOWN_SECONDS="1", API_KEYS_FILE=str(keys)).start()
    wait_until(lambda: all(u["models"] for u in health(process).values()))
    yield process
    process.stop()


def test_a_warm_upstream_beats_idle_cold_ones(gw, fresh):
    for _ in range(5):
        assert generate(gw).status_code == 200
    assert (served(fresh["a"]), served(fresh["b"])) == (0, 5)  # a has llama3.2 too, but cold
    line = [text for text in gw.log().splitlines() if "POST /api/llm/generate 200" in text][-1]
    assert " upstream=b " in line


def test_a_model_goes_only_where_it_is_installed(gw, fresh):
    assert generate(gw, "all-minilm").status_code == 400  # c has it (an embedding model: Ollama's 400)
    assert served(fresh["c"]) == 1 and served(fresh["a"]) == served(fresh["b"]) == 0
    missing = generate(gw, "ghost")
    assert missing.status_code == 404 and "not available on any Ollama server" in missing.json()["detail"]
    assert sum(served(double) for double in fresh.values()) == 1


def test_turns_of_one_conversation_stay_on_one_upstream(boxes, fresh, tmp_path, start_gateway):
    """qwen3 is on a and c, both cold (keep_alive 0 unloads it after each turn), equal in all else: only the
    conversation decides, and different conversations spread over both.

    Its own gateway reads the upstreams once: a refresh during a turn would see qwen3 loaded where that
    turn runs (as Ollama lists it), and rightly send the next conversations there."""
    path = upstreams_file(tmp_path, ("a", boxes["a"], {}), ("b", boxes["b"], {}), ("c", boxes["c"], {}))
    gw = start_gateway(OLLAMA_UPSTREAMS_FILE=path, UPSTREAM_REFRESH_SECONDS="3600")
    wait_until(lambda: all(u["models"] for u in health(gw).values()))
    homes = []
    for conversation in range(8):
        history = [{"role": "system", "content": f"conversation {conversation}"}]
        for turn in range(10 if conversation == 0 else 3):
            history.append({"role": "user", "content": f"turn {turn}"})
            response = requests.post(gw.url + "/api/llm/chat", headers=AUTH, timeout=30,
                                     json={"model": "qwen3", "messages": history, "keep_alive": 0})
            assert response.status_code == 200, response.text
            history.append(response.json()["message"])
        where = {name for name in ("a", "c") if any(
            r["path"] == "/api/chat" and (r["body"] or {}).get("messages", [{}])[0].get("content")
            == f"conversation {conversation}" for r in fresh[name].requests)}
        assert len(where) == 1, (conversation, where)
        homes.append(where.pop())
    print(f"\nconversation homes: {homes}")
    assert set(homes) == {"a", "c"}
    # X-Session-ID names a conversation too, for routes without messages.
    for _ in range(5):
        assert generate(gw, "qwen3", keep_alive=0, headers={"X-Session-ID": "chat-42"}).status_code == 200
    assert {served(fresh["a"]) > 0, served(fresh["c"]) > 0} == {True, False}


def test_load_spreads_by_in_flight_per_max_parallel(boxes, fresh, tmp_path, start_gateway):
    path = upstreams_file(tmp_path, ("a", boxes["a"], {"max_parallel": 1}), ("c", boxes["c"], {"max_parallel": 3}))
    gateway = start_gateway(OLLAMA_UPSTREAMS_FILE=path, UPSTREAM_REFRESH_SECONDS="0.3")
    wait_until(lambda: all(u["models"] for u in health(gateway).values()))
    for double in (fresh["a"], fresh["c"]):
        double.script(tokens=["x"] * 30, delay=0.1)
    streams = [post_stream(gateway, {"model": "qwen3", "prompt": "hi", "keep_alive": 0}) for _ in range(8)]
    assert all(s.status_code == 200 for s in streams)
    counts = (served(fresh["a"]), served(fresh["c"]))
    for stream in streams:
        assert sse_events(stream)[-1]["done"] is True
        stream.close()  # its socket, or GC closes it inside a later test as a ResourceWarning
    print(f"\n8 streams, max_parallel a=1 c=3: a {counts[0]}, c {counts[1]}")
    assert counts == (2, 6)


def test_an_upstream_killed_mid_run(gw, fresh):
    """No new request fails, its started stream ends with one error event, it is out within one refresh,
    and back after it returns."""
    b = fresh["b"]
    b.script(tokens=["x"] * 100, delay=0.05)
    stream = post_stream(gw, {"model": "llama3.2", "prompt": "hi"})
    items = sse_items(stream)
    assert next(value for _, kind, value in items if kind == "data") == {"text": "x"}
    b.stop()
    rest = [value for _, kind, value in items if kind == "data"]
    stream.close()
    assert rest[-1]["done"] is True and rest[-1]["error"]["status"] == 502
    assert sum("error" in event for event in rest) == 1
    statuses = [generate(gw).status_code for _ in range(20)]
    assert statuses == [200] * 20 and served(fresh["a"]) == 20
    time.sleep(0.4)  # one refresh (UPSTREAM_REFRESH_SECONDS=0.3): b is out of rotation, no request tries it
    tried = failovers(gw, "b")
    assert [generate(gw).status_code for _ in range(10)] == [200] * 10 and failovers(gw, "b") == tried
    assert health(gw)["b"]["status"] == "down"
    b.start()
    wait_until(lambda: health(gw)["b"]["status"] == "up", timeout=3.0)
    before = served(b)
    wait_until(lambda: generate(gw).status_code == 200 and served(b) > before, timeout=3.0)


def failovers(gateway, upstream: str) -> float:
    """mlops_upstream_failovers_total of one upstream, every reason together."""
    text = requests.get(gateway.url + "/metrics", headers=AUTH, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mlops_upstream_failovers_total{") and f'upstream="{upstream}"' in line)


def test_a_busy_upstream_is_skipped(gw, fresh):
    fresh["b"].script(fault="busy")
    for _ in range(3):
        assert generate(gw).status_code == 200
    assert served(fresh["a"]) == 3 and served(fresh["b"]) >= 1  # tried, refused with 503, then a
    metrics = requests.get(gw.url + "/metrics", headers=AUTH, timeout=10).text
    assert 'mlops_upstream_failovers_total{reason="busy",upstream="b"}' in metrics


def test_every_upstream_busy_is_a_503_with_retry_after(gw, fresh):
    for double in fresh.values():
        double.script(fault="busy")
    response = generate(gw)
    assert response.status_code == 503 and response.headers["Retry-After"]


def test_merged_lists_name_each_model_once_and_allow_lists_still_filter(gw, fresh):
    listed = requests.get(gw.url + "/api/llm/models", headers=AUTH, timeout=10).json()["models"]
    assert {m["name"]: m["upstreams"] for m in listed} == {
        "llama3.2:latest": ["a", "b"], "qwen3:latest": ["a", "c"], "all-minilm:latest": ["c"]}
    tags = requests.get(gw.url + "/ollama/api/tags", headers=AUTH, timeout=10).json()["models"]
    assert sorted(m["name"] for m in tags) == ["all-minilm:latest", "llama3.2:latest", "qwen3:latest"]
    assert all("upstreams" not in m for m in tags)  # Ollama's own shape
    openai = requests.get(gw.url + "/v1/models", headers=AUTH, timeout=10).json()
    assert sorted(m["id"] for m in openai["data"]) == ["all-minilm:latest", "llama3.2:latest", "qwen3:latest"]
    running = requests.get(gw.url + "/api/llm/running", headers=AUTH, timeout=10).json()["models"]
    assert [(m["name"], m["upstreams"]) for m in running] == [("llama3.2:latest", ["b"])]
    narrow = {"X-API-Key": NARROW}
    assert [m["name"] for m in requests.get(gw.url + "/api/llm/models", headers=narrow, timeout=10)
            .json()["models"]] == ["qwen3:latest"]
    assert [m["name"] for m in requests.get(gw.url + "/ollama/api/tags", headers=narrow, timeout=10)
            .json()["models"]] == ["qwen3:latest"]
    assert [m["id"] for m in requests.get(gw.url + "/v1/models", headers=narrow, timeout=10).json()["data"]] \
        == ["qwen3:latest"]


def test_the_pass_through_routes_by_the_bodys_model(gw, fresh):
    native = requests.post(gw.url + "/ollama/api/chat", headers=AUTH, timeout=10,
                           json={"model": "llama3.2", "messages": HI, "stream": False})
    assert native.status_code == 200 and served(fresh["b"], "/api/chat") == 1
    openai = requests.post(gw.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                           json={"model": "all-minilm", "messages": HI})
    assert openai.status_code == 400 and served(fresh["c"], "/v1/chat/completions") == 1
    shown = requests.post(gw.url + "/ollama/api/show", headers=AUTH, timeout=10, json={"model": "qwen3"})
    assert shown.status_code == 200 and served(fresh["a"], "/api/show") + served(fresh["c"], "/api/show") == 1


def test_pull_and_delete_act_on_every_upstream_or_the_one_named(gw, fresh):
    with requests.post(gw.url + "/api/llm/models/pull", headers=AUTH, json={"model": "smollm2"}, stream=True,
                       timeout=30) as response:
        events = sse_events(response)
    assert events[-1] == {"done": True, "status": "success"}
    assert {e["upstream"] for e in events[:-1]} == {"a", "b", "c"}
    assert sum(e.get("status") == "success" for e in events[:-1]) == 3  # each upstream's own success
    wait_until(lambda: generate(gw, "smollm2").status_code == 200)  # discovered at once for an unknown model
    assert requests.delete(gw.url + "/api/llm/models/smollm2?upstream=a", headers=AUTH, timeout=10) \
        .status_code == 204
    assert [m["upstreams"] for m in requests.get(gw.url + "/api/llm/models", headers=AUTH, timeout=10)
            .json()["models"] if m["name"] == "smollm2:latest"] == [["b", "c"]]
    assert requests.delete(gw.url + "/api/llm/models/smollm2", headers=AUTH, timeout=10).status_code == 204
    again = requests.delete(gw.url + "/api/llm/models/smollm2", headers=AUTH, timeout=10)
    assert again.status_code == 404
    named = requests.post(gw.url + "/ollama/api/pull?upstream=c", headers=AUTH, timeout=30,
                          json={"model": "tinyllama", "stream": False})
    assert named.status_code == 200 and served(fresh["c"], "/api/pull") == 2 and served(fresh["a"], "/api/pull") == 1
    unnamed = requests.post(gw.url + "/ollama/api/pull", headers=AUTH, timeout=10, json={"model": "tinyllama"})
    assert unnamed.status_code == 400 and "?upstream=" in unnamed.json()["error"]
    unknown = requests.post(gw.url + "/api/llm/models/pull?upstream=z", headers=AUTH, timeout=10,
                            json={"model": "tinyllama"})
    assert unknown.status_code == 400 and "No upstream is named 'z'" in unknown.json()["detail"]


def test_health_lists_each_upstream_and_urls_only_for_admin_keys(gw, fresh):
    wait_until(lambda: [u["models"] for u in health(gw).values()] == [2, 1, 2])  # the view after reset()
    public = requests.get(gw.url + "/api/llm/health", timeout=10).json()
    assert public["status"] == "healthy"
    assert [(u["name"], u["status"], u["models"], u["in_flight"]) for u in public["upstreams"]] == [
        ("a", "up", 2, 0), ("b", "up", 1, 0), ("c", "up", 2, 0)]
    assert all("url" not in u for u in public["upstreams"]) and "ollama" not in public
    narrow = requests.get(gw.url + "/api/llm/health", headers={"X-API-Key": NARROW}, timeout=10).json()
    assert all("url" not in u for u in narrow["upstreams"])  # a use key: no URLs either
    admin = health(gw)
    assert admin["a"]["url"] == fresh["a"].url
    metrics = requests.get(gw.url + "/metrics", headers=AUTH, timeout=10).text
    assert 'mlops_upstream_up{upstream="a"} 1.0' in metrics


def test_two_gateways_of_two_workers_share_in_flight_counts_on_redis(boxes, fresh, tmp_path, start_gateway,
                                                                       redis_url):
    """a (weight 2) wins every tie; with a stream open on a (which holds one request at a time) through one
    gateway, the other gateway's workers must see it in flight and send their requests to b (which holds
    eight). Counted per worker, they would see a idle and send them to a."""
    fresh["a"].set_loaded(["llama3.2"])
    path = upstreams_file(tmp_path, ("a", boxes["a"], {"weight": 2, "max_parallel": 1}),
                          ("b", boxes["b"], {"max_parallel": 8}))
    settings = {"OLLAMA_UPSTREAMS_FILE": path, "UPSTREAM_REFRESH_SECONDS": "0.3", "WEB_CONCURRENCY": "2",
                "RATE_LIMIT_STORAGE": redis_url}
    first, second = start_gateway(**settings), start_gateway(**settings)
    for gateway in (first, second):
        wait_until(lambda gateway=gateway: all(u["models"] for u in health(gateway).values()))
    def both_workers_answer():  # the second worker may still be importing the app: wait until it serves
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: requests.get(second.url + "/health", headers={"Connection": "close"}, timeout=10),
                          range(8)))
        return len({line.split()[3] for line in second.log().splitlines() if "GET /health 200" in line}) == 2
    wait_until(both_workers_answer, timeout=20)
    fresh["a"].script(tokens=["x"] * 60, delay=0.05)
    stream = post_stream(first, {"model": "llama3.2", "prompt": "hi"}, {"Connection": "close"})
    assert stream.status_code == 200 and served(fresh["a"]) == 1
    sent = 0
    while True:  # new connections, a few at once, until both workers of the second gateway answered some
        with ThreadPoolExecutor(8) as pool:  # at most 8 at once: b (8 at a time) stays below a's 1/1
            assert list(pool.map(lambda _: generate(second, headers={"Connection": "close"}).status_code,
                                 range(8))) == [200] * 8
        sent += 8
        pids = {line.split()[3] for line in second.log().splitlines() if "POST /api/llm/generate 200" in line}
        if len(pids) == 2 or sent >= 96:
            break
    lines = [line for line in second.log().splitlines() if "POST /api/llm/generate" in line]
    assert len(pids) == 2, (pids, lines)
    assert served(fresh["b"]) == sent, lines and served(fresh["a"]) == 1  # none of them went to the busy a
    stream.close()


def test_a_tls_upstream_with_its_own_ca(tmp_path, start_gateway):
    from tests.ollama_double.tls import make_tls

    context, ca_path = make_tls(tmp_path)
    with OllamaDouble([LLAMA], tls=context) as secure:
        untrusted = upstreams_file(tmp_path, ("tls", secure, {}), name="untrusted.toml")
        gateway = start_gateway(OLLAMA_UPSTREAMS_FILE=untrusted)
        assert generate(gateway).status_code == 503  # the system's CAs do not know this one: refused
        trusted = upstreams_file(tmp_path, ("tls", secure, {"ca_bundle": ca_path}))
        gateway = start_gateway(OLLAMA_UPSTREAMS_FILE=trusted)
        before = secure.connections
        errors = [generate(gateway).status_code for _ in range(100)]
        sequential = secure.connections - before
        results = []

        def streams(count):
            for _ in range(count):
                results.append(sse_events(post_stream(gateway, {"prompt": "hi"}))[-1])

        threads = [threading.Thread(target=streams, args=(20,)) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        print(f"\nTLS: 100 generations over {sequential} connection(s), then 100 streams (5 at a time) over "
              f"{secure.connections - before - sequential} more")
        assert errors == [200] * 100 and sequential == 1  # one pooled connection, reused 100 times
        assert len(results) == 100 and all(r.get("done") and "error" not in r for r in results)
        assert secure.connections - before - sequential <= 5  # at most one more per stream open at once
