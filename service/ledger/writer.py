"""Ledger: the one object the gateway holds. record() makes a record durable in the journal
and returns; a background writer moves records to the database in batches; a retry task
replays the journal whenever the database missed something (down, slow, queue full, crash).

    ledger = await Ledger.open(config)
    await ledger.record(rec)          # durable when it returns; never waits for the database
    rows = await ledger.summary(UsageFilter(caller="team-a"), ["day", "model"])
    await ledger.aclose()             # flush to the database, then close (SIGTERM)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tollway.v1 import completion_pb2 as pb

from .config import LedgerConfig
from .journal import Journal, JournalError, Segment
from .records import LedgerRecord
from .store import RecordRejected, Store, StoreUnavailable, open_store
from .summary import UsageFilter, check_groupings, from_proto

log = logging.getLogger("tollway.ledger")


# A record waiting for the writer: the record, its journal segment (None: the journal write
# failed), and when it was written (time.monotonic()).
Queued = tuple[LedgerRecord, Segment | None, float]


class LedgerClosed(Exception):
    """record() after aclose()."""


@dataclass(frozen=True)
class LedgerStats:
    database_up: bool
    queued: int
    journal_segments: int
    inserted: int
    replayed: int
    spilled: int


class Ledger:
    def __init__(self, config: LedgerConfig, store: Store | None = None, *, worker_index: int = 0,
                 worker_count: int = 1) -> None:
        """worker_index, worker_count: this process's slot under `tollway serve --workers N`.
        Each worker has a journal of its own (LedgerConfig.worker_journal_path); all write to
        the same database. Worker 0 also replays the journals of slots >= worker_count."""
        self.config = config
        self.store = store or open_store(config, config.insert_timeout_s)
        self.worker_index, self.worker_count = worker_index, worker_count
        self.journal_path = config.worker_journal_path(worker_index)
        self.journal = Journal(self.journal_path, config.segment_bytes, config.fsync_before_ack,
                               config.fsync_interval_s, self._on_written)
        # Journals of worker slots that no longer run, locked and replayed by worker 0, then removed.
        self._adopted: list[Journal] = []
        # Records written to the journal and waiting for the writer.
        self._queue: collections.deque[Queued] = collections.deque()
        self._queued = asyncio.Event()
        # Set by flush(): the writer stops lingering and inserts what it has.
        self._flush_now = asyncio.Event()
        # Set when a whole batch is queued (or by flush()): the writer stops lingering.
        self._batch_ready = asyncio.Event()
        self._in_flight = 0
        # The batch being inserted (what backlog() counts besides the queue).
        self._in_flight_batch: list[Queued] = []
        self._database_up = False
        self._closing = False
        self._close_started = False
        # Calls in progress, each of which may still record (call_started/call_ended): aclose()
        # lets them finish first.
        self._open_calls = 0
        self._no_open_calls = asyncio.Event()
        self._no_open_calls.set()
        self._retry_now = asyncio.Event()
        self._replay_lock = asyncio.Lock()
        self._progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # One warning per outage, not one per failed batch.
        self._outage_logged = False
        self._inserted = self._replayed = self._spilled = 0

    @classmethod
    async def open(cls, config: LedgerConfig, store: Store | None = None, *, worker_index: int = 0,
                   worker_count: int = 1) -> Ledger:
        ledger = cls(config, store, worker_index=worker_index, worker_count=worker_count)
        await ledger.start()
        return ledger

    async def start(self) -> None:
        """Open the journal, connect and migrate the database, and start the background tasks.
        A database that is down does not stop the gateway: records wait in the journal. What a
        crashed process left in the journal is replayed in the background (see flush())."""
        leftovers = self.journal.open()
        if leftovers:
            log.info("ledger journal %s holds %d segment(s) from an earlier run; replaying",
                     self.journal_path, len(leftovers))
        if self.worker_index == 0:
            leftovers += await self._adopt_orphans()
        try:
            await self._connect()
        except BaseException:  # e.g. SchemaTooNew: give the journals' locks back before failing
            for journal in [self.journal, *self._adopted]:
                await journal.aclose()
            await self.store.close()
            raise
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write_loop(), name="ledger-writer"),
                       loop.create_task(self._retry_loop(), name="ledger-retry")]
        if leftovers:
            self._retry_now.set()
            self._tasks.append(loop.create_task(_count_records(leftovers), name="ledger-count-leftovers"))

    async def _adopt_orphans(self) -> list[Segment]:
        """Lock the journals of worker slots that do not run now and take what they hold for
        replay; one still locked (a gateway of an earlier run still draining) is left to it."""
        found: list[Segment] = []
        for path in self.config.orphan_journals(self.worker_count):
            journal = Journal(path, self.config.segment_bytes, False, self.config.fsync_interval_s, self._on_written)
            try:
                segments = journal.open(adopt=True)
            except JournalError as exc:
                log.warning("%s; it is replayed by whoever holds it, or at the next start", exc)
                continue
            if not segments:
                await journal.aclose_and_remove()
                continue
            log.info("ledger journal %s is of a worker that no longer runs; replaying its %d segment(s)",
                     path, len(segments))
            self._adopted.append(journal)
            found += segments
        return found

    def _journals(self) -> list[Journal]:
        return [self.journal, *self._adopted]

    # -- the request path ---------------------------------------------------------------

    async def record(self, rec: LedgerRecord) -> None:
        """Return once rec is in the journal (see LedgerConfig.fsync_before_ack): await this
        before answering OK. Never waits for the database. Raises JournalError when the journal
        cannot be written; the record still goes to the database."""
        synced = self.record_nowait(rec)
        if synced is not None:
            # Shielded: the fsync future is shared, and one cancelled request must not cancel
            # the others' acknowledgement.
            await asyncio.shield(synced)

    def record_nowait(self, rec: LedgerRecord) -> asyncio.Future[None] | None:
        """record() without waiting for an fsync (with fsync_before_ack), for paths that answer no
        OK, such as a call being cancelled, which cannot await. The line is written when this
        returns; the future, if any, is the fsync that nobody has to await."""
        if self._closing:
            raise LedgerClosed("the ledger is closed")
        return self.journal.append(rec)

    def call_started(self) -> None:
        """A call that may record has begun; pair with call_ended() when it has finished."""
        self._open_calls += 1
        self._no_open_calls.clear()

    def call_ended(self) -> None:
        self._open_calls -= 1
        if self._open_calls == 0:
            self._no_open_calls.set()

    def _on_written(self, segment: Segment | None, rec: LedgerRecord) -> None:
        if len(self._queue) >= self.config.queue_size:
            # Full: the record lives in the journal only, and is replayed from there.
            self._spilled += 1
            if segment is not None:
                segment.unconfirmed -= 1
                segment.needs_replay = True
                self._kick_replay()
            else:
                log.error("ledger queue full and journal unwritable: a record is lost (request %s)",
                          rec.request_id)
            return
        self._queue.append((rec, segment, time.monotonic()))
        if not self._queued.is_set():
            self._queued.set()
        if len(self._queue) >= self.config.batch_size and not self._batch_ready.is_set():
            self._batch_ready.set()

    # -- the writer: queue -> database ----------------------------------------------------

    async def _write_loop(self) -> None:
        batch_size, linger = self.config.batch_size, self.config.batch_linger_s
        while True:
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
            if linger and len(self._queue) < batch_size and not self._flush_now.is_set():
                # Let a batch gather for `linger` after its oldest record, also while the last
                # insert ran: one transaction for many records. Taking what had queued behind
                # a busy insert made batches of ~4 at c=50, at ~4x the CPU per record of a
                # batch of 40 (bench/RESULTS.md).
                wait_s = self._queue[0][2] + linger - time.monotonic()
                if wait_s > 0:
                    self._batch_ready.clear()
                    try:
                        async with asyncio.timeout(wait_s):
                            await self._batch_ready.wait()
                    except TimeoutError:
                        pass
            batch = [self._queue.popleft() for _ in range(min(batch_size, len(self._queue)))]
            if not batch:
                continue
            self._in_flight = len(batch)
            self._in_flight_batch = batch
            try:
                await self._insert_live(batch)
            except Exception as exc:  # the writer must outlive any one batch
                log.error("ledger writer: %s: %s; the batch waits in the journal", type(exc).__name__, exc)
                self._leave_to_journal(batch)
            finally:
                self._in_flight = 0
                self._in_flight_batch = []
                self._notify()

    async def _insert_live(self, batch: list[Queued]) -> None:
        records = [rec for rec, _, _ in batch]
        if self._database_up:
            try:
                await self._insert(records)
            except StoreUnavailable as exc:
                await self._went_down(exc)
            else:
                self._confirm(batch)
                return
        if self._leave_to_journal(batch):
            await asyncio.sleep(self.config.retry_interval_s)
        self._kick_replay()

    def _leave_to_journal(self, batch: list[Queued]) -> bool:
        """The database missed these: their segments are marked for replay. Records whose journal
        write failed have no copy there, so they go back to the queue; True if there were such."""
        orphans = [item for item in batch if item[1] is None]
        for _, segment, _ in batch:
            if segment is not None:
                segment.unconfirmed -= 1
                segment.needs_replay = True
        self._queue.extendleft(reversed(orphans))
        return bool(orphans)

    def _kick_replay(self) -> None:
        """Replay now, when the database is up; a down one is tried every retry_interval_s."""
        if self._database_up:
            self._retry_now.set()

    async def _insert(self, records: list[LedgerRecord]) -> int:
        """Insert with the timeout; a refused batch is retried one by one, and what the database
        refuses on its own goes to the journal's rejected file."""
        try:
            return await self._insert_timed(records)
        except RecordRejected as exc:
            if len(records) == 1:
                self.journal.write_rejected(records, str(exc))
                return 0
        inserted = 0
        for rec in records:
            inserted += await self._insert([rec])
        return inserted

    async def _insert_timed(self, records: list[LedgerRecord]) -> int:
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            async with asyncio.timeout(self.config.insert_timeout_s):
                return await self.store.insert(records)
        except TimeoutError:
            raise StoreUnavailable(
                f"{self.store.name} ledger insert took over {self.config.insert_timeout_s:g}s") from None
        except (StoreUnavailable, RecordRejected):
            raise
        except Exception as exc:
            # Not a database outage: retrying would fail the same way, so the record is set
            # aside (one by one, in _insert) rather than blocking everything behind it.
            raise RecordRejected(f"unexpected {type(exc).__name__}: {exc}") from exc

    def _confirm(self, batch: list[Queued]) -> None:
        self._inserted += len(batch)
        touched = set()
        for _, segment, _ in batch:
            if segment is not None and not segment.removed:
                segment.unconfirmed -= 1
                touched.add(segment)
        for segment in touched:
            self.journal.remove_if_done(segment)

    # -- the database going away and coming back ------------------------------------------

    async def _connect(self) -> bool:
        try:
            async with asyncio.timeout(self.config.insert_timeout_s):
                await self.store.open()
        except (StoreUnavailable, TimeoutError) as exc:
            if not isinstance(exc, StoreUnavailable):
                exc = StoreUnavailable(f"{self.store.name} ledger did not answer in {self.config.insert_timeout_s:g}s")
            await self._went_down(exc)
            return False
        if not self._database_up:
            log.info("ledger database ready: %s", self.config.describe())
        self._database_up = True
        self._outage_logged = False
        return True

    async def _went_down(self, exc: Exception) -> None:
        if not self._outage_logged:
            log.warning("ledger database unavailable (%s); records wait in the journal %s", exc,
                        self.journal_path)
            self._outage_logged = True
        self._database_up = False
        await self.store.reset()

    async def _retry_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.config.retry_interval_s):
                    await self._retry_now.wait()
            except TimeoutError:
                pass
            self._retry_now.clear()
            if not self._database_up or any(j.replayable() for j in self._journals()) or (
                    self.journal.active is not None and self.journal.active.needs_replay):
                try:
                    await self._replay()
                except Exception as exc:  # e.g. a journal segment that cannot be read: try again later
                    log.error("ledger replay: %s: %s", type(exc).__name__, exc)

    async def _replay(self) -> bool:
        """Reconnect if needed, then insert every segment marked for replay and delete it.
        Inserts ignore ids already present, so replaying what the writer also inserted is harmless."""
        async with self._replay_lock:
            if not self._database_up and not await self._connect():
                return False
            active = self.journal.active
            if active is not None and active.needs_replay:
                self.journal.seal_active()
            for journal in self._journals():
                for segment in journal.replayable():
                    records, bad = await asyncio.to_thread(Journal.read, segment)
                    for start in range(0, len(records), self.config.batch_size):
                        try:
                            self._replayed += await self._insert(records[start:start + self.config.batch_size])
                        except StoreUnavailable as exc:
                            await self._went_down(exc)
                            return False
                    if bad:
                        journal.keep_unreadable(segment, bad)
                    else:
                        journal.remove(segment)
                    self._notify()
            for journal in [j for j in self._adopted if not j.segments]:
                await journal.aclose_and_remove()
                self._adopted.remove(journal)
                log.info("ledger journal %s replayed and removed", journal.directory)
                self._notify()
            return True

    # -- flushing and closing -------------------------------------------------------------

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _outstanding(self) -> bool:
        return (bool(self._queue) or self._in_flight > 0 or bool(self._adopted)
                or any(j.pending_records() for j in self._journals()))

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every acknowledged record is in the database; False if that did not happen
        within timeout (the rest stays in the journal)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._flush_now.set()
        self._batch_ready.set()
        # One immediate try; after that a down database is tried at the usual interval.
        self._retry_now.set()
        while self._outstanding():
            progress = self._progress
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._flush_now.clear()
                return False
            try:
                async with asyncio.timeout(min(remaining or 0.1, 0.1)):
                    await progress.wait()
            except TimeoutError:
                pass
        self._flush_now.clear()
        return True

    async def aclose(self, timeout: float | None = None) -> None:
        """Let calls in progress finish, flush to the database (all within timeout, default
        close_timeout_s), then close. What did not reach the database stays in the journal for the
        next start."""
        if self._close_started:
            return
        self._close_started = True
        budget = self.config.close_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + budget
        # A call that the server's stop cut short records its usage as it unwinds, which may be
        # after the server has stopped: its record must still be taken.
        try:
            async with asyncio.timeout(budget):
                await self._no_open_calls.wait()
        except TimeoutError:
            log.warning("ledger closing while %d call(s) have not finished; their records are refused",
                        self._open_calls)
        self._closing = True
        flushed = await self.flush(max(0.0, deadline - time.monotonic()))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for journal in self._journals():
            await journal.aclose()
        await self.store.close()
        if not flushed:
            log.warning("ledger closed with records not yet in the database; they stay in the journal %s "
                        "and are replayed at the next start", self.journal_path)

    def backlog(self) -> tuple[int, float]:
        """Records acknowledged and not yet confirmed in the database, and how many seconds ago the
        oldest of them was written (0.0 when there is none). A segment marked for replay counts
        all its records (the replay inserts them all; some may be in the database already)."""
        now = time.monotonic()
        records, oldest = 0, now
        for segment in list(self.journal.segments.values()):
            if segment.needs_replay:
                records += segment.appended
                if segment.size:
                    oldest = min(oldest, segment.first_written)
            else:
                records += segment.unconfirmed
        waiting = (self._in_flight_batch, self._queue)
        # Records whose journal write failed are in no segment: they are counted where they wait.
        records += sum(1 for batch in waiting for _, segment, _ in batch if segment is None)
        for batch in waiting:
            if batch:
                oldest = min(oldest, batch[0][2])
        return records, now - oldest

    # -- reading ----------------------------------------------------------------------------

    async def summary(self, filters: UsageFilter, group_by: Sequence[str] = ()) -> list[pb.UsageSummaryRow]:
        """GetUsageSummary over what the database holds (records still on their way, a few
        milliseconds' worth, are not in it yet). ValueError for a bad grouping; StoreUnavailable
        when the database does not answer."""
        check_groupings(group_by)
        return await self.store.summary(filters, group_by)

    async def summary_response(self, request: pb.GetUsageSummaryRequest) -> pb.GetUsageSummaryResponse:
        filters, group_by = from_proto(request)
        return pb.GetUsageSummaryResponse(rows=await self.summary(filters, group_by))

    async def get(self, request_id: str) -> LedgerRecord | None:
        return await self.store.get(request_id)

    def stats(self) -> LedgerStats:
        return LedgerStats(
            database_up=self._database_up,
            queued=len(self._queue) + self._in_flight,
            journal_segments=len(self.journal.segments),
            inserted=self._inserted,
            replayed=self._replayed,
            spilled=self._spilled,
        )


async def _count_records(segments: list[Segment]) -> None:
    """How many records the segments an earlier run left hold (for backlog()), read on a thread."""
    for segment in segments:
        if segment.removed:
            continue
        try:
            segment.appended = await asyncio.to_thread(Journal.count_records, segment.path)
        except OSError:
            continue  # replayed and deleted meanwhile
