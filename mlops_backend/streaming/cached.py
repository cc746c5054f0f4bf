"""The response cache in a stream's path: a tap that keeps what a stream sent (to store it once it ended
well), and the replay of a stored answer.

A stream is stored only when it ran to its final record: not one that ended in an error, nor one
its client cut (the tap is then closed before its end, or the relay noted the client gone).
"""

from __future__ import annotations

import json

from flask import Response

from ..observability import metrics
from ..services import cache as response_cache


def hit(observation, entry: dict) -> None:
    """Count a hit: a request with no prompt or completion tokens, and the stored answer's tokens as cached
    (in usage, and the cache's counter)."""
    observation.tokens_in, observation.tokens_out, observation.tokens_cached = 0, 0, 0
    final = entry.get("final") or {}
    usage = final.get("usage") if isinstance(final.get("usage"), dict) else {}
    for kind, name, openai in (("prompt", "prompt_eval_count", "prompt_tokens"),
                               ("completion", "eval_count", "completion_tokens")):
        count = final.get(name, usage.get(openai))
        if isinstance(count, int) and count > 0:
            metrics.CACHE_TOKENS.labels(kind).inc(count)
            observation.tokens_cached += count


def sse_records(data: bytes):
    """The JSON objects of our SSE events (heartbeats skipped)."""
    for block in data.split(b"\n\n"):
        if block.startswith(b"data: "):
            yield json.loads(block[6:])


def openai_records(data: bytes):
    """The JSON of OpenAI's `data:` chunks, and "[DONE]" for its last."""
    for block in data.split(b"\n\n"):
        block = block.strip()
        if block == b"data: [DONE]":
            yield "[DONE]"
        elif block.startswith(b"data: "):
            yield json.loads(block[6:])


def ndjson_records(data: bytes):
    for line in data.split(b"\n"):
        if line.strip():
            yield json.loads(line)


def tap(body, found, observation, records, take: str, model: str | None, collector=None):
    """Pass `body` on; once it ended whole, build the normalised answer from its records and store it.

    `records(data)` parses what was sent; `take` names the collector's method for one record
    (services.cache.Collector's, unless another `collector` is given).
    """
    limit = max(found.cache.max_entry * 4, 64 * 1024)
    kept, size, whole = [], 0, True
    try:
        for chunk in body:
            if whole:
                size += len(chunk)
                if size > limit:
                    whole, kept = False, []
                else:
                    kept.append(chunk)
            yield chunk
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    if not whole or observation.client_gone or observation.stream_failed:
        return
    collector = collector or response_cache.Collector()
    try:
        for record in records(b"".join(kept)):
            getattr(collector, take)(record)
    except ValueError:
        return
    found.store(collector.entry(model) if isinstance(collector, response_cache.Collector) else collector.entry())


def replay(data: bytes, content_type: str, headers: dict) -> Response:
    """Answer with stored events, as a stream (a generator, so the request's observation finishes as usual)."""
    def body():
        yield data
    return Response(body(), content_type=content_type, headers=headers, direct_passthrough=True)
