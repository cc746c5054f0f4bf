"""What happened to each request, written once when its response ends: metrics, usage, log line.

Every request gets an Observation in `before_request`; the key check, the views and the stream
relay fill it in; `call_on_close` hands it over when the last byte has gone (for a stream, after
its final event or the client leaving), so durations and token counts cover the whole answer.
Every response also says where its time went so far (Server-Timing: the gateway's own part and the
wait on Ollama, which the router's calls report through `upstream_call`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from functools import partial
from types import GeneratorType

from flask import g, has_request_context, request
from werkzeug.wsgi import ClosingIterator

from . import metrics
from ..upstream.model_names import canonical
from ..upstream.router import NO_CALL, Call
from .request_context import quoted

access_log = logging.getLogger("mlops_backend.access")
log = logging.getLogger(__name__)

#: Requests of these blueprints count towards a key's usage.
COUNTED_BLUEPRINTS = {"llm", "models", "ollama", "openai"}


@dataclasses.dataclass(slots=True)
class Observation:
    """The facts of one request; views and the relay set what they learn (slots: one per open stream)."""

    started: float = dataclasses.field(default_factory=time.monotonic)
    request_id: str = "-"
    method: str = "-"
    path: str = "-"
    route: str = "<unmatched>"
    client: str = "-"
    forwarded_for: str | None = None
    key: str | None = None
    counted: bool = False
    model: str | None = None
    model_allowed: bool = False
    upstream: str | None = None
    prompt: object = None
    status: int = 0
    duration: float = 0.0
    ttft: float | None = None
    chunks: int = 0
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_cached: int | None = None  # a cache hit: the stored answer's prompt and completion tokens
    cache: str | None = None  # the X-Cache status: HIT, MISS, STORE or BYPASS (None: not a cached route)
    upstream_error: str | None = None
    stream_failed: bool = False
    client_gone: bool = False
    limited: str | None = None
    finish_reason: str | None = None
    upstream_wait: float = 0.0  # seconds spent waiting on Ollama's heads and whole bodies
    trace: object = None  # tracing.RequestTrace while OpenTelemetry traces are on
    on_finish: list = dataclasses.field(default_factory=list)

    def first_token(self) -> None:
        if self.ttft is None:
            self.ttft = time.monotonic() - self.started

    def statistics(self, result: dict) -> None:
        """Take Ollama's token counts from a final answer or a stream's final line."""
        self.tokens_in = result.get("prompt_eval_count", self.tokens_in)
        self.tokens_out = result.get("eval_count", self.tokens_out)
        self.finish_reason = result.get("done_reason", self.finish_reason)

    @property
    def counted_model(self) -> str:
        """The model usage and metrics count the request under: its canonical name, or "" for a request
        that named none, was refused one, or named one Ollama does not have (so no name makes a row)."""
        if not (self.model and self.model_allowed) or self.status in (400, 403, 404):
            return ""
        return canonical(self.model)

    def served_by(self, upstream: str) -> None:
        """Note the upstream the request went to (the last one, after a failover)."""
        self.upstream = upstream

    def stream_opened(self) -> None:
        metrics.ACTIVE_STREAMS.inc()
        self.on_finish.append(metrics.ACTIVE_STREAMS.dec)
        if self.trace is not None:
            self.trace.relay_started(self)

    def server_timing(self) -> str:
        """The Server-Timing value so far: the wait on Ollama, and the rest (ours), in ms."""
        upstream = self.upstream_wait * 1000
        total = (time.monotonic() - self.started) * 1000
        return f"gateway;dur={max(total - upstream, 0.0):.1f}, upstream;dur={upstream:.1f}"

    @property
    def failed(self) -> bool:
        return self.status >= 400 or self.stream_failed

    def fields(self, log_prompts: bool) -> dict:
        """The request's log line, as key-value pairs (never the API key itself)."""
        line = {"request_id": self.request_id, "key": self.key, "method": self.method, "route": self.route,
                "path": self.path, "status": self.status, "duration_ms": round(self.duration * 1000, 1),
                "model": self.model, "upstream": self.upstream,
                "ttft_ms": None if self.ttft is None else round(self.ttft * 1000, 1),
                "tokens_in": self.tokens_in, "tokens_out": self.tokens_out, "client": self.client,
                "forwarded_for": self.forwarded_for}
        if self.cache:
            line["cache"] = self.cache
        if self.tokens_cached:
            line["tokens_cached"] = self.tokens_cached
        if self.upstream_error:
            line["upstream_error"] = self.upstream_error
        if self.limited:
            line["rate_limited"] = self.limited
        if self.client_gone:
            line["client_gone"] = True
        if log_prompts and self.prompt is not None:
            line["prompt"] = self.prompt
        return line


class UpstreamCall(Call):
    """A routed call of a request: its waits on Ollama add up in the request's observation."""

    __slots__ = ("observation",)

    def __init__(self, observation: Observation):
        self.observation = observation

    def waited(self, seconds: float) -> None:
        self.observation.upstream_wait += seconds


def upstream_call(method: str, path: str) -> Call:
    """The router's on_call hook: a request's calls count towards its Server-Timing (calls outside one, none)."""
    observation = g.get("observation") if has_request_context() else None
    return NO_CALL if observation is None else UpstreamCall(observation)


def current() -> Observation:
    """The current request's observation (a throwaway one outside our hooks)."""
    return g.get("observation") or Observation()


def begin() -> None:
    """Start observing; runs right after the request id is assigned."""
    rule = request.url_rule
    g.observation = Observation(
        request_id=g.get("request_id", "-"), method=request.method, path=request.path,
        route=rule.rule if rule is not None else "<unmatched>", client=request.remote_addr or "-",
        forwarded_for=request.headers.get("X-Forwarded-For"))


def complete(gateway, response):
    """Note the status and the key; finish when the response closes (streams included)."""
    observation = g.get("observation")
    if observation is None:
        return response
    observation.status = response.status_code
    # For a stream this goes out with the head: the time until then (the wait for Ollama's head included).
    response.headers["Server-Timing"] = observation.server_timing()
    observation.cache = response.headers.get("X-Cache")
    key = g.get("api_key")
    if key is not None:
        observation.key = key.name
        observation.counted = request.blueprint in COUNTED_BLUEPRINTS and request.method != "OPTIONS"
    callback = partial(finish, gateway, observation)
    if response.direct_passthrough and isinstance(response.response, GeneratorType):
        # Werkzeug hands a direct_passthrough body to the server as it is, skipping call_on_close.
        response.response = ClosingIterator(response.response, callback)
    else:
        response.call_on_close(callback)
    return response


def finish(gateway, observation: Observation) -> None:
    """Release what the request held, then count it and log it; never fails the response."""
    observation.duration = time.monotonic() - observation.started
    for release in observation.on_finish:
        release()
    try:
        metrics.record(observation)
        if observation.counted:
            gateway.usage.add(observation.key, observation.counted_model, observation.tokens_in or 0,
                              observation.tokens_out or 0, observation.failed, observation.tokens_cached or 0)
        fields = observation.fields(gateway.config.log_prompts)
        access_log.info(_text_line(fields), extra={"fields": fields})
    except Exception:
        log.exception("Could not record request %s", observation.request_id)


def _text_line(fields: dict) -> str:
    """The text form of the log line: the request first, then whatever is known, every value quoted
    when it could pass for something else (a client's path, model, or X-Forwarded-For)."""
    head = f'{quoted(fields["method"])} {quoted(fields["path"])} {fields["status"]} {fields["duration_ms"]}ms'
    rest = " ".join(f"{name}={quoted(value)}" for name, value in fields.items()
                    if value is not None and name not in ("method", "path", "status", "duration_ms", "route",
                                                          "request_id", "prompt"))
    prompt = f" prompt={json.dumps(fields['prompt'], default=str)}" if "prompt" in fields else ""
    return f"{head} {rest}{prompt}"
