"""Named keys over HTTP: create, list, change, rotate and revoke them (admin scope, KEYS_STORE=database), and
GET /api/key, the calling key itself (any key). A key appears in an answer only when it is created or rotated;
every change is logged with the admin's name, never with a key."""

from __future__ import annotations

import logging

from flask import Blueprint, request
from marshmallow import ValidationError

from ..errors import ApiError, handle_api_error, register_error_handlers
from ..extensions import current_gateway
from ..schemas import KeyCreate, KeyRotate, KeyUpdate
from ..security.auth import authenticate, require_scope
from ..security.key_store import KeyExists, KeyNotFound, KeySettingsError
from ..security.keys import SCOPES, format_time, new_token
from .common import json_body

log = logging.getLogger(__name__)

bp = Blueprint("keys", __name__)
register_error_handlers(bp)

ROOT = "/api/keys"
#: Answers that carry a key must not be kept by any cache on the way.
NO_STORE = {"Cache-Control": "no-store"}
_create, _update, _rotate = KeyCreate(), KeyUpdate(), KeyRotate()


@bp.before_request
def guard():
    """Cap the body, check the key: the admin scope for /api/keys (and the database store), use for /api/key."""
    gateway = current_gateway()
    request.max_content_length = gateway.config.max_body_bytes
    key = authenticate(gateway)
    if request.method == "OPTIONS":
        return
    if request.endpoint == "keys.own":
        require_scope(key, "use")
        return
    require_scope(key, "admin")
    if gateway.keys.store is None:
        raise ApiError(409, "Keys are in the keys file", "KEYS_STORE=file: named keys are managed with `flask keys` "
                       "in API_KEYS_FILE; set KEYS_STORE=database to manage them over /api/keys",
                       slug="keys-store-file")


@bp.errorhandler(KeyNotFound)
def not_found(error):
    return handle_api_error(ApiError(404, "Not Found", f"No key named {error.args[0]!r}", slug="not-found"))


@bp.errorhandler(KeyExists)
def exists(error):
    return handle_api_error(ApiError(409, "Conflict", f"A key named {error.args[0]!r} exists", slug="key-exists"))


def _store():
    return current_gateway().keys.store


def _admin() -> str:
    return authenticate(current_gateway()).name


def _settings(body: dict) -> dict:
    """A loaded body's settings as the store takes them (expires_at as Unix time)."""
    settings = dict(body)
    if settings.get("expires_at") is not None:
        settings["expires_at"] = settings["expires_at"].timestamp()
    return settings


def _changed() -> None:
    """Make this worker see its own change at once (the others poll within about a second)."""
    current_gateway().keys.refresh()


@bp.post(ROOT)
def create():
    """Create a named key; the answer holds the key, the only time it is shown (admin scope).
    ---
    tags: [keys]
    requestBody:
      required: true
      content:
        application/json:
          schema: KeyCreate
    responses:
      201:
        description: The key's settings, and the key in `key`. Only its SHA-256 is stored.
        content:
          application/json:
            schema: CreatedApiKey
      409:
        description: A key of that name exists, or KEYS_STORE=file.
        content:
          application/problem+json:
            schema: Problem
    """
    body = _settings(_create.load(json_body()))
    token = new_token()
    try:
        view = _store().create(body.pop("name"), token, **body)
    except KeySettingsError as error:  # what the schema does not check and the keys file would refuse
        raise ValidationError({"_schema": [str(error)]}) from None
    _changed()
    log.info("Key %r created by admin %r (scopes %s)", view["name"], _admin(), ", ".join(view["scopes"]))
    return {**view, "key": token}, 201, NO_STORE


@bp.get(ROOT)
def list_keys():
    """Every named key's settings and state, never a key (admin scope).
    ---
    tags: [keys]
    responses:
      200:
        description: The keys, oldest first.
        content:
          application/json:
            schema: ApiKeyList
      409:
        description: KEYS_STORE=file.
        content:
          application/problem+json:
            schema: Problem
    """
    return {"keys": _store().list()}


@bp.get(ROOT + "/<name>")
def get(name):
    """One named key's settings and state (admin scope).
    ---
    tags: [keys]
    responses:
      200:
        description: "The key's settings (null limits: the gateway's defaults) and state."
        content:
          application/json:
            schema: ApiKeyInfo
      404:
        description: No key of that name.
        content:
          application/problem+json:
            schema: Problem
      409:
        description: KEYS_STORE=file.
        content:
          application/problem+json:
            schema: Problem
    """
    return _store().get(name)


@bp.patch(ROOT + "/<name>")
def update(name):
    """Change a key's scopes, models, limits, budget, expiry or `disabled` (admin scope).
    ---
    tags: [keys]
    requestBody:
      required: true
      content:
        application/json:
          schema: KeyUpdate
    responses:
      200:
        description: "The key as it is now; every worker applies it within about a second."
        content:
          application/json:
            schema: ApiKeyInfo
      404:
        description: No key of that name.
        content:
          application/problem+json:
            schema: Problem
      409:
        description: KEYS_STORE=file.
        content:
          application/problem+json:
            schema: Problem
    """
    changes = _settings(_update.load(json_body()))
    try:
        view = _store().update(name, changes)
    except KeySettingsError as error:
        raise ValidationError({"_schema": [str(error)]}) from None
    _changed()
    log.info("Key %r changed by admin %r: %s", name, _admin(), ", ".join(sorted(changes)) or "nothing")
    return view


@bp.delete(ROOT + "/<name>")
def revoke(name):
    """Revoke a key: requests with it get 401 within about a second (admin scope).
    ---
    tags: [keys]
    responses:
      204: {description: Revoked.}
      404:
        description: No key of that name.
        content:
          application/problem+json:
            schema: Problem
      409:
        description: KEYS_STORE=file.
        content:
          application/problem+json:
            schema: Problem
    """
    _store().delete(name)
    _changed()
    log.info("Key %r revoked by admin %r", name, _admin())
    return "", 204


@bp.post(ROOT + "/<name>/rotate")
def rotate(name):
    """Give a key a new value, shown once; the old one works `grace_seconds` longer (admin scope).
    ---
    tags: [keys]
    requestBody:
      required: false
      content:
        application/json:
          schema: KeyRotate
    responses:
      200:
        description: "The key's settings, the new key in `key`, and the grace's end in `rotation_grace_until`."
        content:
          application/json:
            schema: CreatedApiKey
      404:
        description: No key of that name.
        content:
          application/problem+json:
            schema: Problem
      409:
        description: KEYS_STORE=file.
        content:
          application/problem+json:
            schema: Problem
    """
    # The body is optional: none (or an empty one) rotates without grace.
    grace = _rotate.load(json_body() if request.content_length or request.headers.get("Transfer-Encoding")
                         else {})["grace_seconds"]
    token = new_token()
    view = _store().rotate(name, token, grace)
    _changed()
    log.info("Key %r rotated by admin %r (the previous key works %d s more)", name, _admin(), grace)
    return {**view, "key": token}, 200, NO_STORE


@bp.get("/api/key")
def own():
    """The calling key: its name, scopes, models, the limits and budget in force, and the tokens it has left.
    ---
    tags: [keys]
    responses:
      200:
        description: |
          Limits and budget are the key's own, or the gateway's defaults where it has none (0: unlimited).
          `remaining` has the tokens left in each budget window.
        content:
          application/json:
            schema: OwnApiKey
    """
    gateway = current_gateway()
    key = authenticate(gateway)
    config = gateway.config
    defaults = {"requests_per_minute": config.rate_limit_per_minute, "concurrent_streams": config.streams_per_key,
                "tokens_per_minute": config.tokens_per_minute, "tokens_per_day": config.tokens_per_day,
                "tokens_per_month": config.tokens_per_month}

    def in_force(values: dict) -> dict:
        return {field: defaults[field] if value is None else value for field, value in values.items()}
    return {"name": key.name, "scopes": sorted(key.scopes, key=SCOPES.index), "models": list(key.models) if key.models is not None
            else None, "limits": in_force(key.limits), "budget": in_force(key.budget),
            "expires_at": format_time(key.expires_at), "remaining": _remaining(gateway, key)}


def _remaining(gateway, key) -> dict:
    """Tokens left per budget window, from security/budgets.py where the gateway has it ({} without it)."""
    budgets = getattr(gateway, "budgets", None)
    if budgets is None:
        return {}
    try:
        return budgets.remaining(key)
    except Exception:  # the budget's storage is down: the key's settings are still worth answering
        log.exception("Tokens left for key %r unavailable", key.name)
        return {}
