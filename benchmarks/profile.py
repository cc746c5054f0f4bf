"""Where a request's CPU goes: cProfile of the app in-process, called as gunicorn calls it (WSGI).

    .venv/bin/python -m benchmarks.profile [--mode whole|stream] [--calls 2000] [--top 30] [--app gateway|floor]

The app (the gateway, or the bare relay of benchmarks/floor.py) is built once, warmed up, then called
`--calls` times with a WSGI environ like gunicorn's (a fresh body stream each time), against
benchmarks/upstream.py in its own process; the profile covers only those calls (not gunicorn's
parsing or the client's socket, which are the same for both apps). Prints the top entries by own
time and by cumulative time, and the CPU microseconds per call of the profiled loop (cProfile slows
everything about 2x; compare entries with each other, not with the benchmark).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "k" * 24


def environ(path: str, body: dict) -> dict:
    """A WSGI environ as gunicorn's gevent worker builds it, for a JSON POST."""
    data = json.dumps(body).encode()
    return {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
            "RAW_URI": path, "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
            "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(data)), "HTTP_HOST": "127.0.0.1:8000", "HTTP_X_API_KEY": KEY,
            "HTTP_ACCEPT": "*/*", "HTTP_USER_AGENT": "bench", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "wsgi.input_terminated": True, "_body": data}


def call(app, template: dict) -> int:
    """One request through the WSGI app, its body read to the end and closed; returns the bytes read."""
    env = dict(template)
    env["wsgi.input"] = io.BytesIO(env.pop("_body"))
    env["_body"] = b""
    result = app(env, lambda status, headers, exc_info=None: None)
    size = 0
    try:
        for chunk in result:
            size += len(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return size


def build(which: str, url: str):
    if which == "floor":
        os.environ.update({"FLOOR_UPSTREAM_URL": url, "FLOOR_API_KEY": KEY})
        from benchmarks.floor import app
        return app
    from mlops_backend import create_app
    return create_app({"API_KEY": KEY, "OLLAMA_BASE_URL": url, "DATABASE_URL": "sqlite://", "LOG_LEVEL": "info",
                       "ALLOW_UNKNOWN_OPTIONS": "true", "RATE_LIMIT_PER_MINUTE": "0", "STREAMS_PER_KEY": "0"})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("whole", "stream"), default="whole")
    parser.add_argument("--app", choices=("gateway", "floor"), default="gateway")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", help="also write the raw profile here (for snakeviz, pstats)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp())
    from gevent import monkey
    monkey.patch_all()
    import cProfile
    import logging
    import pstats

    upstream = subprocess.Popen([sys.executable, "-m", "benchmarks.upstream", "--port", "0"], cwd=HERE,
                                stdout=subprocess.PIPE, text=True)
    try:
        url = upstream.stdout.readline().strip()
        app = build(args.app, url)
        logging.getLogger("mlops_backend.access").handlers[:] = [logging.NullHandler()]
        logging.getLogger("mlops_backend.access").propagate = False  # the line is built, not printed
        if args.mode == "whole":
            template = environ("/api/llm/generate", {"model": "llama3.2", "prompt": "hi"})
        else:
            template = environ("/api/llm/stream", {"model": "llama3.2", "prompt": "hi",
                                                   "options": {"num_predict": 100, "bench_delay_ms": 2}})
            template["HTTP_ACCEPT"] = "text/event-stream"
        for _ in range(100):
            call(app, template)
        profile = cProfile.Profile(time.process_time)  # CPU, not the waits on paced tokens
        started = time.process_time()
        profile.enable()
        for _ in range(args.calls):
            call(app, template)
        profile.disable()
        elapsed = time.process_time() - started
        unit = "call" if args.mode == "whole" else "100-token stream"
        print(f"{args.app} {args.mode}: {elapsed / args.calls * 1e6:,.0f} us per {unit} under cProfile")
        stats = pstats.Stats(profile)
        if args.out:
            stats.dump_stats(args.out)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
    finally:
        upstream.terminate()


if __name__ == "__main__":
    main()
