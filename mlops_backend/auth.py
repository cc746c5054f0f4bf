"""Who is calling and what may they do: the key (X-API-Key or Bearer), its scope and its models."""

from __future__ import annotations

from flask import g, request

from .errors import ApiError
from .keys import ApiKey

SCHEME = "ApiKey"
CHALLENGE = f'{SCHEME} header="X-API-Key", Bearer realm="mlops-backend"'
#: Who a request is when AUTH_ENABLED=false: one caller with every scope and the default limits.
ANONYMOUS = ApiKey("anonymous")
_UNSET = object()


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
    """Return the request's key (looked up once per request), or None for a missing or unknown key."""
    key = g.get("api_key", _UNSET)
    if key is _UNSET:
        if not gateway.config.auth_enabled:
            key = ANONYMOUS
        else:
            token = presented_key()
            key = gateway.keys.identify(token) if token else None
        g.api_key = key
    return key


def authenticate(gateway) -> ApiKey:
    """Return the request's key or refuse with 401 (CORS preflights pass as anonymous)."""
    if request.method == "OPTIONS":
        return ANONYMOUS
    key = identify(gateway)
    if key is None:
        detail = "Send the API key in X-API-Key or Authorization: Bearer" if presented_key() is None \
            else "The API key is not valid"
        raise ApiError(401, "Unauthorized", detail, slug="unauthorized", headers={"WWW-Authenticate": CHALLENGE})
    return key


def require_scope(key: ApiKey, scope: str) -> None:
    """Refuse with 403 when the key lacks `scope` (admin includes use)."""
    if not key.has_scope(scope):
        raise ApiError(403, "Forbidden", f"The key {key.name!r} lacks the {scope!r} scope", slug="forbidden")


def require_model(key: ApiKey, model: str) -> None:
    """Refuse with 403 when the key has a model allow-list without `model` on it."""
    if not key.allows_model(model):
        raise ApiError(403, "Forbidden", f"The key {key.name!r} may not use the model {model!r}", slug="forbidden")
