"""LedgerConfig: the `[ledger]` table.

    [ledger]
    path = "/var/lib/tollway/ledger.sqlite3"    # SQLite file (the default store)
    dsn = "postgresql://tollway@db/billing"     # PostgreSQL instead of SQLite, when set
    journal_dir = "/var/lib/tollway/journal"    # default: "<path>.journal" beside the SQLite file
                                                # (with --workers N: worker k > 0 in <journal_dir>/worker-<k>)
    fsync_before_ack = false                    # true: a record survives power loss, not only a crash
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tollway.service.config.keys import reject_unknown

# Journals of workers 1..N-1 are directories of this name (and the index) in worker 0's journal.
WORKER_JOURNAL_PREFIX = "worker-"


def default_sqlite_path(environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_STATE_HOME/tollway/ledger.sqlite3 (~/.local/state/...): state that must outlive a restart."""
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "tollway" / "ledger.sqlite3"


@dataclass(frozen=True)
class LedgerConfig:
    # SQLite file; ignored when dsn is set (it still places the default journal).
    path: Path | None = None
    # "postgresql://..." selects PostgreSQL.
    dsn: str | None = None
    journal_dir: Path | None = None
    # False: record() returns once the journal line is written to the OS, which survives
    # kill -9 of the gateway; the batch is fsync'd right after, off the request path.
    # True: record() also waits for that fsync (survives power loss; costs one fsync of latency).
    fsync_before_ack: bool = False
    # Without fsync_before_ack, the journal is fsync'd at most this often: an fsync costs about
    # 150 us of CPU here, which one per request would spend at every request. A power loss can
    # then take the last fsync_interval_s of records; a crash of the process takes none.
    fsync_interval_s: float = 0.02
    # Records waiting for the database; beyond this they stay in the journal only and are
    # replayed from there.
    queue_size: int = 10_000
    batch_size: int = 200
    # How long the writer lets a batch gather after its first record.
    batch_linger_s: float = 0.05
    # An insert slower than this counts as "database down": the batch is left to the journal.
    insert_timeout_s: float = 5.0
    # How often a down database is tried again (and the journal replayed).
    retry_interval_s: float = 2.0
    # A journal segment is closed past this size, and deleted once the database has all of it.
    segment_bytes: int = 4 * 1024 * 1024
    # How long aclose() may spend flushing to the database before leaving the rest to the journal.
    close_timeout_s: float = 10.0

    @property
    def sqlite_path(self) -> Path:
        return Path(self.path) if self.path else default_sqlite_path()

    @property
    def journal_path(self) -> Path:
        if self.journal_dir:
            return Path(self.journal_dir)
        return self.sqlite_path.with_name(self.sqlite_path.name + ".journal")

    def worker_journal_path(self, worker_index: int) -> Path:
        """The journal of one worker of `tollway serve --workers N`: worker 0 keeps journal_path
        (what a single process used, so an upgrade replays what it left), worker k > 0 has
        `<journal_path>/worker-<k>`."""
        if worker_index == 0:
            return self.journal_path
        return self.journal_path / f"{WORKER_JOURNAL_PREFIX}{worker_index}"

    def orphan_journals(self, worker_count: int) -> list[Path]:
        """Journals of worker slots that do not run now (k >= worker_count: a restart with fewer
        workers), in slot order."""
        found = []
        for path in self.journal_path.glob(f"{WORKER_JOURNAL_PREFIX}*"):
            index = path.name[len(WORKER_JOURNAL_PREFIX):]
            if index.isdigit() and int(index) >= worker_count and path.is_dir():
                found.append((int(index), path))
        return [path for _, path in sorted(found)]

    @property
    def backend(self) -> str:
        return "postgresql" if self.dsn else "sqlite"

    def describe(self) -> str:
        """Where records go, for the start-up log line (never the DSN's password)."""
        if self.dsn:
            return f"PostgreSQL {_redact(self.dsn)}"
        return f"SQLite {self.sqlite_path}"

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> LedgerConfig:
        """Parse a `[ledger]` table; ValueError names the bad key."""
        reject_unknown(table, {f.name for f in fields(cls)}, "in [ledger]")
        values: dict[str, Any] = {}
        for key, value in table.items():
            default = getattr(cls, key)
            if key in ("path", "journal_dir"):
                if not isinstance(value, str) or not value:
                    raise ValueError(f"ledger.{key} must be a non-empty string")
                value = Path(value).expanduser()
            elif key == "dsn":
                if not isinstance(value, str) or not value.startswith(("postgresql://", "postgres://")):
                    raise ValueError('ledger.dsn must be a "postgresql://..." URL')
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"ledger.{key} must be true or false")
            elif isinstance(default, int):
                if type(value) is not int or value <= 0:
                    raise ValueError(f"ledger.{key} must be a positive integer")
            elif isinstance(default, float):
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                    raise ValueError(f"ledger.{key} must be a positive number")
                value = float(value)
            values[key] = value
        return cls(**values)


def _redact(dsn: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
