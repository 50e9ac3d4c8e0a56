"""Sending a stream's messages to its caller, with a limit on how long one may wait.

grpc.aio's context.write() waits for the caller's flow-control window: a caller that stops
reading blocks it, and with it the upstream connection the stream holds, for ever. A stream
is ended when one message has waited server.stream_send_timeout_s.

One timer per message (asyncio.timeout around each write) cost ~7 us, ~0.15 ms of CPU per
20-chunk stream; instead one check runs per stream every quarter of the limit (at most every
second), and a write costs two assignments. A stream is ended between the limit and the
limit plus one check interval after its message began to wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any

import grpc
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # no stubs for the core module

from tollway.service.errors import GatewayError
from tollway.v1 import completion_pb2 as pb

# What grpc.aio raises when the transport refuses a write because the caller has gone (the
# call was cancelled or its deadline passed while a message was on its way).
_WRITE_REFUSED: type[Exception] = cygrpc.ExecuteBatchError


class CallerGone(Exception):
    """A stream message could not be written: the call ended under it."""


class SendWatch:
    """`async with SendWatch(limit, on_expiry) as watch: ... await watch.send(context, message)`.

    When a message waits longer than the limit, the block is left with the GatewayError that
    on_expiry() returns (the code inside sees a cancellation at its write, as with any timeout)."""

    __slots__ = ("limit_s", "_on_expiry", "_interval", "_loop", "_timeout", "_handle", "_since", "_expired")

    def __init__(self, limit_s: float, on_expiry: Callable[[], GatewayError]) -> None:
        self.limit_s = limit_s
        self._on_expiry = on_expiry
        self._interval = min(1.0, limit_s / 4)
        self._loop = asyncio.get_running_loop()
        self._timeout = asyncio.timeout(None)
        self._handle: asyncio.TimerHandle | None = None
        self._since: float | None = None  # when the message now being written began to wait
        self._expired = False

    async def __aenter__(self) -> SendWatch:
        await self._timeout.__aenter__()
        self._handle = self._loop.call_later(self._interval, self._check)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
        try:
            await self._timeout.__aexit__(kind, exc, tb)
        except TimeoutError:
            if not self._expired:
                raise
            raise self._on_expiry() from None

    async def send(self, context: grpc.aio.ServicerContext[Any, Any], message: pb.StreamCompleteResponse) -> None:
        self._since = self._loop.time()
        try:
            await context.write(message)
        except _WRITE_REFUSED as exc:
            raise CallerGone() from exc
        finally:
            self._since = None

    def _check(self) -> None:
        since = self._since
        now = self._loop.time()
        if since is not None and now - since >= self.limit_s:
            # The task is suspended in write(): the timeout cancels it there, and turns into
            # on_expiry()'s error as the block is left.
            self._expired = True
            self._timeout.reschedule(now)
            return
        self._handle = self._loop.call_later(self._interval, self._check)
