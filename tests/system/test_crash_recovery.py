"""`tollway serve` killed under load: every request that got OK has exactly one ledger record.

The gateway runs as a real process (`tollway serve --config <toml>`) in front of the loopback
upstream of this test process; 20 callers keep requests in flight, unary and streaming. The
gateway is killed with SIGKILL after a counted number of OK answers, restarted on the same
config, and the ledger's database is read directly until every OK request's record is in it
(bounded), once. With PostgreSQL, the database goes away (a TCP proxy in front of it stops)
during the run, before the kill, and comes back only after the restart. SIGTERM instead drains
and flushes: every OK request's record is in the database and the journal is left empty.

With `--workers 2` (two serving processes, each with a journal of its own, under one
supervisor) the same holds when the whole process group is killed, and when one worker is
killed: the supervisor restarts it, and the new worker replays what the killed one left.

Everything is counted, nothing is timed; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import signal
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from tests.support.gateway import TEST_KEY_PATTERN
from tests.support.ledger import (  # noqa: F401
    PG_PORT,
    Backend,
    TcpProxy,
    pg_admin,
    pg_backend,
    pg_schema,
)
from tests.support.ledger_calls import GEMINI_USAGE, completion, request_id_of
from tests.support.seed import recorded_stream
from tests.support.supervised import ServedGateway as Gateway
from tests.support.supervised import processes_gone, until_log, worker_pids
from tests.support.upstream import FakeUpstream, Received, Reply, sse_events
from tests import support

Code = grpc.StatusCode
ROOT = support.ROOT
# Not a real key: a marker the suite-wide log scan looks for.
LOADGEN_KEY = "tw-test-crash-loadgen-41c7e9b02d"
MODEL = "mixrouter/gemini-2.0-flash"
TOTAL = 400
IN_FLIGHT = 20
KILL_AFTER = 150  # OK answers before the kill
OUTAGE_AFTER = 50  # OK answers before the database goes away (PostgreSQL)
WAIT_S = 20.0  # bound on every wait for the gateway (start, catch-up, exit)

child_log = logging.getLogger("tests.crash.gateway")


# -- the gateway process -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(path: Path, upstream: FakeUpstream, backend: Backend, port: int, proxy_port: int | None,
                 workers: int = 1) -> Path:
    config = backend.config(port=proxy_port)
    ledger = [f'path = "{config.sqlite_path}"', f'journal_dir = "{config.journal_path}"',
              # Batches gather for a while: at the kill, acknowledged records wait in the journal only.
              "batch_linger_s = 0.2", "insert_timeout_s = 1.0", "retry_interval_s = 0.1"]
    if config.dsn:
        ledger.append(f'dsn = "{config.dsn}"')
    key_sha256 = hashlib.sha256(LOADGEN_KEY.encode()).hexdigest()
    path.write_text("\n".join([
        "[server]", f'listen = "127.0.0.1:{port}"', 'log_format = "json"', "grace_period_s = 10", f"workers = {workers}",
        "[providers.mixrouter]", f'base_url = "{upstream.base_url}/v1"',
        "[routing]", "max_retries = 0",
        "[callers.loadgen]", f'key_sha256 = "{key_sha256}"',
        "[ledger]", *ledger, "",
    ]), encoding="utf-8")
    return path


@pytest.fixture
async def gateways():
    """Gateways started by a test: stopped afterwards, and their log lines handed to the suite's
    log (so the suite-wide key scan reads them too) and checked for keys here."""
    started: list[Gateway] = []
    yield started
    for gateway in started:
        await gateway.stop()
    for gateway in started:
        text = gateway.log_text()
        for line in text.splitlines():
            child_log.info("%s", line)
        assert TEST_KEY_PATTERN.findall(text) == [], "a test key reached the gateway's log"


# -- the upstream and the load ---------------------------------------------------------------


def load_index(received: Received) -> int:
    [part] = received.json()["messages"][0]["content"]
    return int(part["text"].removeprefix("load request "))


def answer(received: Received) -> Reply:
    """A little upstream time per request, so that the kill finds requests in flight."""
    if received.json().get("stream"):
        return Reply(events=sse_events(recorded_stream()), event_delay_s=0.001)
    return Reply(body=completion("gemini-2.0-flash", GEMINI_USAGE), delay_s=0.005)


@dataclass
class Load:
    ok: dict[str, int] = field(default_factory=dict)  # request id -> load index
    failed: dict[int, str] = field(default_factory=dict)  # load index -> status code name
    gone: bool = False  # the gateway refused a request: stop sending


def fields(i: int) -> dict:
    return dict(model=MODEL, labels={"load": str(i)},
                messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=f"load request {i}")])])


async def one_request(stub: pb_grpc.CompletionStub, i: int) -> str:
    """Unary for even i, a stream for odd i; the request id of an OK answer."""
    metadata = (("authorization", f"Bearer {LOADGEN_KEY}"),)
    if i % 2 == 0:
        call = stub.Complete(pb.CompleteRequest(**fields(i)), timeout=10, metadata=metadata)
        await call
    else:
        call = stub.StreamComplete(pb.StreamCompleteRequest(**fields(i)), timeout=10, metadata=metadata)
        messages = [m async for m in call]
        assert messages[-1].HasField("summary")
    return request_id_of(await call.trailing_metadata())


async def run_load(target: str, numbers: range, after_ok: Callable[[Load], Awaitable[None]]) -> Load:
    """IN_FLIGHT callers work through the numbered requests until one is refused; after_ok(load)
    runs after each OK answer."""
    load = Load()
    indices = iter(numbers)

    async def caller(stub: pb_grpc.CompletionStub) -> None:
        for i in indices:
            if load.gone:
                return
            try:
                request_id = await one_request(stub, i)
            except grpc.aio.AioRpcError as err:
                load.failed[i] = err.code().name
                load.gone = True
                return
            load.ok[request_id] = i
            await after_ok(load)

    # A connection per caller (no shared subchannel): with workers, the kernel spreads
    # connections, not calls, over them.
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(IN_FLIGHT)]
    try:
        await asyncio.wait_for(asyncio.gather(*(caller(pb_grpc.CompletionStub(c)) for c in channels)), WAIT_S)
    finally:
        for channel in channels:
            await channel.close()
    return load


# -- reading the ledger ----------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    request_id: str
    status: str
    load: int
    caller: str


async def stored(backend: Backend) -> list[Stored]:
    """Every row of the ledger, read from the database itself (never through the proxy)."""
    query = "SELECT request_id, status, labels, caller FROM tollway_ledger"
    if backend.name == "sqlite":
        path = backend.tmp / "ledger.sqlite3"
        if not path.exists():
            return []
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = [(r[0], r[1], json.loads(r[2]), r[3]) for r in conn.execute(query)]
        finally:
            conn.close()
    else:
        async with await psycopg.AsyncConnection.connect(backend.dsn()) as conn:
            rows = await (await conn.execute(query)).fetchall()
    return [Stored(rid, status, int(labels["load"]), caller) for rid, status, labels, caller in rows]


def segment_files(backend: Backend, under: str = "") -> set[str]:
    """Journal segments by path in the journal (worker k > 0 keeps its own in worker-<k>/)."""
    journal = backend.tmp / "journal"
    return {str(p.relative_to(journal)) for p in (journal / under).rglob("seg-*.jsonl")}


async def caught_up(backend: Backend, ok: dict[str, int], leftovers: set[str]) -> list[Stored]:
    """Poll (bounded) until every OK request has its record and the segments the killed
    gateway left behind have been replayed and deleted."""
    async def poll() -> list[Stored]:
        while True:
            rows = await stored(backend)
            if set(ok) <= {r.request_id for r in rows} and not leftovers & segment_files(backend):
                return rows
            await asyncio.sleep(0.05)

    try:
        return await asyncio.wait_for(poll(), WAIT_S)
    except TimeoutError:
        rows = await stored(backend)
        missing = set(ok) - {r.request_id for r in rows}
        pytest.fail(f"after {WAIT_S:g}s, {len(missing)} OK request(s) have no record; "
                    f"journal: {sorted(segment_files(backend))}")


def assert_exactly_once(rows: list[Stored], load: Load, upstream: FakeUpstream) -> None:
    by_id = {r.request_id: r for r in rows}
    assert len(by_id) == len(rows)
    # No request counted twice, under any id: each load index is on one record at most.
    loads = [r.load for r in rows]
    assert len(set(loads)) == len(loads), "a request has two records"
    # Every OK request: its own record, OK.
    for request_id, i in load.ok.items():
        assert (by_id[request_id].load, by_id[request_id].status) == (i, "OK")
    # Nothing invented: every record is of a request that reached the upstream.
    assert set(loads) <= {load_index(r) for r in upstream.received}
    assert {r.caller for r in rows} == {"loadgen"}


async def summary_requests(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        response = await pb_grpc.CompletionStub(channel).GetUsageSummary(
            pb.GetUsageSummaryRequest(), timeout=10, metadata=(("authorization", f"Bearer {LOADGEN_KEY}"),))
    [row] = response.rows
    return row.requests


# -- the tests -------------------------------------------------------------------------------


class Outage:
    """The database going away during a run and coming back: PostgreSQL behind a TCP proxy that
    stops, SQLite with its write lock held by a connection of this test."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.proxy: TcpProxy | None = None
        self._lock: sqlite3.Connection | None = None
        self._away = False

    async def __aenter__(self) -> Outage:
        if self.backend.name == "postgresql":
            self.proxy = await TcpProxy(PG_PORT).up()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.up()
        if self.proxy is not None:
            await self.proxy.down()

    @property
    def proxy_port(self) -> int | None:
        return self.proxy.port if self.proxy else None

    async def down(self) -> None:
        self._away = True
        if self.proxy is not None:
            await self.proxy.down()
            return
        path = self.backend.tmp / "ledger.sqlite3"
        self._lock = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
        # Waits (off the event loop) for an insert in progress; from then on no insert can commit.
        await asyncio.to_thread(self._lock.execute, "BEGIN IMMEDIATE")

    async def up(self) -> None:
        if not self._away:
            return
        self._away = False
        if self.proxy is not None:
            await self.proxy.up()
        elif self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None


async def kill_under_load_and_restart(tmp_path: Path, upstream: FakeUpstream, gateways: list[Gateway],
                                      backend: Backend, outage: Outage | None = None, workers: int = 1) -> None:
    upstream.responder = answer
    port = free_port()
    gateway = Gateway(write_config(tmp_path / "tollway.toml", upstream, backend, port,
                                   outage.proxy_port if outage else None, workers), port, workers)
    gateways.append(gateway)
    await gateway.start()
    pids = worker_pids(gateway.proc.pid)
    ok_when_down = 0

    async def after_ok(running: Load) -> None:
        nonlocal ok_when_down
        if outage is not None and len(running.ok) == OUTAGE_AFTER:
            await outage.down()
            ok_when_down = len(running.ok)
        if len(running.ok) == KILL_AFTER:
            gateway.kill()

    load = await run_load(gateway.target, range(TOTAL), after_ok)
    assert await gateway.exit_code() == -signal.SIGKILL
    await processes_gone(pids.values(), WAIT_S)
    assert len(load.ok) >= KILL_AFTER, load.failed
    assert load.failed and set(load.failed.values()) <= {"UNAVAILABLE"}, load.failed
    leftovers = segment_files(backend)
    assert leftovers, "the killed gateway left no journal"
    if outage is not None:
        # During the outage, records went to the journal only: every request answered after the
        # database went away, except those already in flight then, has no row yet.
        in_database = {r.request_id for r in await stored(backend)}
        assert len(set(load.ok) - in_database) >= len(load.ok) - ok_when_down - IN_FLIGHT > 0

    await gateway.start()
    # Restarted (with the database still away, if it was): it serves at once.
    await serves_on_and_records_every_call_once(gateway, backend, load, leftovers, upstream, outage)


async def _nothing(running: Load) -> None:
    return None


async def serves_on_and_records_every_call_once(gateway: Gateway, backend: Backend, load: Load, leftovers: set[str],
                                                upstream: FakeUpstream, outage: TcpProxy | None = None) -> None:
    """After a kill: the gateway serves more calls at once, every OK request of the whole run
    (before and after the kill) ends up in the database exactly once, the journal it left
    included, and SIGTERM then flushes and empties the journal."""
    after = await run_load(gateway.target, range(TOTAL, TOTAL + IN_FLIGHT), _nothing)
    assert (len(after.ok), after.failed) == (IN_FLIGHT, {})
    load.ok.update(after.ok)
    if outage is not None:
        await outage.up()
    rows = await caught_up(backend, load.ok, leftovers)
    assert_exactly_once(rows, load, upstream)
    assert await summary_requests(gateway.target) == len(rows)

    gateway.proc.send_signal(signal.SIGTERM)
    assert await gateway.exit_code() == 0, gateway.log_text()
    assert segment_files(backend) == set()
    assert_exactly_once(await stored(backend), load, upstream)



async def test_kill_9_under_load_sqlite_every_ok_request_has_exactly_one_record(tmp_path, upstream, gateways):
    await kill_under_load_and_restart(tmp_path, upstream, gateways, Backend("sqlite", tmp_path))


async def test_kill_9_under_load_with_sqlite_locked_every_ok_request_has_exactly_one_record(
        tmp_path, upstream, gateways):
    backend = Backend("sqlite", tmp_path)
    async with Outage(backend) as outage:
        await kill_under_load_and_restart(tmp_path, upstream, gateways, backend, outage)


async def test_kill_9_under_load_with_postgresql_away_every_ok_request_has_exactly_one_record(
        tmp_path, upstream, gateways, pg_backend):
    async with Outage(pg_backend) as outage:
        await kill_under_load_and_restart(tmp_path, upstream, gateways, pg_backend, outage)


async def test_sigterm_mid_load_flushes_every_ok_record_and_leaves_the_journal_empty(tmp_path, upstream, gateways):
    backend = Backend("sqlite", tmp_path)
    upstream.responder = answer
    port = free_port()
    gateway = Gateway(write_config(tmp_path / "tollway.toml", upstream, backend, port, None), port)
    gateways.append(gateway)
    await gateway.start()

    async def after_ok(running: Load) -> None:
        if len(running.ok) == KILL_AFTER:
            gateway.proc.send_signal(signal.SIGTERM)

    load = await run_load(gateway.target, range(TOTAL), after_ok)
    assert await gateway.exit_code() == 0, gateway.log_text()
    # Calls in flight at the signal were drained (answered OK); later ones were refused (a server
    # that is shutting down cancels the calls that reach it, a stopped one refuses connections).
    assert len(load.ok) >= KILL_AFTER
    assert load.failed and set(load.failed.values()) <= {"CANCELLED", "UNAVAILABLE"}, load.failed

    # No replay needed: the database has every record, and the journal is gone.
    assert segment_files(backend) == set()
    rows = await stored(backend)
    assert_exactly_once(rows, load, upstream)
    assert len(rows) == len(load.ok)


# -- with workers ----------------------------------------------------------------------------


async def test_kill_9_of_two_workers_and_their_supervisor_every_ok_request_has_exactly_one_record(
        tmp_path, upstream, gateways):
    await kill_under_load_and_restart(tmp_path, upstream, gateways, Backend("sqlite", tmp_path), workers=2)


async def test_kill_9_of_two_workers_with_postgresql_away_every_ok_request_has_exactly_one_record(
        tmp_path, upstream, gateways, pg_backend):
    async with Outage(pg_backend) as outage:
        await kill_under_load_and_restart(tmp_path, upstream, gateways, pg_backend, outage, workers=2)


async def test_kill_9_of_one_worker_it_is_restarted_and_every_ok_request_has_exactly_one_record(
        tmp_path, upstream, gateways):
    """The supervisor restarts the killed worker; the new one replays the journal the killed
    one left, while the other worker serves on."""
    backend = Backend("sqlite", tmp_path)
    upstream.responder = answer
    port = free_port()
    gateway = Gateway(write_config(tmp_path / "tollway.toml", upstream, backend, port, None, 2), port, 2)
    gateways.append(gateway)
    await gateway.start()
    killed = worker_pids(gateway.proc.pid)[1]

    async def after_ok(running: Load) -> None:
        if len(running.ok) == KILL_AFTER:
            os.kill(killed, signal.SIGKILL)

    load = await run_load(gateway.target, range(TOTAL), after_ok)
    assert len(load.ok) >= KILL_AFTER, load.failed
    # Only the calls the killed worker was serving failed (one caller's failure ends the load).
    assert load.failed and set(load.failed.values()) <= {"UNAVAILABLE"}, load.failed
    leftovers = segment_files(backend, "worker-1")
    assert leftovers, "the killed worker left no journal"
    assert gateway.proc.returncode is None

    [restarted] = await until_log(gateway.log_text, rf'"worker 1 \(pid (\d+)\) serving"', 1, WAIT_S, gateway.proc)
    assert int(restarted.group(1)) != killed
    assert worker_pids(gateway.proc.pid)[1] == int(restarted.group(1))
    assert re.search(rf"worker 1 \(pid {killed}\) was killed by SIGKILL", gateway.log_text())

    await serves_on_and_records_every_call_once(gateway, backend, load, leftovers, upstream)
