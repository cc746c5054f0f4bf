"""CPU time, RSS and process-tree readings from /proc (Linux only)."""

from __future__ import annotations

import os
import platform
import subprocess

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int):
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    r = data.rfind(b")")
    return data[r + 2:].split()


def cpu_seconds(pid: int):
    """utime + stime of one process in seconds (fields 14 and 15)."""
    f = _stat_fields(pid)
    if f is None:
        return None
    # f[0] is field 3 (state), so field 14 is f[11] and field 15 is f[12]
    return (int(f[11]) + int(f[12])) / CLK_TCK


def parent_of(pid: int):
    f = _stat_fields(pid)
    return int(f[1]) if f is not None else None


def children_of(pid: int) -> list:
    """Direct children, via task/*/children when available, else by scanning ppid."""
    kids = []
    task_dir = f"/proc/{pid}/task"
    found_interface = False
    try:
        for tid in os.listdir(task_dir):
            try:
                with open(f"{task_dir}/{tid}/children") as f:
                    found_interface = True
                    kids.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        return []
    if found_interface:
        return kids
    for name in os.listdir("/proc"):
        if name.isdigit():
            if parent_of(int(name)) == pid:
                kids.append(int(name))
    return kids


def descendants(pid: int) -> list:
    out = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in children_of(p):
            if c not in out:
                out.append(c)
                todo.append(c)
    return out


def tree_cpu(pid: int) -> dict:
    """CPU seconds of pid and every descendant, keyed by pid."""
    out = {}
    for p in [pid] + descendants(pid):
        c = cpu_seconds(p)
        if c is not None:
            out[p] = c
    return out


def cpu_delta(before: dict, after: dict) -> float:
    """CPU spent between two tree_cpu readings.  A process that appeared in
    between counts from zero; one that vanished is lost (reported by caller)."""
    total = 0.0
    for p, c in after.items():
        total += c - before.get(p, 0.0)
    return total


def system_busy_seconds():
    """CPU seconds all processes spent busy (every core), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    vals = [int(x) for x in parts[1:]]
    busy = vals[0] + vals[1] + vals[2] + sum(vals[5:8])
    return busy / CLK_TCK


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def rss_kb(pid: int):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return 0


def open_fds(pid: int):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def nofile_limit(pid: int):
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    parts = line.split()
                    return int(parts[3]), int(parts[4])
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        info["uname"] = subprocess.run(["uname", "-a"], capture_output=True, text=True,
                                       timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["uname"] = " ".join(os.uname())
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_kb"] = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return info
