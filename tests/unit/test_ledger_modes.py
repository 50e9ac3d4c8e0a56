"""Ledger files are private: directories the ledger creates are 0700 and every file 0600 (the
SQLite database and its -wal/-shm files, journal segments, the lock, rejected.jsonl), whatever
the process umask; files an earlier version left looser are tightened; an existing directory
open to others is left as it is, with a warning naming it."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from tollway.service.ledger import Ledger, LedgerConfig
from tollway.service.ledger.records import InputTokens

from tests.support.ledger import sample_record


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def config(state: Path) -> LedgerConfig:
    return LedgerConfig(path=state / "tollway" / "ledger.sqlite3", batch_linger_s=0.005, insert_timeout_s=1.0,
                        retry_interval_s=0.05, close_timeout_s=5.0)


async def test_every_ledger_directory_is_0700_and_every_file_0600_whatever_the_umask(tmp_path: Path, umask: int):
    cfg = config(tmp_path / "state")
    # A count past int64 that the database refuses: it goes to rejected.jsonl.
    poison = sample_record("poison", input=InputTokens(total=2**63))
    ledger = await Ledger.open(cfg)
    await ledger.record(sample_record("fine"))
    await ledger.record(poison)
    assert await ledger.flush(10)

    files = {p: mode(p) for p in [*cfg.sqlite_path.parent.iterdir(), *cfg.journal_path.iterdir()] if p.is_file()}
    directories = {p: mode(p) for p in (tmp_path / "state", cfg.sqlite_path.parent, cfg.journal_path)}
    await ledger.aclose()

    names = {p.name for p in files}
    assert {"ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm", ".lock", "rejected.jsonl"} <= names
    assert any(name.startswith("seg-") for name in names), names
    assert {str(p): oct(m) for p, m in files.items()} == {str(p): "0o600" for p in files}
    assert {str(p): oct(m) for p, m in directories.items()} == {str(p): "0o700" for p in directories}


async def test_files_an_earlier_version_left_open_are_made_private(tmp_path: Path, umask: int):
    cfg = config(tmp_path / "state")
    ledger = await Ledger.open(cfg)
    await ledger.record(sample_record("first"))
    assert await ledger.flush(10)
    await ledger.aclose()
    for path in [cfg.sqlite_path, *cfg.journal_path.iterdir(), cfg.sqlite_path.with_name("ledger.sqlite3-wal")]:
        if path.is_file():
            os.chmod(path, 0o644)
    old = cfg.sqlite_path.with_name("ledger.sqlite3-wal")
    old.touch()
    os.chmod(old, 0o644)

    ledger = await Ledger.open(cfg)
    await ledger.record(sample_record("second"))
    assert await ledger.flush(10)
    files = {p.name: oct(mode(p)) for p in [*cfg.sqlite_path.parent.iterdir(), *cfg.journal_path.iterdir()]
             if p.is_file()}
    await ledger.aclose()

    assert files == {name: "0o600" for name in files}


async def test_an_existing_directory_open_to_others_is_kept_and_named_in_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o750)
    cfg = LedgerConfig(path=shared / "ledger.sqlite3", journal_dir=shared / "journal", close_timeout_s=5.0)

    with caplog.at_level(logging.WARNING, logger="tollway.ledger"):
        ledger = await Ledger.open(cfg)
        await ledger.aclose()

    assert mode(shared) == 0o750
    assert mode(shared / "journal") == 0o700
    assert mode(shared / "ledger.sqlite3") == 0o600
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"the ledger directory {shared} is open to other users (mode 0750); its files are 0600, "
        f"but consider `chmod 700 {shared}`"]
