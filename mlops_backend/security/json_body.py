"""Read a JSON request body the way Ollama's Go decoder will, so our checks see what Ollama acts on.

Go's encoding/json matches object keys to struct fields without regard to case, under Unicode
case folding (`"Stream"`, `"STREAM"` and `"\u017ftream"` all set `stream`), and when several keys
name one field the last one wins. A check that looked up `body["model"]` could therefore pass one
model while Ollama ran another. Here a field is found by its folded name, and a body in which two
keys fold to the same name is refused, so there is only ever one reading.
"""

from __future__ import annotations

import json

from ..errors import ApiError


def fold(key: str) -> str:
    """A key's folded form: equal for any two keys Go reads as one field (and a few more).

    Python's full case folding puts together every pair that Unicode's simple folding does (what
    Go uses), and some more ("ß" and "ss"); the dotted and dotless i are joined too. Erring on the
    loose side is safe: it can only find a field Go would ignore, or refuse a body Go would accept.
    """
    folded = key.casefold()
    if not folded.isascii():
        folded = folded.replace("\u0131", "i").replace("i\u0307", "i")
    return folded


def parse_object(raw: bytes) -> dict:
    """The body as a JSON object whose keys are unambiguous; 400 otherwise."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "Malformed JSON", f"The body is not valid JSON: {exc}", slug="malformed-json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Malformed JSON", "The body must be a JSON object", slug="malformed-json")
    unambiguous(body)
    return body


def unambiguous(obj: dict, where: str = "") -> None:
    """Refuse an object with two keys that fold to one name (Go would read only the last)."""
    if len({fold(key) for key in obj}) == len(obj):
        return
    seen = {}
    for key in obj:
        twin = seen.setdefault(fold(key), key)
        if twin != key:
            raise ApiError(400, "Ambiguous field", f"Ambiguous field: {where}{twin!r} and {where}{key!r} name the same "
                           "field to Ollama (it matches names without regard to case); send it once",
                           slug="ambiguous-field")


def field(obj: dict, name: str, default=None):
    """The value Ollama reads for the field `name` (a lower-case ASCII name) of a checked object."""
    if name in obj:
        return obj[name]
    for key, value in obj.items():
        if fold(key) == name:
            return value
    return default
