"""The `[limits]` config table: how big and how many, checked before anything else is done.

The model name and labels end up in the log line and the ledger record of the call, so they
are bounded here, before the caller is even authenticated; the request's serialized size
covers its text, which no media limit counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import grpc

from tollway.service.config.keys import reject_unknown
from tollway.service.errors import GatewayError, invalid_argument
from tollway.service.plugins.adapter import MEDIA_PARTS, AnyRequest
from tollway.v1 import completion_pb2 as pb

MIB = 1024 * 1024
# Shown of an over-long label key: enough to recognize it, never the whole of it.
_KEY_PREVIEW = 32


@dataclass(frozen=True)
class RequestLimits:
    # The serialized request, text and inline media included; gRPC's receive limit follows it.
    max_request_bytes: int = 64 * MIB
    # Every part that is not media (text, tool calls and results, reasoning), serialized. 16 MiB is
    # about 4 million tokens, twice the largest context window offered today: text beyond it can
    # only fail upstream, after the gateway held it (and its JSON copy) in memory.
    max_text_bytes: int = 16 * MIB
    max_labels: int = 64
    max_label_key_chars: int = 64
    max_label_value_chars: int = 256
    max_model_chars: int = 256
    # Completion RPCs served at once; more are refused with RESOURCE_EXHAUSTED. Read at start-up.
    max_concurrent_rpcs: int = 1000

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> "RequestLimits":
        known = {f.name for f in fields(cls)}
        reject_unknown(table, known, "in [limits]")
        for name, value in table.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"limits.{name} must be an integer >= 1")
        limits = cls(**table)
        if limits.max_request_bytes < 1024:
            raise ValueError("limits.max_request_bytes must be at least 1024")
        return limits


def check_request_limits(request: AnyRequest, limits: RequestLimits) -> None:
    """INVALID_ARGUMENT naming the limit's key and value; needs no caller, provider or network."""
    _check_model_and_labels(request, limits)
    text = sum(part.ByteSize() for message in request.messages for part in message.parts
               if part.WhichOneof("content") not in MEDIA_PARTS)
    if text > limits.max_text_bytes:
        raise invalid_argument("messages", f"text parts total {text} bytes; the limit is {limits.max_text_bytes} "
                                           f"(limits.max_text_bytes)")
    size = request.ByteSize()
    if size > limits.max_request_bytes:
        raise invalid_argument("request", f"is {size} bytes serialized; the limit is {limits.max_request_bytes} "
                                          f"(limits.max_request_bytes)")


def check_limits_request(request: pb.GetLimitsRequest, limits: RequestLimits) -> None:
    """The model and labels a GetLimits call asks about, bounded as a completion's are."""
    _check_model_and_labels(request, limits)


def _check_model_and_labels(request: AnyRequest | pb.GetLimitsRequest, limits: RequestLimits) -> None:
    if len(request.model) > limits.max_model_chars:
        raise invalid_argument("model", f"is {len(request.model)} characters; the limit is "
                                        f"{limits.max_model_chars} (limits.max_model_chars)")
    if len(request.labels) > limits.max_labels:
        raise invalid_argument("labels", f"{len(request.labels)} labels; the limit is {limits.max_labels} "
                                         f"(limits.max_labels)")
    for key, value in request.labels.items():
        shown = key[:_KEY_PREVIEW] + ("..." if len(key) > _KEY_PREVIEW else "")
        if len(key) > limits.max_label_key_chars:
            raise invalid_argument("labels", f"key {shown!r} is {len(key)} characters; the limit is "
                                             f"{limits.max_label_key_chars} (limits.max_label_key_chars)")
        if len(value) > limits.max_label_value_chars:
            raise invalid_argument(f"labels[{shown!r}]", f"is {len(value)} characters; the limit is "
                                                         f"{limits.max_label_value_chars} (limits.max_label_value_chars)")


def grpc_receive_limit(limits: RequestLimits) -> int:
    """gRPC's own receive limit: a little over ours, so a request just over it gets the message
    naming limits.max_request_bytes; far over, gRPC refuses it unread (RESOURCE_EXHAUSTED)."""
    return limits.max_request_bytes + MIB


class RpcSlots:
    """Completion RPCs in progress, against limits.max_concurrent_rpcs."""

    __slots__ = ("limit", "in_use")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def take(self) -> None:
        if self.in_use >= self.limit:
            raise GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the gateway is serving its limit of {self.limit} calls at once "
                               f"(limits.max_concurrent_rpcs); retry with backoff")
        self.in_use += 1

    def give_back(self) -> None:
        self.in_use -= 1
