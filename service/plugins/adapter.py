"""What a provider adapter is: pure translations between the proto contract and HTTP.

An adapter never opens a socket, reads the environment or sleeps. The engine owns the
network and hands adapters only httpx Request/Response objects and decoded SSE events,
so an adapter is testable with nothing but payload files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx
from httpx_sse import ServerSentEvent

from tollway.service.errors import GatewayError
from tollway.service.plugins.tools import ReasoningAssembler, ToolCallAssembler
from tollway.v1 import completion_pb2 as pb

# A request as either RPC carries it: both message types have the same fields.
AnyRequest = pb.CompleteRequest | pb.StreamCompleteRequest

TEXT = pb.MODALITY_TEXT
IMAGE = pb.MODALITY_IMAGE
AUDIO = pb.MODALITY_AUDIO
VIDEO = pb.MODALITY_VIDEO
DOCUMENT = pb.MODALITY_DOCUMENT

# Part oneof field name -> Modality.
PART_MODALITY: Mapping[str, pb.Modality] = {
    "text": TEXT,
    "image": IMAGE,
    "audio": AUDIO,
    "video": VIDEO,
    "document": DOCUMENT,
}


# Part oneof names that carry media (the others: text, tool calls, tool results, reasoning).
MEDIA_PARTS = frozenset({"image", "audio", "video", "document"})


def modality_name(modality: int) -> str:
    """"MODALITY_AUDIO" -> "audio", for messages a person reads."""
    return pb.Modality.Name(modality).removeprefix("MODALITY_").lower()


@dataclass(frozen=True)
class Capabilities:
    """What an adapter accepts, checked centrally before any network call."""

    # Media types accepted per modality (TEXT needs none).
    mime_types: Mapping[pb.Modality, frozenset[str]]
    # Modalities the provider can take by URL; media of other modalities sent by URL
    # must be fetched by the gateway and inlined, or is refused.
    url_modalities: frozenset[pb.Modality] = frozenset()
    # URLs the provider takes by reference even for modalities outside url_modalities
    # (e.g. Gemini's own Files API URIs), as prefixes per modality.
    url_prefixes: Mapping[pb.Modality, tuple[str, ...]] = field(default_factory=dict)
    # Request features the adapter translates; a request using one it lacks is refused
    # centrally, naming the setting (never dropped). Settings within a feature that a
    # provider cannot honour (a named tool choice, parallel calls off) the adapter refuses.
    tools: bool = False
    structured_output: bool = False
    reasoning: bool = False

    def takes_url(self, modality: pb.Modality, url: str) -> bool:
        """True when the provider takes this URL as it is; otherwise the gateway inlines it
        (fetching http(s), decoding data: URLs), so adapters see only URLs they can pass on."""
        if modality in self.url_modalities:
            return True
        return url.startswith(self.url_prefixes.get(modality, ()))

    @property
    def modalities(self) -> frozenset[pb.Modality]:
        return frozenset({TEXT, *self.mime_types})


def intersect_capabilities(all_caps: list[Capabilities]) -> Capabilities:
    """What every one of several adapters accepts (a route's capabilities).

    A URL counts as accepted by reference only where every adapter takes it; elsewhere the
    gateway fetches it, which every adapter accepts."""
    first, *rest = all_caps
    mime_types = {m: types for m, types in first.mime_types.items()}
    url_modalities = set(first.url_modalities)
    for caps in rest:
        mime_types = {m: types & caps.mime_types[m] for m, types in mime_types.items() if m in caps.mime_types}
        url_modalities &= caps.url_modalities
    return Capabilities(mime_types=mime_types, url_modalities=frozenset(url_modalities),
                        tools=all(c.tools for c in all_caps),
                        structured_output=all(c.structured_output for c in all_caps),
                        reasoning=all(c.reasoning for c in all_caps))


@dataclass(frozen=True)
class ProviderSettings:
    """Everything the host resolved for one configured provider instance."""

    name: str
    kind: str
    base_url: str
    api_key: str | None
    # Typed, kind-specific options from config, validated by the kind's factory.
    options: Mapping[str, Any] = field(default_factory=dict)


class StreamDecoder(Protocol):
    """Turns one provider's SSE events into stream messages; holds only parse state."""

    def feed(self, event: ServerSentEvent) -> Iterable[pb.StreamCompleteResponse]:
        """Messages (text deltas) for one event; raises GatewayError on an error event."""
        ...

    @property
    def finished(self) -> bool:
        """True once the provider's terminal event arrived."""
        ...

    def summary(self) -> pb.StreamSummary:
        """The final message: id, model, finish reasons, and usage as the provider stated it
        (marked estimated when the stream never reached its end; unset when it sent none)."""
        ...

    @property
    def output_bytes(self) -> int:
        """UTF-8 bytes of billed output seen so far, thinking included: what the engine's
        estimate counts when the provider never sends usage."""
        ...


@runtime_checkable
class Adapter(Protocol):
    """One configured provider: the four translations and what it accepts."""

    settings: ProviderSettings
    capabilities: Capabilities

    def build_request(self, request: AnyRequest, model: str, *, stream: bool) -> httpx.Request:
        """proto -> HTTP request, pure."""
        ...

    def parse_response(self, response: httpx.Response, request: AnyRequest, model: str) -> pb.CompleteResponse:
        """HTTP response (2xx, body read) -> proto; raises GatewayError on a body it cannot read.

        `request` and `model` are what build_request was given, so no adapter reads them back
        from the HTTP request. Usage stays unset when the provider stated none."""
        ...

    def stream_decoder(self, request: AnyRequest, model: str) -> StreamDecoder:
        """A fresh decoder for one stream."""
        ...

    def parse_error(self, response: httpx.Response) -> GatewayError:
        """HTTP error response (body read) -> GatewayError with the provider's message, scrubbed."""
        ...


def finish_with_tools(reason: pb.FinishReason, has_tool_calls: bool) -> pb.FinishReason:
    """FINISH_REASON_TOOL_CALLS whenever a choice ended by calling tools, whatever the provider's
    own word for it (Gemini says STOP); a choice cut off by length or a filter keeps that."""
    if has_tool_calls and reason not in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_CONTENT_FILTER):
        return pb.FINISH_REASON_TOOL_CALLS
    return reason


def choice_finishes(raw_by_index: Mapping[int, str], classify: Callable[[str], pb.FinishReason],
                    tools: ToolCallAssembler | None = None,
                    reasoning: ReasoningAssembler | None = None) -> list[pb.ChoiceFinish]:
    """How each streamed choice ended, in index order, with the provider's raw reason kept and
    its tool calls and reasoning assembled whole."""
    indices = set(raw_by_index) | set(tools.choices() if tools else ()) | set(reasoning.choices() if reasoning else ())
    finishes = []
    for i in sorted(indices):
        raw = raw_by_index.get(i, "")
        calls = tools.calls(i) if tools else []
        finishes.append(pb.ChoiceFinish(
            index=i, finish_reason=finish_with_tools(classify(raw), bool(calls)), raw_finish_reason=raw,
            tool_calls=calls, reasoning=reasoning.blocks(i) if reasoning else []))
    return finishes


@dataclass(frozen=True)
class ProviderKind:
    """What a plugin registers: a kind of provider and how to build its adapters."""

    name: str
    create: Callable[[ProviderSettings], Adapter]
    default_base_url: str | None
    # The environment variable that holds the key when config names none.
    default_api_key_env: str | None
    # A kind whose servers run without keys (a local vLLM) sets this False.
    requires_api_key: bool = True
    # The kind-specific keys its `[providers.<name>]` tables may hold (ProviderSettings.options);
    # the host refuses any other key by name before create() runs.
    options: frozenset[str] = frozenset()
