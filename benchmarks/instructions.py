"""Instructions per whole generation and per lone streamed token, counted by callgrind: an A/B that noise
cannot move.

    .venv/bin/python -m benchmarks.instructions [--calls 200] [--streams 10] [--repo PATH ...]

These machines move wall and CPU times by 20% from run to run; valgrind's callgrind counts the
instructions the gateway executes, the same for the same code whatever else runs. Each count is the
app in-process (Flask's test client: routing, the key check, validation, the upstream client, the
relay, the observation with its metrics, usage and log line; not gunicorn or the client's socket),
against benchmarks/upstream.py in its own process. A lone token is one of a 100-token stream paced
2 ms apart, so each arrives in a read of its own. With several --repo (checkouts, e.g. git worktrees
of two commits) each is counted, and the ratios to the first are printed. Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What runs under callgrind: argv = repo, "whole"|"stream", upstream URL, count.
CHILD = r"""
import os, sys, tempfile
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
root, mode, url, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, root)
from gevent import monkey
monkey.patch_all()
from mlops_backend import create_app
app = create_app({"API_KEY": "k" * 24, "OLLAMA_BASE_URL": url, "DATABASE_URL": "sqlite://", "LOG_LEVEL": "info",
                  "ALLOW_UNKNOWN_OPTIONS": "true"})
client, keyed = app.test_client(), {"X-API-Key": "k" * 24}
for _ in range(count):
    if mode == "whole":
        client.post("/api/llm/generate", headers=keyed, json={"model": "llama3.2", "prompt": "hi"}).close()
    else:
        response = client.post("/api/llm/stream", headers=keyed, buffered=False, json={
            "model": "llama3.2", "prompt": "hi", "options": {"num_predict": 100, "bench_delay_ms": 2}})
        for _ in response.response:
            pass
        response.close()
"""


def count(repo: str, mode: str, url: str, calls: int) -> int:
    """Instructions callgrind counted for `calls` calls of `mode` (setup included)."""
    with tempfile.TemporaryDirectory() as scratch:
        script = os.path.join(scratch, "child.py")
        with open(script, "w") as handle:
            handle.write(CHILD)
        done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={scratch}/out",
                               sys.executable, script, repo, mode, url, str(calls)],
                              capture_output=True, text=True, check=True)
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise RuntimeError(f"callgrind said nothing countable:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="whole generations counted")
    parser.add_argument("--streams", type=int, default=10, help="100-token streams counted")
    parser.add_argument("--repo", action="append", help="checkout(s) to count (default: this one)")
    args = parser.parse_args(argv)
    upstream = subprocess.Popen([sys.executable, "-m", "benchmarks.upstream", "--port", "0"], cwd=HERE,
                                stdout=subprocess.PIPE, text=True)
    try:
        url = upstream.stdout.readline().strip()
        rows = []
        for repo in args.repo or [HERE]:
            setup = count(repo, "whole", url, 0)
            whole = (count(repo, "whole", url, args.calls) - setup) / args.calls
            token = (count(repo, "stream", url, args.streams) - setup) / (args.streams * 100)
            rows.append((repo, whole, token))
            print(f"{repo}: {whole:,.0f} instructions per whole generation, {token:,.0f} per lone token", flush=True)
        if len(rows) > 1:
            _, whole0, token0 = rows[0]
            for repo, whole, token in rows[1:]:
                print(f"{repo} / {rows[0][0]}: generation {whole / whole0:.3f}x, token {token / token0:.3f}x")
    finally:
        upstream.terminate()


if __name__ == "__main__":
    main()
