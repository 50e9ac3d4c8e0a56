"""`tollway limits` output: each rule window and budget with what is used and what remains."""

from __future__ import annotations

from google.protobuf import json_format

from tollway.service.billing.money import format_usd
from tollway.v1 import completion_pb2 as pb

_PERIOD_NAMES = {pb.BUDGET_PERIOD_DAY: "day", pb.BUDGET_PERIOD_MONTH: "month"}


def render_limits(response: pb.GetLimitsResponse, fmt: str) -> str:
    if fmt == "json":
        return json_format.MessageToJson(response, preserving_proto_field_name=True) + "\n"
    lines: list[str] = []
    if not response.store_reachable:
        lines.append("warning: the limits store did not answer; the used figures below are unknown (shown as 0)")
    if response.rate_limits:
        rows = [["rule", "subject", "requests/min", "tokens/min", "streams", "oldest request frees in"]]
        for r in response.rate_limits:
            rows.append([
                r.rule, r.subject or "(shared)",
                _used_of(r.requests_used, r.requests_per_minute if r.HasField("requests_per_minute") else None),
                _used_of(r.tokens_used, r.tokens_per_minute if r.HasField("tokens_per_minute") else None),
                _used_of(r.streams_open, r.concurrent_streams if r.HasField("concurrent_streams") else None),
                f"{r.requests_free_in.ToTimedelta().total_seconds():.1f}s" if r.HasField("requests_free_in") else "-",
            ])
        lines += _table(rows)
    if response.budgets:
        if lines:
            lines.append("")
        rows = [["budget", "subject", "period", "spent USD", "max USD", "remaining USD", "unpriced calls",
                 "renews at (UTC)"]]
        for b in response.budgets:
            rows.append([
                b.budget, b.subject or "(shared)", _PERIOD_NAMES.get(b.period, "?"), format_usd(b.spent_nano_usd),
                format_usd(b.max_nano_usd), format_usd(b.remaining_nano_usd), str(b.unpriced_calls),
                b.period_end.ToDatetime().strftime("%Y-%m-%d %H:%M"),
            ])
        lines += _table(rows)
    if not response.rate_limits and not response.budgets:
        lines.append("no rate limits or budgets apply")
    return "\n".join(lines) + "\n"


def _used_of(used: int, limit: int | None) -> str:
    return "-" if limit is None else f"{used} of {limit}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
