"""`tollway usage` output: summary rows as an aligned table, CSV, or JSON Lines.

Money is printed from integer nano-USD without floats: exact in every format (the table trims
trailing zeros). CSV and JSONL carry every bucket and the exact nano-USD integers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import orjson

from tollway.service.billing.money import format_usd
from tollway.service.ledger.records import INPUT_BUCKETS, OUTPUT_BUCKETS
from tollway.service.ledger.summary import DIMENSIONS, LABEL_PREFIX, check_groupings
from tollway.v1 import completion_pb2 as pb

FORMATS = ("table", "csv", "jsonl")
_TABLE_NUMBERS = (
    ("requests", "requests"),
    ("input", "input_total"),
    ("output", "output_total"),
    ("total tokens", "total_tokens"),
    ("cost USD", "cost_usd"),
    ("unpriced", "unpriced_requests"),
    ("estimated", "estimated_requests"),
    ("provider cost USD", "provider_reported_cost_usd"),
)


def row_dict(row: pb.UsageSummaryRow, group_by: Sequence[str]) -> dict[str, Any]:
    """One flat record: the group columns in group_by order (None where a record had no value
    for a label key), then every count and sum."""
    out: dict[str, Any] = {}
    for grouping in group_by:
        if grouping in DIMENSIONS:
            out[grouping] = getattr(row.group, grouping)
        else:
            out[grouping] = row.group.labels.get(grouping[len(LABEL_PREFIX):])
    out["requests"] = row.requests
    for bucket in INPUT_BUCKETS:
        out[f"input_{bucket}"] = getattr(row.input, bucket)
    for bucket in OUTPUT_BUCKETS:
        out[f"output_{bucket}"] = getattr(row.output, bucket)
    out["total_tokens"] = row.total_tokens
    out["cost_nano_usd"] = row.cost_nano_usd
    out["cost_usd"] = format_usd(row.cost_nano_usd)
    out["unpriced_requests"] = row.unpriced_requests
    out["estimated_requests"] = row.estimated_requests
    out["provider_reported_cost_nano_usd"] = row.provider_reported_cost_nano_usd
    out["provider_reported_cost_usd"] = format_usd(row.provider_reported_cost_nano_usd)
    return out


def render_jsonl(rows: Sequence[pb.UsageSummaryRow], group_by: Sequence[str]) -> str:
    check_groupings(group_by)
    return "".join(orjson.dumps(row_dict(row, group_by)).decode() + "\n" for row in rows)


def render_csv(rows: Sequence[pb.UsageSummaryRow], group_by: Sequence[str]) -> str:
    check_groupings(group_by)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_columns(group_by))
    for row in rows:
        writer.writerow("" if v is None else v for v in row_dict(row, group_by).values())
    return out.getvalue()


def render_table(rows: Sequence[pb.UsageSummaryRow], group_by: Sequence[str]) -> str:
    """Group columns left-aligned, numbers right-aligned; "-" where a record had no such label."""
    check_groupings(group_by)
    header = [*group_by, *(title for title, _ in _TABLE_NUMBERS)]
    body = []
    for row in rows:
        values = row_dict(row, group_by)
        body.append([*("-" if values[g] in (None, "") else str(values[g]) for g in group_by),
                     *(str(values[key]) for _, key in _TABLE_NUMBERS)])
    widths = [max(len(cell) for cell in column) for column in zip(header, *body)]
    groups = len(group_by)

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i < groups else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    lines.extend(line(cells) for cells in body)
    return "\n".join(lines) + "\n"


def render(rows: Sequence[pb.UsageSummaryRow], group_by: Sequence[str], fmt: str = "table") -> str:
    if fmt == "table":
        return render_table(rows, group_by)
    if fmt == "csv":
        return render_csv(rows, group_by)
    if fmt == "jsonl":
        return render_jsonl(rows, group_by)
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def _columns(group_by: Sequence[str]) -> list[str]:
    return list(row_dict(pb.UsageSummaryRow(), group_by))
