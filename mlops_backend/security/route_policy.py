"""Which upstream routes the pass-through relays, and the scope each needs: an allow-list.

Routes are written as Ollama names them, with the client's prefix (`/ollama` for Ollama's own API,
`/v1` for the OpenAI-compatible one) kept, so one table covers both. A route that is not here
answers 403 to every key, whatever Ollama adds in a later release, unless OPEN_UPSTREAM_ROUTES
opens it: `METHOD /path=scope` items separated by commas, where a path ending in `/*` opens every
route under it (`DELETE /ollama/api/user/keys/*=admin`).
"""

from __future__ import annotations

import re

#: The routes each scope may call. `cloud` routes need the cloud scope as well as use.
ROUTES = {
    ("GET", "/ollama/"): "use",
    ("GET", "/ollama/api/version"): "use",
    ("GET", "/ollama/api/tags"): "use",
    ("GET", "/ollama/api/ps"): "use",
    ("POST", "/ollama/api/show"): "use",
    ("POST", "/ollama/api/generate"): "use",
    ("POST", "/ollama/api/chat"): "use",
    ("POST", "/ollama/api/embed"): "use",
    ("POST", "/ollama/api/embeddings"): "use",
    ("POST", "/ollama/api/pull"): "admin",
    ("POST", "/ollama/api/push"): "admin",
    ("POST", "/ollama/api/create"): "admin",
    ("POST", "/ollama/api/copy"): "admin",
    ("DELETE", "/ollama/api/delete"): "admin",
    # Web search and fetch spend the operator's ollama.com quota.
    ("POST", "/ollama/api/experimental/web_search"): "cloud",
    ("POST", "/ollama/api/experimental/web_fetch"): "cloud",
    ("POST", "/v1/chat/completions"): "use",
    ("POST", "/v1/completions"): "use",
    ("POST", "/v1/embeddings"): "use",
    ("POST", "/v1/responses"): "use",
    ("POST", "/v1/messages"): "use",
    ("POST", "/v1/audio/transcriptions"): "use",
    ("GET", "/v1/models"): "use",
    ("GET", "/v1/models/*"): "use",
}
#: Ollama answers HEAD on these GET routes; elsewhere HEAD is refused like any other method.
HEAD_ROUTES = {"/ollama/", "/ollama/api/version", "/ollama/api/tags"}
_WILDCARDS = [(route, scope) for route, scope in ROUTES.items() if route[1].endswith("/*")]
METHODS = ("GET", "POST", "DELETE")
SCOPES = ("use", "admin", "cloud")
_ITEM = re.compile(r"^(GET|POST|DELETE) (/(?:ollama|v1)/[A-Za-z0-9._/-]*?(?:/\*)?)=(use|admin|cloud)$")


class RouteError(ValueError):
    """An OPEN_UPSTREAM_ROUTES entry the gateway cannot read."""


def parse_open_routes(raw: str) -> tuple:
    """Read OPEN_UPSTREAM_ROUTES into ((method, path, scope), ...)."""
    routes = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        match = _ITEM.match(re.sub(r"\s+", " ", item))
        if match is None or "/." in match.group(2) or "//" in match.group(2):
            raise RouteError(f"{item!r} is not `METHOD /ollama/... or /v1/...=use|admin|cloud`, "
                             "e.g. `GET /ollama/api/status=admin`")
        routes.append(match.groups())
    return tuple(routes)


def required_scope(method: str, path: str, extra: tuple = ()) -> str | None:
    """The scope `method path` needs, or None when no key may call it."""
    if method == "HEAD":
        return ROUTES.get(("GET", path)) if path in HEAD_ROUTES else None
    for route_method, route, scope in extra:
        if route_method == method and _matches(route, path):
            return scope
    scope = ROUTES.get((method, path))
    if scope is None:
        scope = next((scope for (route_method, route), scope in _WILDCARDS
                      if route_method == method and _matches(route, path)), None)
    return scope


def allowed_methods(path: str, extra: tuple = ()) -> list[str]:
    """The methods some key may use on `path` (for a 405's Allow header); empty if the path is closed."""
    methods = [method for method in METHODS if required_scope(method, path, extra)]
    if methods and path in HEAD_ROUTES:
        methods.append("HEAD")
    return methods


def _matches(route: str, path: str) -> bool:
    if route.endswith("/*"):
        return path.startswith(route[:-1]) and len(path) > len(route) - 1
    return route == path
