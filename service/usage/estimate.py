"""The one place where usage an upstream never sent is estimated.

Adapters never estimate: they leave `usage` unset when the provider stated none, and a stream
decoder says how many bytes of billed output it saw (`StreamDecoder.output_bytes`, thinking
included). The engine, and the gateway for a stream its caller abandoned, turn that into
figures here. Figures made here are marked `estimated` and carry USAGE_MISSING, so billing can
tell them from what a provider reported.
"""

from __future__ import annotations

from collections.abc import Iterable

from tollway.v1 import completion_pb2 as pb

from .normalize import ReportedUsage, W, normalize

# About four bytes of UTF-8 a token: a tokenizer-free figure that is honest about being one.
BYTES_PER_TOKEN = 4


def estimate_tokens(text_bytes: int) -> int:
    return (text_bytes + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def request_text_bytes(request: pb.CompleteRequest | pb.StreamCompleteRequest) -> int:
    """UTF-8 size of a request's text parts: what an estimate can honestly count (media sizes
    say little about their token counts)."""
    return sum(len(p.text.encode()) for m in request.messages for p in m.parts if p.WhichOneof("content") == "text")


def answer_bytes(choices: Iterable[pb.Choice]) -> int:
    """UTF-8 size of the visible text of a unary answer."""
    return sum(len(p.text.encode()) for c in choices for p in c.message.parts if p.WhichOneof("content") == "text")


def estimated_usage(request: pb.CompleteRequest | pb.StreamCompleteRequest, output_bytes: int) -> pb.Usage:
    """Usage for an exchange the upstream sent no figures for: input from the request's text,
    output from the bytes of output seen."""
    return normalize(ReportedUsage(
        input_total=estimate_tokens(request_text_bytes(request)),
        output_total=estimate_tokens(output_bytes),
        warnings={W.USAGE_WARNING_USAGE_MISSING},
        estimated=True,
    ))
