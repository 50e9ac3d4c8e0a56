"""The ledger's table, its migrations, and the row <-> record conversion, for both SQL dialects.

Migrations are history: each entry is applied once, in order, and recorded in
tollway_schema_version. Never edit an applied entry; append a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from .records import (
    INPUT_BUCKETS,
    OUTPUT_BUCKETS,
    AttemptRecord,
    CostLine,
    InputTokens,
    LedgerRecord,
    OutputTokens,
    parse_utc,
    utc_iso,
)

TABLE = "tollway_ledger"
VERSION_TABLE = "tollway_schema_version"

COLUMNS: tuple[str, ...] = (
    "request_id", "time", "caller", "labels", "route", "provider", "model", "status", "attempts",
    "latency_ms", "ttft_ms",
    *(f"input_{b}" for b in INPUT_BUCKETS),
    *(f"output_{b}" for b in OUTPUT_BUCKETS),
    "total_tokens", "warnings", "cost_items", "cost_nano_usd", "unpriced", "unpriced_reason",
    "provider_cost_nano_usd", "price_entry", "estimated",
)
JSON_COLUMNS = frozenset({"labels", "attempts", "warnings", "cost_items"})
# Indexes serve the summary filters: a time range, alone or with one dimension.
_INDEXES = (
    ("time", "time"),
    ("caller_time", "caller, time"),
    ("provider_time", "provider, time"),
    ("model_time", "model, time"),
    ("route_time", "route, time"),
)


def _create_table(json_type: str, time_type: str, bool_type: str, float_type: str) -> str:
    tokens = ",\n".join(f"  {c} BIGINT NOT NULL DEFAULT 0" for c in (
        *(f"input_{b}" for b in INPUT_BUCKETS), *(f"output_{b}" for b in OUTPUT_BUCKETS), "total_tokens"))
    return f"""CREATE TABLE {TABLE} (
  request_id TEXT PRIMARY KEY,
  time {time_type} NOT NULL,
  caller TEXT NOT NULL DEFAULT '',
  labels {json_type} NOT NULL,
  route TEXT NOT NULL DEFAULT '',
  provider TEXT NOT NULL DEFAULT '',
  model TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL,
  attempts {json_type} NOT NULL,
  latency_ms {float_type} NOT NULL,
  ttft_ms {float_type},
{tokens},
  warnings {json_type} NOT NULL,
  cost_items {json_type} NOT NULL,
  cost_nano_usd BIGINT NOT NULL DEFAULT 0,
  unpriced {bool_type} NOT NULL,
  unpriced_reason TEXT NOT NULL DEFAULT '',
  provider_cost_nano_usd BIGINT,
  price_entry TEXT NOT NULL DEFAULT '',
  estimated {bool_type} NOT NULL
)"""


def _indexes() -> list[str]:
    return [f"CREATE INDEX {TABLE}_{name} ON {TABLE} ({cols})" for name, cols in _INDEXES]


# (version, statements). SQLite keeps JSON as TEXT and time as fixed-width UTC text (see utc_iso).
SQLITE_MIGRATIONS: Sequence[tuple[int, Sequence[str]]] = (
    (1, [_create_table("TEXT", "TEXT", "INTEGER", "REAL"), *_indexes()]),
)
POSTGRES_MIGRATIONS: Sequence[tuple[int, Sequence[str]]] = (
    (1, [
        _create_table("JSONB", "TIMESTAMPTZ", "BOOLEAN", "DOUBLE PRECISION"),
        *_indexes(),
        # Label filters are containment tests (labels @> '{"team":"x"}').
        f"CREATE INDEX {TABLE}_labels ON {TABLE} USING GIN (labels jsonb_path_ops)",
    ]),
)


class SchemaTooNew(Exception):
    """The database was migrated by a newer Tollway than this one."""


def pending(migrations: Sequence[tuple[int, Sequence[str]]], current: int) -> list[tuple[int, Sequence[str]]]:
    latest = migrations[-1][0]
    if current > latest:
        raise SchemaTooNew(f"the ledger database has schema version {current}, newer than this Tollway "
                           f"knows ({latest}); upgrade Tollway")
    return [(version, statements) for version, statements in migrations if version > current]


@dataclass(frozen=True)
class Dialect:
    """What differs between SQLite and PostgreSQL in the statements the ledger sends."""

    name: str
    placeholder: str  # "?" or "%s"

    def time_value(self, moment: datetime) -> Any:
        return moment if self.name == "postgresql" else utc_iso(moment)

    def day_expr(self) -> str:
        if self.name == "postgresql":
            return "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        return "substr(time, 1, 10)"

    def label_value_expr(self) -> str:
        """The value of one label key (a parameter), NULL when the record lacks it."""
        if self.name == "postgresql":
            return "labels ->> %s::text"
        return f"(SELECT value FROM json_each({TABLE}.labels) WHERE key = ?)"

    def labels_match(self, labels: dict[str, str]) -> tuple[str, list[Any]]:
        """A condition that the record's labels include every pair."""
        if self.name == "postgresql":
            return "labels @> %s::jsonb", [orjson.dumps(labels).decode()]
        conditions: list[str] = []
        params: list[Any] = []
        for key, value in labels.items():
            conditions.append(f"EXISTS (SELECT 1 FROM json_each({TABLE}.labels) WHERE key = ? AND value = ?)")
            params.extend((key, value))
        return " AND ".join(conditions), params


def _json_field(column: str) -> str:
    """The SQL that reads one column from a record's JSON line (LedgerRecord.to_json) named r."""
    for prefix in ("input_", "output_"):
        if column.startswith(prefix):
            return f"(r->'{prefix[:-1]}'->>'{column[len(prefix):]}')::bigint"
    if column in JSON_COLUMNS:
        return f"r->'{column}'"
    cast = {"time": "timestamptz", "latency_ms": "float8", "ttft_ms": "float8", "total_tokens": "bigint",
            "cost_nano_usd": "bigint", "provider_cost_nano_usd": "bigint", "unpriced": "boolean",
            "estimated": "boolean"}.get(column)
    return f"(r->>'{column}')::{cast}" if cast else f"r->>'{column}'"


# PostgreSQL takes a whole batch as one jsonb parameter made of the records' journal lines: the
# server unpacks it, which costs the gateway a fifth of the CPU of binding 37 values per row.
POSTGRES_INSERT_FROM_JSON = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) "
    f"SELECT {', '.join(_json_field(c) for c in COLUMNS)} FROM jsonb_array_elements(%s::jsonb) AS r "
    "ON CONFLICT (request_id) DO NOTHING"
)

SQLITE = Dialect("sqlite", "?")
POSTGRES = Dialect("postgresql", "%s")


def sqlite_insert_sql(rows: int) -> str:
    one = "(" + ", ".join("?" for _ in COLUMNS) + ")"
    return (f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES " + ", ".join([one] * rows)
            + " ON CONFLICT (request_id) DO NOTHING")


def record_to_row(rec: LedgerRecord) -> tuple[Any, ...]:
    """SQLite values in COLUMNS order: JSON columns as text, time as utc_iso text."""
    dumps = orjson.dumps
    i, o = rec.input, rec.output
    return (
        rec.request_id, utc_iso(rec.time), rec.caller, dumps(rec.labels).decode(), rec.route,
        rec.provider, rec.model, rec.status, dumps(rec.attempts).decode(), rec.latency_ms, rec.ttft_ms,
        i.total, i.text, i.image, i.audio, i.video, i.document, i.cache_read, i.cache_write_5m,
        i.cache_write_1h, i.cache_write_unknown_ttl, i.unattributed,
        o.total, o.text, o.audio, o.image, o.reasoning, o.unattributed,
        rec.total_tokens, dumps(rec.warnings).decode(), dumps(rec.cost_items).decode(), rec.cost_nano_usd,
        rec.unpriced, rec.unpriced_reason, rec.provider_cost_nano_usd, rec.price_entry, rec.estimated,
    )


def row_to_record(row: Sequence[Any]) -> LedgerRecord:
    """The inverse of record_to_row for a `SELECT <COLUMNS>` row from either store."""
    values = dict(zip(COLUMNS, row, strict=True))
    for column in JSON_COLUMNS:
        if isinstance(values[column], str):  # SQLite text; psycopg already parsed jsonb
            values[column] = orjson.loads(values[column])
    moment = values["time"]
    return LedgerRecord(
        request_id=values["request_id"],
        time=parse_utc(moment) if isinstance(moment, str) else parse_utc(moment.isoformat()),
        caller=values["caller"],
        labels=values["labels"],
        route=values["route"],
        provider=values["provider"],
        model=values["model"],
        status=values["status"],
        attempts=tuple(AttemptRecord(**a) for a in values["attempts"]),
        latency_ms=values["latency_ms"],
        ttft_ms=values["ttft_ms"],
        input=InputTokens(*(values[f"input_{b}"] for b in INPUT_BUCKETS)),
        output=OutputTokens(*(values[f"output_{b}"] for b in OUTPUT_BUCKETS)),
        total_tokens=values["total_tokens"],
        warnings=tuple(values["warnings"]),
        cost_items=tuple(CostLine(**c) for c in values["cost_items"]),
        cost_nano_usd=values["cost_nano_usd"],
        unpriced=bool(values["unpriced"]),
        unpriced_reason=values["unpriced_reason"],
        provider_cost_nano_usd=values["provider_cost_nano_usd"],
        price_entry=values["price_entry"],
        estimated=bool(values["estimated"]),
    )
