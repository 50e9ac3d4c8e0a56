"""Normalized usage: the rules of the billing contract, written once for every provider.

Adapters say only what their provider stated, in a ReportedUsage (None or absent means
"not stated"); normalize() applies the provider-neutral rules: cache figures come out of
the modality buckets, what no figure covers goes to `unattributed` (with a warning only
when the provider stated a modality breakdown that does not add up to its total),
sub-counts that exceed their total are clamped with a warning, and every bucket is >= 0
and sums exactly to its total.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tollway.v1 import completion_pb2 as pb

W = pb.UsageWarning

# Rule 4: with no per-modality cache breakdown, cache figures come out of these in order.
CACHE_DEDUCTION_ORDER = ("text", "image", "video", "document", "audio")
INPUT_MODALITIES = CACHE_DEDUCTION_ORDER
OUTPUT_MODALITIES = ("text", "audio", "image")


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


def normalize(reported: ReportedUsage) -> pb.Usage:
    warnings = set(reported.warnings)
    usage = pb.Usage(estimated=reported.estimated)
    _fill_input(usage.input, reported, warnings)
    _fill_output(usage.output, reported, warnings)
    usage.total_tokens = usage.input.total + usage.output.total
    if reported.provider_total is not None and reported.provider_total != usage.total_tokens:
        warnings.add(W.USAGE_WARNING_PROVIDER_TOTAL_MISMATCH)
    if usage.input.cache_write_unknown_ttl > 0:
        warnings.add(W.USAGE_WARNING_CACHE_TTL_UNKNOWN)
    usage.warnings.extend(sorted(warnings))
    _fill_provider_reported(usage.provider_reported, reported)
    return usage


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
