"""What happens to a Completion RPC before the servicer sees it: it takes one of the gateway's
slots (limits.max_concurrent_rpcs) and its bytes are decoded.

grpc.aio decodes a request before the handler runs; when the deserializer raises, the caller
gets UNKNOWN and the server log a traceback. Here the decode happens inside the handler, where
a DecodeError becomes INVALID_ARGUMENT. gRPC's own maximum_concurrent_rpcs is not used: it
counts health checks too and its message names no limit. The generated registration stays.
"""

from __future__ import annotations

import inspect

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from tollway.service.admission.limits import RpcSlots
from tollway.service.errors import GatewayError
from tollway.service.gateway.call import REQUEST_ID_KEY
from tollway.service.gateway.logs import log_request
from tollway.service.gateway.request_ids import new_request_id
from tollway.service.gateway.status import end_with_error

Deserializer = Callable[[bytes], Any]
SERVICE_PREFIX = "/tollway.v1.Completion/"
if TYPE_CHECKING:  # generic in the stubs only; annotations are not evaluated at run time
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class Intake(grpc.aio.ServerInterceptor):
    def __init__(self, slots: RpcSlots) -> None:
        self.slots = slots

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        # Only the gateway's own service: health and reflection keep grpc's handling.
        if handler is None or not method.startswith(SERVICE_PREFIX) or handler.request_streaming \
                or handler.request_deserializer is None:
            return handler
        decode: Deserializer = handler.request_deserializer
        replaced: dict[str, Any] = {"request_deserializer": None}
        if handler.unary_unary is not None:
            replaced["unary_unary"] = self._unary(handler.unary_unary, decode, method)
        elif handler.unary_stream is not None:
            replaced["unary_stream"] = self._unary_stream(handler.unary_stream, decode, method)
        else:
            return handler
        # The handlers grpc builds are namedtuples.
        return handler._replace(**replaced)  # type: ignore[attr-defined,no-any-return]

    def _unary(self, behavior: Callable[..., Any], decode: Deserializer, method: str) -> Callable[..., Any]:
        async def handle(raw: bytes, context: Context) -> Any:
            request = self._admit(raw, decode, method, context)
            if request is _REFUSED:
                return None
            try:
                return await behavior(request, context)
            finally:
                self.slots.give_back()

        return handle

    def _unary_stream(self, behavior: Callable[..., Any], decode: Deserializer, method: str) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):
            # A handler that sends with context.write: grpc.aio tells the two kinds apart by
            # their function type, so the wrapper must be of the same kind.
            return self._unary(behavior, decode, method)

        async def handle(raw: bytes, context: Context) -> AsyncIterator[Any]:
            request = self._admit(raw, decode, method, context)
            if request is _REFUSED:
                return
            try:
                async for message in behavior(request, context):
                    yield message
            finally:
                self.slots.give_back()

        return handle

    def _admit(self, raw: bytes, decode: Deserializer, method: str, context: Context) -> Any:
        """The decoded request holding one of the gateway's slots, or _REFUSED with the status set
        (never raised: see gateway/status.py)."""
        try:
            self.slots.take()
        except GatewayError as err:
            _refuse(context, method, err)
            return _REFUSED
        try:
            return decode(raw)
        except (DecodeError, ValueError, TypeError):
            self.slots.give_back()
            _refuse(context, method, GatewayError(grpc.StatusCode.INVALID_ARGUMENT,
                                                  f"the request is not a valid protobuf message for {method}"))
            return _REFUSED


def _refuse(context: Context, method: str, err: GatewayError) -> None:
    """A call refused before it is a Call still has a request id, in its trailers and its log line
    (which carries nothing of the request: it was not read)."""
    request_id = new_request_id()
    log_request(request_id=request_id, rpc=method.removeprefix(SERVICE_PREFIX), status=err.code.name,
                error=err.message)
    end_with_error(context, err, ((REQUEST_ID_KEY, request_id),))


# What _admit answers for a call it refused.
_REFUSED = object()
