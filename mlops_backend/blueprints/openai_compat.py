"""OpenAI-compatible routes under /v1/, relayed to Ollama's own /v1 layer: for the openai SDKs and
the many tools built on them.

Bodies and answers pass unchanged (SSE `data:` chunks and `data: [DONE]` as they arrive); errors
the gateway itself raises come in OpenAI's shape, `{"error": {"message", "type", "code"}}`.
"""

from __future__ import annotations

from flask import Blueprint, request

from .. import observe, passthrough
from ..auth import authenticate, require_model, require_scope
from ..errors import openai_error, register_error_handlers
from ..extensions import current_gateway
from .ollama_native import json_object, model_fields

bp = Blueprint("openai", __name__)
register_error_handlers(bp, render=openai_error)


@bp.before_request
def guard():
    """Cap the body; check the key (`Authorization: Bearer`, as the SDKs send it, or X-API-Key)."""
    gateway = current_gateway()
    request.max_content_length = gateway.config.max_body_bytes
    require_scope(authenticate(gateway), "use")


def _relay_post(path: str):
    key = authenticate(current_gateway())
    raw = request.get_data(cache=False)
    body = json_object(raw)
    model_fields(body, ("model",))
    model = body.get("model")
    if isinstance(model, str) and model:
        observe.current().model = model
        require_model(key, model)
    return passthrough.relay("POST", path, raw, passthrough.OPENAI, streaming=body.get("stream") is True)


@bp.post("/v1/chat/completions")
def chat_completions():
    """OpenAI chat completions (with `stream: true`, SSE chunks then `data: [DONE]`).
    ---
    tags: [openai]
    responses:
      200: {description: "Ollama's OpenAI-compatible answer, unchanged."}
    """
    return _relay_post("/v1/chat/completions")


@bp.post("/v1/completions")
def completions():
    """OpenAI legacy completions.
    ---
    tags: [openai]
    responses:
      200: {description: "Ollama's OpenAI-compatible answer, unchanged."}
    """
    return _relay_post("/v1/completions")


@bp.post("/v1/embeddings")
def embeddings():
    """OpenAI embeddings.
    ---
    tags: [openai]
    responses:
      200: {description: "Ollama's OpenAI-compatible answer, unchanged."}
    """
    return _relay_post("/v1/embeddings")


@bp.get("/v1/models")
def models():
    """OpenAI model list (only the key's models, if it has an allow-list).
    ---
    tags: [openai]
    responses:
      200: {description: "`{\\"object\\": \\"list\\", \\"data\\": [...]}`"}
    """
    key = authenticate(current_gateway())
    keep = None
    if key.models is not None:
        def keep(answer):
            answer["data"] = key.visible(answer.get("data") or [], field="id")
            return answer
    return passthrough.relay("GET", "/v1/models", b"", passthrough.OPENAI, streaming=False, keep=keep)


@bp.get("/v1/models/<path:model>")
def model(model):
    """One OpenAI model object.
    ---
    tags: [openai]
    responses:
      200: {description: "Ollama's OpenAI-compatible answer, unchanged."}
    """
    observe.current().model = model
    require_model(authenticate(current_gateway()), model)
    return passthrough.relay("GET", "/v1/models/" + model, b"", passthrough.OPENAI, streaming=False)
