"""Requests that do not decode: INVALID_ARGUMENT for the caller, not UNKNOWN and a traceback.

grpc.aio decodes a request before the handler runs; when the deserializer raises, the caller
gets UNKNOWN and the server log a traceback. This interceptor moves the decode into the
handler, where a DecodeError becomes a clear refusal. The generated registration stays as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

Deserializer = Callable[[bytes], Any]
SERVICE_PREFIX = "/tollway.v1.Completion/"
if TYPE_CHECKING:  # generic in the stubs only; annotations are not evaluated at run time
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]


class DecodeRequests(grpc.aio.ServerInterceptor):
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
            replaced["unary_unary"] = _unary(handler.unary_unary, decode, method)
        elif handler.unary_stream is not None:
            replaced["unary_stream"] = _unary_stream(handler.unary_stream, decode, method)
        else:
            return handler
        # The handlers grpc builds are namedtuples.
        return handler._replace(**replaced)  # type: ignore[attr-defined,no-any-return]


async def _decoded(raw: bytes, decode: Deserializer, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    try:
        return decode(raw)
    except (DecodeError, ValueError, TypeError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request is not a valid protobuf message for {method}")


def _unary(behavior: Callable[..., Any], decode: Deserializer, method: str) -> Callable[..., Any]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await behavior(await _decoded(raw, decode, method, context), context)

    return handle


def _unary_stream(behavior: Callable[..., Any], decode: Deserializer, method: str) -> Callable[..., Any]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        request = await _decoded(raw, decode, method, context)
        async for message in behavior(request, context):
            yield message

    return handle
