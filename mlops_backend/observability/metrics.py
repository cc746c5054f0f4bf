"""Prometheus metrics, counted across every gunicorn worker.

prometheus_client's multiprocess mode keeps each worker's values in files under
PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py sets and empties it); /metrics merges them. Without
that variable (tests, `flask run`) the process's own registry is served.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The *_created series double the output and multiprocess mode has none: leave them out everywhere.
disable_created_metrics()
#: Requests and streams both: from a few milliseconds to many minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("mlops_requests_total", "Requests answered, by route, method and status",
                   ["route", "method", "status"])
DURATION = Histogram("mlops_request_duration_seconds", "Time from request to the end of the response (streams: "
                     "until the last event)", ["route"], buckets=DURATION_BUCKETS)
TTFT = Histogram("mlops_time_to_first_token_seconds", "Time from request to the first text or thinking event of a "
                 "stream", ["route"], buckets=TTFT_BUCKETS)
TOKENS_RELAYED = Counter("mlops_tokens_relayed_total", "Upstream chunks (NDJSON lines: tokens, then the final "
                         "statistics line) relayed in streams", ["route"])
TOKENS = Counter("mlops_llm_tokens_total", "Tokens Ollama counted (prompt_eval_count, eval_count), by model",
                 ["model", "type"])
# By the key's name (never the key), not by model too: one series per key and type, as keys can be many
# (METRICS_KEY_LABELS=false: key="", which Prometheus stores as no label, for thousands of keys).
KEY_TOKENS = Counter("mlops_key_tokens_total", "Tokens Ollama counted for the LLM routes, by key name and type",
                     ["key", "type"])
ACTIVE_STREAMS = Gauge("mlops_active_streams", "Streams open now", multiprocess_mode="livesum")
UPSTREAM_ERRORS = Counter("mlops_upstream_errors_total", "Ollama failures, by kind", ["kind"])
RATE_LIMITED = Counter("mlops_rate_limited_total", "Requests refused with 429, by limit", ["limit"])
UPSTREAM_REQUESTS = Counter("mlops_upstream_requests_total", "Requests answered, by the upstream that served them "
                            "and the status", ["upstream", "status"])
UPSTREAM_FAILURES = Counter("mlops_upstream_failures_total", "Failures of an upstream seen by the router (unreachable, "
                            "busy, status_5xx, reset, refresh)", ["upstream", "reason"])
UPSTREAM_FAILOVERS = Counter("mlops_upstream_failovers_total", "Requests moved from an upstream to the next "
                             "candidate before the first byte of an answer", ["upstream", "reason"])
UPSTREAM_IN_FLIGHT = Gauge("mlops_upstream_in_flight", "Requests in flight per upstream", ["upstream"],
                           multiprocess_mode="livesum")
# livemin: 0 as soon as one live worker has taken the upstream out of rotation.
UPSTREAM_UP = Gauge("mlops_upstream_up", "1 while the upstream is in rotation (its circuit closed), else 0",
                    ["upstream"], multiprocess_mode="livemin")


class UpstreamHooks:
    """What the router reports, counted in Prometheus."""

    def failure(self, upstream: str, reason: str) -> None:
        UPSTREAM_FAILURES.labels(upstream, reason).inc()

    def failover(self, upstream: str, reason: str) -> None:
        UPSTREAM_FAILOVERS.labels(upstream, reason).inc()

    def state(self, upstream: str, up: bool) -> None:
        UPSTREAM_UP.labels(upstream).set(1 if up else 0)


class CountedInFlight:
    """An in-flight counter (router.NoCounter or security.slots.InFlight) that also moves the gauge."""

    def __init__(self, counter):
        self.counter = counter

    def acquire(self, name: str):
        release = self.counter.acquire(name)
        gauge = child(UPSTREAM_IN_FLIGHT, name)
        gauge.inc()

        def done():
            gauge.dec()
            release()
        return done

    def counts(self, names) -> dict[str, int]:
        return self.counter.counts(names)


def exposition(accept: str | None) -> tuple[bytes, str]:
    """Return every metric (all workers' in multiprocess mode) and its content type.

    The format follows the scraper's Accept header: Prometheus text 0.0.4 unless it asks for OpenMetrics.
    """
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


_children: dict = {}


def child(metric, *values):
    """metric.labels(*values), remembered: the per-request counters skip prometheus_client's label checks
    and lock after a series' first use (the label values are the same bounded sets it keeps itself)."""
    found = _children.get((metric, values))
    if found is None:
        found = _children[(metric, values)] = metric.labels(*values)
    return found


def count_key_tokens(key_name: str, prompt_tokens: int, completion_tokens: int) -> None:
    """Add one request's tokens to its key's counter (usage.UsageStore.add calls it, so both agree)."""
    if prompt_tokens:
        child(KEY_TOKENS, key_name, "prompt").inc(prompt_tokens)
    if completion_tokens:
        child(KEY_TOKENS, key_name, "completion").inc(completion_tokens)


def record(observation) -> None:
    """Count one finished request."""
    route = observation.route
    child(REQUESTS, route, observation.method, str(observation.status)).inc()
    child(DURATION, route).observe(observation.duration)
    if observation.ttft is not None:
        child(TTFT, route).observe(observation.ttft)
    if observation.chunks:
        child(TOKENS_RELAYED, route).inc(observation.chunks)
    model = observation.counted_model
    if model:
        if observation.tokens_in:
            child(TOKENS, model, "prompt").inc(observation.tokens_in)
        if observation.tokens_out:
            child(TOKENS, model, "completion").inc(observation.tokens_out)
    if observation.upstream_error:
        child(UPSTREAM_ERRORS, observation.upstream_error).inc()
    if observation.upstream:
        child(UPSTREAM_REQUESTS, observation.upstream, str(observation.status)).inc()
    if observation.limited:
        child(RATE_LIMITED, observation.limited).inc()


CACHE_REQUESTS = Counter("mlops_cache_requests_total", "Response cache lookups, by result (hit, miss, store: "
                         "no-cache, bypass: not cacheable or the store down, too_big: answers not stored)", ["result"])
CACHE_BYTES = Counter("mlops_cache_bytes_total", "Bytes read from and written to the response cache", ["direction"])
CACHE_TOKENS = Counter("mlops_cache_tokens_total", "Tokens (prompt and completion) of answers served from the cache",
                       ["type"])
