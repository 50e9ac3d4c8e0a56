"""The usage ledger: one record per request that reached a provider, never lost, never counted twice.

    records.py         LedgerRecord (+ from_protos) and its parts
    config.py          LedgerConfig: the [ledger] table
    journal.py         the append-only JSONL journal: group commit, fsync, segments, replay reads
    writer.py          Ledger: record() -> journal -> batched inserts; outage and crash recovery
    store.py           the Store protocol; sqlite_store.py and postgres_store.py implement it
    schema.py          the table, versioned migrations, row conversion per SQL dialect
    summary.py         GetUsageSummary filters, groupings and the query
    private_files.py   ledger directories 0700 and files 0600, whatever the umask
"""

from .config import LedgerConfig
from .journal import JournalError
from .records import AttemptRecord, CostLine, InputTokens, LedgerRecord, OutputTokens
from .schema import SchemaTooNew
from .store import RecordRejected, StoreUnavailable
from .summary import SummaryTooLarge, UsageFilter, from_proto, label_grouping, to_proto
from .writer import Ledger, LedgerClosed, LedgerStats

__all__ = [
    "AttemptRecord", "CostLine", "InputTokens", "JournalError", "Ledger", "LedgerClosed",
    "LedgerConfig", "LedgerRecord", "LedgerStats", "OutputTokens", "RecordRejected", "SchemaTooNew",
    "StoreUnavailable", "SummaryTooLarge", "UsageFilter", "from_proto", "label_grouping", "to_proto",
]
