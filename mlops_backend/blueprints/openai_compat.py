"""OpenAI-compatible routes under /v1/, relayed to Ollama's own /v1 layer: for the openai SDKs and
the many tools built on them.

Bodies and answers pass unchanged (SSE `data:` chunks and `data: [DONE]` as they arrive); errors
the gateway itself raises come in OpenAI's shape, `{"error": {"message", "type", "code"}}`.
"""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, request

from ..streaming import passthrough
from ..security.auth import authenticate, permit_body, permit_model, require_route
from ..errors import ApiError, openai_error, register_error_handlers
from ..extensions import current_gateway
from ..security.json_body import field, parse_object
from ..upstream import views
from ..upstream.conversations import SESSION_HEADER, session_key

bp = Blueprint("openai", __name__)
register_error_handlers(bp, render=openai_error)

#: Routes that run a model: each holds one of the key's slots for generations in flight.
GENERATION_ROUTES = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}


@bp.before_request
def guard():
    """Cap the body; check the key (`Authorization: Bearer`, as the SDKs send it, or X-API-Key)."""
    gateway = current_gateway()
    request.max_content_length = gateway.config.max_body_bytes
    authenticate(gateway)


def _key(path: str):
    """The request's key, once it may call `path` (each view names the upstream route it relays)."""
    gateway = current_gateway()
    key = authenticate(gateway)
    require_route(key, request.method, path, gateway.config.open_upstream_routes)
    return key


def _relay_post(path: str):
    key = _key(path)
    raw = request.get_data(cache=False)
    body = parse_object(raw)
    permit_body(key, body, ("model",))
    streaming = field(body, "stream") is True
    model = field(body, "model")
    return passthrough.relay("POST", quote(path, safe="/:"), raw, passthrough.OPENAI, streaming=streaming,
                             slot=streaming or path in GENERATION_ROUTES,
                             model=model if isinstance(model, str) and model.strip() else None,
                             session=session_key(request.headers.get(SESSION_HEADER), field(body, "messages")))


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
    key = _key("/v1/models")
    router = current_gateway().upstreams
    if not router.single:
        listed = views.merged(router, "/v1/models", "data", "id")
        data = [{k: v for k, v in entry.items() if k != "upstreams"} for entry in key.visible(listed, field="id")]
        return {"object": "list", "data": data}
    keep = None
    if key.models is not None:
        def keep(answer):
            answer["data"] = key.visible(answer.get("data") or [], field="id")
            return answer
    return passthrough.relay("GET", "/v1/models", b"", passthrough.OPENAI, streaming=False, slot=False, keep=keep)


@bp.get("/v1/models/<path:model>")
def model(model):
    """One OpenAI model object.
    ---
    tags: [openai]
    responses:
      200: {description: "Ollama's OpenAI-compatible answer, unchanged."}
    """
    permit_model(_key("/v1/models/" + model), model)
    return passthrough.relay("GET", "/v1/models/" + quote(model, safe=":"), b"", passthrough.OPENAI,
                             streaming=False, slot=False, model=model)


@bp.route("/v1/<path:route>", methods=["GET", "POST", "DELETE"])
def other(route):
    """Any other /v1 route: 403 unless OPEN_UPSTREAM_ROUTES opens it, then relayed like the routes above.
    ---
    tags: [openai]
    responses:
      200: {description: "Ollama's OpenAI-compatible answer, unchanged."}
    """
    if "//" in route or route.startswith(".") or "/." in route:
        raise ApiError(404, "Not Found", f"no route /v1/{route}", slug="not-found")
    if request.method == "POST":
        return _relay_post("/v1/" + route)
    _key("/v1/" + route)
    method = "GET" if request.method == "HEAD" else request.method
    return passthrough.relay(method, "/v1/" + quote(route, safe="/:"), b"", passthrough.OPENAI, streaming=False,
                             slot=False)
