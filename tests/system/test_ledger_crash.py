"""kill -9 in the middle of concurrent requests: after a restart, every record that record()
acknowledged is in the database exactly once, with the database up or down during the run."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tollway.service.ledger import Ledger, LedgerConfig, UsageFilter

from tests.support.ledger import (  # noqa: F401 - fixtures
    PG_PORT,
    Backend,
    TcpProxy,
    backend,
    pg_admin,
    pg_backend,
    pg_schema,
    stored_ids,
)
from tests import support

ROOT = support.ROOT
TOTAL = 4000
KILL_AFTER = 1500

# The child plays a gateway under load: 50 requests in flight, each printing its id only once
# record() returned, which is the moment the servicer would answer OK.
CHILD = """
import asyncio, json, os, sys
from pathlib import Path
from tollway.service.ledger import Ledger, LedgerConfig
from tests.support.ledger import sample_record

async def main():
    values = json.loads(sys.argv[1])
    for key in ("path", "journal_dir"):
        values[key] = Path(values[key])
    ledger = await Ledger.open(LedgerConfig(**values))
    ids = iter(range(int(sys.argv[2])))

    async def requests():
        for i in ids:
            await asyncio.sleep(0.01)  # the upstream call
            rec = sample_record(f"crash-{i:05d}")
            await ledger.record(rec)
            os.write(1, f"{rec.request_id}\\n".encode())

    await asyncio.gather(*(requests() for _ in range(50)))
    os.write(1, b"all\\n")
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def crash_after_acks(config: LedgerConfig, midway: Callable[[], Awaitable[None]] | None = None) -> set[str]:
    """Run the child, SIGKILL it after KILL_AFTER acknowledgements; returns the acknowledged ids.
    midway() runs a third of the way in (to take the database away during the run)."""
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, json.dumps(values), str(TOTAL),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    acked: set[str] = set()
    try:
        async with asyncio.timeout(30):
            while len(acked) < KILL_AFTER:
                if midway is not None and len(acked) == KILL_AFTER // 3:
                    await midway()
                line = await child.stdout.readline()
                if not line:
                    stderr = (await child.stderr.read()).decode(errors="replace")
                    pytest.fail(f"the recording process ended early:\n{stderr}")
                acked.add(line.decode().strip())
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    return acked


async def assert_exactly_once_after_restart(backend: Backend, config: LedgerConfig, acked: set[str]) -> None:
    ledger = await Ledger.open(config)
    assert await ledger.flush(20)
    stored = await stored_ids(backend)
    assert acked <= stored, f"{len(acked - stored)} acknowledged record(s) lost"
    assert stored <= {f"crash-{i:05d}" for i in range(TOTAL)}
    [row] = await ledger.summary(UsageFilter())
    # One row per id, so the sums count each request once.
    assert row.requests == len(stored)
    assert row.input.total == 1986 * len(stored)
    assert row.cost_nano_usd == 351_600 * len(stored)
    await ledger.aclose()
    assert list((backend.tmp / "journal").glob("seg-*")) == []


async def test_kill_9_under_load_loses_no_acknowledged_record(backend: Backend):
    config = backend.config()
    acked = await crash_after_acks(config)
    await assert_exactly_once_after_restart(backend, config, acked)


async def test_kill_9_after_the_database_went_down_mid_run_loses_no_acknowledged_record(backend: Backend):
    if backend.name == "postgresql":
        # PostgreSQL "stops" a third of the way in: its connections are cut and refused.
        proxy = await TcpProxy(PG_PORT).up()
        config = backend.config(port=proxy.port, insert_timeout_s=0.3)
        acked = await crash_after_acks(config, midway=proxy.down)
        await proxy.up()
        try:
            await assert_exactly_once_after_restart(backend, config, acked)
        finally:
            await proxy.down()
    else:
        # SQLite "stops" a third of the way in: another writer takes the lock and keeps it.
        config = backend.config(insert_timeout_s=0.3)
        lock = sqlite3.connect(config.sqlite_path, isolation_level=None, timeout=10)

        async def take_the_lock() -> None:
            lock.execute("BEGIN IMMEDIATE")

        acked = await crash_after_acks(config, midway=take_the_lock)
        lock.execute("ROLLBACK")
        lock.close()
        await assert_exactly_once_after_restart(backend, config, acked)


# A journal that cannot be written (here: the process may not grow a file past 64 KiB, as on a
# full disk): record() says so, and those records still reach the database.
JOURNAL_FULL_CHILD = """
import asyncio, json, resource, signal, sys
from pathlib import Path
from tollway.service.ledger import Ledger, LedgerConfig
from tests.support.ledger import sample_record

async def main():
    values = json.loads(sys.argv[1])
    for key in ("path", "journal_dir"):
        values[key] = Path(values[key])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    ledger = await Ledger.open(LedgerConfig(**values))
    errors = []
    for start in range(0, 200, 20):
        recs = [sample_record(f"full-{i:04d}") for i in range(start, start + 20)]
        results = await asyncio.gather(*(ledger.record(r) for r in recs), return_exceptions=True)
        errors += [f"{type(e).__name__}: {e}" for e in results if isinstance(e, BaseException)]
    flushed = await ledger.flush(10)
    await ledger.aclose()
    print(json.dumps({"errors": errors, "flushed": flushed}))

asyncio.run(main())
"""


async def test_a_journal_that_cannot_be_written_is_reported_and_the_records_still_reach_postgresql(
        pg_backend: Backend):
    config = pg_backend.config(segment_bytes=1024 * 1024)
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", JOURNAL_FULL_CHILD, json.dumps(values),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await child.communicate()
    assert child.returncode == 0, err.decode(errors="replace")
    result = json.loads(out)
    assert result["flushed"]
    assert result["errors"], "the file size limit was never reached"
    assert set(result["errors"]) == {
        f"JournalError: cannot write the ledger journal {config.journal_path}: File too large"}
    assert await stored_ids(pg_backend) == {f"full-{i:04d}" for i in range(200)}
