"""What the token-budget check costs per request, with Redis and with the database, against no budget.

    .venv/bin/python -m benchmarks.budgets [--calls 2000] [--repeat 5] [--postgres URL]

Each configuration is the app in-process (Flask's test client, gevent-patched as under gunicorn),
sending whole generations with one key to benchmarks/upstream.py in its own process:

* memory, no budget: RATE_LIMIT_STORAGE=memory://, no TOKENS_PER_* (the baseline);
* memory + SQLite budget: TOKENS_PER_DAY set, so the windows live in the SQLite file of DATABASE_URL;
* redis, no budget: RATE_LIMIT_STORAGE on a redis-server of our own (the baseline with Redis);
* redis budget: TOKENS_PER_DAY set, counted in that Redis;
* with --postgres, PostgreSQL budget: memory:// and DATABASE_URL on that PostgreSQL.

The configurations take turns, --calls requests each, --repeat times (the order rotating), so they
share the machine's state; printed are the medians of wall and CPU µs per request, and each with a
budget against its own baseline (Redis's CPU is its own process's, not counted). The request log
line is off in all of them (LOG_LEVEL=warning), which makes the ratios larger than under gunicorn.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bench-metrics-"))

from gevent import monkey  # noqa: E402  (before anything opens a socket, as gunicorn's gevent worker does)

monkey.patch_all()

import argparse  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "k" * 32
BIG = str(10**15)  # a budget the benchmark never spends


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis(scratch: str):
    """A redis-server of our own, no persistence; return (process, url)."""
    port = _free_port()
    process = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
                                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", scratch],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.025)
    client.close()
    return process, f"redis://127.0.0.1:{port}/0"


def _app(upstream: str, scratch: str, name: str, settings: dict):
    from mlops_backend import create_app

    return create_app({"API_KEY": KEY, "OLLAMA_BASE_URL": upstream, "DEFAULT_MODEL": "llama3.2",
                       "DATABASE_URL": f"sqlite:///{scratch}/{name}.db", "LOG_LEVEL": "warning",
                       "ALLOW_UNKNOWN_OPTIONS": "true", **settings})


def per_request(client, calls: int) -> tuple[float, float]:
    """Wall and CPU µs per whole generation."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        response = client.post("/api/llm/generate", headers={"X-API-Key": KEY}, json={"prompt": "hi"})
        assert response.status_code == 200, response.get_data(as_text=True)
        response.close()  # ends the request: the tokens are added to the budget here
    return (time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.budgets", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="requests per configuration and run")
    parser.add_argument("--repeat", type=int, default=5, help="runs (medians are printed)")
    parser.add_argument("--postgres", help="also a budget in this PostgreSQL (postgresql+psycopg://...)")
    args = parser.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="bench-budgets-")
    upstream = subprocess.Popen([sys.executable, "-m", "benchmarks.upstream", "--port", "0"], cwd=HERE,
                                stdout=subprocess.PIPE, text=True)
    redis_process, redis_url = _redis(scratch)
    apps = []
    try:
        url = upstream.stdout.readline().strip()
        configs = {"memory, no budget": {},
                   "memory + SQLite budget": {"TOKENS_PER_DAY": BIG},
                   "redis, no budget": {"RATE_LIMIT_STORAGE": redis_url},
                   "redis budget": {"RATE_LIMIT_STORAGE": redis_url, "TOKENS_PER_DAY": BIG}}
        if args.postgres:
            configs["PostgreSQL budget"] = {"TOKENS_PER_DAY": BIG, "DATABASE_URL": args.postgres}
        clients = {}
        for index, (name, settings) in enumerate(configs.items()):
            app = _app(url, scratch, f"c{index}", settings)
            apps.append(app)
            clients[name] = app.test_client()
            per_request(clients[name], 200)  # warm: connections, the schema, caches
        results = {name: [] for name in configs}
        names = list(configs)
        for run in range(args.repeat):
            for name in names[run % len(names):] + names[:run % len(names)]:
                results[name].append(per_request(clients[name], args.calls))
        baseline = {name: ("redis, no budget" if name.startswith("redis") else "memory, no budget") for name in names}
        print(f"{args.calls} whole generations per configuration and run, {args.repeat} runs, medians:")
        print(f"{'configuration':<24} {'wall µs':>9} {'CPU µs':>9} {'wall ratio':>11} {'CPU ratio':>10} "
              f"{'added wall':>11} {'added CPU':>10}")
        medians = {name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
                   for name, runs in results.items()}
        for name, (wall, cpu) in medians.items():
            base_wall, base_cpu = medians[baseline[name]]
            print(f"{name:<24} {wall:>9.0f} {cpu:>9.0f} {wall / base_wall:>10.3f}x {cpu / base_cpu:>9.3f}x "
                  f"{wall - base_wall:>+11.0f} {cpu - base_cpu:>+10.0f}")
    finally:
        for app in apps:
            app.extensions["mlops_backend"].close()
        upstream.terminate()
        redis_process.terminate()
        upstream.wait()
        redis_process.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
