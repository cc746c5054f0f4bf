"""Ollama's own API under /ollama/, behind our keys: for ollama-python, ollama-js, LangChain, Open WebUI.

Requests and answers pass unchanged (see passthrough.py); errors the gateway itself raises come
in Ollama's shape, `{"error": "..."}`, which those clients read. Only the routes route_policy.py
lists are relayed, each for the scope it names; every other route answers 403.
"""

from __future__ import annotations

import json
import re

from flask import Blueprint, Response, request

from ..observability import observe
from ..services import cache as response_cache
from ..streaming import cached, passthrough
from ..security.request_body import read_body
from ..security.auth import authenticate, permit_body, presented_key, require_route
from ..errors import ApiError, ollama_error, register_error_handlers
from ..extensions import current_gateway
from ..security.json_body import field, parse_object
from ..upstream import views
from ..upstream.conversations import SESSION_HEADER, session_key

bp = Blueprint("ollama", __name__)
register_error_handlers(bp, render=ollama_error)

#: Routes that stream unless the body says "stream": false.
STREAMING_ROUTES = {"generate", "chat", "pull", "push", "create"}
#: Routes that run a model: each holds one of the key's slots for generations in flight.
GENERATION_ROUTES = {"generate", "chat", "embed", "embeddings"}
#: Routes whose answer lists models, filtered to a key's allow-list.
MODEL_LISTS = {"tags", "ps"}
#: Body fields that name models (copy's source and destination, create's from): each is checked.
MODEL_FIELDS = ("model", "name", "source", "destination", "from")
#: The fields whose model decides which upstream serves the request (show's legacy name, copy's source).
ROUTING_FIELDS = ("model", "name", "source")
#: Routes that change what an upstream has: with several upstreams, ?upstream= names the one.
ADMIN_ROUTES = {"pull", "push", "create", "copy", "delete"}
#: Answers made of every upstream's, with several upstreams.
MERGED = {"tags", "ps", "version"}
#: A route as Ollama names them: no empty, dot or trailing segments.
_ROUTE = re.compile(r"^[a-z]+(/[A-Za-z0-9:._-]*[A-Za-z0-9_-])*$")


#: What load balancers, uptime checks and clients' connection tests probe: public with OLLAMA_VERSION_PUBLIC.
PROBES = {"/ollama/", "/ollama/api/version"}


def public_probe() -> bool:
    """True for a probe sent without a key while OLLAMA_VERSION_PUBLIC holds (a key that is sent is checked)."""
    return (current_gateway().config.ollama_version_public and request.method in ("GET", "HEAD")
            and presented_key() is None and _path() in PROBES)


def _path() -> str:
    """The request's route as route_policy names it."""
    route = (request.view_args or {}).get("route")
    return "/ollama/" + ("" if route is None else "api/" + route)


@bp.before_request
def guard():
    """Cap the body, check the key, and the scope its route needs (no scope opens an unlisted route)."""
    gateway = current_gateway()
    request.max_content_length = gateway.config.max_body_bytes
    if public_probe():
        return
    key = authenticate(gateway)
    if request.method == "OPTIONS":
        return
    route = (request.view_args or {}).get("route")
    if route is not None and (not _ROUTE.match(route) or ".." in route):
        raise ApiError(404, "Not Found", f"no route /api/{route}", slug="not-found")
    require_route(key, request.method, _path(), gateway.config.open_upstream_routes)


@bp.get("/ollama/")
def root():
    """Ollama's root ("Ollama is running"), as clients probe it.
    ---
    tags: [ollama]
    responses:
      200: {description: "Ollama's answer, unchanged."}
    """
    return passthrough.relay("GET", "/", b"", passthrough.OLLAMA, streaming=False, slot=False)


@bp.route("/ollama/api/<path:route>", methods=["GET", "POST", "DELETE"])
def api(route):
    """An Ollama /api/ route, relayed unchanged (see the README for which routes each scope may call).
    ---
    tags: [ollama]
    description: |
      The body and the answer are Ollama's own: NDJSON streams stay NDJSON, passed on as they
      arrive. The key's model allow-list applies to every field that names a model (`model`,
      `name`, `source`, `destination`, `from`), and filters `/api/tags` and `/api/ps`. Routes
      not listed for a scope answer 403. Errors raised by the gateway are `{"error": "..."}`.
    responses:
      200: {description: "Ollama's answer, unchanged."}
    """
    gateway = current_gateway()
    router = gateway.upstreams
    if public_probe():
        return version()
    key = authenticate(gateway)
    raw = read_body()
    body = parse_object(raw) if raw else {}
    permit_body(key, body, MODEL_FIELDS)
    # HEAD gets GET's answer without its body (Werkzeug drops it), as Ollama's own HEAD routes do.
    method = "GET" if request.method == "HEAD" else request.method
    if not router.single and method == "GET" and route in MERGED:
        return merged(route, key)
    upstream = request.args.get("upstream")
    if not router.single and route in ADMIN_ROUTES and upstream is None:
        raise ApiError(400, "Name the upstream", f"Several Ollama servers are behind this gateway: name the one for "
                       f"/api/{route} with ?upstream= ({', '.join(router.by_name)}); /api/llm/models/pull and "
                       "DELETE /api/llm/models/<name> act on all of them", slug="upstream-required")
    keep = None
    if route in MODEL_LISTS and key.models is not None:
        def keep(answer):
            answer["models"] = key.visible(answer.get("models") or [])
            return answer
    streaming = route in STREAMING_ROUTES and field(body, "stream", True) is not False
    model = next((value for value in (field(body, name) for name in ROUTING_FIELDS)
                  if isinstance(value, str) and value.strip()), None)
    found = response_cache.NONE
    if method == "POST" and route in CACHED_ROUTES and gateway.cache is not False:
        found = response_cache.lookup(gateway, "/api/" + route, body, key.name, request.headers.get("Cache-Control"))
        if found.hit:
            return replay(found, route == "chat", streaming)
    response = passthrough.relay(method, "/api/" + route, raw, passthrough.OLLAMA, streaming=streaming,
                                 slot=streaming or route in GENERATION_ROUTES, keep=keep, model=model,
                                 session=session_key(request.headers.get(SESSION_HEADER), field(body, "messages")),
                                 upstream=upstream)
    if found.storing and response.status_code == 200:
        if streaming:
            response.response = cached.tap(response.response, found, observe.current(), cached.ndjson_records,
                                           "ollama_line", model)
        else:
            try:
                found.store(response_cache.from_ollama(json.loads(response.get_data())))
            except ValueError:
                pass
    response.headers.update(found.headers())
    return response


#: Routes whose answers the response cache keeps (CACHE_URL).
CACHED_ROUTES = {"generate", "chat"}


def replay(found, chat: bool, streaming: bool):
    """A stored answer in Ollama's own shape: NDJSON lines when streamed, else one JSON object."""
    cached.hit(observe.current(), found.entry)
    if not streaming:
        return Response(json.dumps(response_cache.ollama_whole(found.entry, chat)), content_type="application/json",
                        headers=found.headers())
    lines = b"".join(json.dumps(line).encode() + b"\n" for line in response_cache.ollama_lines(found.entry, chat))
    return cached.replay(lines, "application/x-ndjson", {**passthrough.HEADERS, **found.headers()})


def version():
    """/api/version (the lowest of every upstream's, with several), asked without a key."""
    router = current_gateway().upstreams
    if not router.single:
        return {"version": views.lowest_version(router)}
    return passthrough.relay("GET", "/api/version", b"", passthrough.OLLAMA, streaming=False, slot=False)


def merged(route: str, key):
    """/api/tags, /api/ps and /api/version over every upstream, in Ollama's shape (each model once)."""
    router = current_gateway().upstreams
    if route == "version":
        return {"version": views.lowest_version(router)}
    listed = views.installed(router) if route == "tags" else views.running(router)
    return {"models": [{k: v for k, v in entry.items() if k != "upstreams"} for entry in key.visible(listed)]}
