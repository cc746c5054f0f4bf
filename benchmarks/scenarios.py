"""Process orchestration and the M1..M5 scenarios.

Layout on a machine with at least two cores:

* core 0: the gateway (gunicorn master + gevent worker), via ``taskset -c 0``;
* core 1: the fast upstream (``taskset -c 1``) and this harness with its load
  client (``os.sched_setaffinity(0, {1})``).

Every scenario measures the upstream directly and through the gateway in the
same run.  Each scenario function fills an ``out`` dict as it goes
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


def row(rid, metric, unit, direct=None, gateway=None, *, compare=None, target=None,
        kind="number", direct_of=None, gateway_of=None, note=None) -> dict:
    """One result line.  target: (op, value, on) with on in {"gateway","added"}."""
    r = {"id": rid, "metric": metric, "unit": unit, "kind": kind,
         "direct": direct, "gateway": gateway, "compare": compare}
    if kind == "fraction":
        r["direct_of"] = direct_of
        r["gateway_of"] = gateway_of
    if target is not None:
        r["target"] = {"op": target[0], "value": target[1], "on": target[2]}
    if note:
        r["note"] = note
    return r


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------
class Env:
    """The upstream and gateway subprocesses of one run."""

    def __init__(self, quick: bool, log_dir: Path):
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
        end = _now() + timeout
        last = None
        while _now() < end:
            if self.gateway.poll() is not None:
                self.gateway_error = (f"gateway exited with code {self.gateway.returncode}: "
                                      + " | ".join(tail(self.gw_log, 15)))
                self.gateway = None
                return False
            try:
                st, _, body = await loadgen.http_request(HOST, self.gw_port, "GET", "/health",
                                                         timeout=2)
                last = (st, body[:200])
                if st == 200:
                    self.gateway_error = None
                    return True
            except (OSError, asyncio.TimeoutError) as e:
                last = repr(e)
            await asyncio.sleep(0.2)
        self.gateway_error = f"GET /health did not answer 200 within {timeout:.0f} s (last: {last})"
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

    def stop_all(self, grace: float = 5.0):
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


class Ctx:
    def __init__(self, env: Env, quick: bool, direct_only: bool):
        self.env = env
        self.quick = quick
        self.direct_only = direct_only

    @property
    def gateway(self) -> bool:
        return not self.direct_only and self.env.gateway_alive()


def direct_body(n, first=0, delay=0, stream=True, tag=None):
    opts = {"num_predict": n, "bench_first_delay_ms": first, "bench_delay_ms": delay}
    if tag:
        opts["bench_tag"] = tag
    return {"model": BENCH_MODEL, "prompt": "hi", "stream": stream, "options": opts}


def gateway_body(n, first=0, delay=0, tag=None):
    opts = {"num_predict": n, "bench_first_delay_ms": first, "bench_delay_ms": delay}
    if tag:
        opts["bench_tag"] = tag
    return {"model": BENCH_MODEL, "prompt": "hi", "options": opts}


def direct_stream_req(env, n, first=0, delay=0, tag=None):
    return loadgen.build_request("POST", "/api/generate", HOST, env.up_port,
                                 direct_body(n, first, delay, True, tag))


def gateway_stream_req(env, n, first=0, delay=0, tag=None):
    h = dict(GATEWAY_HEADERS, Accept="text/event-stream")
    return loadgen.build_request("POST", GATEWAY_STREAM, HOST, env.gw_port,
                                 gateway_body(n, first, delay, tag), h)


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
    g = None
    out["rows"] = _m1_rows(d, g)
    if ctx.gateway:
        g_req = loadgen.build_request("POST", GATEWAY_GENERATE, HOST, env.gw_port,
                                      gateway_body(n), GATEWAY_HEADERS)
        g = await measure(env.gw_port, g_req, env.gateway_cpu)
        out["details"]["gateway"] = g
        # The floor: the same stack answering GET /health (no body, no Ollama call), to show
        # how much of M1 is gunicorn + Flask themselves.
        h_req = loadgen.build_request("GET", "/health", HOST, env.gw_port, None, {})
        floor = await measure(env.gw_port, h_req, env.gateway_cpu, check=lambda body: b'"ok"' in body)
        out["details"]["gateway_health_floor"] = floor
        out["rows"] = _m1_rows(d, g, floor)


def _m1_rows(d, g, floor=None):
    g = g or {}
    floor = floor or {}
    return [
        row("M1.floor", "M1 floor: CPU per GET /health", "us", None, floor.get("cpu_us_per_req")),
        row("M1.rps", "M1 requests/s, 32 conns", "req/s", d.get("rps"), g.get("rps"),
            compare="ratio"),
        row("M1.cpu", "M1 CPU per request", "us", d.get("cpu_us_per_req"),
            g.get("cpu_us_per_req"), compare="ratio", target=("<=", 400, "gateway")),
        row("M1.p50", "M1 latency p50", "ms", d.get("latency_p50_ms"), g.get("latency_p50_ms"),
            compare="added"),
        row("M1.bad", "M1 bad responses", "count", d.get("bad"), g.get("bad"),
            target=("==", 0, "gateway")),
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
    out["rows"] = _m2_rows(d, None)
    if ctx.gateway:
        g = await measure(env.gw_port, gateway_stream_req(env, n), env.gateway_cpu)
        out["details"]["gateway"] = g
        out["rows"] = _m2_rows(d, g)


def _m2_rows(d, g):
    g = g or {}
    return [
        row("M2.cpu", "M2 CPU per relayed token (32x500)", "us", d.get("cpu_us_per_token"),
            g.get("cpu_us_per_token"), compare="ratio", target=("<=", 10, "gateway")),
        row("M2.tps", "M2 tokens/s", "tok/s", d.get("tokens_per_s"), g.get("tokens_per_s"),
            compare="ratio"),
        row("M2.intact", "M2 streams intact", "streams", d.get("intact"), g.get("intact"),
            kind="fraction", direct_of=d.get("streams"), gateway_of=g.get("streams"),
            target=("all", None, "gateway")),
    ]


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
    out["rows"] = _m3_rows(d, None)
    if ctx.gateway:
        g = await measure(env.gw_port, gateway_stream_req(env, n, first, delay),
                          env.gateway_cpu)
        out["details"]["gateway"] = g
        out["rows"] = _m3_rows(d, g)


def _m3_rows(d, g):
    g = g or {}
    return [
        row("M3.ttft50", "M3 TTFT p50 (200 streams)", "ms", d.get("ttft_p50_ms"),
            g.get("ttft_p50_ms"), compare="added", target=("<=", 5, "added")),
        row("M3.ttft99", "M3 TTFT p99 (200 streams)", "ms", d.get("ttft_p99_ms"),
            g.get("ttft_p99_ms"), compare="added", target=("<=", 30, "added")),
        row("M3.cpu", "M3 CPU per token", "us", d.get("cpu_us_per_token"),
            g.get("cpu_us_per_token"), compare="ratio", target=("<=", 25, "gateway")),
        row("M3.intact", "M3 streams intact", "streams", d.get("intact"), g.get("intact"),
            kind="fraction", direct_of=d.get("streams"), gateway_of=g.get("streams"),
            target=("all", None, "gateway")),
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
        rows = _m4_rows(count, d, None)
        out["rows"].extend(rows)
        if ctx.gateway:
            # a fresh worker, warmed up, so that "RSS before" is not memory that an
            # earlier phase left behind
            if await env.restart_gateway():
                await _warm_gateway(env)
            else:
                out["details"][f"gateway_{key}_restart_failed"] = env.gateway_error
                break
            g = await measure(count, env.gw_port, gateway_stream_req(env, n, first, delay),
                              env.worker_rss_kb, env.gateway_cpu)
            out["details"][f"gateway_{key}"] = g
            new = _m4_rows(count, d, g)
            out["rows"][-len(rows):] = new
            if not env.gateway_alive():
                out["details"][f"gateway_{key}_died"] = True
                break
        await asyncio.sleep(1.0)


async def _warm_gateway(env: Env):
    """A few streams and requests, so that lazily allocated state exists before a baseline."""
    req = gateway_stream_req(env, 20)
    await asyncio.gather(*(loadgen.run_stream(HOST, env.gw_port, req, 20, timeout=20)
                           for _ in range(50)))
    greq = loadgen.build_request("POST", GATEWAY_GENERATE, HOST, env.gw_port,
                                 gateway_body(10), GATEWAY_HEADERS)
    for _ in range(20):
        await loadgen.run_stream(HOST, env.gw_port, greq, None, timeout=20)
    await asyncio.sleep(0.5)


def _m4_rows(count, d, g):
    g = g or {}
    return [
        row(f"M4.{count}.intact", f"M4 {count} slow streams intact", "streams",
            d.get("intact"), g.get("intact"), kind="fraction", direct_of=d.get("streams"),
            gateway_of=g.get("streams"), target=("all", None, "gateway")),
        row(f"M4.{count}.rss", f"M4 {count} RSS growth per open stream", "KB",
            d.get("rss_kb_per_stream"), g.get("rss_kb_per_stream"), compare="ratio",
            target=("<=", 30, "gateway")),
        row(f"M4.{count}.cpu", f"M4 {count} CPU per token", "us", d.get("cpu_us_per_token"),
            g.get("cpu_us_per_token"), compare="ratio"),
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

    targets = ["direct"] + (["gateway"] if ctx.gateway else [])
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
                        compare="added", target=("<=", 5, "gateway"), note=note))
    rows.append(row("M5.after", "M5 tokens sent upstream after close (flowing)", "tokens",
                    get("direct", "flowing", "tokens_after_close_median"),
                    get("gateway", "flowing", "tokens_after_close_median"),
                    compare="added"))
    return rows


SCENARIOS = {"M1": scenario_m1, "M2": scenario_m2, "M3": scenario_m3,
             "M4": scenario_m4, "M5": scenario_m5}


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
