"""Ending an RPC with an error status without raising.

`context.abort()` raises, and grpc.aio keeps the exception on the call's state until a later
failing call replaces it. Through its traceback that exception holds every frame of the
handler, and with them the request: one refused 48 MB request stayed in memory for as long as
no other call failed. Setting the code, details and trailers and returning sends the same
status and keeps nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from tollway.service.errors import GatewayError


def end_with_status(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, details: str,
                    trailing_metadata: Sequence[tuple[str, str | bytes]] = ()) -> None:
    """The handler must return right after this (None for a unary handler)."""
    context.set_code(code)
    context.set_details(details)
    context.set_trailing_metadata(tuple(trailing_metadata))


def end_with_error(context: grpc.aio.ServicerContext[Any, Any], err: GatewayError,
                   trailing_metadata: Sequence[tuple[str, str | bytes]] = ()) -> None:
    """err as its status, rich details included, its message bounded like every other."""
    status = err.to_status()
    end_with_status(context, status.code, status.details, tuple(status.trailing_metadata) + tuple(trailing_metadata))
