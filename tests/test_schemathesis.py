"""Schemathesis against the real gateway (gunicorn, one gevent worker) in front of the Ollama double:
every operation of /openapi.json, with the server-error and response-schema checks, the event streams
included.

Schemathesis parses a text/event-stream answer into events, {"data", "event", "id"?, "retry"?} (comment
lines such as our `: keep-alive` heartbeats are skipped), and validates each against the media type's
OpenAPI 3.2 `itemSchema`; there `data` is a string with `contentMediaType: application/json` and a
`contentSchema`, so it also parses each event's data as JSON and validates that object.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile

import pytest
import requests
import schemathesis
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.errors import FailureGroup

from tests.support import AUTH

# The two checks and nothing else: a 5xx fails, and so does any answer (JSON or event stream) that its
# documented status and media type do not describe. Phases: examples (the documented bodies, which
# reach real streams of each kind), coverage (boundary and invalid values), then up to 5 random cases
# per operation, positive and negative; stateful off (no links). About 2,000 requests, 25-35 s on
# 2 cores. Fixed seed and deterministic generation: a failure reproduces; no example database or cache.
CONFIG = {
    "seed": 20261127,
    "cache": {"enabled": False},
    "headers": AUTH,
    "request-timeout": 15,
    # Read whole streams (ours close after their final event) rather than the default first 20 events.
    "max-stream-events": 500,
    "generation": {"mode": "all", "max-examples": 5, "database": "none", "deterministic": True},
    "phases": {"stateful": {"enabled": False}},
    "checks": {"enabled": False, "not_a_server_error": {"enabled": True},
               "response_schema_conformance": {"enabled": True}},
}


# Hypothesis caches what it learns of the source (.hypothesis/constants, then unicode data) in the working
# directory, even with no example database, and its pytest plugin starts while collecting, before any
# fixture: from the import on, it writes to a temporary directory instead, removed at exit.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
set_hypothesis_home_dir(_HYPOTHESIS_HOME)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    # schemathesis 4.32.5's lazy parametrize reads and renames `request.node._nodeid`, which pytest 9.2's
    # nodes no longer have (the id is `_id` now): without this it fails with AttributeError before any
    # request. It then renames only this attribute; pytest labels each operation's subtest itself.
    request.node._nodeid = request.node.nodeid


@pytest.fixture(scope="module")
def api_schema(gateway):
    return schemathesis.openapi.from_url(gateway.url + "/openapi.json", config=schemathesis.Config.from_dict(CONFIG))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_answers_as_documented(case, double):
    # Every case starts from the double's catalogue: a generated DELETE must not starve the cases after it.
    double.reset()
    case.call_and_validate()


def stream_case(api_schema, path: str, body: dict):
    return api_schema[path]["POST"].Case(body=body, media_type="application/json", headers=dict(AUTH))


def data_events(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.content.decode().split("\n") if line.startswith("data: ")]


@pytest.mark.parametrize(("path", "body", "keys"), [
    ("/api/llm/stream", {"prompt": "Why is the sky blue?"}, {"text", "done", "eval_count"}),
    ("/api/llm/stream", {"model": "qwen3", "prompt": "Why?", "think": True}, {"thinking", "text", "done"}),
    ("/api/llm/chat/stream", {"messages": [{"role": "user", "content": "Hi"}]}, {"text", "done"}),
    ("/api/llm/chat/stream", {"messages": [{"role": "user", "content": "The weather in Tokyo?"}],
                              "tools": [{"type": "function", "function": {"name": "get_weather"}}]},
     {"tool_calls", "done"}),
    ("/api/llm/models/pull", {"model": "mistral"}, {"status", "digest", "total", "completed", "done"}),
], ids=["text", "thinking", "chat", "tool-calls", "pull"])
def test_each_kind_of_event_passes_the_check(api_schema, double, path, body, keys):
    """Every kind of event the gateway sends is validated, and passes (not only "some stream did")."""
    response = stream_case(api_schema, path, body).call_and_validate()
    assert response.status_code == 200 and response.headers["content-type"][0].startswith("text/event-stream")
    events = data_events(response)
    assert events[-1]["done"] is True and "error" not in events[-1], events
    assert keys <= {key for event in events for key in event}, events


def test_heartbeats_and_the_error_event_pass_the_check(api_schema, double):
    # Ollama silent for 1.6 s: past STREAM_STATUS_WAIT (1 s) the 200 starts and heartbeats (every 0.5 s
    # here) go out before any event; then Ollama's error line ends the stream with the error event.
    double.script(first_delay=1.6, fault="error_line", fault_after=1)
    response = stream_case(api_schema, "/api/llm/stream", {"prompt": "Count to three"}).call_and_validate()
    assert response.status_code == 200 and response.content.startswith(b": keep-alive\n\n"), response.content
    final = data_events(response)[-1]
    assert final["done"] is True and set(final["error"]) >= {"title", "status", "detail"}, final


def crafted(case, body: bytes) -> schemathesis.Response:
    request = requests.Request("POST", "http://127.0.0.1/api/llm/stream", json=case.body).prepare()
    return schemathesis.Response(status_code=200, headers={"content-type": ["text/event-stream; charset=utf-8"]},
                                 content=body, request=request, elapsed=0.01, verify=True)


@pytest.mark.parametrize(("body", "message"), [
    (b'data: {"text":1}\n\n', '1 is not of type "string"'),
    (b'data: {"done":true,"eval_count":"many"}\n\n', '"many" is not of type "integer"'),
    (b'data: {"error":{"title":"x"},"done":true}\n\n', "is a required property"),
    (b"data: The sky\n\n", "cannot deserialize payload for `application/json`"),
    (b'data: ["text"]\n\n', 'is not of type "object"'),
], ids=["text-not-a-string", "statistic-not-an-integer", "error-without-status", "data-not-json",
        "data-not-an-object"])
def test_a_stream_unlike_the_document_fails_the_check(api_schema, body, message):
    """The check reads each event's data: a stream that breaks the document fails it."""
    case = stream_case(api_schema, "/api/llm/stream", {"prompt": "Hi"})
    with pytest.raises(FailureGroup, match="SSE event") as failure:
        case.validate_response(crafted(case, body))
    assert message in str(failure.value)


def test_events_are_open_objects(api_schema):
    """Fields the document does not name yet (logprobs' contents, new statistics) pass."""
    case = stream_case(api_schema, "/api/llm/stream", {"prompt": "Hi"})
    body = (b': keep-alive\n\ndata: {"text":"Hi","logprobs":[{"token":"Hi","logprob":-0.1,"top_logprobs":[]}]}\n\n'
            b'data: {"done":true,"done_reason":"stop","eval_count":1,"peak_memory":123,"remote_model":"x"}\n\n')
    case.validate_response(crafted(case, body))
