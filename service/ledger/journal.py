"""The journal: an append-only directory of JSONL segments that holds every acknowledged record
until the database has it.

record() is acknowledged once its line is written: one write() to the OS, so a crash of the
process (kill -9 included) loses nothing that was acknowledged. What was written is fsync'd on a
worker thread, at most every fsync_interval_s; with fsync_before_ack each acknowledgement waits
for an fsync instead (group commit: one fsync for all the lines written meanwhile), which also
survives a power loss, at the cost of an fsync's latency.

Segments are named seg-<sequence>.jsonl. The newest is the active one; a segment is sealed
when it grows past its size limit (or must be replayed), and deleted once the database holds
every record in it. Whatever a crashed process left behind is replayed at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from .private_files import open_private, private_directory
from .records import LedgerRecord

try:
    import fcntl
except ImportError:  # not on Windows: the single-writer lock is then not enforced
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("tollway.ledger")

_PREFIX, _SUFFIX = "seg-", ".jsonl"
REJECTED_FILE = "rejected.jsonl"


class JournalError(Exception):
    """The journal cannot be written; the message names the directory and the cause."""


class Segment:
    """One journal file and what the ledger knows of its records."""

    __slots__ = ("seq", "path", "fd", "size", "appended", "first_written", "unconfirmed", "needs_replay", "sealed",
                 "removed")

    def __init__(self, seq: int, path: Path, fd: int | None) -> None:
        self.seq = seq
        self.path = path
        self.fd = fd
        self.size = 0
        # Records in it: written by this process, or counted in a file an earlier run left.
        self.appended = 0
        # When its first record was written (time.monotonic()).
        self.first_written = time.monotonic()
        # Records handed to the writer and not yet confirmed in the database.
        self.unconfirmed = 0
        # Some record of it reached neither the database nor the writer's queue: read the file again.
        self.needs_replay = False
        self.sealed = False
        self.removed = False

    def done(self) -> bool:
        """Every record in it is in the database (the file may go once sealed)."""
        return self.unconfirmed == 0 and not self.needs_replay


class Journal:
    def __init__(self, directory: Path, segment_bytes: int, fsync_before_ack: bool, fsync_interval_s: float,
                 on_written: Callable[[Segment | None, LedgerRecord], None]) -> None:
        self.directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._fsync_before_ack = fsync_before_ack
        self._fsync_interval_s = fsync_interval_s
        self._on_written = on_written
        self.segments: dict[int, Segment] = {}
        self.active: Segment | None = None
        # Sequence numbers only grow: a file whose deletion failed is never appended to again.
        self._last_seq = 0
        self._lock_fd: int | None = None
        # With fsync_before_ack: what the lines written since the last fsync started wait for.
        self._next_sync: asyncio.Future[None] | None = None
        # fsync bookkeeping: fds written since the last fsync, fds to close after it, waiters.
        self._unsynced: set[int] = set()
        self._to_close: list[int] = []
        self._sync_dir = False
        self._sync_waiters: list[asyncio.Future[None]] = []
        self._sync_wanted = asyncio.Event()
        self._sync_in_flight = False
        self._syncer: asyncio.Task[None] | None = None
        self._closed = False

    # -- start and stop -------------------------------------------------------------------

    def open(self, *, adopt: bool = False) -> list[Segment]:
        """Lock the directory and open a fresh active segment; returns the segments a previous
        process left, sealed and marked for replay.

        adopt: the directory of a worker slot that no longer runs (a restart with fewer
        workers): lock it and return what it holds for replay, but never append to it."""
        try:
            private_directory(self.directory)
            self._lock_directory()
            leftovers = []
            for path in sorted(self.directory.glob(f"{_PREFIX}*{_SUFFIX}")):
                seq = _sequence(path)
                if seq is None:
                    continue
                segment = Segment(seq, path, None)
                info = path.stat()
                segment.size = info.st_size
                # Its last write: the oldest record in it is at least this old.
                segment.first_written -= max(0.0, time.time() - info.st_mtime)
                segment.sealed = segment.needs_replay = True
                self.segments[seq] = segment
                leftovers.append(segment)
                self._last_seq = max(self._last_seq, seq)
            if adopt:
                self._closed = True
            else:
                self._start_segment()
        except OSError as exc:
            raise JournalError(f"cannot open the ledger journal {self.directory}: {exc.strerror or exc}") from exc
        self._syncer = asyncio.get_running_loop().create_task(self._sync_loop(), name="ledger-journal-fsync")
        return leftovers

    def _lock_directory(self) -> None:
        if fcntl is None:
            return  # type: ignore[unreachable]  # mypy assumes fcntl imports; it does not on Windows
        fd = open_private(self.directory / ".lock", os.O_WRONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JournalError(f"the ledger journal {self.directory} is in use by another running gateway") from None
        self._lock_fd = fd

    def _start_segment(self) -> None:
        seq = self._last_seq + 1
        path = self.directory / f"{_PREFIX}{seq:012d}{_SUFFIX}"
        fd = open_private(path, os.O_WRONLY | os.O_APPEND)
        self._last_seq = seq
        self.active = self.segments[seq] = Segment(seq, path, fd)
        self._sync_dir = True

    async def aclose(self) -> None:
        """Seal the active segment, fsync and close everything."""
        self._closed = True
        if self.active is not None:
            self._seal(self.active, start_next=False)
        await self.sync()
        if self._syncer is not None:
            self._syncer.cancel()
            await asyncio.gather(self._syncer, return_exceptions=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def aclose_and_remove(self) -> None:
        """Close an adopted directory whose records are all in the database, and remove it if
        nothing else is left in it (a rejected.jsonl or an .unreadable segment stays)."""
        lock = self.directory / ".lock"
        with contextlib.suppress(OSError):
            lock.unlink()  # while still locked: no other process can be holding it
        await self.aclose()
        with contextlib.suppress(OSError):
            self.directory.rmdir()

    # -- appending --------------------------------------------------------------------------

    def append(self, record: LedgerRecord) -> asyncio.Future[None] | None:
        """Write the record's line now, in one write() to the OS: from then on a crash of the
        process cannot lose it. With fsync_before_ack, returns a future that resolves once the
        line is fsync'd (shared by every line written before that fsync starts). Raises
        JournalError when the line cannot be written; the record still goes to the writer."""
        if self.active is None and not self._closed:
            try:  # a disk that was full a moment ago may have room again
                self._start_segment()
            except OSError:
                pass
        segment = self.active
        data = record.to_json() + b"\n"
        try:
            if segment is None:
                raise OSError("the journal is closed")
            _write_all(segment.fd, data)
        except OSError as exc:
            error = JournalError(f"cannot write the ledger journal {self.directory}: {exc.strerror or exc}")
            log.error("%s; the record goes to the database without a journal copy", error)
            if segment is not None:
                # The file may end in a torn line now: later lines must not be glued to it.
                segment.needs_replay = True
                self._seal(segment, start_next=True)
            self._on_written(None, record)
            raise error from None
        if not segment.appended:
            segment.first_written = time.monotonic()
        segment.size += len(data)
        segment.appended += 1
        segment.unconfirmed += 1
        self._unsynced.add(cast(int, segment.fd))  # _write_all refused a sealed segment (fd None)
        self._sync_wanted.set()
        self._on_written(segment, record)
        if segment.size >= self._segment_bytes:
            self._seal(segment, start_next=True)
        if not self._fsync_before_ack:
            return None
        if self._next_sync is None:
            self._next_sync = asyncio.get_running_loop().create_future()
            # An fsync error is logged where it happens; this marks it seen when nobody awaited.
            self._next_sync.add_done_callback(_retrieve)
            self._sync_waiters.append(self._next_sync)
        return self._next_sync

    # -- sealing, reading, removing -------------------------------------------------------

    def seal_active(self) -> None:
        """Close the active segment to new lines (so it can be replayed) and start the next."""
        if self.active is not None and self.active.appended:
            self._seal(self.active, start_next=True)

    def _seal(self, segment: Segment, start_next: bool) -> None:
        segment.sealed = True
        if segment.fd is not None:
            self._to_close.append(segment.fd)
            self._unsynced.add(segment.fd)
            segment.fd = None
            self._sync_wanted.set()
        if segment is self.active:
            self.active = None
            if start_next:
                try:
                    self._start_segment()
                except OSError as exc:
                    log.error("cannot start a new ledger journal segment in %s: %s", self.directory, exc)
        self.remove_if_done(segment)

    def remove_if_done(self, segment: Segment) -> None:
        if segment.sealed and not segment.removed and segment.done():
            self.remove(segment)

    def remove(self, segment: Segment) -> None:
        segment.removed = True
        self.segments.pop(segment.seq, None)
        try:
            segment.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot delete the replayed ledger journal segment %s: %s", segment.path, exc)

    def replayable(self) -> list[Segment]:
        return [s for s in sorted(self.segments.values(), key=lambda s: s.seq) if s.sealed and s.needs_replay]

    def pending_records(self) -> bool:
        return any(not s.done() for s in self.segments.values())

    @staticmethod
    def read(segment: Segment) -> tuple[list[LedgerRecord], int]:
        """The segment's records and the count of lines that could not be read (blocking: run it
        on a thread). A last line without its newline is a write that a crash cut short: it was
        never acknowledged, so it is dropped without counting as unreadable."""
        records: list[LedgerRecord] = []
        bad = 0
        with open(segment.path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    records.append(LedgerRecord.from_json(line))
                except (ValueError, TypeError, KeyError):
                    if line.endswith(b"\n"):
                        bad += 1
                    else:
                        log.info("ledger journal segment %s ends in a torn line (an unacknowledged write); "
                                 "dropped", segment.path.name)
        return records, bad

    @staticmethod
    def count_records(path: Path) -> int:
        """The complete lines of a segment file (blocking: run it on a thread)."""
        lines = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
        return lines

    def keep_unreadable(self, segment: Segment, bad: int) -> None:
        """A segment with lines that do not parse is kept, renamed, for a person to look at."""
        target = segment.path.with_suffix(".unreadable")
        try:
            segment.path.rename(target)
        except OSError:
            target = segment.path
        log.error("ledger journal segment %s had %d unreadable line(s); kept as %s", segment.path.name, bad, target)
        segment.removed = True
        self.segments.pop(segment.seq, None)

    def write_rejected(self, records: Sequence[LedgerRecord], reason: str) -> None:
        """Records the database refuses outright go to rejected.jsonl, never silently away."""
        with open(open_private(self.directory / REJECTED_FILE, os.O_WRONLY | os.O_APPEND), "ab") as f:
            for rec in records:
                f.write(rec.to_json() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        log.error("the ledger database refused %d record(s) (%s); kept in %s", len(records), reason,
                  self.directory / REJECTED_FILE)

    # -- fsync ------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Wait until everything written so far is fsync'd."""
        if not (self._unsynced or self._to_close or self._sync_dir or self._sync_in_flight):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._sync_waiters.append(waiter)
        self._sync_wanted.set()
        await waiter

    async def _sync_loop(self) -> None:
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted.clear()
            fds, to_close, sync_dir = list(self._unsynced), self._to_close, self._sync_dir
            waiters = self._sync_waiters
            self._unsynced, self._to_close, self._sync_dir, self._sync_waiters = set(), [], False, []
            self._next_sync = None
            self._sync_in_flight = True
            try:
                await asyncio.to_thread(_fsync_all, fds, to_close, self.directory if sync_dir else None)
            except OSError as exc:
                error = JournalError(f"cannot fsync the ledger journal {self.directory}: {exc.strerror or exc}")
                log.error("%s", error)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
                continue
            finally:
                self._sync_in_flight = False
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if not self._fsync_before_ack and not self._sync_waiters:
                # Nobody waits for the next fsync: let writes gather for fsync_interval_s first.
                await asyncio.sleep(self._fsync_interval_s)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _write_all(fd: int | None, data: bytes) -> None:
    if fd is None:
        raise OSError("the segment is sealed")
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_all(fds: list[int], to_close: list[int], directory: Path | None) -> None:
    try:
        for fd in fds:
            os.fsync(fd)
        if directory is not None:
            # A new segment's name is durable only once its directory is.
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        for fd in to_close:
            os.close(fd)


def _sequence(path: Path) -> int | None:
    digits = path.name[len(_PREFIX):-len(_SUFFIX)]
    return int(digits) if digits.isdigit() else None
