"""LedgerRecord: one request as the ledger keeps it, and its conversions.

A record is plain data (no IO): it is built once per request, written as one JSON line to
the journal, and inserted as one row. Money is integer nano-USD; latency is milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import grpc
import orjson

from tollway.v1 import completion_pb2 as pb

INPUT_BUCKETS = ("total", "text", "image", "audio", "video", "document", "cache_read", "cache_write_5m",
                 "cache_write_1h", "cache_write_unknown_ttl", "unattributed")
OUTPUT_BUCKETS = ("total", "text", "audio", "image", "reasoning", "unattributed")

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
# Enum names without their prefix, looked up once: the proto's Name() is slow per request.
_WARNING_NAMES = {v.number: v.name.removeprefix("USAGE_WARNING_") for v in pb.UsageWarning.DESCRIPTOR.values}
_TOKEN_CLASS_NAMES = {v.number: v.name.removeprefix("TOKEN_CLASS_") for v in pb.TokenClass.DESCRIPTOR.values}


@dataclass(frozen=True, slots=True)
class InputTokens:
    """The input buckets of pb.InputUsage; total is their exact sum."""

    total: int = 0
    text: int = 0
    image: int = 0
    audio: int = 0
    video: int = 0
    document: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_write_unknown_ttl: int = 0
    unattributed: int = 0


@dataclass(frozen=True, slots=True)
class OutputTokens:
    """The output buckets of pb.OutputUsage; total is their exact sum."""

    total: int = 0
    text: int = 0
    audio: int = 0
    image: int = 0
    reasoning: int = 0
    unattributed: int = 0


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One upstream call; code is the gRPC status code name ("OK", "UNAVAILABLE", ...)."""

    provider: str
    model: str
    code: str
    message: str = ""
    duration_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class CostLine:
    """Tokens of one class times a unit price; token_class without its prefix ("INPUT_TEXT").
    model is the model the tokens were billed to (an advisor model may differ from the record's)."""

    token_class: str
    tokens: int
    unit_price_nano_usd_per_million: int
    amount_nano_usd: int
    model: str = ""


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One request that reached a provider. request_id is unique: a second insert of the
    same id is ignored, which is what makes journal replay safe."""

    request_id: str
    time: datetime
    caller: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    route: str = ""
    provider: str = ""
    model: str = ""
    status: str = "OK"
    attempts: tuple[AttemptRecord, ...] = ()
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    input: InputTokens = InputTokens()
    output: OutputTokens = OutputTokens()
    total_tokens: int = 0
    warnings: tuple[str, ...] = ()
    cost_items: tuple[CostLine, ...] = ()
    # Sum of cost_items; 0 and meaningless when unpriced.
    cost_nano_usd: int = 0
    unpriced: bool = False
    unpriced_reason: str = ""
    provider_cost_nano_usd: int | None = None
    # The catalog entry that priced the request ("provider/model@effective-date").
    price_entry: str = ""
    estimated: bool = False

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("a ledger record needs a request_id")
        if self.time.tzinfo is None:
            raise ValueError("a ledger record's time must be timezone-aware (UTC)")
        if self.time.utcoffset():
            object.__setattr__(self, "time", self.time.astimezone(timezone.utc))
        for name in ("cost_nano_usd", "provider_cost_nano_usd"):
            value = getattr(self, name)
            # Money is integer nano-USD: a float here would be a bug upstream of the ledger.
            if value is not None and type(value) is not int:
                raise TypeError(f"{name} must be an int (nano-USD), got {type(value).__name__}")
        # A private copy: the caller's dict may change after record() returned.
        object.__setattr__(self, "labels", dict(self.labels))

    def to_json(self) -> bytes:
        """One journal line (without the newline)."""
        return orjson.dumps(self, option=orjson.OPT_UTC_Z)

    @classmethod
    def from_json(cls, line: bytes | str) -> LedgerRecord:
        return cls.from_dict(orjson.loads(line))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LedgerRecord:
        """The inverse of to_json's object; missing keys take their defaults, so a journal
        written by an older version still replays."""
        return cls(
            request_id=d["request_id"],
            time=parse_utc(d["time"]),
            caller=d.get("caller", ""),
            labels=d.get("labels") or {},
            route=d.get("route", ""),
            provider=d.get("provider", ""),
            model=d.get("model", ""),
            status=d.get("status", "OK"),
            attempts=tuple(AttemptRecord(**a) for a in d.get("attempts") or ()),
            latency_ms=d.get("latency_ms", 0.0),
            ttft_ms=d.get("ttft_ms"),
            input=InputTokens(**(d.get("input") or {})),
            output=OutputTokens(**(d.get("output") or {})),
            total_tokens=d.get("total_tokens", 0),
            warnings=tuple(d.get("warnings") or ()),
            cost_items=tuple(CostLine(**c) for c in d.get("cost_items") or ()),
            cost_nano_usd=d.get("cost_nano_usd", 0),
            unpriced=d.get("unpriced", False),
            unpriced_reason=d.get("unpriced_reason", ""),
            provider_cost_nano_usd=d.get("provider_cost_nano_usd"),
            price_entry=d.get("price_entry", ""),
            estimated=d.get("estimated", False),
        )

    @classmethod
    def from_protos(
        cls,
        *,
        request_id: str,
        time: datetime,
        caller: str = "",
        labels: Mapping[str, str] = {},  # noqa: B006 - read only, copied by the record
        route: str = "",
        provider: str = "",
        model: str = "",
        status: grpc.StatusCode | str = "OK",
        attempts: Iterable[pb.Attempt] = (),
        latency_ms: float = 0.0,
        ttft_ms: float | None = None,
        usage: pb.Usage | None = None,
        cost: pb.Cost | None = None,
    ) -> LedgerRecord:
        """A record from what the servicer already holds: the response's Usage, Cost and
        Attempts. A cost the provider reported counts from Cost first, then from Usage."""
        usage = usage if usage is not None else pb.Usage()
        cost = cost if cost is not None else pb.Cost()
        i, o = usage.input, usage.output
        provider_cost: int | None = None
        if cost.HasField("provider_reported_nano_usd"):
            provider_cost = cost.provider_reported_nano_usd
        elif usage.provider_reported.HasField("cost_nano_usd"):
            provider_cost = usage.provider_reported.cost_nano_usd
        return cls(
            request_id=request_id,
            time=time,
            caller=caller,
            labels=labels,
            route=route,
            provider=provider,
            model=model,
            status=status.name if isinstance(status, grpc.StatusCode) else status,
            attempts=tuple(attempt_from_proto(a) for a in attempts),
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            input=InputTokens(i.total, i.text, i.image, i.audio, i.video, i.document, i.cache_read,
                              i.cache_write_5m, i.cache_write_1h, i.cache_write_unknown_ttl, i.unattributed),
            output=OutputTokens(o.total, o.text, o.audio, o.image, o.reasoning, o.unattributed),
            total_tokens=usage.total_tokens,
            warnings=tuple(_WARNING_NAMES.get(w, str(w)) for w in usage.warnings),
            cost_items=tuple(
                CostLine(
                    token_class=_TOKEN_CLASS_NAMES.get(item.token_class, str(item.token_class)),
                    tokens=item.tokens,
                    unit_price_nano_usd_per_million=item.unit_price_nano_usd_per_million,
                    amount_nano_usd=item.amount_nano_usd,
                    model=item.model,
                )
                for item in cost.line_items
            ),
            cost_nano_usd=cost.total_nano_usd,
            unpriced=cost.unpriced,
            unpriced_reason=cost.unpriced_reason,
            provider_cost_nano_usd=provider_cost,
            price_entry=cost.price_entry,
            estimated=usage.estimated,
        )


def attempt_from_proto(attempt: pb.Attempt) -> AttemptRecord:
    duration = attempt.duration
    return AttemptRecord(
        provider=attempt.provider,
        model=attempt.model,
        code=_CODE_NAMES.get(attempt.code, str(attempt.code)),
        message=attempt.message,
        duration_ms=duration.seconds * 1000.0 + duration.nanos / 1e6,
    )


def utc_iso(moment: datetime) -> str:
    """Fixed-width UTC text ("2026-05-09T07:35:25.000123Z"): sorts as time does, and its
    first ten characters are the UTC day."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)

