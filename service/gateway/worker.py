"""What a serving process of `tollway serve --workers N` knows of itself, and the worker count.

The supervisor (supervisor.py) starts each worker as a fresh interpreter running the same
`tollway serve` command, with these environment variables:

    TOLLWAY_WORKER_INDEX      0..N-1: this worker's slot (its ledger journal, its log lines)
    TOLLWAY_WORKER_COUNT      N
    TOLLWAY_SUPERVISOR_PID    the supervisor: a worker whose parent is gone stops
    TOLLWAY_WORKER_READY_FD   a pipe the worker writes one byte to once it serves

No gRPC here: the supervisor imports this module too.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

INDEX_ENV = "TOLLWAY_WORKER_INDEX"
COUNT_ENV = "TOLLWAY_WORKER_COUNT"
SUPERVISOR_ENV = "TOLLWAY_SUPERVISOR_PID"
READY_FD_ENV = "TOLLWAY_WORKER_READY_FD"

# A typo such as 800 for 8 would start hundreds of interpreters: refused instead.
MAX_WORKERS = 256

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSlot:
    index: int
    count: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> WorkerSlot | None:
        """The slot a supervisor gave this process; None when it runs on its own."""
        index = environ.get(INDEX_ENV)
        if index is None:
            return None
        count = environ.get(COUNT_ENV, "")
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            raise ValueError(f"{INDEX_ENV}={index!r} with {COUNT_ENV}={count!r} is not a worker slot")
        return cls(int(index), int(count))


def parse_workers(value: object, where: str) -> int | str:
    """An integer 1..MAX_WORKERS or "auto"; ValueError naming where otherwise."""
    if value == "auto":
        return "auto"
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_WORKERS:
        raise ValueError(f'{where} must be an integer from 1 to {MAX_WORKERS} or "auto" (got {value!r})')
    return value


def resolve_workers(value: int | str) -> int:
    """"auto": the cores this process may use: its CPU affinity, and under a CPU quota (a
    container's limit, cgroup v2 cpu.max or v1 cfs_quota_us) no more than the quota, rounded up."""
    if isinstance(value, int):
        return value
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, min(cores, MAX_WORKERS))


def cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """Cores the cgroup's CPU quota allows, or None when there is no quota (or no cgroup)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def stop_with_supervisor(environ: Mapping[str, str] = os.environ) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (Linux), so a worker is never left
    serving without one: it drains and flushes its ledger as on any SIGTERM. A supervisor
    already gone by now is seen by its pid: the worker stops at once."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    supervisor = environ.get(SUPERVISOR_ENV, "")
    if supervisor.isdigit() and os.getppid() != int(supervisor):
        raise SystemExit(1)


def notify_ready(environ: Mapping[str, str] = os.environ) -> None:
    """Tell the supervisor this worker serves (one byte on the pipe it handed over)."""
    fd = environ.get(READY_FD_ENV, "")
    if not fd.isdigit():
        return
    try:
        os.write(int(fd), b"1")
        os.close(int(fd))
    except OSError:
        pass  # a supervisor that stopped listening learns of this worker by its exit instead
