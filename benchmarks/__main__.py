"""Command line: ``python -m benchmarks run|upstream-rps|table``.

    python -m benchmarks run [--scenarios M1,M2,...,S1] [--quick] [--repeat N]
                             [--out benchmarks/results/latest.json]
                             [--max-seconds S] [--direct-only] [--no-floor]
    python -m benchmarks upstream-rps [--seconds 5] [--connections 32]
    python -m benchmarks table [benchmarks/results/latest.json]

--repeat applies to the M scenarios; the soak S1 runs once per invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path

from . import report, scenarios
from . import procfs
from .procfs import machine_info, nofile_limit
from .scenarios import RESULTS_DIR, RUN_ONCE, SCENARIOS, Ctx, Env, estimate_seconds


class RunState:
    def __init__(self, args):
        self.args = args
        self.env: Env | None = None
        self.t0 = time.monotonic()
        self.started_at = report.now_iso()
        self.outs: dict = {}  # scenario -> list of out dicts (one per repetition)
        self.events: list = []
        self.timed_out = False
        self.interrupted = False
        self.error = None
        self.nofile = None
        self.pinned = None
        self.lock = threading.Lock()
        self.finished = False

    def note(self, msg):
        self.events.append({"t": round(time.monotonic() - self.t0, 2), "msg": msg})
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    def rows(self) -> list:
        out = []
        for sc in self.outs:
            merged = report.merge_rows([o["rows"] for o in self.outs[sc] if o["rows"]])
            out.extend(report.evaluate(r) for r in merged)
        return out

    def document(self) -> dict:
        env = self.env
        gw, fl = {}, {}
        if env is not None:
            gw = {"started": env.gateway_starts, "error": env.gateway_error,
                  "port": env.gw_port, "notes": env.notes,
                  "log_tail": scenarios.tail(env.gw_log, 40) if env.gateway_starts else []}
            fl = {"started": env.floor_starts, "error": env.floor_error, "port": env.fl_port,
                  "log_tail": scenarios.tail(env.fl_log, 20) if env.floor_starts else []}
        return {
            "date": self.started_at,
            "machine": machine_info(),
            "args": vars(self.args),
            "layout": {"gateway_core": 0 if scenarios.two_cores() else None,
                       "floor_core": 0 if scenarios.two_cores() else None,
                       "upstream_core": 1 if scenarios.two_cores() else None,
                       "harness_pinned_core1": self.pinned,
                       "nofile_limit": self.nofile},
            "elapsed_s": round(time.monotonic() - self.t0, 2),
            "timed_out": self.timed_out, "interrupted": self.interrupted,
            "error": self.error,
            "gateway": gw,
            "floor": fl,
            "table": self.rows(),
            "scenarios": {sc: [{"details": o["details"], "rows": o["rows"]}
                               for o in outs] for sc, outs in self.outs.items()},
            "events": self.events,
        }

    def finish(self):
        """Print the table and write the JSON; safe to call from the watchdog."""
        with self.lock:
            if self.finished:
                return
            self.finished = True
        doc = self.document()
        print()
        print(report.format_table(doc["table"]))
        if doc["timed_out"]:
            print(f"\n(stopped by the time limit of {self.args.max_seconds:.0f} s;"
                  " figures above are what was measured until then)")
        for n in doc["gateway"].get("notes") or []:
            print(f"note: {n}")
        if doc["gateway"].get("error"):
            print(f"\ngateway: {doc['gateway']['error']}")
        if doc["floor"].get("error"):
            print(f"\nfloor: {doc['floor']['error']}")
        print(f"\nelapsed {doc['elapsed_s']:.0f} s")
        report.write_json(self.args.out, doc)
        print(f"\nresults written to {self.args.out}")


def _our_cpu(env: Env) -> dict:
    """CPU readings of every process of this run (harness, upstream, floor and gateway trees)."""
    out = {("self", os.getpid()): procfs.cpu_seconds(os.getpid()) or 0.0,
           ("gw-retired", 0): env.gw_cpu_retired, ("fl-retired", 0): env.fl_cpu_retired}
    for pid, c in env.floor_cpu().items():
        out[("fl", pid)] = c
    for pid, c in env.upstream_cpu().items():
        out[("up", pid)] = c
    for pid, c in env.gateway_cpu().items():
        out[("gw", pid)] = c
    return out


def _foreign_cpu(state, env, sc, out, busy0, ours0, t0):
    """Warn when other processes used the CPUs during a scenario."""
    busy1, ours1 = procfs.system_busy_seconds(), _our_cpu(env)
    wall = time.monotonic() - t0
    if busy0 is None or busy1 is None or wall <= 0:
        return
    ours = sum(ours1.values()) - sum(ours0.values())
    foreign = max(0.0, (busy1 - busy0) - ours)
    share = foreign / wall
    out["details"]["foreign_cpu"] = {"seconds": round(foreign, 2), "wall_s": round(wall, 2),
                                     "share_of_one_core": round(share, 3),
                                     "loadavg": procfs.loadavg()}
    if share > 0.10:
        msg = (f"{sc}: other processes used {share * 100:.0f}% of a core during the run;"
               " figures may be perturbed")
        env.notes.append(msg)
        state.note(msg)


async def _run(state: RunState):
    args = state.args
    env = Env(args.quick, RESULTS_DIR)
    state.env = env
    url = env.start_upstream(args.max_seconds)
    state.note(f"upstream at {url} (pid {env.upstream.pid})")
    if not args.direct_only:
        ok = await env.start_gateway()
        if ok:
            ws = env.gateway_workers()
            state.note(f"gateway at http://127.0.0.1:{env.gw_port} (master {env.gateway.pid},"
                       f" workers {ws}, worker nofile {nofile_limit(ws[0]) if ws else None})")
        else:
            state.note(f"gateway not running, direct figures only: {env.gateway_error}")
    with_floor = (not args.direct_only and not args.no_floor
                  and any(sc not in scenarios.GATEWAY_ONLY for sc in args.scenario_list))
    if with_floor:
        if await env.start_floor():
            state.note(f"floor at http://127.0.0.1:{env.fl_port} (master {env.floor.pid},"
                       f" workers {env.floor_workers()})")
        else:
            state.note(f"floor not running, no floor figures: {env.floor_error}")
    ctx = Ctx(env, args.quick, args.direct_only, args.no_floor)
    for sc in args.scenario_list:
        reps = 1 if sc in RUN_ONCE else args.repeat
        for rep in range(reps):
            if (not args.direct_only and env.gateway_starts and not env.gateway_alive()):
                state.note("gateway is down; restarting it")
                env.notes.append(f"gateway restarted before {sc} run {rep + 1}")
                if not await env.start_gateway():
                    state.note(f"gateway restart failed: {env.gateway_error}")
            if with_floor and env.floor_starts and not env.floor_alive():
                state.note("floor is down; restarting it")
                env.notes.append(f"floor restarted before {sc} run {rep + 1}")
                if not await env.start_floor():
                    state.note(f"floor restart failed: {env.floor_error}")
            out = {"rows": [], "details": {}}
            state.outs.setdefault(sc, []).append(out)
            workers_before = env.gateway_workers()
            starts_before = env.gateway_starts
            state.note(f"{sc} run {rep + 1}/{reps} ...")
            busy0, ours0, t0 = procfs.system_busy_seconds(), _our_cpu(env), time.monotonic()
            try:
                await SCENARIOS[sc](ctx, out)
            finally:
                _foreign_cpu(state, env, sc, out, busy0, ours0, t0)
            workers_after = env.gateway_workers()
            if (env.gateway_starts and env.gateway_starts == starts_before
                    and workers_before != workers_after):
                msg = (f"{sc}: gateway worker pids changed {workers_before} -> {workers_after}"
                       " (worker restarted or died)")
                env.notes.append(msg)
                out["details"]["worker_change"] = msg
                state.note(msg)
            print(report.format_table([report.evaluate(dict(r)) for r in out["rows"]]),
                  flush=True)


async def _run_bounded(state: RunState):
    budget = state.args.max_seconds - (time.monotonic() - state.t0)
    try:
        await asyncio.wait_for(_run(state), max(1.0, budget))
    except asyncio.TimeoutError:
        state.timed_out = True
        state.note("time limit reached; stopping")


def cmd_run(args) -> int:
    names = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in names if s not in SCENARIOS]
    if bad:
        print(f"unknown scenarios: {bad}; known: {sorted(SCENARIOS)}", file=sys.stderr)
        return 2
    args.scenario_list = names
    if args.repeat < 1:
        args.repeat = 1
    planned = estimate_seconds(names, args.quick, args.repeat)
    if args.max_seconds is None:
        args.max_seconds = max(900.0, planned * 1.5 + 120)
    print(f"planned: {', '.join(names)}, {'quick' if args.quick else 'full'},"
          f" --repeat {args.repeat} (S1 once): about {planned / 60:.0f} min"
          f" ({planned:.0f} s); time limit {args.max_seconds:.0f} s", flush=True)
    full = estimate_seconds(list(SCENARIOS), False, 1)
    full3 = estimate_seconds(list(SCENARIOS), False, 3)
    print(f"(a full run of {','.join(SCENARIOS)} takes about {full / 60:.0f} min,"
          f" with --repeat 3 about {full3 / 60:.0f} min; --quick about"
          f" {estimate_seconds(list(SCENARIOS), True, 1) / 60:.0f} min)", flush=True)
    if planned > args.max_seconds:
        print(f"warning: --max-seconds {args.max_seconds:.0f} is shorter than the plan;"
              " the last scenarios will be cut", flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    state = RunState(args)
    state.nofile = scenarios.raise_nofile()
    state.pinned = scenarios.pin_self(1)

    def hard_stop():
        state.timed_out = True
        print("\nhard time limit: killing subprocesses", file=sys.stderr, flush=True)
        if state.env is not None:
            state.env.stop_all(grace=1.0)
        try:
            state.finish()
        finally:
            os._exit(3)

    watchdog = threading.Timer(args.max_seconds + 60, hard_stop)
    watchdog.daemon = True
    watchdog.start()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        asyncio.run(_run_bounded(state))
    except KeyboardInterrupt:
        state.interrupted = True
    except Exception as e:  # report what was measured, then the error
        state.error = f"{type(e).__name__}: {e}"
        import traceback
        traceback.print_exc()
    finally:
        if state.env is not None:
            state.env.stop_all()
        watchdog.cancel()
    state.finish()
    return 1 if state.error else 0


def cmd_upstream_rps(args) -> int:
    snap = asyncio.run(asyncio.wait_for(
        scenarios.upstream_rps(args.seconds, args.connections, args.seconds + 30),
        args.seconds + 60))
    print(f"upstream alone ({snap['layout']}), {args.connections} keep-alive connections,"
          f" {snap['elapsed']:.1f} s:")
    print(f"  {snap['rps']:,.0f} requests/s, ok={snap['ok']} bad={snap['bad']},"
          f" upstream CPU {snap['upstream_cpu_us_per_req']:.1f} us/request,"
          f" core use {snap['upstream_core_use'] * 100:.0f}%,"
          f" latency p50 {snap['latency_p50_ms']:.2f} ms p99 {snap['latency_p99_ms']:.2f} ms")
    return 0 if snap["bad"] == 0 and snap["ok"] > 0 else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the M1..M5 scenarios (direct, floor, gateway) and the S1 soak")
    r.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)}")
    r.add_argument("--quick", action="store_true",
                   help="shorter phases, M4 with 2,000 streams only, 5 M5 trials, S1 for 2 min")
    r.add_argument("--repeat", type=int, default=1,
                   help="run each M scenario N times, report medians (S1 runs once)")
    r.add_argument("--out", default=str(RESULTS_DIR / "latest.json"))
    r.add_argument("--max-seconds", type=float, default=None,
                   help="hard overall time limit; what was measured is still reported"
                        " (default: 1.5x the planned time + 2 min, at least 900)")
    r.add_argument("--direct-only", action="store_true", help="measure the upstream only")
    r.add_argument("--no-floor", action="store_true",
                   help="do not run the floor (benchmarks/floor.py); direct and gateway only")
    u = sub.add_parser("upstream-rps",
                       help="requests/s of the upstream alone (client on the other core)")
    u.add_argument("--seconds", type=float, default=5.0)
    u.add_argument("--connections", type=int, default=32)
    t = sub.add_parser("table", help="print a results JSON as a Markdown table (for the README)")
    t.add_argument("path", nargs="?", default=str(RESULTS_DIR / "latest.json"))
    args = ap.parse_args(argv)
    if args.cmd == "run":
        return cmd_run(args)
    if args.cmd == "table":
        return cmd_table(args)
    return cmd_upstream_rps(args)


def cmd_table(args) -> int:
    """Print the rows of a results file as Markdown, with the run's date and machine."""
    import json

    doc = json.loads(Path(args.path).read_text())
    print(f"Run of {doc['date']} on {doc['machine']['cpu_model']} ({doc['machine']['cpu_count']} cores), "
          f"{doc['machine']['platform']}, Python {doc['machine']['python']}\n")
    print(report.format_markdown(doc["table"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
