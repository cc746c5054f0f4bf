"""The Conversations service through real gunicorn (two gevent workers) against the Ollama double: stored
history sent back to Ollama, ownership, streams that end early stored as partial, one turn at a time,
trimming to the context, restarts, and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
import sqlalchemy as sa

from mlops_backend.security.keys import make_entry, new_token
from mlops_backend.services.conversations import answer_reserve, estimate_tokens
from mlops_backend.storage.tables import conversations as conversations_table
from tests.support import API_KEY, GatewayProcess, keys_file, seed_conversation, sse_events, sse_items

ALICE, BOB, PAGER = new_token(), new_token(), new_token()  # PAGER: only the pagination test's conversations
ROOT = "/api/llm/conversations"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return keys_file(tmp_path_factory, make_entry("alice", ALICE, ["use"]), make_entry("bob", BOB, ["use"]),
                     make_entry("pager", PAGER, ["use"]))


@pytest.fixture(scope="module")
def db_url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('conversations')}/gateway.db"


@pytest.fixture(scope="module")
def gw(double, keys, db_url):
    process = GatewayProcess(double.url, API_KEYS_FILE=keys, DATABASE_URL=db_url, WEB_CONCURRENCY="2").start()
    yield process
    process.stop()


def call(gateway, method, path, key=ALICE, **kwargs):
    response = requests.request(method, gateway.url + path, headers={"Authorization": f"Bearer {key}",
                                                                     "Connection": "close"}, timeout=30, **kwargs)
    response.close()
    return response


def new_conversation(gateway, key=ALICE, **fields) -> str:
    response = call(gateway, "POST", ROOT, key, json=fields)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def say(gateway, conversation_id, content, key=ALICE, **body):
    return call(gateway, "POST", f"{ROOT}/{conversation_id}/messages", key, json={"content": content, **body})


def chat_bodies(double) -> list[dict]:
    return [r["body"] for r in double.requests if r["path"] == "/api/chat"]


def wait_for(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- the conversation -------------------------------------------------------------------------------------------

def test_a_multi_turn_conversation_sends_ollama_the_growing_history(gw, double):
    conversation = new_conversation(gw, title="Kyoto", model="llama3.2", system="Answer briefly.")
    first = say(gw, conversation, "Where should I stay?")
    assert first.status_code == 200 and first.headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in first.text.split("\n") if line.startswith("data: ")]
    assert "".join(e.get("text", "") for e in events) == "You said: Where should I stay?"
    assert events[-1]["done"] is True and events[-1]["eval_count"] == 6
    whole = say(gw, conversation, "And what should I see first?", stream=False)
    assert whole.status_code == 200, whole.text
    assert whole.json()["message"] == {"role": "assistant", "content": "You said: And what should I see first?"}
    assert whole.json()["trimmed"] == 0 and whole.headers["X-Trimmed-Messages"] == "0"

    sent = chat_bodies(double)
    assert [m["role"] for m in sent[1]["messages"]] == ["system", "user", "assistant", "user"]
    assert [m["content"] for m in sent[1]["messages"]] == [
        "Answer briefly.", "Where should I stay?", "You said: Where should I stay?", "And what should I see first?"]
    assert sent[0]["stream"] is True and sent[1]["stream"] is False and sent[1]["model"] == "llama3.2"

    stored = call(gw, "GET", f"{ROOT}/{conversation}").json()
    assert stored["title"] == "Kyoto" and stored["system"] == "Answer briefly."
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [
        (m["role"], m["content"]) for m in sent[1]["messages"][1:]] + [("assistant", whole.json()["message"]["content"])]
    answers = [m for m in stored["messages"] if m["role"] == "assistant"]
    assert all(not m["interrupted"] and m["stats"]["eval_count"] > 0 and m["model"] == "llama3.2" for m in answers)


def test_patch_changes_what_the_next_turn_sends(gw, double):
    conversation = new_conversation(gw, system="Be terse.")
    patched = call(gw, "PATCH", f"{ROOT}/{conversation}", json={"system": "Be kind.", "title": "T", "model": "qwen3"})
    assert patched.status_code == 200 and patched.json()["system"] == "Be kind." and patched.json()["model"] == "qwen3"
    assert say(gw, conversation, "hi", stream=False).status_code == 200
    [body] = chat_bodies(double)
    assert body["model"] == "qwen3" and body["messages"][0] == {"role": "system", "content": "Be kind."}
    assert call(gw, "PATCH", f"{ROOT}/{conversation}", json={"colour": "red"}).status_code == 422


def test_delete_answers_204_and_the_conversation_is_gone(gw, double):
    conversation = new_conversation(gw)
    assert say(gw, conversation, "hi", stream=False).status_code == 200
    assert call(gw, "DELETE", f"{ROOT}/{conversation}").status_code == 204
    assert call(gw, "GET", f"{ROOT}/{conversation}").status_code == 404
    assert call(gw, "DELETE", f"{ROOT}/{conversation}").status_code == 404


def test_another_key_gets_404_and_an_admin_may_list_any_keys(gw, double):
    conversation = new_conversation(gw, title="mine")
    for method, path, body in [("GET", "", None), ("PATCH", "", {"title": "x"}), ("DELETE", "", None),
                               ("POST", "/messages", {"content": "hi"})]:
        response = call(gw, method, f"{ROOT}/{conversation}{path}", BOB, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["Content-Type"] == "application/problem+json"
    assert chat_bodies(double) == []
    assert conversation not in [c["id"] for c in call(gw, "GET", ROOT, BOB).json()["conversations"]]
    listed = call(gw, "GET", ROOT, API_KEY, params={"key": "alice"})
    assert listed.status_code == 200 and conversation in [c["id"] for c in listed.json()["conversations"]]
    assert call(gw, "GET", f"{ROOT}/{conversation}", API_KEY, params={"key": "alice"}).status_code == 200
    assert call(gw, "GET", ROOT, BOB, params={"key": "alice"}).status_code == 403


def test_lists_are_newest_first_in_pages_with_a_cursor(gw, double):
    owner = PAGER  # a key of its own, so the count is exact
    made = [new_conversation(gw, owner, title=f"c{i}") for i in range(5)]
    seen, cursor, pages = [], None, []
    while True:
        page = call(gw, "GET", ROOT, owner, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        pages.append(len(page["conversations"]))
        seen += [c["id"] for c in page["conversations"]]
        cursor = page.get("next_cursor")
        if cursor is None:
            break
    assert seen == made[::-1] and pages == [2, 2, 1]
    assert call(gw, "GET", ROOT, owner, params={"cursor": "nonsense"}).status_code == 400
    assert call(gw, "GET", ROOT, owner, params={"limit": 0}).status_code == 422


# -- streams that end early, and one turn at a time --------------------------------------------------------------

def test_a_client_that_leaves_leaves_a_partial_answer_marked_interrupted(gw, double):
    conversation = new_conversation(gw)
    double.script(tokens=[f"t{i} " for i in range(200)], delay=0.05)
    response = requests.post(f"{gw.url}{ROOT}/{conversation}/messages", json={"content": "count"},
                             headers={"Authorization": f"Bearer {ALICE}"}, stream=True, timeout=30)
    got = []
    for _, kind, value in sse_items(response):
        if kind == "data" and "text" in value:
            got.append(value["text"])
        if len(got) == 3:
            break
    response.close()
    record = double.wait_stream_closed(timeout=3)
    assert record["client_gone"] and not record["completed"]
    wait_for(lambda: len(call(gw, "GET", f"{ROOT}/{conversation}").json()["messages"]) == 2)
    user, answer = call(gw, "GET", f"{ROOT}/{conversation}").json()["messages"]
    assert user["content"] == "count" and answer["interrupted"] is True and "stats" not in answer
    assert answer["content"].startswith("".join(got)) and len(answer["content"]) < len("".join(
        f"t{i} " for i in range(200)))
    # The conversation is free again: the next turn is answered (and sends the partial answer as history).
    double.script()
    assert say(gw, conversation, "again", stream=False).status_code == 200
    assert chat_bodies(double)[-1]["messages"][1]["content"] == answer["content"]


def test_ollama_failing_mid_way_stores_what_came(gw, double):
    conversation = new_conversation(gw)
    double.script(tokens=["a ", "b ", "c ", "d "], fault="error_line", fault_after=2)
    events = sse_events(requests.post(f"{gw.url}{ROOT}/{conversation}/messages", json={"content": "go"},
                                      headers={"Authorization": f"Bearer {ALICE}"}, stream=True, timeout=30))
    assert [e.get("text") for e in events[:2]] == ["a ", "b "] and "error" in events[-1]
    wait_for(lambda: len(call(gw, "GET", f"{ROOT}/{conversation}").json()["messages"]) == 2)
    answer = call(gw, "GET", f"{ROOT}/{conversation}").json()["messages"][1]
    assert answer == {**answer, "content": "a b ", "interrupted": True}


def test_a_refused_turn_leaves_no_message_behind(gw, double):
    conversation = new_conversation(gw)
    refused = say(gw, conversation, "hi", model="no-such-model")
    assert refused.status_code == 404
    refused_whole = say(gw, conversation, "hi", model="no-such-model", stream=False)
    assert refused_whole.status_code == 404
    assert call(gw, "GET", f"{ROOT}/{conversation}").json()["messages"] == []
    assert say(gw, conversation, "hi", stream=False).status_code == 200  # and the conversation is free


def test_a_second_turn_at_once_gets_409(gw, double):
    conversation = new_conversation(gw)
    double.script(tokens=["slow "] * 20, delay=0.1)
    first = requests.post(f"{gw.url}{ROOT}/{conversation}/messages", json={"content": "one"},
                          headers={"Authorization": f"Bearer {ALICE}"}, stream=True, timeout=30)
    assert first.status_code == 200
    # Both workers: the lease is in the database, so whichever worker takes the second request refuses it.
    refusals = [say(gw, conversation, "two", stream=False) for _ in range(4)]
    assert [r.status_code for r in refusals] == [409] * 4, [r.text for r in refusals]
    assert refusals[0].json()["detail"].startswith("Another request is answering in this conversation")
    assert len(sse_events(first)) == 21
    wait_for(lambda: say(gw, conversation, "two", stream=False).status_code == 200)
    assert [m["content"] for m in call(gw, "GET", f"{ROOT}/{conversation}").json()["messages"]][::2] == ["one", "two"]


def test_two_turns_racing_one_wins(gw, double):
    conversation = new_conversation(gw)
    double.script(tokens=["x "] * 5, delay=0.05)
    barrier, statuses = threading.Barrier(6), []

    def go(i):
        barrier.wait()
        statuses.append(say(gw, conversation, f"m{i}", stream=False).status_code)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [200] + [409] * 5
    assert len(call(gw, "GET", f"{ROOT}/{conversation}").json()["messages"]) == 2


# -- trimming -----------------------------------------------------------------------------------------------------

def test_a_history_longer_than_num_ctx_is_trimmed_oldest_first(gw, double, db_url):
    conversation = new_conversation(gw, system="You are a guide.")
    seed_conversation(db_url, conversation, turns=30, words=40)
    answer = say(gw, conversation, "the newest question", stream=False, options={"num_ctx": 1024})
    assert answer.status_code == 200, answer.text
    [body] = chat_bodies(double)
    sent = body["messages"]
    assert sent[0] == {"role": "system", "content": "You are a guide."}
    assert sent[-1] == {"role": "user", "content": "the newest question"}
    assert sent[-2]["content"].startswith("turn 29 ") and sent[1]["content"].startswith("turn ")
    trimmed = int(answer.headers["X-Trimmed-Messages"])
    assert trimmed > 0 and len(sent) == 2 + 60 - trimmed
    assert sum(estimate_tokens(m) for m in sent) <= 1024 - answer_reserve(1024, {})
    assert sum(estimate_tokens(m) for m in [sent[0], sent[-1]] + [{"content": "turn 0 " + "word " * 40}] + sent[1:-1]) \
        > 1024 - answer_reserve(1024, {})  # one more message would not have fit


def test_a_thousand_turn_conversation_still_answers_within_the_models_context(gw, double, db_url):
    """No num_ctx: the context is llama3.2's context_length from /api/show (131072 in the double)."""
    conversation = new_conversation(gw, model="llama3.2")
    seed_conversation(db_url, conversation, turns=1000, words=200)
    answer = say(gw, conversation, "still there?", stream=False)
    assert answer.status_code == 200, answer.text
    [body] = chat_bodies(double)
    assert int(answer.headers["X-Trimmed-Messages"]) > 0
    assert sum(estimate_tokens(m) for m in body["messages"]) <= 131072 - answer_reserve(131072, {})
    assert body["messages"][-1]["content"] == "still there?"
    stored = call(gw, "GET", f"{ROOT}/{conversation}").json()["messages"]
    assert len(stored) == 2002  # nothing is deleted: trimming only shapes what Ollama is sent


# -- restarts and PostgreSQL ---------------------------------------------------------------------------------------

def test_a_restart_keeps_everything(double, keys, tmp_path):
    url = f"sqlite:///{tmp_path}/kept.db"
    first = GatewayProcess(double.url, API_KEYS_FILE=keys, DATABASE_URL=url).start()
    try:
        conversation = new_conversation(first, title="kept", system="S")
        assert say(first, conversation, "remember me", stream=False).status_code == 200
    finally:
        first.stop()
    second = GatewayProcess(double.url, API_KEYS_FILE=keys, DATABASE_URL=url).start()
    try:
        stored = call(second, "GET", f"{ROOT}/{conversation}").json()
        assert stored["title"] == "kept" and [m["content"] for m in stored["messages"]] == [
            "remember me", "You said: remember me"]
        assert say(second, conversation, "and now?", stream=False).status_code == 200
        assert [m["content"] for m in chat_bodies(double)[-1]["messages"]] == [
            "S", "remember me", "You said: remember me", "and now?"]
    finally:
        second.stop()


def test_conversations_on_postgresql(double, keys, postgres_url):
    gateway = GatewayProcess(double.url, API_KEYS_FILE=keys, DATABASE_URL=postgres_url, WEB_CONCURRENCY="2").start()
    try:
        conversation = new_conversation(gateway, system="S")
        assert say(gateway, conversation, "one").status_code == 200
        double.script(tokens=["x "] * 10, delay=0.1)
        first = requests.post(f"{gateway.url}{ROOT}/{conversation}/messages", json={"content": "two"},
                              headers={"Authorization": f"Bearer {ALICE}"}, stream=True, timeout=30)
        assert say(gateway, conversation, "three", stream=False).status_code == 409
        sse_events(first)
        double.script()
        wait_for(lambda: say(gateway, conversation, "three", stream=False).status_code == 200)
        stored = call(gateway, "GET", f"{ROOT}/{conversation}").json()["messages"]
        assert [m["content"] for m in stored][::2] == ["one", "two", "three"]
    finally:
        gateway.stop()
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(conversations_table)).scalar_one() == 1
    finally:
        engine.dispose()
