"""The response cache (CACHE_URL) through real gunicorn: what is kept, what is replayed, what never is."""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from tests.support import AUTH, GatewayProcess, sse_events, wait_for_access_line

GENERATIONS = ("/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions")
TEAM, OTHER = "mlk_team-token-0123456789", "mlk_other-token-0123456789"
ZERO = {"temperature": 0}


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    from mlops_backend.security.keys import make_entry, write_entries

    path = tmp_path_factory.mktemp("cache") / "keys.toml"
    write_entries(str(path), [make_entry("team", TEAM, ["use"]), make_entry("other", OTHER, ["use"])])
    return str(path)


@pytest.fixture(scope="module")
def cached(double, keys_file):
    """One gateway with a memory cache and two keys; each test asks its own prompts."""
    process = GatewayProcess(double.url, API_KEYS_FILE=keys_file, CACHE_URL="memory://",
                             CACHE_DIGEST_SECONDS="0.2").start()
    yield process
    process.stop()


def unique(text: str = "why is the sky blue") -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def calls(double) -> int:
    return sum(1 for r in double.requests if r["path"] in GENERATIONS)


def post(gateway, path, body, key=TEAM, headers=None, stream=False):
    return requests.post(gateway.url + path, json=body, headers={"X-API-Key": key, **(headers or {})},
                         stream=stream, timeout=30)


def test_a_deterministic_generate_is_answered_once(cached, double):
    body = {"prompt": unique(), "options": ZERO}
    first = post(cached, "/api/llm/generate", body)
    second = post(cached, "/api/llm/generate", body)
    assert first.status_code == second.status_code == 200
    assert first.headers["X-Cache"] == "MISS" and "Age" not in first.headers
    assert second.headers["X-Cache"] == "HIT" and int(second.headers["Age"]) >= 0
    assert second.json() == first.json()
    assert calls(double) == 1


def test_a_stream_is_replayed_in_order_thinking_included(cached, double):
    body = {"model": "qwen3", "prompt": unique(), "think": True, "options": ZERO}
    first = post(cached, "/api/llm/stream", body, stream=True)
    assert first.headers["X-Cache"] == "MISS"
    events = sse_events(first)
    assert events[0].get("thinking") and events[-1]["done"] is True
    second = post(cached, "/api/llm/stream", body, stream=True)
    assert second.headers["X-Cache"] == "HIT"
    assert second.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    replayed = sse_events(second)
    assert calls(double) == 1
    # The replay joins the pieces: the same thinking, text and final statistics.
    def joined(items):
        return ("".join(e.get("thinking", "") for e in items), "".join(e.get("text", "") for e in items), items[-1])
    assert joined(replayed) == joined(events)
    assert [list(e)[0] for e in replayed] == ["thinking", "text", "done"]


def test_a_whole_answer_serves_a_stream_and_the_other_way_round(cached, double):
    body = {"model": "qwen3", "prompt": unique(), "think": True, "options": ZERO, "keep_alive": "5m"}
    whole = post(cached, "/api/llm/generate", body).json()
    events = sse_events(post(cached, "/api/llm/stream", {**body, "keep_alive": "1h"}, stream=True))
    assert calls(double) == 1
    assert events[0] == {"thinking": whole["thinking"]}
    assert events[1] == {"text": whole["response"]}
    assert events[2]["eval_count"] == whole["eval_count"] and events[2]["done_reason"] == whole["done_reason"]

    body = {"prompt": unique(), "options": ZERO}
    streamed = sse_events(post(cached, "/api/llm/stream", body, stream=True))
    answer = post(cached, "/api/llm/generate", body)
    assert answer.headers["X-Cache"] == "HIT"
    assert answer.json()["response"] == "".join(e.get("text", "") for e in streamed)
    assert answer.json()["eval_count"] == streamed[-1]["eval_count"]
    assert calls(double) == 2


def test_chat_with_tool_calls_whole_then_streamed(cached, double):
    body = {"messages": [{"role": "user", "content": unique("what is the weather in Tokyo")}], "options": ZERO,
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}}}}]}
    first = post(cached, "/api/llm/chat", body)
    calls_made = first.json()["message"]["tool_calls"]
    assert calls_made
    second = post(cached, "/api/llm/chat", body)
    assert second.headers["X-Cache"] == "HIT" and second.json() == first.json()
    events = sse_events(post(cached, "/api/llm/chat/stream", body, stream=True))
    assert {"tool_calls": calls_made} in events and events[-1]["done"] is True
    assert calls(double) == 1


def test_random_requests_are_never_cached(cached, double):
    for options in ({"temperature": 0.7}, None, {"seed": 1}, {"seed": 1, "top_k": 1, "top_p": 0.9}):
        body = {"prompt": unique(), **({"options": options} if options else {})}
        answers = [post(cached, "/api/llm/generate", body) for _ in range(2)]
        assert [a.headers["X-Cache"] for a in answers] == ["BYPASS", "BYPASS"], options
    assert calls(double) == 8


def test_a_seed_with_top_k_1_is_cached(cached, double):
    body = {"prompt": unique(), "options": {"seed": 42, "top_k": 1, "temperature": 0.8}}
    assert [post(cached, "/api/llm/generate", body).headers["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]
    assert calls(double) == 1


def test_different_options_miss(cached, double):
    prompt = unique()
    for options in (ZERO, {"temperature": 0, "num_predict": 3}, {"temperature": 0.0, "num_ctx": 4096}):
        assert post(cached, "/api/llm/generate", {"prompt": prompt, "options": options}).headers["X-Cache"] == "MISS"
    assert post(cached, "/api/llm/generate", {"prompt": prompt, "options": ZERO, "system": "x"}
                ).headers["X-Cache"] == "MISS"
    assert post(cached, "/api/llm/generate", {"prompt": prompt, "options": ZERO}).headers["X-Cache"] == "HIT"
    assert calls(double) == 4


def test_a_new_digest_misses(cached, double):
    body = {"prompt": unique(), "options": ZERO}
    assert post(cached, "/api/llm/generate", body).headers["X-Cache"] == "MISS"
    assert post(cached, "/api/llm/generate", body).headers["X-Cache"] == "HIT"
    model = next(m for m in double.models if m["name"].startswith("llama3.2"))
    model["digest"] = "0" * 64  # re-pulled: same name, new weights
    time.sleep(0.5)  # past CACHE_DIGEST_SECONDS
    assert post(cached, "/api/llm/generate", body).headers["X-Cache"] == "MISS"
    assert post(cached, "/api/llm/generate", body).headers["X-Cache"] == "HIT"
    assert calls(double) == 2


def test_keys_are_isolated_by_default(cached, double):
    body = {"prompt": unique(), "options": ZERO}
    assert post(cached, "/api/llm/generate", body, key=TEAM).headers["X-Cache"] == "MISS"
    assert post(cached, "/api/llm/generate", body, key=OTHER).headers["X-Cache"] == "MISS"
    assert post(cached, "/api/llm/generate", body, key=OTHER).headers["X-Cache"] == "HIT"
    assert calls(double) == 2


def test_no_store_and_no_cache(cached, double):
    body = {"prompt": unique(), "options": ZERO}
    assert post(cached, "/api/llm/generate", body, headers={"Cache-Control": "no-store"}).headers["X-Cache"] == "BYPASS"
    assert post(cached, "/api/llm/generate", body).headers["X-Cache"] == "MISS"
    assert post(cached, "/api/llm/generate", body, headers={"Cache-Control": "no-store"}).headers["X-Cache"] == "BYPASS"
    double.script(tokens=["fresh"])
    fresh = post(cached, "/api/llm/generate", body, headers={"Cache-Control": "no-cache"})
    assert fresh.headers["X-Cache"] == "STORE" and fresh.json()["response"] == "fresh"
    again = post(cached, "/api/llm/generate", body)
    assert again.headers["X-Cache"] == "HIT" and again.json()["response"] == "fresh"
    assert calls(double) == 4


@pytest.mark.parametrize("fault", ["error_line", "drop"])
def test_a_stream_that_failed_is_never_stored(cached, double, fault):
    body = {"prompt": unique(), "options": ZERO}
    double.script(fault=fault, fault_after=1)
    events = sse_events(post(cached, "/api/llm/stream", body, stream=True))
    assert "error" in events[-1]
    double.script()
    assert post(cached, "/api/llm/generate", body).headers["X-Cache"] == "MISS"
    assert post(cached, "/api/llm/stream", body, stream=True).headers["X-Cache"] == "HIT"
    assert calls(double) == 2


def test_a_stream_its_client_cut_is_never_stored(cached, double):
    body = {"prompt": unique(), "options": ZERO}
    double.script(tokens=["slow"] * 20, delay=0.1)
    response = post(cached, "/api/llm/stream", body, stream=True)
    next(response.iter_content(chunk_size=None))
    response.close()
    double.wait_stream_closed()
    double.script()
    time.sleep(0.2)
    assert post(cached, "/api/llm/generate", body).headers["X-Cache"] == "MISS"


def test_without_cache_url_no_header(gateway, double):
    answer = requests.post(gateway.url + "/api/llm/generate", json={"prompt": "hi", "options": ZERO}, headers=AUTH)
    assert answer.status_code == 200 and "X-Cache" not in answer.headers


def test_global_scope_shares_between_keys(start_gateway, keys_file, double):
    shared = start_gateway(API_KEYS_FILE=keys_file, CACHE_URL="memory://", CACHE_SCOPE="global")
    body = {"prompt": unique(), "options": ZERO}
    assert post(shared, "/api/llm/generate", body, key=TEAM).headers["X-Cache"] == "MISS"
    assert post(shared, "/api/llm/generate", body, key=OTHER).headers["X-Cache"] == "HIT"


def test_redis_is_shared_by_two_instances(start_gateway, keys_file, double, redis_url):
    one, two = (start_gateway(API_KEYS_FILE=keys_file, CACHE_URL=redis_url) for _ in range(2))
    body = {"model": "qwen3", "prompt": unique(), "options": ZERO}
    first = post(one, "/api/llm/generate", body)
    second = post(two, "/api/llm/generate", body)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert second.json() == first.json()
    assert calls(double) == 1


def test_redis_going_away_bypasses_the_cache(start_gateway, keys_file, double):
    from tests.redis_server import RedisServer

    server = RedisServer().start()
    try:
        gateway = start_gateway(API_KEYS_FILE=keys_file, CACHE_URL=server.url)
        body = {"prompt": unique(), "options": ZERO}
        assert post(gateway, "/api/llm/generate", body).headers["X-Cache"] == "MISS"
        assert post(gateway, "/api/llm/generate", body).headers["X-Cache"] == "HIT"
    finally:
        server.stop()
    for path in ("/api/llm/generate", "/api/llm/stream"):
        answer = post(gateway, path, body, stream=True)
        assert answer.status_code == 200 and answer.headers["X-Cache"] == "BYPASS"
        if path.endswith("stream"):
            assert sse_events(answer)[-1]["done"] is True
    assert calls(double) == 3
    assert gateway.log().count("The response cache is unavailable") == 1


def ndjson(response) -> list[dict]:
    import json

    return [json.loads(line) for line in response.iter_lines() if line]


def test_ollama_native_generate_whole_and_streamed(cached, double):
    body = {"model": "qwen3", "prompt": unique(), "options": ZERO, "stream": False}
    first = post(cached, "/ollama/api/generate", body)
    second = post(cached, "/ollama/api/generate", body)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    expected = {k: v for k, v in first.json().items() if k != "context"}  # Ollama's deprecated token ids: not kept
    assert second.json() == expected
    lines = ndjson(post(cached, "/ollama/api/generate", {**body, "stream": True}, stream=True))
    assert "".join(line.get("thinking", "") for line in lines) == expected["thinking"]
    assert "".join(line["response"] for line in lines) == expected["response"]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == expected["eval_count"]
    assert calls(double) == 1


def test_ollama_native_chat_stream_with_tools_replays_as_ndjson(cached, double):
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": unique("weather in Paris")}],
            "options": ZERO, "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}}}}]}
    first = ndjson(post(cached, "/ollama/api/chat", body, stream=True))
    second_response = post(cached, "/ollama/api/chat", body, stream=True)
    assert second_response.headers["X-Cache"] == "HIT"
    assert second_response.headers["Content-Type"].startswith("application/x-ndjson")
    second = ndjson(second_response)
    calls_of = [c for line in first for c in line["message"].get("tool_calls") or []]
    assert calls_of and [c for line in second for c in line["message"].get("tool_calls") or []] == calls_of
    assert second[-1]["done"] is True and second[-1]["done_reason"] == first[-1]["done_reason"]
    # Our own route asks Ollama the same question: it is answered from the same entry.
    ours = post(cached, "/api/llm/chat", body)
    assert ours.headers["X-Cache"] == "HIT" and ours.json()["message"]["tool_calls"] == calls_of
    assert calls(double) == 1


def test_ollama_native_error_answers_are_not_stored(cached, double):
    body = {"model": "llama3.2", "prompt": unique(), "options": ZERO, "stream": False}
    double.script(fault="status_500")
    assert post(cached, "/ollama/api/generate", body).status_code == 500
    double.script()
    assert post(cached, "/ollama/api/generate", body).headers["X-Cache"] == "MISS"


def openai_chunks(response) -> list:
    import json

    blocks = [b.strip() for b in response.content.split(b"\n\n") if b.strip()]
    assert blocks[-1] == b"data: [DONE]"
    return [json.loads(b[6:]) for b in blocks[:-1]]


def test_openai_chat_whole_then_streamed(cached, double):
    body = {"model": "qwen3", "messages": [{"role": "user", "content": unique()}], "temperature": 0}
    first = post(cached, "/v1/chat/completions", body)
    second = post(cached, "/v1/chat/completions", body)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert second.json() == first.json()
    streamed = post(cached, "/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}},
                    stream=True)
    assert streamed.headers["X-Cache"] == "HIT" and streamed.headers["Content-Type"].startswith("text/event-stream")
    chunks = openai_chunks(streamed)
    message = first.json()["choices"][0]["message"]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning", "") for d in deltas) == message["reasoning"]
    assert "".join(d.get("content", "") for d in deltas) == message["content"]
    assert chunks[-1]["usage"] == first.json()["usage"]
    assert calls(double) == 1


def test_openai_stream_with_tools_then_whole(cached, double):
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": unique("weather in Oslo")}],
            "temperature": 0, "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}}}}]}
    first = openai_chunks(post(cached, "/v1/chat/completions",
                               {**body, "stream": True, "stream_options": {"include_usage": True}}))
    calls_made = [t for c in first for choice in c["choices"] for t in choice["delta"].get("tool_calls") or []]
    assert calls_made
    again = openai_chunks(post(cached, "/ollama/v1/chat/completions",
                               {**body, "stream": True, "stream_options": {"include_usage": True}}))
    assert [t for c in again for choice in c["choices"] for t in choice["delta"].get("tool_calls") or []] == calls_made
    whole = post(cached, "/v1/chat/completions", body)
    assert whole.headers["X-Cache"] == "HIT"
    assert whole.json()["choices"][0]["message"]["tool_calls"] == calls_made
    assert whole.json()["choices"][0]["finish_reason"] == "tool_calls"
    assert calls(double) == 1


def test_openai_completions_and_random_ones(cached, double):
    body = {"model": "llama3.2", "prompt": unique(), "temperature": 0}
    first = post(cached, "/v1/completions", body)
    assert [first.headers["X-Cache"], post(cached, "/v1/completions", body).headers["X-Cache"]] == ["MISS", "HIT"]
    chunks = openai_chunks(post(cached, "/v1/completions", {**body, "stream": True}))
    assert "".join(c["choices"][0]["text"] for c in chunks) == first.json()["choices"][0]["text"]
    assert post(cached, "/v1/completions", {**body, "temperature": 0.7}).headers["X-Cache"] == "BYPASS"
    assert calls(double) == 2


def usage_row(gateway, key_name: str) -> dict:
    """Today's usage of `key_name` on llama3.2 (zeros before its first request)."""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    rows = requests.get(gateway.url + "/api/usage", params={"since": today, "until": today}, headers=AUTH,
                        timeout=10).json()["usage"]
    found = [r for r in rows if r["key_name"] == key_name and r["model"] == "llama3.2:latest"]
    return found[0] if found else {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}


def test_a_hit_counts_as_a_request_with_cached_tokens_and_its_line_says_so(cached, double):
    body = {"prompt": unique(), "options": ZERO}
    before = usage_row(cached, "team")
    miss = post(cached, "/api/llm/generate", body)
    hit = post(cached, "/api/llm/generate", body)
    assert (miss.headers["X-Cache"], hit.headers["X-Cache"]) == ("MISS", "HIT")
    spent = miss.json()["prompt_eval_count"] + miss.json()["eval_count"]
    assert spent > 0
    after = usage_row(cached, "team")
    assert after["requests"] - before["requests"] == 2
    # The miss spent its tokens on Ollama; the hit none, and its stored answer's tokens count as cached.
    assert after["prompt_tokens"] - before["prompt_tokens"] == miss.json()["prompt_eval_count"]
    assert after["completion_tokens"] - before["completion_tokens"] == miss.json()["eval_count"]
    assert after["cached_tokens"] - before["cached_tokens"] == spent
    line = wait_for_access_line(cached, hit.headers["X-Request-ID"]) + " "
    assert " cache=HIT " in line and f" tokens_cached={spent} " in line and " tokens_out=0 " in line, line
    assert " cache=MISS " in wait_for_access_line(cached, miss.headers["X-Request-ID"]) + " "
