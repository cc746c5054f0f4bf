"""POST /v1/messages (Anthropic's Messages API) as Ollama serves it.

Facts from ollama/ollama (re-implemented, not copied): server/routes.go (the route: cloudPassthroughMiddleware,
AnthropicMessagesMiddleware, ChatHandler), middleware/anthropic.go (AnthropicMessagesMiddleware, AnthropicWriter,
WebSearchAnthropicWriter, writeSSE), anthropic/anthropic.go (MessagesRequest, MessageParam.UnmarshalJSON,
FromMessagesRequest, ToMessagesResponse, StreamConverter, NewError, EstimateInputTokens), server/cloud_proxy.go.

* The body binds to anthropic.MessagesRequest (c.ShouldBindJSON: an empty body is "EOF"). A message's `content`
  is a string (one text block) or an array of content blocks, decoded by MessageParam's own UnmarshalJSON: a
  message without `content` (or a null message) fails with "unexpected end of JSON input", `content: null` is one
  empty text block, type errors inside are re-labelled under MessagesRequest.messages. Then, in this order:
  "model is required", "max_tokens is required and must be positive", "messages is required", and the
  conversion's own errors (bad image sources, tool_use without id/name, bad input_schema). All are 400s written
  by c.AbortWithStatusJSON: `application/json; charset=utf-8`, no newline.
* FromMessagesRequest: system (string, or the text of its text blocks) -> a system message; each message's text
  blocks are joined, images (base64 only) attached, tool_use blocks become tool calls, tool_result blocks tool
  messages (before the user's own text, after anything else), thinking blocks the message's thinking;
  max_tokens -> num_predict, temperature/top_p/top_k/stop_sequences -> options; tools -> functions (a tool whose
  type starts with "web_search" becomes Ollama's own "web_search" function); thinking.type enabled/disabled ->
  think true/false, else output_config.effort (high/medium/low/max, xhigh = high). tool_choice and metadata are
  bound but not used. The middleware sets "relax_thinking": thinking asked of a model that cannot think is
  dropped, not refused. Then ChatHandler runs, so model checks and the script's faults are those of /api/chat.
* Errors from ChatHandler come through AnthropicWriter.writeError: `application/json`, json.Encoder's newline,
  `{"type": "error", "error": {"type", "message"}, "request_id": "req_<24 hex>"}` with the type from the status
  (400 invalid_request_error, 401 authentication_error, 403 permission_error, 404 not_found_error,
  429 rate_limit_error, 503/529 overloaded_error, else api_error). A stream's headers (Cache-Control: no-cache,
  Connection: keep-alive) are set before ChatHandler runs, so its errors carry them too.
* Whole answers: ToMessagesResponse through json.Encoder (`application/json`, newline): {id "msg_<24 hex>", type,
  role, model, content (thinking, text, tool_use blocks; null when there are none), stop_reason (end_turn,
  max_tokens, tool_use; omitted when empty), usage}. stop_sequence is never set, so Ollama omits it.
* Streams: `event: <type>\\ndata: <json>\\n\\n`, each event flushed on its own (writeSSE), the data being the
  event struct in its field order. StreamConverter: message_start (usage.input_tokens: the first chunk's
  prompt_eval_count, else EstimateInputTokens' len/4 guess, output_tokens 0), content_block_start /
  content_block_delta (thinking_delta, text_delta, input_json_delta) / content_block_stop per block,
  message_delta (delta.stop_reason, usage with input_tokens and output_tokens) and message_stop. Ollama never
  sends `ping` nor an `event: error`: an error line in the middle of a chat stream unmarshals to an empty chunk
  and produces no event, so the stream just ends (no message_delta, no message_stop).
* web_search: a tool whose type starts with "web_search" uses WebSearchAnthropicWriter. With a cloud model
  (cloudPassthroughMiddleware lets it through to the middleware), ChatHandler's proxy to ollama.com refuses this
  signed-out server: a 401 authentication_error "unauthorized" (streamed or not). With a local model that calls
  web_search (the double's model does when the prompt mentions "search"), Ollama asks ollama.com's search
  directly, which fails for a signed-out server ("unavailable"; an empty query is "invalid_request"): the answer
  (200) is a server_tool_use block and a web_search_tool_result block holding a web_search_tool_result_error,
  stop_reason end_turn; streamed, those blocks follow whatever was streamed before the call.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets

from . import gojson as go
from .gojson import Custom, GoError, Ptr, Slice, Struct, go_quote
from .native import PLAIN_JSON, filler, plan
from .openai_layer import SSE_TYPE
from .responses_layer import _anonymous, _pairs, go_map, native_chunks
from .transport import JSON_TYPE, ApiError
from .wire import RUNNER_ERROR, dumps, last_user_text, prompt_count

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}
BAD_EVENT = b'event: content_block_delta\ndata: {"type": tru\n\n'
WEB_SEARCH_FUNCTION = {"type": "function", "function": {
    "name": "web_search",
    "description": "Search the web for current information. Use this to find up-to-date information about any topic.",
    "parameters": {"type": "object", "required": ["query"],
                   "properties": {"query": {"type": "string",
                                            "description": "The search query to look up on the web"}}}}}


def new_id(prefix: str) -> str:
    """generateID: the prefix, "_" and 12 random bytes in hex."""
    return f"{prefix}_{secrets.token_hex(12)}"


def error_body(status: int, message: str) -> dict:
    """anthropic.NewError."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": new_id("req")}


# -- the request (anthropic.MessagesRequest) -----------------------------------------------------------------------


def _keep(_binder, value):
    """A json.RawMessage (or an `any` whose JSON shape matters later): the decoded value as it came."""
    return value


def _arguments(_binder, value):
    """api.ToolCallFunctionArguments: an ordered map (top-level keys in order, the last of equal keys wins)."""
    return go.plain(value) if isinstance(value, go.Pairs) else {}


CITATION = Struct("anthropic.Citation", {"type": "string", "url": "string", "title": "string",
                                         "encrypted_index": "string", "cited_text": "string"})
IMAGE_SOURCE = Struct("anthropic.ImageSource", {"type": "string", "media_type": "string", "data": "string",
                                                "url": "string"})
CONTENT_BLOCK = Struct("anthropic.ContentBlock", {
    "type": "string", "text": "*string", "citations": Slice(CITATION, "[]anthropic.Citation"),
    "source": Ptr(IMAGE_SOURCE), "id": "string", "name": "string", "input": Custom(_arguments),
    "tool_use_id": "string", "content": "any", "is_error": "bool", "thinking": "*string", "signature": "string"})
CONTENT_BLOCKS = Slice(CONTENT_BLOCK, "[]anthropic.ContentBlock")
_MESSAGE_RAW = _anonymous({"role": "string", "content": Custom(_keep)},
                          'struct { Role string "json:\\"role\\""; Content json.RawMessage "json:\\"content\\"" }')


def _nested(binder, call):
    """A json.Unmarshal inside an UnmarshalJSON: its error stops the outer decoding (type errors re-labelled)."""
    try:
        return call()
    except GoError as err:
        if err.saved is not None:
            binder.abort_under(err.saved)
        raise go.Abort(err.message) from None


def _message_param(binder, value) -> dict:
    """MessageParam.UnmarshalJSON."""
    raw = _nested(binder, lambda: go.unmarshal(_MESSAGE_RAW, value)) if value is not None else {}
    if "content" not in raw:  # json.Unmarshal of an empty RawMessage
        raise go.Abort("unexpected end of JSON input")
    content = raw["content"]
    if content is None or isinstance(content, str):
        blocks = [{"type": "text", "text": content or ""}]
    else:
        blocks = _nested(binder, lambda: go.unmarshal(CONTENT_BLOCKS, content)) or []
    return {"role": raw.get("role", ""), "content": blocks}


def _decode_messages(binder, value):
    if value is None:
        return None
    if not isinstance(value, list):
        binder.type_error(go.kind_of(value), "[]anthropic.MessageParam")
        return go._ABSENT
    return [_message_param(binder, item) for item in value]


TOOL = Struct("anthropic.Tool", {"type": "string", "name": "string", "description": "string",
                                 "input_schema": Custom(_keep), "max_uses": "int"})
MESSAGES_REQUEST = Struct("anthropic.MessagesRequest", {
    "model": "string", "max_tokens": "int", "messages": Custom(_decode_messages), "system": "any", "stream": "bool",
    "temperature": "*float64", "top_p": "*float64", "top_k": "*int", "stop_sequences": "[]string",
    "tools": Slice(TOOL, "[]anthropic.Tool"),
    "tool_choice": Ptr(Struct("anthropic.ToolChoice", {"type": "string", "name": "string",
                                                       "disable_parallel_tool_use": "bool"})),
    "thinking": Ptr(Struct("anthropic.ThinkingConfig", {"type": "string", "budget_tokens": "int"})),
    "metadata": Ptr(Struct("anthropic.Metadata", {"user_id": "string"})),
    "output_config": Ptr(Struct("anthropic.OutputConfig", {"effort": "string"}))})


def has_web_search(tools) -> bool:
    """The middleware's hasWebSearchTool: a tool type starting with "web_search"."""
    return any(str(t.get("type", "")).startswith("web_search") for t in tools or [] if isinstance(t, dict))


def _body_has_web_search(body: dict) -> bool:
    """server/cloud_proxy.go's check for /v1/messages: tools[].type, trimmed, starting with "web_search"."""
    tools = body.get("tools")
    if tools is None:
        return False
    if not isinstance(tools, list) or not all(isinstance(t, dict) or t is None for t in tools):
        return False  # json.Unmarshal into []struct{Type string} fails
    types = [(t or {}).get("type") for t in tools]
    if any(kind is not None and not isinstance(kind, str) for kind in types):
        return False
    return any((kind or "").strip().startswith("web_search") for kind in types)


# -- raw bytes of input_schema (EstimateInputTokens counts them as they came) -------------------------------------


def _spans(text: str, pos: int):
    """(node, end) for the JSON value at text[pos:] (already known to be valid): node is (start, end, members) with
    members a list of (key, node) for objects, a list of nodes for arrays, None for scalars."""
    ws = " \t\r\n"
    while text[pos] in ws:
        pos += 1
    start, char = pos, text[pos]
    if char == "{":
        members, pos = [], pos + 1
        while True:
            while text[pos] in ws:
                pos += 1
            if text[pos] == "}":
                return (start, pos + 1, members), pos + 1
            key, pos = json.decoder.scanstring(text, pos + 1)
            while text[pos] in ws + ":":
                pos += 1
            node, pos = _spans(text, pos)
            members.append((key, node))
            while text[pos] in ws + ",":
                pos += 1
    if char == "[":
        items, pos = [], pos + 1
        while True:
            while text[pos] in ws + ",":
                pos += 1
            if text[pos] == "]":
                return (start, pos + 1, items), pos + 1
            node, pos = _spans(text, pos)
            items.append(node)
    if char == '"':
        _value, end = json.decoder.scanstring(text, pos + 1)
        return (start, end, None), end
    end = pos
    while end < len(text) and text[end] not in ws + ",]}":
        end += 1
    return (start, end, None), end


def _schema_lengths(raw: bytes) -> list:
    """len(tool.InputSchema) for each element of `tools` (0 where absent), from the body's own bytes."""
    text = raw.decode("utf-8", "replace")
    try:
        root, _end = _spans(text, 0)
    except (IndexError, ValueError):
        return []
    tools = None
    for key, node in root[2] if isinstance(root[2], list) and text[root[0]] == "{" else []:
        if go.fold(key) == "tools":
            tools = node
    if tools is None or text[tools[0]] != "[":
        return []
    out = []
    for element in tools[2]:
        size = 0
        if text[element[0]] == "{":
            for key, node in element[2]:
                if go.fold(key) == "input_schema":
                    size = len(text[node[0]:node[1]].encode())
        out.append(size)
    return out


def _marshal_block(block: dict) -> dict:
    """json.Marshal of an anthropic.ContentBlock: its field order and omitempty rules."""
    out = {"type": block.get("type", "")}
    if block.get("text") is not None:
        out["text"] = block["text"]
    if block.get("citations"):
        out["citations"] = [{k: c.get(k, "") for k in ("type", "url", "title")} |
                            {k: c[k] for k in ("encrypted_index", "cited_text") if c.get(k)}
                            for c in block["citations"]]
    if block.get("source") is not None:
        out["source"] = {"type": block["source"].get("type", "")} | {
            k: block["source"][k] for k in ("media_type", "data", "url") if block["source"].get(k)}
    for key in ("id", "name"):
        if block.get(key):
            out[key] = block[key]
    if "input" in block:
        out["input"] = {k: go_map(v) for k, v in block["input"].items()}
    if block.get("tool_use_id"):
        out["tool_use_id"] = block["tool_use_id"]
    if block.get("content") is not None:
        out["content"] = go_map(block["content"])
    if block.get("is_error"):
        out["is_error"] = True
    if block.get("thinking") is not None:
        out["thinking"] = block["thinking"]
    if block.get("signature"):
        out["signature"] = block["signature"]
    return out


def _count_block(block: dict) -> int:
    total = len((block.get("text") or "").encode()) + len((block.get("thinking") or "").encode())
    if block.get("type") in ("tool_use", "tool_result"):
        total += len(dumps(_marshal_block(block)))
    return total


def _count_any(content) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        total = 0
        for item in content:  # json.Marshal, then json.Unmarshal into a ContentBlock (skipped if that fails)
            try:
                total += _count_block(go.unmarshal(CONTENT_BLOCK, _pairs(item)))
            except GoError:
                continue
        return total
    return len(dumps(go_map(content)))


def estimate_input_tokens(req: dict, raw: bytes) -> int:
    """anthropic.EstimateInputTokens: a quarter of the bytes of system, roles, contents and tools (at least 1)."""
    total = _count_any(req.get("system"))
    for message in req.get("messages") or []:
        total += len(message["role"].encode()) + sum(_count_block(b) for b in message["content"])
    schemas = _schema_lengths(raw)
    for i, tool in enumerate(req.get("tools") or []):
        total += len(tool.get("name", "").encode()) + len(tool.get("description", "").encode())
        total += schemas[i] if i < len(schemas) else 0
    tokens = total // 4
    if tokens == 0 and (req.get("messages") or req.get("system") is not None):
        tokens = 1
    return tokens


# -- FromMessagesRequest ------------------------------------------------------------------------------------------


def _b64_offset(data: str) -> int:
    """Where Go's base64.StdEncoding reports its CorruptInputError (the common cases: a byte outside the
    alphabet, misplaced padding, an incomplete last quantum)."""
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    count, quantum = 0, 0
    for i, char in enumerate(data):
        if char in "\r\n":
            continue
        if char == "=":
            return i if count % 4 < 2 else (i + 1 if data[i + 1:i + 2] not in ("=", "") else len(data))
        if char not in alphabet:
            return i
        if count % 4 == 0:
            quantum = i
        count += 1
    return quantum if count % 4 else len(data)


def _image(source) -> bytes:
    """resolveImageSource."""
    if source.get("type", "") != "base64":
        raise ApiError(400, f"invalid image source type: {source.get('type', '')}. Only base64 images are supported.")
    data = source.get("data", "")
    try:
        return base64.b64decode(data.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"invalid base64 image data: illegal base64 data at input byte {_b64_offset(data)}") \
            from None


def _tool_result(content) -> tuple:
    """convertToolResultContent."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    text, images = "", []
    for item in content:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "text" and isinstance(item.get("text"), str):
            text += item["text"]
        elif item.get("type") == "image":
            source = item.get("source")
            if not isinstance(source, dict):
                raise ApiError(400, "invalid tool_result image source")
            images.append(_image({k: source[k] for k in ("type", "media_type", "data")
                                  if isinstance(source.get(k), str)}))
    return text, images


def _search_error(code) -> str:
    return f"web_search_tool_result_error: {code}" if code else "web_search_tool_result_error"


def _web_search_result(content) -> str:
    """formatWebSearchToolResultContent."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = ""
        for item in content:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "web_search_result":
                title, url = item.get("title"), item.get("url")
                out += f"- {title if isinstance(title, str) else ''}: {url if isinstance(url, str) else ''}\n"
            elif item.get("type") == "web_search_tool_result_error":
                code = item.get("error_code")
                return _search_error(code if isinstance(code, str) else "")
        return out
    if isinstance(content, dict) and content.get("type") == "web_search_tool_result_error":
        code = content.get("error_code")
        return _search_error(code if isinstance(code, str) else "")
    return dumps(go_map(content)).decode()


def _convert_message(message: dict) -> list:
    """convertMessage: one Anthropic message -> Ollama messages."""
    role = message["role"].lower()
    text, images, calls, thinking, results = "", [], [], "", []
    for block in message["content"]:
        kind = block.get("type", "")
        if kind == "text":
            text += block.get("text") or ""
        elif kind == "image":
            if block.get("source") is None:
                raise ApiError(400, "invalid image source")
            images.append(_image(block["source"]))
        elif kind in ("tool_use", "server_tool_use"):
            if kind == "tool_use" and not block.get("id"):
                raise ApiError(400, "tool_use block missing required 'id' field")
            if kind == "tool_use" and not block.get("name"):
                raise ApiError(400, "tool_use block missing required 'name' field")
            calls.append({"id": block.get("id", ""), "function": {"index": 0, "name": block.get("name", ""),
                                                                  "arguments": block.get("input") or {}}})
        elif kind == "tool_result":
            content, result_images = _tool_result(block.get("content"))
            result = {"role": "tool", "content": content, "tool_call_id": block.get("tool_use_id", "")}
            if result_images:
                result["images"] = result_images
            results.append(result)
        elif kind == "thinking":
            if block.get("thinking") is not None:
                thinking = block["thinking"]
        elif kind == "web_search_tool_result":
            results.append({"role": "tool", "content": _web_search_result(block.get("content")),
                            "tool_call_id": block.get("tool_use_id", "")})
    out = list(results) if role == "user" and results else []
    if text or images or calls or thinking:
        msg = {"role": role, "content": text}
        if images:
            msg["images"] = images
        if calls:
            msg["tool_calls"] = calls
        if thinking:
            msg["thinking"] = thinking
        out.append(msg)
    if role != "user" or not results:
        out += results
    return out


def from_messages_request(req: dict) -> dict:
    """anthropic.FromMessagesRequest: the api.ChatRequest handed to ChatHandler."""
    messages = []
    system = req.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        text = "".join(b["text"] for b in system if isinstance(b, dict) and b.get("type") == "text"
                       and isinstance(b.get("text"), str))
        if text:
            messages.append({"role": "system", "content": text})
    for message in req.get("messages") or []:
        messages += _convert_message(message)
    options = {"num_predict": req.get("max_tokens", 0)}
    for key, option in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if req.get(key) is not None:
            options[option] = req[key]
    if req.get("stop_sequences"):
        options["stop"] = req["stop_sequences"]
    tools, builtin = [], has_web_search(req.get("tools"))
    for tool in req.get("tools") or []:
        if tool.get("type", "").startswith("web_search"):
            tools.append(json.loads(json.dumps(WEB_SEARCH_FUNCTION)))
            continue
        if builtin and tool.get("name") == "web_search":
            continue  # the built-in tool owns that name
        params = {}
        if "input_schema" in tool:
            try:
                params = go.unmarshal(go.TOOL_PARAMETERS, tool["input_schema"])
            except GoError as err:
                raise ApiError(400, f"invalid input_schema for tool {go_quote(tool.get('name', ''))}: "
                                    f"{err.message}") from None
        tools.append({"type": "function", "function": {"name": tool.get("name", ""),
                                                       "description": tool.get("description", ""),
                                                       "parameters": params}})
    think = None
    effort = ((req.get("output_config") or {}).get("effort") or "").strip().lower()
    effort = "high" if effort == "xhigh" else effort
    kind = (req.get("thinking") or {}).get("type") if req.get("thinking") is not None else None
    if kind == "enabled":
        think = True
    elif kind == "disabled":
        think = False
    elif req.get("output_config") is not None and effort in ("high", "medium", "low", "max"):
        think = effort
    native = {"model": req.get("model", ""), "messages": messages, "options": options,
              "stream": bool(req.get("stream")), "tools": tools or None, "think": think}
    return {k: v for k, v in native.items() if v is not None}


# -- the answer ------------------------------------------------------------------------------------------------------


def _args(call: dict) -> dict:
    """A tool call's arguments as api.ToolCallFunctionArguments marshals them (nested maps sorted)."""
    return {k: go_map(v) for k, v in (call["function"].get("arguments") or {}).items()}


def stop_reason(done_reason: str, calls: bool) -> str:
    """mapStopReason."""
    if calls:
        return "tool_use"
    return {"stop": "end_turn", "length": "max_tokens", "": ""}.get(done_reason, "stop_sequence")


def _usage(n_in: int, n_out: int) -> dict:
    return {"input_tokens": n_in, "output_tokens": n_out}


def message(msg_id: str, model: str, content, reason: str, usage: dict) -> dict:
    """anthropic.MessagesResponse in its field order (stop_reason and stop_sequence are omitempty)."""
    out = {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": content}
    if reason:
        out["stop_reason"] = reason
    out["usage"] = usage
    return out


def whole_message(msg_id: str, model: str, final: dict) -> dict:
    """ToMessagesResponse of the final api.ChatResponse."""
    content = []
    if final["thinking"]:
        content.append({"type": "thinking", "thinking": final["thinking"]})
    if final["content"]:
        content.append({"type": "text", "text": final["content"]})
    for call in final["calls"] or []:
        block = {"type": "tool_use"}
        if call.get("id"):
            block["id"] = call["id"]
        if call["function"].get("name"):
            block["name"] = call["function"]["name"]
        block["input"] = _args(call)
        content.append(block)
    return message(msg_id, model, content or None, stop_reason(final["done_reason"], bool(final["calls"])),
                   _usage(final["prompt_eval_count"], final["eval_count"]))


class StreamConverter:
    """anthropic.StreamConverter: native chat chunks in, (event, data) pairs out."""

    def __init__(self, msg_id: str, model: str, estimated: int):
        self.msg_id, self.model, self.estimated = msg_id, model, estimated
        self.first, self.index = True, 0
        self.thinking_started = self.thinking_done = self.text_started = False
        self.calls_sent = set()

    @staticmethod
    def stop(index: int) -> tuple:
        return "content_block_stop", {"type": "content_block_stop", "index": index}

    @staticmethod
    def start(index: int, block: dict) -> tuple:
        return "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}

    @staticmethod
    def delta(index: int, delta: dict) -> tuple:
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}

    def message_start(self, input_tokens: int) -> tuple:
        return "message_start", {"type": "message_start",
                                 "message": message(self.msg_id, self.model, [], "", _usage(input_tokens, 0))}

    def process(self, chunk: dict) -> list:
        events = []
        if self.first:
            self.first = False
            n_in = chunk.get("prompt_eval_count", 0)
            if n_in == 0 and self.estimated > 0:
                n_in = self.estimated
            events.append(self.message_start(n_in))
        if chunk.get("thinking") and not self.thinking_done:
            if self.text_started:
                events.append(self.stop(self.index))
                self.index += 1
                self.text_started = False
            if not self.thinking_started:
                self.thinking_started = True
                events.append(self.start(self.index, {"type": "thinking", "thinking": ""}))
            events.append(self.delta(self.index, {"type": "thinking_delta", "thinking": chunk["thinking"]}))
        if chunk.get("content"):
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                events.append(self.stop(self.index))
                self.index += 1
            if not self.text_started:
                self.text_started = True
                events.append(self.start(self.index, {"type": "text", "text": ""}))
            events.append(self.delta(self.index, {"type": "text_delta", "text": chunk["content"]}))
        for call in chunk.get("calls") or []:
            if call.get("id", "") in self.calls_sent:
                continue
            if self.thinking_started and not self.thinking_done:
                self.thinking_done = True
                events.append(self.stop(self.index))
                self.index += 1
            if self.text_started:
                events.append(self.stop(self.index))
                self.index += 1
                self.text_started = False
            block = {"type": "tool_use"}
            if call.get("id"):
                block["id"] = call["id"]
            if call["function"].get("name"):
                block["name"] = call["function"]["name"]
            block["input"] = {}
            events += [self.start(self.index, block),
                       self.delta(self.index, {"type": "input_json_delta", "partial_json": dumps(_args(call)).decode()}),
                       self.stop(self.index)]
            self.calls_sent.add(call.get("id", ""))
            self.index += 1
        if chunk.get("done"):
            if self.text_started or (self.thinking_started and not self.thinking_done):
                events.append(self.stop(self.index))
            delta = {}
            reason = stop_reason(chunk.get("done_reason", ""), bool(self.calls_sent))
            if reason:
                delta["stop_reason"] = reason
            events += [("message_delta", {"type": "message_delta", "delta": delta,
                                          "usage": _usage(chunk.get("prompt_eval_count", 0),
                                                          chunk.get("eval_count", 0))}),
                       ("message_stop", {"type": "message_stop"})]
        return events


def event_bytes(name: str, data: dict) -> bytes:
    """writeSSE: json.Marshal of the event struct (field order kept)."""
    return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def _web_search_call(calls):
    return next((c for c in calls or [] if c["function"].get("name") == "web_search"), None)


def _query(call: dict) -> str:
    value = (call["function"].get("arguments") or {}).get("query")
    return value if isinstance(value, str) else ""


def search_blocks(msg_id: str, query: str, code: str) -> list:
    """webSearchErrorResponse's content: the server_tool_use and its failed web_search_tool_result."""
    tool_id = "srvtoolu_" + msg_id.removeprefix("msg_")
    return [{"type": "server_tool_use", "id": tool_id, "name": "web_search", "input": {"query": query}},
            {"type": "web_search_tool_result", "tool_use_id": tool_id,
             "content": {"type": "web_search_tool_result_error", "error_code": code}}]


class SearchStream:
    """WebSearchAnthropicWriter when streaming: passthrough events until the model calls web_search, then (when
    the generation is done) the failed search's blocks and the end of the message."""

    def __init__(self, conv: StreamConverter, msg_id: str, model: str, estimated: int):
        self.conv, self.msg_id, self.model, self.estimated = conv, msg_id, model, estimated
        self.terminal = self.started = self.open_block = self.in_flight = False
        self.open_index = self.next_index = 0
        self.observed = [0, 0]
        self.base = [0, 0]
        self.pending = None  # (code, query, usage) of the loop that is running

    def process(self, chunk: dict) -> list:
        if self.terminal:
            return []
        self.observed = [max(self.observed[0], chunk.get("prompt_eval_count", 0)),
                         max(self.observed[1], chunk.get("eval_count", 0))]
        if self.in_flight:
            return self._result() if chunk.get("done") else []
        call = _web_search_call(chunk.get("calls"))
        if call is None:
            return self._passthrough(chunk)
        usage = list(self.observed)
        self.base, self.in_flight = list(usage), True
        query = _query(call)
        self.pending = ("unavailable" if query else "invalid_request", query, usage)
        return self._result() if chunk.get("done") else []

    def _passthrough(self, chunk: dict) -> list:
        events = self.conv.process(chunk)
        for name, data in events:
            if name == "message_start":
                self.started = True
            elif name == "content_block_start":
                self.open_block, self.open_index = True, data["index"]
                self.next_index = max(self.next_index, data["index"] + 1)
            elif name == "content_block_stop":
                if self.open_block and self.open_index == data["index"]:
                    self.open_block = False
                self.next_index = max(self.next_index, data["index"] + 1)
            elif name == "message_stop":
                self.terminal = True
        return events

    def _result(self) -> list:
        code, query, usage = self.pending
        self.in_flight = False
        usage = [usage[0] + max(0, self.observed[0] - self.base[0]), usage[1] + max(0, self.observed[1] - self.base[1])]
        events = []
        if not self.started:
            events.append(self.conv.message_start(usage[0] or self.estimated))
        if self.open_block:
            events.append(StreamConverter.stop(self.open_index))
            self.next_index = max(self.next_index, self.open_index + 1)
        for block in search_blocks(self.msg_id, query, code):
            events += [StreamConverter.start(self.next_index, block), StreamConverter.stop(self.next_index)]
            self.next_index += 1
        events += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                      "usage": _usage(*usage)}),
                   ("message_stop", {"type": "message_stop"})]
        self.terminal = True
        return events


class AnthropicRoutes:
    """The /v1/messages handler; mixed into server.Handler (OpenAIRoutes.compat_error calls anthropic_error)."""

    def anthropic_error(self, status: int, message: str, ctype: str = JSON_TYPE):
        """The middleware's c.AbortWithStatusJSON (ctype, no newline), or AnthropicWriter.writeError once the
        request reached ChatHandler (`application/json`, newline)."""
        if self._v1_writer:
            return self.send_json(error_body(status, message), status, PLAIN_JSON, newline=True)
        self.send_json(error_body(status, message), status, ctype)

    def v1_messages(self):
        cloud_search = self._cloud_passthrough(web_search=_body_has_web_search)
        req = self.bind_mw(MESSAGES_REQUEST)
        if not req.get("model"):
            raise ApiError(400, "model is required")
        if req.get("max_tokens", 0) <= 0:
            raise ApiError(400, "max_tokens is required and must be positive")
        if not req.get("messages"):
            raise ApiError(400, "messages is required")
        native = from_messages_request(req)
        stream = bool(req.get("stream"))
        msg_id = new_id("msg")
        estimated = estimate_input_tokens(req, self.raw)
        if stream:
            self._extra_headers.append(("Cache-Control", "no-cache"))
            self._extra_headers.append(("Connection", "keep-alive"))
        searching = has_web_search(req.get("tools"))
        self._v1_writer = True
        if cloud_search:
            # ChatHandler proxies the cloud model to ollama.com, which refuses a signed-out server; the 401
            # comes through the writer in Anthropic's shape, streamed or not.
            raise ApiError(401, "unauthorized")
        try:
            model, _unload = self.check_generation(native, chat=True, relax_thinking=True)
        except ApiError as err:
            if err.status == 401 and err.extra.get("native"):
                raise ApiError(401, err.message) from None  # ChatHandler's own proxy, through AnthropicWriter
            raise
        name = req["model"]
        script = self.script
        messages = native["messages"]
        if not messages:  # ChatHandler's load-only answer, through AnthropicWriter
            self.prelude(script)
            with self.serving(model):
                load = {"content": "", "done": True, "done_reason": "load"}
                if not stream:
                    final = {"thinking": "", "content": "", "calls": None, "done_reason": "load",
                             "prompt_eval_count": 0, "eval_count": 0}
                    return self.send_json(whole_message(msg_id, name, final), ctype=PLAIN_JSON, newline=True)
                rec = self.double._open_stream(self.route, name)
                events = StreamConverter(msg_id, name, estimated).process(load)
                return self.stream(rec, [events], SSE_TYPE, lambda e: event_bytes(*e), BAD_EVENT, b"",
                                   flush_each=True)
        prompt = last_user_text(messages)
        n_prompt = sum(prompt_count(str(m.get("content", ""))) for m in messages)
        reply = plan(model, {**native, "stream": stream}, script, prompt, True, messages)
        chunks = native_chunks(reply, n_prompt)
        target = script["big_line_bytes"]
        if stream:
            groups = self._anthropic_groups(chunks, msg_id, name, estimated, searching)
            if target:
                groups = self._pad_anthropic(chunks, msg_id, name, estimated, searching, groups, target)
            rec = self.double._open_stream(self.route, name)
            self.prelude(script, rec)
            early = (500, dumps(error_body(500, RUNNER_ERROR)) + b"\n", PLAIN_JSON)
            with self.serving(model):
                # An error line mid-stream becomes an empty chunk, which makes no event: b"".
                return self.stream(rec, groups, SSE_TYPE, lambda e: event_bytes(*e), BAD_EVENT, b"", early,
                                   flush_each=True)
        self.prelude(script)
        self.double._load(model, None)
        final = {"thinking": "".join(t for t, _ in reply.thinking), "content": "".join(t for t, _ in reply.tokens),
                 "calls": reply.calls, "done_reason": reply.done_reason, "prompt_eval_count": n_prompt,
                 "eval_count": reply.eval_count}
        call = _web_search_call(reply.calls) if searching else None
        if call is not None:
            query = _query(call)
            body = message(msg_id, name, search_blocks(msg_id, query, "unavailable" if query else "invalid_request"),
                           "end_turn", _usage(n_prompt, reply.eval_count))
        else:
            body = whole_message(msg_id, name, final)
        raw = dumps(body)
        if target and len(raw) + 1 < target and call is None:
            holder = next((b for b in body["content"] or [] if b["type"] in ("text", "thinking")), None)
            if holder is not None:
                holder[holder["type"]] += filler(target - len(raw) - 1)
                raw = dumps(body)
        bad = b'{"id":"' + msg_id.encode() + b'","type":tru'
        self.finish_unstreamed(script, len(chunks), raw, bad, PLAIN_JSON, newline=True,
                               error=ApiError(500, RUNNER_ERROR))

    @staticmethod
    def _anthropic_groups(chunks, msg_id, name, estimated, searching) -> list:
        """The events each native chunk produces, through AnthropicWriter or WebSearchAnthropicWriter."""
        conv = StreamConverter(msg_id, name, estimated)
        writer = SearchStream(conv, msg_id, name, estimated) if searching else conv
        return [writer.process(chunk) for chunk in chunks]

    def _pad_anthropic(self, chunks, msg_id, name, estimated, searching, groups, target) -> list:
        """big_line_bytes: grow the first text (or thinking) delta event to `target` bytes."""
        for i, group in enumerate(groups):
            for event in group:
                delta = event[1].get("delta", {}) if event[0] == "content_block_delta" else {}
                key = {"text_delta": "content", "thinking_delta": "thinking"}.get(delta.get("type"))
                if key is None:
                    continue
                size = len(event_bytes(*event))
                if size >= target:
                    return groups
                padded = [dict(c) for c in chunks]
                padded[i][key] += filler(target - size)
                return self._anthropic_groups(padded, msg_id, name, estimated, searching)
        return groups
