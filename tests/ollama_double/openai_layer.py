"""The OpenAI-compatible /v1 routes of the double, as middleware/openai.go and openai/openai.go shape them.

Two error flavours, as in Ollama: what the /v1 middleware itself refuses (bad JSON, empty messages, bad
reasoning effort) is written by gin's c.JSON (`application/json; charset=utf-8`, no newline); what the
native handler behind it refuses comes through the response writer (`application/json`, json.Encoder's
trailing newline). Successful non-streamed /v1 bodies are json.Encoder output too.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import time

from . import gojson as go
from .gojson import go_quote
from .native import PLAIN_JSON, Padded, filler, plan
from .encoding import DecodeError, decompress
from .transport import JSON_TYPE, ApiError, _lenient, sse
from .wire import (
    dumps,
    embed_vector,
    embedding_length,
    float32_base64,
    last_user_text,
    parse_name,
    parse_ref,
    prompt_count,
    unix_time,
)

_ids = itertools.count(101)
BAD_SSE = b'data: {"choices": tru\n\n'
DONE = b"data: [DONE]\n\n"
SSE_TYPE = "text/event-stream"
_GO_TYPE_NAMES = {type(None): "<nil>", bool: "bool", str: "string", int: "float64", float: "float64",
                  list: "[]interface {}", dict: "map[string]interface {}"}
IMAGE_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp"))


def model_object(model: dict) -> dict:
    """One entry of GET /v1/models: owned_by is the name's namespace."""
    parts = parse_name(model["model"])
    return {"id": model["model"], "object": "model", "created": unix_time(model["modified_at"]),
            "owned_by": parts[1] if parts else ""}


def _go_type(value) -> str:
    return _GO_TYPE_NAMES.get(type(value), "float64" if isinstance(value, (int, float)) else "interface {}")


def _think_from_effort(effort: str):
    if effort == "":
        return None
    if effort == "none":
        return False
    if effort == "minimal":
        return "low"
    if effort in ("low", "medium", "high", "max"):
        return effort
    if effort in ("xhigh", "ultra"):
        return "max"
    raise ApiError(400, f'invalid reasoning value: {go_quote(effort)} (must be "minimal", "low", "medium", "high", '
                        f'"xhigh", "ultra", "max", or "none")')


def _decode_image(url: str) -> bytes:
    if url.startswith(("http://", "https://")):
        raise ApiError(400, "image URLs are not currently supported, please use base64 encoded data instead")
    if url.startswith("data:;base64,"):
        data = url[len("data:;base64,"):]
    else:
        prefix = next((p for p in IMAGE_PREFIXES if url.startswith(p)), None)
        if prefix is None:
            raise ApiError(400, "invalid image input")
        data = url[len(prefix):]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid image input") from None


def _tool_calls(calls) -> list:
    out = []
    for call in calls or []:
        try:
            arguments = json.loads((call.get("function") or {}).get("arguments", ""))
        except ValueError:
            raise ApiError(400, "invalid tool call arguments") from None
        out.append({"id": call.get("id", ""), "function": {"index": 0, "name": (call.get("function") or {}).get(
            "name", ""), "arguments": arguments}})
    return out


def native_messages(messages: list) -> list:
    """openai.FromChatRequest's message conversion (content parts become one message each)."""
    out = []
    for msg in messages:
        role = msg.get("role", "").lower()  # the native handler's Message.UnmarshalJSON lower-cases it
        tool_name = ""
        if role.lower() == "tool":
            tool_name = msg.get("name", "")
            if not tool_name and msg.get("tool_call_id"):
                tool_name = next((c.get("function", {}).get("name", "") for m in reversed(messages)
                                  for c in m.get("tool_calls") or [] if c.get("id") == msg["tool_call_id"]), "")
        content = msg.get("content")
        if isinstance(content, str):
            item = {"role": role, "content": content}
            for key, value in (("thinking", msg.get("reasoning")), ("tool_calls", _tool_calls(msg.get("tool_calls"))),
                               ("tool_name", tool_name), ("tool_call_id", msg.get("tool_call_id"))):
                if value:
                    item[key] = value
            out.append(item)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise ApiError(400, "invalid message format")
                kind = part.get("type")
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        raise ApiError(400, "invalid message format")
                    out.append({"role": role, "content": part["text"]})
                elif kind == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str):
                        raise ApiError(400, "invalid message format")
                    out.append({"role": role, "content": "", "images": [_decode_image(url)]})
                elif kind == "input_audio":
                    audio = part.get("input_audio")
                    if not isinstance(audio, dict):
                        raise ApiError(400, "invalid input_audio format")
                    if not isinstance(audio.get("data"), str):
                        raise ApiError(400, "invalid input_audio format: missing data")
                    out.append({"role": role, "content": "", "images": [b""]})
                else:
                    raise ApiError(400, "invalid message format")
            if out and msg.get("tool_calls"):
                out[-1].update(tool_calls=_tool_calls(msg["tool_calls"]), tool_name=tool_name,
                               tool_call_id=msg.get("tool_call_id", ""), thinking=msg.get("reasoning", ""))
        else:
            if msg.get("tool_calls") is None:
                raise ApiError(400, f"invalid message content type: {_go_type(content)}")
            out.append({"role": role, "content": "", "tool_calls": _tool_calls(msg["tool_calls"]),
                        "tool_call_id": msg.get("tool_call_id", "")})
    return out


def _options(req: dict, completion: bool) -> dict:
    options = {}
    stop = req.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        if completion and any(not isinstance(s, str) for s in stop):
            bad = next(s for s in stop if not isinstance(s, str))
            raise ApiError(400, f"invalid type for 'stop' field: {_go_type(bad)}")
        options["stop"] = [s for s in stop if isinstance(s, str)]
    if req.get("max_tokens") is not None:
        options["num_predict"] = req["max_tokens"]
    options["temperature"] = req["temperature"] if req.get("temperature") is not None else 1.0
    if req.get("seed") is not None:
        options["seed"] = req["seed"]
    for key in ("frequency_penalty", "presence_penalty"):
        if completion:
            options[key] = req.get(key, 0.0)
        elif req.get(key) is not None:
            options[key] = req[key]
    if completion:
        options["top_p"] = req["top_p"] if req.get("top_p") else 1.0
    else:
        options["top_p"] = req["top_p"] if req.get("top_p") is not None else 1.0
    return options


class OpenAIRoutes:
    """Handlers for /v1/*; errors come out in OpenAI's shape via openai_error."""

    _v1_writer = False  # True once the request has passed the /v1 middleware and reached the native handler

    def compat_error(self, status: int, message: str, ctype: str = JSON_TYPE):
        """An error on a /v1 route, in the shape of the API that route speaks."""
        if self.route == "/v1/messages":
            return self.anthropic_error(status, message, ctype)
        return self.openai_error(status, message, ctype)

    def openai_error(self, status: int, message: str, ctype: str = JSON_TYPE):
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        if self._v1_writer:
            return self.send_json(body, status, PLAIN_JSON, newline=True)
        self.send_json(body, status, ctype)

    def _cloud_passthrough(self, web_search=None) -> bool:
        """cloudPassthroughMiddleware: a zstd body is decoded first (see encoding.py); then an exact "model" key
        naming a cloud model is proxied to ollama.com, which refuses a server that is not signed in. With
        `web_search` (a predicate on the body: does it declare the built-in web search tool?) such a request
        goes on to the route's own middleware instead; returns True then (the model is a cloud one)."""
        if self.headers.get("Content-Encoding") == "zstd":  # c.GetHeader: the first value, compared exactly
            try:
                self.raw = decompress(self.raw)
            except DecodeError as err:
                raise ApiError(400, err.message, extra={"native": True}) from None
            if self.record is not None:
                self.record["body"] = _lenient(self.raw)
        try:
            body = json.loads(self.raw)
        except ValueError:
            return False
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str) and model.strip():
            try:
                _parts, source = parse_ref(model)
            except Exception:  # noqa: BLE001 - an unparseable name is left to the handler
                return False
            if source == "cloud":
                if web_search is not None and web_search(body):
                    return True
                self.cloud_unauthorized()
        return False

    def bind_mw(self, struct):
        """The body bound by a /v1 middleware's c.ShouldBindJSON (an empty body is "EOF" there)."""
        try:
            return go.bind_with(self.raw, struct)
        except go.BodyError as err:
            raise ApiError(400, err.message) from None

    def v1_models(self):
        # Go marshals a nil slice (no models) as null.
        self.send_json({"object": "list", "data": [model_object(m) for m in self.double.models] or None},
                       ctype=PLAIN_JSON, newline=True)

    def v1_model(self):
        name = self.params["model"]
        try:
            parts, source = parse_ref(name)
        except Exception:  # noqa: BLE001
            parts, source = None, ""
        if source == "cloud":
            self.cloud_unauthorized()
        self._v1_writer = True
        if parts is None:
            raise ApiError(400, "invalid model name")
        model = self.lookup(parts)
        if model is None:
            from .wire import display_shortest
            raise ApiError(404, f"model '{display_shortest(parts)}' not found")
        self.send_json({"id": name, "object": "model", "created": unix_time(model["modified_at"]),
                        "owned_by": parse_name(name)[1]}, ctype=PLAIN_JSON, newline=True)

    def v1_chat(self):
        self._completion(chat=True)

    def v1_completions(self):
        self._completion(chat=False)

    def _native_request(self, chat: bool) -> tuple:
        """The /v1 middleware: bind the OpenAI request and turn it into the native one (errors: mw flavour)."""
        self._cloud_passthrough()
        req = self.bind_mw(go.V1_CHAT if chat else go.V1_COMPLETION)
        if chat:
            if not req.get("messages"):
                raise ApiError(400, "[] is too short - 'messages'")
            messages = native_messages(req["messages"])
            options = _options(req, completion=False)
            effort = (req.get("reasoning") or {}).get("effort", "") if req.get("reasoning") is not None else \
                (req.get("reasoning_effort") or "")
            native = {"model": req.get("model", ""), "messages": messages, "options": options,
                      "stream": bool(req.get("stream")), "tools": req.get("tools"),
                      "think": _think_from_effort(effort), "logprobs": bool(req.get("logprobs")),
                      "top_logprobs": req.get("top_logprobs", 0)}
        else:
            options = _options(req, completion=True)
            top = req.get("logprobs") or 0  # an int here: how many alternatives, > 0 turns logprobs on
            native = {"model": req.get("model", ""), "prompt": req.get("prompt", ""), "options": options,
                      "stream": bool(req.get("stream")), "suffix": req.get("suffix", ""),
                      "logprobs": top > 0, "top_logprobs": max(top, 0)}
        native = {k: v for k, v in native.items() if v is not None}
        return req, native

    def _completion(self, chat: bool):
        req, native = self._native_request(chat)
        self._v1_writer = True
        model, _unload = self.check_generation(native, chat)
        name = native["model"]
        script = self.script
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        stream = native["stream"]
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{next(_ids) % 999}"
        base = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion", "created": None,
                "model": name, "system_fingerprint": "fp_ollama"}
        if chat:
            messages = native["messages"]
            prompt = last_user_text(messages)
            n_prompt = sum(prompt_count(str(m.get("content", ""))) for m in messages)
        else:
            prompt, messages = native["prompt"], None
            n_prompt = prompt_count(prompt)
            if not prompt:  # the generate handler's load-only answer, through the completions writer
                self.prelude(script)
                with self.serving(model):
                    return self._completion_load(base, stream, include_usage)
        reply = plan(model, native, script, prompt, chat, messages)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": reply.eval_count}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        finish = reply.done_reason
        calls = [_openai_call(c) for c in reply.calls or []]
        if finish == "stop" and calls:
            finish = "tool_calls"
        if stream:
            rec = self.double._open_stream(self.route, name)
            self.prelude(script, rec)
            pinned = []

            def created() -> int:
                if chat:
                    if not pinned:
                        pinned.append(int(time.time()))
                    return pinned[0]
                return int(time.time())

            def encode(item: dict) -> bytes:
                return sse({**item, "created": created()} if "created" in item else item)

            groups = (_chat_groups if chat else _completion_groups)(base, reply, calls, finish, usage, include_usage)
            target = script["big_line_bytes"]
            if target:
                groups = _pad_first(groups, target, chat)

            def pad_encode(item):
                line = encode(item)
                if isinstance(item, Padded) and len(line) < item.target:
                    line = encode(_pad_chunk(item, filler(item.target - len(line)), chat))
                return line

            def error_line() -> bytes:
                # An error line from the native stream turns into an empty chunk (it unmarshals to nothing).
                if chat:
                    chunk = {**base, "model": "", "choices": [{"index": 0, "delta": {"content": ""},
                                                               "finish_reason": None}]}
                else:
                    chunk = {**base, "choices": [{"text": "", "index": 0, "finish_reason": None}], "model": ""}
                    chunk = _completion_order(chunk, include_usage)
                return pad_encode(chunk)

            early = (500, dumps(_error_body(500, "an error was encountered while running the model")) + b"\n",
                     PLAIN_JSON)
            with self.serving(model):
                return self.stream(rec, groups, SSE_TYPE, pad_encode, BAD_SSE, error_line, early)
        self.prelude(script)
        self.double._load(model, None)
        text = "".join(t for t, _ in reply.tokens)
        logprobs = [lp for _, lps in reply.thinking + reply.tokens if lps for lp in lps]
        if chat:
            message = {"role": "assistant", "content": text}
            thinking = "".join(t for t, _ in reply.thinking)
            if thinking:
                message["reasoning"] = thinking
            if calls:
                message["tool_calls"] = calls
            choice = {"index": 0, "message": message, "finish_reason": finish}
            if logprobs:
                choice["logprobs"] = {"content": logprobs}
            body = {**base, "object": "chat.completion", "created": int(time.time()), "choices": [choice],
                    "usage": usage}
        else:
            body = {**base, "created": int(time.time()),
                    "choices": [{"text": text, "index": 0, "finish_reason": finish}], "usage": usage}
        raw = dumps(body)
        target = script["big_line_bytes"]
        if target and len(raw) + 1 < target:
            extra = filler(target - len(raw) - 1)
            holder = body["choices"][0]["message"] if chat else body["choices"][0]
            key = "content" if chat else "text"
            if chat and not holder["content"] and holder.get("reasoning"):
                key = "reasoning"
            holder[key] += extra
            raw = dumps(body)
        error = ApiError(500, "an error was encountered while running the model")
        self.finish_unstreamed(script, len(reply.tokens) + 1, raw, BAD_SSE[6:].rstrip(), PLAIN_JSON, newline=True,
                               error=error)

    def _completion_load(self, base, stream, include_usage):
        chunk = {**base, "created": int(time.time()), "choices": [{"text": "", "index": 0, "finish_reason": "load"}]}
        if not stream:
            body = {**chunk, "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
            return self.send_json(body, ctype=PLAIN_JSON, newline=True)
        events = [sse(_completion_order(chunk, include_usage))]
        if include_usage:
            events.append(sse(_completion_order({**chunk, "choices": []}, True)))
        events.append(DONE)
        self.send_body(200, b"".join(events), SSE_TYPE)

    def v1_embeddings(self):
        self._cloud_passthrough()
        req = self.bind_mw(go.V1_EMBED)
        fmt = req.get("encoding_format", "")
        if fmt and fmt.lower() not in ("float", "base64"):
            raise ApiError(400, f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64'].")
        texts = req.get("input")
        if texts == "":
            texts = [""]
        if texts is None or texts == []:
            raise ApiError(400, "invalid input")
        self._v1_writer = True
        name = req.get("model", "")
        _parts, model = self.resolve(name, 404, f"model '{name}' not found")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "invalid input type")
        if model is None:
            raise ApiError(404, f"model {go_quote(name)} not found, try pulling it first")
        self.double._load(model, None)
        dims, length = req.get("dimensions", 0), embedding_length(model)
        data = []
        for i, text in enumerate(texts):
            vector = embed_vector(text, dims if 0 < dims < length else length)
            data.append({"object": "embedding", "embedding": float32_base64(vector) if fmt.lower() == "base64"
                         else vector, "index": i})
        n = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": n, "total_tokens": n}
        self.send_json({"object": "list", "data": data, "model": name, "usage": usage}, ctype=PLAIN_JSON,
                       newline=True)


def _error_body(status: int, message: str) -> dict:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _openai_call(call: dict) -> dict:
    # OpenAI carries arguments as a JSON string, unlike Ollama's object.
    fn = call["function"]
    return {"id": call.get("id", ""), "index": fn.get("index", 0), "type": "function",
            "function": {"name": fn["name"], "arguments": dumps(fn["arguments"]).decode()}}


def _chat_groups(base, reply, calls, finish, usage, include_usage) -> list:
    """The SSE events of a streamed chat completion, grouped by the native line each came from."""
    groups, first = [], True

    def chunk(delta, logprobs=None, finish_reason=None):
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        if logprobs:
            choice["logprobs"] = {"content": logprobs}
        return {**base, "choices": [choice]}

    def delta(**fields):
        nonlocal first
        out = {"role": "assistant"} if first else {}
        first = False
        out.update(fields)
        return out

    for text, logprobs in reply.thinking:
        groups.append([chunk(delta(content="", reasoning=text), logprobs)])
    for text, logprobs in reply.tokens:
        groups.append([chunk(delta(content=text), logprobs)])
    if calls:
        groups.append([chunk(delta(content="", tool_calls=calls))])
    last = [] if not first else [chunk(delta(content=""))]  # a wholly empty answer still opens with a role
    last.append(chunk({}, finish_reason=finish))
    if include_usage:
        last.append({**base, "choices": [], "usage": usage})
    last.append(DONE)
    groups.append(last)
    return groups


def _completion_order(chunk: dict, include_usage: bool, usage=None) -> dict:
    """openai.CompletionChunk's field order: choices come before model."""
    out = {"id": chunk["id"], "object": "text_completion", "created": chunk["created"], "choices": chunk["choices"],
           "model": chunk["model"], "system_fingerprint": "fp_ollama"}
    if include_usage:
        out["usage"] = usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return out


def _completion_groups(base, reply, calls, finish, usage, include_usage) -> list:
    """The SSE events of a streamed text completion: one per native line, thinking lines with empty text."""
    def chunk(text, finish_reason=None):
        return _completion_order({**base, "choices": [{"text": text, "index": 0, "finish_reason": finish_reason}]},
                                 include_usage)

    groups = [[chunk("")] for _ in reply.thinking] + [[chunk(text)] for text, _ in reply.tokens]
    last = [chunk("", finish)]
    if include_usage:
        last.append(_completion_order({**base, "choices": []}, True, usage))
    last.append(DONE)
    groups.append(last)
    return groups


def _pad_first(groups: list, target: int, chat: bool) -> list:
    for group in groups:
        for i, item in enumerate(group):
            if isinstance(item, dict) and item.get("choices") and _chunk_text(item, chat):
                group[i] = Padded(item, target)
                return groups
    return groups


def _chunk_text(item: dict, chat: bool) -> str:
    choice = item["choices"][0]
    if chat:
        return choice["delta"].get("content") or choice["delta"].get("reasoning") or ""
    return choice.get("text", "")


def _pad_chunk(item: dict, extra: str, chat: bool) -> dict:
    out = json.loads(dumps(dict(item)))
    choice = out["choices"][0]
    if chat:
        key = "content" if choice["delta"].get("content") else "reasoning"
        choice["delta"][key] = choice["delta"].get(key, "") + extra
    else:
        choice["text"] += extra
    return out

