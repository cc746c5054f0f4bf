"""Process orchestration, the M1..M5 scenarios and the soak scenario S1.

Layout on a machine with at least two cores:

* core 0: the gateway (gunicorn master + gevent worker), via ``taskset -c 0``, and the
  floor (``benchmarks/floor.py``, a bare WSGI relay under the same gunicorn setup);
* core 1: the fast upstream (``taskset -c 1``) and this harness with its load
  client (``os.sched_setaffinity(0, {1})``).

Every M scenario measures the upstream directly, the floor and the gateway in the
same run, one after the other (the floor and the gateway share core 0, so only one
of them is ever under load).  Each scenario function fills an ``out`` dict as it goes
(``rows`` and ``details``), so that a run cut short by the time limit still
reports what it measured.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from . import API_KEY, BENCH_MODEL, TOKEN_TEXT, loadgen, procfs

PKG_DIR = Path(__file__).resolve().parent
REPO_ROOT = PKG_DIR.parent
RESULTS_DIR = PKG_DIR / "results"
HOST = "127.0.0.1"

GATEWAY_GENERATE = "/api/llm/generate"
GATEWAY_STREAM = "/api/llm/stream"
GATEWAY_HEADERS = {"X-API-Key": API_KEY, "Content-Type": "application/json"}

_now = time.monotonic


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def two_cores() -> bool:
    return (os.cpu_count() or 1) >= 2


def taskset(core: int) -> list:
    if two_cores() and shutil.which("taskset"):
        return ["taskset", "-c", str(core)]
    return []


def pin_self(core: int) -> bool:
    if two_cores() and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {core})
            return True
        except OSError:
            return False
    return False


def raise_nofile() -> tuple:
    """Raise RLIMIT_NOFILE as far as allowed; children started later inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    for new_hard in ((hard if hard == inf else max(hard, 65536)), hard):
        new_soft = 65536 if new_hard == inf else new_hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, new_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _die_with_parent(sig):
    """preexec_fn: have the kernel send ``sig`` to the child if this harness dies."""
    def setup():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    return setup


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def venv_python() -> str:
    cand = REPO_ROOT / ".venv" / "bin" / "python"
    return str(cand) if cand.exists() else sys.executable


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def pct(values, p):
    vals = sorted(v for v in values if v is not None)
    return loadgen.percentile(vals, p) if vals else None


def tail(path: Path, n: int = 40) -> list:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            return f.read().decode("utf-8", "replace").splitlines()[-n:]
    except OSError:
        return []


def row(rid, metric, unit, direct=None, gateway=None, *, floor=None, compare=None, target=None,
        kind="number", direct_of=None, gateway_of=None, floor_of=None, floor_ratio=False,
        note=None) -> dict:
    """One result line.

    target: (op, value, on[, max]) with on in {"gateway", "added", "floor_ratio", "floor_added"}
    (see report.evaluate); floor_ratio=True shows gateway ÷ floor (CPU and RSS rows).
    """
    r = {"id": rid, "metric": metric, "unit": unit, "kind": kind,
         "direct": direct, "floor": floor, "gateway": gateway, "compare": compare,
         "floor_ratio": floor_ratio}
    if kind == "fraction":
        r["direct_of"] = direct_of
        r["floor_of"] = floor_of
        r["gateway_of"] = gateway_of
    if target is not None:
        r["target"] = {"op": target[0], "value": target[1], "on": target[2]}
        if len(target) > 3:
            r["target"]["max"] = target[3]
    if note:
        r["note"] = note
    return r


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------
class Env:
    """The upstream, floor and gateway subprocesses of one run."""

    def __init__(self, quick: bool, log_dir: Path):
        self.floor: subprocess.Popen | None = None
        self.fl_port = 0
        self.fl_log = log_dir / "floor.log"
        self.floor_error = None
        self.floor_starts = 0
        self.fl_cpu_retired = 0.0  # CPU seconds of floors already stopped
        self.quick = quick
        self.log_dir = log_dir
        self.upstream: subprocess.Popen | None = None
        self.up_port = 0
        self.gateway: subprocess.Popen | None = None
        self.gw_port = 0
        self.gw_log = log_dir / "gateway.log"
        self.up_log = log_dir / "upstream.log"
        self.notes: list = []
        self.gateway_error = None
        self.gateway_starts = 0
        self.gw_cpu_retired = 0.0  # CPU seconds of gateways already stopped

    # -- upstream ---------------------------------------------------------------
    def start_upstream(self, max_seconds: float):
        cmd = taskset(1) + [sys.executable, "-m", "benchmarks.upstream", "--host", HOST,
                            "--port", "0", "--max-seconds", str(int(max_seconds) + 60),
                            "--parent-pid", str(os.getpid())]
        err = open(self.up_log, "wb")
        self.upstream = subprocess.Popen(cmd, cwd=str(REPO_ROOT), stdout=subprocess.PIPE,
                                         stderr=err, start_new_session=True,
                                         preexec_fn=_die_with_parent(signal.SIGTERM))
        err.close()
        ready, _, _ = select.select([self.upstream.stdout], [], [], 15)
        if not ready:
            raise RuntimeError("upstream did not print its URL within 15 s")
        url = self.upstream.stdout.readline().decode().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"upstream failed to start: {url!r} {tail(self.up_log)}")
        self.up_port = int(url.rsplit(":", 1)[1])
        return url

    # -- gateway ----------------------------------------------------------------
    def gateway_files_present(self) -> bool:
        return (REPO_ROOT / "wsgi.py").exists() and (REPO_ROOT / "gunicorn.conf.py").exists()

    async def start_gateway(self, timeout: float = 40.0) -> bool:
        if not self.gateway_files_present():
            self.gateway_error = "wsgi.py or gunicorn.conf.py missing in the repository root"
            return False
        self.gw_port = free_port()
        env = dict(os.environ)
        env.update({
            "OLLAMA_BASE_URL": f"http://{HOST}:{self.up_port}",
            "API_KEY": API_KEY, "AUTH_ENABLED": "true", "PORT": str(self.gw_port),
            "HOST": HOST, "WEB_CONCURRENCY": "1", "LOG_LEVEL": "info",  # one line per request, as deployed
            "DEFAULT_MODEL": BENCH_MODEL, "ALLOW_UNKNOWN_OPTIONS": "true",
            "GUNICORN_WORKER_CONNECTIONS": "12000", "PYTHONUNBUFFERED": "1",
            # One key sends thousands of requests a second: no per-key limit fits that, so limits are
            # off (their hooks still run); usage, metrics and the request log line stay on.
            "RATE_LIMIT_PER_MINUTE": "0", "STREAMS_PER_KEY": "0",
            "DATABASE_URL": f"sqlite:///{self.log_dir}/usage.db"})
        cmd = taskset(0) + [venv_python(), "-m", "gunicorn", "-c", "gunicorn.conf.py",
                            "wsgi:app"]
        mode = "ab" if self.gateway_starts else "wb"
        log = open(self.gw_log, mode)
        log.write(f"--- start {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n".encode())
        log.flush()
        # RLIMIT_NOFILE: the gateway inherits the limit raise_nofile() set in this process
        # (the same effect as a `ulimit -n` wrapper).  SIGINT is gunicorn's quick shutdown.
        self.gateway = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env,
                                        stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=_die_with_parent(signal.SIGINT))
        log.close()
        self.gateway_starts += 1
        self.gateway_error = await _wait_healthy(self.gateway, self.gw_port, self.gw_log,
                                                 "gateway", timeout)
        if self.gateway_error is None:
            return True
        if self.gateway.poll() is not None:
            self.gateway = None
        self.stop_gateway()
        return False

    async def restart_gateway(self) -> bool:
        self.stop_gateway()
        self.notes.append(f"gateway restarted at {time.strftime('%H:%M:%S')} (fresh worker)")
        return await self.start_gateway()

    def gateway_alive(self) -> bool:
        return self.gateway is not None and self.gateway.poll() is None

    def gateway_workers(self) -> list:
        if not self.gateway_alive():
            return []
        return procfs.descendants(self.gateway.pid)

    def gateway_cpu(self) -> dict:
        return procfs.tree_cpu(self.gateway.pid) if self.gateway_alive() else {}

    def upstream_cpu(self) -> dict:
        return procfs.tree_cpu(self.upstream.pid) if self.upstream else {}

    def worker_rss_kb(self):
        ws = self.gateway_workers()
        vals = [procfs.rss_kb(w) for w in ws]
        vals = [v for v in vals if v is not None]
        return sum(vals) if vals else None

    @staticmethod
    def _kill(p: subprocess.Popen | None, grace: float = 5.0, sig=signal.SIGTERM):
        """Stop one of our subprocesses and its process group (its own session)."""
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            p.send_signal(sig)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def stop_gateway(self):
        if self.gateway_alive():
            self.gw_cpu_retired += sum(self.gateway_cpu().values())
        self._kill(self.gateway, sig=signal.SIGINT)
        self.gateway = None

    # -- floor --------------------------------------------------------------------
    async def start_floor(self, timeout: float = 30.0) -> bool:
        """The bare WSGI relay (benchmarks/floor.py), under the gateway's gunicorn worker setup."""
        self.fl_port = free_port()
        env = dict(os.environ)
        env.update({"FLOOR_UPSTREAM_URL": f"http://{HOST}:{self.up_port}",
                    "FLOOR_API_KEY": API_KEY, "FLOOR_BIND": f"{HOST}:{self.fl_port}",
                    "GUNICORN_WORKER_CONNECTIONS": "12000", "PYTHONUNBUFFERED": "1"})
        cmd = taskset(0) + [venv_python(), "-m", "gunicorn", "-c",
                            str(PKG_DIR / "floor_gunicorn.py"), "benchmarks.floor:app"]
        log = open(self.fl_log, "ab" if self.floor_starts else "wb")
        log.write(f"--- start {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n".encode())
        log.flush()
        self.floor = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env,
                                      stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=_die_with_parent(signal.SIGINT))
        log.close()
        self.floor_starts += 1
        self.floor_error = await _wait_healthy(self.floor, self.fl_port, self.fl_log, "floor",
                                               timeout)
        if self.floor_error is None:
            return True
        self.stop_floor()
        return False

    async def restart_floor(self) -> bool:
        self.stop_floor()
        self.notes.append(f"floor restarted at {time.strftime('%H:%M:%S')} (fresh worker)")
        return await self.start_floor()

    def floor_alive(self) -> bool:
        return self.floor is not None and self.floor.poll() is None

    def floor_workers(self) -> list:
        return procfs.descendants(self.floor.pid) if self.floor_alive() else []

    def floor_cpu(self) -> dict:
        """CPU of the floor's master and worker, read the same way as gateway_cpu."""
        return procfs.tree_cpu(self.floor.pid) if self.floor_alive() else {}

    def floor_rss_kb(self):
        vals = [procfs.rss_kb(w) for w in self.floor_workers()]
        vals = [v for v in vals if v is not None]
        return sum(vals) if vals else None

    def stop_floor(self):
        if self.floor_alive():
            self.fl_cpu_retired += sum(self.floor_cpu().values())
        self._kill(self.floor, sig=signal.SIGINT)
        self.floor = None

    def stop_all(self, grace: float = 5.0):
        self._kill(self.floor, grace, sig=signal.SIGINT)
        self._kill(self.gateway, grace, sig=signal.SIGINT)
        self._kill(self.upstream, grace)
        if self.upstream is not None and self.upstream.stdout:
            self.upstream.stdout.close()

    # -- upstream control ----------------------------------------------------------
    async def up_get(self, path):
        st, _, body = await loadgen.http_request(HOST, self.up_port, "GET", path, timeout=10)
        if st != 200:
            raise RuntimeError(f"upstream {path}: {st}")
        return json.loads(body)

    async def up_reset(self):
        await loadgen.http_request(HOST, self.up_port, "POST", "/_bench/reset", body=b"",
                                   timeout=10)


async def _wait_healthy(proc: subprocess.Popen, port: int, log: Path, name: str,
                        timeout: float):
    """Wait for GET /health to answer 200; None when it did, else why not."""
    end = _now() + timeout
    last = None
    while _now() < end:
        if proc.poll() is not None:
            return f"{name} exited with code {proc.returncode}: " + " | ".join(tail(log, 15))
        try:
            st, _, body = await loadgen.http_request(HOST, port, "GET", "/health", timeout=2)
            last = (st, body[:200])
            if st == 200:
                return None
        except (OSError, asyncio.TimeoutError) as e:
            last = repr(e)
        await asyncio.sleep(0.2)
    return f"GET /health did not answer 200 within {timeout:.0f} s (last: {last})"


class Ctx:
    def __init__(self, env: Env, quick: bool, direct_only: bool, no_floor: bool = False):
        self.env = env
        self.quick = quick
        self.direct_only = direct_only
        self.no_floor = no_floor

    @property
    def gateway(self) -> bool:
        return not self.direct_only and self.env.gateway_alive()

    @property
    def floor(self) -> bool:
        return not self.direct_only and not self.no_floor and self.env.floor_alive()


def direct_body(n, first=0, delay=0, stream=True, tag=None):
    opts = {"num_predict": n, "bench_first_delay_ms": first, "bench_delay_ms": delay}
    if tag:
        opts["bench_tag"] = tag
    return {"model": BENCH_MODEL, "prompt": "hi", "stream": stream, "options": opts}


def gateway_body(n, first=0, delay=0, tag=None, numbered=False):
    opts = {"num_predict": n, "bench_first_delay_ms": first, "bench_delay_ms": delay}
    if tag:
        opts["bench_tag"] = tag
    if numbered:
        opts["bench_numbered"] = 1
    return {"model": BENCH_MODEL, "prompt": "hi", "options": opts}


def direct_stream_req(env, n, first=0, delay=0, tag=None):
    return loadgen.build_request("POST", "/api/generate", HOST, env.up_port,
                                 direct_body(n, first, delay, True, tag))


def gateway_stream_req(env, n, first=0, delay=0, tag=None, port=None, numbered=False):
    """A /api/llm/stream request for the gateway, or for the floor with port=env.fl_port."""
    h = dict(GATEWAY_HEADERS, Accept="text/event-stream")
    return loadgen.build_request("POST", GATEWAY_STREAM, HOST, port or env.gw_port,
                                 gateway_body(n, first, delay, tag, numbered), h)


def floor_stream_req(env, n, first=0, delay=0, tag=None):
    return gateway_stream_req(env, n, first, delay, tag, port=env.fl_port)


def gateway_generate_req(env, n, port=None):
    return loadgen.build_request("POST", GATEWAY_GENERATE, HOST, port or env.gw_port,
                                 gateway_body(n), GATEWAY_HEADERS)


def stream_summary(results) -> dict:
    n = len(results)
    intact = sum(1 for r in results if r.intact)
    errs: dict = {}
    samples = []
    for r in results:
        if not r.intact:
            key = (f"status={r.status} done={r.done} tokens={r.tokens}/{r.expected} "
                   f"conn_error={r.conn_error} timeout={r.timed_out} "
                   f"error={str(r.error)[:120] if r.error else None}")
            errs[key] = errs.get(key, 0) + 1
            if len(samples) < 3:
                samples.append({"status": r.status, "content_type": r.content_type,
                                "tokens": r.tokens, "done": r.done, "error": r.error,
                                "conn_error": r.conn_error, "timed_out": r.timed_out,
                                "body": r.body_excerpt, "bad_events": r.bad,
                                "final": r.final})
    ttfts = [r.ttft * 1000 for r in results if r.ttft is not None]
    return {"streams": n, "intact": intact, "tokens": sum(r.tokens for r in results),
            "heartbeats": sum(r.heartbeats for r in results),
            "ttft_p50_ms": pct(ttfts, 50), "ttft_p99_ms": pct(ttfts, 99),
            "ttft_max_ms": max(ttfts) if ttfts else None,
            "failures": dict(sorted(errs.items(), key=lambda kv: -kv[1])[:8]),
            "failure_samples": samples}


# --------------------------------------------------------------------------
# M1: non-streaming requests
# --------------------------------------------------------------------------
async def scenario_m1(ctx: Ctx, out: dict):
    env = ctx.env
    conns = 32
    duration = 3.0 if ctx.quick else 15.0
    warmup = 1.0 if ctx.quick else 2.0
    n = 10
    expect = TOKEN_TEXT * n

    def validate(body):
        try:
            obj = json.loads(body)
        except ValueError:
            return False
        return isinstance(obj, dict) and obj.get("done") is True and obj.get("response") == expect

    async def measure(port, request, cpu_fn, check=validate):
        load = loadgen.NonStreamLoad(HOST, port, request, conns, check)
        await load.start()
        await asyncio.sleep(warmup)
        load.reset()
        c0 = cpu_fn()
        u0 = env.upstream_cpu()
        try:
            await asyncio.sleep(duration)
            snap = load.snapshot()
            c1 = cpu_fn()
            u1 = env.upstream_cpu()
        finally:
            await load.stop()
        cpu = procfs.cpu_delta(c0, c1)
        snap["cpu_s"] = cpu
        snap["cpu_us_per_req"] = cpu / snap["ok"] * 1e6 if snap["ok"] else None
        snap["upstream_cpu_us_per_req"] = (procfs.cpu_delta(u0, u1) / snap["ok"] * 1e6
                                           if snap["ok"] else None)
        return snap

    d_req = loadgen.build_request("POST", "/api/generate", HOST, env.up_port,
                                  direct_body(n, stream=False))
    d = await measure(env.up_port, d_req, env.upstream_cpu)
    out["details"]["direct"] = d
    f = g = health = None
    out["rows"] = _m1_rows(d, f, g)
    if ctx.floor:
        f = await measure(env.fl_port, gateway_generate_req(env, n, env.fl_port), env.floor_cpu)
        out["details"]["floor"] = f
        out["rows"] = _m1_rows(d, f, g)
    if ctx.gateway:
        g = await measure(env.gw_port, gateway_generate_req(env, n), env.gateway_cpu)
        out["details"]["gateway"] = g
        # The gateway answering GET /health (no body, no Ollama call), to show how much of M1
        # is gunicorn + Flask themselves.
        h_req = loadgen.build_request("GET", "/health", HOST, env.gw_port, None, {})
        health = await measure(env.gw_port, h_req, env.gateway_cpu,
                               check=lambda body: b'"ok"' in body)
        out["details"]["gateway_health"] = health
        out["rows"] = _m1_rows(d, f, g, health)


def _m1_rows(d, f, g, health=None):
    f, g, health = f or {}, g or {}, health or {}
    return [
        row("M1.health", "M1 gateway: CPU per GET /health", "us", None,
            health.get("cpu_us_per_req")),
        row("M1.rps", "M1 requests/s, 32 conns", "req/s", d.get("rps"), g.get("rps"),
            floor=f.get("rps"), compare="ratio"),
        row("M1.cpu", "M1 CPU per generation", "us", d.get("cpu_us_per_req"),
            g.get("cpu_us_per_req"), floor=f.get("cpu_us_per_req"), compare="ratio",
            floor_ratio=True, target=("<=", 1.5, "floor_ratio")),
        row("M1.p50", "M1 latency p50", "ms", d.get("latency_p50_ms"), g.get("latency_p50_ms"),
            floor=f.get("latency_p50_ms"), compare="added"),
        row("M1.bad", "M1 bad responses", "count", d.get("bad"), g.get("bad"),
            floor=f.get("bad"), target=("==", 0, "gateway")),
    ]


# --------------------------------------------------------------------------
# M2: fast streams, CPU per relayed token
# --------------------------------------------------------------------------
async def scenario_m2(ctx: Ctx, out: dict):
    env = ctx.env
    conc, n = 32, 500
    duration = 2.0 if ctx.quick else 5.0

    async def measure(port, request, cpu_fn):
        c0 = cpu_fn()
        t0 = _now()
        results = await loadgen.run_stream_pool(HOST, port, request, conc, duration, n,
                                                timeout=30)
        el = _now() - t0
        c1 = cpu_fn()
        s = stream_summary(results)
        cpu = procfs.cpu_delta(c0, c1)
        s["cpu_s"] = cpu
        s["elapsed_s"] = el
        s["cpu_us_per_token"] = cpu / s["tokens"] * 1e6 if s["tokens"] else None
        s["tokens_per_s"] = s["tokens"] / el if el > 0 else None
        return s

    d = await measure(env.up_port, direct_stream_req(env, n), env.upstream_cpu)
    out["details"]["direct"] = d
    f = g = None
    out["rows"] = _m2_rows(d, f, g)
    if ctx.floor:
        f = await measure(env.fl_port, floor_stream_req(env, n), env.floor_cpu)
        out["details"]["floor"] = f
        out["rows"] = _m2_rows(d, f, g)
    if ctx.gateway:
        g = await measure(env.gw_port, gateway_stream_req(env, n), env.gateway_cpu)
        out["details"]["gateway"] = g
        out["rows"] = _m2_rows(d, f, g)


def _m2_rows(d, f, g):
    f, g = f or {}, g or {}
    return [
        row("M2.cpu", "M2 CPU per burst token (32x500)", "us", d.get("cpu_us_per_token"),
            g.get("cpu_us_per_token"), floor=f.get("cpu_us_per_token"), compare="ratio",
            floor_ratio=True, target=("<=", 1.0, "floor_ratio")),
        row("M2.tps", "M2 tokens/s", "tok/s", d.get("tokens_per_s"), g.get("tokens_per_s"),
            floor=f.get("tokens_per_s"), compare="ratio"),
        _intact_row("M2.intact", "M2 streams intact", d, f, g),
    ]


def _intact_row(rid, metric, d, f, g):
    return row(rid, metric, "streams", d.get("intact"), g.get("intact"), floor=f.get("intact"),
               kind="fraction", direct_of=d.get("streams"), floor_of=f.get("streams"),
               gateway_of=g.get("streams"), target=("all", None, "gateway"))


# --------------------------------------------------------------------------
# M3: 200 paced streams, added time to first token
# --------------------------------------------------------------------------
async def scenario_m3(ctx: Ctx, out: dict):
    env = ctx.env
    conc, n, first, delay = 200, 100, 50, 20
    waves = 1 if ctx.quick else 3
    wave_timeout = (first + n * delay) / 1000 + 30

    async def measure(port, make_req, cpu_fn):
        c0 = cpu_fn()
        results = []
        for _ in range(waves):
            ss = loadgen.StreamSet(HOST, port, make_req, conc, n, timeout=wave_timeout)
            results.extend(await ss.run())
        c1 = cpu_fn()
        s = stream_summary(results)
        cpu = procfs.cpu_delta(c0, c1)
        s["cpu_s"] = cpu
        s["cpu_us_per_token"] = cpu / s["tokens"] * 1e6 if s["tokens"] else None
        return s

    d = await measure(env.up_port, direct_stream_req(env, n, first, delay), env.upstream_cpu)
    out["details"]["direct"] = d
    f = g = None
    out["rows"] = _m3_rows(d, f, g)
    if ctx.floor:
        f = await measure(env.fl_port, floor_stream_req(env, n, first, delay), env.floor_cpu)
        out["details"]["floor"] = f
        out["rows"] = _m3_rows(d, f, g)
    if ctx.gateway:
        g = await measure(env.gw_port, gateway_stream_req(env, n, first, delay),
                          env.gateway_cpu)
        out["details"]["gateway"] = g
        out["rows"] = _m3_rows(d, f, g)


def _m3_rows(d, f, g):
    """TTFT rows: "floor vs direct" is the floor's added TTFT, beside the gateway's."""
    f, g = f or {}, g or {}
    return [
        row("M3.ttft50", "M3 TTFT p50 (200 streams)", "ms", d.get("ttft_p50_ms"),
            g.get("ttft_p50_ms"), floor=f.get("ttft_p50_ms"), compare="added",
            target=("<=", 5, "added")),
        row("M3.ttft99", "M3 TTFT p99 (200 streams)", "ms", d.get("ttft_p99_ms"),
            g.get("ttft_p99_ms"), floor=f.get("ttft_p99_ms"), compare="added",
            target=("<=", 30, "added")),
        row("M3.cpu", "M3 CPU per lone token", "us", d.get("cpu_us_per_token"),
            g.get("cpu_us_per_token"), floor=f.get("cpu_us_per_token"), compare="ratio",
            floor_ratio=True, target=("<=", 1.0, "floor_ratio")),
        _intact_row("M3.intact", "M3 streams intact", d, f, g),
    ]


# --------------------------------------------------------------------------
# M4: thousands of slow streams on one worker
# --------------------------------------------------------------------------
async def scenario_m4(ctx: Ctx, out: dict):
    env = ctx.env
    counts = [2000] if ctx.quick else [2000, 10000]
    n, first, delay = 40, 500, 500
    batch, batch_interval = 500, 0.5
    out["details"]["nofile_limit_harness"] = resource.getrlimit(resource.RLIMIT_NOFILE)
    if env.gateway_alive():
        ws = env.gateway_workers()
        out["details"]["nofile_limit_gateway_worker"] = (procfs.nofile_limit(ws[0])
                                                         if ws else None)
    out["rows"] = []

    async def measure(count, port, request, pid_rss, cpu_fn):
        open_time = (count // batch) * batch_interval
        timeout = open_time + (first + n * delay) / 1000 + max(40.0, count * 0.006)
        rss_before = pid_rss()
        c0 = cpu_fn()
        ss = loadgen.StreamSet(HOST, port, request, count, n, batch=batch,
                               batch_interval=batch_interval, timeout=timeout)
        task = asyncio.create_task(ss.run())
        # RSS is sampled every 0.25 s; the figure is the median of the samples taken while
        # the most streams were open (response started, none finished yet), ideally all.
        samples = []
        rss_peak = rss_before or 0
        t_start = _now()
        try:
            while not task.done():
                await asyncio.sleep(0.25)
                r = pid_rss()
                if r is None:
                    continue
                rss_peak = max(rss_peak, r)
                st = ss.stats
                open_now = st.headers - st.finished
                if st.finished == 0 and open_now > 0:
                    samples.append((open_now, r, _now() - t_start))
            results = task.result()
        except BaseException:
            task.cancel()
            raise
        c1 = cpu_fn()
        best_open = max((x[0] for x in samples), default=0)
        at_best = [x for x in samples if x[0] == best_open]
        rss_open = median([x[1] for x in at_best]) if at_best else None
        t_best = [round(at_best[0][2], 2), round(at_best[-1][2], 2)] if at_best else None
        s = stream_summary(results)
        cpu = procfs.cpu_delta(c0, c1)
        s.update({"count": count, "rss_before_kb": rss_before, "rss_open_kb": rss_open,
                  "rss_peak_kb": rss_peak, "open_at_sample": best_open if best_open > 0 else None,
                  "sampled_between_s": t_best, "samples_at_most_open": len(at_best), "elapsed_s": _now() - t_start, "cpu_s": cpu,
                  "stream_timeout_s": timeout,
                  "cpu_us_per_token": cpu / s["tokens"] * 1e6 if s["tokens"] else None})
        if rss_open is not None and rss_before is not None and best_open > 0:
            s["rss_kb_per_stream"] = (rss_open - rss_before) / best_open
        else:
            s["rss_kb_per_stream"] = None
        return s

    for count in counts:
        key = str(count)
        d = await measure(count, env.up_port, direct_stream_req(env, n, first, delay),
                          lambda: procfs.rss_kb(env.upstream.pid), env.upstream_cpu)
        out["details"][f"direct_{key}"] = d
        f = g = None
        rows = _m4_rows(count, d, f, g)
        out["rows"].extend(rows)
        if ctx.floor:
            # the floor first, the same way: a fresh worker, warmed up
            if await env.restart_floor():
                await _warm(env.fl_port, env)
                f = await measure(count, env.fl_port, floor_stream_req(env, n, first, delay),
                                  env.floor_rss_kb, env.floor_cpu)
                out["details"][f"floor_{key}"] = f
                out["rows"][-len(rows):] = _m4_rows(count, d, f, g)
            else:
                out["details"][f"floor_{key}_restart_failed"] = env.floor_error
            await asyncio.sleep(1.0)
        if ctx.gateway:
            # a fresh worker, warmed up, so that "RSS before" is not memory that an
            # earlier phase left behind
            if await env.restart_gateway():
                await _warm(env.gw_port, env)
            else:
                out["details"][f"gateway_{key}_restart_failed"] = env.gateway_error
                break
            g = await measure(count, env.gw_port, gateway_stream_req(env, n, first, delay),
                              env.worker_rss_kb, env.gateway_cpu)
            out["details"][f"gateway_{key}"] = g
            out["rows"][-len(rows):] = _m4_rows(count, d, f, g)
            if not env.gateway_alive():
                out["details"][f"gateway_{key}_died"] = True
                break
        await asyncio.sleep(1.0)


async def _warm(port: int, env: Env):
    """A few streams and requests, so that lazily allocated state exists before a baseline."""
    req = gateway_stream_req(env, 20, port=port)
    await asyncio.gather(*(loadgen.run_stream(HOST, port, req, 20, timeout=20)
                           for _ in range(50)))
    greq = gateway_generate_req(env, 10, port)
    for _ in range(20):
        await loadgen.run_stream(HOST, port, greq, None, timeout=20)
    await asyncio.sleep(0.5)


def _m4_rows(count, d, f, g):
    f, g = f or {}, g or {}
    return [
        _intact_row(f"M4.{count}.intact", f"M4 {count} slow streams intact", d, f, g),
        row(f"M4.{count}.rss", f"M4 {count} RSS growth per open stream", "KB",
            d.get("rss_kb_per_stream"), g.get("rss_kb_per_stream"),
            floor=f.get("rss_kb_per_stream"), compare="ratio", floor_ratio=True,
            target=("<=", 2, "floor_added", 30)),
        row(f"M4.{count}.cpu", f"M4 {count} CPU per token", "us", d.get("cpu_us_per_token"),
            g.get("cpu_us_per_token"), floor=f.get("cpu_us_per_token"), compare="ratio",
            floor_ratio=True),
    ]


# --------------------------------------------------------------------------
# M5: cancellation propagation
# --------------------------------------------------------------------------
async def _find_record(env: Env, tag: str, since_id: int, t_from: float, wait: float):
    """Poll the upstream until the stream tagged ``tag`` is seen closed."""
    end = _now() + wait
    rec = None
    while True:
        data = await env.up_get(f"/_bench/streams?since={since_id}")
        streams = data.get("streams", [])
        mine = [s for s in streams if s.get("tag") == tag]
        if not mine and not any(s.get("tag") for s in streams):
            # the tag did not make it through: take the first stream of this trial
            mine = [s for s in streams if s["started"] >= t_from - 0.001][:1]
        rec = mine[0] if mine else None
        if rec is not None and rec.get("closed") is not None:
            return rec, True
        if _now() >= end:
            return rec, False
        await asyncio.sleep(0.01)


async def _last_id(env: Env) -> int:
    data = await env.up_get("/_bench/streams?summary=1")
    return int(data["last_id"])


async def scenario_m5(ctx: Ctx, out: dict):
    env = ctx.env
    trials = 5 if ctx.quick else 20
    n = 1000
    wait = 5.0
    await env.up_reset()
    results: dict = {}
    out["rows"] = []

    async def window(target, mode):
        lat, after, missed = [], [], 0
        samples = []
        for i in range(trials):
            tag = f"m5-{target}-{mode}-{i}-{uuid.uuid4().hex[:8]}"
            if mode == "flowing":
                first, delay, kw = 0, 50, {"close_after_tokens": 10}
            else:
                first, delay, kw = 30000, 50, {"close_after_s": 1.0}
            if target == "direct":
                port, req = env.up_port, direct_stream_req(env, n, first, delay, tag)
            elif target == "floor":
                port, req = env.fl_port, floor_stream_req(env, n, first, delay, tag)
            else:
                port, req = env.gw_port, gateway_stream_req(env, n, first, delay, tag)
            since = await _last_id(env)
            t_from = _now()
            res = await loadgen.run_stream(HOST, port, req, n, timeout=20, **kw)
            if res.t_close is None:
                samples.append({"trial": i, "problem": "client did not close",
                                "status": res.status, "tokens": res.tokens,
                                "error": res.error, "conn_error": res.conn_error})
                missed += 1
                if missed >= 2 and not lat:
                    break
                continue
            rec, seen = await _find_record(env, tag, since, t_from, wait)
            if not seen:
                missed += 1
                samples.append({"trial": i, "problem": f"upstream not closed after {wait}s",
                                "record": rec})
                if missed >= 2 and not lat:
                    break
                continue
            lat.append((rec["closed"] - res.t_close) * 1000)
            after.append(rec["tokens"] - res.tokens)
            if mode == "silent":
                await asyncio.sleep(0.05)
        return {"trials": len(lat) + missed, "detected": len(lat), "missed": missed,
                "median_ms": median(lat), "max_ms": max(lat) if lat else None,
                "latencies_ms": lat, "tokens_after_close_median": median(after),
                "samples": samples}

    targets = (["direct"] + (["floor"] if ctx.floor else [])
               + (["gateway"] if ctx.gateway else []))
    for mode in ("flowing", "silent"):
        for target in targets:
            results[(target, mode)] = r = await window(target, mode)
            out["details"][f"{target}_{mode}"] = r
            out["rows"] = _m5_rows(results, wait)


def _m5_rows(results, wait):
    def get(t, m, k):
        r = results.get((t, m))
        if r is None:
            return None
        if k == "median_ms" and r["detected"] == 0 and r["missed"]:
            return float(f"{wait * 1000:.0f}")  # lower bound: not seen within the wait
        return r[k]

    rows = []
    for mode, label in (("flowing", "tokens flowing, 50 ms apart"),
                        ("silent", "upstream silent")):
        note = None
        g = results.get(("gateway", mode))
        if g is not None and g["missed"]:
            note = f"gateway: {g['missed']} of {g['trials']} closes not seen within {wait:.0f} s"
        rows.append(row(f"M5.{mode}", f"M5 close -> upstream closed, {label}", "ms",
                        get("direct", mode, "median_ms"), get("gateway", mode, "median_ms"),
                        floor=get("floor", mode, "median_ms"),
                        compare="added", target=("<=", 5, "gateway"), note=note))
    rows.append(row("M5.after", "M5 tokens sent upstream after close (flowing)", "tokens",
                    get("direct", "flowing", "tokens_after_close_median"),
                    get("gateway", "flowing", "tokens_after_close_median"),
                    floor=get("floor", "flowing", "tokens_after_close_median"),
                    compare="added"))
    return rows


# --------------------------------------------------------------------------
# S1: a bounded soak, 1,000 paced streams kept open on the gateway's one worker
# --------------------------------------------------------------------------
S1_STREAMS = 1000
S1_TOKENS = 300  # 60 s per stream at 5 tokens/s
S1_DELAY_MS = 200
S1_SAMPLE_S = 10.0
S1_FDS_PER_STREAM = 2  # a stream holds the client's socket and one upstream socket


def s1_durations(quick: bool) -> tuple:
    """(load seconds, the time of the reference sample the end is compared with)."""
    return (120.0, 30.0) if quick else (1200.0, 120.0)


class _SoakTally:
    """Counts of the soak's streams, kept as they end (20,000 results need not be kept)."""

    def __init__(self):
        self.streams = self.intact = self.tokens = self.expected_tokens = 0
        self.lost = self.disorder = self.errors = 0
        self.failures: dict = {}
        self.samples: list = []

    def add(self, r):
        self.streams += 1
        self.tokens += r.tokens
        self.expected_tokens += r.expected or 0
        self.lost += max(0, (r.expected or 0) - r.tokens)
        self.disorder += r.disorder
        if r.error is not None:
            self.errors += 1
        if r.intact:
            self.intact += 1
            return
        key = (f"status={r.status} done={r.done} tokens={r.tokens}/{r.expected} "
               f"disorder={r.disorder} conn_error={r.conn_error} timeout={r.timed_out} "
               f"error={str(r.error)[:120] if r.error else None}")
        self.failures[key] = self.failures.get(key, 0) + 1
        if len(self.samples) < 3:
            self.samples.append({"status": r.status, "tokens": r.tokens, "done": r.done,
                                 "error": r.error, "conn_error": r.conn_error,
                                 "disorder": r.disorder, "body": r.body_excerpt,
                                 "final": r.final})


async def scenario_s1(ctx: Ctx, out: dict):
    """1,000 streams at 5 tokens/s for 20 minutes (quick: 2) through the gateway's one worker.

    Each of 1,000 slots re-opens its stream as soon as it ends; the first stream of slot i is
    (i+1)/1000 of the full length, so the ends (and re-opens) are spread evenly instead of
    coming all at once every 60 s.  Streams are sized to end by the deadline, so none is cut.
    Tokens are numbered by the upstream (bench_numbered), and the client checks each stream
    got 0, 1, 2, ... n-1 and the done event.  The worker's RSS and open fds are sampled every
    10 s; the figures compare the end with minute 2 (quick: 30 s), when the 1,000 are open.
    """
    env = ctx.env
    out["rows"] = _s1_rows({})
    if not ctx.gateway:
        out["details"]["skipped"] = "gateway not running"
        return
    duration, ref_at = s1_durations(ctx.quick)
    per_token = S1_DELAY_MS / 1000
    await env.up_reset()
    workers = env.gateway_workers()
    pid = workers[0] if workers else None
    stats = loadgen.StreamStats()
    tally = _SoakTally()
    t0 = _now()
    end = t0 + duration
    c0 = env.gateway_cpu()
    reqs: dict = {}

    def request(n):
        r = reqs.get(n)
        if r is None:
            r = reqs[n] = gateway_stream_req(env, n, 0, S1_DELAY_MS, numbered=True)
        return r

    async def slot(i):
        n = max(1, S1_TOKENS * (i + 1) // S1_STREAMS)
        while True:
            fits = int((end - _now()) / per_token) - 1  # tokens that end by the deadline
            if fits < 25:  # under 5 s left: this slot is done
                return
            n = min(n, fits)
            res = await loadgen.run_stream(HOST, env.gw_port, request(n), n,
                                           timeout=n * per_token + 60, stats=stats,
                                           numbered=True)
            tally.add(res)
            n = S1_TOKENS

    samples = []

    def sample():
        open_now = stats.connected - stats.finished
        samples.append({"t": round(_now() - t0, 1), "open": open_now,
                        "rss_kb": procfs.rss_kb(pid) if pid else None,
                        "fds": procfs.open_fds(pid) if pid else None})

    sample()
    tasks = []
    for i in range(S1_STREAMS):
        if i and i % 250 == 0:
            await asyncio.sleep(0.5)
        tasks.append(asyncio.create_task(slot(i)))
    try:
        nxt = t0 + S1_SAMPLE_S
        while _now() < end - 5:
            await asyncio.sleep(max(0.0, min(nxt, end - 5) - _now()))
            if _now() >= nxt:
                sample()
                nxt += S1_SAMPLE_S
            out["details"].update(_s1_details(tally, samples, stats, duration, ref_at))
            if tally.tokens:  # so far, in case the time limit cuts the soak
                cpu = procfs.cpu_delta(c0, env.gateway_cpu())
                out["details"]["cpu_us_per_token"] = cpu / tally.tokens * 1e6
            out["rows"] = _s1_rows(out["details"])
        sample()  # the last with (almost) every stream open
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise
    c1 = env.gateway_cpu()
    cpu = procfs.cpu_delta(c0, c1)
    sample()  # after: every stream closed
    details = _s1_details(tally, samples, stats, duration, ref_at)
    details["cpu_s"] = cpu
    details["cpu_us_per_token"] = cpu / tally.tokens * 1e6 if tally.tokens else None
    details["elapsed_s"] = _now() - t0
    if env.gateway_workers() != workers:
        details["worker_changed"] = f"{workers} -> {env.gateway_workers()}"
    out["details"].update(details)
    out["rows"] = _s1_rows(out["details"])


def _s1_details(tally, samples, stats, duration, ref_at) -> dict:
    """RSS and fds at the reference time and at the end (the last sample with streams open)."""
    full = [s for s in samples if s["rss_kb"] is not None and s["t"] > 0 and s["open"] > 0]
    ref = min(full, key=lambda s: abs(s["t"] - ref_at)) if full else None
    last = full[-1] if full else None
    d = {"duration_s": duration, "reference_at_s": ref_at, "streams": tally.streams,
         "intact": tally.intact, "tokens": tally.tokens, "expected_tokens": tally.expected_tokens,
         "chunks_lost": tally.lost, "chunks_out_of_order": tally.disorder,
         "error_events": tally.errors, "failures": dict(tally.failures),
         "failure_samples": tally.samples, "open_now": stats.connected - stats.finished,
         "samples": samples, "reference_sample": ref, "end_sample": last}
    if ref and last and ref["t"] < last["t"]:
        d["rss_ratio"] = last["rss_kb"] / ref["rss_kb"] if ref["rss_kb"] else None
        if ref["fds"] is not None and last["fds"] is not None:
            k = S1_FDS_PER_STREAM
            d["fds_adjusted_delta"] = ((last["fds"] - k * last["open"])
                                       - (ref["fds"] - k * ref["open"]))
            d["fds_raw_delta"] = last["fds"] - ref["fds"]
    return d


def _s1_rows(d: dict) -> list:
    ref = f"{d.get('reference_at_s', 120):.0f} s"
    return [
        row("S1.intact", "S1 soak streams intact", "streams", None, d.get("intact"),
            kind="fraction", gateway_of=d.get("streams"), target=("all", None, "gateway")),
        row("S1.lost", "S1 chunks lost or out of order", "chunks", None,
            (d["chunks_lost"] + d["chunks_out_of_order"]) if "chunks_lost" in d else None,
            target=("==", 0, "gateway")),
        row("S1.rss", f"S1 worker RSS at the end / at {ref}", "ratio", None, d.get("rss_ratio"),
            target=("<=", 1.05, "gateway")),
        row("S1.fds", f"S1 worker fds - 2/open stream, end minus {ref}", "fds", None,
            d.get("fds_adjusted_delta"), target=("abs<=", 20, "gateway")),
        row("S1.cpu", "S1 CPU per token (1,000 streams, 5 tok/s)", "us", None,
            d.get("cpu_us_per_token")),
    ]


SCENARIOS = {"M1": scenario_m1, "M2": scenario_m2, "M3": scenario_m3,
             "M4": scenario_m4, "M5": scenario_m5, "S1": scenario_s1}
#: Scenarios run once per invocation whatever --repeat says (a 20-minute soak is not repeated).
RUN_ONCE = {"S1"}
#: Scenarios that measure the gateway only: a run of just these does not start the floor.
GATEWAY_ONLY = {"S1"}
#: Rough wall time of each scenario in seconds, (--quick, full), floor included: for the
#: default --max-seconds and the plan printed at the start.
ESTIMATE_S = {"M1": (17, 75), "M2": (8, 20), "M3": (8, 25), "M4": (80, 200),
              "M5": (25, 90), "S1": (128, 1210)}


def estimate_seconds(names, quick: bool, repeat: int) -> float:
    """How long a run of these scenarios should take, start-up included."""
    total = 10.0
    for sc in names:
        reps = 1 if sc in RUN_ONCE else repeat
        total += ESTIMATE_S.get(sc, (60, 300))[0 if quick else 1] * reps
    return total


# --------------------------------------------------------------------------
# upstream alone
# --------------------------------------------------------------------------
async def upstream_rps(seconds: float, connections: int, max_seconds: float) -> dict:
    """Requests/s of the upstream on one core, the client on the other core."""
    env = Env(True, RESULTS_DIR)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    client_core = 0 if two_cores() else None
    if client_core is not None:
        pin_self(client_core)
    env.start_upstream(max_seconds)
    try:
        req = loadgen.build_request("POST", "/api/generate", HOST, env.up_port,
                                    direct_body(10, stream=False))
        load = loadgen.NonStreamLoad(HOST, env.up_port, req, connections)
        await load.start()
        await asyncio.sleep(1.0)
        load.reset()
        u0 = env.upstream_cpu()
        await asyncio.sleep(seconds)
        snap = load.snapshot()
        u1 = env.upstream_cpu()
        await load.stop()
        cpu = procfs.cpu_delta(u0, u1)
        snap["upstream_cpu_s"] = cpu
        snap["upstream_cpu_us_per_req"] = cpu / snap["ok"] * 1e6 if snap["ok"] else None
        snap["upstream_core_use"] = cpu / snap["elapsed"] if snap["elapsed"] else None
        snap["layout"] = ("upstream on core 1, client on core 0" if client_core is not None
                          else "single core shared")
        return snap
    finally:
        env.stop_all()
