"""Normalized usage: the rules of the billing contract, written once for every provider.

Adapters say only what their provider stated, in a ReportedUsage (None or absent means
"not stated"); normalize() applies the provider-neutral rules: cache figures come out of
the modality buckets, what no figure covers goes to `unattributed` (with a warning only
when the provider stated a modality breakdown that does not add up to its total),
sub-counts that exceed their total are clamped with a warning, and every bucket is >= 0
and sums exactly to its total.

Figures that are not token counts (a string, a negative or fractional number, more than
MAX_TOKEN_FIGURE) are refused: ReportedUsage.figure() reads counts out of a provider's JSON
and notes the ones it refuses, normalize() checks every figure an adapter set once more,
and either way the figure stays out of the buckets, is named in Usage.refused_figures with
USAGE_WARNING_FIGURE_OUT_OF_RANGE, and billing leaves the response unpriced.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tollway.v1 import completion_pb2 as pb

W = pb.UsageWarning

# Rule 4: with no per-modality cache breakdown, cache figures come out of these in order.
CACHE_DEDUCTION_ORDER = ("text", "image", "video", "document", "audio")
INPUT_MODALITIES = CACHE_DEDUCTION_ORDER
OUTPUT_MODALITIES = ("text", "audio", "image")

# The largest token figure believed: a thousand times the largest context window there is, so
# no real response comes near it, while sums of such figures over billions of ledger records
# still fit the int64 columns and protobuf fields they go to.
MAX_TOKEN_FIGURE = 10**12
INT64_MAX = (1 << 63) - 1
# A refused figure's name and value are quoted up to this many characters each (they may be
# anything a server sent), and so many figures are named: the names reach the response, the ledger and the unpriced reason.
_QUOTED_CHARS = 40
_NAMED_REFUSALS = 8
_COUNT_FIELDS = ("input_total", "cache_read", "cache_write_5m", "cache_write_1h", "cache_write_unknown_ttl",
                 "output_total", "reasoning", "provider_total", "tool_use_prompt_tokens",
                 "accepted_prediction_tokens", "rejected_prediction_tokens")
_OPTIONAL_FIELDS = ("provider_total", "tool_use_prompt_tokens", "accepted_prediction_tokens",
                    "rejected_prediction_tokens")
_BY_MODALITY_FIELDS = ("input_by_modality", "cache_read_by_modality", "output_by_modality")


def is_token_count(value: Any) -> bool:
    """A whole, non-negative number of tokens no larger than MAX_TOKEN_FIGURE (12.0 counts, 12.5
    and "12" do not)."""
    if type(value) is int:  # the common case, without the checks below
        return 0 <= value <= MAX_TOKEN_FIGURE
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return False
    return 0 <= value <= MAX_TOKEN_FIGURE


def _quoted(name: str, value: Any) -> str:
    return f"{_shortened(name)}={_shortened(repr(value))}"


def _shortened(text: str) -> str:
    return text if len(text) <= _QUOTED_CHARS else text[:_QUOTED_CHARS] + "..."


@dataclass
class ReportedUsage:
    """What one provider response stated, already in the provider-neutral sense of each figure.

    input_total includes cache reads and writes; output_total includes reasoning. The
    adapter resolves its provider's "what includes what" before filling this in.
    """

    input_total: int = 0
    # Input per modality as stated. These may include cached tokens (OpenAI's details
    # do); normalize() takes the cache figures out.
    input_by_modality: Mapping[str, int] = field(default_factory=dict)
    cache_read: int = 0
    # The provider's own split of cache reads by modality (Gemini cacheTokensDetails).
    cache_read_by_modality: Mapping[str, int] | None = None
    # False for a provider whose modality figures already exclude cache reads.
    modalities_include_cache_reads: bool = True
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_write_unknown_ttl: int = 0
    output_total: int = 0
    output_by_modality: Mapping[str, int] = field(default_factory=dict)
    reasoning: int = 0
    # Figures kept beside the buckets.
    provider_total: int | None = None
    tool_use_prompt_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None
    cost_nano_usd: int | None = None
    # Provider-specific findings (REASONING_EXCLUDED_FROM_COMPLETION, ...).
    warnings: set[pb.UsageWarning] = field(default_factory=set)
    estimated: bool = False
    # Figures the provider stated that are not token counts, as "name=value" (see figure()).
    refused: list[str] = field(default_factory=list)

    def figure(self, mapping: Any, key: str) -> int:
        """The token count `mapping[key]` as the provider stated it; 0 when absent or null, and
        0 for a value that is not a count (is_token_count), which is noted in `refused`."""
        stated = self.stated_figure(mapping, key)
        return stated if stated is not None else 0

    def stated_figure(self, mapping: Any, key: str) -> int | None:
        """As figure(), but None when absent, null or refused (figures kept beside the buckets)."""
        # A decoded JSON object is a dict: the exact check first, the ABC's (slow) only if not.
        if type(mapping) is not dict and not isinstance(mapping, Mapping):
            return None
        value = mapping.get(key)
        if value is None:
            return None
        if not is_token_count(value):
            self.refused.append(_quoted(key, value))
            return None
        return int(value)


def normalize(reported: ReportedUsage) -> pb.Usage:
    reported, refused = _refusing_what_is_not_a_count(reported)
    warnings = set(reported.warnings)
    if refused:
        warnings.add(W.USAGE_WARNING_FIGURE_OUT_OF_RANGE)
    usage = pb.Usage(estimated=reported.estimated)
    _fill_input(usage.input, reported, warnings)
    _fill_output(usage.output, reported, warnings)
    usage.total_tokens = usage.input.total + usage.output.total
    if reported.provider_total is not None and reported.provider_total != usage.total_tokens:
        warnings.add(W.USAGE_WARNING_PROVIDER_TOTAL_MISMATCH)
    if usage.input.cache_write_unknown_ttl > 0:
        warnings.add(W.USAGE_WARNING_CACHE_TTL_UNKNOWN)
    usage.warnings.extend(sorted(warnings))
    usage.refused_figures.extend(refused)
    _fill_provider_reported(usage.provider_reported, reported)
    return usage


def _refusing_what_is_not_a_count(r: ReportedUsage) -> tuple[ReportedUsage, list[str]]:
    """A copy of r with every figure that is not a count (is_token_count) set to 0 (None for
    the figures kept beside the buckets), and the names and values of those figures: what the
    adapter refused while reading, then what it set (a plugin's own arithmetic included)."""
    refused = list(r.refused)
    changes: dict[str, Any] = {}
    for name in _COUNT_FIELDS:
        value = getattr(r, name)
        if value is None or type(value) is int and 0 <= value <= MAX_TOKEN_FIGURE:
            continue
        if is_token_count(value):
            changes[name] = int(value)  # 12.0: protobuf takes only an int
        else:
            refused.append(_quoted(name, value))
            changes[name] = None if name in _OPTIONAL_FIELDS else 0
    for name in _BY_MODALITY_FIELDS:
        by_modality: Mapping[str, Any] | None = getattr(r, name)
        if not by_modality or all(v is None or type(v) is int and 0 <= v <= MAX_TOKEN_FIGURE
                                  for v in by_modality.values()):
            continue
        kept: dict[str, int | None] = {}
        for modality, value in by_modality.items():
            if value is None or is_token_count(value):
                kept[modality] = None if value is None else int(value)
            else:
                refused.append(_quoted(f"{name}[{modality}]", value))
        changes[name] = kept
    cost = r.cost_nano_usd
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int) or abs(cost) > INT64_MAX):
        refused.append(_quoted("cost_nano_usd", cost))
        changes["cost_nano_usd"] = None
    if len(refused) > _NAMED_REFUSALS:
        refused[_NAMED_REFUSALS:] = [f"and {len(refused) - _NAMED_REFUSALS} more"]
    return (replace(r, **changes) if changes else r), refused


def _fill_input(bucket: pb.InputUsage, r: ReportedUsage, warnings: set[pb.UsageWarning]) -> None:
    total = max(r.input_total, 0)
    # Cache figures are taken from the total first; what remains is fresh input.
    cache = _clamp_in_order(
        total,
        [
            ("cache_read", r.cache_read),
            ("cache_write_5m", r.cache_write_5m),
            ("cache_write_1h", r.cache_write_1h),
            ("cache_write_unknown_ttl", r.cache_write_unknown_ttl),
        ],
        warnings,
    )
    fresh_total = total - sum(cache.values())

    stated = {m: max(r.input_by_modality.get(m) or 0, 0) for m in INPUT_MODALITIES}
    if r.modalities_include_cache_reads:
        # Rule 4: cache reads come out of the modality figures, by the provider's own
        # per-modality breakdown when it has one, otherwise in CACHE_DEDUCTION_ORDER.
        if r.cache_read_by_modality is not None:
            for m in stated:
                stated[m] = max(stated[m] - max(r.cache_read_by_modality.get(m) or 0, 0), 0)
        else:
            left = cache["cache_read"]
            for m in CACHE_DEDUCTION_ORDER:
                take = min(stated[m], left)
                stated[m] -= take
                left -= take
    fresh = _clamp_in_order(fresh_total, list(stated.items()), warnings)
    unattributed = fresh_total - sum(fresh.values())
    if unattributed > 0 and _breakdown_stated(r.input_by_modality):
        warnings.add(W.USAGE_WARNING_INPUT_MODALITY_DETAILS_INCOMPLETE)

    bucket.total = total
    for name, value in {**cache, **fresh}.items():
        setattr(bucket, name, value)
    bucket.unattributed = unattributed


def _fill_output(bucket: pb.OutputUsage, r: ReportedUsage, warnings: set[pb.UsageWarning]) -> None:
    total = max(r.output_total, 0)
    parts = _clamp_in_order(
        total,
        [("reasoning", r.reasoning)] + [(m, r.output_by_modality.get(m, 0) or 0) for m in OUTPUT_MODALITIES],
        warnings,
    )
    unattributed = total - sum(parts.values())
    if unattributed > 0 and _breakdown_stated(r.output_by_modality):
        warnings.add(W.USAGE_WARNING_OUTPUT_MODALITY_DETAILS_INCOMPLETE)
    bucket.total = total
    for name, value in parts.items():
        setattr(bucket, name, value)
    bucket.unattributed = unattributed


def _breakdown_stated(by_modality: Mapping[str, int | None]) -> bool:
    """Whether the provider stated a modality breakdown at all (USAGE.md rule 1).

    Relays serialize every unset count as 0 (rule 2), so a breakdown of zeros, like OpenAI's
    `prompt_tokens_details: {audio_tokens: 0}` on a text answer, is no breakdown: its figures
    go to `unattributed` without a warning, which is normal for such a provider. Reasoning and
    cache figures are not modalities and never make a breakdown.
    """
    return any((value or 0) > 0 for value in by_modality.values())


def _clamp_in_order(total: int, figures: list[tuple[str, int]], warnings: set[pb.UsageWarning]) -> dict[str, int]:
    """Give each figure what it asks for, in order, until total runs out (then warn)."""
    out: dict[str, int] = {}
    left = total
    for name, value in figures:
        value = max(value or 0, 0)
        granted = min(value, left)
        if granted < value:
            warnings.add(W.USAGE_WARNING_DETAILS_EXCEED_TOTAL)
        out[name] = granted
        left -= granted
    return out


def _fill_provider_reported(out: pb.ProviderReportedUsage, r: ReportedUsage) -> None:
    for name in (
        "provider_total",
        "tool_use_prompt_tokens",
        "accepted_prediction_tokens",
        "rejected_prediction_tokens",
        "cost_nano_usd",
    ):
        value = getattr(r, name)
        if value is not None:
            setattr(out, "total_tokens" if name == "provider_total" else name, value)


def stream_usage(reported: ReportedUsage | None, *, finished: bool) -> pb.Usage | None:
    """A stream decoder's final usage: the provider's figures, marked estimated when the stream
    never reached its end; None when it sent none (the engine estimates, usage/estimate.py)."""
    if reported is None:
        return None
    reported.estimated = reported.estimated or not finished
    return normalize(reported)
