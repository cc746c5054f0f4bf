"""Which conversation a request belongs to, so its turns go to the upstream that served the first ones."""

from __future__ import annotations

import hashlib
import json
import re
import zlib

SESSION_HEADER = "X-Session-ID"
_SESSION = re.compile(r"^[\x21-\x7e]{1,128}$")


def session_key(header: str | None, messages) -> str | None:
    """A conversation's key: its X-Session-ID when the client sends one, else a hash of its first messages."""
    if header and _SESSION.match(header):
        return "session:" + header
    return conversation(messages)


def conversation(messages) -> str | None:
    """A conversation's key from its first messages (through the first user message): the same every turn."""
    if not isinstance(messages, list) or not messages:
        return None
    first = []
    for message in messages:
        first.append(message)
        if isinstance(message, dict) and message.get("role") == "user":
            break
    return "messages:" + hashlib.sha256(json.dumps(first, sort_keys=True, default=str).encode()).hexdigest()[:32]


_MASK = (1 << 64) - 1


def spread(session: str, name: str) -> int:
    """A stable order of upstreams per conversation (rendezvous hashing): every worker breaks ties alike.

    crc32 is the same in every process (unlike hash()) and cheap, but linear, so the two are mixed
    (splitmix64's finaliser) before they are compared; no secret rides on this.
    """
    x = (zlib.crc32(session.encode()) << 32) | zlib.crc32(name.encode())
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return -(x ^ (x >> 31))
