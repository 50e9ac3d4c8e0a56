"""Calls through a gateway with a ledger, and the records they leave."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
from grpc_status import rpc_status
from tollway.service.ledger import (
    AttemptRecord,
    CostLine,
    InputTokens,
    LedgerRecord,
    OutputTokens,
)
from tollway.service.ledger.records import INPUT_BUCKETS, OUTPUT_BUCKETS
from tollway.service.ledger.schema import COLUMNS, TABLE, row_to_record
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, Client, mixrouter_config
from tests.support.seed import SEED_TEXT
from tests.support.upstream import FakeUpstream

Code = grpc.StatusCode

REQUEST_ID_KEY = "tollway-request-id"


BACKUP_TEST_KEY = "tw-test-backup-relay-key-5e0c7a19"


ALICE_KEY = "tw-test-ledger-alice-0c1d2e3f4a"


BOB_KEY = "tw-test-ledger-bob-9f8e7d6c5b"


ENVIRON = {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY, "BACKUP_API_KEY": BACKUP_TEST_KEY}


WAIT_S = 5.0


ALICE_LABELS = {"team": "search", "cost_center": "cc-7"}


REQUEST_LABELS = {"team": "ads", "feature": "chat"}


MERGED_LABELS = {"team": "search", "cost_center": "cc-7", "feature": "chat"}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def gateway_config(upstream: FakeUpstream, **routing: Any) -> dict[str, Any]:
    """MixRouter plus a second relay of the same kind ("backup"), two callers, and two routes:
    "fast" (one target) and "resilient" (MixRouter first, the backup relay as its fallback)."""
    config = mixrouter_config(upstream)
    config["routing"].update(routing)
    config["providers"]["backup"] = {"kind": "mixrouter", "base_url": f"{upstream.base_url}/v1",
                                     "api_key_env": "BACKUP_API_KEY"}
    config["callers"] = {
        "alice": {"key_sha256": sha(ALICE_KEY), "labels": ALICE_LABELS},
        "bob": {"key_sha256": sha(BOB_KEY), "allowed_models": ["fast"]},
    }
    config["routes"] = [
        {"name": "fast", "targets": [{"provider": "mixrouter", "model": "gemini-2.0-flash"}]},
        {"name": "resilient", "targets": [{"provider": "mixrouter", "model": "gemini-2.0-flash", "priority": 1},
                                          {"provider": "backup", "model": "gemini-2.0-flash", "priority": 2}]},
    ]
    return config


def ledger_path(client: Client) -> Path:
    return client.gateway.runtime.ledger.config.sqlite_path


def read_records(path: Path) -> list[LedgerRecord]:
    """Every row of a ledger file, read straight from SQLite (not through the gateway)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE}").fetchall()
    finally:
        conn.close()
    return [row_to_record(row) for row in rows]


async def flushed_records(client: Client) -> list[LedgerRecord]:
    assert await client.gateway.runtime.ledger.flush(WAIT_S), "the ledger did not reach its database"
    return read_records(ledger_path(client))


async def only_record(client: Client) -> LedgerRecord:
    records = await flushed_records(client)
    assert len(records) == 1, [r.request_id for r in records]
    return records[0]


async def until_records(client: Client, count: int) -> list[LedgerRecord]:
    """Poll (bounded) until the ledger holds count records: for records the gateway writes after
    the caller has gone (a cancel reaches the gateway after the client's call returns)."""
    async def poll() -> list[LedgerRecord]:
        while True:
            records = await flushed_records(client)
            if len(records) >= count:
                return records
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(poll(), WAIT_S)


def request_id_of(metadata) -> str:
    [value] = [v for k, v in metadata if k == REQUEST_ID_KEY]
    assert len(value) == 32
    return value


def failure_of(error: grpc.aio.AioRpcError) -> pb.CallFailure:
    status = rpc_status.from_call(error)
    assert status is not None, "the status carries no details"
    [detail] = [d for d in status.details if d.Is(pb.CallFailure.DESCRIPTOR)]
    failure = pb.CallFailure()
    detail.Unpack(failure)
    return failure


_CODE_NAMES = {c.value[0]: c.name for c in Code}


_WARNINGS = {v.number: v.name.removeprefix("USAGE_WARNING_") for v in pb.UsageWarning.DESCRIPTOR.values}


_CLASSES = {v.number: v.name.removeprefix("TOKEN_CLASS_") for v in pb.TokenClass.DESCRIPTOR.values}


def assert_usage_matches(record: LedgerRecord, usage: pb.Usage) -> None:
    """Every bucket, the total, the warnings and `estimated`, bucket by bucket."""
    assert record.input == InputTokens(**{b: getattr(usage.input, b) for b in INPUT_BUCKETS})
    assert record.output == OutputTokens(**{b: getattr(usage.output, b) for b in OUTPUT_BUCKETS})
    assert record.total_tokens == usage.total_tokens == record.input.total + record.output.total
    assert record.warnings == tuple(_WARNINGS[w] for w in usage.warnings)
    assert record.estimated == usage.estimated


def assert_cost_matches(record: LedgerRecord, cost: pb.Cost) -> None:
    assert record.cost_items == tuple(
        CostLine(_CLASSES[i.token_class], i.tokens, i.unit_price_nano_usd_per_million, i.amount_nano_usd, i.model)
        for i in cost.line_items)
    assert record.cost_nano_usd == cost.total_nano_usd == sum(i.amount_nano_usd for i in record.cost_items)
    assert (record.unpriced, record.unpriced_reason) == (cost.unpriced, cost.unpriced_reason)
    assert record.price_entry == cost.price_entry


def attempts_of(record: LedgerRecord) -> list[tuple[str, str, str, str]]:
    return [(a.provider, a.model, a.code, a.message) for a in record.attempts]


def assert_attempts_match(record: LedgerRecord, attempts) -> None:
    """The record's attempts are the ones the caller was told of, durations included."""
    assert record.attempts == tuple(
        AttemptRecord(a.provider, a.model, _CODE_NAMES[a.code], a.message,
                      a.duration.seconds * 1000.0 + a.duration.nanos / 1e6)
        for a in attempts)
    for attempt in record.attempts:
        assert 0 < attempt.duration_ms <= record.latency_ms


def assert_timed(record: LedgerRecord, before: datetime, after: datetime) -> None:
    assert before <= record.time <= after
    assert record.latency_ms > 0


def completion(model: str, usage: dict, text: str = "An office, two people.") -> dict:
    return {"id": "chatcmpl-ledger-1", "object": "chat.completion", "created": 1766735188, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage}


GEMINI_USAGE = {
    "prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 200, "text_tokens": 700, "image_tokens": 300, "audio_tokens": 200},
    "completion_tokens_details": {"text_tokens": 250, "reasoning_tokens": 50, "audio_tokens": 0},
    "cost": 0.000321,
}


CLAUDE_USAGE = {
    "prompt_tokens": 40, "completion_tokens": 25, "total_tokens": 65,
    "prompt_tokens_details": {"cached_tokens": 1000, "text_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
    "claude_cache_creation_5_m_tokens": 300, "claude_cache_creation_1_h_tokens": 400,
    "cost": 0.0025,
}


def text_request(model: str, text: str = SEED_TEXT, *, stream: bool = False, labels=REQUEST_LABELS):
    kind = pb.StreamCompleteRequest if stream else pb.CompleteRequest
    return kind(model=model, labels=labels,
                messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=text)])])


def stream_chunk(text: str | None = None, *, finish: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if usage is not None else [
        {"index": 0, "delta": {} if text is None else {"content": text}, "finish_reason": finish}]
    return {"id": "chatcmpl-ledger-s", "object": "chat.completion.chunk", "created": 1766735200,
            "model": "gemini-2.0-flash", "choices": choices, "usage": usage}


def now() -> datetime:
    return datetime.now(timezone.utc)
