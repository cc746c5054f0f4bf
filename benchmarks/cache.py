"""What the response cache costs and saves per request, against the same gateway without a cache.

    .venv/bin/python -m benchmarks.cache [--requests 200] [--repeat 5] [--delay 0] [--redis]

Three gateways under real gunicorn (one gevent worker each) in front of the Ollama double: one with
no CACHE_URL (the baseline), one with CACHE_URL=memory:// and, with --redis, one on a real
redis-server. Each request is a deterministic generation (temperature 0) on /api/llm/generate
(whole) and /api/llm/stream (streamed), sent one after another over one keep-alive connection:

- baseline: the no-cache gateway; every request reaches the double.
- miss: a new prompt each time on a cached gateway: the lookup, the generation, and the store.
- hit: one prompt asked again and again: answered from the cache, the double never called.

Printed: the median wall time per request over --repeat runs, and each as a ratio to the
baseline of the same run. --delay sets the double's seconds between tokens (0: as fast as it can,
so the figures are the gateway's own cost; a real model's seconds make a hit's saving far larger).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import requests

from tests.ollama_double import OllamaDouble
from tests.support import AUTH, GatewayProcess

ROUTES = (("whole", "/api/llm/generate"), ("streamed", "/api/llm/stream"))


def per_request(session, gateway, path: str, bodies) -> float:
    """Median seconds per request over `bodies`, each answer read to its end."""
    times = []
    for body in bodies:
        started = time.perf_counter()
        response = session.post(gateway.url + path, json=body, headers=AUTH, stream=True, timeout=60)
        for _ in response.iter_content(chunk_size=None):
            pass
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return statistics.median(times)


def bodies(count: int, same: bool):
    prompt = f"why is the sky blue {uuid.uuid4().hex}"
    return [{"prompt": prompt if same else f"{prompt} {i}", "options": {"temperature": 0}} for i in range(count)]


def run(args) -> None:
    double = OllamaDouble().start()
    double.script(delay=args.delay)
    redis_server = None
    gateways = {"baseline": GatewayProcess(double.url).start(),
                "memory": GatewayProcess(double.url, CACHE_URL="memory://").start()}
    try:
        if args.redis:
            from tests.redis_server import RedisServer

            redis_server = RedisServer().start()
            gateways["redis"] = GatewayProcess(double.url, CACHE_URL=redis_server.url).start()
        results: dict[tuple, list] = {}
        for _ in range(args.repeat):
            for kind, path in ROUTES:
                with requests.Session() as session:
                    base = per_request(session, gateways["baseline"], path, bodies(args.requests, same=True))
                    results.setdefault((kind, "baseline", "-"), []).append((base, 1.0))
                    for store in [name for name in gateways if name != "baseline"]:
                        gateway = gateways[store]
                        miss = per_request(session, gateway, path, bodies(args.requests, same=False))
                        warm = bodies(args.requests + 1, same=True)
                        per_request(session, gateway, path, warm[:1])  # store it
                        hit = per_request(session, gateway, path, warm[1:])
                        results.setdefault((kind, "miss", store), []).append((miss, miss / base))
                        results.setdefault((kind, "hit", store), []).append((hit, hit / base))
        print(f"{args.requests} requests per figure, median of {args.repeat} runs, double delay {args.delay}s")
        print(f"{'route':9} {'case':9} {'store':7} {'ms/request':>11} {'x baseline':>11}")
        for (kind, case, store), figures in results.items():
            ms = statistics.median(seconds for seconds, _ in figures) * 1000
            ratio = statistics.median(ratio for _, ratio in figures)
            print(f"{kind:9} {case:9} {store:7} {ms:11.3f} {ratio:11.2f}")
    finally:
        for gateway in gateways.values():
            gateway.stop()
        if redis_server is not None:
            redis_server.stop()
        double.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--redis", action="store_true")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
