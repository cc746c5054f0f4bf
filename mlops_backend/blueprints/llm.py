"""The keyed LLM routes: list models, generate a whole answer, stream one as SSE."""

from __future__ import annotations

from flask import Blueprint, json, request
from marshmallow import ValidationError

from .. import sse
from ..auth import require_api_key
from ..errors import ApiError, register_error_handlers
from ..extensions import current_gateway

bp = Blueprint("llm", __name__)
register_error_handlers(bp)

GENERATE_FIELDS = ("model", "response", "thinking", "done", "done_reason", "total_duration", "load_duration",
                   "prompt_eval_count", "eval_count", "eval_duration")


@bp.before_request
def guard():
    """Cap the body, then check the key (the request id is assigned before, so a 401 carries it)."""
    gateway = current_gateway()
    request.max_content_length = gateway.config.max_body_bytes
    require_api_key(gateway.config)


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


def generation_payload() -> dict:
    """Validate a generation body and return what to send Ollama (with the default model filled in)."""
    gateway = current_gateway()
    data = gateway.generate_schema.load(json_body())
    data.pop("stream", None)
    if not data.get("model"):
        if not gateway.config.default_model:
            raise ValidationError({"model": ["Missing: name a model (no DEFAULT_MODEL is configured)."]})
        data["model"] = gateway.config.default_model
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
    return {"models": current_gateway().ollama.tags()}


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
    result = current_gateway().ollama.generate(generation_payload())
    return {key: result[key] for key in GENERATE_FIELDS if key in result}


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
          example: {"model": "llama3.2", "prompt": "Why is the sky blue?"}
    responses:
      200:
        description: |
          `text/event-stream`. Each event is one `data:` line holding a JSON object, then a blank line:
          `{"text": "..."}` per piece of the answer, `{"thinking": "..."}` per piece of a thinking
          model's reasoning, and finally either `{"done": true, "done_reason", "total_duration",
          "load_duration", "prompt_eval_count", "eval_count", "eval_duration"}` or
          `{"error": {"title", "status", "detail"}, "done": true}`. Lines starting with `:` are
          heartbeats sent while Ollama is silent; ignore them.
        content:
          text/event-stream:
            schema: StreamEvent
            example: "data: {\\"text\\":\\"The\\"}\\n\\ndata: {\\"done\\":true,\\"done_reason\\":\\"stop\\",\\"eval_count\\":2}\\n\\n"
    """
    gateway = current_gateway()
    payload = generation_payload()
    config = gateway.config
    return sse.stream_response(lambda: gateway.ollama.open_stream("/api/generate", payload),
                               config.sse_heartbeat_seconds, config.stream_status_wait)
