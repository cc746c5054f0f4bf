"""What OpenTelemetry traces cost per request: the same app with tracing on and off, in one process.

    .venv/bin/python -m benchmarks.tracing [--requests 200] [--rounds 7]

Two apps in front of the test suite's Ollama double (tests/ollama_double, on loopback): one built
without OTEL_EXPORTER_OTLP_ENDPOINT, one with it pointing at a local sink that accepts and drops
the OTLP/HTTP batches (so export runs, in its own thread, as in production). Each round sends
--requests of each kind to one app, then to the other (alternating which goes first), through
Flask's test client: a /health (hooks only), a whole /api/llm/generate and a streamed
/api/llm/stream (read to its end). Printed: the median over rounds of ms per request, and on/off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mlops_backend import create_app
from tests.ollama_double import OllamaDouble

KEY = "benchmark-key-benchmark-key"
HEADERS = {"X-API-Key": KEY}
KINDS = {
    "health": lambda client: client.get("/health"),
    "generate": lambda client: client.post("/api/llm/generate", json={"prompt": "hi"}, headers=HEADERS),
    "stream": lambda client: b"".join(client.post("/api/llm/stream", json={"prompt": "hi"}, headers=HEADERS,
                                                  buffered=False).response),
}


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def build(double_url: str, endpoint: str | None):
    """An app with tracing on (an endpoint) or off (none); the variable is read once, at creation."""
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    if endpoint:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    try:
        return create_app({"API_KEY": KEY, "OLLAMA_BASE_URL": double_url, "DEFAULT_MODEL": "llama3.2",
                           "DATABASE_URL": "sqlite://", "LOG_LEVEL": "warning", "RATE_LIMIT_PER_MINUTE": "0"})
    finally:
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)


def per_request(client, kind: str, count: int) -> float:
    """ms per request of `kind`, over `count` requests."""
    send = KINDS[kind]
    started = time.perf_counter()
    for _ in range(count):
        send(client)
    return (time.perf_counter() - started) * 1000 / count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    double = OllamaDouble().start()
    double.script(tokens=["one", " two", " three", " four"])
    apps = {"off": build(double.url, None), "on": build(double.url, f"http://127.0.0.1:{sink.server_port}")}
    clients = {name: app.test_client() for name, app in apps.items()}
    times = {(name, kind): [] for name in apps for kind in KINDS}
    try:
        for kind in KINDS:  # warm both
            per_request(clients["off"], kind, 20)
            per_request(clients["on"], kind, 20)
        for round_ in range(args.rounds):
            order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
            for kind in KINDS:
                for name in order:
                    times[name, kind].append(per_request(clients[name], kind, args.requests))
    finally:
        apps["on"].extensions["mlops_backend.tracing"].shutdown()  # flush to the sink while it listens
        for app in apps.values():
            app.extensions["mlops_backend"].close()
        double.stop()
        sink.shutdown()
    print(f"{'request':<10} {'off ms':>8} {'on ms':>8} {'on/off':>7}")
    for kind in KINDS:
        off, on = statistics.median(times["off", kind]), statistics.median(times["on", kind])
        print(f"{kind:<10} {off:8.3f} {on:8.3f} {on / off:7.2f}")


if __name__ == "__main__":
    main()
