"""Anthropic: the Messages API (`POST {base_url}/messages`), its stream events and its usage.

Pure translations, no IO. Anthropic differs from the OpenAI format in ways that matter
for a bill: `input_tokens` excludes cache reads and writes, cache writes come split by
time-to-live, compaction runs outside the top-level figures, and an advisor model's
tokens are reported beside the executor's rather than inside them (USAGE.md rule 3).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import grpc
import httpx
import orjson
from tollway.plugin import (
    DOCUMENT,
    IMAGE,
    AnyRequest,
    Capabilities,
    GatewayError,
    ProviderKind,
    ProviderSettings,
    ReportedUsage,
    ServerSentEvent,
    bad_upstream_body,
    grpc_code_for_http_status,
    hookimpl,
    invalid_argument,
    json_object,
    normalize,
    scrub,
    upstream_http_error,
)
from tollway.v1 import completion_pb2 as pb

W = pb.UsageWarning

KIND = "anthropic"
DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
API_KEY_ENV = "ANTHROPIC_API_KEY"
API_VERSION = "2023-06-01"
USER_AGENT = "tollway/0.1"
# The API requires max_tokens; a request without one gets this unless config says otherwise.
DEFAULT_MAX_TOKENS = 4096

CAPABILITIES = Capabilities(
    mime_types={
        IMAGE: frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"}),
        DOCUMENT: frozenset({"application/pdf"}),
    },
    # Both take a {"type": "url"} source, so the gateway never fetches for Anthropic.
    url_modalities=frozenset({IMAGE, DOCUMENT}),
)

ROLES = {pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}

STOP_REASONS = {
    "end_turn": pb.FINISH_REASON_STOP,
    "stop_sequence": pb.FINISH_REASON_STOP,
    "max_tokens": pb.FINISH_REASON_LENGTH,
    # The context window, not max_tokens, cut the answer short: still a length stop.
    "model_context_window_exceeded": pb.FINISH_REASON_LENGTH,
    "tool_use": pb.FINISH_REASON_TOOL_CALLS,
    "refusal": pb.FINISH_REASON_CONTENT_FILTER,
}

# error.type -> the HTTP status Anthropic documents for it, so an error event inside a
# 200 stream (or a 200 body) maps through the same table as an HTTP error.
ERROR_TYPE_HTTP_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


@dataclass(frozen=True)
class AnthropicOptions:
    """The typed options of a `[providers.<name>]` table of kind anthropic."""

    default_max_tokens: int = DEFAULT_MAX_TOKENS

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> AnthropicOptions:
        value = options.get("default_max_tokens", DEFAULT_MAX_TOKENS)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
            raise ValueError(f"default_max_tokens must be a positive integer, got {value!r}")
        return cls(default_max_tokens=value)


# -- request -----------------------------------------------------------------------------


def build_body(
    request: AnyRequest, model: str, *, stream: bool, provider: str, default_max_tokens: int
) -> dict[str, Any]:
    if request.HasField("seed"):
        raise invalid_argument("seed", f'provider "{provider}" does not support seed')
    if request.HasField("temperature") and request.temperature > 1.0:
        raise invalid_argument("temperature", f'provider "{provider}" takes 0 to 1, got {request.temperature:g}')
    system, messages = _conversation(request, provider)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens if request.HasField("max_tokens") else default_max_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = system
    if request.HasField("temperature"):
        body["temperature"] = request.temperature
    if request.HasField("top_p"):
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    body["stream"] = stream
    return body


def _conversation(request: AnyRequest, provider: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System text goes to the top-level `system`; other turns to `messages`, with
    consecutive same-role turns merged into one, as the API would merge them anyway."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        if message.role == pb.ROLE_SYSTEM:
            system.extend(_text_block(i, j, part, "system", provider) for j, part in enumerate(message.parts))
            continue
        role = ROLES.get(message.role)
        if role is None:
            raise invalid_argument(f"messages[{i}].role", f"unknown role {message.role}")
        blocks = [_block(i, j, part, role, provider) for j, part in enumerate(message.parts)]
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise invalid_argument(
            "messages", f'provider "{provider}" needs a user or assistant message besides system messages'
        )
    return system, turns


def _text_block(i: int, j: int, part: pb.Part, role: str, provider: str) -> dict[str, Any]:
    if part.WhichOneof("content") != "text":
        raise invalid_argument(f"messages[{i}].parts[{j}]",
                               f'provider "{provider}" takes text only in {role} messages')
    return {"type": "text", "text": part.text}


def _block(i: int, j: int, part: pb.Part, role: str, provider: str) -> dict[str, Any]:
    kind = part.WhichOneof("content")
    if kind == "text" or role != "user":
        return _text_block(i, j, part, role, provider)
    path = f"messages[{i}].parts[{j}].{kind}"
    if kind not in ("image", "document"):
        # The central capability check refuses this first; never drop it if it gets here.
        raise invalid_argument(path, f'provider "{provider}" does not accept {kind} input')
    return {"type": kind, "source": _source(path, getattr(part, kind))}


def _source(path: str, media: pb.Media) -> dict[str, Any]:
    if media.WhichOneof("source") == "data":
        return {"type": "base64", "media_type": media.mime_type.lower(), "data": _b64(media.data)}
    if not media.url.startswith("data:"):
        return {"type": "url", "url": media.url}
    header, _, payload = media.url[5:].partition(",")
    mime = media.mime_type.lower() or header.partition(";")[0].lower()
    raw = unquote_to_bytes(payload)
    if header.lower().endswith(";base64"):
        try:
            raw = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument(f"{path}.url", "is a data: URL whose base64 payload does not decode") from None
    if not mime:
        raise invalid_argument(f"{path}.mime_type", "is required: the data: URL names no media type")
    return {"type": "base64", "media_type": mime, "data": _b64(raw)}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def messages_url(settings: ProviderSettings) -> httpx.URL:
    return httpx.URL(f"{settings.base_url}/messages")


def build_http_request(settings: ProviderSettings, body: Mapping[str, Any], *, stream: bool,
                       url: httpx.URL | None = None) -> httpx.Request:
    """url: messages_url(settings), which an adapter parses once rather than per request."""
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        "anthropic-version": API_VERSION,
        "user-agent": USER_AGENT,
    }
    if settings.api_key:
        headers["x-api-key"] = settings.api_key
    return httpx.Request("POST", url if url is not None else messages_url(settings), headers=headers,
                         content=orjson.dumps(body))


# -- response ----------------------------------------------------------------------------


def finish_reason(raw: str) -> pb.FinishReason:
    if not raw:
        return pb.FINISH_REASON_UNSPECIFIED
    return STOP_REASONS.get(raw, pb.FINISH_REASON_OTHER)


def parse_message(
    provider: str, body: bytes, requested_model: str, secrets: Iterable[str | None] = ()
) -> pb.CompleteResponse:
    """A Message object -> the contract. Thinking and tool_use blocks are not visible text."""
    data = json_object(provider, body, "a body")
    if data.get("type") == "error":
        raise provider_error(provider, data.get("error"), secrets)
    content = data.get("content")
    if not isinstance(content, list):
        raise bad_upstream_body(provider, "JSON without content")
    texts = [b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text" and b.get("text")]
    raw_reason = str(data.get("stop_reason") or "")
    out = pb.CompleteResponse(id=str(data.get("id") or ""), model=str(data.get("model") or requested_model),
                              provider=provider)
    out.choices.append(
        pb.Choice(
            index=0,
            message=pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(text=t) for t in texts]),
            finish_reason=finish_reason(raw_reason),
            raw_finish_reason=raw_reason,
        )
    )
    usage = data.get("usage")
    if isinstance(usage, dict):
        out.usage.CopyFrom(usage_from(usage))
    return out


def provider_error(provider: str, error: Any, secrets: Iterable[str | None] = ()) -> GatewayError:
    """An Anthropic error object that came with a 200 (an `error` stream event, or a body)."""
    error = error if isinstance(error, dict) else {}
    error_type = str(error.get("type") or "")
    status = ERROR_TYPE_HTTP_STATUS.get(error_type)
    # A type Anthropic has not documented yet: the upstream failed mid-answer.
    code = grpc_code_for_http_status(status) if status else grpc.StatusCode.UNAVAILABLE
    if status in (401, 403):
        return GatewayError(code, f"{provider}: provider rejected the gateway's credentials ({error_type})")
    message = f"{provider}: upstream reported {error_type or 'an error'}"
    if error.get("message"):
        message += f": {scrub(str(error['message']), secrets)[:500]}"
    return GatewayError(code, message)


def parse_error(settings: ProviderSettings, response: httpx.Response) -> GatewayError:
    """An HTTP error answer: {"type": "error", "error": {"type", "message"}, "request_id"}."""
    message = None
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        message = "the body is not JSON (an HTML error page or a proxy's answer)"
    else:
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message = ": ".join(str(error[k]) for k in ("type", "message") if error.get(k)) or None
    return upstream_http_error(settings.name, response.status_code, response.headers.get("retry-after"), message,
                               secrets=(settings.api_key,))


# -- usage -------------------------------------------------------------------------------


def _count(mapping: Any, key: str) -> int:
    if not isinstance(mapping, Mapping):
        return 0
    value = mapping.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return 0
    return int(value)


def _add_sampling(r: ReportedUsage, u: Mapping[str, Any]) -> None:
    """Add one sampling's figures (top-level usage or one iteration) in Anthropic's sense:
    input_tokens excludes cache reads and cache writes, so all three add up to the input."""
    split = u.get("cache_creation")
    write_5m = _count(split, "ephemeral_5m_input_tokens")
    write_1h = _count(split, "ephemeral_1h_input_tokens")
    writes = _count(u, "cache_creation_input_tokens")
    if write_5m + write_1h > writes:
        # A split larger than its total: trust the split (it is what each TTL is billed at).
        if "cache_creation_input_tokens" in u:
            r.warnings.add(W.USAGE_WARNING_DETAILS_EXCEED_TOTAL)
        writes = write_5m + write_1h
    cache_read = _count(u, "cache_read_input_tokens")
    r.input_total += _count(u, "input_tokens") + cache_read + writes
    r.cache_read += cache_read
    r.cache_write_5m += write_5m
    r.cache_write_1h += write_1h
    r.cache_write_unknown_ttl += writes - write_5m - write_1h
    r.output_total += _count(u, "output_tokens")


def _iterations(u: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    iterations = u.get("iterations")
    if not isinstance(iterations, list):
        return []
    return [it for it in iterations if isinstance(it, Mapping) and it.get("type") == kind]


def reported_usage(u: Mapping[str, Any], *, estimated: bool = False) -> ReportedUsage:
    """Top-level usage plus compaction iterations, which run outside the top-level figures.

    `message` iterations are already inside the top level; `advisor_message` iterations are
    another model's bill (other_models). Anthropic states no modality split, so fresh input
    is unattributed; `output_tokens` includes thinking, and `thinking_tokens`, when stated,
    says how much of it.
    """
    r = ReportedUsage(estimated=estimated)
    _add_sampling(r, u)
    for compaction in _iterations(u, "compaction"):
        _add_sampling(r, compaction)
    r.reasoning = _count(u.get("output_tokens_details"), "thinking_tokens")
    return r


def other_models(u: Mapping[str, Any]) -> list[pb.ModelUsage]:
    """Advisor iterations, summed per advisor model, in order of first appearance."""
    per_model: dict[str, ReportedUsage] = {}
    for advisor in _iterations(u, "advisor_message"):
        _add_sampling(per_model.setdefault(str(advisor.get("model") or ""), ReportedUsage()), advisor)
    return [pb.ModelUsage(model=model, usage=normalize(r)) for model, r in per_model.items()]


def server_tool_use(u: Mapping[str, Any]) -> list[pb.ServerToolUse]:
    counters = u.get("server_tool_use")
    if not isinstance(counters, Mapping):
        return []
    return [pb.ServerToolUse(tool=str(tool), count=_count(counters, tool))
            for tool in sorted(counters) if _count(counters, tool)]


def usage_from(u: Mapping[str, Any], *, estimated: bool = False) -> pb.Usage:
    usage = normalize(reported_usage(u, estimated=estimated))
    usage.other_models.extend(other_models(u))
    tools = server_tool_use(u)
    if tools:  # extending with nothing would still mark provider_reported as set
        usage.provider_reported.server_tool_use.extend(tools)
    return usage


# -- stream ------------------------------------------------------------------------------


class MessageStreamDecoder:
    """Messages API stream events -> text deltas and a final summary.

    message_start carries the id, model and first usage; each message_delta carries
    cumulative usage that overwrites (never adds to) the fields it names; message_stop is
    the terminal event, so a stream without it was cut off.
    """

    def __init__(self, provider: str, requested_model: str, secrets: Iterable[str | None] = ()) -> None:
        self._provider = provider
        self._secrets = tuple(secrets)
        self._output_bytes = 0
        self._id = ""
        self._model = requested_model
        self._stop_reason = ""
        self._usage: dict[str, Any] | None = None
        self.finished = False

    def feed(self, event: ServerSentEvent) -> Iterable[pb.StreamCompleteResponse]:
        if not event.data:
            return ()
        data = json_object(self._provider, event.data, "a stream event")
        # Every event names its type twice (SSE `event:` and the data's `type`); the data
        # is used when the SSE name is absent.
        kind = event.event if event.event and event.event != "message" else str(data.get("type") or "")
        if kind == "error":
            raise provider_error(self._provider, data.get("error"), self._secrets)
        if kind == "message_start":
            self._start(data.get("message"))
        elif kind == "content_block_start":
            block = data.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text":
                return self._text(block.get("text"))
        elif kind == "content_block_delta":
            return self._delta(data.get("delta"))
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop_reason = str(delta["stop_reason"])
            usage = data.get("usage")
            if isinstance(usage, dict):
                self._usage = {**(self._usage or {}), **usage}
        elif kind == "message_stop":
            self.finished = True
        # ping, content_block_stop and event types added later carry nothing for us.
        return ()

    def _start(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        self._id = str(message.get("id") or self._id)
        self._model = str(message.get("model") or self._model)
        if isinstance(message.get("usage"), dict):
            self._usage = dict(message["usage"])

    def _delta(self, delta: Any) -> Iterable[pb.StreamCompleteResponse]:
        if not isinstance(delta, dict):
            return ()
        if delta.get("type") == "text_delta":
            return self._text(delta.get("text"))
        if delta.get("type") == "thinking_delta" and isinstance(delta.get("thinking"), str):
            # Not visible text, but billed output: it counts if usage must be estimated.
            self._output_bytes += len(delta["thinking"].encode())
        return ()

    def _text(self, text: Any) -> Iterable[pb.StreamCompleteResponse]:
        if not isinstance(text, str) or not text:
            return ()
        self._output_bytes += len(text.encode())
        return (pb.StreamCompleteResponse(delta=pb.TextDelta(choice_index=0, text=text)),)

    def summary(self) -> pb.StreamSummary:
        summary = pb.StreamSummary(id=self._id, model=self._model, provider=self._provider)
        if self._stop_reason:
            summary.finishes.append(pb.ChoiceFinish(index=0, finish_reason=finish_reason(self._stop_reason),
                                                    raw_finish_reason=self._stop_reason))
        if self._usage is not None:
            summary.usage.CopyFrom(usage_from(self._usage, estimated=not self.finished))
        return summary

    @property
    def output_bytes(self) -> int:
        """Billed output seen so far (thinking included), for an estimate when usage never comes."""
        return self._output_bytes


# -- the adapter -------------------------------------------------------------------------


class AnthropicAdapter:
    def __init__(self, settings: ProviderSettings, options: AnthropicOptions) -> None:
        self.settings = settings
        self.capabilities = CAPABILITIES
        self.options = options
        # Parsed once: parsing the URL string took about half of building each request.
        try:
            self._url = messages_url(settings)
        except httpx.InvalidURL as exc:
            raise ValueError(f"base_url is not a usable URL ({exc})") from None

    def build_request(self, request: AnyRequest, model: str, *, stream: bool) -> httpx.Request:
        body = build_body(request, model, stream=stream, provider=self.settings.name,
                          default_max_tokens=self.options.default_max_tokens)
        return build_http_request(self.settings, body, stream=stream, url=self._url)

    def parse_response(self, response: httpx.Response, request: AnyRequest, model: str) -> pb.CompleteResponse:
        return parse_message(self.settings.name, response.content, model, secrets=(self.settings.api_key,))

    def stream_decoder(self, request: AnyRequest, model: str) -> MessageStreamDecoder:
        return MessageStreamDecoder(self.settings.name, model, secrets=(self.settings.api_key,))

    def parse_error(self, response: httpx.Response) -> GatewayError:
        return parse_error(self.settings, response)


def create(settings: ProviderSettings) -> AnthropicAdapter:
    return AnthropicAdapter(settings, AnthropicOptions.from_config(settings.options))


@hookimpl
def tollway_register_providers(register: Callable[[ProviderKind], None]) -> None:
    register(
        ProviderKind(
            name=KIND,
            create=create,
            default_base_url=DEFAULT_BASE_URL,
            default_api_key_env=API_KEY_ENV,
            options=frozenset({"default_max_tokens"}),
        )
    )
