"""The OpenAI-compatible /v1 routes of the double (v0.12.6 chunk style: role in every delta)."""

from __future__ import annotations

import itertools
import time
import zlib
from urllib.parse import unquote

from .transport import ApiError, sse
from .wire import RUNNER_ERROR, dumps, embed_vector, last_user_text, plan_reply, prompt_count, unix_time

_ids = itertools.count(101)
BAD_SSE = b'data: {"choices": tru\n\n'
ERROR_SSE = sse({"error": {"message": RUNNER_ERROR, "type": "api_error", "param": None, "code": None}})


def model_object(model: dict) -> dict:
    """One entry of GET /v1/models."""
    owner = model["name"].split("/")[-2] if "/" in model["name"] else "library"
    return {"id": model["name"], "object": "model", "created": unix_time(model["modified_at"]), "owned_by": owner}


class OpenAIRoutes:
    """Handlers for /v1/*; errors come out in OpenAI's shape via Transport.send_error_json."""

    def v1_models(self):
        # Go marshals an empty slice that was never allocated as null.
        self.send_json({"object": "list", "data": [model_object(m) for m in self.double.models] or None})

    def v1_model(self):
        self.send_json(model_object(self.find_model(unquote(self.route[len("/v1/models/"):]))))

    def v1_chat(self):
        self._completion(chat=True)

    def v1_completions(self):
        self._completion(chat=False)

    def _completion(self, chat: bool):
        req = self.json_body()
        name = req.get("model") or ""
        model = self.find_model(name)
        if chat:
            if not req.get("messages"):
                raise ApiError(400, "[] is too short - 'messages'")
            prompt = last_user_text(req["messages"])
        else:
            prompt = req.get("prompt", "")
            if not isinstance(prompt, str):
                raise ApiError(400, "invalid type for 'prompt' field: only a string is supported")
        script = self.double._snapshot()
        think = False if req.get("reasoning_effort") == "none" or not chat else None
        thinking, tokens, calls = plan_reply(model, {"think": think, "tools": req.get("tools")}, script, prompt, chat)
        thinking = thinking if chat else []
        usage = {"prompt_tokens": prompt_count(prompt), "completion_tokens": len(thinking) + len(tokens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{next(_ids)}", "object": "", "created": int(time.time()),
                "model": name, "system_fingerprint": "fp_ollama"}
        finish = "tool_calls" if calls else "stop"
        tool_calls = [_openai_call(i, c) for i, c in enumerate(calls or [])]
        if req.get("stream") is True:
            rec = self.double._open_stream(self.route, name)
            self.prelude(script, rec)
            items = _chunks(base, chat, thinking, tokens, tool_calls, finish)
            if (req.get("stream_options") or {}).get("include_usage"):
                items.append({**items[-1], "choices": [], "usage": usage})
            items.append(b"data: [DONE]\n\n")
            return self.stream(rec, items, "text/event-stream", script, sse, BAD_SSE, ERROR_SSE)
        self.prelude(script)
        text = "".join(tokens)
        if chat:
            message = {"role": "assistant", "content": text}
            if thinking:
                message["reasoning"] = "".join(thinking)
            if tool_calls:
                message["tool_calls"] = tool_calls
            choice = {"index": 0, "message": message, "finish_reason": finish}
        else:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        kind = "chat.completion" if chat else "text_completion"
        body = {**base, "object": kind, "choices": [choice], "usage": usage}
        self.finish_unstreamed(script, len(tokens) + 1, body, BAD_SSE[6:].rstrip())

    def v1_embeddings(self):
        req = self.json_body()
        name = req.get("model") or ""
        self.find_model(name)
        texts = req.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not texts or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "invalid input type")
        data = [{"object": "embedding", "embedding": embed_vector(t), "index": i} for i, t in enumerate(texts)]
        n = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": n, "total_tokens": n}
        self.send_json({"object": "list", "data": data, "model": name, "usage": usage})


def _openai_call(index: int, call: dict) -> dict:
    # OpenAI carries arguments as a JSON string, unlike Ollama's object.
    fn = call["function"]
    args = dumps(fn["arguments"]).decode()
    return {"id": f"call_{zlib.crc32(args.encode()):08x}", "index": index, "type": "function",
            "function": {"name": fn["name"], "arguments": args}}


def _chunks(base, chat, thinking, tokens, tool_calls, finish) -> list:
    """The SSE chunk objects for one streamed completion, ending with the finish_reason chunk."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(finish_reason=None, text="", **delta):
        if chat:
            delta = {"role": "assistant", "content": text, **delta}
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"text": text, "index": 0, "finish_reason": finish_reason}
        return {**base, "object": kind, "choices": [choice]}

    items = [chunk(reasoning=t) for t in thinking] + [chunk(text=t) for t in tokens]
    items += [chunk(tool_calls=tool_calls)] if tool_calls else []
    return items + [chunk(finish)]

