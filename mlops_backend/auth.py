"""Check the API key on protected routes: X-API-Key or Authorization: Bearer, in constant time."""

from __future__ import annotations

import hmac

from flask import request

from .errors import ApiError

SCHEME = "ApiKey"
CHALLENGE = f'{SCHEME} header="X-API-Key", Bearer realm="mlops-backend"'


def presented_key() -> str | None:
    """Return the key the client sent, from X-API-Key or an Authorization: Bearer header."""
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def require_api_key(config) -> None:
    """Refuse the request with 401 unless it carries the configured key (CORS preflights pass)."""
    if not config.auth_enabled or request.method == "OPTIONS":
        return
    key = presented_key()
    # compare_digest on bytes takes time independent of where the strings differ.
    if key is None or not hmac.compare_digest(key.encode(), config.api_key.encode()):
        detail = "Send the API key in X-API-Key or Authorization: Bearer" if key is None else "The API key is not valid"
        raise ApiError(401, "Unauthorized", detail, slug="unauthorized", headers={"WWW-Authenticate": CHALLENGE})
