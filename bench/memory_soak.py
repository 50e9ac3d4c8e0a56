"""Memory of a real `tollway serve` over a long run: is its RSS flat (within 20 MiB) over
1,000,000 requests?

One gateway process, started as a user starts it: `tollway serve` with a config naming only
its listen address and the MixRouter provider, logging on (plain lines to a file), the
default SQLite ledger (XDG_STATE_HOME points at a temporary directory). Behind it, the
bench's stand-in upstream (bench.upstream) answering with the recorded MixRouter answer
(tests/fixtures/mixrouter/seed_response.json): as it is for a unary call, and cut into 20
content chunks, a usage chunk and [DONE] for a stream.

Every request is the seed request's shape: the text and the image URL of the users' example,
and a short WAV as inline bytes, to mixrouter/gemini-2.0-flash (a priced model, so every
call is priced). Four in five are unary Complete, one in five StreamComplete; 32 calls in
flight over 4 channels. Every answer is checked: its text is the recorded text, its usage
totals are the recorded ones and it is priced.

Every STEP requests the gateway's memory is read from /proc: VmRSS and VmHWM
(bench.proc.memory_kib), RssAnon, and PSS and USS (private clean + dirty) from smaps_rollup;
with the ledger's row count at that moment. At the end the gateway is stopped with SIGTERM
(it drains and flushes the ledger) and the ledger must hold one row per request sent.

Warm-up: the first 5 % of the requests (50,000 of 1,000,000). Growth: RSS at the end minus
RSS at the end of the warm-up; spread: max minus min of RSS after the warm-up. Both within
20 MiB, 0 errors, every request in the ledger, the gateway alive and stopping cleanly: flat.

    nice -n 19 .venv/bin/python -m bench.memory_soak --requests 20000      # a minute or two
    nice -n 19 .venv/bin/python -m bench.memory_soak --json FILE           # 1,000,000: 20-40 min on 2 cores

Exit status 0 when the verdict is "flat", 1 otherwise (a gateway that died is reported with
its exit code). Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import math
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import orjson

from bench import proc
from bench import upstream as stand_in
from tests.support.gateway import fixture_json
from tests.support.seed import SEED_IMAGE_URL, SEED_TEXT
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
# The gateway and the stand-in run this tree's code and generated stubs, as bench.run's do.
_PYTHONPATH = os.pathsep.join([str(ROOT), str(ROOT / "protos")])
API_KEY = "tw-test-bench-0000000000000000"
MODEL = "mixrouter/gemini-2.0-flash"
LIMIT_MIB = 20.0
IDLE_S = 5.0
CHUNKS = 20
# Far above any answer's time on a busy machine: a call that fails is a failure of the
# gateway, never of a contended core.
CALL_TIMEOUT_S = 60.0
RECORDED = fixture_json("mixrouter/seed_response.json")
RECORDED_TEXT: str = RECORDED["choices"][0]["message"]["content"]
RECORDED_USAGE: dict[str, Any] = RECORDED["usage"]
# The ledger's table (tollway.service.ledger.schema.TABLE), read as an operator would.
LEDGER_TABLE = "tollway_ledger"
REQUEST_LOG_MARK = " tollway.request request "
# Run in a subprocess: the stand-in with the recorded answer in place of its own.
_STAND_IN = "import sys, bench.memory_soak as soak; sys.exit(soak.stand_in_main())"


# -- the stand-in's answers: the recorded MixRouter answer, unary and streamed -------------

def _pieces(text: str, count: int) -> list[str]:
    """text cut into count consecutive pieces of nearly equal length."""
    bounds = [round(i * len(text) / count) for i in range(count + 1)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _recorded_chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None,
                    ) -> bytes:
    choices = [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []
    event = {"id": RECORDED["id"], "object": "chat.completion.chunk", "created": RECORDED["created"],
             "model": RECORDED["model"], "choices": choices, "usage": usage}
    return b"data: " + orjson.dumps(event) + b"\n\n"


def recorded_stream_writes() -> list[bytes]:
    """The recorded answer as a provider streams it: 20 content chunks (the role on the first,
    finish_reason "stop" on the last), a usage chunk with the recorded usage, [DONE]; one HTTP
    chunk per event, framed as the stand-in frames its own stream."""
    pieces = _pieces(RECORDED_TEXT, CHUNKS)
    events = [_recorded_chunk({"role": "assistant", "content": pieces[0]})]
    events += [_recorded_chunk({"content": p}) for p in pieces[1:-1]]
    events.append(_recorded_chunk({"content": pieces[-1]}, finish="stop"))
    events.append(_recorded_chunk({}, usage=RECORDED_USAGE))
    events.append(b"data: [DONE]\n\n")
    writes = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
    writes[0] = stand_in.STREAM_HEAD + writes[0]
    writes[-1] += b"0\r\n\r\n"
    return writes


def recorded_unary_response() -> bytes:
    body = orjson.dumps(RECORDED)
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: keep-alive\r\n\r\n" % len(body)) + body


def stand_in_main() -> int:
    """bench.upstream, answering the default path with the recorded answer."""
    stand_in.UNARY_RESPONSE = recorded_unary_response()
    stand_in.STREAM_WRITES = recorded_stream_writes()
    return stand_in.main([])


# -- the request -------------------------------------------------------------------------

def short_wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    """A mono 16-bit WAV of a 440 Hz tone: a real file of the kind a caller sends inline."""
    frames = b"".join(int(8000 * math.sin(2 * math.pi * 440 * i / rate)).to_bytes(2, "little", signed=True)
                      for i in range(int(seconds * rate)))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buffer.getvalue()


AUDIO = short_wav()
_MESSAGES = [pb.Message(role=pb.ROLE_USER, parts=[
    pb.Part(text=SEED_TEXT),
    pb.Part(image=pb.Media(url=SEED_IMAGE_URL)),
    pb.Part(audio=pb.Media(data=AUDIO, mime_type="audio/wav")),
])]
_FIELDS: dict[str, Any] = dict(model=MODEL, messages=_MESSAGES, max_tokens=2000, temperature=0.8, top_p=0.1)
COMPLETE_REQUEST = pb.CompleteRequest(**_FIELDS)
STREAM_REQUEST = pb.StreamCompleteRequest(**_FIELDS)


def check_usage(usage: pb.Usage, cost: pb.Cost, what: str) -> None:
    totals = (usage.input.total, usage.output.total, usage.total_tokens)
    expected = (RECORDED_USAGE["prompt_tokens"], RECORDED_USAGE["completion_tokens"], RECORDED_USAGE["total_tokens"])
    if totals != expected or cost.unpriced or cost.total_nano_usd <= 0:
        raise RuntimeError(f"{what}: usage totals {totals}, cost {cost.total_nano_usd} (unpriced: {cost.unpriced}); "
                           f"expected {expected}, priced")


async def unary_call(stub: pb_grpc.CompletionStub) -> None:
    response = await stub.Complete(COMPLETE_REQUEST, timeout=CALL_TIMEOUT_S)
    text = "".join(p.text for p in response.choices[0].message.parts) if response.choices else ""
    if text != RECORDED_TEXT:
        raise RuntimeError(f"unary: text {text[:60]!r}..., not the recorded answer")
    check_usage(response.usage, response.cost, "unary")


async def stream_call(stub: pb_grpc.CompletionStub) -> None:
    texts: list[str] = []
    summaries: list[pb.StreamSummary] = []
    async for message in stub.StreamComplete(STREAM_REQUEST, timeout=CALL_TIMEOUT_S):
        if message.HasField("summary"):
            summaries.append(message.summary)
        elif message.HasField("delta"):
            texts.append(message.delta.text)
    text = "".join(texts)
    if text != RECORDED_TEXT or len(summaries) != 1:
        raise RuntimeError(f"stream: {len(texts)} deltas joined to {text[:60]!r}..., {len(summaries)} summaries; "
                           "expected the recorded text and one summary")
    check_usage(summaries[0].usage, summaries[0].cost, "stream")


# -- memory --------------------------------------------------------------------------------

def gateway_memory(pid: int) -> dict[str, int]:
    """KiB: rss and hwm (bench.proc.memory_kib), rss_anon (heap and stacks, not mapped files),
    pss, and uss (pages no other process shares: Private_Clean + Private_Dirty)."""
    base = proc.memory_kib(pid)
    out = {"rss": base["VmRSS"], "hwm": base["VmHWM"]}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                out["rss_anon"] = int(line.split()[1])
    rollup: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as f:
        for line in f:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                rollup[name] = int(value.split()[0])
    out["pss"] = rollup.get("Pss", 0)
    out["uss"] = rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
    return out


def ledger_rows(path: Path) -> int:
    """Rows in the ledger now, read-only (the gateway's writer keeps writing)."""
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {LEDGER_TABLE}").fetchone()[0])


@dataclass
class Sample:
    requests: int  # answered or failed so far
    elapsed_s: float
    rss_kib: int
    hwm_kib: int
    rss_anon_kib: int
    pss_kib: int
    uss_kib: int
    gateway_cpu_s: float
    ledger_rows: int
    errors: int


@dataclass
class Soak:
    """One run: the load, its checks and the samples."""

    requests: int
    step: int
    concurrency: int
    channels: int
    stream_every: int  # every n-th request is a stream
    max_errors: int
    gateway: subprocess.Popen[bytes]
    ledger_path: Path
    samples: list[Sample] = field(default_factory=list)
    issued: int = 0
    done: int = 0
    unary: int = 0
    streams: int = 0
    errors: int = 0
    first_error: str = ""
    started: float = 0.0
    run_s: float = 0.0  # from the first request to the end of the load
    gateway_died: bool = False
    idle_rss_kib: int | None = None  # IDLE_S after the load ended

    def sample(self) -> Sample | None:
        """The gateway's memory now (None once it has exited: the watcher reports that)."""
        pid = self.gateway.pid
        try:
            memory = gateway_memory(pid)
            cpu = proc.cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            return None
        sample = Sample(requests=self.done, elapsed_s=round(time.perf_counter() - self.started, 1),
                        rss_kib=memory["rss"], hwm_kib=memory["hwm"], rss_anon_kib=memory["rss_anon"],
                        pss_kib=memory["pss"], uss_kib=memory["uss"],
                        gateway_cpu_s=round(cpu, 1), ledger_rows=ledger_rows(self.ledger_path),
                        errors=self.errors)
        self.samples.append(sample)
        rate = sample.requests / sample.elapsed_s if sample.elapsed_s else 0.0
        print(f"{sample.requests:>9,} requests  {sample.elapsed_s:>7.0f} s  {rate:6.0f}/s  RSS {mib(sample.rss_kib)} "
              f"(anon {mib(sample.rss_anon_kib)}, PSS {mib(sample.pss_kib)}, USS {mib(sample.uss_kib)})  "
              f"ledger {sample.ledger_rows:,}  errors {self.errors}", flush=True)
        return sample

    async def worker(self, stub: pb_grpc.CompletionStub) -> None:
        while self.issued < self.requests and self.errors < self.max_errors:
            index = self.issued
            self.issued += 1
            stream = index % self.stream_every == self.stream_every - 1
            try:
                await (stream_call(stub) if stream else unary_call(stub))
                if stream:
                    self.streams += 1
                else:
                    self.unary += 1
            except Exception as exc:  # counted and reported: the verdict needs 0
                self.errors += 1
                if not self.first_error:
                    detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else exc
                    self.first_error = f"{type(exc).__name__}: {detail}"[:300]
            self.done += 1
            if self.done % self.step == 0 or self.done == self.requests:
                self.sample()

    async def watch_gateway(self) -> None:
        while self.gateway.poll() is None:
            await asyncio.sleep(0.5)
        self.gateway_died = True

    async def run(self, address: str) -> None:
        channels = [grpc.aio.insecure_channel(address) for _ in range(self.channels)]
        stubs = [pb_grpc.CompletionStub(c) for c in channels]  # type: ignore[no-untyped-call]  # generated
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 30)
            self.started = time.perf_counter()
            self.sample()
            load: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(
                *(self.worker(stubs[i % self.channels]) for i in range(self.concurrency))))
            watch: asyncio.Future[Any] = asyncio.ensure_future(self.watch_gateway())
            await asyncio.wait([load, watch], return_when=asyncio.FIRST_COMPLETED)
            if self.gateway_died:
                load.cancel()
            watch.cancel()
            await asyncio.gather(load, watch, return_exceptions=True)
            self.run_s = round(time.perf_counter() - self.started, 1)
            if not self.gateway_died:
                # Quiet for a while: what the gateway holds once nothing is in flight.
                await asyncio.sleep(IDLE_S)
                if self.gateway.poll() is None:
                    self.idle_rss_kib = gateway_memory(self.gateway.pid)["rss"]
        finally:
            for channel in channels:
                await channel.close()


def mib(kib: float) -> str:
    return f"{kib / 1024:6.1f} MiB"


# -- processes -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_stand_in(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen([sys.executable, "-c", _STAND_IN], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": _PYTHONPATH}, stdout=subprocess.PIPE,
                               stderr=open(workdir / "stand-in.log", "wb"))
    assert process.stdout is not None
    port = process.stdout.readline().strip()
    if not port:
        raise RuntimeError("the stand-in upstream did not start: " + (workdir / "stand-in.log").read_text()[-500:])
    return process, f"http://127.0.0.1:{int(port)}"


def start_gateway(workdir: Path, upstream: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`tollway serve` (its console entry point, run by this interpreter) with a user's config:
    a listen address and one provider; the ledger where a user's goes by default, under
    XDG_STATE_HOME."""
    port = free_port()
    config = workdir / "tollway.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n\n'
                      f'[providers.mixrouter]\nbase_url = "{upstream}/v1"\n', encoding="utf-8")
    state = workdir / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env.update(MIXROUTER_API_KEY=API_KEY, XDG_STATE_HOME=str(state), PYTHONPATH=_PYTHONPATH)
    process = subprocess.Popen([sys.executable, "-m", "tollway.service.cli", "serve", "--config", str(config)],
                               cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                               stderr=open(workdir / "gateway.log", "wb"))
    return process, f"127.0.0.1:{port}", state / "tollway" / "ledger.sqlite3"


async def wait_serving(gateway: subprocess.Popen[bytes], address: str, log: Path) -> None:
    """The gateway listens (no call is made: the ledger must hold the run's requests only), or
    this raises, with the end of its log when it exited."""
    deadline = time.monotonic() + 60
    async with grpc.aio.insecure_channel(address) as channel:
        while True:
            if gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited at start (exit code {gateway.returncode}):\n"
                                   + log.read_text(errors="replace")[-2000:])
            try:
                await asyncio.wait_for(channel.channel_ready(), 1)
                break
            except asyncio.TimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not listen within 60 s") from None


def stop(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, then the exit code (SIGKILL after timeout: reported as -9)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


# -- the report ----------------------------------------------------------------------------

def at(samples: list[Sample], requests: int) -> Sample | None:
    """The first sample taken at or after `requests` requests."""
    return next((s for s in samples if s.requests >= requests), None)


def summarize(soak: Soak, warmup: int) -> dict[str, Any]:
    samples = soak.samples
    settled = [s for s in samples if s.requests >= warmup]
    first, last = settled[0] if settled else None, samples[-1] if samples else None
    growth = (last.rss_kib - first.rss_kib) / 1024 if first and last else None
    spread = (max(s.rss_kib for s in settled) - min(s.rss_kib for s in settled)) / 1024 if settled else None
    checkpoints = []
    for fraction in (0.0, 0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 1.0):
        sample = at(samples, round(soak.requests * fraction))
        if sample is not None and sample not in checkpoints:
            checkpoints.append(sample)
    elapsed = soak.run_s
    return {
        "warmup_requests": warmup,
        "rss_after_warmup_mib": round(first.rss_kib / 1024, 1) if first else None,
        "rss_end_mib": round(last.rss_kib / 1024, 1) if last else None,
        "growth_after_warmup_mib": round(growth, 1) if growth is not None else None,
        "spread_after_warmup_mib": round(spread, 1) if spread is not None else None,
        "peak_rss_mib": round(max(s.hwm_kib for s in samples) / 1024, 1) if samples else None,
        "idle_rss_mib": round(soak.idle_rss_kib / 1024, 1) if soak.idle_rss_kib is not None else None,
        "checkpoints": [asdict(c) for c in checkpoints],
        "requests_per_s": round(soak.done / elapsed, 1) if elapsed else None,
        "run_s": elapsed,
    }


def render(result: dict[str, Any]) -> str:
    summary, outcome = result["summary"], result["outcome"]
    lines = ["", "| requests | RSS | RSS anon | PSS | USS | ledger rows |", "|---|---|---|---|---|---|"]
    for c in summary["checkpoints"]:
        lines.append(f"| {c['requests']:,} | {c['rss_kib'] / 1024:.1f} MiB | {c['rss_anon_kib'] / 1024:.1f} MiB | "
                     f"{c['pss_kib'] / 1024:.1f} MiB | {c['uss_kib'] / 1024:.1f} MiB | {c['ledger_rows']:,} |")
    lines += [
        "",
        f"after the warm-up ({summary['warmup_requests']:,} requests): RSS {summary['rss_after_warmup_mib']} MiB -> "
        f"{summary['rss_end_mib']} MiB, growth {summary['growth_after_warmup_mib']} MiB, max - min "
        f"{summary['spread_after_warmup_mib']} MiB (limit {LIMIT_MIB:g}); peak RSS {summary['peak_rss_mib']} MiB; "
        f"{IDLE_S:g} s after the load {summary['idle_rss_mib']} MiB",
        f"requests {outcome['requests_done']:,} of {result['plan']['requests']:,} ({outcome['unary']:,} unary, "
        f"{outcome['streams']:,} streams), errors {outcome['errors']}"
        + (f" (first: {outcome['first_error']})" if outcome["first_error"] else ""),
        f"{summary['requests_per_s']} requests/s over {summary['run_s']:.0f} s; ledger rows {outcome['ledger_rows']:,}; "
        f"request log lines {outcome['request_log_lines']:,}; gateway exit code {outcome['gateway_exit_code']}"
        + (" (it died during the run)" if outcome["gateway_died"] else ""),
        f"verdict: {outcome['verdict']}",
    ]
    return "\n".join(lines)


def verdict(summary: dict[str, Any], outcome: dict[str, Any], requests: int) -> str:
    problems = []
    if outcome["gateway_died"]:
        problems.append(f"the gateway died (exit code {outcome['gateway_exit_code']})")
    elif outcome["gateway_exit_code"] != 0:
        problems.append(f"the gateway exited with {outcome['gateway_exit_code']} on SIGTERM")
    if outcome["errors"]:
        problems.append(f"{outcome['errors']} errors")
    if outcome["requests_done"] != requests:
        problems.append(f"{outcome['requests_done']:,} of {requests:,} requests made")
    if outcome["ledger_rows"] != outcome["requests_done"]:
        problems.append(f"ledger rows {outcome['ledger_rows']:,} != requests {outcome['requests_done']:,}")
    growth, spread = summary["growth_after_warmup_mib"], summary["spread_after_warmup_mib"]
    if growth is None or spread is None:
        problems.append("no sample after the warm-up")
    elif max(growth, spread) > LIMIT_MIB:
        problems.append(f"NOT flat: growth {growth} MiB, max - min {spread} MiB (limit {LIMIT_MIB:g})")
    if problems:
        return "FAIL: " + "; ".join(problems)
    return f"flat: growth {growth} MiB and max - min {spread} MiB after the warm-up, within {LIMIT_MIB:g} MiB"


async def soak_run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    upstream, upstream_url = start_stand_in(workdir)
    gateway, address, ledger_path = start_gateway(workdir, upstream_url)
    log = workdir / "gateway.log"
    soak = Soak(requests=args.requests, step=args.step, concurrency=args.concurrency, channels=args.channels,
                stream_every=args.stream_every, max_errors=args.max_errors, gateway=gateway, ledger_path=ledger_path)
    try:
        await wait_serving(gateway, address, log)
        print(f"gateway pid {gateway.pid} serving; {args.requests:,} requests, {args.concurrency} in flight over "
              f"{args.channels} channels, 1 in {args.stream_every} a stream", flush=True)
        await soak.run(address)
    finally:
        died = soak.gateway_died or gateway.poll() is not None
        exit_code = stop(gateway, timeout=120)
        stop(upstream, timeout=15)
    log_text = log.read_text(encoding="utf-8", errors="replace")
    journal = ledger_path.with_name(ledger_path.name + ".journal")
    outcome: dict[str, Any] = {
        "requests_done": soak.done, "unary": soak.unary, "streams": soak.streams, "errors": soak.errors,
        "first_error": soak.first_error, "gateway_died": died, "gateway_exit_code": exit_code,
        "ledger_rows": ledger_rows(ledger_path),
        # Segments not yet in the database (the journal's .lock stays by design).
        "journal_segments_left": sum(1 for p in journal.rglob("*") if p.is_file() and not p.name.startswith("."))
                                 if journal.exists() else 0,
        "request_log_lines": log_text.count(REQUEST_LOG_MARK),
        # Without their time stamps, and without the temporary directory's name.
        "log_warnings": sorted({line.split(" ", 1)[1].replace(str(workdir), "<tmp>") for line in log_text.splitlines()
                                if " WARNING " in line or " ERROR " in line})[:10],
    }
    if died:
        print(f"the gateway died during the run, exit code {exit_code}; its log ends:\n{log_text[-2000:]}",
              file=sys.stderr)
    warmup = min(args.warmup, args.requests // 20)
    summary = summarize(soak, warmup)
    outcome["verdict"] = verdict(summary, outcome, args.requests)
    return {"summary": summary, "outcome": outcome, "samples": [asdict(s) for s in soak.samples]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--step", type=int, default=10_000, help="requests between memory samples "
                        "(at most 1/20 of the requests)")
    parser.add_argument("--warmup", type=int, default=50_000, help="requests before growth is counted "
                        "(at most 1/20 of the requests)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--stream-every", type=int, default=5, help="every n-th request is a stream (5: 20 %%)")
    parser.add_argument("--max-errors", type=int, default=100, help="stop the run after this many errors")
    parser.add_argument("--json", metavar="FILE", help="also write the samples and the summary to FILE")
    args = parser.parse_args(argv)
    if args.requests < 20 or args.concurrency < 1 or args.channels < 1 or args.stream_every < 1:
        parser.error("--requests must be at least 20, --concurrency, --channels and --stream-every at least 1")
    args.step = max(1, min(args.step, args.requests // 20))
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="tollway-soak-") as tmp:
        try:
            import uvloop

            result = uvloop.run(soak_run(args, Path(tmp)))
        except ImportError:
            result = asyncio.run(soak_run(args, Path(tmp)))
    result["plan"] = {
        "requests": args.requests, "step": args.step, "warmup": result["summary"]["warmup_requests"],
        "concurrency": args.concurrency, "channels": args.channels, "stream_share": round(1 / args.stream_every, 3),
        "stream_chunks": CHUNKS, "model": MODEL,
        "request": "text + image URL + inline WAV audio "
                   f"({len(AUDIO):,} bytes); the recorded MixRouter answer (tests/fixtures/mixrouter/seed_response.json)",
        "gateway": "tollway serve, default config but listen and one provider; logging on (plain, to a file); "
                   "default SQLite ledger",
    }
    result["meta"] = {
        **proc.machine(), "python": platform.python_version(), "code": proc.code_version(), "nice": os.nice(0),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "nice -n 19 python -m bench.memory_soak"
                   + (f" --requests {args.requests}" if args.requests != 1_000_000 else "") + " --json FILE",
    }
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(render(result))
    return 0 if result["outcome"]["verdict"].startswith("flat") else 1


if __name__ == "__main__":
    sys.exit(main())
