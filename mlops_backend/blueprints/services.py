"""What the services' blueprints (conversations, documents) share: whose objects a request sees, pages,
the services' errors as problem+json, and the documents a message names."""

from __future__ import annotations

from flask import request
from marshmallow import ValidationError

from ..errors import ApiError, handle_api_error
from ..extensions import current_gateway
from ..security.auth import authenticate
from ..services import listing
from ..services.conversations import ConversationNotFound
from ..services.documents import DocumentNotFound


def owner() -> str:
    """The key whose objects this request lists or reads: its own, or with `?key=NAME` (admin keys only)."""
    key = authenticate(current_gateway())
    named = request.args.get("key")
    if named is None or named == key.name:
        return key.name
    if not key.has_scope("admin"):
        raise ApiError(403, "Forbidden", "Only an admin key may name another key with ?key=", slug="forbidden")
    return named


def page_arguments() -> tuple[int, str | None]:
    """`?limit=` (1 to 100, default 20) and `?cursor=` of a list route."""
    raw = request.args.get("limit", str(listing.DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= listing.MAX_LIMIT:
        raise ValidationError({"limit": [f"Must be an integer from 1 to {listing.MAX_LIMIT}."]})
    return int(raw), request.args.get("cursor") or None


def page_of(name: str, service) -> dict:
    """One page of the request's owner's objects from `service`, as the list routes answer it."""
    limit, cursor = page_arguments()
    items, next_cursor = service.page(owner(), limit, cursor)
    return {name: items, **({"next_cursor": next_cursor} if next_cursor else {})}


def document_messages(gateway, key_name: str, document_ids, question: str) -> list[dict]:
    """The messages that carry the named documents into a prompt (none named: none)."""
    if not document_ids:
        return []
    from ..services import retrieval

    return retrieval.context_messages(gateway, key_name, list(document_ids), question)


def service_errors(bp) -> None:
    """The services' own exceptions, answered as problem+json on `bp`."""

    @bp.errorhandler(ConversationNotFound)
    def conversation_not_found(error):
        return handle_api_error(ApiError(404, "Not Found", f"No conversation {error.args[0]!r} for this key",
                                         slug="not-found"))

    @bp.errorhandler(DocumentNotFound)
    def document_not_found(error):
        return handle_api_error(ApiError(404, "Not Found", f"No document {error.args[0]!r} for this key",
                                         slug="not-found"))

    @bp.errorhandler(listing.BadCursor)
    def bad_cursor(error):
        return handle_api_error(ApiError(400, "Bad Request", str(error), slug="bad-cursor"))
