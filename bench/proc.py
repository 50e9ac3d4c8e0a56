"""What /proc says about a process: CPU seconds (all threads) and memory; and which code ran."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """utime + stime of the whole process (every thread), or of one thread, in seconds."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path, "rb") as f:
        stat = f.read()
    # Field 2 (comm) may hold spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of all its living descendants, each one's utime + stime +
    cutime + cstime (the last two: children it has reaped). For a server that may fork
    helpers (Node), whose CPU is the server's too."""
    stats = _all_stats()
    parent_of = {p: int(fields[1]) for p, fields in stats.items()}
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parent_of.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier += children
    # fields 14..17 of stat(5): utime, stime, cutime, cstime
    return sum(sum(int(v) for v in stats[p][11:15]) for p in tree if p in stats) / CLK_TCK


def _all_stats() -> dict[int, list[bytes]]:
    """/proc/<pid>/stat of every process, the fields after comm (field 3 onward)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
            continue
        stats[int(entry)] = stat[stat.rindex(b")") + 2 :].split()
    return stats


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) in KiB."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    return out


def machine() -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {"nproc": str(len(os.sched_getaffinity(0))), "cpu_model": model}


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (the aggregate line of /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def code_version() -> str:
    """The commit measured, marked when the gateway's code differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "service", "providers", "protos"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" with uncommitted changes" if dirty else "")
