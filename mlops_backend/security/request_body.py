"""Read a request body whole, decoded as its Content-Encoding says, within the route's size limit.

Clients compress large bodies (OpenAI's Codex sends `Content-Encoding: zstd`). The gateway must
read a body to check it (its model, its tools), and what it checked is what Ollama gets: so a
zstd or gzip body is decompressed here and sent on decoded, and any other coding is refused with
415, never forwarded half-understood. The route's limit (request.max_content_length) holds for
the body as sent and again for its decompressed size, which stops decompression bombs.
"""

from __future__ import annotations

import zlib

import zstandard
from flask import request

from ..errors import ApiError

#: The codings the gateway decodes, as a 415 lists them (RFC 9110's Accept-Encoding in a response).
ACCEPTED = "zstd, gzip"
#: Largest zstd window accepted (as Ollama's own decoder): a frame needing more memory is refused.
ZSTD_MAX_WINDOW = 8 << 20
#: Compressed bytes decoded at a time: at most a few MiB of output each (a zstd block of 128 KiB can be 4 bytes).
ZSTD_FEED = 64
#: Codings stacked on one body, at most.
MAX_CODINGS = 2
_READ = 65536


class _TooLarge(Exception):
    pass


def read_body() -> bytes:
    """The body, decoded: 413 past the route's limit (sent or decoded), 415 for a coding we do not decode,
    400 for a body that does not decode."""
    raw = request.get_data(cache=False)
    header = request.headers.get("Content-Encoding", "")
    codings = [c.strip().lower() for c in header.split(",") if c.strip() and c.strip().lower() != "identity"]
    if not codings:
        return raw
    unknown = [c for c in codings if c not in ("zstd", "gzip", "x-gzip")]
    if unknown or len(codings) > MAX_CODINGS:
        detail = (f"Content-Encoding {header.strip()[:64]!r} is not one the gateway decodes: send {ACCEPTED}, "
                  "or no coding" if unknown else f"At most {MAX_CODINGS} content codings are decoded")
        raise ApiError(415, "Unsupported Media Type", detail, slug="unsupported-encoding",
                       headers={"Accept-Encoding": ACCEPTED})
    limit = request.max_content_length
    limit = limit if limit is not None else 1 << 62
    data = raw
    try:
        for coding in reversed(codings):  # the last coding listed was applied last
            data = _unzstd(data, limit) if coding == "zstd" else _gunzip(data, limit)
    except _TooLarge:
        raise ApiError(413, "Request Entity Too Large", f"The body decompresses to more than the limit of {limit} "
                       "bytes", slug="request-entity-too-large") from None
    except (zlib.error, zstandard.ZstdError, EOFError) as exc:
        raise ApiError(400, "Malformed body", f"The body is not valid {coding}: {exc}",
                       slug="malformed-encoding") from None
    return data


def _unzstd(data: bytes, limit: int) -> bytes:
    """Decode every zstd frame of `data`, producing at most limit + 1 bytes of output (and a bounded overshoot)."""
    out = bytearray()
    decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    while data:
        frame, view, pos = decompressor.decompressobj(), memoryview(data), 0
        # Fed in small pieces: a byte of zstd can stand for kilobytes, so the output is checked as it grows.
        while not frame.eof and pos < len(data):
            out += frame.decompress(view[pos:pos + ZSTD_FEED])
            pos += ZSTD_FEED
            if len(out) > limit:
                raise _TooLarge
        if not frame.eof:
            raise EOFError("the zstd data ends inside a frame")
        data = frame.unused_data + data[pos:]
    return bytes(out)


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decode every gzip member of `data`, producing at most limit + 1 bytes of output."""
    out = bytearray()
    while data:
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += member.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise _TooLarge
        if not member.eof:
            raise EOFError("the gzip data ends before its end")
        data = member.unused_data
    return bytes(out)
