"""What every keyed route of ours does first: cap the body, check the key and its scope, read the JSON."""

from __future__ import annotations

from flask import json, request

from ..errors import ApiError
from ..extensions import current_gateway
from ..security.request_body import read_body
from ..security.auth import authenticate, permit_model, require_scope


def guard():
    """Cap the body, then check the key and its scope (the request id is assigned before, so a 401 carries it)."""
    gateway = current_gateway()
    request.max_content_length = gateway.config.max_body_bytes
    require_scope(authenticate(gateway), "use")


def use_model(model: str) -> str:
    """Check the key may use `model`, and note it for usage, metrics and the log line."""
    permit_model(authenticate(current_gateway()), model)
    return model


def json_body() -> dict:
    """Read the body as a JSON object, or fail with 400 (413 past the size limit, before reading it all)."""
    raw = read_body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError as exc:
        raise ApiError(400, "Malformed JSON", f"The body is not valid JSON: {exc}", slug="malformed-json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Malformed JSON", "The body must be a JSON object", slug="malformed-json")
    return body
