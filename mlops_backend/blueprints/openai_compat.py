"""The OpenAI- and Anthropic-compatible routes under /v1/ (and /ollama/v1/), relayed to Ollama's own /v1
layer: for the openai and anthropic SDKs, Claude Code, and the many tools built on them.

Bodies and answers pass unchanged (SSE chunks and typed events as they arrive); errors the gateway
itself raises come in the API's own shape: Anthropic's `{"type": "error", "error": {...}}` on
/v1/messages, OpenAI's `{"error": {"message", "type", "code"}}` elsewhere. Real Ollama serves this
layer under its base URL too, so clients given our /ollama URL call /ollama/v1/...: every route
here answers at both.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from flask import Blueprint, Response, request

from ..observability import observe
from ..services import cache as response_cache
from ..streaming import cached, passthrough
from ..security.request_body import read_body
from ..security.auth import authenticate, permit_body, permit_model, require_route
from ..errors import ApiError, register_error_handlers, v1_error
from ..extensions import current_gateway
from ..security.json_body import field, fold, parse_object
from ..services.responses_state import ResponsesError, ResponsesState
from ..upstream import views
from ..upstream.http import sendable_header
from ..upstream.conversations import SESSION_HEADER, session_key
from ..security import audio_form

bp = Blueprint("openai", __name__)
register_error_handlers(bp, render=v1_error)

#: Routes that run a model: each holds one of the key's slots for generations in flight.
GENERATION_ROUTES = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
                     "/v1/audio/transcriptions"}
#: Anthropic's request headers, passed to Ollama as the client sent them.
ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")
#: Where Ollama's base URL serves this layer too.
UNDER_OLLAMA = "/ollama"


def route(rule: str, **options):
    """Register a view at `rule` (a /v1 path) and at /ollama`rule`, one endpoint for both."""
    def register(view):
        bp.add_url_rule(rule, view_func=view, **options)
        bp.add_url_rule(UNDER_OLLAMA + rule, view_func=view, **options)
        return view
    return register


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


def _read_post(path: str):
    """The key, the body as Ollama will get it, and that body parsed, once the key may send it to `path`."""
    key = _key(path)
    raw = read_body()
    body = parse_object(raw)
    permit_body(key, body, ("model",))
    return key, raw, body


#: Routes whose answers the response cache keeps (CACHE_URL).
CACHED_ROUTES = {"/v1/chat/completions", "/v1/completions"}


def _relay_post(path: str, dialect=passthrough.OPENAI, headers: tuple = ()):
    key, raw, body = _read_post(path)
    gateway = current_gateway()
    if path not in CACHED_ROUTES or gateway.cache is False:
        return _send_post(path, raw, body, dialect, headers)
    found = response_cache.lookup(gateway, path, body, key.name, request.headers.get("Cache-Control"))
    chat, streaming = path == "/v1/chat/completions", field(body, "stream") is True
    if found.hit:
        return _replay(found, chat, streaming, body)
    response = _send_post(path, raw, body, dialect, headers)
    if found.storing and response.status_code == 200:
        if streaming:
            response.response = cached.tap(response.response, found, observe.current(), cached.openai_records,
                                           "record", None, response_cache.OpenAICollector(chat))
        else:
            try:
                found.store(response_cache.from_openai(json.loads(response.get_data()), chat))
            except ValueError:
                pass
    response.headers.update(found.headers())
    return response


def _replay(found, chat: bool, streaming: bool, body: dict):
    """A stored answer in OpenAI's shape: SSE chunks then `data: [DONE]` when streamed, else one object."""
    cached.hit(observe.current(), found.entry)
    if not streaming:
        return Response(json.dumps(response_cache.openai_whole(found.entry, chat)), content_type="application/json",
                        headers=found.headers())
    options = field(body, "stream_options")
    usage = isinstance(options, dict) and field(options, "include_usage") is True
    events = b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n"
                      for chunk in response_cache.openai_chunks(found.entry, chat, usage))
    return cached.replay(events + b"data: [DONE]\n\n", "text/event-stream",
                         {**passthrough.HEADERS, **found.headers()})


def _send_post(path: str, raw: bytes, body: dict, dialect, headers: tuple = (), keep=None, rewrite=None):
    streaming = field(body, "stream") is True
    model = field(body, "model")
    conversation = field(body, "messages") if field(body, "messages") is not None else field(body, "input")
    return passthrough.relay("POST", quote(path, safe="/:"), raw, dialect, streaming=streaming,
                             slot=streaming or path in GENERATION_ROUTES, keep=keep, rewrite=rewrite,
                             model=model if isinstance(model, str) and model.strip() else None,
                             session=session_key(request.headers.get(SESSION_HEADER), conversation), headers=headers)


@route("/v1/chat/completions", methods=["POST"])
def chat_completions():
    """OpenAI chat completions (with `stream: true`, SSE chunks then `data: [DONE]`).
    ---
    tags: [openai]
    responses:
      200: {description: "Ollama's OpenAI-compatible answer, unchanged."}
    """
    return _relay_post("/v1/chat/completions")


@route("/v1/completions", methods=["POST"])
def completions():
    """OpenAI legacy completions.
    ---
    tags: [openai]
    responses:
      200: {description: "Ollama's OpenAI-compatible answer, unchanged."}
    """
    return _relay_post("/v1/completions")


@route("/v1/embeddings", methods=["POST"])
def embeddings():
    """OpenAI embeddings.
    ---
    tags: [openai]
    responses:
      200: {description: "Ollama's OpenAI-compatible answer, unchanged."}
    """
    return _relay_post("/v1/embeddings")


@route("/v1/responses", methods=["POST"])
def responses():
    """OpenAI Responses (with `stream: true`, typed SSE events through `response.completed`).
    ---
    tags: [openai]
    description: |
      With RESPONSES_STORE on (the default) and `store` not false, each completed answer is stored
      for the key under an id of the gateway's, and `previous_response_id` (or a `conversation`)
      sends Ollama the key's stored turns before the new input; `instructions` are not inherited.
      An id the key did not store is a 400 `previous_response_not_found`.
    responses:
      200: {description: "Ollama's Responses answer; a stored one with the gateway's id and `store: true`."}
    """
    path = "/v1/responses"
    gateway = current_gateway()
    key, raw, body = _read_post(path)
    if not gateway.config.responses_store:
        return _send_post(path, raw, body, passthrough.RESPONSES)
    try:
        turn = ResponsesState(gateway.database).begin(
            key.name, input=field(body, "input"), previous_id=field(body, "previous_response_id"),
            conversation=field(body, "conversation"), model=field(body, "model"),
            instructions=field(body, "instructions"), store=field(body, "store") is not False)
    except ResponsesError as error:
        raise ApiError(400, "Bad Request", error.message, slug=error.code) from None
    if turn.input is not None:
        # The history comes only from what this key stored; the rest of the body is the client's, checked above.
        body = {k: v for k, v in body.items() if fold(k) not in ("input", "previous_response_id", "conversation")}
        turn.fit(gateway.config.max_body_bytes - len(json.dumps(body)))
        body["input"] = turn.input
        raw = json.dumps(body).encode()
        permit_body(key, body, ("model",))
    if turn.id is None:
        return _send_post(path, raw, body, passthrough.RESPONSES)
    return _send_post(path, raw, body, passthrough.RESPONSES, keep=turn.answer, rewrite=turn.records)


@route("/v1/messages", methods=["POST"])
def messages():
    """Anthropic Messages, as the anthropic SDKs and Claude Code send it (key in `x-api-key` or Bearer).
    ---
    tags: [anthropic]
    description: |
      `anthropic-version` and `anthropic-beta` pass to Ollama. With `stream: true` the events
      (`message_start`, `content_block_delta`, `ping`, `message_delta`, `message_stop`) pass
      unchanged; usage is read from `message_start` and `message_delta`. Errors raised by the
      gateway are Anthropic's `{"type": "error", "error": {"type", "message"}}`.
    responses:
      200: {description: "Ollama's Messages answer, unchanged."}
    """
    headers = tuple((name, request.headers[name]) for name in ANTHROPIC_HEADERS if name in request.headers)
    for name, value in headers:
        if not sendable_header(name, value):
            raise ApiError(400, "Bad Request", f"The {name} header must be printable ASCII", slug="bad-header")
    return _relay_post("/v1/messages", passthrough.ANTHROPIC, headers)


@route("/v1/audio/transcriptions", methods=["POST"])
def audio_transcriptions():
    """OpenAI audio transcriptions: multipart, the audio file at most MAX_AUDIO_BYTES (413 beyond).
    ---
    tags: [openai]
    description: |
      The form is read, its `model` checked against the key's allow-list, and sent to Ollama
      re-encoded with the fields Ollama reads (`model`, `file`, `language`, `prompt`,
      `response_format`, `temperature`), so Ollama parses exactly what the gateway checked.
    responses:
      200: {description: "Ollama's transcription (JSON, or text for `response_format=text`), unchanged."}
    """
    path = "/v1/audio/transcriptions"
    key = _key(path)
    form = audio_form.read_form(current_gateway().config.max_audio_bytes)
    permit_model(key, form.model)
    return passthrough.relay("POST", path, form.body, passthrough.OPENAI, streaming=False, slot=True,
                             model=form.model, content_type=form.content_type)


@route("/v1/models", methods=["GET"])
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


@route("/v1/models/<path:model>", methods=["GET"])
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


@route("/v1/<path:route>", methods=["GET", "POST", "DELETE"])
def other(route):
    """Any other /v1 route: 403 unless OPEN_UPSTREAM_ROUTES opens it, then relayed like the routes above
    (`/v1/messages/...` in Anthropic's dialect).
    ---
    tags: [openai]
    responses:
      200: {description: "Ollama's OpenAI-compatible answer, unchanged."}
    """
    if "//" in route or route.startswith(".") or "/." in route:
        raise ApiError(404, "Not Found", f"no route /v1/{route}", slug="not-found")
    if request.method == "POST":
        dialect = passthrough.ANTHROPIC if route.startswith("messages/") else passthrough.OPENAI
        return _relay_post("/v1/" + route, dialect)
    _key("/v1/" + route)
    method = "GET" if request.method == "HEAD" else request.method
    return passthrough.relay(method, "/v1/" + quote(route, safe="/:"), b"", passthrough.OPENAI, streaming=False,
                             slot=False)
