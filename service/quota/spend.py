"""A budget's spend this period, read from the usage ledger: what the store is seeded with
at start-up, and whenever it has no figure (a new period, a Redis flush or restart).

The ledger is what billing reads, so a rebuilt budget agrees with the bill. Records still in
the journal on their way to the database (milliseconds' worth) are not counted yet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from tollway.service.ledger import Ledger, StoreUnavailable, SummaryTooLarge, UsageFilter, label_grouping
from tollway.service.quota.config import Budget
from tollway.service.quota.matching import applies


class SpendUnavailable(Exception):
    """The ledger could not say what a budget has spent."""


class LedgerSpend:
    """Sums the ledger for one budget. `targets_of(route)` names the "provider/model" targets of
    a route as the running config has them, so a record matches a budget as its call did."""

    def __init__(self, ledger: Ledger, targets_of: Callable[[str], Sequence[str]]) -> None:
        self.ledger = ledger
        self.targets_of = targets_of

    async def spend(self, budget: Budget, since: datetime, only_subject: str | None = None
                    ) -> dict[str, tuple[int, int]]:
        """Subject -> (priced nano-USD, unpriced calls) of the records since `since` that the
        budget applies to; only_subject narrows a per-caller or per-label budget to one."""
        scope = budget.scope
        labels = dict(scope.labels)
        caller = None
        per_label = scope.per.removeprefix("label:") if scope.per and scope.per.startswith("label:") else None
        if only_subject is not None and scope.per == "caller":
            caller = only_subject
        elif only_subject is not None and per_label is not None:
            labels[per_label] = only_subject
        group_by = ["caller", "route", "provider", "model"]
        if per_label is not None:
            group_by.append(label_grouping(per_label))
        try:
            rows = await self.ledger.summary(UsageFilter(start=since, caller=caller, labels=labels), group_by)
        except (StoreUnavailable, SummaryTooLarge) as exc:
            raise SpendUnavailable(f"the usage ledger could not sum budget {budget.name!r}: "
                                   f"{type(exc).__name__}") from None
        found: dict[str, tuple[int, int]] = {}
        for row in rows:
            group = row.group
            row_labels = dict(group.labels)
            if per_label is not None and per_label not in row_labels:
                continue
            answered = f"{group.provider}/{group.model}" if group.provider else ""
            targets = [*self.targets_of(group.route), *([answered] if answered else [])]
            # The labels the filter matched are the record's: pass the scope's own to applies.
            if not applies(scope, group.caller, {**labels, **row_labels}, group.route, targets):
                continue
            who = group.caller if scope.per == "caller" else row_labels.get(per_label, "") if per_label else ""
            nano_usd, unpriced = found.get(who, (0, 0))
            found[who] = (nano_usd + row.cost_nano_usd, unpriced + row.unpriced_requests)
        return found
