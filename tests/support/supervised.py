"""`tollway serve --workers N` seen from outside: its worker processes (by /proc), their
connections, and waits on its log. Linux only, as the workers' SO_REUSEPORT is."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.gateway import MIXROUTER_TEST_KEY
from tests.support.served import wait_until_serving
from tests import support


def _stat_fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rindex(b")") + 2:].decode().split()


def worker_pids(supervisor: int) -> dict[int, int]:
    """Slot -> pid of the live workers of a supervisor ({} for a gateway without workers)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fields = _stat_fields(pid)
            if int(fields[1]) != supervisor or fields[0] == "Z":
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        for variable in environ:
            if variable.startswith(b"TOLLWAY_WORKER_INDEX="):
                found[int(variable.split(b"=", 1)[1])] = pid
    return found


def alive(pid: int) -> bool:
    """Whether any thread of the process still runs. A killed process's main thread may be a
    zombie while its other threads still exit, holding its files (and their locks) open."""
    try:
        return _stat_fields(pid)[0] != "Z" or len(list(Path(f"/proc/{pid}/task").iterdir())) > 1
    except (OSError, ValueError, IndexError):
        return False


async def processes_gone(pids: Iterable[int], wait_s: float) -> None:
    pids = list(pids)

    async def poll() -> None:
        while any(alive(pid) for pid in pids):
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), wait_s)
    except TimeoutError:
        pytest.fail(f"processes {[p for p in pids if alive(p)]} still run after {wait_s:g}s")


def grpc_loaded(pid: int) -> bool:
    """Whether the process mapped gRPC's core library."""
    return "cygrpc" in Path(f"/proc/{pid}/maps").read_text()


def established_connections(pid: int, port: int) -> int:
    """TCP connections the process holds that were accepted on port."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    # gRPC accepts IPv4 on IPv6 sockets (::ffff:127.0.0.1): both tables.
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                count += 1
    return count


async def until_log(log_text: Callable[[], str], pattern: str, count: int, wait_s: float,
                    proc: asyncio.subprocess.Process | None = None) -> list[re.Match[str]]:
    """Wait until the log holds `count` matches of the regular expression; they are returned."""
    compiled = re.compile(pattern)

    async def poll() -> list[re.Match[str]]:
        while True:
            found = list(compiled.finditer(log_text()))
            if len(found) >= count:
                return found
            if proc is not None and proc.returncode is not None:
                pytest.fail(f"the gateway exited with {proc.returncode} before its log said {pattern!r}:\n"
                            f"{log_text()[-4000:]}")
            await asyncio.sleep(0.05)

    try:
        return await asyncio.wait_for(poll(), wait_s)
    except TimeoutError:
        pytest.fail(f"after {wait_s:g}s the log has {len(compiled.findall(log_text()))} of {count} "
                    f"{pattern!r}:\n{log_text()[-4000:]}")


async def serving_workers(proc: asyncio.subprocess.Process, workers: int, log_text: Callable[[], str],
                          wait_s: float) -> None:
    """Until the supervisor says all its workers serve."""
    await until_log(log_text, rf"serving on \S+ with {workers} workers", 1, wait_s, proc)


@dataclass
class ServedGateway:
    """`tollway serve --config FILE` as a child process in a process group of its own (so the
    gateway with its workers can be signalled as one); each start logs to a file of its own."""

    config: Path
    port: int
    workers: int = 1
    wait_s: float = 20.0
    logs: list[Path] = field(default_factory=list)
    proc: asyncio.subprocess.Process | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        """Until it serves (and, with workers, until every worker does)."""
        log_path = self.config.with_name(f"{self.config.stem}-{len(self.logs)}.log")
        self.logs.append(log_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
        env["MIXROUTER_API_KEY"] = MIXROUTER_TEST_KEY
        with open(log_path, "wb") as log_file:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tollway.service.cli", "serve", "--config", str(self.config),
                cwd=support.ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True)
        await wait_until_serving(self.target, self.proc, self.log_text, self.wait_s)
        if self.workers > 1:
            await serving_workers(self.proc, self.workers, lambda: self.logs[-1].read_text(errors="replace"),
                                  self.wait_s)

    def kill(self) -> None:
        """SIGKILL to the gateway and its workers, at once (no await between the decision and the signal)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)

    async def exit_code(self) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), self.wait_s)

    async def terminate(self) -> None:
        """SIGTERM, as an operator stops it: it drains and exits (SIGKILL if it has not after wait_s)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), self.wait_s)
            except TimeoutError:
                await self.stop()

    async def stop(self) -> None:
        """SIGKILL to the whole group, if it still runs."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()

    def log_text(self) -> str:
        return "".join(p.read_text(encoding="utf-8", errors="replace") for p in self.logs if p.exists())
