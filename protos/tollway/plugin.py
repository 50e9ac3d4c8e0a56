"""The provider plugin seam: everything a provider plugin may import from Tollway.

A plugin is a module with one hook implementation:

    from tollway import plugin

    @plugin.hookimpl
    def tollway_register_providers(register):
        register(plugin.ProviderKind(name="echo", create=EchoAdapter, ...))

and adapters that translate between `tollway.v1` messages and httpx Request/Response objects,
with no IO of their own. Names outside `__all__` are not part of the seam; the built-in
providers in tollway.providers import nothing else from Tollway either (the wire contract,
`tollway.v1`, aside).
"""

from __future__ import annotations

from httpx_sse import ServerSentEvent

from tollway.service.errors import (
    GatewayError,
    bad_upstream_body,
    grpc_code_for_http_status,
    invalid_argument,
    json_object,
    scrub,
    upstream_http_error,
)
from tollway.service.plugins.adapter import (
    AUDIO,
    DOCUMENT,
    IMAGE,
    TEXT,
    VIDEO,
    Adapter,
    AnyRequest,
    Capabilities,
    ProviderKind,
    ProviderSettings,
    StreamDecoder,
    choice_finishes,
    finish_with_tools,
)
from tollway.service.plugins.hookspecs import hookimpl
from tollway.service.plugins.tools import (
    ReasoningAssembler,
    ToolCallAssembler,
    arguments_object,
    arguments_text,
    calls_in,
    is_minted,
    json_object_or_none,
    mint_tool_call_id,
    parsed_arguments,
    result_text,
    struct_to_dict,
    tool_call,
)
from tollway.service.usage.normalize import ReportedUsage, normalize, stream_usage

__all__ = [
    # registering: the hook marker and what register() takes
    "hookimpl",
    "ProviderKind",
    "ProviderSettings",
    # the adapter protocol and what it declares
    "Adapter",
    "StreamDecoder",
    "AnyRequest",
    "Capabilities",
    "TEXT",
    "IMAGE",
    "AUDIO",
    "VIDEO",
    "DOCUMENT",
    # usage as the provider stated it, normalized by the billing contract's rules
    "ReportedUsage",
    "normalize",
    "stream_usage",
    # errors, as gRPC statuses with the provider's message, never a key
    "GatewayError",
    "invalid_argument",
    "bad_upstream_body",
    "upstream_http_error",
    "grpc_code_for_http_status",
    "scrub",
    # the helpers adapters share: JSON bodies, SSE events, stream finishes
    "json_object",
    "ServerSentEvent",
    "choice_finishes",
    "finish_with_tools",
    # tool calls and reasoning: ids, arguments, results, stream assembly
    "tool_call",
    "mint_tool_call_id",
    "is_minted",
    "parsed_arguments",
    "arguments_text",
    "arguments_object",
    "json_object_or_none",
    "struct_to_dict",
    "result_text",
    "calls_in",
    "ToolCallAssembler",
    "ReasoningAssembler",
]
