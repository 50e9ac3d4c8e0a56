"""What the metrics of a set of answers must add up to."""

from __future__ import annotations

from collections.abc import Iterable

from tollway.v1 import completion_pb2 as pb


def tokens_by_type(usages: Iterable[pb.Usage]) -> dict[str, int]:
    """Tokens per gen_ai_token_type, as the gateway counts them from the normalized usage."""
    usages = list(usages)
    return {
        "input": sum(u.input.total for u in usages),
        "output": sum(u.output.total for u in usages),
        "cache_read": sum(u.input.cache_read for u in usages),
        "cache_write": sum(u.input.cache_write_5m + u.input.cache_write_1h + u.input.cache_write_unknown_ttl
                           for u in usages),
        "reasoning": sum(u.output.reasoning for u in usages),
    }
