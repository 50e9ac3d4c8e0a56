"""`tollway serve --workers N`: N serving processes on one address, under one supervisor.

One Python process uses one core. The supervisor starts N workers, each a fresh interpreter
running `tollway serve` (never a fork of a process that loaded gRPC, which is not fork-safe),
with TOLLWAY_WORKER_INDEX=0..N-1 (worker.py). They bind the same address with SO_REUSEPORT,
so the kernel spreads connections over them. The supervisor never loads gRPC: it holds the
port (listen.reserve), forwards signals and restarts what dies.

- Start: the address is checked as a single process checks it (a taken port is refused with
  the same message), then held. Worker 0 starts first (it migrates the database and replays
  the journals of slots that no longer run), then the others. A worker that fails to start
  fails the start: the others are stopped and its exit code is the supervisor's.
- SIGTERM / SIGINT: forwarded to every worker, which drains as a single process does; the
  supervisor waits for them (grace period, ledger flush and a margin, then SIGKILL) and exits 0.
- SIGHUP: the config file is checked first, in a child process (config_check.py: the file
  and the plugins, as a worker's reload reads them). A bad file is refused with one log line
  and no worker is signalled; a good one is forwarded to every worker, which reloads.
- A worker that exits on its own is logged (slot, pid, exit code or signal) and restarted:
  at once after a run of STABLE_S or more, otherwise after a delay that doubles per failed
  start, up to MAX_BACKOFF_S.

    python -m tollway.service.gateway.supervisor --workers 2 --listen 127.0.0.1:50051 \
        --config tollway.toml --grace-period-s 30 --close-timeout-s 10 --log-format plain

`tollway serve` starts this itself (by exec, so the command's pid stays the supervisor's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tollway.service.gateway.listen import ListenError, check_can_listen, reserve
from tollway.service.gateway.logs import configure_logging
from tollway.service.gateway.worker import COUNT_ENV, INDEX_ENV, READY_FD_ENV, SUPERVISOR_ENV
from tollway.service.telemetry.metrics_export import MULTIPROC_DIR_ENV, WorkersMetrics

log = logging.getLogger("tollway.supervisor")

# A worker that served this long before it exited is restarted at once.
STABLE_S = 10.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
# On top of the grace period and the ledger's flush: a worker's own stop steps (closing pools).
STOP_MARGIN_S = 5.0
# The config check on SIGHUP loads the plugins: it may take a while on a busy machine.
CHECK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Settings:
    workers: int
    listen: str
    config_path: str | None
    grace_period_s: float
    close_timeout_s: float
    log_format: str
    # server.metrics_listen: the supervisor serves the sum of every worker's metrics there.
    metrics_listen: str | None = None

    def stop_wait_s(self) -> float:
        return self.grace_period_s + self.close_timeout_s + STOP_MARGIN_S


@dataclass
class Worker:
    """One slot and the process serving it now."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Future[bool] | None = None
    started: float = 0.0
    # Failed starts in a row (exits before STABLE_S): the next restart waits longer.
    failures: int = 0
    # A SIGHUP came while it was starting: it may have read the file before the change.
    reload_pending: bool = False
    watcher: asyncio.Task[None] | None = None
    ready_reader: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def serving(self) -> bool:
        return self.running() and self.ready is not None and self.ready.done() and self.ready.result()


@dataclass
class Supervisor:
    settings: Settings
    # The address with a concrete port, as every worker is told to bind it.
    address: str
    held: list[socket.socket] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    stopping: bool = False
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _reload_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    _reloader: asyncio.Task[None] | None = None
    # With metrics: the directory the workers write to and the /metrics endpoint over it.
    metrics: WorkersMetrics | None = None

    # -- running --------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_wanted.set)
        self.workers = [Worker(i) for i in range(self.settings.workers)]
        try:
            code = await self._start_all()
            if code is not None:
                return code
            pids = ", ".join(str(w.pid) for w in self.workers)
            log.info("serving on %s with %d workers (pids %s)", self.address, len(self.workers), pids)
            self._reloader = loop.create_task(self._reload_loop(), name="supervisor-reload")
            await self._stop.wait()
            return await self._stop_all()
        finally:
            if self._reloader is not None:
                self._reloader.cancel()
                await asyncio.gather(self._reloader, return_exceptions=True)
            for worker in self.workers:
                self._forget(worker)
            await self._kill_all()
            for sock in self.held:
                sock.close()
            if self.metrics is not None:
                self.metrics.close()

    async def _start_all(self) -> int | None:
        """Worker 0 first, then the rest together. None when all serve; else the exit code to
        end with: the first failed worker's, or the stop's when one was asked for meanwhile."""
        for group in (self.workers[:1], self.workers[1:]):
            for worker in group:
                await self._spawn(worker)
            for worker in group:
                assert worker.ready is not None
                stop = asyncio.ensure_future(self._stop.wait())
                either: list[asyncio.Future[Any]] = [worker.ready, stop]
                try:
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop.cancel()
                if self._stop.is_set():
                    return await self._stop_all()
                if not worker.ready.result():
                    # Its own line on stderr said why; the others must not stay behind.
                    assert worker.proc is not None
                    code = await worker.proc.wait()
                    self.stopping = True
                    await self._stop_all()
                    return code if code > 0 else 1
        for worker in self.workers:
            worker.watcher = asyncio.get_running_loop().create_task(self._watch(worker), name=f"worker-{worker.index}")
        return None

    async def _spawn(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        env = {**os.environ, INDEX_ENV: str(worker.index), COUNT_ENV: str(len(self.workers)),
               SUPERVISOR_ENV: str(os.getpid()), READY_FD_ENV: str(write_fd)}
        command = [sys.executable, "-m", "tollway.service.cli", "serve", "--listen", self.address]
        if self.settings.config_path:
            command += ["--config", self.settings.config_path]
        try:
            worker.proc = await asyncio.create_subprocess_exec(*command, env=env, pass_fds=(write_fd,),
                                                               stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        worker.started = time.monotonic()
        worker.ready = ready = loop.create_future()
        worker.ready_reader = read_fd
        os.set_blocking(read_fd, False)

        def readable() -> None:
            try:
                data = os.read(read_fd, 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            self._close_reader(worker)
            if not ready.done():
                # A byte: it serves. End of file without one: it exited before serving.
                ready.set_result(bool(data))
            if data:
                self._serving(worker)

        loop.add_reader(read_fd, readable)

    def _close_reader(self, worker: Worker) -> None:
        fd, worker.ready_reader = worker.ready_reader, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _serving(self, worker: Worker) -> None:
        if worker.watcher is not None:  # a restart, not the first start
            log.info("worker %d (pid %d) serving", worker.index, worker.pid)
        if worker.reload_pending:
            worker.reload_pending = False
            self._signal(worker, signal.SIGHUP)

    async def _watch(self, worker: Worker) -> None:
        """Restart the worker whenever it exits, unless the supervisor is stopping."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self.metrics is not None:
                # Its live gauges (streams open, breakers) stop counting; its counters stay.
                self.metrics.worker_exited(worker.pid)
            if self.stopping:
                return
            ran = time.monotonic() - worker.started
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_result(False)
            self._close_reader(worker)
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            if ran >= STABLE_S:
                worker.failures = 0
                log.error("worker %d (pid %d) %s after %.0fs; restarting it", worker.index, worker.pid, how, ran)
                delay = 0.0
            else:
                delay = self._next_backoff(worker)
                log.error("worker %d (pid %d) %s after %.1fs; restarting it in %gs (%d short run(s) in a row)",
                          worker.index, worker.pid, how, ran, delay, worker.failures)
            while True:
                await self._pause(delay)
                if self.stopping or self._stop.is_set():
                    return
                try:
                    await self._spawn(worker)
                    break
                except OSError as exc:  # no process could be started (EAGAIN, no memory): later
                    delay = self._next_backoff(worker)
                    log.error("cannot start worker %d: %s; trying again in %gs", worker.index, exc.strerror or exc,
                              delay)

    @staticmethod
    def _next_backoff(worker: Worker) -> float:
        # The exponent stops growing long after the cap: a crash loop of days must not overflow it.
        delay: float = min(FIRST_BACKOFF_S * 2.0 ** min(worker.failures, 32), MAX_BACKOFF_S)
        worker.failures += 1
        return delay

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short by a stop."""
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([stop], timeout=seconds)
        finally:
            stop.cancel()

    # -- SIGHUP ---------------------------------------------------------------------------

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            if self.stopping:
                return
            await self._reload()

    async def _reload(self) -> None:
        problem = await self._check_config()
        if problem:
            log.error("config reload refused, keeping the running config in every worker: %s", problem)
            return
        signalled = 0
        for worker in self.workers:
            if worker.serving():
                self._signal(worker, signal.SIGHUP)
                signalled += 1
            elif worker.running():
                # Not listening for SIGHUP yet (its default would end it): told once it serves.
                worker.reload_pending = True
        log.info("config checked; SIGHUP forwarded to %d worker(s)", signalled)

    async def _check_config(self) -> str:
        """Why the config file cannot be loaded now, or "" when it can."""
        command = [sys.executable, "-m", "tollway.service.gateway.config_check"]
        if self.settings.config_path:
            command += ["--config", self.settings.config_path]
        env = {k: v for k, v in os.environ.items() if k not in (INDEX_ENV, COUNT_ENV, SUPERVISOR_ENV, READY_FD_ENV)}
        check = await asyncio.create_subprocess_exec(*command, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(check.communicate(), CHECK_TIMEOUT_S)
        except TimeoutError:
            check.kill()
            await check.wait()
            return f"the config check did not finish within {CHECK_TIMEOUT_S:g}s"
        except asyncio.CancelledError:  # the supervisor is stopping: the check must not outlive it
            check.kill()
            await check.wait()
            raise
        if check.returncode != 0:
            lines = (out or err).decode("utf-8", "replace").strip().splitlines()
            return lines[-1] if lines else f"the config check exited with code {check.returncode}"
        try:
            checked = json.loads(out)
        except ValueError:
            return "the config check gave no answer"
        if checked.get("workers") != self.settings.workers:
            log.warning("server.workers changed to %s: the worker count changes at the next restart",
                        checked.get("workers"))
        return ""

    # -- stopping -------------------------------------------------------------------------

    def _signal(self, worker: Worker, sig: signal.Signals) -> None:
        if worker.running():
            assert worker.proc is not None
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(sig)

    def _forget(self, worker: Worker) -> None:
        if worker.watcher is not None and worker.watcher is not asyncio.current_task():
            worker.watcher.cancel()
        self._close_reader(worker)

    async def _stop_all(self) -> int:
        """SIGTERM to every worker, then wait for them to drain; 0, or 1 if one had to be killed."""
        self.stopping = True
        running = [w for w in self.workers if w.running()]
        if running:
            log.info("stopping: %d worker(s) drain in-flight calls for up to %.3gs", len(running),
                     self.settings.grace_period_s)
        for worker in running:
            self._signal(worker, signal.SIGTERM)
        waits = [w.proc.wait() for w in running if w.proc is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self.settings.stop_wait_s())
        except TimeoutError:
            late = [w for w in running if w.running()]
            log.error("worker(s) %s did not stop within %.3gs; killed", ", ".join(f"{w.index} (pid {w.pid})"
                                                                                for w in late),
                      self.settings.stop_wait_s())
            await self._kill_all()
            return 1
        if running:
            log.info("stopped")
        return 0

    async def _kill_all(self) -> None:
        """Nothing is left running when the supervisor returns, whatever happened."""
        for worker in self.workers:
            if worker.running():
                assert worker.proc is not None
                self._signal(worker, signal.SIGKILL)
                await worker.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tollway.service.gateway.supervisor",
                                     description="Run `tollway serve` as N workers on one address.")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--config")
    parser.add_argument("--grace-period-s", type=float, required=True)
    parser.add_argument("--close-timeout-s", type=float, required=True)
    parser.add_argument("--log-format", default="plain", choices=("plain", "json"))
    parser.add_argument("--metrics-listen")
    args = parser.parse_args(argv)
    settings = Settings(workers=args.workers, listen=args.listen, config_path=args.config,
                        grace_period_s=args.grace_period_s, close_timeout_s=args.close_timeout_s,
                        log_format=args.log_format, metrics_listen=args.metrics_listen)
    configure_logging(settings.log_format)
    try:
        # As a single process checks it: a port taken by anything, our own gateways included.
        check_can_listen(settings.listen)
        address, held = reserve(settings.listen)
    except ListenError as exc:
        print(f"tollway: {exc}", file=sys.stderr)
        return 1
    metrics = None
    if settings.metrics_listen:
        try:
            metrics = WorkersMetrics(settings.metrics_listen)
        except OSError as exc:
            for sock in held:
                sock.close()
            print(f"tollway: {exc}", file=sys.stderr)
            return 1
        # Every worker's environment is a copy of this one.
        os.environ[MULTIPROC_DIR_ENV] = metrics.directory
        log.info("metrics of all workers on http://%s:%d/metrics", settings.metrics_listen.rsplit(":", 1)[0],
                 metrics.server.port)
    try:
        return asyncio.run(Supervisor(settings, address, held, metrics=metrics).run())
    except OSError as exc:  # the first workers could not be started at all
        print(f"tollway: cannot start the workers: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
