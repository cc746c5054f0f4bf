"""What routing a request over three upstreams costs in CPU, against one upstream (nothing to decide).

    .venv/bin/python -m benchmarks.routing [--calls 50000] [--repeat 5]

Each call is what the gateway does per generation: rank the candidates for the model (warm, in
flight per max_parallel, weight, the conversation's upstream), open the request on the first (a
fake client: no I/O), count it in flight, and close it. The in-flight counter is the production
one (per worker, moving the Prometheus gauge). Printed: CPU µs per call for one upstream and for
three, and the difference, the routing decision's own cost (median of --repeat runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

from mlops_backend.observability.metrics import CountedInFlight, UpstreamHooks
from mlops_backend.upstream.conversations import conversation
from mlops_backend.upstream.router import NoCounter, Router
from mlops_backend.upstream.upstreams import UpstreamSpec

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Why is the sky blue?"}]


class _Stream:
    status, headers = 200, {}

    def wait_head(self, wait, raw=False):
        return True

    def close(self):
        pass


class _Client:
    def open(self, method, path, body, model):
        return _Stream()

    def close(self):
        pass


def _router(count: int) -> Router:
    specs = [UpstreamSpec(f"gpu-{n}", f"http://10.0.0.{n}:11434", max_parallel=4) for n in range(count)]
    router = Router(specs, lambda spec: _Client(), counter=CountedInFlight(NoCounter()), hooks=UpstreamHooks())
    for n, upstream in enumerate(router.upstreams):
        upstream.installed = frozenset({"llama3.2:latest", "qwen3:latest"})
        upstream.loaded = frozenset({"llama3.2:latest"} if n else set())
    return router


def per_call(router: Router, calls: int) -> float:
    """CPU µs per routed call: session key, candidates, open, head, close."""
    started = time.process_time()
    for _ in range(calls):
        stream = router.open("POST", "/api/chat", b"{}", model="llama3.2", session=conversation(MESSAGES))
        stream.wait_head(1.0, raw=True)
        stream.close()
    return (time.process_time() - started) / calls * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    one, three = _router(1), _router(3)
    per_call(one, 2000), per_call(three, 2000)  # warm up
    singles, triples = [], []
    for _ in range(args.repeat):
        singles.append(per_call(one, args.calls))
        triples.append(per_call(three, args.calls))
    single, triple = statistics.median(singles), statistics.median(triples)
    print(f"one upstream   {single:6.1f} us per call")
    print(f"three upstreams {triple:6.1f} us per call")
    print(f"routing decision {triple - single:+6.1f} us per call (target: at most +20)")


if __name__ == "__main__":
    main()
