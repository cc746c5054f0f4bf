"""POST /v1/responses (OpenAI's Responses API, stateless) as Ollama serves it.

Facts from ollama/ollama (re-implemented, not copied): server/routes.go (the route: cloudPassthroughMiddleware,
ResponsesMiddleware, ChatHandler), middleware/openai.go (ResponsesMiddleware, ResponsesWriter,
WebSearchResponsesWriter), openai/responses.go (ResponsesRequest and its custom decoders, FromResponsesRequest,
ToResponse, ResponsesStreamConverter), server/cloud_proxy.go (zstd bodies, cloud models, hasWebSearchTool).

* The request binds to openai.ResponsesRequest; `input` is a string or an array of typed items, decoded by its own
  UnmarshalJSON (errors stop decoding: "input[0]: unknown input item type: \"x\""). `previous_response_id` is not
  a field (ignored), `conversation` is kept raw and ignored, `truncation` is echoed back: current Ollama answers
  none of them with a 400, whatever its documentation says.
* It becomes a /api/chat request (instructions -> system message, input -> messages, temperature default 1.0,
  top_p only when given, max_output_tokens -> num_predict, reasoning.effort -> think, tools converted) and goes
  through ChatHandler, so the model checks and the script's faults are those of /api/chat.
* Whole answers are json.Encoder output (`application/json`, trailing newline) of the response struct, in its
  field order; streams are `event: <type>\\ndata: <json>\\n\\n` events flushed one by one, each built from a Go
  map: keys sorted, every event numbered by `sequence_number` from 0.
* Errors are OpenAI's shape: the middleware's own (bad JSON, bad input items, bad reasoning effort) through
  c.AbortWithStatusJSON (`application/json; charset=utf-8`, no newline), ChatHandler's through the writer
  (`application/json`, newline). zstd failures and cloud models of a signed-out server are Ollama's native
  `{"error": ...}` from cloudPassthroughMiddleware.
* A `{"type": "web_search"}` tool becomes the private function "web_search" for the model. When the model calls
  it, Ollama runs the search through its own /api/experimental/web_search; a server that is not signed in to
  ollama.com gets a 401 there, which ends the response: a 401 OpenAI error (whole), or response.failed with
  error.code "authentication_error" (streamed, status 200). The double's model calls web_search when the prompt
  mentions "search" (as it calls get_weather for "weather").
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import time

from . import gojson as go
from .gojson import Custom, GoError, Ptr, Slice, Struct, go_quote
from .native import PLAIN_JSON, filler, plan
from .openai_layer import SSE_TYPE, _decode_image, _error_body, _think_from_effort
from .transport import ApiError
from .wire import RUNNER_ERROR, VERSION, dumps, last_user_text, prompt_count, signin_url

_requests = itertools.count(1)
_NOW = object()  # a time.Now().Unix() taken when the event is sent
AUTH_ERROR = "something went wrong, please see the ollama server logs for details"  # AuthorizationError, no Status


class Keep:
    """A value Go marshals as it came (a json.RawMessage): key order is left alone."""

    def __init__(self, value):
        self.value = value


def go_map(obj):
    """What json.Marshal writes for a map[string]any: keys sorted (nested maps too); Keep is raw; _NOW is now."""
    if obj is _NOW:
        return int(time.time())
    if isinstance(obj, Keep):
        return obj.value
    if isinstance(obj, dict):
        return {key: go_map(obj[key]) for key in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [go_map(item) for item in obj]
    return obj


def event_bytes(name: str, data) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(go_map(data)) + b"\n\n"


# -- the request (openai.ResponsesRequest) -------------------------------------------------------------------------


def _anonymous(fields: dict, spelled: str) -> Struct:
    struct = Struct(spelled, fields)
    struct.name = ""  # an anonymous struct: "Go struct field .type of type string"
    return struct


_TYPE_ROLE = _anonymous({"type": "string", "role": "string"},
                        'struct { Type string "json:\\"type\\""; Role string "json:\\"role\\"" }')
_TYPE_ONLY = _anonymous({"type": "string"}, 'struct { Type string "json:\\"type\\"" }')
_MESSAGE_AUX = _anonymous({"type": "string", "role": "string", "content": "raw"},
                          'struct { Type string "json:\\"type\\""; Role string "json:\\"role\\""; '
                          'Content json.RawMessage "json:\\"content\\"" }')
_OUTPUT_AUX = _anonymous({"type": "string", "call_id": "string", "output": "raw"},
                         'struct { Type string "json:\\"type\\""; CallID string "json:\\"call_id\\""; '
                         'Output json.RawMessage "json:\\"output\\"" }')
_CONTENT_TYPES = {
    "input_text": Struct("openai.ResponsesTextContent", {"type": "string", "text": "string"}),
    "input_image": Struct("openai.ResponsesImageContent", {"type": "string", "detail": "string", "file_id": "string",
                                                           "image_url": "string"}),
    "output_text": Struct("openai.ResponsesOutputTextContent", {"type": "string", "text": "string"}),
    "input_file": Struct("openai.ResponsesFileContent", {"type": "string", "file_data": "string", "file_id": "string",
                                                         "file_url": "string", "filename": "string"}),
}
_FUNCTION_CALL = Struct("openai.ResponsesFunctionCall", {"id": "string", "type": "string", "call_id": "string",
                                                         "name": "string", "arguments": "string"})
_SUMMARY = Struct("openai.ResponsesReasoningSummary", {"type": "string", "text": "string"})
_REASONING_INPUT = Struct("openai.ResponsesReasoningInput", {
    "id": "string", "type": "string", "summary": Slice(_SUMMARY, "[]openai.ResponsesReasoningSummary"),
    "encrypted_content": "string"})
_WEB_SEARCH_CALL = Struct("openai.ResponsesWebSearchCall", {
    "id": "string", "type": "string", "status": "string",
    "action": Ptr(Struct("openai.ResponsesWebSearchAction", {"type": "string", "query": "string"}))})


def _raw_items(value, what: str) -> list:
    """json.Unmarshal into []json.RawMessage, or "<what> must be a string or array: <error>"."""
    if isinstance(value, list):
        return value
    raise GoError(f"{what} must be a string or array: json: cannot unmarshal {go.kind_of(value)} into Go value of "
                  f"type []json.RawMessage")


def _decoded(value):
    """A json.RawMessage field's value (kept by the binder as plain dicts) as the decoder walks it again."""
    if isinstance(value, dict):
        return go.Pairs((key, _decoded(item)) for key, item in value.items())
    if isinstance(value, list):
        return [_decoded(item) for item in value]
    return value


def _content_item(value) -> dict:
    value = _decoded(value)
    kind = go.unmarshal(_TYPE_ONLY, value).get("type", "")
    struct = _CONTENT_TYPES.get(kind)
    if struct is None:
        raise GoError(f"unknown content type: {kind}")
    return {"type": kind, **go.unmarshal(struct, value)}


def _content_list(value, what: str) -> list:
    out = []
    for i, raw in enumerate(_raw_items(value, what)):
        try:
            out.append(_content_item(raw))
        except GoError as err:
            raise GoError(f"{what}[{i}]: {err.message}") from None
    return out


def _input_item(value) -> dict:
    head = go.unmarshal(_TYPE_ROLE, value)
    kind = head.get("type", "")
    if kind == "" and head.get("role", ""):
        kind = "message"
    if kind == "message":
        aux = go.unmarshal(_MESSAGE_AUX, value)
        item = {"kind": "message", "type": aux.get("type", ""), "role": aux.get("role", ""), "content": []}
        if "content" in aux:
            content = aux["content"]
            if content is None or isinstance(content, str):
                item["content"] = [{"type": "input_text", "text": content or ""}]
            else:
                item["content"] = _content_list(content, "content")
        return item
    if kind == "function_call":
        return {"kind": kind, **go.unmarshal(_FUNCTION_CALL, value)}
    if kind == "function_call_output":
        aux = go.unmarshal(_OUTPUT_AUX, value)
        item = {"kind": kind, "call_id": aux.get("call_id", ""), "output": "", "output_items": []}
        if "output" in aux:
            output = aux["output"]
            if output is None or isinstance(output, str):
                item["output"] = output or ""
            else:
                item["output_items"] = _content_list(output, "output")
                item["output"] = "".join(c.get("text", "") for c in item["output_items"]
                                         if c["type"] in ("input_text", "output_text"))
        return item
    if kind == "reasoning":
        return {"kind": kind, **go.unmarshal(_REASONING_INPUT, value)}
    if kind == "web_search_call":
        return {"kind": kind, **go.unmarshal(_WEB_SEARCH_CALL, value)}
    if kind == "":
        raise GoError("input item missing required 'type' field")
    raise GoError(f"unknown input item type: {go_quote(kind)}")


def _decode_input(binder, value):
    """openai.ResponsesInput.UnmarshalJSON: a string, or an array of input items; its errors stop decoding."""
    if value is None or isinstance(value, str):
        return {"text": value or "", "items": []}
    try:
        raws = _raw_items(value, "input")
    except GoError as err:
        raise go.Abort(err.message) from None
    items = []
    for i, raw in enumerate(raws):
        try:
            items.append(_input_item(raw))
        except GoError as err:
            raise go.Abort(f"input[{i}]: {err.message}") from None
    return {"text": "", "items": items}


RESPONSES_TOOL = Struct("openai.ResponsesTool", {"type": "string", "name": "string", "description": "*string",
                                                 "strict": "*bool", "parameters": "map"})
RESPONSES_TOOL.fields["tools"] = Slice(RESPONSES_TOOL, "[]openai.ResponsesTool")
RESPONSES_TOOL.folded["tools"] = "tools"
TEXT_FORMAT = Struct("openai.ResponsesTextFormat", {"type": "string", "name": "string", "schema": "raw",
                                                     "strict": "*bool"})
RESPONSES_REQUEST = Struct("openai.ResponsesRequest", {
    "model": "string", "background": "bool", "conversation": "raw", "include": "[]string",
    "input": Custom(_decode_input), "instructions": "string", "max_output_tokens": "*int",
    "reasoning": Struct("openai.ResponsesReasoning", {"effort": "string", "generate_summary": "string",
                                                      "summary": "string"}),
    "temperature": "*float64", "text": Ptr(Struct("openai.ResponsesText", {"format": Ptr(TEXT_FORMAT)})),
    "top_p": "*float64", "truncation": "*string", "tools": Slice(RESPONSES_TOOL, "[]openai.ResponsesTool"),
    "stream": "*bool"})


def has_web_search(tools) -> bool:
    """openai.HasWebSearchTool: a tool of type exactly "web_search"."""
    return any(isinstance(t, dict) and t.get("type") == "web_search" for t in tools or [])


def _body_has_web_search(body: dict) -> bool:
    """server/cloud_proxy.go's hasWebSearchTool for /v1/responses (the tools decoded leniently)."""
    tools = body.get("tools") if isinstance(body, dict) else None
    return isinstance(tools, list) and has_web_search(tools)


# -- FromResponsesRequest ------------------------------------------------------------------------------------------


def _pairs(value):
    """A plain decoded value back as decode() gives it (objects as Pairs), for another json.Unmarshal."""
    if isinstance(value, dict):
        return go.Pairs((k, _pairs(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_pairs(v) for v in value]
    return value


def _unmarshal_arguments(text: str) -> dict:
    """json.Unmarshal of a function call's arguments string into api.ToolCallFunctionArguments."""
    try:
        value = json.loads(text, object_pairs_hook=dict)
    except ValueError:
        try:
            go.decode(text.encode())
        except go.BodyError as err:
            message = "unexpected end of JSON input" if err.message == "unexpected EOF" else err.message
        else:
            bad = json.JSONDecoder().raw_decode(text.lstrip(" \t\r\n"))[1]
            rest = text.lstrip(" \t\r\n")[bad:].lstrip(" \t\r\n")
            message = f"invalid character {go._quote_char(rest[0])} after top-level value"
        raise ApiError(400, f"failed to parse function call arguments: {message}") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"failed to parse function call arguments: json: cannot unmarshal "
                            f"{go.kind_of(value)} into Go value of type map[string]interface {{}}")
    return value


def _convert_content(contents: list) -> tuple:
    text, images = "", []
    for part in contents:
        if part["type"] in ("input_text", "output_text"):
            text += part.get("text", "")
        elif part["type"] == "input_image":
            if part.get("image_url"):
                images.append(_decode_image(part["image_url"]))
        elif part["type"] == "input_file":
            raise ApiError(400, "file inputs are not currently supported")
    return text, images


WEB_SEARCH_FUNCTION = {"type": "function", "function": {
    "name": "web_search", "description": "Search the web for current information.",
    "parameters": {"type": "object", "required": ["query"],
                   "properties": {"query": {"type": "string", "description": "The search query."}}}}}


def _convert_tools(tool: dict) -> list:
    if tool.get("type") != "namespace":
        params = {}
        if tool.get("parameters") is not None:
            try:
                params = go.unmarshal(go.TOOL_PARAMETERS, _pairs(tool["parameters"]))
            except GoError as err:
                raise ApiError(400, f"failed to unmarshal tool parameters: {err.message}") from None
        return [{"type": tool.get("type", ""), "function": {"name": tool.get("name", ""),
                                                             "description": tool.get("description") or "",
                                                             "parameters": params}}]
    out = []
    for member in tool.get("tools") or []:
        for expanded in _convert_tools(member):
            prefix = tool.get("name", "") + "."
            if tool.get("name") and not expanded["function"]["name"].startswith(prefix):
                expanded["function"]["name"] = prefix + expanded["function"]["name"]
            out.append(expanded)
    return out


def from_responses_request(req: dict) -> dict:
    """openai.FromResponsesRequest: the api.ChatRequest the middleware hands to ChatHandler (roles not yet
    lower-cased: api.Message's decoder does that)."""
    messages = []
    if req.get("instructions"):
        messages.append({"role": "system", "content": req["instructions"]})
    given = req.get("input") or {"text": "", "items": []}
    if given["text"]:
        messages.append({"role": "user", "content": given["text"]})
    pending = ""
    items = given["items"]
    for i, item in enumerate(items):
        kind = item["kind"]
        if kind == "reasoning":
            pending = item.get("encrypted_content", "")
        elif kind == "message":
            content, images = _convert_content(item["content"])
            msg = {"role": item["role"], "content": content}
            if images:
                msg["images"] = images
            if msg["role"] == "assistant" and pending:
                msg["thinking"], pending = pending, ""
            follower = items[i + 1] if i + 1 < len(items) else None
            answered = follower["call_id"] if follower and follower["kind"] == "function_call_output" else ""
            if msg["role"] == "assistant" and answered and messages:
                last = messages[-1]
                if last["role"] == "assistant" and last.get("tool_calls") and \
                        any(call["id"] == answered for call in last["tool_calls"]):
                    if last.get("content") and msg["content"]:
                        last["content"] += "\n"
                    last["content"] = last.get("content", "") + msg["content"]
                    if images:
                        last.setdefault("images", []).extend(images)
                    if msg.get("thinking"):
                        last["thinking"] = msg["thinking"]
                    continue
            messages.append(msg)
        elif kind == "function_call":
            arguments = _unmarshal_arguments(item["arguments"]) if item.get("arguments") else {}
            call = {"id": item.get("call_id", ""), "function": {"name": item.get("name", ""), "arguments": arguments}}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
                if pending:
                    messages[-1]["thinking"], pending = pending, ""
            else:
                msg = {"role": "assistant", "content": "", "tool_calls": [call]}
                if pending:
                    msg["thinking"], pending = pending, ""
                messages.append(msg)
        elif kind == "function_call_output":
            content, images = item["output"], []
            if item["output_items"]:
                content, images = _convert_content(item["output_items"])
            msg = {"role": "tool", "content": content, "tool_call_id": item["call_id"]}
            if images:
                msg["images"] = images
            messages.append(msg)
        # web_search_call items are history only
    if pending:
        messages.append({"role": "assistant", "content": "", "thinking": pending})
    options = {"temperature": req["temperature"] if req.get("temperature") is not None else 1.0}
    if req.get("top_p") is not None:
        options["top_p"] = req["top_p"]
    if req.get("max_output_tokens") is not None:
        options["num_predict"] = req["max_output_tokens"]
    think = _think_from_effort((req.get("reasoning") or {}).get("effort", ""))
    tools, searching = [], has_web_search(req.get("tools"))
    for tool in req.get("tools") or []:
        if tool.get("type") == "web_search":
            tools.append(copy.deepcopy(WEB_SEARCH_FUNCTION))
            continue
        for converted in _convert_tools(tool):
            if searching and converted["function"]["name"] == "web_search":
                continue  # the built-in tool owns that name
            tools.append(converted)
    native = {"model": req.get("model", ""), "messages": [{**m, "role": m["role"].lower()} for m in messages],
              "options": options, "tools": tools or None, "think": think}
    fmt = ((req.get("text") or {}).get("format") or {})
    if fmt.get("type") == "json_schema" and fmt.get("schema") is not None:
        native["format"] = fmt["schema"]
    return {k: v for k, v in native.items() if v is not None}


# -- the response --------------------------------------------------------------------------------------------------


class Ids:
    """The random numbers Go draws (rand.Intn(999999)) for one request, reproducible for a second pass."""

    def __init__(self, seed: int):
        self.seed = seed
        self.rng = random.Random(seed)

    def again(self) -> "Ids":
        return Ids(self.seed)

    def draw(self) -> int:
        return self.rng.randrange(999999)


def _tool_echo(tool: dict) -> dict:
    """An openai.ResponsesTool as ToResponse marshals it (the struct's fields, parameters a sorted map)."""
    out = {"type": tool.get("type", ""), "name": tool.get("name", ""), "description": tool.get("description"),
           "strict": tool.get("strict"), "parameters": go_map(tool.get("parameters"))}
    if tool.get("tools"):
        out["tools"] = [_tool_echo(t) for t in tool["tools"]]
    return out


def _arguments(call: dict) -> str:
    return dumps(call["function"].get("arguments") or {}).decode()


def _text_format(req: dict, as_map: bool):
    fmt = (req.get("text") or {}).get("format")
    if fmt is None:
        return {"type": "text"}
    if as_map:  # the stream converter copies only what is set
        out = {"type": fmt.get("type", "")}
        if fmt.get("name"):
            out["name"] = fmt["name"]
        if fmt.get("schema") is not None:
            out["schema"] = Keep(fmt["schema"])
        if fmt.get("strict") is not None:
            out["strict"] = fmt["strict"]
        return out
    out = {"type": fmt.get("type", "")}  # ResponsesTextFormat, omitempty fields
    if fmt.get("name"):
        out["name"] = fmt["name"]
    if fmt.get("schema") is not None:
        out["schema"] = fmt["schema"]
    if fmt.get("strict") is not None:
        out["strict"] = fmt["strict"]
    return out


def whole_response(req: dict, response_id: str, item_id: str, final: dict, created: int) -> dict:
    """openai.ToResponse plus the middleware's completed_at, in the struct's field order."""
    output = []
    if final["thinking"]:
        output.append({"id": f"rs_{response_id}", "type": "reasoning",
                       "summary": [{"type": "summary_text", "text": final["thinking"]}],
                       "encrypted_content": final["thinking"]})
    if final["calls"]:
        for i, call in enumerate(final["calls"]):
            output.append({"id": f"fc_{response_id}_{i}", "type": "function_call", "status": "completed",
                           "call_id": call.get("id", ""), "name": call["function"]["name"],
                           "arguments": _arguments(call)})
    else:
        output.append({"id": item_id, "type": "message", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": final["content"], "annotations": [],
                                    "logprobs": []}]})
    reasoning = None
    effort, summary = (req.get("reasoning") or {}).get("effort", ""), (req.get("reasoning") or {}).get("summary", "")
    if effort or summary:
        reasoning = {}
        if effort:
            reasoning["effort"] = effort
        if summary:
            reasoning["summary"] = summary
    usage = {"input_tokens": final["prompt_eval_count"], "output_tokens": final["eval_count"],
             "total_tokens": final["prompt_eval_count"] + final["eval_count"],
             "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
    return response_object(req, response_id, "completed", created, int(time.time()), output,
                           [_tool_echo(t) for t in req.get("tools") or []], _text_format(req, False), reasoning, usage)


def response_object(req, response_id, status, created_at, completed_at, output, tools, text_format, reasoning,
                    usage) -> dict:
    """openai.Response in its struct's field order: what ToResponse and the stream converter both build."""
    return {"id": response_id, "object": "response", "created_at": created_at, "completed_at": completed_at,
            "status": status, "incomplete_details": None, "model": req.get("model", ""),
            "previous_response_id": None, "instructions": req.get("instructions") or None, "output": output,
            "error": None, "tools": tools, "tool_choice": "auto",
            "truncation": req["truncation"] if req.get("truncation") is not None else "disabled",
            "parallel_tool_calls": True, "text": {"format": text_format},
            "top_p": req["top_p"] if req.get("top_p") is not None else 1.0, "presence_penalty": 0,
            "frequency_penalty": 0, "top_logprobs": 0,
            "temperature": req["temperature"] if req.get("temperature") is not None else 1.0,
            "reasoning": reasoning, "usage": usage, "max_output_tokens": req.get("max_output_tokens"),
            "max_tool_calls": None, "store": False, "background": bool(req.get("background")),
            "service_tier": "default", "metadata": {}, "safety_identifier": None, "prompt_cache_key": None}


class Converter:
    """openai.ResponsesStreamConverter: native chat chunks in, (event type, data map) pairs out."""

    def __init__(self, response_id: str, item_id: str, req: dict, ids: Ids):
        self.response_id, self.item_id, self.req, self.ids = response_id, item_id, req, ids
        self.first, self.output_index, self.content_started, self.calls_sent = True, 0, False, False
        self.text, self.seq = "", 0
        self.thinking, self.reasoning_id, self.reasoning_started = "", "", False
        self.completed = []

    def event(self, kind: str, data: dict) -> tuple:
        data.update(type=kind, sequence_number=self.seq)
        self.seq += 1
        return kind, data

    def process(self, chunk: dict) -> list:
        events = []
        if self.first:
            self.first = False
            events += [self.event("response.created", {"response": self.response("in_progress", [], None)}),
                       self.event("response.in_progress", {"response": self.response("in_progress", [], None)})]
        if chunk.get("thinking"):
            events += self._thinking(chunk["thinking"])
        if chunk.get("calls"):
            events += self.finish_reasoning() + self.function_calls(chunk["calls"])
            self.calls_sent = True
        if not chunk.get("calls") and not self.calls_sent and chunk.get("content"):
            events += self._text(chunk["content"])
        if chunk.get("done"):
            events += self._completion(chunk)
        return events

    def response(self, status: str, output: list, usage) -> dict:
        req = self.req
        tools = [{"type": t.get("type", ""), "name": t.get("name", ""), "description": t.get("description"),
                  "strict": t.get("strict"), "parameters": t.get("parameters")} for t in req.get("tools") or []]
        reasoning = None
        effort, summary = (req.get("reasoning") or {}).get("effort", ""), \
            (req.get("reasoning") or {}).get("summary", "")
        if effort or summary:
            reasoning = {"effort": effort or None, "summary": summary or None}
        return response_object(req, self.response_id, status, _NOW, None, output, tools, _text_format(req, True),
                               reasoning, usage)

    def _thinking(self, text: str) -> list:
        events = []
        if not self.reasoning_started:
            self.reasoning_started = True
            self.reasoning_id = f"rs_{self.ids.draw()}"
            events.append(self.event("response.output_item.added", {
                "output_index": self.output_index, "item": {"id": self.reasoning_id, "type": "reasoning",
                                                            "summary": []}}))
        self.thinking += text
        events.append(self.event("response.reasoning_summary_text.delta", {
            "item_id": self.reasoning_id, "output_index": self.output_index, "summary_index": 0, "delta": text}))
        return events

    def finish_reasoning(self) -> list:
        if not self.reasoning_started:
            return []
        item = {"id": self.reasoning_id, "type": "reasoning",
                "summary": [{"type": "summary_text", "text": self.thinking}], "encrypted_content": self.thinking}
        self.completed.append(item)
        index, item_id, text = self.output_index, self.reasoning_id, self.thinking
        self.thinking, self.reasoning_id, self.reasoning_started = "", "", False
        self.output_index += 1
        return [self.event("response.reasoning_summary_text.done", {"item_id": item_id, "output_index": index,
                                                                    "summary_index": 0, "text": text}),
                self.event("response.output_item.done", {"output_index": index, "item": item})]

    def function_calls(self, calls: list) -> list:
        """emitFunctionCallEvents (also EmitFunctionCallItems: it leaves calls_sent alone)."""
        events = []
        for i, call in enumerate(calls):
            index = self.output_index + i
            fc_id = f"fc_{self.ids.draw()}_{i}"
            arguments = _arguments(call)
            item = {"id": fc_id, "type": "function_call", "status": "completed", "call_id": call.get("id", ""),
                    "name": call["function"]["name"], "arguments": arguments}
            self.completed.append(item)
            events += [
                self.event("response.output_item.added", {"output_index": index, "item": {
                    **item, "status": "in_progress", "arguments": ""}}),
                self.event("response.function_call_arguments.delta", {"item_id": fc_id, "output_index": index,
                                                                      "delta": arguments}),
                self.event("response.function_call_arguments.done", {"item_id": fc_id, "output_index": index,
                                                                     "arguments": arguments}),
                self.event("response.output_item.done", {"output_index": index, "item": item})]
        self.output_index += len(calls)
        return events

    @staticmethod
    def _part(text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _message(self, status: str, content: list) -> dict:
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def _text(self, text: str) -> list:
        events = self.finish_reasoning()
        if not self.content_started:
            self.content_started = True
            events += [self.event("response.output_item.added", {"output_index": self.output_index,
                                                                 "item": self._message("in_progress", [])}),
                       self.event("response.content_part.added", {"item_id": self.item_id,
                                                                  "output_index": self.output_index,
                                                                  "content_index": 0, "part": self._part("")})]
        self.text += text
        events.append(self.event("response.output_text.delta", {
            "item_id": self.item_id, "output_index": self.output_index, "content_index": 0, "delta": text,
            "logprobs": []}))
        return events

    def finish_message(self) -> list:
        """FinishMessageItem: close the open text item (before a web_search_call)."""
        if not self.content_started:
            return []
        self.content_started = False
        text, item_id, index = self.text, self.item_id, self.output_index
        self.text = ""
        item = self._message("completed", [self._part(text)])
        self.completed.append(item)
        self.output_index += 1
        self.item_id = f"msg_{self.response_id.removeprefix('resp_')}_{self.output_index}"
        return [self.event("response.output_text.done", {"item_id": item_id, "output_index": index,
                                                         "content_index": 0, "text": text, "logprobs": []}),
                self.event("response.content_part.done", {"item_id": item_id, "output_index": index,
                                                          "content_index": 0, "part": self._part(text)}),
                self.event("response.output_item.done", {"output_index": index, "item": item})]

    def start_web_search(self, call: dict) -> tuple:
        events = self.finish_reasoning()
        index = self.output_index
        self.output_index += 1
        events += [self.event("response.output_item.added", {"output_index": index, "item": {
                       "id": call["id"], "type": "web_search_call", "status": "in_progress",
                       "action": dict(call["action"])}}),
                   self.event("response.web_search_call.in_progress", {"item_id": call["id"], "output_index": index}),
                   self.event("response.web_search_call.searching", {"item_id": call["id"], "output_index": index})]
        return index, events

    def failed(self, response: dict) -> tuple:
        return self.event("response.failed", {"response": response})

    def _completion(self, chunk: dict) -> list:
        events = self.finish_reasoning()
        if not self.calls_sent and self.content_started:
            events += [self.event("response.output_text.done", {"item_id": self.item_id,
                                                                "output_index": self.output_index,
                                                                "content_index": 0, "text": self.text,
                                                                "logprobs": []}),
                       self.event("response.content_part.done", {"item_id": self.item_id,
                                                                 "output_index": self.output_index,
                                                                 "content_index": 0, "part": self._part(self.text)}),
                       self.event("response.output_item.done", {"output_index": self.output_index,
                                                                "item": self._message("completed",
                                                                                      [self._part(self.text)])})]
        n_in, n_out = chunk.get("prompt_eval_count", 0), chunk.get("eval_count", 0)
        usage = {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out,
                 "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
        output = list(self.completed)
        if self.content_started:
            output.append(self._message("completed", [self._part(self.text)]))
        response = self.response("completed", output, usage)
        response["completed_at"] = _NOW
        events.append(self.event("response.completed", {"response": response}))
        return events


def native_chunks(reply, n_prompt: int) -> list:
    """The api.ChatResponse objects ChatHandler streams for a planned reply (the last one carries the counts)."""
    chunks = [{"thinking": t, "content": ""} for t, _ in reply.thinking]
    chunks += [{"content": t} for t, _ in reply.tokens]
    if reply.calls:
        chunks.append({"content": "", "calls": reply.calls})
    chunks.append({"content": "", "done": True, "done_reason": reply.done_reason, "prompt_eval_count": n_prompt,
                   "eval_count": reply.eval_count})
    return chunks


def _web_search_call(calls) -> dict | None:
    return next((c for c in calls or [] if c["function"]["name"] == "web_search"), None)


class ResponsesRoutes:
    """The /v1/responses handler; mixed into server.Handler."""

    def v1_responses(self):
        cloud_search = self._cloud_passthrough(web_search=_body_has_web_search)
        req = self.bind_mw(RESPONSES_REQUEST)
        native = from_responses_request(req)
        stream = req.get("stream") is True
        if stream:
            self._extra_headers.append(("Cache-Control", "no-cache"))
            if not self.close_connection and self.request_version == "HTTP/1.1":
                self._extra_headers.append(("Connection", "keep-alive"))
        searching = has_web_search(req.get("tools"))
        self._v1_writer = True
        seed = next(_requests)
        ids = Ids(seed)
        response_id, item_id = f"resp_{ids.draw()}", f"msg_{ids.draw()}"
        ids = Ids(seed * 7919 + 1)  # the converter's own draws (reasoning and function call item ids)
        if cloud_search:
            return self._responses_cloud_search(req, response_id, item_id, ids, stream)
        try:
            return self._responses_chat(req, native, stream, searching, response_id, item_id, ids)
        except ApiError as err:
            if not (searching and stream):
                raise
            # WebSearchResponsesWriter keeps ChatHandler's status for itself when streaming: the refusal goes
            # out as a 200 event stream that ends in response.failed.
            code = "rate_limit_exceeded" if err.status == 429 else "api_error"
            conv = Converter(response_id, item_id, req, ids)
            failed = {"id": response_id, "object": "response", "status": "failed", "model": req.get("model", ""),
                      "output": [], "error": {"code": code, "message": err.message},
                      "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}
            events = conv.process({}) + [conv.failed(failed)]
            self.send_body(200, b"".join(event_bytes(*e) for e in events), SSE_TYPE)

    def _responses_chat(self, req, native, stream, searching, response_id, item_id, ids):
        """ChatHandler behind ResponsesWriter (or WebSearchResponsesWriter, `searching`)."""
        name = native["model"]
        model, _unload = self.check_generation(native, chat=True)
        script = self.script
        messages = native["messages"]
        if not messages:  # ChatHandler's load-only answer, through the Responses writer
            self.prelude(script)
            with self.serving(model):
                load = {"content": "", "done": True, "done_reason": "load"}
                if not stream:
                    final = {"thinking": "", "content": "", "calls": None, "prompt_eval_count": 0, "eval_count": 0}
                    body = whole_response(req, response_id, item_id, final, int(time.time()))
                    return self.send_json(body, ctype=PLAIN_JSON, newline=True)
                events = Converter(response_id, item_id, req, ids).process(load)
                return self.send_body(200, b"".join(event_bytes(*e) for e in events), SSE_TYPE)
        prompt = last_user_text(messages)
        n_prompt = sum(prompt_count(str(m.get("content", ""))) for m in messages)
        reply = plan(model, {**native, "stream": stream}, script, prompt, True, messages)
        chunks = native_chunks(reply, n_prompt)
        target = script["big_line_bytes"]
        if stream:
            groups = self._responses_groups(req, response_id, item_id, ids, chunks, searching)
            if target:
                groups = self._pad_responses(req, response_id, item_id, ids, chunks, searching, groups, target)
            rec = self.double._open_stream(self.route, name)
            self.prelude(script, rec)
            early = (500, dumps(_error_body(500, RUNNER_ERROR)) + b"\n", PLAIN_JSON)
            bad = b'event: response.output_text.delta\ndata: {"type": tru\n\n'
            with self.serving(model):
                return self.stream(rec, groups, SSE_TYPE, self._encode_event, bad, b"", early, flush_each=True)
        self.prelude(script)
        self.double._load(model, None)
        final = {"thinking": "".join(t for t, _ in reply.thinking), "content": "".join(t for t, _ in reply.tokens),
                 "calls": reply.calls, "prompt_eval_count": n_prompt, "eval_count": reply.eval_count}
        error = ApiError(500, RUNNER_ERROR)
        call = _web_search_call(reply.calls) if searching else None
        bad = b'{"id": "' + response_id.encode() + b'", "object": tru'
        if call is not None:
            # WebSearchResponsesWriter: the search itself fails on a server that is not signed in.
            self.wait(script["delay"] * max(len(chunks) - 1, 0))
            if script["fault"] == "drop":
                self.drop()
            if script["fault"] == "malformed":
                return self.send_body(200, bad, PLAIN_JSON)
            if script["fault"] == "error_line":
                raise error
            self._self_web_search(call)
            message = f"{AUTH_ERROR}; sign in at {signin_url()}"
            return self.send_json(_error_body(401, message), 401, PLAIN_JSON, newline=True)
        body = whole_response(req, response_id, item_id, final, int(time.time()))
        raw = dumps(body)
        if target and len(raw) + 1 < target and not final["calls"]:
            holder = body["output"][-1]["content"][0]
            holder["text"] += filler(target - len(raw) - 1)
            raw = dumps(body)
        self.finish_unstreamed(script, len(chunks), raw, bad, PLAIN_JSON, newline=True, error=error)

    @staticmethod
    def _encode_event(item) -> bytes:
        if callable(item):
            return item()
        return event_bytes(*item)

    def _responses_groups(self, req, response_id, item_id, ids, chunks, searching) -> list:
        """The events each native chunk produces, through ResponsesWriter or WebSearchResponsesWriter."""
        conv = Converter(response_id, item_id, req, ids.again())
        if not searching:
            return [conv.process(chunk) for chunk in chunks]
        groups, buffered, pending, streamed = [], [], False, False
        for chunk in chunks:
            events = []
            buffered.append(chunk)
            if _web_search_call(chunk.get("calls")) is not None:
                pending = True
            if not pending and not chunk.get("calls"):
                events += conv.process(chunk)
                streamed = streamed or bool(chunk.get("content") or chunk.get("thinking"))
                groups.append(events)
                continue
            if chunk.get("content") or chunk.get("thinking"):
                events += conv.process({**chunk, "calls": None, "done": False})
                streamed = True
            others = [c for c in chunk.get("calls") or [] if c["function"]["name"] != "web_search"]
            if others:
                events += conv.process({}) + conv.finish_message() + conv.function_calls(others)
                streamed = True
            if chunk.get("done"):
                if pending:
                    events += self._search_fails_streamed(conv, buffered, streamed, req)
                else:
                    events += conv.process({"done": True, **{k: chunk[k] for k in chunk if k.endswith("_count")}})
            groups.append(events)
        return groups

    def _search_fails_streamed(self, conv, buffered, streamed, req) -> list:
        """finishStream -> runLoop -> writeWebSearchError for a search that ollama.com refuses."""
        initial = next(c for c in buffered if _web_search_call(c.get("calls")) is not None)
        call = _web_search_call(initial["calls"])
        n_in = max((c.get("prompt_eval_count", 0) for c in buffered), default=0)
        n_out = max((c.get("eval_count", 0) for c in buffered), default=0)
        thinking = "".join(c.get("thinking", "") for c in buffered)
        content = "".join(c.get("content", "") for c in buffered)
        events = conv.process({})
        if streamed:
            events += conv.finish_message()
        if thinking and not streamed:
            events += conv.process({"thinking": thinking})
        if content and not streamed:
            events += conv.process({"content": content}) + conv.finish_message()
        query = (call["function"].get("arguments") or {}).get("query")
        usage = {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out}
        failed = {"id": conv.response_id, "object": "response", "status": "failed", "model": req.get("model", ""),
                  "output": [], "usage": usage}
        if not isinstance(query, str) or not query.strip():
            events += conv.process({})
            return events + [conv.failed({**failed, "error": {"code": "api_error", "message":
                                                              "web_search requires a non-empty string query"}})]
        ws = {"id": f"ws_{conv.response_id.removeprefix('resp_')}_1", "type": "web_search_call",
              "status": "completed", "action": {"type": "search", "query": query}}
        _index, started = conv.start_web_search(ws)
        events += started
        events.append(lambda: self._self_web_search(call) or b"")
        events += conv.process({})
        message = f"{AUTH_ERROR}; sign in at {signin_url()}"
        events.append(conv.failed({**failed, "error": {"code": "authentication_error", "message": message}}))
        return events

    def _self_web_search(self, call: dict):
        """WebSearchResponsesWriter.webSearch: Ollama asks its own /api/experimental/web_search (api.Client from
        OLLAMA_HOST), which a signed-out server refuses; the double records that request as it would arrive."""
        body = {"query": (call["function"].get("arguments") or {}).get("query", ""), "max_results": 5}
        data = dumps(body)
        headers = {"Host": f"{self.double.host}:{self.double.port}",
                   "User-Agent": f"ollama/{VERSION} (amd64 linux) Go/go1.26.0", "Content-Length": str(len(data)),
                   "Accept": "application/json", "Content-Type": "application/json", "Accept-Encoding": "gzip"}
        self.double._record_request("POST", "/api/experimental/web_search", headers, body)

    def _pad_responses(self, req, response_id, item_id, ids, chunks, searching, groups, target) -> list:
        """big_line_bytes: grow the first text (or thinking) of the reply until its delta event is `target`
        bytes; the text then carries the padding everywhere it is repeated (done events, the final output)."""
        first = next((i for i, c in enumerate(chunks) if c.get("content") or c.get("thinking")), None)
        if first is None:
            return groups
        kind = "response.output_text.delta" if chunks[first].get("content") else \
            "response.reasoning_summary_text.delta"
        delta = next((e for e in groups[first] if isinstance(e, tuple) and e[0] == kind), None)
        if delta is None:
            return groups
        size = len(event_bytes(*delta))
        if size >= target:
            return groups
        key = "content" if chunks[first].get("content") else "thinking"
        padded = [dict(c) for c in chunks]
        padded[first][key] += filler(target - size)
        return self._responses_groups(req, response_id, item_id, ids, padded, searching)

    def _responses_cloud_search(self, req, response_id, item_id, ids, stream):
        """A cloud model with the web_search tool: ChatHandler proxies to ollama.com's /api/chat, whose 401
        reaches WebSearchResponsesWriter (it keeps the status for itself when streaming)."""
        message = f"unauthorized; sign in at {signin_url()}"
        if not stream:
            return self.send_json(_error_body(401, message), 401, PLAIN_JSON, newline=True)
        conv = Converter(response_id, item_id, req, ids)
        usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        failed = {"id": response_id, "object": "response", "status": "failed", "model": req.get("model", ""),
                  "output": [], "error": {"code": "authentication_error", "message": message}, "usage": usage}
        events = conv.process({}) + [conv.failed(failed)]
        self.send_body(200, b"".join(event_bytes(*e) for e in events), SSE_TYPE)
