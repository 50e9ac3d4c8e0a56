"""`tollway serve --workers 1` against `--workers 2`, beside the direct call, in one run.

    .venv/bin/python -m bench.run --workers-compare            # 5 repetitions of 2 s phases
    .venv/bin/python -m bench.run --workers-compare --quick    # one short repetition

Targets: the direct call to the stand-in (bench.upstream), `tollway serve --workers 1` and
`tollway serve --workers 2`, both real processes started the way an operator starts them.
Phases: unary and stream (20 chunks back to back), 50 calls in flight, each repetition in a
rotated order. The gateways are called over CHANNELS channels of a connection each, calls
taken round-robin: the kernel spreads connections, not calls, over workers (one channel would
reach one worker), and the one-worker gateway gets the same client so the two compare.

Every answer is checked: a unary answer's text and usage, a stream's joined text and its
summary's usage. Gateway CPU is the supervisor's and every worker's (utime + stime from
/proc/<pid>/stat of each process), read before and after each phase; the report gives
calls/s, CPU per call, and calls per gateway CPU-second (what a core buys: on a 2-core
machine whose load generator shares the cores, calls/s alone under-states two workers).
Targets: two workers >= 1.6x the calls/s of one at c=50, and CPU per call no worse.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from bench import proc
from bench.load import API_KEY, CALL_TIMEOUT_S, PRICES_TOML, STREAM_TEXT, Call, DirectTarget, run_phase
from bench.upstream import CHUNKS
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

DIRECT = "direct"
ONE, TWO = "workers=1", "workers=2"
TARGETS = (DIRECT, ONE, TWO)
MODES = ("unary", "stream")
CONCURRENCY = 50
# One per call in flight, as 50 separate callers would have.
CHANNELS = 50
UNARY_TEXT = "Hello from the stand-in."
UNARY_TOTAL_TOKENS = 12 + CHUNKS

_MESSAGES = [pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="Say hello in twenty tokens.")])]
_COMPLETE = pb.CompleteRequest(model="mixrouter/bench-model", messages=_MESSAGES, max_tokens=32)
_STREAM = pb.StreamCompleteRequest(model="mixrouter/bench-model", messages=_MESSAGES, max_tokens=32)


@dataclass(frozen=True)
class Plan:
    repetitions: int
    phase_max_s: float
    phase_count: int
    warmup: int


FULL = Plan(repetitions=5, phase_max_s=2.0, phase_count=20000, warmup=2000)
QUICK = Plan(repetitions=1, phase_max_s=0.7, phase_count=5000, warmup=300)


class SpreadTarget:
    """A gateway over several channels of a connection each; calls go round-robin over them."""

    def __init__(self, address: str, channels: int = CHANNELS) -> None:
        # A local subchannel pool each: gRPC would otherwise share one connection between them.
        self.channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                         for _ in range(channels)]
        self._stubs = itertools.cycle([pb_grpc.CompletionStub(c) for c in self.channels])

    async def unary(self) -> tuple[None, int]:
        response = await next(self._stubs).Complete(_COMPLETE, timeout=CALL_TIMEOUT_S)
        text = response.choices[0].message.parts[0].text if response.choices else ""
        if text != UNARY_TEXT or response.usage.total_tokens != UNARY_TOTAL_TOKENS:
            raise RuntimeError(f"unary answer {text!r} with {response.usage.total_tokens} tokens, not the stand-in's")
        return None, 0

    async def stream(self) -> tuple[int | None, int]:
        first, messages, texts, summary = None, 0, [], None
        async for message in next(self._stubs).StreamComplete(_STREAM, timeout=CALL_TIMEOUT_S):
            if first is None:
                first = time.perf_counter_ns()
            messages += 1
            if message.HasField("summary"):
                summary = message.summary
            else:
                texts.append(message.delta.text)
        if "".join(texts) != STREAM_TEXT or summary is None or summary.usage.output.total != CHUNKS:
            raise RuntimeError(f"stream of {len(texts)} deltas (summary: {summary is not None}), not the stand-in's")
        return first, messages

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def process_tree(pid: int) -> list[int]:
    """pid and its children (a supervisor's workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2:].split()[1]) == pid:
                children.append(int(entry.name))
    return [pid, *children]


def tree_cpu_seconds(pids: list[int]) -> float:
    return sum(proc.cpu_seconds(pid) for pid in pids)


@dataclass
class Phase:
    repetition: int
    target: str
    mode: str
    requests: int
    errors: int
    first_error: str
    elapsed_s: float
    rps: float
    gateway_cpu_ms: float | None  # per call: supervisor + workers
    calls_per_gateway_cpu_s: float | None
    # Each worker's share of the gateway's CPU (two workers: is the load spread?).
    worker_cpu_shares: list[float] | None
    # Cores busy with processes outside the benchmark (not the gateway, the stand-in or this client).
    other_cores: float


class WorkersBench:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.upstream: subprocess.Popen[bytes] | None = None
        self.gateways: dict[str, subprocess.Popen[bytes]] = {}
        self.pids: dict[str, list[int]] = {}
        self.calls: dict[tuple[str, str], Call] = {}
        self.closers: list[SpreadTarget | DirectTarget] = []
        self.phases: list[Phase] = []

    def start_gateway(self, name: str, workers: int, root: str) -> str:
        from bench.run import _PYTHONPATH, ROOT, _free_port

        port = _free_port()
        config = self.workdir / f"tollway-{workers}.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\ngrace_period_s = 1.0\n\n'
            f'[providers.mixrouter]\nbase_url = "{root}/v1"\n\n'
            f'[ledger]\npath = "{self.workdir / f"ledger-{workers}.sqlite3"}"\n\n' + PRICES_TOML,
            encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
        env.update(MIXROUTER_API_KEY=API_KEY, PYTHONPATH=_PYTHONPATH)
        self.gateways[name] = subprocess.Popen(
            [sys.executable, "-m", "tollway.service.cli", "serve", "--config", str(config), "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(self.workdir / f"{name}.log", "wb"))
        return f"127.0.0.1:{port}"

    async def wait_serving(self, name: str, workers: int) -> None:
        """Until the gateway has all its workers (the supervisor says so in its log)."""
        log = self.workdir / f"{name}.log"
        marker = f"with {workers} workers" if workers > 1 else "serving on"
        deadline = time.monotonic() + 60
        while marker not in log.read_text(errors="replace"):
            if self.gateways[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')[-2000:]}")
            await asyncio.sleep(0.1)
        self.pids[name] = process_tree(self.gateways[name].pid)
        if len(self.pids[name]) != workers + (1 if workers > 1 else 0):
            raise RuntimeError(f"{name}: processes {self.pids[name]}, expected {workers} worker(s)")

    async def measure(self, repetition: int, target: str, mode: str) -> Phase:
        pids = self.pids.get(target, [])
        cpu0 = [proc.cpu_seconds(p) for p in pids]
        assert self.upstream is not None
        upstream0 = proc.cpu_seconds(self.upstream.pid)
        busy0 = proc.machine_busy_seconds()
        client0 = time.process_time()
        samples = await run_phase(self.calls[(target, mode)], CONCURRENCY, self.plan.phase_count,
                                  self.plan.phase_max_s)
        client = time.process_time() - client0
        busy = proc.machine_busy_seconds() - busy0
        upstream = proc.cpu_seconds(self.upstream.pid) - upstream0
        cpus = [proc.cpu_seconds(p) - c for p, c in zip(pids, cpu0)]
        gateway_cpu = sum(cpus)
        n = max(samples.count, 1)
        workers = cpus[1:] if len(cpus) > 1 else None
        phase = Phase(
            repetition=repetition, target=target, mode=mode, requests=samples.count, errors=samples.errors,
            first_error=samples.first_error, elapsed_s=round(samples.elapsed_s, 3),
            rps=samples.count / samples.elapsed_s if samples.elapsed_s else 0.0,
            gateway_cpu_ms=gateway_cpu * 1000 / n if pids else None,
            calls_per_gateway_cpu_s=samples.count / gateway_cpu if pids and gateway_cpu else None,
            worker_cpu_shares=[round(c / sum(workers), 3) for c in workers] if workers and sum(workers) else None,
            other_cores=max(0.0, busy - gateway_cpu - upstream - client) / max(samples.elapsed_s, 1e-9),
        )
        if samples.errors:
            print(f"  ! {target} {mode}: {samples.errors} errors, first: {samples.first_error}", file=sys.stderr)
        return phase

    async def run(self) -> dict[str, object]:
        from bench.run import _PYTHONPATH, ROOT

        self.upstream = subprocess.Popen([sys.executable, "-m", "bench.upstream"], cwd=ROOT,
                                         env={**os.environ, "PYTHONPATH": _PYTHONPATH}, stdout=subprocess.PIPE,
                                         stderr=open(self.workdir / "upstream.log", "wb"))
        assert self.upstream.stdout is not None
        root = f"http://127.0.0.1:{int(self.upstream.stdout.readline().strip())}"
        direct = DirectTarget(f"{root}/v1", f"{root}/stats")
        self.closers.append(direct)
        self.calls[(DIRECT, "unary")], self.calls[(DIRECT, "stream")] = direct.unary, direct.stream
        addresses = {ONE: self.start_gateway(ONE, 1, root), TWO: self.start_gateway(TWO, 2, root)}
        for name, workers in ((ONE, 1), (TWO, 2)):
            await self.wait_serving(name, workers)
            target = SpreadTarget(addresses[name])
            self.closers.append(target)
            self.calls[(name, "unary")], self.calls[(name, "stream")] = target.unary, target.stream
        await direct.check()
        for (target, mode), call in self.calls.items():
            await call()  # one checked call each before anything is timed
        print(f"ready: upstream {root}, gateways {addresses}", file=sys.stderr)
        started = time.perf_counter()
        for mode in MODES:
            for target in TARGETS:
                await run_phase(self.calls[(target, mode)], CONCURRENCY, self.plan.warmup, 10.0)
        for repetition in range(self.plan.repetitions):
            for mode in MODES:
                shift = repetition % len(TARGETS)
                for target in TARGETS[shift:] + TARGETS[:shift]:
                    self.phases.append(await self.measure(repetition, target, mode))
            print(f"repetition {repetition + 1}/{self.plan.repetitions} done at "
                  f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
        return {"phases": [asdict(p) for p in self.phases], "duration_s": round(time.perf_counter() - started, 1)}

    async def close(self) -> None:
        for closer in self.closers:
            await closer.close()

    def stop(self) -> None:
        processes = [*self.gateways.values(), *([self.upstream] if self.upstream else [])]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _median(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else float("nan")


def render(result: dict[str, object]) -> str:
    phases = [p for p in result["phases"]]  # type: ignore[attr-defined]
    repetitions = sorted({p["repetition"] for p in phases})

    def one(target: str, mode: str, repetition: int) -> dict[str, object]:
        return next(p for p in phases if (p["target"], p["mode"], p["repetition"]) == (target, mode, repetition))

    lines = ["# Workers: `tollway serve --workers 1` against `--workers 2`, c=50", "",
             f"Medians over {len(repetitions)} repetition(s); gateway CPU is the supervisor's and every worker's.", "",
             "| mode | target | calls/s | gateway CPU per call | calls per gateway CPU-second | worker CPU shares "
             "| errors | other load (cores) |",
             "|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        for target in TARGETS:
            rows = [one(target, mode, r) for r in repetitions]
            cpu = _median([r["gateway_cpu_ms"] for r in rows])
            per_cpu = _median([r["calls_per_gateway_cpu_s"] for r in rows])
            shares = rows[-1]["worker_cpu_shares"]
            lines.append(f"| {mode} | {target} | {_median([r['rps'] for r in rows]):.0f} | "
                         + ("–" if target == DIRECT else f"{cpu:.3f} ms") + " | "
                         + ("–" if target == DIRECT else f"{per_cpu:.0f}") + " | "
                         + (" / ".join(f"{s:.0%}" for s in shares) if shares else "–") + " | "
                         + f"{sum(r['errors'] for r in rows)} | {_median([r['other_cores'] for r in rows]):.2f} |")
    lines += ["", "| mode | 2 workers / 1: calls/s (target >= 1.6) | CPU per call (target <= 1.0) "
                  "| calls per gateway CPU-second | targets |", "|---|---|---|---|---|"]
    for mode in MODES:
        ratios = {key: _median([one(TWO, mode, r)[key] / one(ONE, mode, r)[key]  # type: ignore[operator]
                                if one(ONE, mode, r)[key] and one(TWO, mode, r)[key] else None
                                for r in repetitions])
                  for key in ("rps", "gateway_cpu_ms", "calls_per_gateway_cpu_s")}
        verdict = "met" if ratios["rps"] >= 1.6 and ratios["gateway_cpu_ms"] <= 1.0 else "not met"
        lines.append(f"| {mode} | {ratios['rps']:.2f} | {ratios['gateway_cpu_ms']:.2f} | "
                     f"{ratios['calls_per_gateway_cpu_s']:.2f} | {verdict} |")
    errors = [p for p in phases if p["errors"]]
    if errors:
        lines += ["", "FAILED CALLS: " + "; ".join(f"{p['target']} {p['mode']}: {p['errors']} ({p['first_error']})"
                                                    for p in errors)]
    return "\n".join(lines) + "\n"


def main(quick: bool, repetitions: int | None, workdir: Path) -> dict[str, object]:
    plan = QUICK if quick else FULL
    if repetitions:
        plan = Plan(**{**plan.__dict__, "repetitions": repetitions})
    bench = WorkersBench(plan, workdir)

    async def run() -> dict[str, object]:
        try:
            return await bench.run()
        finally:
            await bench.close()

    try:
        try:
            import uvloop

            result = uvloop.run(run())
        except ImportError:
            result = asyncio.run(run())
    except Exception:
        for log in sorted(workdir.glob("*.log")):
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
            print(f"--- {log.name} (last 30 lines)", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        bench.stop()
    return result
