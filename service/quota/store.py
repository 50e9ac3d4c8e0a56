"""What a quota store is asked and answers: windows (requests, tokens, streams per minute) and
budgets (nano-USD per period), checked and recorded in one atomic step per call.

Two stores implement it: InProcessStore (one process) and RedisStore (shared by replicas).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

# Every rule window is one minute, sliding: exact to the entry, not fixed buckets.
WINDOW_S = 60.0
# A stream's slot expires unless renewed, so a crashed replica's streams free themselves.
STREAM_LEASE_S = 120.0


@dataclass(frozen=True, slots=True)
class WindowDemand:
    key: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    # Tokens to reserve now (an estimate); 0 when tokens_per_minute is None.
    tokens: int
    # Set only for streams: take one lease of this window.
    concurrent_streams: int | None


@dataclass(frozen=True, slots=True)
class BudgetDemand:
    key: str
    max_nano_usd: int
    # Unix seconds; the store may drop the figure after this.
    expires_at: float


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: Literal["requests", "tokens", "streams", "budget"]
    # Into windows (requests/tokens/streams) or budgets (budget).
    index: int
    # When enough frees up. None: never within a window (a token demand above the limit itself),
    # and always for budgets (they free at period end).
    retry_after_s: float | None
    # In use when refused: requests, tokens, streams or nano-USD.
    used: int
    limit: int


@dataclass(frozen=True, slots=True)
class Admission:
    refusal: Refusal | None
    # Budgets whose figure the store does not have (new store, flush, expiry): nothing was
    # recorded; seed them and admit again.
    missing_budgets: tuple[int, ...]
    # Per window, after this call (None: no such limit); without it when the call was not admitted.
    remaining_requests: tuple[int | None, ...]
    remaining_tokens: tuple[int | None, ...]
    # Per budget, nano-USD spent before this call (0 for a missing figure).
    budget_spent: tuple[int, ...]
    # The store's clock (unix seconds) at the check.
    now: float


@dataclass(frozen=True, slots=True)
class WindowSettlement:
    key: str
    reserved_tokens: int
    # The call's real input+output total (0 if it never reached upstream).
    actual_tokens: int
    release_stream: bool


@dataclass(frozen=True, slots=True)
class BudgetCharge:
    key: str
    # Exact cost (0 for unpriced).
    nano_usd: int
    unpriced: bool
    expires_at: float


@dataclass(frozen=True, slots=True)
class WindowUsage:
    requests: int
    tokens: int
    streams: int
    # When the oldest request entry leaves the window (None: no entries).
    requests_free_in_s: float | None


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    # None: the store has no figure.
    spent_nano_usd: int | None
    unpriced_calls: int


class QuotaStoreError(Exception):
    """The store is unreachable, too slow, or failed a script. Never holds the URL or password."""


class QuotaStore(Protocol):
    async def admit(self, call_id: str, windows: Sequence[WindowDemand],
                    budgets: Sequence[BudgetDemand]) -> Admission:
        """One atomic step. A missing budget figure: return it in missing_budgets, record
        nothing. Else check in order each window's requests, tokens and streams, then each
        budget; the first failing check is the refusal and nothing is recorded. Otherwise
        record a request entry, the token reservation and a stream lease."""
        ...

    async def settle(self, call_id: str, windows: Sequence[WindowSettlement],
                     charges: Sequence[BudgetCharge]) -> None:
        """Adjust the call's reservation to actual (while it is inside the window), release its
        stream lease, add charges to budget figures that exist, count unpriced calls."""
        ...

    async def seed_budget(self, key: str, spent_nano_usd: int, unpriced_calls: int, expires_at: float) -> None:
        """The figure becomes max(current, given), atomically."""
        ...

    async def renew_streams(self, leases: Sequence[tuple[str, str]]) -> None:
        """(window key, call_id): extend live leases by STREAM_LEASE_S from now."""
        ...

    async def usage(self, windows: Sequence[str],
                    budgets: Sequence[str]) -> tuple[list[WindowUsage], list[BudgetUsage]]:
        ...

    async def ping(self) -> None:
        ...

    async def close(self) -> None:
        ...
