"""`tollway serve --workers N`: N serving processes on one address under one supervisor.

Every test runs the real command as a process (its own process group) in front of the
loopback upstream of this test process, and looks at the processes through /proc: which
are workers (TOLLWAY_WORKER_INDEX), which connections each holds, whether gRPC is loaded.
Calls go over many connections (no shared subchannel): the kernel spreads connections,
not calls, over the workers. Nothing is timed; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import grpc
import pytest
from tollway.service.gateway.worker import resolve_workers
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from tests.support.cli import tollway
from tests.support.gateway import MIXROUTER_TEST_KEY
from tests.support.ledger import sample_record
from tests.support.ledger_calls import GEMINI_USAGE, completion, request_id_of
from tests.support.seed import recorded_stream
from tests.support.served import free_port
from tests.support.supervised import (
    ServedGateway,
    alive,
    established_connections,
    grpc_loaded,
    processes_gone,
    serving_workers,
    until_log,
    worker_pids,
)
from tests.support.upstream import FakeUpstream, Reply, sse_events

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers share a port on Linux")

WAIT_S = 20.0
CONNECTIONS = 16
CALLER_KEY = "tw-test-workers-caller-7d41c0e9"
MODEL = "mixrouter/gemini-2.0-flash"


def config_text(upstream: FakeUpstream, port: int, state: Path, *, workers: int | str = 2, routes: tuple[str, ...] = (),
                extra: str = "") -> str:
    lines = [
        "[server]", f'listen = "127.0.0.1:{port}"', "grace_period_s = 10", f"workers = {workers!r}".replace("'", '"'),
        "[providers.mixrouter]", f'base_url = "{upstream.base_url}/v1"',
        "[routing]", "max_retries = 0",
        "[callers.loadgen]", f'key_sha256 = "{hashlib.sha256(CALLER_KEY.encode()).hexdigest()}"',
        "[ledger]", f'path = "{state / "ledger.sqlite3"}"', f'journal_dir = "{state / "journal"}"',
    ]
    for name in routes:
        lines += ["[[routes]]", f'name = "{name}"',
                  'targets = [{ provider = "mixrouter", model = "gemini-2.0-flash" }]']
    return "\n".join(lines) + "\n" + extra


@pytest.fixture
async def serves():
    started: list[ServedGateway] = []
    yield started
    for serve in started:
        await serve.stop()


async def start(serves: list[ServedGateway], tmp_path: Path, upstream: FakeUpstream, **options) -> ServedGateway:
    port = free_port()
    config = tmp_path / "tollway.toml"
    config.write_text(config_text(upstream, port, tmp_path / "state", **options), encoding="utf-8")
    serve = ServedGateway(config, port, options.get("workers", 2) if isinstance(options.get("workers", 2), int) else 2,
                          wait_s=WAIT_S)
    serves.append(serve)
    await serve.start()
    return serve


def channels(target: str, count: int = CONNECTIONS) -> list[grpc.aio.Channel]:
    """Channels with a connection each (gRPC shares one between channels alike otherwise)."""
    return [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]


METADATA = (("authorization", f"Bearer {CALLER_KEY}"),)


def request(i: int) -> dict:
    return dict(model=MODEL, labels={"n": str(i)},
                messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=f"request {i}")])])


async def complete(channel: grpc.aio.Channel, i: int) -> str:
    call = pb_grpc.CompletionStub(channel).Complete(pb.CompleteRequest(**request(i)), timeout=10, metadata=METADATA)
    response = await call
    assert response.choices[0].message.parts[0].text == "An office, two people."
    return request_id_of(await call.trailing_metadata())


def unary_answer(received) -> Reply:
    return Reply(body=completion("gemini-2.0-flash", GEMINI_USAGE))


def stored_ids(state: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{state / 'ledger.sqlite3'}?mode=ro", uri=True)) as conn:
        return {row[0] for row in conn.execute("SELECT request_id FROM tollway_ledger")}


def segments(state: Path) -> list[str]:
    journal = state / "journal"
    return sorted(str(p.relative_to(journal)) for p in journal.rglob("seg-*.jsonl"))


# -- serving ---------------------------------------------------------------------------------


async def test_two_workers_share_the_address_both_answer_and_all_their_records_reach_one_database(
        tmp_path, upstream, serves):
    upstream.responder = unary_answer
    serve = await start(serves, tmp_path, upstream)
    workers = worker_pids(serve.pid)
    assert sorted(workers) == [0, 1]
    # The supervisor starts processes: gRPC (not fork-safe) is never loaded in it.
    assert not grpc_loaded(serve.pid)
    assert all(grpc_loaded(pid) for pid in workers.values())

    opened = channels(serve.target)
    try:
        ids = await asyncio.gather(*(complete(c, i) for i, c in enumerate(opened)))
        ids += await asyncio.gather(*(complete(c, CONNECTIONS + i) for i, c in enumerate(opened)))
        # Each worker holds some of the connections (16 spread by the kernel's hash: all on
        # one worker would be a 1 in 32768 chance).
        held = {index: established_connections(pid, serve.port) for index, pid in workers.items()}
        assert all(held.values()) and sum(held.values()) == CONNECTIONS, held
    finally:
        for channel in opened:
            await channel.close()
    assert len(set(ids)) == 2 * CONNECTIONS

    serve.proc.send_signal(signal.SIGTERM)
    assert await serve.exit_code() == 0, serve.log_text()
    await processes_gone(workers.values(), WAIT_S)
    assert stored_ids(tmp_path / "state") == set(ids)
    assert segments(tmp_path / "state") == []
    # Worker 0 keeps the journal a single process uses; worker 1 has its own directory in it.
    assert (tmp_path / "state" / "journal" / "worker-1").is_dir()


async def test_sigterm_drains_the_streams_of_every_worker_then_the_supervisor_exits_0(tmp_path, upstream, serves):
    # Streams long enough to be in flight at the signal: 40 events 50 ms apart.
    upstream.responder = lambda received: Reply(events=sse_events(recorded_stream()), event_delay_s=0.05)
    serve = await start(serves, tmp_path, upstream)
    workers = worker_pids(serve.pid)
    first_messages = asyncio.Queue()

    async def stream(channel: grpc.aio.Channel, i: int) -> str:
        call = pb_grpc.CompletionStub(channel).StreamComplete(pb.StreamCompleteRequest(**request(i)), timeout=30,
                                                              metadata=METADATA)
        messages = []
        async for message in call:
            if not messages:
                first_messages.put_nowait(i)
            messages.append(message)
        assert messages[-1].HasField("summary")
        return request_id_of(await call.trailing_metadata())

    opened = channels(serve.target)
    try:
        streams = [asyncio.ensure_future(stream(c, i)) for i, c in enumerate(opened)]
        for _ in streams:
            await asyncio.wait_for(first_messages.get(), WAIT_S)
        held = {index: established_connections(pid, serve.port) for index, pid in workers.items()}
        assert all(held.values()), held  # both workers have streams in flight
        serve.proc.send_signal(signal.SIGTERM)
        ids = await asyncio.wait_for(asyncio.gather(*streams), WAIT_S)
    finally:
        for channel in opened:
            await channel.close()
    assert await serve.exit_code() == 0, serve.log_text()
    await processes_gone(workers.values(), WAIT_S)
    assert stored_ids(tmp_path / "state") == set(ids)
    assert segments(tmp_path / "state") == []
    log = serve.log_text()
    assert log.count("stopping: draining in-flight calls") == 2
    assert "stopping: 2 worker(s) drain in-flight calls for up to 10s" in log


async def test_a_supervisor_killed_outright_leaves_no_worker_behind(tmp_path, upstream, serves):
    serve = await start(serves, tmp_path, upstream)
    workers = worker_pids(serve.pid)
    os.kill(serve.pid, signal.SIGKILL)
    assert await serve.exit_code() == -signal.SIGKILL
    # The kernel tells each worker (SIGTERM on its parent's death): it drains and exits.
    await processes_gone(workers.values(), WAIT_S)


# -- SIGHUP ----------------------------------------------------------------------------------


async def route_names(target: str) -> list[set[str]]:
    """The routes each of CONNECTIONS connections is told of."""
    opened = channels(target)
    try:
        answers = await asyncio.gather(*(pb_grpc.CompletionStub(c).ListModels(pb.ListModelsRequest(), timeout=10,
                                                                                metadata=METADATA) for c in opened))
    finally:
        for channel in opened:
            await channel.close()
    return [{route.name for route in answer.routes} for answer in answers]


async def test_sighup_reloads_every_worker_and_a_bad_file_is_refused_for_all(tmp_path, upstream, serves):
    serve = await start(serves, tmp_path, upstream, routes=("first",))
    assert await route_names(serve.target) == [{"first"}] * CONNECTIONS

    serve.config.write_text(config_text(upstream, serve.port, tmp_path / "state", routes=("first", "second"),
                                        workers=3))
    serve.proc.send_signal(signal.SIGHUP)
    await until_log(serve.log_text, r"config reloaded from \S+; providers: mixrouter; routes: first, second", 2,
                    WAIT_S, serve.proc)
    assert "config checked; SIGHUP forwarded to 2 worker(s)" in serve.log_text()
    assert "server.workers changed to 3: the worker count changes at the next restart" in serve.log_text()
    assert await route_names(serve.target) == [{"first", "second"}] * CONNECTIONS

    serve.config.write_text(config_text(upstream, serve.port, tmp_path / "state", routes=("third",),
                                        extra="[limits]\nmax_labels = -1\n"))
    serve.proc.send_signal(signal.SIGHUP)
    [refused] = await until_log(serve.log_text, r"ERROR tollway.supervisor config reload refused, keeping the running "
                                                r"config in every worker: (.*)", 1, WAIT_S, serve.proc)
    assert "max_labels" in refused.group(1)
    log = serve.log_text()
    # No worker was signalled: none reloaded, none refused on its own.
    assert log.count("config reloaded from") == 2
    assert "tollway.server config reload refused" not in log
    assert await route_names(serve.target) == [{"first", "second"}] * CONNECTIONS
    assert sorted(worker_pids(serve.pid)) == [0, 1]


# -- workers that die --------------------------------------------------------------------------


async def test_a_worker_that_cannot_start_is_retried_with_growing_delays_until_it_can(tmp_path, upstream, serves):
    serve = await start(serves, tmp_path, upstream)
    workers = worker_pids(serve.pid)
    # Worker 1's journal held by someone else: each restart fails (exit 1) until it is let go.
    lock_fd = os.open(tmp_path / "state" / "journal" / "worker-1" / ".lock", os.O_WRONLY)
    try:
        os.kill(workers[1], signal.SIGKILL)
        await processes_gone([workers[1]], WAIT_S)
        # The supervisor waits at least 0.5 s before it starts the next worker 1.
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        failures = await until_log(serve.log_text, r"worker 1 \(pid \d+\) exited with code 1 after [\d.]+s; "
                                                   r"restarting it in ([\d.]+)s \((\d+) short run", 2, WAIT_S,
                                   serve.proc)
    finally:
        os.close(lock_fd)
    assert f"worker 1 (pid {workers[1]}) was killed by SIGKILL" in serve.log_text()
    first, second = (float(m.group(1)) for m in failures[:2])
    assert second == 2 * first and int(failures[1].group(2)) == int(failures[0].group(2)) + 1
    assert f"tollway: the ledger journal {tmp_path / 'state' / 'journal' / 'worker-1'} is in use by another " \
           f"running gateway" in serve.log_text()
    [back] = await until_log(serve.log_text, r"worker 1 \(pid (\d+)\) serving", 1, WAIT_S, serve.proc)
    assert worker_pids(serve.pid) == {0: workers[0], 1: int(back.group(1))}
    assert alive(workers[0])  # the other worker served on throughout


async def test_a_worker_that_fails_at_start_fails_the_start_and_stops_the_others(tmp_path, upstream, serves):
    # Worker 1's journal directory is a file: worker 0 starts, worker 1 cannot.
    (tmp_path / "state" / "journal").mkdir(parents=True, mode=0o700)
    (tmp_path / "state" / "journal" / "worker-1").write_text("not a directory")
    port = free_port()
    config = tmp_path / "tollway.toml"
    config.write_text(config_text(upstream, port, tmp_path / "state"), encoding="utf-8")
    code, out, err = await tollway("serve", "--config", config, env={"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    assert code == 1
    [line] = [line for line in err.splitlines() if line.startswith("tollway:")]
    assert line.startswith(f"tollway: cannot open the ledger journal {tmp_path / 'state' / 'journal' / 'worker-1'}:")
    assert "serving on" in err and "with 2 workers" not in err
    # Nothing left serving on the port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


# -- the address -----------------------------------------------------------------------------


async def test_a_taken_port_is_refused_as_a_single_process_refuses_it(tmp_path, upstream, serves):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = tmp_path / "taken.toml"
        config.write_text(config_text(upstream, port, tmp_path / "taken"), encoding="utf-8")
        code, out, err = await tollway("serve", "--config", config, "--workers", "2")
    assert (code, out, err) == (1, "", f"tollway: cannot listen on 127.0.0.1:{port}: address already in use\n")

    # Workers' SO_REUSEPORT shares the port among themselves only: another gateway, with
    # workers or without, is refused alike.
    serve = await start(serves, tmp_path, upstream)
    for workers in ("1", "2"):
        code, out, err = await tollway("serve", "--config", serve.config, "--workers", workers,
                                       env={"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
        refusal = f"tollway: cannot listen on 127.0.0.1:{serve.port}: address already in use\n"
        assert (code, out, err) == (1, "", refusal)
    assert sorted(worker_pids(serve.pid)) == [0, 1]


# -- journals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("workers", "orphan"), [(2, "worker-3"), (1, "worker-1")])
async def test_the_journal_of_a_slot_that_no_longer_runs_is_replayed_and_removed(
        tmp_path, upstream, serves, workers, orphan):
    """A restart with fewer workers (or none) loses no record the others left."""
    orphan_dir = tmp_path / "state" / "journal" / orphan
    orphan_dir.mkdir(parents=True, mode=0o700)
    records = [sample_record(), sample_record()]
    (orphan_dir / "seg-000000000007.jsonl").write_bytes(b"".join(r.to_json() + b"\n" for r in records))
    serve = await start(serves, tmp_path, upstream, workers=workers)

    async def replayed() -> None:
        while orphan_dir.exists() or not {r.request_id for r in records} <= stored_ids(tmp_path / "state"):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(replayed(), WAIT_S)
    assert f"journal {orphan_dir} is of a worker that no longer runs; replaying its 1 segment(s)" in serve.log_text()
    serve.proc.send_signal(signal.SIGTERM)
    assert await serve.exit_code() == 0


# -- the setting -------------------------------------------------------------------------------


async def test_auto_starts_a_worker_per_core_this_process_may_use(tmp_path, upstream, serves):
    cores = resolve_workers("auto")
    serve = await start(serves, tmp_path, upstream, workers="auto")
    if cores > 1:
        await serving_workers(serve.proc, cores, serve.log_text, WAIT_S)
    assert sorted(worker_pids(serve.pid)) == (list(range(cores)) if cores > 1 else [])


@pytest.mark.parametrize(("where", "value", "message"), [
    ("config", "0", 'tollway: server.workers must be an integer from 1 to 256 or "auto" (got 0)'),
    ("config", '"many"', "tollway: server.workers must be an integer from 1 to 256 or \"auto\" (got 'many')"),
    ("flag", "0", 'tollway: --workers must be an integer from 1 to 256 or "auto" (got 0)'),
    ("flag", "two", "tollway: --workers must be an integer from 1 to 256 or \"auto\" (got 'two')"),
    ("flag", "257", 'tollway: --workers must be an integer from 1 to 256 or "auto" (got 257)'),
])
async def test_a_bad_worker_count_is_refused_naming_where_it_came_from(tmp_path, where, value, message):
    config = tmp_path / "tollway.toml"
    config.write_text(f"[server]\nworkers = {value if where == 'config' else 1}\n", encoding="utf-8")
    args = ["serve", "--config", config] + (["--workers", value] if where == "flag" else [])
    assert await tollway(*args) == (2, "", message + "\n")
