"""GetUsageSummary: filters and groupings, the one SQL statement for both stores, and the rows.

A grouping is one of "caller", "provider", "model", "route", "day" (UTC, YYYY-MM-DD), or
"label:<key>" for the value of one label key (records without that key form their own group,
whose row leaves the key out of group.labels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from tollway.v1 import completion_pb2 as pb

from .records import INPUT_BUCKETS, OUTPUT_BUCKETS
from .schema import TABLE, Dialect

DIMENSIONS = ("caller", "provider", "model", "route", "day")
LABEL_PREFIX = "label:"

_PROTO_DIMENSIONS = {
    pb.USAGE_GROUPING_CALLER: "caller",
    pb.USAGE_GROUPING_PROVIDER: "provider",
    pb.USAGE_GROUPING_MODEL: "model",
    pb.USAGE_GROUPING_ROUTE: "route",
    pb.USAGE_GROUPING_DAY: "day",
}
_SUMS = (*(f"input_{b}" for b in INPUT_BUCKETS), *(f"output_{b}" for b in OUTPUT_BUCKETS), "total_tokens")

# Bounds on what one summary request may ask for. Every label filter and label grouping is a
# subquery (SQLite) or a JSON lookup: thousands of them make the database refuse the statement
# or work for minutes, and no real report needs more than a handful.
MAX_LABEL_FILTERS = 16
MAX_LABEL_GROUPINGS = 16
MAX_LABEL_KEY_CHARS = 256
MAX_FILTER_VALUE_CHARS = 1024
# A summary answers at most this many rows (groups): more would be a multi-megabyte message
# built in memory; a caller who needs more narrows the time range or groups by less.
MAX_SUMMARY_ROWS = 10_000
INT64_MAX = (1 << 63) - 1


class SummaryTooLarge(Exception):
    """The summary has more groups than MAX_SUMMARY_ROWS."""


@dataclass(frozen=True)
class UsageFilter:
    """Which records a summary counts; None (or empty) matches all. Time is [start, end)."""

    start: datetime | None = None
    end: datetime | None = None
    caller: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    provider: str | None = None
    model: str | None = None
    route: str | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"summary {name} must be timezone-aware")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError("summary start_time must be before end_time")


def label_grouping(key: str) -> str:
    return LABEL_PREFIX + key


def check_groupings(group_by: Sequence[str]) -> None:
    seen = set()
    for grouping in group_by:
        if grouping in seen:
            raise ValueError(f"grouping {grouping!r} is named twice")
        seen.add(grouping)
        if grouping in DIMENSIONS:
            continue
        if grouping.startswith(LABEL_PREFIX) and len(grouping) > len(LABEL_PREFIX):
            continue
        raise ValueError(f"unknown grouping {grouping!r}: use one of {', '.join(DIMENSIONS)} or label:<key>")


def from_proto(request: pb.GetUsageSummaryRequest) -> tuple[UsageFilter, list[str]]:
    """The filter and groupings a GetUsageSummaryRequest asks for; ValueError says what is wrong.
    Label keys in group_by_label_keys group by themselves; USAGE_GROUPING_LABEL needs at least one."""
    _check_bounds(request)
    filters = UsageFilter(
        start=request.start_time.ToDatetime(timezone.utc) if request.HasField("start_time") else None,
        end=request.end_time.ToDatetime(timezone.utc) if request.HasField("end_time") else None,
        caller=request.caller or None,
        labels=dict(request.labels),
        provider=request.provider or None,
        model=request.model or None,
        route=request.route or None,
    )
    group_by: list[str] = []
    for value in request.group_by:
        if value == pb.USAGE_GROUPING_LABEL:
            if not request.group_by_label_keys:
                raise ValueError("group_by LABEL needs group_by_label_keys")
            continue
        if value not in _PROTO_DIMENSIONS:
            raise ValueError(f"group_by has an unknown grouping ({value})")
        group_by.append(_PROTO_DIMENSIONS[value])
    group_by.extend(label_grouping(key) for key in request.group_by_label_keys if key)
    check_groupings(group_by)
    return filters, group_by


def _check_bounds(request: pb.GetUsageSummaryRequest) -> None:
    if len(request.labels) > MAX_LABEL_FILTERS:
        raise ValueError(f"labels: {len(request.labels)} label filters, at most {MAX_LABEL_FILTERS} are allowed; "
                         "filter on fewer labels")
    if len(request.group_by_label_keys) > MAX_LABEL_GROUPINGS:
        raise ValueError(f"group_by_label_keys: {len(request.group_by_label_keys)} label keys, at most "
                         f"{MAX_LABEL_GROUPINGS} are allowed; group by fewer labels")
    keys = [("labels", k) for k in request.labels] + [("group_by_label_keys", k) for k in request.group_by_label_keys]
    for name, key in keys:
        if len(key) > MAX_LABEL_KEY_CHARS:
            raise ValueError(f"{name}: a key of {len(key)} characters, at most {MAX_LABEL_KEY_CHARS} are allowed")
    values = [("labels", v) for v in request.labels.values()] + [
        (name, getattr(request, name)) for name in ("caller", "provider", "model", "route")]
    for name, value in values:
        if len(value) > MAX_FILTER_VALUE_CHARS:
            raise ValueError(f"{name}: a value of {len(value)} characters, at most {MAX_FILTER_VALUE_CHARS} are allowed")


def to_proto(filters: UsageFilter, group_by: Sequence[str]) -> pb.GetUsageSummaryRequest:
    """The request `tollway usage` sends; from_proto() of it gives back the same filter and the
    same groupings (label keys after the other dimensions)."""
    check_groupings(group_by)
    request = pb.GetUsageSummaryRequest(
        caller=filters.caller or "", labels=dict(filters.labels), provider=filters.provider or "",
        model=filters.model or "", route=filters.route or "")
    if filters.start is not None:
        request.start_time.FromDatetime(filters.start.astimezone(timezone.utc))
    if filters.end is not None:
        request.end_time.FromDatetime(filters.end.astimezone(timezone.utc))
    reverse = {name: value for value, name in _PROTO_DIMENSIONS.items()}
    request.group_by.extend(reverse[g] for g in group_by if g in DIMENSIONS)
    label_keys = [g[len(LABEL_PREFIX):] for g in group_by if g not in DIMENSIONS]
    if label_keys:
        request.group_by.append(pb.USAGE_GROUPING_LABEL)
        request.group_by_label_keys.extend(label_keys)
    return request


def build_query(dialect: Dialect, filters: UsageFilter, group_by: Sequence[str], *,
                sum_function: Literal["SUM", "TOTAL"] = "SUM") -> tuple[str, list[Any]]:
    """One SELECT: the group values first, then COUNT and the sums, in _row_from_values order.
    SQLite's SUM fails on an int64 overflow; its TOTAL (a float) never does (see SqliteStore)."""
    check_groupings(group_by)
    select: list[str] = []
    params: list[Any] = []
    for grouping in group_by:
        if grouping == "day":
            select.append(dialect.day_expr())
        elif grouping in DIMENSIONS:
            select.append(grouping)
        else:
            select.append(dialect.label_value_expr())
            params.append(grouping[len(LABEL_PREFIX):])
    select.append("COUNT(*)")
    total = sum_function  # of token and money columns; counts of requests never overflow
    select.extend(f"{total}({column})" for column in _SUMS)
    select.extend((
        # Unpriced requests carry a meaningless 0 total; they are counted, never summed.
        f"{total}(CASE WHEN unpriced THEN 0 ELSE cost_nano_usd END)",
        "SUM(CASE WHEN unpriced THEN 1 ELSE 0 END)",
        "SUM(CASE WHEN estimated THEN 1 ELSE 0 END)",
        f"{total}(provider_cost_nano_usd)",
    ))

    where: list[str] = []
    p = dialect.placeholder
    if filters.start is not None:
        where.append(f"time >= {p}")
        params.append(dialect.time_value(filters.start))
    if filters.end is not None:
        where.append(f"time < {p}")
        params.append(dialect.time_value(filters.end))
    for column in ("caller", "provider", "model", "route"):
        value = getattr(filters, column)
        if value is not None:
            where.append(f"{column} = {p}")
            params.append(value)
    if filters.labels:
        condition, label_params = dialect.labels_match(dict(filters.labels))
        where.append(condition)
        params.extend(label_params)

    sql = f"SELECT {', '.join(select)} FROM {TABLE}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if group_by:
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(group_by)))
        # One row past the cap tells rows_from_result the summary is too large.
        sql += f" LIMIT {MAX_SUMMARY_ROWS + 1}"
    return sql, params


def rows_from_result(group_by: Sequence[str], result: Sequence[Sequence[Any]]) -> list[pb.UsageSummaryRow]:
    """Proto rows in a stable order (by group values, missing values first), whatever the
    database's collation, so SQLite and PostgreSQL answer identically. SummaryTooLarge when
    there are more than MAX_SUMMARY_ROWS groups."""
    if len(result) > MAX_SUMMARY_ROWS:
        raise SummaryTooLarge(f"the summary has more than {MAX_SUMMARY_ROWS} rows; narrow the time range or "
                              "the filters, or group by fewer dimensions")
    rows = [_row_from_values(group_by, values) for values in result]
    order = sorted(range(len(rows)), key=lambda i: [(v is not None, v or "") for v in result[i][:len(group_by)]])
    return [rows[i] for i in order]


def _row_from_values(group_by: Sequence[str], values: Sequence[Any]) -> pb.UsageSummaryRow:
    n = len(group_by)
    group = pb.UsageGroup()
    for grouping, value in zip(group_by, values[:n]):
        if value is None:
            continue
        if grouping in DIMENSIONS:
            setattr(group, grouping, value)
        else:
            group.labels[grouping[len(LABEL_PREFIX):]] = value
    numbers = [_int64(v) for v in values[n:]]
    requests, rest = numbers[0], numbers[1:]
    sums = dict(zip(_SUMS, rest[:len(_SUMS)]))
    cost, unpriced, estimated, provider_cost = rest[len(_SUMS):]
    return pb.UsageSummaryRow(
        group=group,
        requests=requests,
        input=pb.InputUsage(**{b: sums[f"input_{b}"] for b in INPUT_BUCKETS}),
        output=pb.OutputUsage(**{b: sums[f"output_{b}"] for b in OUTPUT_BUCKETS}),
        total_tokens=sums["total_tokens"],
        cost_nano_usd=cost,
        unpriced_requests=unpriced,
        estimated_requests=estimated,
        provider_reported_cost_nano_usd=provider_cost,
    )


def _int64(value: Any) -> int:
    """A sum as an int64 field takes it: PostgreSQL sums are Decimal (never overflowing), SQLite's
    TOTAL a float; a sum past the int64 range (records written before figures were bounded)
    saturates instead of failing the whole summary."""
    if value is None:
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return INT64_MAX if value > 0 else -INT64_MAX
    return max(-INT64_MAX, min(int(value), INT64_MAX))
