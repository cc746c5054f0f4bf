"""Chat, embeddings, model details and running models, through real gunicorn against the double."""

from __future__ import annotations

import base64
import time

import pytest
import requests

from tests.support import AUTH, sse_events, sse_items
from tests.test_api import assert_problem

HISTORY = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "hello there"}]
IMAGE = base64.b64encode(b"\x89PNG fake image bytes").decode()


def post(gateway, path, body, **kwargs):
    return requests.post(gateway.url + path, json=body, headers=AUTH, **kwargs)


def test_chat_answers_with_message_and_statistics(gateway, double):
    response = post(gateway, "/api/llm/chat", {"model": "llama3.2", "messages": HISTORY, "stream": True,
                                               "options": {"temperature": 0}, "keep_alive": "10m"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == {"role": "assistant", "content": "You said: hello there"}
    assert body["done"] is True and body["done_reason"] == "stop"
    assert {"total_duration", "load_duration", "prompt_eval_count", "eval_count", "eval_duration"} <= set(body)
    sent = double.requests[-1]
    assert sent["path"] == "/api/chat" and sent["body"]["stream"] is False
    assert sent["body"]["messages"] == HISTORY and sent["body"]["keep_alive"] == "10m"


def test_chat_returns_thinking_and_tool_calls(gateway, double):
    double.script(thinking=["Hmm"], tokens=["Fine"])
    body = post(gateway, "/api/llm/chat", {"model": "qwen3", "messages": HISTORY, "think": True}).json()
    assert body["message"]["thinking"] == "Hmm" and body["message"]["content"] == "Fine"
    double.reset()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    body = post(gateway, "/api/llm/chat", {"messages": [{"role": "user", "content": "weather in Tokyo?"}],
                                           "tools": tools}).json()
    assert body["message"]["tool_calls"][0]["function"] == {"index": 0, "name": "get_weather",
                                                            "arguments": {"city": "Tokyo"}}
    assert double.requests[-1]["body"]["tools"] == tools


def test_tool_calls_keep_their_id_and_a_tool_result_names_it(gateway, double):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    ask = [{"role": "user", "content": "weather in Tokyo?"}]
    whole = post(gateway, "/api/llm/chat", {"messages": ask, "tools": tools}).json()
    (call,) = whole["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["function"]["name"] == "get_weather"
    events = sse_events(post(gateway, "/api/llm/chat/stream", {"messages": ask, "tools": tools}, stream=True))
    (streamed,) = [event["tool_calls"] for event in events if "tool_calls" in event]
    assert streamed[0]["id"] == call["id"]
    history = ask + [{"role": "assistant", "content": "", "tool_calls": [call]},
                     {"role": "tool", "content": "Sunny", "tool_name": "get_weather", "tool_call_id": call["id"]}]
    response = post(gateway, "/api/llm/chat", {"messages": history, "tools": tools})
    assert response.status_code == 200, response.text
    sent = double.requests[-1]["body"]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call["id"] and sent[2]["tool_call_id"] == call["id"]


def test_chat_stream_has_the_stream_grammar(gateway, double):
    double.script(thinking=["Let me see"], tokens=["Hel", "lo\n", "🦙"], delay=0.2)
    started = time.monotonic()
    response = post(gateway, "/api/llm/chat/stream", {"model": "qwen3", "messages": HISTORY}, stream=True)
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    items = [(t - started, v) for t, kind, v in sse_items(response) if kind == "data"]
    events = [v for _, v in items]
    assert events[:4] == [{"thinking": "Let me see"}, {"text": "Hel"}, {"text": "lo\n"}, {"text": "🦙"}]
    assert events[4]["done"] is True and len(events) == 5
    assert items[1][0] < items[3][0] - 0.2  # incremental, not one lump


def test_chat_stream_tool_calls_event(gateway):
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    response = post(gateway, "/api/llm/chat/stream", {"messages": [{"role": "user", "content": "weather?"}],
                                                       "tools": tools}, stream=True)
    events = sse_events(response)
    (call,) = events[0]["tool_calls"]
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}
    assert call["id"].startswith("call_") and set(events[0]) == {"tool_calls"}
    assert events[-1]["done"] is True


@pytest.mark.parametrize("fault", ["drop", "malformed", "error_line"])
def test_chat_stream_ends_with_one_error_event(gateway, double, fault):
    double.script(tokens=["a", "b", "c"], fault=fault, fault_after=1)
    events = sse_events(post(gateway, "/api/llm/chat/stream", {"messages": HISTORY}, stream=True))
    assert events[0] == {"text": "a"} and len(events) == 2
    assert events[1]["done"] is True and events[1]["error"]["status"] == 502


def test_chat_stream_disconnect_closes_upstream(gateway, double):
    double.script(tokens=["t "] * 200, delay=0.05)
    response = post(gateway, "/api/llm/chat/stream", {"messages": HISTORY}, stream=True)
    next(sse_items(response))
    left = time.monotonic()
    response.close()
    record = double.wait_stream_closed(timeout=3)
    assert record["path"] == "/api/chat" and record["client_gone"]
    assert record["closed_at"] - left < 1.0


def test_chat_errors(gateway):
    assert_problem(post(gateway, "/api/llm/chat/stream", {"model": "missing", "messages": HISTORY}), 404)
    body = assert_problem(post(gateway, "/api/llm/chat", {"messages": []}), 422)
    assert [e["field"] for e in body["errors"]] == ["messages"]
    body = assert_problem(post(gateway, "/api/llm/chat", {"messages": [
        {"role": "robot", "content": "x"}, {"content": "no role"}, {"role": "user", "content": 5},
        {"role": "user", "content": "x", "images": ["data:image/png;base64,AAAA", "not base64!"]}]}), 422)
    assert {e["field"] for e in body["errors"]} == {
        "messages.0.role", "messages.1.role", "messages.2.content", "messages.3.images.0", "messages.3.images.1"}
    body = assert_problem(post(gateway, "/api/llm/chat", {"messages": HISTORY, "tools": [{"type": "web"}]}), 422)
    assert {e["field"] for e in body["errors"]} == {"tools.0.type", "tools.0.function"}


def test_options_are_validated_and_unknown_ones_named(gateway):
    body = assert_problem(post(gateway, "/api/llm/chat", {"messages": HISTORY, "options": {
        "temperature": -0.1, "top_p": 1.5, "num_predict": -3, "seed": 1.5, "stop": 3, "mirostat_x": 1}}), 422)
    assert {e["field"] for e in body["errors"]} == {
        "options.temperature", "options.top_p", "options.num_predict", "options.seed", "options.stop",
        "options.mirostat_x"}
    assert "ALLOW_UNKNOWN_OPTIONS" in next(e["message"] for e in body["errors"] if e["field"] == "options.mirostat_x")


def test_unknown_options_pass_through_when_allowed(start_gateway, double):
    gw = start_gateway(ALLOW_UNKNOWN_OPTIONS="true")
    response = post(gw, "/api/llm/chat", {"messages": HISTORY, "options": {"new_knob": 2, "temperature": 0.5}})
    assert response.status_code == 200, response.text
    assert double.requests[-1]["body"]["options"] == {"new_knob": 2, "temperature": 0.5}
    assert_problem(post(gw, "/api/llm/chat", {"messages": HISTORY, "options": {"temperature": -1}}), 422)


def test_images_and_prompt_limits(start_gateway, double):
    gw = start_gateway(MAX_IMAGE_BYTES="64", MAX_IMAGES_BYTES="100", MAX_PROMPT_CHARS="40")
    ok = post(gw, "/api/llm/chat", {"messages": [{"role": "user", "content": "what is this?", "images": [IMAGE]}]})
    assert ok.status_code == 200, ok.text
    assert double.requests[-1]["body"]["messages"][0]["images"] == [IMAGE]
    big = base64.b64encode(b"x" * 60).decode()  # 80 characters of base64
    body = assert_problem(post(gw, "/api/llm/chat", {"messages": [
        {"role": "user", "content": "a", "images": [big]}]}), 422)
    assert [e["field"] for e in body["errors"]] == ["messages.0.images.0"]
    body = assert_problem(post(gw, "/api/llm/chat", {"messages": [
        {"role": "user", "content": "a", "images": [IMAGE] * 4}]}), 422)  # 4 x 32 > 100
    assert [e["field"] for e in body["errors"]] == ["images"]
    body = assert_problem(post(gw, "/api/llm/chat", {"messages": [
        {"role": "user", "content": "x" * 30}, {"role": "user", "content": "y" * 30}]}), 422)
    assert [e["field"] for e in body["errors"]] == ["messages"]
    assert_problem(post(gw, "/api/llm/generate", {"prompt": "z" * 41}), 422)
    assert post(gw, "/api/llm/generate", {"prompt": "fine", "images": [IMAGE]}).status_code == 200


def test_embed_one_or_many(gateway, double):
    body = post(gateway, "/api/llm/embed", {"model": "all-minilm", "input": ["one", "two"], "dimensions": 8}).json()
    assert body["model"] == "all-minilm" and len(body["embeddings"]) == 2
    assert all(len(vector) == 8 for vector in body["embeddings"])
    assert abs(sum(x * x for x in body["embeddings"][0]) - 1) < 1e-4
    single = post(gateway, "/api/llm/embed", {"model": "all-minilm", "input": "one", "dimensions": 8}).json()
    assert single["embeddings"] == body["embeddings"][:1]
    assert double.requests[-1]["path"] == "/api/embed"


def test_embed_limits_and_validation(start_gateway):
    gw = start_gateway(EMBED_MAX_INPUTS="3", EMBED_MAX_BYTES="20")
    body = assert_problem(post(gw, "/api/llm/embed", {"input": ["a", "b", "c", "d"]}), 422)
    assert [e["field"] for e in body["errors"]] == ["input"]
    assert_problem(post(gw, "/api/llm/embed", {"input": ["0123456789", "0123456789", "x"]}), 413)
    for bad in ([], "", [1, 2], {"text": "a"}):
        assert_problem(post(gw, "/api/llm/embed", {"input": bad}), 422)
    assert_problem(post(gw, "/api/llm/embed", {"model": "missing", "input": "a"}), 404)


def test_model_details_and_running(gateway):
    details = requests.get(gateway.url + "/api/llm/models/llama3.2:latest", headers=AUTH)
    assert details.status_code == 200
    assert {"capabilities", "parameters", "template", "details", "model_info"} <= set(details.json())
    assert_problem(requests.get(gateway.url + "/api/llm/models/nope:7b", headers=AUTH), 404, "Model not found")
    running = requests.get(gateway.url + "/api/llm/running", headers=AUTH).json()["models"]
    assert running and {"name", "expires_at", "size_vram"} <= set(running[0])
