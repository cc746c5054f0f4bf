"""Ollama's own API under /ollama/, behind our keys: for ollama-python, ollama-js, LangChain, Open WebUI.

Requests and answers pass unchanged (see passthrough.py); errors the gateway itself raises come
in Ollama's shape, `{"error": "..."}`, which those clients read.
"""

from __future__ import annotations

import re

from flask import Blueprint, json, request

from .. import observe, passthrough
from ..auth import authenticate, require_model, require_scope
from ..errors import ApiError, ollama_error, register_error_handlers
from ..extensions import current_gateway

bp = Blueprint("ollama", __name__)
register_error_handlers(bp, render=ollama_error)

#: Routes that change what Ollama has installed: admin scope.
ADMIN_ROUTES = {"pull", "push", "create", "copy", "delete"}
#: Routes that stream unless the body says "stream": false.
STREAMING_ROUTES = {"generate", "chat", "pull", "push", "create"}
#: Routes whose answer lists models, filtered to a key's allow-list.
MODEL_LISTS = {"tags", "ps"}
#: Body fields that name models: checked against a key's allow-list.
MODEL_FIELDS = ("model", "name", "source", "destination")
#: A route as Ollama names them: no empty, dot or trailing segments that could dodge the scope check.
_ROUTE = re.compile(r"^[a-z]+(/[A-Za-z0-9:._-]*[A-Za-z0-9_-])*$")


@bp.before_request
def guard():
    """Cap the body, check the key and the scope the route needs."""
    gateway = current_gateway()
    request.max_content_length = gateway.config.max_body_bytes
    route = (request.view_args or {}).get("route", "")
    scope = "admin" if route in ADMIN_ROUTES or route.startswith("blobs") else "use"
    require_scope(authenticate(gateway), scope)
    if route and (not _ROUTE.match(route) or ".." in route):
        raise ApiError(404, "Not Found", f"no route /api/{route}", slug="not-found")
    if route.startswith("blobs") or request.method == "HEAD":
        # Blob uploads are raw files beyond MAX_BODY_BYTES, and HEAD answers carry no body the relay
        # could wait for: neither is relayed.
        raise ApiError(501, "Not Implemented", "blob uploads and HEAD are not relayed by the gateway",
                       slug="not-relayed")


@bp.get("/ollama/")
def root():
    """Ollama's root ("Ollama is running"), as clients probe it.
    ---
    tags: [ollama]
    responses:
      200: {description: "Ollama's answer, unchanged."}
    """
    return passthrough.relay("GET", "/", b"", passthrough.OLLAMA, streaming=False)


@bp.route("/ollama/api/<path:route>", methods=["GET", "POST", "DELETE"])
def api(route):
    """Any Ollama /api/ route, relayed unchanged (pull, push, create, copy, delete and blobs need admin).
    ---
    tags: [ollama]
    description: |
      The body and the answer are Ollama's own: NDJSON streams stay NDJSON, passed on as they
      arrive. The key's model allow-list applies to the `model` named in the body, and filters
      `/api/tags` and `/api/ps`. Errors raised by the gateway are `{"error": "..."}`.
    responses:
      200: {description: "Ollama's answer, unchanged."}
    """
    key = authenticate(current_gateway())
    raw = request.get_data(cache=False)
    body = json_object(raw) if raw else {}
    for field in model_fields(body, MODEL_FIELDS):
        if isinstance(body.get(field), str) and body[field]:
            observe.current().model = observe.current().model or body[field]
            require_model(key, body[field])
    keep = None
    if route in MODEL_LISTS and key.models is not None:
        def keep(answer):
            answer["models"] = key.visible(answer.get("models") or [])
            return answer
    streaming = route in STREAMING_ROUTES and body.get("stream", True) is not False
    return passthrough.relay(request.method, "/api/" + route, raw, passthrough.OLLAMA, streaming, keep)


def model_fields(body: dict, fields: tuple) -> tuple:
    """The model-naming fields, refusing a variant spelling: Ollama (Go) matches JSON keys without
    regard to case, so {"model": "a", "MODEL": "b"} would pass our check as a and run b."""
    for key in body:
        if key.lower() in fields and key not in fields:
            raise ApiError(400, "Ambiguous field", f"{key!r}: write it as {key.lower()!r}", slug="ambiguous-field")
    return fields


def json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "Malformed JSON", f"invalid JSON body: {exc}", slug="malformed-json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Malformed JSON", "the body must be a JSON object", slug="malformed-json")
    return body
