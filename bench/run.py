"""Tollway against a direct HTTP call to the same loopback upstream, in one run.

Processes: the stand-in upstream (bench.upstream), one gateway per upstream transport
(bench.gateway -> `tollway serve`), one more gateway on the first transport with stream
deltas merged (Engine(merge_deltas=True), to show what that option buys), the gRPC floor
(bench.floor: the same contract with no work, to show what grpc.aio alone costs),
Portkey's gateway (Node, bench/portkey, when installed: the most used open-source gateway,
called over HTTP with the stand-in as its OpenAI custom host), and this process, the load
generator.

Every repetition measures, back to back, at concurrency 1 and 50:
  unary   the direct call, the floor, each gateway asked for "mixrouter/bench-model", and
          the first gateway asked for a route of two weighted targets ("bench-weighted",
          the routing layer's cost on the happy path) and for a route whose first target
          answers 503 at once ("bench-fallback", the cost of one fallback), and Portkey;
  stream  the same targets with 20-chunk streams (the stand-in writes them back to back),
          and the merged-deltas gateway;
  paced   20-chunk streams whose events come 1 ms apart, each in a read of its own: the
          direct call, the floor (its messages 1 ms apart), the first gateway, the
          merged-deltas gateway and Portkey;
  tool    20-chunk streams that are one tool call (delta.tool_calls, back to back), asked
          for with the tool declared: the direct call and the first gateway, whose every
          answer is checked (arguments joined, the call assembled in the summary).
With --baseline-tree DIR, one more gateway runs from another checkout of Tollway (its own
venv and bench.gateway, on the first transport) in the unary and stream phases: the code
before a change and after it, measured in the same repetitions.
The report gives medians over repetitions of each figure and of each gateway-minus-direct
difference. Server CPU comes from /proc/<pid>/stat (utime + stime, all threads) read
before and after each phase.

    .venv/bin/python -m bench.run            # full: about 8 minutes on 2 cores
    .venv/bin/python -m bench.run --quick    # one short repetition, about a minute
    .venv/bin/python -m bench.run --baseline-tree /tmp/tollway-0.1   # and a gateway of that tree

Only 127.0.0.1 is used; every phase is bounded in requests and in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

# This tree and its generated stubs first, as for the subprocesses below (and so that
# `python bench/run.py` finds the bench package).
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "protos")]

import orjson  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from bench import proc  # noqa: E402
from bench.gateway import TRANSPORTS  # noqa: E402
from bench.load import (  # noqa: E402
    API_KEY,
    PRICES_TOML,
    TOOL_STREAM_REQUEST,
    Call,
    DirectTarget,
    GatewayTarget,
    PortkeyTarget,
    Samples,
    run_phase,
)
from bench.report import BASELINE, DIRECT, FALLBACK, FLOOR, MERGED, PASSTHROUGH, PORTKEY, ROUTE, render  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Subprocesses run the code of the tree this file is in (and its generated stubs), even when
# the installed package points at another checkout.
_PYTHONPATH = os.pathsep.join([str(ROOT), str(ROOT / "protos")])
MODES = ("unary", "stream", "paced", "tool")
CONCURRENCIES = (1, 50)
# Model names the gateways are configured with (start_gateway): the same stand-in behind each.
ROUTE_MODEL = "bench-weighted"
FALLBACK_MODEL = "bench-fallback"
PACED_MODEL = "paced/bench-model"
TOOL_MODEL = "tools/bench-model"
# Portkey's gateway, installed by `npm ci --prefix bench/portkey` (its package.json pins the version).
PORTKEY_DIR = ROOT / "bench" / "portkey"
PORTKEY_SERVER = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
PORTKEY_INSTALL = "npm ci --prefix bench/portkey --no-audit --no-fund"
# Calls per mode that warm Portkey up before anything is measured, whatever the plan: V8's JIT
# needs a few thousand before its figures settle (cold, it measured about half as fast).
PORTKEY_WARMUP = 3000
# Environment that would change what Portkey does with a call (an operator's proxy, cache
# store or host allow-list): left out, so it runs as installed.
_PORTKEY_ENV_DROPPED = {"TRUSTED_CUSTOM_HOSTS", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                        "NO_PROXY", "no_proxy", "REDIS_CONNECTION_STRING", "PORT", "NODE_OPTIONS"}


@dataclass(frozen=True)
class Plan:
    repetitions: int
    phase_max_s: float
    # Request cap per (mode, concurrency); the time cap usually ends a phase first.
    phase_counts: dict[tuple[str, int], int]
    warmup_unary: int
    warmup_streams: int
    soak_requests: int
    soak_step: int
    soak_max_s: float


FULL = Plan(repetitions=5, phase_max_s=2.0,
            phase_counts={("unary", 1): 3000, ("unary", 50): 10000, ("stream", 1): 1500, ("stream", 50): 4000,
                          ("paced", 1): 1500, ("paced", 50): 4000, ("tool", 1): 1500, ("tool", 50): 4000},
            warmup_unary=2000, warmup_streams=500, soak_requests=20000, soak_step=5000, soak_max_s=60.0)
QUICK = Plan(repetitions=1, phase_max_s=0.7,
             phase_counts={("unary", 1): 1000, ("unary", 50): 3000, ("stream", 1): 500, ("stream", 50): 1000,
                           ("paced", 1): 500, ("paced", 50): 1000, ("tool", 1): 500, ("tool", 50): 1000},
             warmup_unary=500, warmup_streams=100, soak_requests=3000, soak_step=1000, soak_max_s=10.0)


@dataclass
class Phase:
    """One measured phase: one target, one mode, one concurrency, one repetition."""

    repetition: int
    target: str
    mode: str
    concurrency: int
    requests: int
    errors: int
    first_error: str
    elapsed_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    messages_per_call: float | None  # gRPC messages a stream carried (merged deltas make fewer)
    gateway_cpu_ms: float | None  # per request: the gRPC server's (gateway or floor) CPU
    # Of which its main thread, the event loop where all Python runs: one core caps the
    # server at 1000 / this many requests per second.
    loop_thread_cpu_ms: float | None
    upstream_cpu_ms: float
    # Connections the stand-in accepted during the phase: a pool that reuses them opens none.
    upstream_connections: int
    client_cpu_ms: float
    other_cores: float  # cores busy with processes outside the benchmark during the phase


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in milliseconds."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank] / 1e6


class Bench:
    def __init__(self, plan: Plan, transports: tuple[str, ...], workdir: Path, profile: Path | None,
                 merged: bool = True, baseline_tree: Path | None = None, portkey: bool = False) -> None:
        self.plan = plan
        self.portkey = portkey
        self.transports = transports
        self.merged = merged
        self.baseline_tree = baseline_tree
        self.workdir = workdir
        self.profile = profile
        self.upstream: subprocess.Popen | None = None
        self.servers: dict[str, subprocess.Popen] = {}
        self.targets: dict[str, GatewayTarget | DirectTarget | PortkeyTarget] = {}
        # What each (target, mode) calls, and which server process a target's CPU is read from.
        self.calls: dict[tuple[str, str], Call] = {}
        self.server_of: dict[str, str] = {}
        self.phases: list[Phase] = []
        self.memory: dict[str, dict[str, object]] = {}

    # -- processes ------------------------------------------------------------------------

    def start_upstream(self) -> str:
        self.upstream = subprocess.Popen([sys.executable, "-m", "bench.upstream"], cwd=ROOT,
                                         env={**os.environ, "PYTHONPATH": _PYTHONPATH}, stdout=subprocess.PIPE,
                                         stderr=open(self.workdir / "upstream.log", "wb"))
        assert self.upstream.stdout is not None
        port = self.upstream.stdout.readline().strip()
        if not port:
            raise RuntimeError("the upstream stand-in did not start (see its log)")
        return f"http://127.0.0.1:{int(port)}"

    def start_gateway(self, name: str, transport: str | None, root: str, *, merge_deltas: bool = False,
                      tree: Path = ROOT) -> str:
        """`tollway serve` with the stand-in behind five providers (the stand-in answers by path):
        mixrouter and mixrouter_b serve, failing answers 503, paced spaces its stream events,
        tools streams a tool call. tree: the checkout whose bench.gateway runs (see _launch);
        transport None: the client that tree ships."""
        port = _free_port()
        config = self.workdir / f"tollway-{name}.toml"
        providers = {"mixrouter": f"{root}/v1", "mixrouter_b": f"{root}/v1", "failing": f"{root}/fail503/v1",
                     "paced": f"{root}/paced/v1", "tools": f"{root}/tools/v1"}
        config.write_text(
            "[server]\n"
            f'listen = "127.0.0.1:{port}"\n'
            "grace_period_s = 1.0\n\n"
            + "".join(f'[providers.{p}]\nkind = "mixrouter"\nbase_url = "{url}"\n\n' for p, url in providers.items())
            + f'[ledger]\npath = "{self.workdir / f"ledger-{name}.sqlite3"}"\n\n'
            # The fallback case measures one failed attempt and the fallback, every call: no
            # retry of the failing target (its backoff would be the figure), and a breaker that
            # never opens (an open one skips the target without a network call).
            "[routing]\nmax_retries = 0\n\n"
            "[routing.breaker]\nconsecutive_failures = 1000000000\nerror_rate = 1.0\n\n"
            f'[[routes]]\nname = "{ROUTE_MODEL}"\ntargets = [\n'
            '  { provider = "mixrouter", model = "bench-model", weight = 3 },\n'
            '  { provider = "mixrouter_b", model = "bench-model", weight = 1 },\n]\n\n'
            f'[[routes]]\nname = "{FALLBACK_MODEL}"\ntargets = [\n'
            '  { provider = "failing", model = "bench-model", priority = 1 },\n'
            '  { provider = "mixrouter", model = "bench-model", priority = 2 },\n]\n\n'
            + PRICES_TOML,
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
        env["MIXROUTER_API_KEY"] = API_KEY
        if transport is not None:
            env["TOLLWAY_BENCH_TRANSPORT"] = transport
        if merge_deltas:
            env["TOLLWAY_BENCH_MERGE_DELTAS"] = "1"
        if self.profile:
            env["TOLLWAY_BENCH_PROFILE"] = str(self.profile / f"gateway-{name}.pstats")
        self.servers[name] = _launch(tree, ["-m", "bench.gateway", "serve", "--config", str(config)], env,
                                     self.workdir / f"{name}.log")
        return f"127.0.0.1:{port}"

    def start_floor(self) -> str:
        address = f"127.0.0.1:{_free_port()}"
        self.servers[FLOOR] = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", "--listen", address], cwd=ROOT,
            env={**os.environ, "PYTHONPATH": _PYTHONPATH}, stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"{FLOOR}.log", "wb"),
        )
        return address

    def start_passthrough(self, root: str) -> str:
        address = f"127.0.0.1:{_free_port()}"
        self.servers[PASSTHROUGH] = subprocess.Popen(
            [sys.executable, "-m", "bench.passthrough", "--listen", address, "--upstream", f"{root}/v1"], cwd=ROOT,
            env={**os.environ, "PYTHONPATH": _PYTHONPATH}, stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"{PASSTHROUGH}.log", "wb"),
        )
        return address

    def start_portkey(self) -> str:
        """Portkey's gateway as its README starts it (node, production, headless), on a free
        loopback port (bench/portkey/loopback.mjs: it takes no host option)."""
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if k not in _PORTKEY_ENV_DROPPED}
        env["NODE_ENV"] = "production"
        log = open(self.workdir / f"{PORTKEY}.log", "wb")
        self.servers[PORTKEY] = subprocess.Popen(
            ["node", "--import", str(PORTKEY_DIR / "loopback.mjs"), str(PORTKEY_SERVER), f"--port={port}",
             "--headless"], cwd=PORTKEY_DIR, env=env, stdout=log, stderr=log,
        )
        return f"http://127.0.0.1:{port}"

    async def wait_portkey(self, target: PortkeyTarget) -> None:
        deadline = time.monotonic() + 30
        while not await target.ready():
            if self.servers[PORTKEY].poll() is not None:
                log = (self.workdir / f"{PORTKEY}.log").read_text(errors="replace")
                raise RuntimeError(f"Portkey's gateway exited at start:\n{log[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("Portkey's gateway did not answer GET / in 30 s")
            await asyncio.sleep(0.1)

    async def wait_ready(self, name: str, address: str) -> None:
        target = GatewayTarget(address, priced=name not in (FLOOR, PASSTHROUGH))
        health = health_pb2_grpc.HealthStub(target.channel)
        deadline = time.monotonic() + 30
        while True:
            if self.servers[name].poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")
                raise RuntimeError(f"{name} server exited at start:\n{log[-2000:]}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except Exception:  # not listening yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} server did not become ready in 30 s") from None
            await asyncio.sleep(0.1)
        self.targets[name] = target

    def stop_processes(self) -> None:
        for process in [*self.servers.values(), self.upstream]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.servers.values(), self.upstream]:
            if process is None:
                continue
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def print_logs(self, lines: int = 30) -> None:
        """The end of each subprocess's log, for a run that failed."""
        for log in sorted(self.workdir.glob("*.log")):
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            print(f"--- {log.name} (last {lines} lines)", *tail, sep="\n", file=sys.stderr)

    # -- measuring ------------------------------------------------------------------------

    async def measure(self, repetition: int, target: str, mode: str, concurrency: int, count: int,
                      max_s: float) -> Phase:
        call = self.calls[(target, mode)]
        gateway = self.servers.get(self.server_of.get(target, ""))  # None for the direct call
        assert self.upstream is not None
        up_pid = self.upstream.pid
        direct = self.targets[DIRECT]
        assert isinstance(direct, DirectTarget)
        connections0 = (await direct.upstream_stats())["connections"]
        # Node may fork helpers: Portkey's CPU is its process tree's.
        cpu_seconds = proc.tree_cpu_seconds if self.server_of.get(target) == PORTKEY else proc.cpu_seconds
        gw_cpu0 = cpu_seconds(gateway.pid) if gateway else 0.0
        loop_cpu0 = proc.cpu_seconds(gateway.pid, gateway.pid) if gateway else 0.0
        up_cpu0 = proc.cpu_seconds(up_pid)
        client_cpu0 = time.process_time()
        busy0 = proc.machine_busy_seconds()
        samples: Samples = await run_phase(call, concurrency, count, max_s)
        busy = proc.machine_busy_seconds() - busy0
        client_cpu = time.process_time() - client_cpu0
        up_cpu = proc.cpu_seconds(up_pid) - up_cpu0
        gw_cpu = cpu_seconds(gateway.pid) - gw_cpu0 if gateway else 0.0
        loop_cpu = proc.cpu_seconds(gateway.pid, gateway.pid) - loop_cpu0 if gateway else 0.0
        connections = (await direct.upstream_stats())["connections"] - connections0
        n = max(samples.count, 1)
        phase = Phase(
            repetition=repetition, target=target, mode=mode, concurrency=concurrency, requests=samples.count,
            errors=samples.errors, first_error=samples.first_error, elapsed_s=round(samples.elapsed_s, 3),
            rps=samples.count / samples.elapsed_s if samples.elapsed_s else 0.0,
            p50_ms=percentile(samples.latencies_ns, 0.50) if samples.count else float("nan"),
            p99_ms=percentile(samples.latencies_ns, 0.99) if samples.count else float("nan"),
            ttft_p50_ms=percentile(samples.ttfts_ns, 0.50) if samples.ttfts_ns else None,
            ttft_p99_ms=percentile(samples.ttfts_ns, 0.99) if samples.ttfts_ns else None,
            messages_per_call=samples.messages / n if gateway and mode != "unary" else None,
            gateway_cpu_ms=gw_cpu * 1000 / n if gateway else None,
            loop_thread_cpu_ms=loop_cpu * 1000 / n if gateway else None,
            upstream_cpu_ms=up_cpu * 1000 / n,
            upstream_connections=connections,
            client_cpu_ms=client_cpu * 1000 / n,
            other_cores=max(0.0, busy - gw_cpu - up_cpu - client_cpu) / max(samples.elapsed_s, 1e-9),
        )
        if samples.errors:
            print(f"  ! {target} {mode} c={concurrency}: {samples.errors} errors, first: {samples.first_error}",
                  file=sys.stderr)
        return phase

    async def check_routes(self) -> None:
        """The route cases measure what they say: a fallback after a 503, and both weighted targets used."""
        fallback, route = self.targets[FALLBACK], self.targets[ROUTE]
        assert isinstance(fallback, GatewayTarget) and isinstance(route, GatewayTarget)
        response = await fallback.stub.Complete(fallback.complete_request, timeout=10)
        tried = [(a.provider, a.code) for a in response.attempts]
        if tried != [("failing", 14), ("mixrouter", 0)]:  # UNAVAILABLE, then OK
            raise RuntimeError(f"the fallback route did not fall back after a 503: {tried}")
        served = set()
        for _ in range(40):
            served.add((await route.stub.Complete(route.complete_request, timeout=10)).provider)
        if served != {"mixrouter", "mixrouter_b"}:
            raise RuntimeError(f"the weighted route served only from {served}")

    def targets_of(self, mode: str) -> list[str]:
        """The targets measured in one mode, in their first repetition's order."""
        gateways = [DIRECT, FLOOR, *self.transports]
        merged = [MERGED] if self.merged else []
        # The baseline tree's gateway is measured where the code before a change can answer alike.
        baseline = [BASELINE] if self.baseline_tree else []
        portkey = [PORTKEY] if self.portkey else []
        if mode == "unary":
            return [*gateways, PASSTHROUGH, *baseline, ROUTE, FALLBACK, *portkey]
        if mode == "stream":
            return [*gateways, PASSTHROUGH, *baseline, ROUTE, FALLBACK, *merged, *portkey]
        if mode == "tool":
            return [DIRECT, self.transports[0]]
        return [DIRECT, FLOOR, self.transports[0], *merged, *portkey]

    def gateways_with_memory(self) -> list[str]:
        return [*self.transports, *([BASELINE] if self.baseline_tree else []), *([PORTKEY] if self.portkey else [])]

    async def first_calls(self) -> None:
        """One call of each (target, mode): a failure stops the run, except a tool stream's,
        which is reported and then counted in its phases (the gateway may not translate tool
        calls yet; every other figure is still worth having)."""
        for mode in MODES:
            for target in self.targets_of(mode):
                try:
                    await self.calls[(target, mode)]()
                except Exception as exc:
                    if mode != "tool":
                        raise
                    print(f"  ! {target} tool stream fails its check; its phases will count errors: {exc}",
                          file=sys.stderr)

    async def warm_up(self) -> None:
        plan = self.plan
        for mode in MODES:
            count = plan.warmup_unary if mode == "unary" else plan.warmup_streams
            for target in self.targets_of(mode):
                if target == PORTKEY:
                    await self.warm_up_portkey(mode, max(count, PORTKEY_WARMUP))
                    continue
                await run_phase(self.calls[(target, mode)], 50, count, 10.0)
                await run_phase(self.calls[(target, mode)], 1, count // 10, 5.0)
        for name in self.gateways_with_memory():
            self.memory[name] = {"after_warmup_kib": proc.memory_kib(self.servers[name].pid)["VmRSS"]}

    async def warm_up_portkey(self, mode: str, count: int) -> None:
        """count calls at c=50 and a tenth as many at c=1, with time for all of them (Portkey
        streams a few hundred a second); failures are said, as a measured phase would."""
        for concurrency, n, max_s in ((50, count, 120.0), (1, count // 10, 60.0)):
            samples = await run_phase(self.calls[(PORTKEY, mode)], concurrency, n, max_s)
            if samples.errors or samples.count < n:
                print(f"  ! {PORTKEY} warm-up {mode} c={concurrency}: {samples.count} of {n} calls answered, "
                      f"{samples.errors} errors, first: {samples.first_error}", file=sys.stderr)

    async def measure_idle(self, seconds: float = 1.0) -> dict[str, float]:
        """CPU the servers burn with no calls (ms per second): what every phase's figure also holds."""
        before = {name: proc.cpu_seconds(p.pid) for name, p in self.servers.items()}
        await asyncio.sleep(seconds)
        return {name: round((proc.cpu_seconds(p.pid) - before[name]) * 1000 / seconds, 1)
                for name, p in self.servers.items()}

    async def soak(self, transport: str) -> None:
        """Unary at c=50 in steps, RSS after each: is memory flat once warm?"""
        plan = self.plan
        process = self.servers[transport]
        steps: list[tuple[int, int]] = []
        done = 0
        deadline = time.perf_counter() + plan.soak_max_s
        while done < plan.soak_requests and time.perf_counter() < deadline:
            samples = await run_phase(self.calls[(transport, "unary")], 50, plan.soak_step,
                                      max(0.1, deadline - time.perf_counter()))
            if samples.errors:
                print(f"  ! soak {transport}: {samples.errors} errors, first: {samples.first_error}", file=sys.stderr)
            done += samples.count
            steps.append((done, proc.memory_kib(process.pid)["VmRSS"]))
        self.memory[transport]["soak_steps"] = steps

    async def run(self) -> dict[str, object]:
        try:
            return await self._run()
        finally:
            for target in self.targets.values():
                await target.close()

    async def _run(self) -> dict[str, object]:
        root = self.start_upstream()
        stats_url = f"{root}/stats"
        direct = DirectTarget(f"{root}/v1", stats_url)
        paced_direct = DirectTarget(f"{root}/paced/v1", stats_url)
        tool_direct = DirectTarget(f"{root}/tools/v1", stats_url, TOOL_STREAM_REQUEST, marker=b'"id":"call_bench"')
        self.targets[DIRECT] = direct
        self.targets["direct-paced"] = paced_direct
        self.targets["direct-tools"] = tool_direct
        self.calls.update({(DIRECT, "unary"): direct.unary, (DIRECT, "stream"): direct.stream,
                           (DIRECT, "paced"): paced_direct.stream, (DIRECT, "tool"): tool_direct.stream})
        first = self.transports[0]
        addresses = {t: self.start_gateway(t, t, root) for t in self.transports}
        if self.merged:
            addresses[MERGED] = self.start_gateway(MERGED, first, root, merge_deltas=True)
        if self.baseline_tree:
            addresses[BASELINE] = self.start_gateway(BASELINE, None, root, tree=self.baseline_tree)
        addresses[FLOOR] = self.start_floor()
        addresses[PASSTHROUGH] = self.start_passthrough(root)
        portkey_url = self.start_portkey() if self.portkey else ""
        for name, address in addresses.items():
            await self.wait_ready(name, address)
        if self.portkey:
            portkey = PortkeyTarget(portkey_url, f"{root}/v1")
            paced_portkey = PortkeyTarget(portkey_url, f"{root}/paced/v1")
            self.targets[PORTKEY] = portkey
            self.targets["portkey-paced"] = paced_portkey
            await self.wait_portkey(portkey)
            self.server_of[PORTKEY] = PORTKEY
            self.calls.update({(PORTKEY, "unary"): portkey.unary, (PORTKEY, "stream"): portkey.stream,
                               (PORTKEY, "paced"): paced_portkey.stream})
        for name in addresses:
            gateway = self.targets[name]
            assert isinstance(gateway, GatewayTarget)
            self.server_of[name] = name
            self.calls[(name, "unary")] = gateway.unary
            self.calls[(name, "stream")] = gateway.stream
            self.calls[(name, "paced")] = gateway.named(PACED_MODEL).stream
        # The tool call goes through the provider on the stand-in's /tools/ path.
        tools = self.targets[first]
        assert isinstance(tools, GatewayTarget)
        self.calls[(first, "tool")] = tools.named(TOOL_MODEL).tool_stream
        # The same gateway asked for a route: the routing layer's cost, and a fallback's.
        for name, model in ((ROUTE, ROUTE_MODEL), (FALLBACK, FALLBACK_MODEL)):
            client = self.targets[first]
            assert isinstance(client, GatewayTarget)
            self.targets[name] = client.named(model)
            self.server_of[name] = first
            self.calls[(name, "unary")] = self.targets[name].unary
            self.calls[(name, "stream")] = self.targets[name].stream
        for target in self.targets.values():
            await target.check()
        await self.check_routes()
        await self.first_calls()
        print(f"ready: upstream {root}, servers {addresses}" + (f", portkey {portkey_url}" if self.portkey else ""),
              file=sys.stderr)
        started = time.perf_counter()
        await self.warm_up()
        print(f"warm-up done in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        idle = await self.measure_idle()
        await self.soak(self.transports[0])
        print(f"soak done at {time.perf_counter() - started:.1f}s", file=sys.stderr)
        for repetition in range(self.plan.repetitions):
            for mode in MODES:
                # Rotate the order of targets so none always runs right after another's load.
                order = self.targets_of(mode)
                shift = repetition % len(order)
                rotated = order[shift:] + order[:shift]
                for concurrency in CONCURRENCIES:
                    count = self.plan.phase_counts[(mode, concurrency)]
                    for target in rotated:
                        self.phases.append(
                            await self.measure(repetition, target, mode, concurrency, count, self.plan.phase_max_s))
            print(f"repetition {repetition + 1}/{self.plan.repetitions} done at "
                  f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
        for name in self.gateways_with_memory():
            memory = proc.memory_kib(self.servers[name].pid)
            self.memory[name].update(end_kib=memory["VmRSS"], peak_kib=memory["VmHWM"])
        return {"phases": [asdict(p) for p in self.phases], "memory": self.memory, "idle_cpu_ms_per_s": idle,
                "duration_s": round(time.perf_counter() - started, 1)}


def _launch(tree: Path, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`python ARGS` as the bench of `tree` runs it: that tree's code and generated stubs first
    on the path, from its directory. This tree runs with this interpreter; another tree with
    the python of its own venv (tree/.venv), so each gateway imports its own dependencies."""
    python = sys.executable if tree == ROOT else str(tree / ".venv" / "bin" / "python")
    env = {**env, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "protos")])}
    return subprocess.Popen([python, *args], cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def _baseline_problem(tree: Path) -> str:
    """Why tree cannot serve as a baseline checkout, or ""."""
    if not (tree / ".venv" / "bin" / "python").exists():
        return f"{tree}/.venv/bin/python does not exist (create the tree's venv: see bench/README.md)"
    if not (tree / "bench" / "gateway.py").exists():
        return f"{tree}/bench/gateway.py does not exist (not a Tollway checkout with a bench?)"
    return ""


def _portkey_version() -> str | None:
    """The installed Portkey gateway's version, or None when it is not installed or node is missing."""
    if not PORTKEY_SERVER.exists() or shutil.which("node") is None:
        return None
    package = orjson.loads((PORTKEY_SERVER.parent.parent / "package.json").read_bytes())
    return str(package["version"])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _print_profiles(workdir: Path, gateways: tuple[str, ...]) -> None:
    import pstats

    for gateway in gateways:
        path = workdir / f"gateway-{gateway}.pstats"
        if not path.exists():
            continue
        print(f"\n## cProfile of the gateway ({gateway}), top 30 by own time\n", file=sys.stderr)
        pstats.Stats(str(path), stream=sys.stderr).sort_stats("tottime").print_stats(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short repetition (under a minute)")
    parser.add_argument("--repetitions", type=int, help="override the number of repetitions")
    parser.add_argument("--transports", default=",".join(TRANSPORTS),
                        help=f"gateway upstream transports to compare, first is the soak's (default {','.join(TRANSPORTS)})")
    parser.add_argument("--no-merged", action="store_true",
                        help="leave out the merged-deltas gateway (for code without Engine's merge_deltas)")
    parser.add_argument("--no-portkey", action="store_true",
                        help="leave out Portkey's gateway (measured when bench/portkey is installed: "
                             f"{PORTKEY_INSTALL})")
    parser.add_argument("--json", metavar="FILE", help="also write every phase's raw figures to FILE")
    parser.add_argument("--baseline-tree", metavar="DIR",
                        help="also measure (unary, stream) a gateway started from the Tollway checkout in DIR, "
                             "with DIR/.venv/bin/python, labelled 'baseline' (see bench/README.md)")
    parser.add_argument("--profile", metavar="DIR",
                        help="run the gateways under cProfile, write DIR/gateway-<transport>.pstats and print "
                             "their top functions (slows the gateways down: figures are not comparable)")
    parser.add_argument("--workers-compare", action="store_true",
                        help="instead: the direct call, `tollway serve --workers 1` and `--workers 2` at c=50 "
                             "(unary, stream), with gateway CPU per call (see bench/workers.py)")
    args = parser.parse_args(argv)
    if args.workers_compare:
        return _workers_compare(args)
    plan = QUICK if args.quick else FULL
    if args.repetitions:
        plan = Plan(**{**plan.__dict__, "repetitions": args.repetitions})
    transports = tuple(t for t in args.transports.split(",") if t)
    if not transports or any(t not in TRANSPORTS for t in transports):
        parser.error(f"--transports takes a comma-separated subset of {','.join(TRANSPORTS)}")
    baseline_tree = Path(args.baseline_tree).resolve() if args.baseline_tree else None
    if baseline_tree and _baseline_problem(baseline_tree):
        parser.error(f"--baseline-tree: {_baseline_problem(baseline_tree)}")

    portkey_version = None if args.no_portkey else _portkey_version()
    if not args.no_portkey and portkey_version is None:
        print(f"Portkey's gateway is not installed (or node is missing): measuring without it; install it with "
              f"`{PORTKEY_INSTALL}`", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="tollway-bench-") as tmp:
        profile = Path(args.profile).resolve() if args.profile else None
        if profile:
            profile.mkdir(parents=True, exist_ok=True)
        bench = Bench(plan, transports, Path(tmp), profile, merged=not args.no_merged, baseline_tree=baseline_tree,
                      portkey=portkey_version is not None)
        try:
            try:
                import uvloop

                result = uvloop.run(bench.run())
            except ImportError:
                result = asyncio.run(bench.run())
        except Exception:
            bench.print_logs()
            raise
        finally:
            bench.stop_processes()
    if profile:
        _print_profiles(profile, (*transports, *([BASELINE] if baseline_tree else [])))
    result["meta"] = {
        **proc.machine(),
        "python": platform.python_version(),
        "code": proc.code_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.run" + (" --quick" if args.quick else "")
                   + (f" --baseline-tree {baseline_tree}" if baseline_tree else "")
                   + (" --no-portkey" if args.no_portkey else ""),
        "repetitions": plan.repetitions,
        "transports": list(transports),
        "merged": not args.no_merged,
        "baseline_tree": str(baseline_tree) if baseline_tree else None,
        "portkey": portkey_version,
        "profiled": bool(args.profile),
    }
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(render(result))
    return 0


def _workers_compare(args: argparse.Namespace) -> int:
    from bench import workers

    with tempfile.TemporaryDirectory(prefix="tollway-bench-workers-") as tmp:
        result = workers.main(args.quick, args.repetitions, Path(tmp))
    result["meta"] = {
        **proc.machine(),
        "python": platform.python_version(),
        "code": proc.code_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.run --workers-compare" + (" --quick" if args.quick else ""),
    }
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(workers.render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
