"""The keyed LLM routes: models, generate, chat and embed, whole or streamed as SSE."""

from __future__ import annotations

from flask import Blueprint, json, request
from marshmallow import ValidationError

from ..observability import observe

from ..streaming import sse
from ..security.auth import authenticate, permit_model, require_scope
from ..errors import ApiError, register_error_handlers
from ..extensions import current_gateway

bp = Blueprint("llm", __name__)
register_error_handlers(bp)

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


@bp.before_request
def guard():
    """Cap the body, then check the key and its scope (the request id is assigned before, so a 401 carries it)."""
    gateway = current_gateway()
    request.max_content_length = gateway.config.max_body_bytes
    require_scope(authenticate(gateway), "use")


def use_model(model: str) -> str:
    """Check the key may use `model`, and note it for usage, metrics and the log line."""
    permit_model(authenticate(current_gateway()), model)
    return model


def counted(result: dict) -> dict:
    """Note an answer's token counts, and pass it on."""
    observe.current().statistics(result)
    return result


def json_body() -> dict:
    """Read the body as a JSON object, or fail with 400 (413 past the size limit, before reading it all)."""
    raw = request.get_data(cache=False)
    try:
        body = json.loads(raw) if raw else None
    except ValueError as exc:
        raise ApiError(400, "Malformed JSON", f"The body is not valid JSON: {exc}", slug="malformed-json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Malformed JSON", "The body must be a JSON object", slug="malformed-json")
    return body


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
    if gateway.config.log_prompts:
        observe.current().prompt = {key: data[key] for key in ("system", "prompt", "messages", "input") if key in data}
    return data


@bp.get("/api/llm/models")
def models():
    """List the models installed on Ollama.
    ---
    tags: [llm]
    responses:
      200:
        description: Installed models, each with every field Ollama reports.
        content:
          application/json:
            schema: ModelsResponse
    """
    key = authenticate(current_gateway())
    return {"models": key.visible(current_gateway().ollama.tags())}


def generation(path: str, body: dict) -> dict:
    """Run a whole generation, holding one of the key's slots for generations in flight."""
    gateway = current_gateway()
    observe.current().on_finish.append(gateway.limits.acquire_slot(authenticate(gateway)))
    return counted(gateway.ollama.call(path, body))


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
    return pick(generation("/api/generate", payload("generate")), GENERATE_FIELDS)


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
    observation.on_finish.append(gateway.limits.acquire_slot(authenticate(gateway)))
    return sse.stream_response(lambda: gateway.ollama.open_stream(path, body), config.sse_heartbeat_seconds,
                               config.stream_status_wait, observation, **framing)


@bp.get("/api/llm/models/<path:name>")
def model_details(name):
    """Show one model: capabilities, parameters, template, details and model_info.
    ---
    tags: [models]
    parameters:
      - {name: name, in: path, required: true, schema: {type: string}, example: "llama3.2:latest"}
    responses:
      200:
        description: Ollama's /api/show answer, every field kept.
        content:
          application/json:
            schema: ModelInfo
    """
    return current_gateway().ollama.show(use_model(name))


@bp.get("/api/llm/running")
def running():
    """List the models loaded in memory now.
    ---
    tags: [models]
    responses:
      200:
        description: Loaded models with when they unload (expires_at) and their VRAM use.
        content:
          application/json:
            schema: RunningResponse
    """
    key = authenticate(current_gateway())
    return {"models": key.visible(current_gateway().ollama.running())}


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
    return pick(generation("/api/chat", payload("chat")), CHAT_FIELDS)


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


@bp.post("/api/llm/models/pull")
def pull_model():
    """Download a model to Ollama, streaming its progress as Server-Sent Events (admin scope).
    ---
    tags: [models]
    requestBody:
      required: true
      content:
        application/json:
          schema: PullRequest
          example: {"model": "llama3.2"}
    responses:
      200:
        description: |
          `text/event-stream`: one `{"status", "digest"?, "total"?, "completed"?}` event per progress
          line from Ollama, then `{"done": true, "status": "success"}` or
          `{"error": {"title", "status", "detail"}, "done": true}` (a registry or name error arrives
          this way, after the stream has started). `:` lines are heartbeats.
        content:
          text/event-stream:
            schema: PullEvent
      403:
        description: The key lacks the admin scope, or the model is outside its allow-list.
    """
    require_scope(authenticate(current_gateway()), "admin")
    body = current_gateway().schemas["pull"].load(json_body())
    use_model(body["model"])
    return relay("/api/pull", body, events=sse.progress_events, fast=None)


@bp.delete("/api/llm/models/<path:name>")
def delete_model(name):
    """Delete an installed model from Ollama (admin scope).
    ---
    tags: [models]
    parameters:
      - {name: name, in: path, required: true, schema: {type: string}, example: "llama3.2:latest"}
    responses:
      204:
        description: Deleted.
      403:
        description: The key lacks the admin scope, or the model is outside its allow-list.
    """
    require_scope(authenticate(current_gateway()), "admin")
    current_gateway().ollama.delete(use_model(name))
    return "", 204
