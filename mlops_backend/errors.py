"""Turn every failure into one RFC 9457 problem+json body, for responses and stream events alike."""

from __future__ import annotations

import logging
from functools import partial

from flask import Response, current_app, g, json, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from .observability import observe
from .upstream.client import OllamaError

log = logging.getLogger(__name__)

PROBLEM_MIMETYPE = "application/problem+json"
TYPE_BASE = "urn:mlops-backend:problem:"

#: Ollama failure kind -> (HTTP status, title). The README's error table mirrors this one.
OLLAMA_PROBLEMS = {
    "model_not_found": (404, "Model not found"),
    "rejected": (400, "Rejected by Ollama"),
    "unreachable": (503, "Ollama unreachable"),
    "busy": (503, "Ollama busy"),
    "timeout": (504, "Ollama timed out"),
    "bad_response": (502, "Bad response from Ollama"),
    "model_error": (502, "Ollama reported an error"),
    "upstream_error": (502, "Ollama failed"),
}


class ClientGone(Exception):
    """The client left while we waited on Ollama: nobody to answer (answered 499, to no one)."""


class ApiError(Exception):
    """An error our own code raises with a status, a title and a detail for the client."""

    def __init__(self, status: int, title: str, detail: str, *, slug: str | None = None, headers=None):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.slug = slug or title.lower().replace(" ", "-")
        self.headers = headers or {}


def problem_body(status: int, title: str, detail: str, slug: str, **extra) -> dict:
    """Build the problem object: the one shape of every error the gateway reports."""
    body = {"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    body.update(extra)
    request_id = g.get("request_id") if g else None
    if request_id:
        body["request_id"] = request_id
    return body


def problem_response(status: int, title: str, detail: str, slug: str, headers=None, **extra) -> Response:
    """Return a problem+json response."""
    body = problem_body(status, title, detail, slug, **extra)
    response = current_app.response_class(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    response.headers.update(headers or {})
    return response


def describe_ollama_error(error: OllamaError) -> tuple[int, str, str]:
    """Return (status, title, slug) for an Ollama failure."""
    status, title = OLLAMA_PROBLEMS.get(error.kind, OLLAMA_PROBLEMS["upstream_error"])
    return status, title, error.kind.replace("_", "-")


def stream_error_body(error: Exception) -> dict:
    """Return the final SSE event's object for a failure during a started stream."""
    if isinstance(error, OllamaError):
        status, title, _ = describe_ollama_error(error)
        detail = error.detail
    else:
        status, title, detail = 502, "Stream failed", "The stream from Ollama ended unexpectedly"
    return {"error": {"title": title, "status": status, "detail": detail}, "done": True}


def handle_ollama_error(error: OllamaError, render=None):
    """Map an Ollama failure to its documented status."""
    status, title, slug = describe_ollama_error(error)
    observe.current().upstream_error = error.kind
    headers = {"Retry-After": error.retry_after} if error.retry_after else None
    return (render or problem_response)(status, title, error.detail, slug, headers)


def handle_api_error(error: ApiError, render=None):
    """Render an error our own code raised."""
    return (render or problem_response)(error.status, error.title, error.detail, error.slug, error.headers)


def handle_validation_error(error: ValidationError, render=None):
    """Answer 422 naming every bad field."""
    errors = list(_flatten(error.messages))
    names = ", ".join(sorted({e["field"] for e in errors}))
    return (render or problem_response)(422, "Invalid request body", f"Invalid fields: {names}", "validation-error",
                                        errors=errors)


def handle_http_exception(error: HTTPException, render=None):
    """Render Werkzeug's HTTP errors (404, 405, 413, ...) as problems, keeping their headers."""
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    if error.code == 413:
        # Close instead of draining an oversized body we refused to read.
        headers["Connection"] = "close"
    detail = error.description or error.name
    if error.code == 404:
        detail = f"No route for {request.path}"
    elif error.code == 405:
        detail = f"{request.method} is not allowed on {request.path}"
    elif error.code == 413:
        detail = f"The body exceeds the limit of {request.max_content_length} bytes"
    slug = error.name.lower().replace(" ", "-")
    return (render or problem_response)(error.code or 500, error.name, detail, slug, headers)


def handle_unexpected(error: Exception, render=None):
    """Log a bug with its traceback and tell the client only that it happened."""
    if isinstance(error, HTTPException):
        return handle_http_exception(error, render)
    log.exception("Unhandled error on %s %s", request.method, request.path)
    return (render or problem_response)(500, "Internal Server Error", "The gateway failed; the request id identifies it in the logs",
                            "internal-error")


def handle_client_gone(error: ClientGone, render=None):
    """No one is left to read an answer; 499 (nginx's 'client closed request') is for the log line."""
    return Response(status=499)


HANDLERS = (
    (ClientGone, handle_client_gone),
    (OllamaError, handle_ollama_error),
    (ApiError, handle_api_error),
    (ValidationError, handle_validation_error),
    (HTTPException, handle_http_exception),
    (Exception, handle_unexpected),
)


def register_error_handlers(target, render=None):
    """Attach every handler to an app (all its routes) or to a blueprint (only its routes).

    `render(status, title, detail, slug, headers, **extra)` shapes the body: problem+json by
    default; the pass-through routes answer in Ollama's or OpenAI's own error shape.
    """
    for exc_class, handler in HANDLERS:
        target.register_error_handler(exc_class, partial(handler, render=render) if render else handler)


def ollama_error(status: int, title: str, detail: str, slug: str, headers=None, **extra) -> Response:
    """Ollama's error shape, `{"error": "..."}`, which its clients read (ollama-python's ResponseError)."""
    response = current_app.response_class(json.dumps({"error": detail}), status=status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


#: OpenAI's error `type` by status; `code` is our slug.
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


def openai_error(status: int, title: str, detail: str, slug: str, headers=None, **extra) -> Response:
    """OpenAI's error shape, `{"error": {"message", "type", "code"}}`, which its SDKs read."""
    body = {"error": {"message": detail, "type": OPENAI_TYPES.get(status, "api_error"), "param": None,
                      "code": slug.replace("-", "_")}}
    response = current_app.response_class(json.dumps(body), status=status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


#: Anthropic's error `type` by status (its SDKs pick the exception class by status).
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                   415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
                   503: "overloaded_error", 529: "overloaded_error"}


def anthropic_error_body(status: int, message: str) -> dict:
    """Anthropic's error object, `{"type": "error", "error": {"type", "message"}}`."""
    return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}


def anthropic_error(status: int, title: str, detail: str, slug: str, headers=None, **extra) -> Response:
    """Anthropic's error shape, which its SDKs (and Claude Code) read; with the request id, as Anthropic sends it."""
    body = anthropic_error_body(status, detail)
    request_id = g.get("request_id") if g else None
    if request_id:
        body["request_id"] = request_id
    response = current_app.response_class(json.dumps(body), status=status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def v1_error(status: int, title: str, detail: str, slug: str, headers=None, **extra) -> Response:
    """Under /v1/ (and /ollama/v1/): Anthropic's shape on the Messages API, OpenAI's on the others."""
    render = anthropic_error if "/v1/messages" in request.path else openai_error
    return render(status, title, detail, slug, headers, **extra)


def by_path(status: int, title: str, detail: str, slug: str, headers=None, **extra) -> Response:
    """The app's own handler (routes no blueprint matched): each API's shape under its prefix, else problem+json."""
    path = request.path
    if path.startswith(("/v1/", "/ollama/v1/")):
        return v1_error(status, title, detail, slug, headers, **extra)
    if path.startswith("/ollama/") or path == "/ollama":
        return ollama_error(status, title, detail, slug, headers, **extra)
    return problem_response(status, title, detail, slug, headers, **extra)


def _flatten(messages, prefix=""):
    """Yield {field, message} entries from marshmallow's nested message dicts."""
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = (prefix or "body") if key == "_schema" else (f"{prefix}.{key}" if prefix else str(key))
            yield from _flatten(value, name)
    elif isinstance(messages, list):
        for item in messages:
            yield from _flatten(item, prefix)
    else:
        yield {"field": prefix or "body", "message": str(messages)}
