"""What every stored service object shares: its id, and pages of a key's objects, newest first, with
opaque cursors (a page that is full carries `next_cursor`; the next page starts after it)."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time

import sqlalchemy as sa

MAX_LIMIT = 100
DEFAULT_LIMIT = 20


class BadCursor(ValueError):
    """A cursor this gateway did not write."""


def new_id(prefix: str) -> str:
    """A new object id: the prefix and 24 random hex digits (96 bits: unguessable, never reused)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def now() -> float:
    return time.time()


def encode_cursor(created_at: float, object_id: str) -> str:
    raw = json.dumps([created_at, object_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, object_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise BadCursor("cursor is not one this API returned") from None
    if not isinstance(created_at, (int, float)) or not isinstance(object_id, str):
        raise BadCursor("cursor is not one this API returned")
    return float(created_at), object_id


def page(connection, table, where, limit: int, cursor: str | None, columns=None) -> tuple[list[dict], str | None]:
    """One page of `table`'s rows matching `where`, newest first (ties by id), and the next page's cursor."""
    query = sa.select(*(columns or table.c)).where(where)
    if cursor:
        created_at, object_id = decode_cursor(cursor)
        query = query.where(sa.or_(table.c.created_at < created_at,
                                   sa.and_(table.c.created_at == created_at, table.c.id < object_id)))
    rows = [dict(row._mapping) for row in connection.execute(
        query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit + 1))]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
