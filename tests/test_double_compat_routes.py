"""The double's POST /v1/messages (Anthropic's Messages API) and POST /v1/audio/transcriptions, over real HTTP.

What is checked is what Ollama v0.33 sends on those routes (see tests/ollama_double/anthropic_layer.py and
audio_layer.py for the facts): status codes, content types, error shapes, the SSE records and their order.
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
import requests

from tests.ollama_double import gojson as go
from tests.ollama_double.anthropic_layer import MESSAGES_REQUEST, estimate_input_tokens

HI = [{"role": "user", "content": "hello there"}]
WEATHER_TOOL = {"name": "get_weather", "description": "Weather of a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}
SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
RUNNER_ERROR = "an error was encountered while running the model"
REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")
MESSAGE_ID = re.compile(r"^msg_[0-9a-f]{24}$")
AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(28))  # 44 bytes


def messages(double, body, stream=None, **kw):
    if stream is not None:
        body = {**body, "stream": stream}
    return requests.post(double.url + "/v1/messages", json=body, timeout=kw.pop("timeout", 10), **kw)


def ask(model="llama3.2", **extra):
    return {"model": model, "max_tokens": 64, "messages": HI, **extra}


def sse_records(body: bytes) -> list:
    """[(event, data)] of an Anthropic stream; every record must be exactly `event: X\\ndata: {json}\\n\\n`."""
    assert body.endswith(b"\n\n"), body[-80:]
    out = []
    for record in body[:-2].split(b"\n\n"):
        lines = record.split(b"\n")
        assert len(lines) == 2 and lines[0].startswith(b"event: ") and lines[1].startswith(b"data: "), record
        name, data = lines[0][7:].decode(), json.loads(lines[1][6:])
        assert data["type"] == name
        out.append((name, data))
    return out


def kinds(records) -> list:
    return [name for name, _ in records]


class Raw:
    def __init__(self, status, headers, chunks, body, head_time, times):
        self.status, self.headers, self.chunks, self.body = status, headers, chunks, body
        self.head_time, self.times = head_time, times


def exchange(double, path: str, body: bytes, headers: dict, timeout: float = 10) -> Raw:
    """One POST on a fresh connection, read as framed on the wire (chunk boundaries and arrival times kept)."""
    host = double.url.split("//")[1]
    head = {"Host": host, "Content-Length": str(len(body)), "Connection": "close", **headers}
    text = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    h, p = host.split(":")
    with socket.create_connection((h, int(p)), timeout=timeout) as sock:
        sock.sendall(text.encode() + body)
        with sock.makefile("rb") as reader:
            status = int(reader.readline().split()[1])
            fields = {}
            while True:
                line = reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                fields[name.strip().lower()] = value.strip()
            head_time = time.monotonic()
            chunks, times = [], []
            if fields.get("transfer-encoding") == "chunked":
                while True:
                    size_line = reader.readline()
                    if not size_line:
                        break  # the connection was cut
                    size = int(size_line.strip(), 16)
                    if size == 0:
                        reader.readline()
                        break
                    chunks.append(reader.read(size))
                    times.append(time.monotonic())
                    reader.read(2)
                data = b"".join(chunks)
            elif "content-length" in fields:
                data = reader.read(int(fields["content-length"]))
            else:
                data = reader.read()
    return Raw(status, fields, chunks, data, head_time, times)


def post_messages_raw(double, body: dict) -> Raw:
    return exchange(double, "/v1/messages", json.dumps(body).encode(), {"Content-Type": "application/json"})


def assert_anthropic_error(resp, status: int, kind: str, message: str, handler: bool):
    """handler: the error came from ChatHandler through AnthropicWriter (application/json and a newline), not
    from the middleware (gin's c.AbortWithStatusJSON: charset=utf-8, no newline)."""
    assert resp.status_code == status
    assert resp.headers["Content-Type"] == ("application/json" if handler else "application/json; charset=utf-8")
    assert resp.content.endswith(b"}\n") if handler else resp.content.endswith(b"}")
    body = resp.json()
    assert list(body) == ["type", "error", "request_id"] and body["type"] == "error"
    assert body["error"] == {"type": kind, "message": message}
    assert REQUEST_ID.match(body["request_id"])


# -- /v1/messages: whole answers ---------------------------------------------------------------------------------


def test_messages_whole_answer(double):
    resp = messages(double, ask(), headers={"anthropic-version": "2023-06-01",
                                            "anthropic-beta": "tools-2024-05-16"})
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    assert resp.content.endswith(b"}\n")  # json.Encoder
    body = resp.json()
    assert list(body) == ["id", "type", "role", "model", "content", "stop_reason", "usage"]  # no stop_sequence
    assert MESSAGE_ID.match(body["id"]) and body["type"] == "message" and body["role"] == "assistant"
    assert body["model"] == "llama3.2" and body["stop_reason"] == "end_turn"
    assert body["content"] == [{"type": "text", "text": "You said: hello there"}]
    assert body["usage"] == {"input_tokens": 13, "output_tokens": 4}
    (record,) = double.requests
    assert record["path"] == "/v1/messages"
    assert record["headers"]["anthropic-version"] == "2023-06-01"
    assert record["headers"]["anthropic-beta"] == "tools-2024-05-16"
    assert "Cache-Control" not in resp.headers


def test_messages_whole_thinking_system_and_max_tokens(double):
    body = messages(double, ask("qwen3", system=[{"type": "text", "text": "Be brief."}, {"type": "image"}])).json()
    assert [b["type"] for b in body["content"]] == ["thinking", "text"]
    assert body["content"][0] == {"type": "thinking", "thinking": "Okay, the user wants an echo."}
    cut = messages(double, ask("qwen3", max_tokens=3)).json()
    assert cut["stop_reason"] == "max_tokens" and cut["content"] == [{"type": "thinking",
                                                                     "thinking": "Okay, the user"}]
    assert cut["usage"]["output_tokens"] == 3


def test_messages_tool_use_and_tool_result(double):
    weather = [{"role": "user", "content": [{"type": "text", "text": "What is the weather in Tokyo?"}]}]
    body = messages(double, ask(messages=weather, tools=[WEATHER_TOOL])).json()
    assert body["stop_reason"] == "tool_use"
    (call,) = body["content"]
    assert call["type"] == "tool_use" and call["name"] == "get_weather" and call["input"] == {"city": "Tokyo"}
    assert call["id"].startswith("call_")
    # The result goes back as a user message of tool_result blocks: Ollama makes it a tool message.
    history = weather + [{"role": "assistant", "content": [call]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                                       "content": [{"type": "text", "text": "sunny, 21 C"}]}]}]
    after = messages(double, ask(messages=history, tools=[WEATHER_TOOL])).json()
    assert after["stop_reason"] == "end_turn"
    assert after["content"] == [{"type": "text", "text": "The tool said: sunny, 21 C"}]


def test_messages_thinking_is_relaxed_for_models_that_cannot_think(double):
    # /api/chat refuses think on llama3.2; the Anthropic middleware sets relax_thinking, so it is dropped.
    chat = requests.post(double.url + "/api/chat", json={"model": "llama3.2", "messages": HI, "think": True,
                                                         "stream": False}, timeout=5)
    assert chat.status_code == 400
    body = messages(double, ask(thinking={"type": "enabled", "budget_tokens": 1024})).json()
    assert [b["type"] for b in body["content"]] == ["text"]
    # and thinking disabled turns a thinking model's thoughts off
    quiet = messages(double, ask("qwen3", thinking={"type": "disabled"})).json()
    assert [b["type"] for b in quiet["content"]] == ["text"]


def test_messages_empty_conversation_is_a_load(double):
    # A message whose content is an empty array converts to no Ollama message: ChatHandler's load answer.
    body = messages(double, ask(messages=[{"role": "user", "content": []}])).json()
    assert body["content"] is None and body["stop_reason"] == "stop_sequence"
    assert body["usage"] == {"input_tokens": 0, "output_tokens": 0}


# -- /v1/messages: streams ---------------------------------------------------------------------------------------


def test_messages_stream_event_order_and_usage(double):
    resp = messages(double, ask("qwen3", system="be nice"), stream=True)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["Connection"] == "keep-alive"
    assert resp.headers["Transfer-Encoding"] == "chunked"
    records = sse_records(resp.content)
    assert "ping" not in kinds(records) and "error" not in kinds(records)  # Ollama sends neither
    expected = (["message_start", "content_block_start"] + ["content_block_delta"] * 7 + ["content_block_stop",
                "content_block_start"] + ["content_block_delta"] * 4 + ["content_block_stop", "message_delta",
                                                                       "message_stop"])
    assert kinds(records) == expected
    start = records[0][1]["message"]
    assert MESSAGE_ID.match(start["id"]) and start["content"] == [] and start["model"] == "qwen3"
    assert list(start) == ["id", "type", "role", "model", "content", "usage"]
    # message_start carries EstimateInputTokens' guess: len("be nice" + "user" + "hello there") // 4
    assert start["usage"] == {"input_tokens": 22 // 4, "output_tokens": 0}
    blocks = [d for n, d in records if n == "content_block_start"]
    assert blocks == [{"type": "content_block_start", "index": 0, "content_block": {"type": "thinking",
                                                                                    "thinking": ""}},
                      {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}]
    thinking = "".join(d["delta"]["thinking"] for n, d in records if n == "content_block_delta" and d["index"] == 0)
    text = "".join(d["delta"]["text"] for n, d in records if n == "content_block_delta" and d["index"] == 1)
    whole = messages(double, ask("qwen3", system="be nice")).json()
    assert [thinking, text] == [b.get("thinking", b.get("text")) for b in whole["content"]]
    delta = records[-2][1]
    assert delta == {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": whole["usage"]}
    assert records[-1][1] == {"type": "message_stop"}


def test_messages_stream_tool_use(double):
    ask_weather = ask(messages=[{"role": "user", "content": "weather in Tokyo?"}], tools=[WEATHER_TOOL])
    records = sse_records(messages(double, ask_weather, stream=True).content)
    assert kinds(records) == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                              "message_delta", "message_stop"]
    block = records[1][1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather" and block["input"] == {}
    assert records[2][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Tokyo"}'}
    assert records[4][1]["delta"] == {"stop_reason": "tool_use"}


def test_messages_stream_estimate_counts_raw_schemas(double):
    raw = (b'{"model": "llama3.2", "max_tokens": 8, "stream": true, "messages": [{"role": "user", '
           b'"content": "hi"}], "tools": [{"name": "t", "input_schema": {"type":   "object"}}]}')
    req = go.bind_with(raw, MESSAGES_REQUEST)
    assert estimate_input_tokens(req, raw) == (4 + 2 + 1 + len(b'{"type":   "object"}')) // 4
    resp = exchange(double, "/v1/messages", raw, {"Content-Type": "application/json"})
    start = sse_records(resp.body)[0][1]
    assert start["message"]["usage"]["input_tokens"] == estimate_input_tokens(req, raw)


def test_messages_go_framing_flushes_each_event(double):
    double.script(framing="go", delay=0.02)
    resp = post_messages_raw(double, ask(stream=True))
    assert resp.status == 200
    records = sse_records(resp.body)
    assert len(resp.chunks) == len(records)  # writeSSE flushes after every event
    assert all(chunk.startswith(b"event: ") and chunk.endswith(b"\n\n") for chunk in resp.chunks)


def test_messages_odd_framing_still_parses(double):
    double.script(tokens=[f" w{i}" for i in range(20)])
    resp = post_messages_raw(double, ask(stream=True))
    text = "".join(d["delta"]["text"] for n, d in sse_records(resp.body) if n == "content_block_delta")
    assert text == "".join(f" w{i}" for i in range(20))


# -- /v1/messages: errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    (b"", "EOF"),
    (b'{"model": ', "unexpected EOF"),
    (b'[1]', "json: cannot unmarshal array into Go value of type anthropic.MessagesRequest"),
    (b'{"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}', "model is required"),
    (b'{"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}',
     "max_tokens is required and must be positive"),
    (b'{"model": "llama3.2", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]}',
     "max_tokens is required and must be positive"),
    (b'{"model": "llama3.2", "max_tokens": 5, "messages": []}', "messages is required"),
    (b'{"model": "llama3.2", "max_tokens": "5", "messages": []}',
     "json: cannot unmarshal string into Go struct field MessagesRequest.max_tokens of type int"),
    (b'{"model": "llama3.2", "max_tokens": 5, "messages": "hi"}',
     ("json: cannot unmarshal string into Go struct field MessagesRequest.messages of type "
     "[]anthropic.MessageParam")),
    (b'{"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user"}]}', "unexpected end of JSON input"),
    (b'{"model": "llama3.2", "max_tokens": 5, "messages": [{"role": 1, "content": "x"}]}',
     "json: cannot unmarshal number into Go struct field MessagesRequest.messages.role of type string"),
    (b'{"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user", "content": 7}]}',
     ("json: cannot unmarshal number into Go struct field MessagesRequest.messages of type "
     "[]anthropic.ContentBlock")),
    (b'{"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]}',
     "invalid image source"),
    ((b'{"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", '
     b'"source": {"type": "url", "url": "https://example.com/cat.png"}}]}]}'),
     "invalid image source type: url. Only base64 images are supported."),
    ((b'{"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", '
     b'"source": {"type": "base64", "media_type": "image/png", "data": "ab!d"}}]}]}'),
     "invalid base64 image data: illegal base64 data at input byte 2"),
    ((b'{"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": "tool_use", '
     b'"name": "f"}]}]}'), "tool_use block missing required 'id' field"),
    ((b'{"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], '
     b'"tools": [{"name": "f", "input_schema": "nope"}]}'),
     ('invalid input_schema for tool "f": json: cannot unmarshal string into Go value of type '
     'api.ToolFunctionParameters')),
])
def test_messages_middleware_errors(double, body, message):
    resp = requests.post(double.url + "/v1/messages", data=body, headers={"Content-Type": "application/json"},
                         timeout=5)
    assert_anthropic_error(resp, 400, "invalid_request_error", message, handler=False)


@pytest.mark.parametrize("stream", [False, True])
def test_messages_unknown_model_and_capabilities(double, stream):
    resp = messages(double, ask("nope"), stream=stream)
    assert_anthropic_error(resp, 404, "not_found_error", "model 'nope' not found", handler=True)
    if stream:  # the middleware set the stream's headers before ChatHandler refused
        assert resp.headers["Cache-Control"] == "no-cache"
    tools = messages(double, ask("qwen3", tools=[WEATHER_TOOL]), stream=stream)
    assert_anthropic_error(tools, 400, "invalid_request_error",
                           "registry.ollama.ai/library/qwen3:latest does not support tools", handler=True)
    embed = messages(double, ask("all-minilm"), stream=stream)
    assert_anthropic_error(embed, 400, "invalid_request_error", '"all-minilm" does not support chat', handler=True)


def test_messages_cloud_models(double):
    # cloudPassthroughMiddleware proxies a cloud model before the Anthropic middleware: Ollama's native 401.
    resp = messages(double, ask("gpt-oss:120b-cloud"))
    assert resp.status_code == 401 and resp.json()["error"] == "unauthorized" and "signin_url" in resp.json()
    # With the web_search tool it goes on to the middleware and ChatHandler, whose proxy answers in
    # Anthropic's shape, streamed or not.
    for stream in (False, True):
        refused = messages(double, ask("gpt-oss:120b-cloud", tools=[SEARCH_TOOL]), stream=stream)
        assert_anthropic_error(refused, 401, "authentication_error", "unauthorized", handler=True)
    assert [r["path"] for r in double.requests] == ["/v1/messages"] * 3


def test_messages_local_web_search_fails_signed_out(double):
    searching = ask(messages=[{"role": "user", "content": "search for cats"}], tools=[SEARCH_TOOL])
    whole = messages(double, searching).json()
    assert whole["stop_reason"] == "end_turn"
    use, result = whole["content"]
    assert use == {"type": "server_tool_use", "id": "srvtoolu_" + whole["id"][4:], "name": "web_search",
                   "input": {"query": "search for cats"}}
    assert result == {"type": "web_search_tool_result", "tool_use_id": use["id"],
                      "content": {"type": "web_search_tool_result_error", "error_code": "unavailable"}}
    records = sse_records(messages(double, searching, stream=True).content)
    assert kinds(records) == ["message_start", "content_block_start", "content_block_stop", "content_block_start",
                              "content_block_stop", "message_delta", "message_stop"]
    assert records[1][1]["content_block"]["type"] == "server_tool_use"
    assert records[3][1]["content_block"]["content"]["error_code"] == "unavailable"
    assert records[5][1]["delta"] == {"stop_reason": "end_turn"}
    # Without a call to it, the tool changes nothing.
    plain = messages(double, ask(tools=[SEARCH_TOOL])).json()
    assert plain["content"] == [{"type": "text", "text": "You said: hello there"}]


# -- /v1/messages: the script's faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("fault", "status", "kind"), [
    ("status_500", 500, "api_error"), ("busy", 503, "overloaded_error"), ("bad_request", 400,
                                                                          "invalid_request_error")])
def test_messages_status_faults(double, stream, fault, status, kind):
    double.script(fault=fault)
    resp = messages(double, ask(), stream=stream)
    assert resp.status_code == status and resp.headers["Content-Type"] == "application/json"
    assert resp.content.endswith(b"\n") and resp.json()["error"]["type"] == kind


def test_messages_error_line_mid_stream_just_ends_the_stream(double):
    double.script(fault="error_line", fault_after=3)
    resp = messages(double, ask(), stream=True)
    assert resp.status_code == 200
    records = sse_records(resp.content)
    assert len(records) == 3 and "message_stop" not in kinds(records) and "error" not in kinds(records)
    double.script(fault="error_line", fault_after=0)  # before anything was written: a real 500
    early = messages(double, ask(), stream=True)
    assert early.status_code == 500 and early.json()["error"] == {"type": "api_error", "message": RUNNER_ERROR}
    double.script(fault="error_line")
    whole = messages(double, ask())
    assert whole.status_code == 500 and whole.json()["error"]["message"] == RUNNER_ERROR


def test_messages_drop_and_malformed(double):
    double.script(fault="drop", fault_after=2)
    resp = post_messages_raw(double, ask(stream=True))
    assert resp.status == 200 and resp.body.count(b"event: ") == 2 and b"message_stop" not in resp.body
    assert double.wait_stream_closed()["completed"] is False
    double.script(fault="drop")
    with pytest.raises(requests.ConnectionError):
        messages(double, ask())
    double.script(fault="malformed", fault_after=2)
    bad = messages(double, ask(), stream=True).content
    with pytest.raises(ValueError):
        sse_records(bad)


def test_messages_pacing_and_hang(double):
    double.script(delay=0.05, first_delay=0.1)
    started = time.monotonic()
    resp = post_messages_raw(double, ask(stream=True))
    assert resp.head_time - started >= 0.09
    assert resp.times[-1] - resp.times[0] >= 0.05 * 3  # four tokens, one delay between native chunks
    double.script(fault="hang")
    with pytest.raises(requests.ReadTimeout):
        messages(double, ask(), timeout=0.3)


def test_messages_big_line(double):
    double.script(big_line_bytes=4096, framing="go")
    resp = post_messages_raw(double, ask(stream=True))
    deltas = [c for c in resp.chunks if b'"text_delta"' in c]
    assert len(deltas[0]) == 4096


# -- /v1/audio/transcriptions ------------------------------------------------------------------------------------


def transcribe(double, data=None, files=None, **kw):
    files = {"file": ("tiny.wav", AUDIO, "audio/wav")} if files is None else files
    data = {"model": "llama3.2"} if data is None else data
    return requests.post(double.url + "/v1/audio/transcriptions" + kw.pop("query", ""), data=data, files=files,
                         timeout=kw.pop("timeout", 10), **kw)


def test_transcription_json(double):
    resp = transcribe(double)
    assert resp.status_code == 200
    # c.Stream flushed the headers after the first chat chunk, with streamResponse's Content-Type.
    assert resp.headers["Content-Type"] == "application/x-ndjson" and resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.content == b'{"text":"Transcript of %d bytes of audio."}\n' % len(AUDIO)
    (record,) = double.requests
    assert record["path"] == "/v1/audio/transcriptions" and record["body"] is None
    assert record["headers"]["Content-Type"].startswith("multipart/form-data; boundary=")


@pytest.mark.parametrize(("fmt", "body"), [
    ("text", b"Transcript of 44 bytes of audio."), ("json", b'{"text":"Transcript of 44 bytes of audio."}\n'),
    ("verbose_json", b'{"text":"Transcript of 44 bytes of audio."}\n'),
    ("srt", b'{"text":"Transcript of 44 bytes of audio."}\n')])
def test_transcription_formats(double, fmt, body):
    assert len(AUDIO) == 44
    resp = transcribe(double, {"model": "qwen3", "response_format": fmt, "language": "en", "prompt": "cats",
                               "temperature": "0.4"})
    assert resp.status_code == 200 and resp.content == body  # a thinking model: its thoughts are not transcribed


def test_transcription_content_type_when_the_chat_is_one_chunk(double):
    # Only when the whole chat is a single chunk does the writer's own Content-Type reach the client.
    double.script(tokens=[])
    assert transcribe(double).headers["Content-Type"] == "application/json"
    text = transcribe(double, {"model": "llama3.2", "response_format": "text"})
    assert text.headers["Content-Type"] == "text/plain" and text.content == b""


def test_transcription_query_model_wins(double):
    resp = transcribe(double, {"model": "nope"}, query="?model=llama3.2")
    assert resp.status_code == 200


def openai_error(resp, status, message, handler):
    assert resp.status_code == status
    assert resp.headers["Content-Type"] == ("application/json" if handler else "application/json; charset=utf-8")
    assert resp.content.endswith(b"}\n") if handler else resp.content.endswith(b"}")
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    assert resp.json() == {"error": {"message": message, "type": kind, "param": None, "code": None}}


@pytest.mark.parametrize(("kw", "message"), [
    ({"data": b'{"model": "llama3.2"}', "files": {}, "headers": {"Content-Type": "application/json"}},
     "failed to parse multipart form: request Content-Type isn't multipart/form-data"),
    ({"data": b"x", "files": {}, "headers": {"Content-Type": "multipart/form-data"}},
     "failed to parse multipart form: no multipart boundary param in Content-Type"),
    ({"data": b"junk", "files": {}, "headers": {"Content-Type": "multipart/form-data; boundary=b"}},
     "failed to parse multipart form: multipart: NextPart: EOF"),
    ({"data": b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nllama3.2', "files": {},
      "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, "failed to parse multipart form: unexpected EOF"),
    ({"data": {}}, "model is required"),
    ({"files": {"audio": ("a.wav", AUDIO)}}, "file is required: http: no such file"),
    ({"data": {"model": "llama3.2", "file": "not a file"}, "files": {"x": ("x", b"1")}},
     "file is required: http: no such file"),
    ({"files": {"file": ("a.wav", b"")}}, "audio file is empty"),
])
def test_transcription_middleware_errors(double, kw, message):
    openai_error(transcribe(double, **kw), 400, message, handler=False)


def test_transcription_bad_query_string(double):
    # ParseForm reads the URL's query first: its error ends the request before the body is looked at.
    for query, message in (("x=%zz", 'invalid URL escape "%zz"'), ("a=1;b=2", "invalid semicolon separator in query")):
        resp = exchange(double, "/v1/audio/transcriptions?" + query, b"x",
                        {"Content-Type": "multipart/form-data; boundary=b"})
        assert resp.status == 400 and resp.headers["content-type"] == "application/json; charset=utf-8"
        assert json.loads(resp.body)["error"]["message"] == "failed to parse multipart form: " + message


def test_transcription_handler_errors(double):
    openai_error(transcribe(double, {"model": "nope"}), 404, "model 'nope' not found", handler=True)
    openai_error(transcribe(double, {"model": "all-minilm"}), 400, '"all-minilm" does not support chat', True)
    # No cloudPassthroughMiddleware here: ChatHandler's proxy refuses, through the writer.
    openai_error(transcribe(double, {"model": "gpt-oss:120b-cloud"}), 401, "unauthorized", handler=True)


def test_transcription_faults(double):
    double.script(fault="busy")
    openai_error(transcribe(double), 503, "server busy, please try again.  maximum pending requests exceeded", True)
    double.script(fault="status_500")
    openai_error(transcribe(double), 500, "llama runner process has terminated", True)
    double.script(fault="error_line", fault_after=0)
    openai_error(transcribe(double), 500, RUNNER_ERROR, True)
    double.script(fault="error_line", fault_after=2)  # the headers went out: the body stays empty
    late = transcribe(double)
    assert late.status_code == 200 and late.headers["Content-Type"] == "application/x-ndjson" and late.content == b""
    double.script(fault="drop", fault_after=2)  # after the headers: the chunked body never ends
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        transcribe(double)
    double.script(fault="drop", fault_after=0)
    with pytest.raises(requests.ConnectionError):
        transcribe(double)
    double.script(fault="malformed")
    with pytest.raises(ValueError):
        transcribe(double).json()


def test_transcription_is_silent_until_done(double):
    double.script(delay=0.1, framing="go")
    boundary = "XyZ"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nllama3.2\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            f'Content-Type: audio/wav\r\n\r\n').encode() + AUDIO + f"\r\n--{boundary}--\r\n".encode()
    started = time.monotonic()
    resp = exchange(double, "/v1/audio/transcriptions", body,
                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status == 200 and resp.headers["content-type"] == "application/x-ndjson"
    assert resp.chunks == [b'{"text":"Transcript of 44 bytes of audio."}\n']  # one write, at the end
    assert resp.head_time - started < 0.09  # the headers left with the first chat chunk
    assert resp.times[0] - started >= 0.1 * 6 * 0.9  # seven chat chunks: six delays before the answer


def test_responses_input_messages_with_content_arrays(double):
    """Ollama's ResponsesInputMessage takes content as a string or an array of typed parts (the openai SDK
    replays assistant turns as output_text parts); the parts' text is what the model sees."""
    body = {"model": "llama3.2", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "second question"}]}]}
    response = requests.post(double.url + "/v1/responses", json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["output"][0]["content"][0]["text"] == "You said: second question"
    bad = requests.post(double.url + "/v1/responses", timeout=10, json={
        "model": "llama3.2", "input": [{"role": "user", "content": [{"type": "nope", "text": "x"}]}]})
    assert bad.status_code == 400 and "unknown content type: nope" in bad.json()["error"]["message"]
