"""Server-Timing on every answer, and OpenTelemetry traces through real gunicorn to a tiny OTLP/HTTP receiver."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from mlops_backend.observability.tracing import operation, server_address
from tests.support import AUTH, ROOT, GatewayProcess, sse_events

TIMING = re.compile(r"^gateway;dur=(\d+\.\d), upstream;dur=(\d+\.\d)$")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Receiver:
    """An OTLP/HTTP collector in a thread: keeps every span POSTed to /v1/traces, decoded."""

    def __init__(self):
        self.spans, self._lock = [], threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.take(ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, export) -> None:
        with self._lock:
            for resource in export.resource_spans:
                service = {a.key: value(a.value) for a in resource.resource.attributes}.get("service.name")
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        self.spans.append({"name": span.name, "trace_id": span.trace_id.hex(),
                                           "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                                           "kind": span.kind, "service": service, "status": span.status.code,
                                           "attributes": {a.key: value(a.value) for a in span.attributes},
                                           "events": [(e.name, e.time_unix_nano) for e in span.events],
                                           "start": span.start_time_unix_nano, "end": span.end_time_unix_nano})

    def trace(self, trace_id: str, server_name: str, timeout: float = 10.0) -> dict:
        """The spans of one trace by name, once its server span has come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                spans = [s for s in self.spans if s["trace_id"] == trace_id]
            if any(s["name"] == server_name for s in spans):
                time.sleep(0.3)  # the batch with the children (ended first) has come, or comes now
                with self._lock:
                    return {s["name"]: s for s in self.spans if s["trace_id"] == trace_id}
            time.sleep(0.05)
        raise AssertionError(f"no span {server_name!r} in trace {trace_id}: {[s['name'] for s in spans]}")


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture(scope="module")
def traced(double, receiver):
    process = GatewayProcess(double.url, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="50").start()
    yield process
    process.stop()


def traceparent(trace_id: str) -> dict:
    return {**AUTH, "traceparent": f"00-{trace_id}-{PARENT_ID}-01"}


def sent_traceparent(double, path: str) -> str:
    headers = [r["headers"] for r in double.requests if r["path"] == path][-1]
    return {k.lower(): v for k, v in dict(headers).items()}.get("traceparent")


def timings(response) -> tuple[float, float]:
    match = TIMING.match(response.headers["Server-Timing"])
    assert match, response.headers["Server-Timing"]
    return float(match[1]), float(match[2])


# -- Server-Timing (always on) ------------------------------------------------------------------------


def test_server_timing_on_whole_streamed_and_error_answers(gateway, double):
    double.script(tokens=["a", " b"], first_delay=0.2)
    started = time.monotonic()
    whole = requests.post(gateway.url + "/api/llm/generate", json={"prompt": "hi"}, headers=AUTH, timeout=10)
    elapsed = (time.monotonic() - started) * 1000
    assert whole.status_code == 200
    ours, upstream = timings(whole)
    assert 150 <= upstream <= elapsed and ours < 200 and ours + upstream <= elapsed

    # A stream's header goes with its head: it covers the wait for Ollama's head, not the tokens after it.
    double.script(tokens=["x"] * 5, first_delay=0.2, delay=0.1)
    with requests.post(gateway.url + "/api/llm/stream", json={"prompt": "hi"}, headers=AUTH, stream=True,
                       timeout=10) as streamed:
        ours, upstream = timings(streamed)
        assert streamed.status_code == 200 and 150 <= upstream < 450 and ours < 200  # the double sleeps ~0.2 s
        assert sse_events(streamed)[-1]["done"] is True

    double.script(fault="status_500")
    failed = requests.post(gateway.url + "/api/llm/generate", json={"prompt": "hi"}, headers=AUTH, timeout=10)
    assert failed.status_code >= 500
    ours, upstream = timings(failed)
    assert ours >= 0 and upstream >= 0

    refused = requests.post(gateway.url + "/api/llm/generate", json={"prompt": "hi"}, timeout=10)
    assert refused.status_code == 401 and timings(refused)[1] == 0.0


def test_browsers_may_read_server_timing(gateway):
    answer = requests.get(gateway.url + "/health", headers={"Origin": "http://localhost:3000"}, timeout=5)
    timings(answer)
    exposed = answer.headers.get("Access-Control-Expose-Headers", "")
    assert "Server-Timing" in exposed or not answer.headers.get("Access-Control-Allow-Origin")


def test_untraced_gateway_sends_no_traceparent(gateway, double):
    double.script(tokens=["ok"])
    answer = requests.post(gateway.url + "/api/llm/generate", json={"prompt": "hi"}, headers=traceparent(TRACE_ID),
                           timeout=10)
    assert answer.status_code == 200
    assert sent_traceparent(double, "/api/generate") is None


def test_tracing_off_imports_no_opentelemetry():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(PYTHONPATH=str(ROOT), API_KEY="a-test-key-that-is-long-enough", DATABASE_URL="sqlite://")
    code = "import sys, wsgi; print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens: spans are just dropped
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "opentelemetry.sdk.trace" in out.stdout, out.stderr


# -- traces --------------------------------------------------------------------------------------------


def test_whole_answer_is_a_genai_span_continuing_the_callers_trace(traced, double, receiver):
    double.script(tokens=["alpha", " beta"])
    answer = requests.post(traced.url + "/api/llm/generate", json={"model": "llama3.2", "prompt": "count"},
                           headers={**AUTH, "traceparent": TRACEPARENT}, timeout=10)
    assert answer.status_code == 200, answer.text
    timings(answer)
    spans = receiver.trace(TRACE_ID, "text_completion llama3.2")
    server = spans["text_completion llama3.2"]
    assert server["parent"] == PARENT_ID and server["service"] == "mlops-backend"
    attributes = server["attributes"]
    body = answer.json()
    assert attributes["gen_ai.operation.name"] == "text_completion"
    assert attributes["gen_ai.request.model"] == "llama3.2"
    assert attributes["gen_ai.usage.input_tokens"] == body["prompt_eval_count"]
    assert attributes["gen_ai.usage.output_tokens"] == body["eval_count"] == 2
    assert attributes["gen_ai.response.finish_reasons"] == [body["done_reason"]]
    host, port = server_address(double.url).values()
    assert attributes["server.address"] == host and attributes["server.port"] == port
    assert attributes["http.response.status_code"] == 200 and attributes["http.route"] == "/api/llm/generate"
    assert attributes["mlops.request_id"] == answer.headers["X-Request-ID"]

    upstream = spans["POST /api/generate"]
    for name in ("auth and limits", "validation", "POST /api/generate"):
        assert spans[name]["parent"] == server["span_id"], name
    assert upstream["attributes"]["server.address"] == host
    # Ollama was asked with the same trace, the upstream call's span as its parent.
    assert sent_traceparent(double, "/api/generate") == f"00-{TRACE_ID}-{upstream['span_id']}-01"


def test_stream_spans_have_the_relay_and_the_first_token(traced, double, receiver):
    double.script(tokens=["one", " two", " three"], delay=0.05)
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
    with requests.post(traced.url + "/api/llm/chat/stream", json={"messages": [{"role": "user", "content": "hi"}]},
                       headers=traceparent(trace_id), stream=True, timeout=10) as streamed:
        assert streamed.status_code == 200
        timings(streamed)
        events = sse_events(streamed)
    spans = receiver.trace(trace_id, "chat llama3.2")
    server = spans["chat llama3.2"]
    assert server["attributes"]["gen_ai.operation.name"] == "chat"
    assert server["attributes"]["gen_ai.usage.output_tokens"] == events[-1]["eval_count"]
    (event, at), = [e for e in server["events"] if e[0] == "gen_ai.first_token"]
    assert server["start"] < at < server["end"]
    relay = spans["relay"]
    assert relay["parent"] == server["span_id"] and relay["end"] <= server["end"]
    assert spans["POST /api/chat"]["parent"] == server["span_id"]
    assert sent_traceparent(double, "/api/chat").split("-")[1] == trace_id


def test_passthrough_and_refusals_are_traced(traced, double, receiver):
    double.script(tokens=["hey"])
    trace_id = "6bf92f3577b34da6a3ce929d0e0e4738"
    answer = requests.post(traced.url + "/ollama/api/embed", json={"model": "llama3.2", "input": "x"},
                           headers=traceparent(trace_id), timeout=10)
    assert answer.status_code == 200, answer.text
    spans = receiver.trace(trace_id, "embeddings llama3.2")
    assert spans["embeddings llama3.2"]["attributes"]["gen_ai.operation.name"] == "embeddings"
    assert sent_traceparent(double, "/api/embed").split("-")[1] == trace_id

    # A refused key: the server span and its auth child both say so; nothing reached Ollama.
    trace_id = "7bf92f3577b34da6a3ce929d0e0e4739"
    refused = requests.post(traced.url + "/api/llm/generate", json={"prompt": "x"},
                            headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01", "X-API-Key": "wrong"}, timeout=10)
    assert refused.status_code == 401
    spans = receiver.trace(trace_id, "text_completion")
    assert spans["text_completion"]["attributes"]["http.response.status_code"] == 401
    assert spans["auth and limits"]["status"] == 2  # STATUS_CODE_ERROR
    assert not any(name.startswith("POST /api/") for name in spans)


def test_operation_names():
    assert operation("/v1/chat/completions") == operation("/ollama/api/chat") == "chat"
    assert operation("/v1/completions") == operation("/api/llm/generate") == "text_completion"
    assert operation("/v1/embeddings") == operation("/ollama/api/embed") == "embeddings"
    assert operation("/api/llm/models") is None and operation("/health") is None
