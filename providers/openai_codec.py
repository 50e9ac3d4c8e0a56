"""The OpenAI Chat Completions format, written once for every adapter that speaks it.

MixRouter, OpenAI and any OpenAI-compatible server (vLLM, Ollama, llama.cpp) differ only
in a few choices, collected in a ChatDialect; everything else is here. Pure: no IO.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, TypeGuard

import grpc
import httpx
import orjson

from tollway.plugin import (
    AnyRequest,
    Capabilities,
    GatewayError,
    ProviderSettings,
    ReasoningAssembler,
    ReportedUsage,
    ServerSentEvent,
    ToolCallAssembler,
    bad_upstream_body,
    choice_finishes,
    finish_with_tools,
    invalid_argument,
    json_object,
    normalize,
    result_text,
    scrub,
    stream_usage,
    struct_to_dict,
    tool_call,
    upstream_http_error,
)
from tollway.v1 import completion_pb2 as pb

W = pb.UsageWarning

USER_AGENT = "tollway/0.1"

ROLE_NAMES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}

FINISH_REASONS = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
    "function_call": pb.FINISH_REASON_TOOL_CALLS,
}


@dataclass(frozen=True)
class ChatDialect:
    """The choices in which OpenAI-format servers differ."""

    # "audio_url": {"audio_url": {"url"}} (MixRouter and new-api relays take URLs);
    # "input_audio": {"input_audio": {"data", "format"}} (OpenAI takes base64 only).
    audio_style: str = "audio_url"
    # OpenAI deprecated max_tokens for max_completion_tokens; relays still read max_tokens.
    max_tokens_field: str = "max_tokens"
    # Relays that front Claude report prompt_tokens without cache reads and writes.
    relay_usage: bool = False
    # The assistant-message field that takes the model's earlier reasoning back, or None where
    # the server has none (OpenAI: the Chat format has no input field for reasoning). DeepSeek's
    # thinking mode documents "reasoning_content" as one, and requires it back after tool calls.
    reasoning_input_field: str | None = None


def data_url(mime_type: str, data: bytes) -> str:
    return f"data:{mime_type};base64,{base64.b64encode(data).decode('ascii')}"


def media_url(media: pb.Media) -> str:
    return media.url if media.WhichOneof("source") == "url" else data_url(media.mime_type, media.data)


# -- request -----------------------------------------------------------------------------


def build_body(request: AnyRequest, model: str, *, stream: bool, dialect: ChatDialect,
               provider: str = "") -> dict[str, Any]:
    """provider: the configured name, for the message of a setting this format cannot carry."""
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(request.messages):
        messages.extend(_messages(i, m, dialect))
    body: dict[str, Any] = {"model": model, "messages": messages}
    if request.HasField("max_tokens"):
        body[dialect.max_tokens_field] = request.max_tokens
    if request.HasField("temperature"):
        body["temperature"] = request.temperature
    if request.HasField("top_p"):
        body["top_p"] = request.top_p
    if request.HasField("seed"):
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = list(request.stop)
    _tool_fields(request, body)
    if request.HasField("response_format"):
        body["response_format"] = _response_format(request.response_format)
    if request.HasField("reasoning"):
        _reasoning_fields(request.reasoning, body, provider)
    if stream:
        body["stream"] = True
        # Without this the usage never arrives on a stream.
        body["stream_options"] = {"include_usage": True}
    else:
        body["stream"] = False
    return body


TOOL_CHOICE_MODES = {pb.TOOL_CHOICE_MODE_AUTO: "auto", pb.TOOL_CHOICE_MODE_NONE: "none",
                     pb.TOOL_CHOICE_MODE_REQUIRED: "required"}

REASONING_EFFORTS = {pb.REASONING_EFFORT_NONE: "none", pb.REASONING_EFFORT_MINIMAL: "minimal",
                     pb.REASONING_EFFORT_LOW: "low", pb.REASONING_EFFORT_MEDIUM: "medium",
                     pb.REASONING_EFFORT_HIGH: "high"}


def _tool_fields(request: AnyRequest, body: dict[str, Any]) -> None:
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
    if request.HasField("tool_choice"):
        choice = request.tool_choice
        if choice.WhichOneof("choice") == "function_name":
            body["tool_choice"] = {"type": "function", "function": {"name": choice.function_name}}
        else:  # the gateway refused an unset mode already
            body["tool_choice"] = TOOL_CHOICE_MODES[choice.mode]
    if request.HasField("parallel_tool_calls"):
        body["parallel_tool_calls"] = request.parallel_tool_calls


def _tool(tool: pb.Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    if tool.HasField("parameters"):
        function["parameters"] = struct_to_dict(tool.parameters)
    if tool.HasField("strict"):
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _response_format(fmt: pb.ResponseFormat) -> dict[str, Any]:
    if fmt.WhichOneof("format") == "json_object":
        return {"type": "json_object"}
    spec = fmt.json_schema
    # OpenAI requires a name; the contract lets callers leave it empty.
    schema: dict[str, Any] = {"name": spec.name or "response", "schema": struct_to_dict(spec.schema)}
    if spec.HasField("strict"):
        schema["strict"] = spec.strict
    if spec.description:
        schema["description"] = spec.description
    return {"type": "json_schema", "json_schema": schema}


def _reasoning_fields(config: pb.ReasoningConfig, body: dict[str, Any], provider: str) -> None:
    # The Chat format has an effort only: a budget or a thoughts switch would be dropped.
    if config.HasField("budget_tokens"):
        raise invalid_argument("reasoning.budget_tokens", f'provider "{provider}" takes a reasoning effort only '
                                                          "(reasoning_effort), not a token budget")
    if config.HasField("include_thoughts"):
        raise invalid_argument("reasoning.include_thoughts", f'provider "{provider}" has no switch for returning '
                                                             "thoughts (the server decides whether it returns them)")
    if config.effort != pb.REASONING_EFFORT_UNSPECIFIED:
        body["reasoning_effort"] = REASONING_EFFORTS[config.effort]


def _messages(index: int, message: pb.Message, dialect: ChatDialect) -> list[dict[str, Any]]:
    """One message, or for ROLE_TOOL one "tool" message per result, in order."""
    if message.role == pb.ROLE_TOOL:
        # is_error has no field in this format: the result's text, which describes the
        # failure, goes as it is (the model reads the error from it).
        return [{"role": "tool", "tool_call_id": p.tool_result.tool_call_id, "content": result_text(p.tool_result)}
                for p in message.parts]
    if message.role == pb.ROLE_ASSISTANT:
        return [_assistant(index, message, dialect)]
    role = ROLE_NAMES[message.role]
    parts = message.parts
    if role != "user":
        # System turns take text only in the Chat format.
        for j, part in enumerate(parts):
            if part.WhichOneof("content") != "text":
                raise invalid_argument(
                    f"messages[{index}].parts[{j}]", f"{role} messages take text parts only in the OpenAI format"
                )
        return [{"role": role, "content": "".join(p.text for p in parts)}]
    return [{"role": role, "content": [_part(index, j, p, dialect) for j, p in enumerate(parts)]}]


def _assistant(index: int, message: pb.Message, dialect: ChatDialect) -> dict[str, Any]:
    """An echoed assistant turn: its text as `content`, its calls as `tool_calls` in order.

    Reasoning parts have no input field in the Chat format and are left out, unless the
    dialect names the server's field: OpenAI has none, and DeepSeek's old deepseek-reasoner
    answered 400 to reasoning_content sent back, while its thinking mode requires it.
    """
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thoughts: list[str] = []
    for j, part in enumerate(message.parts):
        kind = part.WhichOneof("content")
        if kind == "text":
            texts.append(part.text)
        elif kind == "tool_call":
            call = part.tool_call
            calls.append({"id": call.id, "type": "function",
                          "function": {"name": call.name, "arguments": call.arguments_json}})
        elif kind == "reasoning":
            thoughts.append(part.reasoning.text)
        else:
            raise invalid_argument(f"messages[{index}].parts[{j}]", "assistant messages take text, tool_call and "
                                                                   "reasoning parts only in the OpenAI format")
    # With calls and no text the format's own answer has content null.
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        out["tool_calls"] = calls
    if dialect.reasoning_input_field and any(thoughts):
        out[dialect.reasoning_input_field] = "".join(thoughts)
    return out


def _part(i: int, j: int, part: pb.Part, dialect: ChatDialect) -> dict[str, Any]:
    kind = part.WhichOneof("content")
    if kind == "text":
        return {"type": "text", "text": part.text}
    media = getattr(part, kind)
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": media_url(media)}}
    if kind == "audio":
        if dialect.audio_style == "input_audio":
            if media.WhichOneof("source") != "data":
                raise invalid_argument(f"messages[{i}].parts[{j}].audio.url", "this provider takes audio as bytes only")
            return {"type": "input_audio", "input_audio": {"data": base64.b64encode(media.data).decode("ascii"),
                                                           "format": audio_format(media.mime_type)}}
        return {"type": "audio_url", "audio_url": {"url": media_url(media)}}
    if kind == "video":
        return {"type": "video_url", "video_url": {"url": media_url(media)}}
    # document
    if media.WhichOneof("source") != "data":
        raise invalid_argument(f"messages[{i}].parts[{j}].document.url", "this provider takes documents as bytes only")
    return {"type": "file", "file": {"filename": f"document-{i}-{j}{_extension(media.mime_type)}",
                                     "file_data": data_url(media.mime_type, media.data)}}


def audio_format(mime_type: str) -> str:
    return {"audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3"}.get(
        mime_type, mime_type.rpartition("/")[2]
    )


def _extension(mime_type: str) -> str:
    return {"application/pdf": ".pdf", "text/plain": ".txt"}.get(mime_type, "")


def chat_completions_url(settings: ProviderSettings) -> httpx.URL:
    return httpx.URL(f"{settings.base_url}/chat/completions")


def build_http_request(
    settings: ProviderSettings, body: Mapping[str, Any], *, stream: bool, headers: Mapping[str, str] | None = None,
    url: httpx.URL | None = None,
) -> httpx.Request:
    """url: chat_completions_url(settings), which an adapter parses once rather than per request."""
    all_headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json",
                   "user-agent": USER_AGENT}
    if settings.api_key:
        all_headers["authorization"] = f"Bearer {settings.api_key}"
    if headers:
        all_headers.update(headers)
    return httpx.Request("POST", url if url is not None else chat_completions_url(settings), headers=all_headers,
                         content=orjson.dumps(body))


# -- response ----------------------------------------------------------------------------


def finish_reason(raw: str | None) -> pb.FinishReason:
    if not raw:
        return pb.FINISH_REASON_UNSPECIFIED
    return FINISH_REASONS.get(raw, pb.FINISH_REASON_OTHER)


def parse_completion(provider: str, body: bytes, requested_model: str, dialect: ChatDialect) -> pb.CompleteResponse:
    """A chat.completion body -> proto."""
    data = json_object(provider, body, "a body")
    choices = data.get("choices")
    if not isinstance(choices, list):
        if "error" in data:
            raise _in_body_error(provider, data["error"])
        raise bad_upstream_body(provider, "JSON without choices")
    out = pb.CompleteResponse(id=str(data.get("id") or ""), model=str(data.get("model") or requested_model),
                              provider=provider)
    created = _created_seconds(data.get("created"))
    if created:
        out.created.FromSeconds(created)
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise bad_upstream_body(provider, "a choice that is not a JSON object")
        message = _mapping(choice.get("message"))
        raw_reason = str(choice.get("finish_reason") or "")
        parts = _message_parts(message)
        calls = any(p.WhichOneof("content") == "tool_call" for p in parts)
        reason = finish_with_tools(finish_reason(raw_reason), calls)
        if _refusal(message):
            reason = pb.FINISH_REASON_CONTENT_FILTER
        out.choices.append(
            pb.Choice(
                index=_index(choice, position),
                message=pb.Message(role=pb.ROLE_ASSISTANT, parts=parts),
                finish_reason=reason,
                raw_finish_reason=raw_reason,
            )
        )
    usage = data.get("usage")
    if isinstance(usage, dict):
        out.usage.CopyFrom(normalize(reported_usage(usage, out.model, dialect)))
    return out


def _message_parts(message: Mapping[str, Any]) -> list[pb.Part]:
    """Reasoning first (the model thought before it answered), then the text, then the calls."""
    parts = []
    reasoning = _reasoning_text(message)
    if reasoning:
        parts.append(pb.Part(reasoning=pb.Reasoning(text=reasoning)))
    text = content_text(message.get("content")) + _refusal(message)
    if text:
        parts.append(pb.Part(text=text))
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            function = _mapping(call.get("function"))
            # An empty or missing id (some fine-tuned and local servers) is minted by tool_call().
            parts.append(pb.Part(tool_call=tool_call(_str(call.get("id")), _str(function.get("name")),
                                                     _str(function.get("arguments")))))
    return parts


def _reasoning_text(message: Mapping[str, Any]) -> str:
    """DeepSeek and xAI name the thinking `reasoning_content`; vLLM (new) and Ollama `reasoning`."""
    return _str(message.get("reasoning_content")) or _str(message.get("reasoning"))


def _refusal(message: Mapping[str, Any]) -> str:
    """The text of a structured-output refusal (`refusal`, with content null). Kept as text, so
    the caller reads why, and the choice ends as FINISH_REASON_CONTENT_FILTER (raw "stop" kept):
    the answer is not the JSON the schema asked for."""
    return _str(message.get("refusal"))


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


# Seconds past this are year 5138: a `created` this large is in milliseconds (OpenPipe sends those).
_MILLISECONDS_FROM = 10**11
# The last second a protobuf Timestamp holds (9999-12-31T23:59:59Z).
_TIMESTAMP_MAX = 253402300799


def _created_seconds(value: Any) -> int:
    """`created` as Unix seconds, or 0 (unset) for a missing, negative or impossible one."""
    if not _is_number(value) or value <= 0:
        return 0
    seconds = int(value // 1000 if value >= _MILLISECONDS_FROM else value)
    return seconds if seconds <= _TIMESTAMP_MAX else 0


def _index(choice: Mapping[str, Any], default: int) -> int:
    index = choice.get("index")
    return int(index) if _is_number(index) else default


def content_text(content: Any) -> str:
    """The visible text of a message or delta `content`: a string, or (Mistral and others)
    a list of typed parts, of which only the "text" ones are visible output."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content
                       if isinstance(p, dict) and p.get("type", "text") == "text" and isinstance(p.get("text"), str))
    return ""


def _in_body_error(provider: str, error: Any) -> GatewayError:
    """An error object inside a 2xx body or a stream event: the upstream failed behind the relay."""
    message = error.get("message") if isinstance(error, dict) else str(error)
    text = scrub(str(message or "error without message"))[:500]
    return GatewayError(grpc.StatusCode.UNAVAILABLE, f"{provider}: upstream answered with an error: {text}")


def parse_error(settings: ProviderSettings, response: httpx.Response) -> GatewayError:
    """An OpenAI-style error body: {"error": {"message", "type", "code"}}."""
    message = None
    try:
        data = orjson.loads(response.content)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message = error.get("message") or error.get("type")
        elif isinstance(error, str):
            message = error
        elif isinstance(data, dict) and isinstance(data.get("message"), str):
            message = data["message"]
    except orjson.JSONDecodeError:
        message = "the body is not JSON (an HTML error page or a proxy's answer)"
    return upstream_http_error(settings.name, response.status_code, response.headers.get("retry-after"), message,
                               secrets=(settings.api_key,))


# -- usage -------------------------------------------------------------------------------


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mapping(value: Any) -> Mapping[str, Any]:
    """A details object, or an empty one where a server sent null or something else."""
    # A decoded JSON object is a dict: the exact check first, the ABC's (slow) only if not.
    return value if type(value) is dict or isinstance(value, Mapping) else {}


def usd_to_nano(value: Any) -> int | None:
    """A provider's float USD figure as integer nano-USD, rounded half-even at the nano."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return int((Decimal(str(value)) * 1_000_000_000).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    except (InvalidOperation, ValueError):  # not a number, NaN (int() refuses it) or infinite
        return None


def ticks_to_nano(value: Any) -> int | None:
    """xAI-style `cost_in_usd_ticks` (1 USD = 10^10 ticks) as nano-USD, rounded half-even."""
    if not _is_number(value) or value < 0:
        return None
    try:
        return int((Decimal(str(value)) / 10).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    except (InvalidOperation, ValueError):  # NaN (int() refuses it), infinite, or too many digits
        return None


def reported_usage(u: Mapping[str, Any], model: str, dialect: ChatDialect) -> ReportedUsage:
    """OpenAI Chat usage, and the relay family's variations, in the provider-neutral sense."""
    r = ReportedUsage()
    count = r.figure  # a figure that is not a token count is 0 here, and named in r.refused
    prompt = count(u, "prompt_tokens")
    completion = count(u, "completion_tokens")
    pd = _mapping(u.get("prompt_tokens_details"))
    cd = _mapping(u.get("completion_tokens_details"))
    cache_read = count(pd, "cached_tokens")
    write_5m = count(u, "claude_cache_creation_5_m_tokens")
    write_1h = count(u, "claude_cache_creation_1_h_tokens")
    # new-api reports the total of Claude cache writes as cached_creation_tokens;
    # OpenRouter reports cache writes (no TTL) as cache_write_tokens.
    cached_creation = count(pd, "cached_creation_tokens")
    writes_total = max(cached_creation, count(pd, "cache_write_tokens"), write_5m + write_1h)
    write_unknown = writes_total - write_5m - write_1h

    r.input_by_modality = {m: count(pd, f"{m}_tokens") for m in ("text", "image", "audio", "video")}
    r.cache_read = cache_read
    r.cache_write_5m = write_5m
    r.cache_write_1h = write_1h
    r.cache_write_unknown_ttl = write_unknown
    r.output_by_modality = {m: count(cd, f"{m}_tokens") for m in ("text", "audio", "image")}
    r.reasoning = count(cd, "reasoning_tokens")
    total = r.stated_figure(u, "total_tokens")
    reasoning_outside, cache_outside = _outside_the_counts(prompt, completion, total, r.reasoning, cache_read)
    claude_upstream = dialect.relay_usage and (
        "claude" in model.lower()
        or write_5m > 0
        or write_1h > 0
        or cached_creation > 0
        or cache_read > prompt
    )
    if claude_upstream:
        # Claude behind a relay: prompt_tokens excludes cache reads and writes.
        r.input_total = prompt + cache_read + writes_total
        r.modalities_include_cache_reads = False
        reasoning_outside = bool(r.reasoning) and total == prompt + completion + r.reasoning
    elif cache_outside:
        # Cache reads that cannot be inside prompt_tokens (more of them than the prompt
        # holds, or a total that counts them separately) are added, not clamped away.
        r.input_total = prompt + cache_read
        r.modalities_include_cache_reads = False
    else:
        r.input_total = prompt

    r.output_total = completion
    if total is not None:
        r.provider_total = total
    if reasoning_outside:
        # xAI-style: reasoning reported outside completion_tokens; the total proves it.
        r.output_total = completion + r.reasoning
        r.warnings.add(W.USAGE_WARNING_REASONING_EXCLUDED_FROM_COMPLETION)
    # Rejected prediction tokens are inside completion_tokens and in no modality, so they
    # end up in output.unattributed; both prediction figures are kept as stated.
    r.accepted_prediction_tokens = r.stated_figure(cd, "accepted_prediction_tokens")
    r.rejected_prediction_tokens = r.stated_figure(cd, "rejected_prediction_tokens")
    if "cost" in u:
        r.cost_nano_usd = usd_to_nano(u.get("cost"))
    elif "cost_in_usd_ticks" in u:
        r.cost_nano_usd = ticks_to_nano(u.get("cost_in_usd_ticks"))
    return r


def _outside_the_counts(prompt: int, completion: int, total: int | None, reasoning: int,
                        cache_read: int) -> tuple[bool, bool]:
    """(reasoning outside completion_tokens, cache reads outside prompt_tokens).

    The provider's own total proves either when what it counts beyond prompt + completion
    is exactly the reasoning, the cache reads, or both; more cache reads than prompt
    tokens prove the second without a total.
    """
    extra = total - prompt - completion if total is not None else 0
    if reasoning and cache_read and extra == reasoning + cache_read:
        return True, True
    if reasoning and extra == reasoning:
        return True, cache_read > prompt
    if cache_read and extra == cache_read:
        return False, True
    return False, cache_read > prompt


# -- stream ------------------------------------------------------------------------------


class ChatStreamDecoder:
    """OpenAI chat.completion.chunk events -> text, reasoning and tool-call deltas, and a summary.

    The terminal event is `data: [DONE]`; a stream that ends without it was cut off.
    Usage arrives on the one chunk with a non-null `usage` (stream_options.include_usage).
    """

    def __init__(self, provider: str, requested_model: str, dialect: ChatDialect) -> None:
        self._provider = provider
        self._dialect = dialect
        self._text_bytes = 0
        self._id = ""
        self._model = requested_model
        self._created = 0
        self._finishes: dict[int, str] = {}
        self._refused: set[int] = set()
        self._usage: Mapping[str, Any] | None = None
        self._tools = ToolCallAssembler()
        self._reasoning = ReasoningAssembler()
        # Per choice and list position: the key of the call last begun there, for servers that
        # send tool-call pieces without an `index`.
        self._unindexed: dict[tuple[int, int], object] = {}
        self._unindexed_calls = 0
        self.finished = False

    def feed(self, event: ServerSentEvent) -> Iterable[pb.StreamCompleteResponse]:
        data = event.data
        if data == "[DONE]":
            self.finished = True
            return ()
        if not data:
            return ()
        chunk = json_object(self._provider, data, "a stream event")
        if "error" in chunk:
            raise _in_body_error(self._provider, chunk["error"])
        if not self._id and chunk.get("id"):
            self._id = str(chunk["id"])
            self._model = str(chunk.get("model") or self._model)
            self._created = _created_seconds(chunk.get("created"))
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage:
            # Servers that send usage on every chunk (vLLM continuous_usage_stats) send
            # running totals, so the last one wins.
            self._usage = usage
        out: list[pb.StreamCompleteResponse] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = _index(choice, 0)
            delta = _mapping(choice.get("delta"))
            thought = self._reasoning.text(index, _reasoning_text(delta))
            if thought is not None:
                out.append(thought)
            refusal = _refusal(delta)
            if refusal:
                # See _refusal: shown as text, and the choice ends as a content filter.
                self._refused.add(index)
            text = content_text(delta.get("content")) + refusal
            if text:
                self._text_bytes += len(text.encode())
                out.append(pb.StreamCompleteResponse(delta=pb.TextDelta(choice_index=index, text=text)))
            for position, piece in enumerate(delta.get("tool_calls") or ()):
                if isinstance(piece, dict):
                    message = self._tool_piece(index, position, piece)
                    if message is not None:
                        out.append(message)
            reason = choice.get("finish_reason")
            if reason:
                self._finishes[index] = str(reason)
        return out

    def _tool_piece(self, choice: int, position: int, piece: Mapping[str, Any]) -> pb.StreamCompleteResponse | None:
        """A call's first piece carries id and name (and maybe arguments); later ones arguments.

        Pieces are keyed by `index`; a server that sends none is keyed by the piece's position
        in the delta's list, and a piece there that names a function begins a new call."""
        function = _mapping(piece.get("function"))
        name = _str(function.get("name"))
        arguments = _str(function.get("arguments"))
        raw_index = piece.get("index")
        key: object
        if _is_number(raw_index):
            key = int(raw_index)
        else:
            key = self._unindexed.get((choice, position))
            if key is None or (name and self._tools.has(choice, key)):
                self._unindexed_calls += 1
                key = ("unindexed", self._unindexed_calls)
                self._unindexed[(choice, position)] = key
        if not self._tools.has(choice, key):
            return self._tools.start(choice, key, _str(piece.get("id")), name, arguments)
        return self._tools.append(choice, key, arguments)

    def summary(self) -> pb.StreamSummary:
        summary = pb.StreamSummary(id=self._id, model=self._model, provider=self._provider)
        if self._created:
            summary.created.FromSeconds(self._created)
        finishes = choice_finishes(self._finishes, finish_reason, tools=self._tools, reasoning=self._reasoning)
        for finish in finishes:
            if finish.index in self._refused:
                finish.finish_reason = pb.FINISH_REASON_CONTENT_FILTER
        summary.finishes.extend(finishes)
        reported = reported_usage(self._usage, self._model, self._dialect) if self._usage is not None else None
        usage = stream_usage(reported, finished=self.finished)
        if usage is not None:
            summary.usage.CopyFrom(usage)
        return summary

    @property
    def output_bytes(self) -> int:
        """Billed output seen so far (text, thinking and tool arguments), for an estimate when
        usage never comes."""
        return self._text_bytes + self._reasoning.output_bytes + self._tools.output_bytes


# -- the adapter -------------------------------------------------------------------------


class OpenAIChatAdapter:
    """An Adapter for any server that speaks the Chat Completions format."""

    def __init__(self, settings: ProviderSettings, capabilities: Capabilities, dialect: ChatDialect,
                 extra_headers: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.capabilities = capabilities
        self.dialect = dialect
        self._extra_headers = dict(extra_headers or {})
        # Parsed once: parsing the URL string took about half of building each request.
        try:
            self._url = chat_completions_url(settings)
        except httpx.InvalidURL as exc:
            raise ValueError(f"base_url is not a usable URL ({exc})") from None

    def build_request(self, request: AnyRequest, model: str, *, stream: bool) -> httpx.Request:
        body = build_body(request, model, stream=stream, dialect=self.dialect, provider=self.settings.name)
        return build_http_request(self.settings, body, stream=stream, headers=self._extra_headers, url=self._url)

    def parse_response(self, response: httpx.Response, request: AnyRequest, model: str) -> pb.CompleteResponse:
        return parse_completion(self.settings.name, response.content, model, self.dialect)

    def stream_decoder(self, request: AnyRequest, model: str) -> ChatStreamDecoder:
        return ChatStreamDecoder(self.settings.name, model, self.dialect)

    def parse_error(self, response: httpx.Response) -> GatewayError:
        return parse_error(self.settings, response)
