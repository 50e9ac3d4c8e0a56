"""OpenTelemetry traces: a server span per RPC, a client span per upstream attempt and per
media fetch, exported with OTLP over gRPC by a batch processor.

Off by default: with no endpoint the gateway has no tracer provider, and every hook is one
`None` check. Spans are started with their parent passed explicitly, never through the
ambient context: async generators that attach a context and are suspended at `yield` would
detach it in another task's context.

Attribute names follow the OpenTelemetry RPC, HTTP and GenAI semantic conventions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import grpc
import orjson
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tollway.service.errors import GatewayError, bounded_message, scrub
from tollway.service.plugins.adapter import AnyRequest
from tollway.service.telemetry.tracing_config import TracingConfig
from tollway.v1 import completion_pb2 as pb

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("tollway.tracing")

SERVICE = "tollway.v1.Completion"
# How long stopping waits for the last spans to reach the collector.
FLUSH_TIMEOUT_MS = 5_000
# Captured content per attempt, each way: enough to read a conversation, never a whole document.
MAX_CONTENT_BYTES = 16 * 1024
# gRPC codes that are the server's fault (the RPC conventions mark only these spans ERROR;
# a caller's bad request is not an error of the gateway).
SERVER_FAULTS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_HEADERS = frozenset(_PROPAGATOR.fields)  # traceparent, tracestate
_ROLES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant", pb.ROLE_TOOL: "tool"}
_FINISH = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length",
           pb.FINISH_REASON_CONTENT_FILTER: "content_filter", pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
           pb.FINISH_REASON_OTHER: "other"}


def _version() -> str:
    try:
        return version("tollway")
    except PackageNotFoundError:
        return "unknown"


class Tracing:
    """The gateway's tracer provider: started with the gateway, flushed and shut down with it."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        # The SDK and the exporter load only when tracing is on.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased

        self.config = config
        # service.name from the config wins; OTEL_RESOURCE_ATTRIBUTES adds the rest (k8s.pod.name, ...).
        resource = Resource.create({"service.name": config.service_name, "service.version": _version()})
        ratio: Sampler = TraceIdRatioBased(config.sample_ratio)
        sampler = ParentBased(ratio) if config.parent_based else ratio
        self.provider = TracerProvider(resource=resource, sampler=sampler)
        if exporter is None:
            endpoint = config.otlp_endpoint or ""
            # The scheme decides: http:// plaintext, https:// TLS (OTEL_EXPORTER_OTLP_CERTIFICATE,
            # headers, compression and timeout are read by the exporter from the environment).
            exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("tollway", _version())

    def start_rpc(self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None, request_id: str | None,
                  secrets: Sequence[str] = ()) -> CallTrace:
        """The server span of one RPC, continuing the caller's trace when its metadata carries
        a W3C traceparent (gRPC metadata keys arrive lowercase)."""
        carrier = {key: value for key, value in metadata or () if key in _TRACE_HEADERS and isinstance(value, str)}
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method}
        if request_id is not None:
            attributes["tollway.request_id"] = request_id
        span = self.tracer.start_span(f"{SERVICE}/{method}", context=parent, kind=SpanKind.SERVER,
                                      attributes=attributes)
        return CallTrace(self, span, secrets)

    async def force_flush(self) -> bool:
        """Export every finished span now (off the event loop: the exporter blocks)."""
        return await asyncio.to_thread(self.provider.force_flush, FLUSH_TIMEOUT_MS)

    async def shutdown(self) -> None:
        """Send what is left and stop the exporter; after the server stopped, so the last
        calls' spans are in. With the collector down this takes up to the exporter's timeout
        (OTEL_EXPORTER_OTLP_TIMEOUT, 10 s), retries included."""
        await asyncio.to_thread(self.provider.shutdown)


def start_tracing(config: TracingConfig) -> Tracing | None:
    if not config.enabled:
        if config.sources.get("otlp_endpoint") == "OTEL_SDK_DISABLED":
            # Said aloud: an endpoint the file configures is ignored because of it.
            log.info("tracing: %s", config.describe())
        return None
    tracing = Tracing(config)
    log.info("tracing: %s", config.describe())
    return tracing


class CallTrace:
    """One RPC's span, and the parent every span of the call is started under."""

    __slots__ = ("tracing", "span", "parent", "secrets")

    def __init__(self, tracing: Tracing, span: trace.Span, secrets: Sequence[str]) -> None:
        self.tracing = tracing
        self.span = span
        self.parent = trace.set_span_in_context(span)
        # Error messages may quote what a provider sent back: no configured key leaves in a span.
        self.secrets = secrets

    def identify(self, caller: str, route: str) -> None:
        self.span.set_attribute("tollway.caller", caller)
        self.span.set_attribute("tollway.route", route)

    def outcome(self, status: str, error: str | None, *, provider: str, model: str, attempts: int,
                usage: pb.Usage | None, cost: pb.Cost | None) -> None:
        """What the call ended with, as its log line says it (status is a gRPC code name)."""
        span = self.span
        self.status(grpc.StatusCode[status] if status in grpc.StatusCode.__members__ else grpc.StatusCode.UNKNOWN,
                    error)
        if provider:
            span.set_attribute("tollway.provider", provider)
        if model:
            span.set_attribute("tollway.upstream_model", model)
        span.set_attribute("tollway.attempts", attempts)
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.input.total)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output.total)
        if cost is not None and not cost.unpriced:
            span.set_attribute("tollway.cost_nano_usd", cost.total_nano_usd)

    def status(self, code: grpc.StatusCode, error: str | None) -> None:
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            self.span.set_attribute("error.type", code.name)
            if code.name in SERVER_FAULTS:
                self.span.set_status(Status(StatusCode.ERROR, scrub(error or code.name, self.secrets)))

    def skipped(self, provider: str, model: str, reason: str) -> None:
        """A target passed over without a request (no key, breaker open, keys cooling down)."""
        self.span.add_event("tollway.target_skipped", {"tollway.provider": provider, "gen_ai.request.model": model,
                                                       "tollway.reason": reason.removeprefix("skipped: ")})

    def end(self) -> None:
        self.span.end()

    def attempt(self, *, provider: str, kind: str, base_url: str, model: str, stream: bool,
                request: AnyRequest) -> AttemptSpan:
        """The client span of one upstream attempt: "chat gpt-4o"."""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": kind, "gen_ai.request.model": model,
            "gen_ai.request.stream": stream, "tollway.provider": provider,
        }
        attributes.update(_server_address(base_url))
        if request.HasField("max_tokens"):
            attributes["gen_ai.request.max_tokens"] = request.max_tokens
        if request.HasField("temperature"):
            attributes["gen_ai.request.temperature"] = request.temperature
        if request.HasField("top_p"):
            attributes["gen_ai.request.top_p"] = request.top_p
        if request.HasField("seed"):
            attributes["gen_ai.request.seed"] = request.seed
        span = self.tracing.tracer.start_span(f"chat {model}", context=self.parent, kind=SpanKind.CLIENT,
                                              attributes=attributes)
        return AttemptSpan(self, span, request if self.tracing.config.capture_content else None)

    def media_fetch(self, part_path: str, url: str) -> FetchSpan:
        """The client span of fetching one media URL (its redirects included)."""
        attributes: dict[str, Any] = {"http.request.method": "GET", "url.full": _url_without_secrets(url),
                                      "tollway.media.part": part_path}
        attributes.update(_server_address(url))
        span = self.tracing.tracer.start_span("GET", context=self.parent, kind=SpanKind.CLIENT,
                                              attributes=attributes)
        return FetchSpan(span)


class AttemptSpan:
    """One upstream attempt; the first outcome ends it (later ones are ignored)."""

    __slots__ = ("_call", "_span", "_request", "_texts", "_room", "_started", "_first_chunk", "_ended")

    def __init__(self, call: CallTrace, span: trace.Span, request: AnyRequest | None) -> None:
        self._call = call
        self._span = span
        # Set only when content is captured.
        self._request = request
        self._texts: dict[int, list[str]] = {}
        self._room = MAX_CONTENT_BYTES
        self._started = time.monotonic()
        self._first_chunk = True
        self._ended = False

    def headers(self) -> Mapping[str, str] | None:
        """traceparent (and tracestate) naming this span, for the upstream request."""
        if not self._call.tracing.config.propagate_upstream:
            return None
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self._span))
        return carrier

    def chunk(self, message: pb.StreamCompleteResponse) -> None:
        """A stream message from the upstream."""
        if self._first_chunk:
            self._first_chunk = False
            self._span.set_attribute("gen_ai.response.time_to_first_chunk", time.monotonic() - self._started)
        if self._request is not None and self._room > 0 and message.WhichOneof("event") == "delta":
            text = bounded_message(message.delta.text, self._room)
            self._room -= len(text.encode())
            self._texts.setdefault(message.delta.choice_index, []).append(text)

    def answered(self, response: pb.CompleteResponse | pb.StreamSummary) -> None:
        if self._ended:
            return
        span = self._span
        if response.model:
            span.set_attribute("gen_ai.response.model", response.model)
        if response.id:
            span.set_attribute("gen_ai.response.id", response.id)
        _set_usage(span, response.usage)
        if isinstance(response, pb.CompleteResponse):
            finishes = [_FINISH.get(choice.finish_reason, "") for choice in response.choices]
        else:
            finishes = [_FINISH.get(finish.finish_reason, "") for finish in response.finishes]
        span.set_attribute("gen_ai.response.finish_reasons", [reason for reason in finishes if reason])
        if self._request is not None:
            self._capture(response)
        self._end()

    def failed(self, err: GatewayError) -> None:
        if self._ended:
            return
        if err.http_status is not None:
            self._span.set_attribute("http.response.status_code", err.http_status)
        # The HTTP status when the upstream answered with one, otherwise the gRPC code name.
        self._span.set_attribute("error.type", str(err.http_status) if err.http_status else err.code.name)
        self._span.set_status(Status(StatusCode.ERROR, bounded_message(scrub(err.message, self._call.secrets))))
        self._end()

    def interrupted(self, exc: BaseException) -> None:
        """Cancelled (the caller left, its deadline passed, the server stopped) or a bug of ours."""
        if self._ended:
            return
        cancelled = isinstance(exc, (asyncio.CancelledError, GeneratorExit))
        self._span.set_attribute("error.type", "CANCELLED" if cancelled else type(exc).__qualname__)
        self._span.set_status(Status(StatusCode.ERROR, "the call was cancelled" if cancelled else "unexpected error"))
        self._end()

    def _end(self) -> None:
        self._ended = True
        self._span.end()

    def _capture(self, response: pb.CompleteResponse | pb.StreamSummary) -> None:
        """The conversation on the span, per the GenAI conventions' opt-in details event."""
        request = self._request
        assert request is not None
        room = [MAX_CONTENT_BYTES]
        inputs = [{"role": _ROLES.get(m.role, "user"), "parts": [_part(p, room) for p in m.parts]}
                  for m in request.messages]
        if isinstance(response, pb.CompleteResponse):
            outputs = [{"role": "assistant", "parts": [_part(p, [MAX_CONTENT_BYTES]) for p in c.message.parts],
                        "finish_reason": _FINISH.get(c.finish_reason, "")} for c in response.choices]
        else:
            finishes = {f.index: _FINISH.get(f.finish_reason, "") for f in response.finishes}
            outputs = [{"role": "assistant", "parts": [{"type": "text", "content": "".join(texts)}],
                        "finish_reason": finishes.get(index, "")} for index, texts in sorted(self._texts.items())]
        self._span.add_event("gen_ai.client.inference.operation.details", {
            "gen_ai.input.messages": orjson.dumps(inputs).decode(),
            "gen_ai.output.messages": orjson.dumps(outputs).decode(),
        })


class FetchSpan:
    __slots__ = ("_span", "_redirects", "_ended")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._redirects = 0
        self._ended = False

    def response(self, status: int) -> None:
        """One hop's answer (a redirect, or the last)."""
        self._span.set_attribute("http.response.status_code", status)
        if status in (301, 302, 303, 307, 308):
            self._redirects += 1
            self._span.set_attribute("tollway.media.redirects", self._redirects)

    def fetched(self, size: int, mime_type: str) -> None:
        self._span.set_attribute("http.response.body.size", size)
        self._span.set_attribute("tollway.media.mime_type", mime_type)
        self._end()

    def failed(self, exc: BaseException) -> None:
        if self._ended:
            return
        if isinstance(exc, GatewayError):
            # Our own words about the caller's URL: no upstream text, no key.
            self._span.set_attribute("error.type", exc.code.name)
            self._span.set_status(Status(StatusCode.ERROR, exc.message))
        else:
            cancelled = isinstance(exc, asyncio.CancelledError)
            self._span.set_attribute("error.type", "CANCELLED" if cancelled else type(exc).__qualname__)
            self._span.set_status(Status(StatusCode.ERROR, "the fetch was cancelled" if cancelled else
                                         "unexpected error"))
        self._end()

    def _end(self) -> None:
        self._ended = True
        self._span.end()


def _set_usage(span: trace.Span, usage: pb.Usage) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", usage.input.total)
    span.set_attribute("gen_ai.usage.output_tokens", usage.output.total)
    span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.input.cache_read)
    span.set_attribute("gen_ai.usage.cache_creation.input_tokens",
                       usage.input.cache_write_5m + usage.input.cache_write_1h + usage.input.cache_write_unknown_ttl)
    span.set_attribute("gen_ai.usage.reasoning.output_tokens", usage.output.reasoning)
    if usage.estimated:
        span.set_attribute("tollway.usage.estimated", True)


def _part(part: pb.Part, room: list[int]) -> dict[str, Any]:
    """One part in the conventions' message shape; text cut to what room (shared) has left,
    media named by type and URL (no query), never its bytes."""

    def text(value: str) -> str:
        kept = bounded_message(value, room[0]) if room[0] > 0 else f"...({len(value.encode())} more bytes)"
        room[0] = max(room[0] - len(value.encode()), 0)
        return kept

    kind = part.WhichOneof("content")
    if kind == "text":
        return {"type": "text", "content": text(part.text)}
    if kind == "reasoning":
        return {"type": "reasoning", "content": text(part.reasoning.text)}
    if kind == "tool_call":
        call = part.tool_call
        return {"type": "tool_call", "id": call.id, "name": call.name, "arguments": text(call.arguments_json)}
    if kind == "tool_result":
        result = part.tool_result
        return {"type": "tool_call_response", "id": result.tool_call_id,
                "response": [_part(p, room) for p in result.parts]}
    if kind in ("image", "audio", "video", "document"):
        media: pb.Media = getattr(part, kind)
        if media.WhichOneof("source") == "url" and not media.url.startswith("data:"):
            return {"type": "uri", "modality": kind, "uri": _url_without_secrets(media.url)}
        return {"type": "blob", "modality": kind, "mime_type": media.mime_type, "content": "(not captured)"}
    return {"type": "unknown"}


def _server_address(url: str) -> dict[str, Any]:
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return {}
    attributes: dict[str, Any] = {}
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    if port:
        attributes["server.port"] = port
    return attributes


def _url_without_secrets(url: str) -> str:
    """scheme://host[:port]/path: user info, query and fragment left out (signed URLs carry
    their credential in the query)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(unparsable URL)"
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


class _NoAttempt(AttemptSpan):
    """An attempt of a call that is not traced: every hook does nothing."""

    def __init__(self) -> None:
        pass

    def headers(self) -> Mapping[str, str] | None:
        return None

    def chunk(self, message: pb.StreamCompleteResponse) -> None:
        pass

    def answered(self, response: pb.CompleteResponse | pb.StreamSummary) -> None:
        pass

    def failed(self, err: GatewayError) -> None:
        pass

    def interrupted(self, exc: BaseException) -> None:
        pass


class _NoFetch(FetchSpan):
    def __init__(self) -> None:
        pass

    def response(self, status: int) -> None:
        pass

    def fetched(self, size: int, mime_type: str) -> None:
        pass

    def failed(self, exc: BaseException) -> None:
        pass


NO_ATTEMPT: AttemptSpan = _NoAttempt()
NO_FETCH: FetchSpan = _NoFetch()
