"""OpenTelemetry traces over OTLP/HTTP, one span per request in the GenAI semantic conventions.

Imported only when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set (factory.register_tracing),
so a gateway without it loads none of OpenTelemetry. Each request is a server span, continuing an
incoming W3C traceparent, with child spans for the key check and limits (our blueprints' before-request
hooks), the body's validation (the request schemas), each upstream call (its traceparent goes to
Ollama) and a stream's relay. Spans are started with an explicit parent and never made "current", so
nothing is attached to a context that a streaming generator would carry across greenlets; the
attributes are set once, when the request's observation finishes, so no chunk costs anything.
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit

from flask import g, request
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import observe
from ..upstream.router import Call

PROPAGATOR = TraceContextTextMapPropagator()

#: gen_ai.operation.name by the end of a route's path: ours, Ollama's and OpenAI's.
OPERATIONS = (("/chat/completions", "chat"), ("/chat", "chat"), ("/chat/stream", "chat"), ("/messages", "chat"), ("/turns", "chat"),
              ("/responses", "chat"), ("/completions", "text_completion"), ("/generate", "text_completion"),
              ("/stream", "text_completion"), ("/embeddings", "embeddings"), ("/embed", "embeddings"))


def operation(route: str) -> str | None:
    """The GenAI operation a route performs, or None for the rest (lists, health, keys, ...)."""
    for suffix, name in OPERATIONS:
        if route.endswith(suffix):
            return name
    return None


def init_tracing(app, gateway, blueprints, scoped: bool = False) -> TracerProvider:
    """Trace every request of `app` (only our blueprints' when `scoped`), exported in batches by this process."""
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "mlops-backend"}
    provider = TracerProvider(resource=Resource.create(attributes))  # OTEL_RESOURCE_ATTRIBUTES merge in
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracer = provider.get_tracer("mlops_backend")
    names = [bp.name for bp in blueprints]
    for key in names if scoped else [None]:
        hooks = app.before_request_funcs.setdefault(key, [])
        hooks.insert(hooks.index(observe.begin) + 1, lambda: RequestTrace.start(tracer))
    for name in names:  # the key check, rate limits and budgets are these blueprints' own hooks
        hooks = app.before_request_funcs.setdefault(name, [])
        hooks.insert(0, _admission_started)
        hooks.append(_admission_ended)
    gateway.schemas = {name: TracedSchema(schema) for name, schema in gateway.schemas.items()}
    gateway.upstreams.on_call = upstream_call
    app.extensions["mlops_backend.tracing"] = provider
    return provider


class RequestTrace:
    """One request's spans: the server span, and its children while they are open."""

    __slots__ = ("tracer", "span", "context", "started_ns", "admission", "address")

    def __init__(self, tracer, span):
        self.tracer, self.span, self.context = tracer, span, trace.set_span_in_context(span)
        self.started_ns = time.time_ns()
        self.admission = self.address = None

    @classmethod
    def start(cls, tracer) -> None:
        """Open the request's server span (a child of the caller's traceparent, if any)."""
        observation = g.get("observation")
        if observation is None:
            return
        parent = PROPAGATOR.extract(request.headers)
        span = tracer.start_span(f"{observation.method} {observation.route}", context=parent, kind=SpanKind.SERVER,
                                 attributes={"http.request.method": observation.method,
                                             "http.route": observation.route, "url.path": observation.path})
        observation.trace = request_trace = cls(tracer, span)
        observation.on_finish.append(lambda: request_trace.end(observation))

    def child(self, name: str, kind=SpanKind.INTERNAL, **attributes):
        """Start a child span of the request's (ended by the caller)."""
        return self.tracer.start_span(name, context=self.context, kind=kind, attributes=attributes or None)

    def relay_started(self, observation) -> None:
        """A stream's relay runs from now until its response closes."""
        observation.on_finish.insert(0, self.child("relay").end)

    def end(self, observation) -> None:
        """Set what the request learnt (model, tokens, finish reason, upstream, cache) and end its spans."""
        span = self.span
        if self.admission is not None:  # refused by a hook: no view ran
            self.admission.set_status(StatusCode.ERROR)
            self.admission.end()
        span.set_attribute("http.response.status_code", observation.status)
        # The pass-through routes' rules end in <path:route>: their path says which call it is.
        route = observation.route
        name = None if route == "<unmatched>" else operation(observation.path if "<path:" in route else route)
        if name is not None:
            span.update_name(f"{name} {observation.model}" if observation.model else name)
            span.set_attributes({"gen_ai.operation.name": name, "gen_ai.provider.name": "ollama"})
        facts = {"gen_ai.request.model": observation.model, "gen_ai.usage.input_tokens": observation.tokens_in,
                 "gen_ai.usage.output_tokens": observation.tokens_out, "mlops.cache": observation.cache,
                 "mlops.upstream": observation.upstream, "mlops.request_id": observation.request_id}
        span.set_attributes({k: v for k, v in facts.items() if v is not None})
        if observation.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [observation.finish_reason])
        if self.address is not None:
            span.set_attributes(self.address)
        if observation.ttft is not None:
            span.add_event("gen_ai.first_token", {"gen_ai.server.time_to_first_token": observation.ttft},
                           timestamp=self.started_ns + int(observation.ttft * 1e9))
        if observation.status >= 500 or observation.stream_failed:
            span.set_attribute("error.type", observation.upstream_error or str(observation.status))
            span.set_status(StatusCode.ERROR)
        if observation.client_gone:
            span.set_attribute("mlops.client_gone", True)
        span.end()


def _trace():
    observation = g.get("observation")
    return observation.trace if observation is not None else None


def _admission_started() -> None:
    request_trace = _trace()
    if request_trace is not None:
        request_trace.admission = request_trace.child("auth and limits")


def _admission_ended() -> None:
    request_trace = _trace()
    if request_trace is not None and request_trace.admission is not None:
        request_trace.admission.end()
        request_trace.admission = None


class TracedSchema:
    """A request schema whose load() (the body's validation) is a span; everything else is the schema's."""

    def __init__(self, schema):
        self._schema = schema

    def load(self, *args, **kwargs):
        request_trace = _trace()
        if request_trace is None:
            return self._schema.load(*args, **kwargs)
        with request_trace.child("validation"):  # an invalid body ends it with the exception recorded
            return self._schema.load(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._schema, name)


class TracedCall(Call):
    """A routed call as a client span: its traceparent goes to Ollama; Server-Timing still hears its waits."""

    __slots__ = ("observed", "span", "request_trace", "headers")

    def __init__(self, observed, request_trace, method, path):
        self.observed, self.request_trace = observed, request_trace
        self.span = request_trace.child(f"{method} {path}", SpanKind.CLIENT, **{"http.request.method": method,
                                                                                "url.path": path})
        carrier = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self.span))
        self.headers = tuple(carrier.items())

    def sent(self, upstream) -> None:
        self.observed.sent(upstream)
        address = server_address(upstream.spec.url)
        self.span.set_attributes({**address, "mlops.upstream": upstream.name})
        self.request_trace.address = address

    def waited(self, seconds: float) -> None:
        self.observed.waited(seconds)

    def closed(self) -> None:
        self.observed.closed()
        self.span.end()


def upstream_call(method: str, path: str) -> Call:
    """The router's on_call hook while tracing: Server-Timing's, plus a client span when in a traced request."""
    observed = observe.upstream_call(method, path)
    request_trace = getattr(observed, "observation", None) and observed.observation.trace
    return observed if request_trace is None else TracedCall(observed, request_trace, method, path)


def server_address(url: str) -> dict:
    """server.address and server.port of an upstream's URL."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"server.address": parts.hostname or "", "server.port": port}
