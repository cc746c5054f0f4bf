"""OpenAI Responses state (services/responses_state.py): stored answers, previous_response_id and conversations,
through the real gateway under gunicorn with the official openai SDK, in front of the Ollama double (which, as
current Ollama, is stateless and ignores previous_response_id). Storage is each gateway's own SQLite file, and
PostgreSQL once; the last tests are unit tests of the module's pure parts."""

from __future__ import annotations

import json
import re

import openai
import pytest
import requests
import sqlalchemy as sa
from openai import OpenAI

from mlops_backend.security.keys import make_entry, new_token
from mlops_backend.services.responses_state import ResponsesState, as_input, input_items
from mlops_backend.storage.database import Database
from tests.support import GatewayProcess, keys_file

MODEL = "llama3.2"
GATEWAY_ID = re.compile(r"resp_[0-9a-f]{24}")  # listing.new_id("resp")
OLLAMA_ID = re.compile(r"resp_\d+")  # fmt.Sprintf("resp_%d", rand.Intn(999999))
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


class Keys:
    alice = new_token()
    bob = new_token()
    narrow = new_token()  # allow-listed to llama3.2 only


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return keys_file(tmp_path_factory, make_entry("alice", Keys.alice, ["use"]), make_entry("bob", Keys.bob, ["use"]),
                     make_entry("narrow", Keys.narrow, ["use"], models=[MODEL]))


@pytest.fixture(scope="module")
def gw(double, keys):
    """This module's gateway: the named keys; DATABASE_URL unset, so a SQLite file in its own directory."""
    process = GatewayProcess(double.url, API_KEYS_FILE=keys).start()
    yield process
    process.stop()


def client(gateway, key=Keys.alice, base="/v1"):
    return OpenAI(base_url=gateway.url + base, api_key=key, max_retries=0, timeout=10)


def sent(double) -> list[dict]:
    """The bodies of the /v1/responses requests Ollama received, in order."""
    return [r["body"] for r in double.requests if r["path"] == "/v1/responses"]


def user(text: str) -> dict:
    return {"role": "user", "content": text, "type": "message"}


def assistant(text: str) -> dict:
    return {"type": "message", "role": "assistant", "content": text}


def sse(response) -> list[tuple[str, dict]]:
    """(event name, data) of each record of a raw SSE answer."""
    out = []
    for record in response.text.split("\n\n"):
        if record.strip():
            head, _, data = record.partition("\ndata: ")
            out.append((head.removeprefix("event: "), json.loads(data)))
    return out


# -- previous_response_id, whole and streamed ---------------------------------------------------------------------


def test_multi_turn_whole(gw, double):
    with client(gw) as sdk:
        first = sdk.responses.create(model=MODEL, input="My name is Ada.", instructions="Be brief.")
        second = sdk.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id)
        third = sdk.responses.create(model=MODEL, input=[user("And again?")], previous_response_id=second.id)
    for answer in (first, second, third):
        assert GATEWAY_ID.fullmatch(answer.id) and answer.store is True and answer.status == "completed"
    assert first.previous_response_id is None and first.instructions == "Be brief."
    assert second.previous_response_id == first.id and third.previous_response_id == second.id
    assert second.output_text == "You said: What is my name?"  # the double answers the last user message
    bodies = sent(double)
    assert bodies[0] == {"model": MODEL, "input": "My name is Ada.", "instructions": "Be brief."}  # unchanged
    # Instructions are not inherited (OpenAI's rule); the history is the chain's inputs and outputs, in order.
    assert bodies[1] == {"model": MODEL, "input": [user("My name is Ada."), assistant(first.output_text),
                                                    user("What is my name?")]}
    assert bodies[2]["input"] == [user("My name is Ada."), assistant(first.output_text), user("What is my name?"),
                                  assistant(second.output_text), user("And again?")]


def test_multi_turn_streamed(gw, double):
    with client(gw) as sdk:
        events = list(sdk.responses.create(model=MODEL, input="My name is Ada.", stream=True))
        first = events[-1].response
        more = list(sdk.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                                          stream=True))
        whole = sdk.responses.create(model=MODEL, input="Once more?", previous_response_id=more[-1].response.id)
    assert events[-1].type == "response.completed" and GATEWAY_ID.fullmatch(first.id)
    # Every event that carries the response carries the gateway's id, store: true, previous_response_id.
    carried = [e.response for e in events if hasattr(e, "response")]
    assert [e.type for e in events if hasattr(e, "response")] == ["response.created", "response.in_progress",
                                                                 "response.completed"]
    assert {(r.id, r.store, r.previous_response_id) for r in carried} == {(first.id, True, None)}
    later = [e.response for e in more if hasattr(e, "response")]
    assert {(r.id, r.previous_response_id) for r in later} == {(more[-1].response.id, first.id)}
    deltas = "".join(e.delta for e in more if e.type == "response.output_text.delta")
    assert deltas == more[-1].response.output_text == "You said: What is my name?"
    bodies = sent(double)
    assert bodies[1]["input"] == [user("My name is Ada."), assistant(first.output_text), user("What is my name?")]
    assert bodies[2]["input"][-3:] == [user("What is my name?"), assistant(deltas), user("Once more?")]
    assert "previous_response_id" not in bodies[1] and whole.previous_response_id == more[-1].response.id


def test_other_events_pass_byte_for_byte(gw, double):
    """Only the events that carry the response object are rewritten; the deltas go as Ollama wrote them."""
    response = requests.post(gw.url + "/v1/responses", json={"model": MODEL, "input": "hi", "stream": True},
                             headers={"Authorization": f"Bearer {Keys.alice}"}, timeout=10)
    assert response.status_code == 200
    records = [r for r in response.content.split(b"\n\n") if r]
    assert all(b'"sequence_number":' in r for r in records)
    deltas = [r for r in records if r.startswith(b"event: response.output_text.delta")]
    assert deltas and all(b"resp_" not in r for r in deltas)
    assert all(not OLLAMA_ID.fullmatch(data["response"]["id"]) for _, data in sse(response) if "response" in data)


def test_ids_are_the_gateways_and_never_repeat(gw, double):
    with client(gw) as sdk:
        ids = [sdk.responses.create(model=MODEL, input="hi").id for _ in range(200)]
    assert len(set(ids)) == 200 and all(GATEWAY_ID.fullmatch(i) for i in ids)


def test_ollama_route_too(gw, double):
    with client(gw, base="/ollama/v1") as sdk:
        first = sdk.responses.create(model=MODEL, input="one")
        second = sdk.responses.create(model=MODEL, input="two", previous_response_id=first.id)
    assert GATEWAY_ID.fullmatch(second.id)
    assert sent(double)[1]["input"] == [user("one"), assistant(first.output_text), user("two")]


def test_function_call_items_go_back(gw, double):
    with client(gw) as sdk:
        call = sdk.responses.create(model=MODEL, input="What is the weather in Tokyo?", tools=[WEATHER_TOOL])
        (function_call,) = call.output
        sdk.responses.create(model=MODEL, previous_response_id=call.id, tools=[WEATHER_TOOL],
                             input=[{"type": "function_call_output", "call_id": function_call.call_id,
                                     "output": "sunny"}])
    assert function_call.type == "function_call" and function_call.name == "get_weather"
    assert sent(double)[1]["input"] == [
        user("What is the weather in Tokyo?"),
        {"type": "function_call", "id": function_call.id, "call_id": function_call.call_id, "name": "get_weather",
         "arguments": function_call.arguments},
        {"type": "function_call_output", "call_id": function_call.call_id, "output": "sunny"}]


def test_reasoning_items_go_back(gw, double):
    with client(gw) as sdk:
        first = sdk.responses.create(model="qwen3", input="Think first.")
        sdk.responses.create(model="qwen3", input="And now?", previous_response_id=first.id)
    reasoning, _message = first.output
    assert reasoning.type == "reasoning" and reasoning.encrypted_content  # Ollama's thinking, in plain text
    assert sent(double)[1]["input"] == [
        user("Think first."),
        {"type": "reasoning", "id": reasoning.id, "encrypted_content": reasoning.encrypted_content,
         "summary": [{"type": "summary_text", "text": reasoning.summary[0].text}]},
        assistant(first.output_text), user("And now?")]


# -- whose responses, and which are stored -------------------------------------------------------------------------


def not_found(info, response_id):
    assert info.value.status_code == 400
    assert info.value.body["code"] == "previous_response_not_found"
    assert info.value.body["message"] == f"Previous response with id '{response_id}' not found."
    assert info.value.body["type"] == "invalid_request_error"


def test_another_keys_response_is_not_found(gw, double):
    with client(gw, Keys.alice) as sdk:
        mine = sdk.responses.create(model=MODEL, input="secret")
    double.reset()
    with client(gw, Keys.bob) as sdk, pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model=MODEL, input="tell me", previous_response_id=mine.id)
    not_found(info, mine.id)
    with client(gw, Keys.bob) as sdk, pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model=MODEL, input="tell me", previous_response_id="resp_123456", stream=True)
    not_found(info, "resp_123456")
    assert double.requests == []  # refused before Ollama


def test_store_false_stores_nothing(gw, double):
    with client(gw) as sdk:
        kept = sdk.responses.create(model=MODEL, input="one")
        unstored = sdk.responses.create(model=MODEL, input="two", store=False, previous_response_id=kept.id)
        streamed = list(sdk.responses.create(model=MODEL, input="three", store=False, stream=True))[-1].response
        for answer in (unstored, streamed):
            assert OLLAMA_ID.fullmatch(answer.id) and answer.store is False  # Ollama's answer, unchanged
            with pytest.raises(openai.BadRequestError) as info:
                sdk.responses.create(model=MODEL, input="four", previous_response_id=answer.id)
            not_found(info, answer.id)
    # A store: false request still continues a stored one (only its own answer is not kept).
    assert sent(double)[1]["input"] == [user("one"), assistant(kept.output_text), user("two")]


def test_failed_stream_is_not_stored(gw, double):
    double.script(fault="error_line", fault_after=2)
    response = requests.post(gw.url + "/v1/responses", json={"model": MODEL, "input": "hi there", "stream": True},
                             headers={"Authorization": f"Bearer {Keys.alice}"}, timeout=10)
    events = sse(response)
    created = events[0][1]["response"]
    assert events[0][0] == "response.created" and GATEWAY_ID.fullmatch(created["id"])
    assert "response.completed" not in [name for name, _ in events] and events[-1][0] == "error"
    double.reset()
    with client(gw) as sdk, pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model=MODEL, input="again", previous_response_id=created["id"])
    not_found(info, created["id"])


def test_allow_list_holds_on_a_continued_request(gw, double):
    with client(gw, Keys.narrow) as sdk:
        first = sdk.responses.create(model=MODEL, input="hi")
        with pytest.raises(openai.PermissionDeniedError):
            sdk.responses.create(model="qwen3", input="again", previous_response_id=first.id)
    assert len(sent(double)) == 1


# -- conversations --------------------------------------------------------------------------------------------------


def test_conversation_appends(gw, double):
    with client(gw) as sdk:
        first = sdk.responses.create(model=MODEL, input="Turn one.", conversation="conv_demo")
        second = sdk.responses.create(model=MODEL, input="Turn two.", conversation={"id": "conv_demo"}, stream=True)
        second = list(second)[-1].response
        sdk.responses.create(model=MODEL, input="Turn three.", conversation="conv_demo")
        # previous_response_id into a conversation's response sees the conversation up to it.
        sdk.responses.create(model=MODEL, input="Aside.", previous_response_id=second.id)
    with client(gw, Keys.bob) as sdk:
        sdk.responses.create(model=MODEL, input="Bob's turn.", conversation="conv_demo")  # bob's own conversation
    assert first.conversation.id == "conv_demo" and second.conversation.id == "conv_demo"
    bodies = sent(double)
    assert bodies[0] == {"model": MODEL, "input": [user("Turn one.")]}
    assert bodies[1]["input"] == [user("Turn one."), assistant(first.output_text), user("Turn two.")]
    assert bodies[2]["input"] == [user("Turn one."), assistant(first.output_text), user("Turn two."),
                                  assistant(second.output_text), user("Turn three.")]
    assert bodies[3]["input"] == bodies[2]["input"][:-1] + [user("Aside.")]
    assert bodies[4]["input"] == [user("Bob's turn.")] and "conversation" not in bodies[4]


def test_conversation_and_previous_response_id_together(gw, double):
    with client(gw) as sdk, pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model=MODEL, input="x", conversation="conv_x", previous_response_id="resp_1")
    assert info.value.body["code"] == "mutually_exclusive_parameters"
    assert double.requests == []


# -- RESPONSES_STORE=false, PostgreSQL ------------------------------------------------------------------------------


def test_feature_off_passes_previous_response_id_on(start_gateway, double, keys):
    gateway = start_gateway(API_KEYS_FILE=keys, RESPONSES_STORE="false")
    with client(gateway) as sdk:
        first = sdk.responses.create(model=MODEL, input="one")
        sdk.responses.create(model=MODEL, input="two", previous_response_id=first.id)
    assert OLLAMA_ID.fullmatch(first.id) and first.store is False
    assert sent(double)[1] == {"model": MODEL, "input": "two", "previous_response_id": first.id}


def test_stored_on_postgresql(start_gateway, double, keys, postgres_url):
    gateway = start_gateway(API_KEYS_FILE=keys, DATABASE_URL=postgres_url)
    with client(gateway) as sdk:
        first = sdk.responses.create(model=MODEL, input="On PostgreSQL.", instructions="Terse.")
        events = list(sdk.responses.create(model=MODEL, input="Still?", previous_response_id=first.id, stream=True))
        third = sdk.responses.create(model=MODEL, input="Yes?", previous_response_id=events[-1].response.id)
    assert sent(double)[2]["input"] == [user("On PostgreSQL."), assistant(first.output_text), user("Still?"),
                                        assistant(events[-1].response.output_text), user("Yes?")]
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT id, key_name, previous_id, instructions, input FROM responses "
                                              "ORDER BY created_at")).all()
    finally:
        engine.dispose()
    assert [(r.id, r.key_name, r.previous_id, r.instructions) for r in rows] == [
        (first.id, "alice", None, "Terse."), (events[-1].response.id, "alice", first.id, None),
        (third.id, "alice", events[-1].response.id, None)]
    assert rows[0].input == [user("On PostgreSQL.")]


# -- the module's pure parts ----------------------------------------------------------------------------------------


def test_input_items():
    assert input_items("hi") == [user("hi")]
    assert input_items("") == [] and input_items(None) == []
    assert input_items([{"role": "user", "content": "x"}]) == [{"role": "user", "content": "x"}]
    assert input_items(7) is None


def test_output_items_as_input():
    message = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": "hey", "annotations": [], "logprobs": []}]}
    assert as_input(message) == assistant("hey")
    call = {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "c1", "name": "f",
            "arguments": "{}"}
    assert as_input(call) == {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f", "arguments": "{}"}
    search = {"id": "ws_1", "type": "web_search_call", "status": "completed", "action": {"type": "search",
                                                                                         "query": "q"}}
    assert as_input(search) == search
    assert as_input({"type": "image_generation_call"}) is None and as_input("x") is None


def test_chain_is_bounded_and_per_key():
    database = Database("sqlite://")
    try:
        state = ResponsesState(database, max_chain=3)
        previous = None
        for n in range(5):
            state.save("k", f"r{n}", previous_id=previous, conversation=None, model=MODEL, instructions=None,
                       input=[user(str(n))], output=[])
            previous = f"r{n}"
        turn = state.begin("k", input="next", previous_id="r4")
        assert turn.input == [user("2"), user("3"), user("4"), user("next")]  # the oldest two left out
        assert turn.id and GATEWAY_ID.fullmatch(turn.id)
        assert state.begin("k", input="x", store=False).id is None
        with pytest.raises(ValueError, match="Previous response with id 'r4' not found"):
            state.begin("other", input="next", previous_id="r4")
    finally:
        database.close()


def test_a_chain_is_bounded_in_bytes_too():
    """256 stored turns of a few MiB each would be a body far over MAX_BODY_BYTES: the oldest replayed
    items are left out until the rebuilt input fits, and the request's own items always stay."""
    database = Database("sqlite://")
    try:
        state = ResponsesState(database)
        previous = None
        for n in range(6):
            state.save("k", f"r{n}", previous_id=previous, conversation=None, model=MODEL, instructions=None,
                       input=[user(f"{n} " + "x" * 1000)], output=[])
            previous = f"r{n}"
        turn = state.begin("k", input="next " + "y" * 3000, previous_id="r5")
        assert turn.fit(6000) == 4
        assert [item["content"][:2] for item in turn.input] == ["4 ", "5 ", "ne"]
        assert len(json.dumps(turn.input)) <= 6000
        alone = state.begin("k", input="z" * 9000, previous_id="r5")
        assert alone.fit(6000) == 6 and [item["content"] for item in alone.input] == ["z" * 9000]
    finally:
        database.close()
