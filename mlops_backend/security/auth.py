"""Who is calling and what may they do: the key (X-API-Key or Bearer), its scope and its models."""

from __future__ import annotations

from flask import g, request

from ..observability import observe
from ..errors import ApiError
from .keys import ApiKey
from .json_body import field, unambiguous
from ..upstream.model_names import is_cloud
from .route_policy import allowed_methods, required_scope

SCHEME = "ApiKey"
CHALLENGE = f'{SCHEME} header="X-API-Key", Bearer realm="mlops-backend"'
#: Who a CORS preflight is: Flask answers it itself, so it never reaches Ollama.
PREFLIGHT = ApiKey("anonymous")
_UNSET = object()
#: Tool types a signed-in Ollama runs on ollama.com (OpenAI Responses' web_search, Anthropic's
#: web_search_20250305, and their fetch twins).
CLOUD_TOOLS = ("web_search", "web_fetch")


def presented_key() -> str | None:
    """Return the key the client sent, from X-API-Key or an Authorization: Bearer header."""
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def identify(gateway) -> ApiKey | None:
    """Return the request's key (looked up once per request), or None for a missing, unknown, expired or
    disabled key."""
    key = g.get("api_key", _UNSET)
    if key is _UNSET:
        if not gateway.config.auth_enabled:
            key = ApiKey("anonymous", gateway.config.api_key_scopes)
        else:
            token = presented_key()
            key = gateway.keys.identify(token) if token else None
            refusal = refused(key)
            if refusal:
                # Counted as a wrong key (AUTH_FAILURES_PER_MINUTE); authenticate() says why.
                g.key_refusal, key = refusal, None
        g.api_key = key
    return key


def refused(key: ApiKey | None) -> str | None:
    """Why a known key may not be used now (disabled, expired), or None."""
    if key is None:
        return None
    if key.disabled:
        return "The API key is disabled"
    if key.expired():
        return "The API key has expired"
    return None


def authenticate(gateway) -> ApiKey:
    """Return the request's key or refuse with 401 (CORS preflights pass as anonymous)."""
    if request.method == "OPTIONS":
        return PREFLIGHT
    key = identify(gateway)
    if key is None:
        detail = "Send the API key in X-API-Key or Authorization: Bearer" if presented_key() is None \
            else g.get("key_refusal") or "The API key is not valid"
        raise ApiError(401, "Unauthorized", detail, slug="unauthorized", headers={"WWW-Authenticate": CHALLENGE})
    return key


def require_scope(key: ApiKey, scope: str) -> None:
    """Refuse with 403 when the key lacks `scope` (admin includes use)."""
    if not key.has_scope(scope):
        raise ApiError(403, "Forbidden", f"The key {key.name!r} lacks the {scope!r} scope", slug="forbidden")


def require_model(key: ApiKey, model: str) -> None:
    """Refuse with 403 a cloud model without the cloud scope, or a model outside the key's allow-list."""
    if is_cloud(model) and not key.has_scope("cloud"):
        raise ApiError(403, "Forbidden", f"The key {key.name!r} lacks the 'cloud' scope: {model!r} would run on "
                       "ollama.com, on the operator's account", slug="forbidden")
    if not key.allows_model(model):
        raise ApiError(403, "Forbidden", f"The key {key.name!r} may not use the model {model!r}", slug="forbidden")


def permit_model(key: ApiKey, model: str) -> None:
    """Check the key may use `model`; note it for the log line, and for usage once it passed."""
    observation = observe.current()
    observation.model = observation.model or model
    require_model(key, model)
    observation.model_allowed = True


def permit_body(key: ApiKey, body: dict, fields: tuple) -> None:
    """Check every field of a pass-through body that names a model, as Ollama reads it, and its tools."""
    for name in fields:
        model = field(body, name)
        if isinstance(model, str) and model.strip():
            permit_model(key, model)
    require_cloud_tools(key, field(body, "tools"))


def require_route(key: ApiKey, method: str, path: str, extra: tuple = ()) -> None:
    """Refuse a pass-through route no scope lists (403), a wrong method (405), or a key without its scope."""
    scope = required_scope(method, path, extra)
    if scope is None:
        methods = allowed_methods(path, extra)
        if methods:
            raise ApiError(405, "Method Not Allowed", f"{method} is not allowed on {path}", slug="method-not-allowed",
                           headers={"Allow": ", ".join(methods)})
        raise ApiError(403, "Forbidden", f"{method} {path} is not relayed to any key (OPEN_UPSTREAM_ROUTES can open it)",
                       slug="route-closed")
    require_scope(key, "use" if scope == "cloud" else scope)
    if scope == "cloud":
        require_scope(key, "cloud")


def require_cloud_tools(key: ApiKey, tools, where: str = "tools") -> None:
    """Refuse with 403 web-search or web-fetch tools (run by ollama.com) without the cloud scope, at any depth
    (a Responses `namespace` tool holds tools of its own)."""
    if key.has_scope("cloud") or not isinstance(tools, list):
        return
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            continue
        unambiguous(tool, f"{where}[{index}].")
        kind = field(tool, "type")
        if isinstance(kind, str) and kind.strip().lower().startswith(CLOUD_TOOLS):
            raise ApiError(403, "Forbidden", f"The key {key.name!r} lacks the 'cloud' scope: the {kind.strip()!r} "
                           "tool runs on ollama.com, on the operator's account", slug="forbidden")
        require_cloud_tools(key, field(tool, "tools"), f"{where}[{index}].tools")
