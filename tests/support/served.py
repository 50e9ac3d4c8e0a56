"""`tollway serve` as a real process, attacked, and the invariants it must keep afterwards.

The abuse suite (tests/abuse/) starts one gateway process per test with every built-in
provider kind configured against the loopback upstream of the test process, each with a
random upstream key, and two callers with their own bearer keys. After a scenario,
`Served.check_invariants` asserts what must hold whatever was thrown at it:

- no configured key, caller key, or 8-character prefix of one anywhere in what callers got
  (every response, status message and trailer the harness saw), in the gateway's log, or in
  any file of its ledger;
- the ledger's directories are 0700 and its files 0600;
- resident memory back within 50 MB of the baseline taken after start-up (bounded wait);
- a normal call still answered, within 100 ms.

The figures (RSS before, peak and after, the normal call's latency) are kept per scenario and
written to the file named by $TOLLWAY_ABUSE_REPORT when it is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import stat
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests import support
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from .upstream import FakeUpstream

ROOT = support.ROOT
START_WAIT_S = 20.0
RSS_SLACK_BYTES = 50 * 1024 * 1024
NORMAL_CALL_LIMIT_S = 0.100
# How long memory may take to come back once a scenario is over (freed buffers, closed pools).
RSS_SETTLE_S = 10.0

# Upstream keys: random, so that no fixed text of the suite can match one by chance.
PROVIDER_KEY_ENVS = ("MIXROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "LOCAL_API_KEY")
CALLERS = ("alice", "bob")

# A plain answer every scenario's follow-up call gets.
NORMAL_ANSWER = {
    "id": "chatcmpl-normal", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
NORMAL_MODEL = "openai/normal-check"


def new_key(prefix: str) -> str:
    return f"{prefix}{secrets.token_urlsafe(30)}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def hwm_bytes(pid: int) -> int:
    """The process's peak resident size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


async def wait_until_serving(target: str, proc: asyncio.subprocess.Process, log_text: Any, wait_s: float) -> None:
    """Until the process at target answers SERVING to a health check; the test fails (with the
    process's log) if it exits first."""
    async def poll() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if proc.returncode is not None:
                    pytest.fail(f"tollway serve exited with {proc.returncode}:\n{log_text()}")
                try:
                    response = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), wait_s)


def to_toml(config: Mapping[str, Any]) -> str:
    """The small TOML subset the suite's configs use: nested tables of scalars and lists (a table
    inside a list is written inline, as `rules = [{name = "a", ...}]`)."""
    lines: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        if isinstance(value, Mapping):
            return "{" + ", ".join(f"{json.dumps(k)} = {scalar(v)}" for k, v in value.items()) + "}"
        raise TypeError(f"cannot write {type(value).__name__} as TOML")

    def table(prefix: str, values: Mapping[str, Any]) -> None:
        plain = {k: v for k, v in values.items() if not isinstance(v, Mapping)}
        if prefix and (plain or not values):
            lines.append(f"[{prefix}]")
        for key, value in plain.items():
            lines.append(f"{json.dumps(key) if not key.replace('_', '').isalnum() else key} = {scalar(value)}")
        for key, value in values.items():
            if isinstance(value, Mapping):
                table(f"{prefix}.{key}" if prefix else key, value)

    table("", config)
    return "\n".join(lines) + "\n"


@dataclass
class Seen:
    """Everything a caller got back, as text, for the key scan."""

    texts: list[str] = field(default_factory=list)

    def response(self, message: Any) -> None:
        self.texts.append(str(message))

    def error(self, err: grpc.aio.AioRpcError) -> None:
        self.texts.append(f"{err.code()} {err.details()} {err.trailing_metadata()}")

    def metadata(self, metadata: Any) -> None:
        self.texts.append(str(metadata))


@dataclass
class Figures:
    scenario: str
    rss_baseline: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    normal_call_ms: float = 0.0

    def as_row(self) -> dict[str, Any]:
        mib = 1024 * 1024
        return {"scenario": self.scenario, "rss_baseline_mib": round(self.rss_baseline / mib, 1),
                "rss_peak_mib": round(self.rss_peak / mib, 1), "rss_after_mib": round(self.rss_after / mib, 1),
                "normal_call_ms": round(self.normal_call_ms, 2)}


@dataclass
class Served:
    """One `tollway serve` process with every provider kind pointed at `upstream`."""

    workdir: Path
    upstream: FakeUpstream
    scenario: str
    provider_keys: dict[str, str] = field(default_factory=dict)
    caller_keys: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    channel: grpc.aio.Channel | None = None
    seen: Seen = field(default_factory=Seen)
    figures: Figures | None = None
    # Called after the gateway stopped (resources a scenario made for it).
    cleanup: list[Any] = field(default_factory=list)
    # Set once the invariants were checked (a test may check them itself to read the ledger after).
    checked: bool = False
    log_path: Path = field(init=False)
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "gateway.log"
        self.config_path = self.workdir / "tollway.toml"
        # No "sk-" or other credential shape: the scrubbing of configured keys must catch them by value.
        self.provider_keys = {env: new_key("") for env in PROVIDER_KEY_ENVS}
        self.caller_keys = {name: new_key("tw-") for name in CALLERS}
        self.figures = Figures(self.scenario)

    # -- configuration ---------------------------------------------------------------------

    @property
    def ledger_dir(self) -> Path:
        # Created by the gateway itself, so its mode is the gateway's doing.
        return self.workdir / "state" / "ledger"

    def base_config(self) -> dict[str, Any]:
        import hashlib

        base = self.upstream.base_url
        return {
            "server": {"listen": f"127.0.0.1:{self.port}", "log_format": "plain", "grace_period_s": 2},
            "providers": {
                "mixrouter": {"base_url": f"{base}/v1"},
                "openai": {"base_url": f"{base}/v1"},
                "anthropic": {"base_url": f"{base}/v1"},
                "gemini": {"base_url": f"{base}/v1beta"},
                "local": {"kind": "openai_compatible", "base_url": f"{base}/v1", "api_key_env": "LOCAL_API_KEY"},
            },
            "routing": {"max_retries": 0},
            "callers": {name: {"key_sha256": hashlib.sha256(key.encode()).hexdigest()}
                        for name, key in self.caller_keys.items()},
            "ledger": {"path": str(self.ledger_dir / "usage.sqlite3")},
        }

    # -- the process -----------------------------------------------------------------------

    async def start(self, config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> None:
        self.port = self.port or free_port()
        merged = self.base_config()
        for name, table in (config or {}).items():
            if isinstance(table, Mapping) and isinstance(merged.get(name), dict):
                merged[name] = _deep_merge(merged[name], table)
            else:
                merged[name] = table
        self.config_path.write_text(to_toml(merged), encoding="utf-8")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_") and not k.endswith("_API_KEY")}
        environ.update(self.provider_keys)
        environ.update(env or {})
        with open(self.log_path, "ab") as log_file:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tollway.service.cli", "serve", "--config", str(self.config_path),
                cwd=ROOT, env=environ, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        await self._serving()
        self.channel = grpc.aio.insecure_channel(self.target, options=[
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.max_send_message_length", 256 * 1024 * 1024)])
        # Warm the paths a normal call takes before the baseline is taken.
        for _ in range(3):
            await self.normal_call()
        assert self.figures is not None
        self.figures.rss_baseline = self.rss()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    async def _serving(self) -> None:
        assert self.proc is not None
        await wait_until_serving(self.target, self.proc, self.log_text, START_WAIT_S)

    async def stop(self) -> None:
        while self.cleanup:
            self.cleanup.pop()()
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), START_WAIT_S)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    # -- calling it ------------------------------------------------------------------------

    def stub(self) -> pb_grpc.CompletionStub:
        assert self.channel is not None
        return pb_grpc.CompletionStub(self.channel)  # type: ignore[no-untyped-call]

    def auth(self, caller: str = "alice") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.caller_keys[caller]}"),)

    async def complete(self, request: pb.CompleteRequest, *, caller: str = "alice",
                       timeout: float = 30.0) -> pb.CompleteResponse:
        """Complete as `caller`; what comes back (answer or error) is kept for the key scan."""
        call = self.stub().Complete(request, metadata=self.auth(caller), timeout=timeout)
        try:
            response = await call
        except grpc.aio.AioRpcError as err:
            self.seen.error(err)
            raise
        self.seen.response(response)
        self.seen.metadata(await call.trailing_metadata())
        return response

    async def stream(self, request: pb.StreamCompleteRequest, *, caller: str = "alice",
                     timeout: float = 30.0) -> list[pb.StreamCompleteResponse]:
        call = self.stub().StreamComplete(request, metadata=self.auth(caller), timeout=timeout)
        messages = []
        try:
            async for message in call:
                self.seen.response(message)
                messages.append(message)
        except grpc.aio.AioRpcError as err:
            self.seen.error(err)
            raise
        self.seen.metadata(await call.trailing_metadata())
        return messages

    async def failure(self, request: pb.CompleteRequest | pb.StreamCompleteRequest, *,
                      caller: str = "alice", timeout: float = 30.0) -> grpc.aio.AioRpcError:
        """The error a call ends with (the test fails if it succeeds)."""
        try:
            if isinstance(request, pb.StreamCompleteRequest):
                await self.stream(request, caller=caller, timeout=timeout)
            else:
                await self.complete(request, caller=caller, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            return err
        raise AssertionError(f"{type(request).__name__} succeeded; an error was expected")

    async def normal_call(self) -> float:
        """One plain unary call end to end; returns its latency in seconds."""
        self.upstream.responder = _normal_responder(self.upstream.responder)
        request = pb.CompleteRequest(model=NORMAL_MODEL, messages=[
            pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="ping")])])
        started = time.perf_counter()
        response = await self.complete(request, timeout=10.0)
        elapsed = time.perf_counter() - started
        assert response.choices[0].message.parts[0].text == "ok"
        return elapsed

    # -- what must hold afterwards ---------------------------------------------------------

    def secrets(self) -> dict[str, str]:
        """Every secret this gateway knows, by what it is."""
        return {**self.provider_keys, **{f"caller {name}": key for name, key in self.caller_keys.items()}}

    def ledger_statuses(self, model: str) -> list[str]:
        """The status of every ledger record of an upstream model (read once the gateway stopped)."""
        import sqlite3

        from tollway.service.ledger.schema import TABLE

        with sqlite3.connect(self.ledger_dir / "usage.sqlite3") as db:
            return [row[0] for row in db.execute(f"SELECT status FROM {TABLE} WHERE model = ?", (model,))]

    def ledger_files(self) -> list[Path]:
        return sorted(p for p in self.ledger_dir.rglob("*") if p.is_file()) if self.ledger_dir.exists() else []

    def assert_no_secrets(self, extra_texts: Iterable[str] = ()) -> None:
        places: dict[str, str] = {"responses": "\n".join(self.seen.texts), "log": self.log_text()}
        places.update({f"extra {i}": text for i, text in enumerate(extra_texts)})
        blobs = {str(p.relative_to(self.workdir)): p.read_bytes() for p in self.ledger_files()}
        for name, key in self.secrets().items():
            prefix = key[:8]
            for place, text in places.items():
                assert prefix not in text, f"{name} (or its 8-character prefix) found in {place}"
            for place, data in blobs.items():
                assert prefix.encode() not in data, f"{name} (or its 8-character prefix) found in ledger file {place}"

    def assert_ledger_modes(self) -> None:
        assert self.ledger_dir.exists(), "the ledger directory was not created"
        for path in [self.ledger_dir, *self.ledger_dir.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            expected = 0o700 if path.is_dir() else 0o600
            assert mode == expected, f"{path.relative_to(self.workdir)} has mode {mode:o}, not {expected:o}"

    async def assert_memory_returned(self) -> None:
        assert self.figures is not None
        self.figures.rss_peak = hwm_bytes(self.pid)
        limit = self.figures.rss_baseline + RSS_SLACK_BYTES
        deadline = time.monotonic() + RSS_SETTLE_S
        while True:
            self.figures.rss_after = self.rss()
            if self.figures.rss_after <= limit or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        mib = 1024 * 1024
        assert self.figures.rss_after <= limit, (
            f"RSS {self.figures.rss_after / mib:.1f} MiB after the scenario; baseline "
            f"{self.figures.rss_baseline / mib:.1f} MiB (peak {self.figures.rss_peak / mib:.1f} MiB)")

    async def assert_still_serving(self) -> None:
        # The best of three: the first call after an attack may meet a collection of its garbage.
        latencies = [await self.normal_call() for _ in range(3)]
        assert self.figures is not None
        self.figures.normal_call_ms = min(latencies) * 1000
        assert min(latencies) <= NORMAL_CALL_LIMIT_S, (
            f"a normal call took {min(latencies) * 1000:.1f} ms after the scenario (limit 100 ms)")

    async def check_invariants(self) -> None:
        self.checked = True
        assert self.proc is not None and self.proc.returncode is None, (
            f"tollway serve exited with {self.proc.returncode if self.proc else None}:\n{self.log_text()[-4000:]}")
        await self.assert_still_serving()
        await self.assert_memory_returned()
        await self.stop()  # flushes the ledger: its files are final now
        self.assert_no_secrets()
        self.assert_ledger_modes()


def _normal_responder(previous: Any) -> Any:
    """Answer the normal call's model with NORMAL_ANSWER and leave every other request to the
    scenario's own responder (or queue)."""
    from .upstream import Reply

    if getattr(previous, "normal_check", False):
        return previous

    def respond(received: Any) -> Any:
        if b'"normal-check"' in received.body:
            return Reply(body=NORMAL_ANSWER)
        return previous(received) if previous is not None else None

    respond.normal_check = True  # type: ignore[attr-defined]
    return respond


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_report(figures: Iterable[Figures]) -> None:
    path = os.environ.get("TOLLWAY_ABUSE_REPORT")
    if path:
        Path(path).write_text(json.dumps([f.as_row() for f in figures], indent=1) + "\n", encoding="utf-8")
