"""The keyed LLM routes: generate, chat and embed, whole or streamed as SSE, each routed to an upstream."""

from __future__ import annotations

from flask import Blueprint, json, request
from marshmallow import ValidationError

from ..errors import ApiError, register_error_handlers
from ..extensions import current_gateway
from ..observability import observe
from ..security.auth import authenticate
from ..services import cache as response_cache
from ..streaming import cached, sse
from ..upstream.conversations import SESSION_HEADER, session_key
from .common import guard, json_body, use_model
from .services import document_messages, service_errors

bp = Blueprint("llm", __name__)
register_error_handlers(bp)
bp.before_request(guard)
service_errors(bp)

STATISTICS = ("done", "done_reason", "total_duration", "load_duration", "prompt_eval_count",
              "prompt_eval_duration", "eval_count", "eval_duration")
GENERATE_FIELDS = ("model", "response", "thinking") + STATISTICS
CHAT_FIELDS = ("model", "message") + STATISTICS
EMBED_FIELDS = ("model", "embeddings", "prompt_eval_count")
#: Left out of answers: generate's deprecated `context` (thousands of token ids nobody asked for).
DROPPED = {"context"}


def pick(result: dict, keys: tuple) -> dict:
    """The documented fields of an Ollama answer in the documented order, then every other one it sent
    (newer statistics, logprobs, remote_model ...), so nothing Ollama reports is lost."""
    answer = {key: result[key] for key in keys if key in result}
    answer.update((key, value) for key, value in result.items() if key not in answer and key not in DROPPED)
    return answer


def counted(result: dict) -> dict:
    """Note an answer's token counts, and pass it on."""
    observe.current().statistics(result)
    return result


def payload(kind: str) -> dict:
    """Validate a body with the `kind` schema; return what to send Ollama (default model filled in)."""
    gateway = current_gateway()
    data = gateway.schemas[kind].load(json_body())
    data.pop("stream", None)
    if not data.get("model"):
        if not gateway.config.default_model:
            raise ValidationError({"model": ["Missing: name a model (no DEFAULT_MODEL is configured)."]})
        data["model"] = gateway.config.default_model
    use_model(data["model"])
    if "documents" in data:
        data["messages"] = with_documents(gateway, data["messages"], data.pop("documents"))
    if gateway.config.log_prompts:
        observe.current().prompt = {key: data[key] for key in ("system", "prompt", "messages", "input") if key in data}
    return data


def with_documents(gateway, messages: list[dict], document_ids: list[str]) -> list[dict]:
    """The messages with the named documents after the leading system messages (see services/retrieval.py)."""
    question = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    carried = document_messages(gateway, authenticate(gateway).name, document_ids, question)
    start = next((i for i, m in enumerate(messages) if m.get("role") != "system"), len(messages))
    return messages[:start] + carried + messages[start:]


def route(body: dict) -> dict:
    """Where a generation goes: its model, its conversation (X-Session-ID, or its first messages), and the
    observation that learns which upstream served it."""
    return {"model": body["model"], "session": session_key(request.headers.get(SESSION_HEADER), body.get("messages")),
            "note": observe.current().served_by}


def lookup(path: str, body: dict) -> response_cache.Lookup:
    """The request's dealings with the response cache (services/cache.py); NONE when there is none."""
    gateway = current_gateway()
    if gateway.cache is False:
        return response_cache.NONE
    return response_cache.lookup(gateway, path, body, authenticate(gateway).name, request.headers.get("Cache-Control"))


def whole(path: str, body: dict, fields: tuple):
    """A whole generate or chat answer: from the cache when it has it, else from Ollama (then kept if asked)."""
    found = lookup(path, body)
    if found.hit:
        cached.hit(observe.current(), found.entry)
        return pick(response_cache.ollama_whole(found.entry, path == "/api/chat"), fields), 200, found.headers()
    result = generation(path, body)
    if found.storing:
        found.store(response_cache.from_ollama(result))
    return pick(result, fields), 200, found.headers()


def generation(path: str, body: dict) -> dict:
    """Run a whole generation, holding one of the key's slots for generations in flight."""
    gateway = current_gateway()
    observe.current().on_finish.append(gateway.limits.acquire_slot(authenticate(gateway)))
    return counted(gateway.upstreams.call(path, body, **route(body)))


@bp.post("/api/llm/generate")
def generate():
    """Generate a whole answer in one response.
    ---
    tags: [llm]
    requestBody:
      required: true
      content:
        application/json:
          schema: GenerateRequest
          example: {"model": "llama3.2", "prompt": "Why is the sky blue?", "options": {"temperature": 0.2}}
    responses:
      200:
        description: The answer and Ollama's statistics (durations in nanoseconds).
        content:
          application/json:
            schema: GenerateResponse
    """
    return whole("/api/generate", payload("generate"), GENERATE_FIELDS)


@bp.post("/api/llm/stream")
def stream():
    """Stream an answer as Server-Sent Events, one event per upstream chunk.
    ---
    tags: [llm]
    requestBody:
      required: true
      content:
        application/json:
          schema: GenerateRequest
          examples:
            answer: {value: {"model": "llama3.2", "prompt": "Why is the sky blue?"}}
            thinking: {value: {"model": "qwen3", "prompt": "Why is the sky blue?", "think": true}}
    responses:
      200:
        description: |
          `text/event-stream`. Each event is one `data:` line holding a JSON object, then a blank line:
          `{"text": "..."}` per piece of the answer, `{"thinking": "..."}` per piece of a thinking
          model's reasoning (either may carry `logprobs`), and finally either `{"done": true, ...}` with
          every statistic Ollama sent (`done_reason`, `total_duration`, `load_duration`,
          `prompt_eval_count`, `prompt_eval_duration`, `eval_count`, `eval_duration`, ...) or
          `{"error": {"title", "status", "detail"}, "done": true}`. Objects may gain fields. Lines
          starting with `:` are heartbeats sent while Ollama is silent; ignore them.
        content:
          text/event-stream:
            schema: StreamEvent
            example: "data: {\\"text\\":\\"The\\"}\\n\\ndata: {\\"done\\":true,\\"done_reason\\":\\"stop\\",\\"eval_count\\":2}\\n\\n"
    """
    return relay("/api/generate", payload("generate"))


def relay(path: str, body: dict, **framing):
    """Answer with the SSE relay of a streamed Ollama call, holding one of the key's slots."""
    gateway = current_gateway()
    config = gateway.config
    observation = observe.current()
    found = response_cache.NONE if framing else lookup(path, body)
    if found.hit:
        cached.hit(observation, found.entry)
        events = b"".join(sse.event(item) for item in response_cache.sse_events(found.entry))
        return cached.replay(events, sse.CONTENT_TYPE, {**sse.HEADERS, **found.headers()})
    observation.on_finish.append(gateway.limits.acquire_slot(authenticate(gateway)))
    raw = json.dumps({"stream": True, **body}).encode()
    response = sse.stream_response(lambda: gateway.upstreams.open("POST", path, raw, **route(body)), config,
                                   observation, **framing)
    if found.storing:
        response.response = cached.tap(response.response, found, observation, cached.sse_records, "sse_event",
                                       body["model"])
    response.headers.update(found.headers())
    return response


@bp.post("/api/llm/chat")
def chat():
    """Answer a conversation in one response.
    ---
    tags: [chat]
    requestBody:
      required: true
      content:
        application/json:
          schema: ChatRequest
          example: {"model": "llama3.2", "messages": [{"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": "Why is the sky blue?"}]}
    responses:
      200:
        description: The assistant's message (with thinking and tool_calls when the model gives them) and statistics.
        content:
          application/json:
            schema: ChatResponse
    """
    return whole("/api/chat", payload("chat"), CHAT_FIELDS)


@bp.post("/api/llm/chat/stream")
def chat_stream():
    """Stream a conversation's answer as Server-Sent Events (the grammar of /api/llm/stream).
    ---
    tags: [chat]
    requestBody:
      required: true
      content:
        application/json:
          schema: ChatRequest
          examples:
            joke: {value: {"messages": [{"role": "user", "content": "Tell me a joke."}]}}
            tool call:
              value: {"messages": [{"role": "user", "content": "What is the weather in Tokyo?"}],
                      "tools": [{"type": "function", "function": {"name": "get_weather",
                                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}
    responses:
      200:
        description: |
          `text/event-stream`: `{"text"}` per piece of the answer, `{"thinking"}` per piece of
          reasoning (either may carry `logprobs`), `{"tool_calls": [...]}` when the model calls tools,
          then the final `{"done": true, ...statistics}` or `{"error": {...}, "done": true}`; objects
          may gain fields; `:` lines are heartbeats.
        content:
          text/event-stream:
            schema: ChatStreamEvent
    """
    return relay("/api/chat", payload("chat"))


@bp.post("/api/llm/embed")
def embed():
    """Embed one text or a list of texts (one L2-normalised vector each, in order).
    ---
    tags: [embeddings]
    requestBody:
      required: true
      content:
        application/json:
          schema: EmbedRequest
          example: {"model": "all-minilm", "input": ["The sky is blue.", "Grass is green."]}
    responses:
      200:
        description: The vectors.
        content:
          application/json:
            schema: EmbedResponse
    """
    body = payload("embed")
    texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
    size, limit = sum(len(text.encode()) for text in texts), current_gateway().config.embed_max_bytes
    if size > limit:
        raise ApiError(413, "Inputs too large", f"The inputs total {size} bytes; EMBED_MAX_BYTES is {limit}",
                       slug="inputs-too-large")
    return pick(generation("/api/embed", body), EMBED_FIELDS)
