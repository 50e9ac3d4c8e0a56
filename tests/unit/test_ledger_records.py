"""LedgerRecord: built from the response protos, one JSON line and back, money only as int;
and the [ledger] config table."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tollway.service.ledger import (
    AttemptRecord,
    CostLine,
    InputTokens,
    LedgerConfig,
    LedgerRecord,
    OutputTokens,
)
from tollway.v1 import completion_pb2 as pb

from tests.support.ledger import sample_record

NOW = datetime(2026, 5, 9, 23, 59, 59, 999999, tzinfo=timezone.utc)


def test_a_record_survives_its_journal_line_unchanged():
    rec = sample_record(ttft_ms=210.75, labels={"team": "search", "quote\"d": "ü ✓"})
    line = rec.to_json()
    assert b"\n" not in line
    assert LedgerRecord.from_json(line) == rec


def test_a_journal_line_from_an_older_version_without_newer_fields_still_reads():
    old = (b'{"request_id":"r1","time":"2026-05-09T07:35:25.000001Z","caller":"c","cost_nano_usd":7,'
           b'"cost_items":[{"token_class":"INPUT_TEXT","tokens":7,"unit_price_nano_usd_per_million":1000000,'
           b'"amount_nano_usd":7}]}')
    rec = LedgerRecord.from_json(old)
    assert (rec.request_id, rec.caller, rec.cost_nano_usd, rec.status) == ("r1", "c", 7, "OK")
    assert rec.cost_items == (CostLine("INPUT_TEXT", 7, 1_000_000, 7, model=""),)
    assert rec.time == datetime(2026, 5, 9, 7, 35, 25, 1, tzinfo=timezone.utc)


def test_time_is_kept_in_utc_and_must_say_its_zone():
    local = datetime(2026, 5, 10, 1, 59, 59, 999999, tzinfo=timezone(timedelta(hours=2)))
    assert sample_record(time=local).time == NOW
    assert sample_record(time=local).time.tzinfo == timezone.utc
    with pytest.raises(ValueError, match="timezone-aware"):
        sample_record(time=datetime(2026, 5, 9))


def test_money_is_never_a_float():
    with pytest.raises(TypeError, match="cost_nano_usd must be an int"):
        sample_record(cost_nano_usd=0.5)
    with pytest.raises(TypeError, match="provider_cost_nano_usd must be an int"):
        sample_record(provider_cost_nano_usd=1e3)


def test_a_record_needs_a_request_id():
    with pytest.raises(ValueError, match="request_id"):
        LedgerRecord(request_id="", time=NOW)


def test_labels_are_copied_so_a_later_change_by_the_caller_does_not_reach_the_ledger():
    labels = {"team": "a"}
    rec = sample_record(labels=labels)
    labels["team"] = "b"
    assert rec.labels == {"team": "a"}


def test_from_protos_takes_every_bucket_the_cost_and_the_attempts():
    usage = pb.Usage(
        input=pb.InputUsage(total=66, text=1, image=2, audio=3, video=4, document=5, cache_read=6,
                            cache_write_5m=7, cache_write_1h=8, cache_write_unknown_ttl=9, unattributed=21),
        output=pb.OutputUsage(total=15, text=1, audio=2, image=3, reasoning=4, unattributed=5),
        total_tokens=81,
        warnings=[pb.USAGE_WARNING_CACHE_TTL_UNKNOWN, pb.USAGE_WARNING_INPUT_MODALITY_DETAILS_INCOMPLETE],
        estimated=True,
    )
    cost = pb.Cost(
        line_items=[pb.CostLineItem(token_class=pb.TOKEN_CLASS_CACHE_WRITE_1H, tokens=8,
                                    unit_price_nano_usd_per_million=6_000_000_000, amount_nano_usd=48_000,
                                    model="claude-sonnet-4")],
        total_nano_usd=48_000,
        provider_reported_nano_usd=50_000,
        price_entry="anthropic/claude-sonnet-4@2026-01-01",
    )
    attempts = [
        pb.Attempt(provider="anthropic", model="claude-sonnet-4", code=14, message="overloaded",
                   duration=Duration(seconds=1, nanos=250_000_000)),
        pb.Attempt(provider="anthropic", model="claude-sonnet-4", code=0, duration=Duration(nanos=500_000)),
    ]
    rec = LedgerRecord.from_protos(
        request_id="r1", time=NOW, caller="team-a", labels={"team": "x"}, route="smart", provider="anthropic",
        model="claude-sonnet-4", status=grpc.StatusCode.OK, attempts=attempts, latency_ms=1300.5, ttft_ms=None,
        usage=usage, cost=cost)
    assert rec.input == InputTokens(66, 1, 2, 3, 4, 5, 6, 7, 8, 9, 21)
    assert rec.output == OutputTokens(15, 1, 2, 3, 4, 5)
    assert rec.total_tokens == 81
    assert rec.warnings == ("CACHE_TTL_UNKNOWN", "INPUT_MODALITY_DETAILS_INCOMPLETE")
    assert rec.estimated is True
    assert rec.cost_items == (CostLine("CACHE_WRITE_1H", 8, 6_000_000_000, 48_000, "claude-sonnet-4"),)
    assert (rec.cost_nano_usd, rec.unpriced, rec.provider_cost_nano_usd) == (48_000, False, 50_000)
    assert rec.price_entry == "anthropic/claude-sonnet-4@2026-01-01"
    assert rec.attempts == (AttemptRecord("anthropic", "claude-sonnet-4", "UNAVAILABLE", "overloaded", 1250.0),
                            AttemptRecord("anthropic", "claude-sonnet-4", "OK", "", 0.5))
    assert rec.status == "OK"


def test_from_protos_marks_an_unpriced_model_and_falls_back_to_the_usage_reported_cost():
    usage = pb.Usage(provider_reported=pb.ProviderReportedUsage(cost_nano_usd=1234))
    cost = pb.Cost(unpriced=True, unpriced_reason="no price for mixrouter/new-model")
    rec = LedgerRecord.from_protos(request_id="r2", time=NOW, status="CANCELLED", usage=usage, cost=cost)
    assert (rec.unpriced, rec.unpriced_reason) == (True, "no price for mixrouter/new-model")
    assert rec.provider_cost_nano_usd == 1234
    assert rec.status == "CANCELLED"
    assert LedgerRecord.from_protos(request_id="r3", time=NOW).provider_cost_nano_usd is None


def test_config_from_a_ledger_table(tmp_path: Path):
    config = LedgerConfig.from_table({"path": str(tmp_path / "l.db"), "fsync_before_ack": True, "queue_size": 50,
                                      "insert_timeout_s": 2})
    assert config.backend == "sqlite"
    assert config.sqlite_path == tmp_path / "l.db"
    assert config.journal_path == tmp_path / "l.db.journal"
    assert (config.fsync_before_ack, config.queue_size, config.insert_timeout_s) == (True, 50, 2.0)
    pg = LedgerConfig.from_table({"dsn": "postgresql://billing:s3cret@db.internal/ledger"})
    assert pg.backend == "postgresql"
    assert pg.describe() == "PostgreSQL postgresql://billing:***@db.internal/ledger"


def test_the_default_sqlite_file_is_in_the_state_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert LedgerConfig().sqlite_path == tmp_path / "tollway" / "ledger.sqlite3"
    assert LedgerConfig().journal_path == tmp_path / "tollway" / "ledger.sqlite3.journal"


@pytest.mark.parametrize(("table", "message"), [
    ({"dsn": "mysql://x"}, 'ledger.dsn must be a "postgresql://..." URL'),
    ({"queue_size": 0}, "ledger.queue_size must be a positive integer"),
    ({"queue_size": 1.5}, "ledger.queue_size must be a positive integer"),
    ({"insert_timeout_s": "5"}, "ledger.insert_timeout_s must be a positive number"),
    ({"fsync_before_ack": 1}, "ledger.fsync_before_ack must be true or false"),
    ({"path": ""}, "ledger.path must be a non-empty string"),
    ({"pth": "x"}, r"unknown key\(s\) in \[ledger\]: pth"),
])
def test_config_errors_name_the_key(table, message):
    with pytest.raises(ValueError, match=message):
        LedgerConfig.from_table(table)
