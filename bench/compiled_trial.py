"""Would compiling Tollway's hot modules with mypyc pay? Two gateways, one run, the answer.

    .venv/bin/python -m bench.compiled_trial                  # unary, 6 interleaved phases of 4 s
    .venv/bin/python -m bench.compiled_trial --mode stream
    .venv/bin/python -m bench.compiled_trial --modules tollway/service/gateway/call.py,...

What it does:
1. Copies the package in its installed layout (protos/tollway as tollway, service as
   tollway.service, providers as tollway.providers) into a temporary directory and runs mypyc
   there over MODULES (needs a C compiler and Python's headers). Nothing in the checkout
   changes.
2. Starts the stand-in upstream and two `tollway serve` gateways on the same config, as
   bench.run starts them: "pure" (this checkout) and "compiled" (the copy first on
   PYTHONPATH; the compiled gateway's /proc/<pid>/maps must show every module's .so, or the
   run stops).
3. Phases of 50 calls in flight, the two gateways alternating (rotated order each
   repetition); before each phase, each gateway's answers are checked (text and usage).
   Reports per gateway the median CPU per call (all threads, and the event loop's thread
   alone) and calls/s, and the median of the per-repetition differences.

MODULES leaves out what mypyc cannot compile or compiles wrongly here: routing/router.py,
upstream/engine.py and ledger/journal.py (async generators, break/continue in try/finally:
"unimplemented"), and ledger/records.py (orjson serializes its dataclass natively; compiled,
the journal line fails with "Integer exceeds 64-bit range").
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import proc
from bench import run as bench_run
from bench.load import run_phase

ROOT = proc.ROOT
MODULES = (
    "tollway/service/gateway/call.py",
    "tollway/service/gateway/logs.py",
    "tollway/service/usage/normalize.py",
    "tollway/service/billing/catalog.py",
    "tollway/service/ledger/writer.py",
    "tollway/service/upstream/sse.py",
    "tollway/providers/openai_codec.py",
)
GATEWAYS = ("pure", "compiled")
CONCURRENCY = 50


def build(tree: Path, modules: list[str]) -> None:
    """The installed layout under tree, and mypyc's extension modules beside their sources."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    shutil.copytree(ROOT / "protos" / "tollway", tree / "tollway", ignore=ignore)
    shutil.copytree(ROOT / "service", tree / "tollway" / "service", ignore=ignore)
    shutil.copytree(ROOT / "providers", tree / "tollway" / "providers", ignore=ignore)
    done = subprocess.run([sys.executable, "-m", "mypyc", *modules], cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError("mypyc failed:\n" + "\n".join((done.stdout + done.stderr).splitlines()[-30:]))


def compiled_loaded(pid: int, modules: list[str]) -> list[str]:
    """The modules whose extension the process has not mapped (empty: all compiled code runs)."""
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
        maps = f.read()
    return [m for m in modules if f"/{m.removesuffix('.py')}.cpython-" not in maps]


def launcher(compiled_tree: Path):
    """bench.run's _launch, with the compiled copy first on the path of the gateway named so."""
    shipped = bench_run._launch

    def launch(tree: Path, args: list[str], env: dict[str, str], log: Path):
        if log.name != "compiled.log":
            return shipped(tree, args, env, log)
        path = [str(compiled_tree), str(tree), str(tree / "protos")]
        return subprocess.Popen([sys.executable, *args], cwd=tree, env={**env, "PYTHONPATH": ":".join(path)},
                                stdout=subprocess.DEVNULL, stderr=open(log, "wb"))

    return launch


async def measure(work: Path, compiled_tree: Path, modules: list[str], mode: str, repetitions: int,
                  seconds: float) -> dict[str, list[tuple[float, float, float]]]:
    bench_run._launch = launcher(compiled_tree)
    bench = bench_run.Bench(bench_run.QUICK, ("http1",), work, None, merged=False)
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in GATEWAYS}
    try:
        upstream = bench.start_upstream()
        addresses = {name: bench.start_gateway(name, "http1", upstream) for name in GATEWAYS}
        for name in GATEWAYS:
            await bench.wait_ready(name, addresses[name])
        missing = compiled_loaded(bench.servers["compiled"].pid, modules)
        if missing:
            raise RuntimeError(f"the compiled gateway did not load: {', '.join(missing)}")
        calls = {name: getattr(bench.targets[name], mode) for name in GATEWAYS}
        for name in GATEWAYS:  # warm-up: connections, caches, the ledger's first batches
            await run_phase(calls[name], CONCURRENCY, 3000, 30)
        for repetition in range(repetitions):
            for name in (GATEWAYS if repetition % 2 == 0 else GATEWAYS[::-1]):
                await bench.targets[name].check()
                pid = bench.servers[name].pid
                before, loop_before = proc.cpu_seconds(pid), proc.cpu_seconds(pid, thread=pid)
                samples = await run_phase(calls[name], CONCURRENCY, 10**9, seconds)
                after, loop_after = proc.cpu_seconds(pid), proc.cpu_seconds(pid, thread=pid)
                if samples.errors or not samples.count:
                    raise RuntimeError(f"{name}: {samples.errors} failed calls: {samples.first_error}")
                figures[name].append(((after - before) * 1000 / samples.count,
                                      (loop_after - loop_before) * 1000 / samples.count,
                                      samples.count / samples.elapsed_s))
    finally:
        bench.stop_processes()
        for target in bench.targets.values():
            await target.close()
    return figures


def report(figures: dict[str, list[tuple[float, float, float]]], mode: str) -> None:
    print(f"{mode}, c={CONCURRENCY}, medians of {len(figures['pure'])} phases per gateway (code {proc.code_version()})")
    print(f"{'gateway':10} {'CPU ms/call':>12} {'loop thread':>12} {'calls/s':>9}")
    for name in GATEWAYS:
        cpu, loop, rate = (statistics.median(f[i] for f in figures[name]) for i in range(3))
        print(f"{name:10} {cpu:12.3f} {loop:12.3f} {rate:9.0f}")
    pairs = list(zip(figures["compiled"], figures["pure"], strict=True))
    print(f"compiled - pure, median of per-repetition differences: CPU "
          f"{statistics.median(c[0] - p[0] for c, p in pairs):+.3f} ms/call, loop thread "
          f"{statistics.median(c[1] - p[1] for c, p in pairs):+.3f} ms/call, calls/s "
          f"{statistics.median(c[2] / p[2] for c, p in pairs):.3f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default=",".join(MODULES), help="comma-separated paths in the installed layout")
    parser.add_argument("--mode", choices=("unary", "stream"), default="unary")
    parser.add_argument("--repetitions", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each phase")
    args = parser.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    with tempfile.TemporaryDirectory(prefix="tollway-mypyc-") as tmp:
        tree, work = Path(tmp) / "tree", Path(tmp) / "work"
        work.mkdir()
        print(f"compiling {len(modules)} modules with mypyc ...", flush=True)
        build(tree, modules)
        measuring = measure(work, tree, modules, args.mode, args.repetitions, args.seconds)
        try:
            import uvloop  # the load generator's loop, as bench.run's

            figures = uvloop.run(measuring)
        except ImportError:
            figures = asyncio.run(measuring)
    report(figures, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
