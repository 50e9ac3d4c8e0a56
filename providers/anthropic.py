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
    ReasoningAssembler,
    ReportedUsage,
    ServerSentEvent,
    ToolCallAssembler,
    arguments_object,
    arguments_text,
    bad_upstream_body,
    choice_finishes,
    finish_with_tools,
    grpc_code_for_http_status,
    hookimpl,
    invalid_argument,
    json_object,
    normalize,
    result_text,
    scrub,
    struct_to_dict,
    tool_call,
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
    tools=True,
    structured_output=True,
    reasoning=True,
)

# Tool results go back in a user turn (Anthropic has no tool role).
ROLES = {pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant", pb.ROLE_TOOL: "user"}

# output_config.effort (GA with anthropic-version 2023-06-01, no beta header) takes low,
# medium, high, xhigh and max; the contract's MINIMAL has no counterpart and is refused.
EFFORTS = {pb.REASONING_EFFORT_LOW: "low", pb.REASONING_EFFORT_MEDIUM: "medium", pb.REASONING_EFFORT_HIGH: "high"}
# ThinkingConfigEnabled.budget_tokens: "Must be >=1024 and less than max_tokens" (API reference).
MIN_THINKING_BUDGET = 1024
# While thinking, top_p is accepted only from 0.95 to 1 (extended thinking guide, sampling).
MIN_TOP_P_THINKING = 0.95

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
    max_tokens = request.max_tokens if request.HasField("max_tokens") else default_max_tokens
    thinking, effort = _thinking(request, provider, max_tokens)
    thinking_on = thinking is not None and thinking["type"] != "disabled"
    if thinking_on:
        _check_sampling_while_thinking(request, provider)
    system, messages = _conversation(request, provider)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
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
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
    choice = _tool_choice(request, provider, thinking_on=thinking_on)
    if choice is not None:
        body["tool_choice"] = choice
    if thinking is not None:
        body["thinking"] = thinking
    output_config: dict[str, Any] = {}
    if effort is not None:
        output_config["effort"] = effort
    output_format = _output_format(request, provider)
    if output_format is not None:
        output_config["format"] = output_format
    if output_config:
        body["output_config"] = output_config
    body["stream"] = stream
    return body


# -- request: tools, structured output, thinking ------------------------------------------


def _tool(tool: pb.Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description:
        out["description"] = tool.description
    # input_schema is required: a tool declared without parameters takes an empty object.
    out["input_schema"] = (struct_to_dict(tool.parameters) if tool.HasField("parameters")
                           else {"type": "object", "properties": {}})
    if tool.HasField("strict"):
        # Strict tool use (grammar-constrained inputs) is a documented tool field.
        out["strict"] = tool.strict
    return out


def _tool_choice(request: AnyRequest, provider: str, *, thinking_on: bool) -> dict[str, Any] | None:
    """tool_choice, with disable_parallel_tool_use on it for parallel_tool_calls=false."""
    kind = request.tool_choice.WhichOneof("choice") if request.HasField("tool_choice") else None
    choice: dict[str, Any] | None = None
    if kind == "function_name":
        if thinking_on:
            raise invalid_argument("tool_choice.function_name",
                                   f'provider "{provider}" cannot force a tool call while thinking is on '
                                   "(use auto or none)")
        choice = {"type": "tool", "name": request.tool_choice.function_name}
    elif kind == "mode":
        mode = request.tool_choice.mode
        if mode == pb.TOOL_CHOICE_MODE_NONE:
            # Without tools there is nothing to switch off; with them, "none" forbids calls,
            # which also honours parallel_tool_calls=false ("none" takes no parallel switch).
            return {"type": "none"} if request.tools else None
        if mode == pb.TOOL_CHOICE_MODE_REQUIRED:
            if thinking_on:
                raise invalid_argument("tool_choice.mode",
                                       f'provider "{provider}" cannot force a tool call while thinking is on '
                                       "(use auto or none)")
            choice = {"type": "any"}
        else:
            choice = {"type": "auto"}
    if request.HasField("parallel_tool_calls") and not request.parallel_tool_calls:
        choice = choice or {"type": "auto"}  # auto is Anthropic's default when tools are sent
        choice["disable_parallel_tool_use"] = True
    return choice


def _output_format(request: AnyRequest, provider: str) -> dict[str, Any] | None:
    """response_format -> output_config.format (structured outputs, GA, no beta header)."""
    if not request.HasField("response_format"):
        return None
    kind = request.response_format.WhichOneof("format")
    if kind == "json_object":
        raise invalid_argument("response_format.json_object",
                               f'provider "{provider}" has no JSON mode without a schema (use json_schema)')
    if kind != "json_schema":
        return None
    fmt = request.response_format.json_schema
    if fmt.description:
        # The format takes only a schema; the description would steer the model, so it is
        # not dropped: the caller can put it in the schema itself.
        raise invalid_argument("response_format.json_schema.description",
                               f'provider "{provider}" takes no description beside the schema '
                               '(put it in the schema\'s "description")')
    # name is only a label; strict is moot: Anthropic always constrains output to the schema.
    return {"type": "json_schema", "schema": struct_to_dict(fmt.schema)}


def _thinking(request: AnyRequest, provider: str, max_tokens: int) -> tuple[dict[str, Any] | None, str | None]:
    """(thinking, output_config.effort) for reasoning settings.

    A budget turns on `thinking: {"type": "enabled", budget_tokens}`; an effort without a
    budget turns on adaptive thinking, where output_config.effort steers the depth; effort
    NONE is `{"type": "disabled"}`. include_thoughts is `display`: summarized, or omitted
    (thinking comes back empty, with its signature)."""
    if not request.HasField("reasoning"):
        return None, None
    config = request.reasoning
    effort = config.effort
    if effort == pb.REASONING_EFFORT_MINIMAL:
        raise invalid_argument("reasoning.effort",
                               f'provider "{provider}" has no minimal effort (it takes low, medium or high)')
    has_budget = config.HasField("budget_tokens")
    if effort == pb.REASONING_EFFORT_NONE:
        if has_budget:
            raise invalid_argument("reasoning.budget_tokens",
                                   f'provider "{provider}" takes no thinking budget with REASONING_EFFORT_NONE '
                                   "(no thinking)")
        thinking: dict[str, Any] | None = {"type": "disabled"}
    elif has_budget:
        budget = config.budget_tokens
        if budget < MIN_THINKING_BUDGET:
            raise invalid_argument("reasoning.budget_tokens",
                                   f'provider "{provider}" needs at least {MIN_THINKING_BUDGET}, got {budget}')
        if budget >= max_tokens:
            raise invalid_argument("reasoning.budget_tokens",
                                   f'provider "{provider}" needs it below max_tokens ({max_tokens}), got {budget}')
        thinking = {"type": "enabled", "budget_tokens": budget}
    elif effort in EFFORTS:
        thinking = {"type": "adaptive"}
    else:
        thinking = None
    if config.HasField("include_thoughts"):
        if thinking is None or thinking["type"] == "disabled":
            raise invalid_argument("reasoning.include_thoughts",
                                   f'provider "{provider}" applies it only to thinking the request turns on '
                                   "(set budget_tokens or an effort)")
        thinking["display"] = "summarized" if config.include_thoughts else "omitted"
    return thinking, EFFORTS.get(effort)


def _check_sampling_while_thinking(request: AnyRequest, provider: str) -> None:
    """Thinking is not compatible with temperature changes, and narrows top_p (extended
    thinking guide); refused here rather than left to an upstream 400."""
    if request.HasField("temperature"):
        raise invalid_argument("temperature", f'provider "{provider}" takes no temperature while thinking is on')
    if request.HasField("top_p") and request.top_p < MIN_TOP_P_THINKING:
        raise invalid_argument("top_p", f'provider "{provider}" takes {MIN_TOP_P_THINKING:g} to 1 while thinking '
                                        f"is on, got {request.top_p:g}")


# -- request: the conversation ---------------------------------------------------------------


def _conversation(request: AnyRequest, provider: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System text goes to the top-level `system`; other turns to `messages`, with
    consecutive same-role turns merged into one, as the API would merge them anyway.

    ROLE_TOOL messages become tool_result blocks of a user turn: every result of a turn in
    ONE user message, ahead of any other block there, as Anthropic requires."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        if message.role == pb.ROLE_SYSTEM:
            system.extend(_text_block(i, j, part, "system", provider) for j, part in enumerate(message.parts))
            continue
        role = ROLES.get(message.role)
        if role is None:
            raise invalid_argument(f"messages[{i}].role", f"unknown role {message.role}")
        if message.role == pb.ROLE_ASSISTANT:
            blocks = [_assistant_block(i, j, part, provider) for j, part in enumerate(message.parts)]
        elif message.role == pb.ROLE_TOOL:
            blocks = [_tool_result_block(i, j, part) for j, part in enumerate(message.parts)]
        else:
            blocks = [_block(i, j, part, role, provider) for j, part in enumerate(message.parts)]
        if turns and turns[-1]["role"] == role:
            content = turns[-1]["content"]
            if message.role == pb.ROLE_TOOL:
                # Results go after the results already there, before a user's own blocks.
                at = next((k for k, b in enumerate(content) if b["type"] != "tool_result"), len(content))
                content[at:at] = blocks
            else:
                content.extend(blocks)
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


def _assistant_block(i: int, j: int, part: pb.Part, provider: str) -> dict[str, Any]:
    """An echoed assistant part, in its place: thinking goes back exactly as it came (the
    API checks its signature), tool calls as tool_use with their parsed input."""
    kind = part.WhichOneof("content")
    path = f"messages[{i}].parts[{j}]"
    if kind == "text":
        return {"type": "text", "text": part.text}
    if kind == "tool_call":
        call = part.tool_call
        return {"type": "tool_use", "id": call.id, "name": call.name,
                "input": _call_input(f"{path}.tool_call", call, provider)}
    if kind == "reasoning":
        return _thinking_block(f"{path}.reasoning", part.reasoning, provider)
    raise invalid_argument(path, f'provider "{provider}" takes text, tool calls and reasoning only in '
                                 "assistant messages")


def _call_input(path: str, call: pb.ToolCall, provider: str) -> dict[str, Any]:
    """tool_use.input is an object: the call's arguments_json parsed (its parsed `arguments`
    when only those were set; no arguments at all is the empty object)."""
    value = arguments_object(call)
    if value is None:
        raise invalid_argument(f"{path}.arguments_json",
                               f'provider "{provider}" takes tool call arguments as a JSON object only')
    return value


def _thinking_block(path: str, reasoning: pb.Reasoning, provider: str) -> dict[str, Any]:
    if reasoning.redacted:
        return {"type": "redacted_thinking", "data": _opaque(f"{path}.redacted", reasoning.redacted)}
    if not reasoning.signature:
        # Anthropic takes back only thinking it signed (a thinking block without a valid
        # signature is a 400), so unsigned reasoning from elsewhere cannot be sent.
        raise invalid_argument(f"{path}.signature",
                               f'provider "{provider}" takes back only signed thinking (signature or redacted '
                               "is required)")
    return {"type": "thinking", "thinking": reasoning.text,
            "signature": _opaque(f"{path}.signature", reasoning.signature)}


def _opaque(path: str, value: bytes) -> str:
    """A signature or redacted data: Anthropic's string, kept as its UTF-8 bytes."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise invalid_argument(path, "is not the text Anthropic returned (not UTF-8)") from None


def _tool_result_block(i: int, j: int, part: pb.Part) -> dict[str, Any]:
    if part.WhichOneof("content") != "tool_result":
        # Central validation refuses this first; never drop it if it gets here.
        raise invalid_argument(f"messages[{i}].parts[{j}]", "ROLE_TOOL messages take tool_result parts only")
    result = part.tool_result
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": result.tool_call_id}
    text = result_text(result)
    if text:  # content is optional; an empty result is sent without it
        block["content"] = text
    if result.is_error:
        block["is_error"] = True
    return block


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
    """A Message object -> the contract: its content blocks as parts, in order."""
    data = json_object(provider, body, "a body")
    if data.get("type") == "error":
        raise provider_error(provider, data.get("error"), secrets)
    content = data.get("content")
    if not isinstance(content, list):
        raise bad_upstream_body(provider, "JSON without content")
    parts = [part for block in content if (part := _part(block)) is not None]
    raw_reason = str(data.get("stop_reason") or "")
    has_calls = any(p.WhichOneof("content") == "tool_call" for p in parts)
    out = pb.CompleteResponse(id=str(data.get("id") or ""), model=str(data.get("model") or requested_model),
                              provider=provider)
    out.choices.append(
        pb.Choice(
            index=0,
            message=pb.Message(role=pb.ROLE_ASSISTANT, parts=parts),
            finish_reason=finish_with_tools(finish_reason(raw_reason), has_calls),
            raw_finish_reason=raw_reason,
        )
    )
    usage = data.get("usage")
    if isinstance(usage, dict):
        out.usage.CopyFrom(usage_from(usage))
    return out


def _part(block: Any) -> pb.Part | None:
    """One content block as a part; server-tool blocks and empty text have none."""
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    if kind == "text":
        return pb.Part(text=block["text"]) if isinstance(block.get("text"), str) and block["text"] else None
    if kind == "thinking":
        return pb.Part(reasoning=pb.Reasoning(text=_string(block.get("thinking")),
                                              signature=_string(block.get("signature")).encode()))
    if kind == "redacted_thinking":
        return pb.Part(reasoning=pb.Reasoning(redacted=_string(block.get("data")).encode()))
    if kind == "tool_use":
        return pb.Part(tool_call=tool_call(_string(block.get("id")), _string(block.get("name")),
                                           arguments_text(block.get("input"))))
    return None


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


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


def _add_sampling(r: ReportedUsage, u: Mapping[str, Any]) -> None:
    """Add one sampling's figures (top-level usage or one iteration) in Anthropic's sense:
    input_tokens excludes cache reads and cache writes, so all three add up to the input."""
    split = u.get("cache_creation")
    write_5m = r.figure(split, "ephemeral_5m_input_tokens")
    write_1h = r.figure(split, "ephemeral_1h_input_tokens")
    writes = r.figure(u, "cache_creation_input_tokens")
    if write_5m + write_1h > writes:
        # A split larger than its total: trust the split (it is what each TTL is billed at).
        if "cache_creation_input_tokens" in u:
            r.warnings.add(W.USAGE_WARNING_DETAILS_EXCEED_TOTAL)
        writes = write_5m + write_1h
    cache_read = r.figure(u, "cache_read_input_tokens")
    r.input_total += r.figure(u, "input_tokens") + cache_read + writes
    r.cache_read += cache_read
    r.cache_write_5m += write_5m
    r.cache_write_1h += write_1h
    r.cache_write_unknown_ttl += writes - write_5m - write_1h
    r.output_total += r.figure(u, "output_tokens")


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
    r.reasoning = r.figure(u.get("output_tokens_details"), "thinking_tokens")
    return r


def other_models(u: Mapping[str, Any]) -> list[pb.ModelUsage]:
    """Advisor iterations, summed per advisor model, in order of first appearance."""
    per_model: dict[str, ReportedUsage] = {}
    for advisor in _iterations(u, "advisor_message"):
        _add_sampling(per_model.setdefault(str(advisor.get("model") or ""), ReportedUsage()), advisor)
    return [pb.ModelUsage(model=model, usage=normalize(r)) for model, r in per_model.items()]


def server_tool_use(u: Mapping[str, Any], r: ReportedUsage) -> list[pb.ServerToolUse]:
    """Calls per server-side tool; a count that is not one is left out and noted in r.refused."""
    counters = u.get("server_tool_use")
    if not isinstance(counters, Mapping):
        return []
    counts = {str(tool): r.figure(counters, tool) for tool in sorted(counters)}
    return [pb.ServerToolUse(tool=tool, count=count) for tool, count in counts.items() if count]


def usage_from(u: Mapping[str, Any], *, estimated: bool = False) -> pb.Usage:
    reported = reported_usage(u, estimated=estimated)
    tools = server_tool_use(u, reported)
    usage = normalize(reported)
    usage.other_models.extend(other_models(u))
    if tools:  # extending with nothing would still mark provider_reported as set
        usage.provider_reported.server_tool_use.extend(tools)
    return usage


# -- stream ------------------------------------------------------------------------------


class MessageStreamDecoder:
    """Messages API stream events -> text, reasoning and tool-call deltas and a final summary.

    message_start carries the id, model and first usage; each message_delta carries
    cumulative usage that overwrites (never adds to) the fields it names; message_stop is
    the terminal event, so a stream without it was cut off. Content blocks are keyed by
    their `index`: a tool_use block's input arrives as input_json_delta fragments, a
    thinking block's text as thinking_delta and its signature as signature_delta.
    """

    def __init__(self, provider: str, requested_model: str, secrets: Iterable[str | None] = ()) -> None:
        self._provider = provider
        self._secrets = tuple(secrets)
        self._text_bytes = 0
        self._id = ""
        self._model = requested_model
        self._stop_reason = ""
        self._usage: dict[str, Any] | None = None
        self._tools = ToolCallAssembler()
        self._reasoning = ReasoningAssembler()
        # tool_use block index -> whether any argument text arrived for it
        self._tool_blocks: dict[Any, bool] = {}
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
            return self._block_start(data.get("index"), data.get("content_block"))
        elif kind == "content_block_delta":
            return self._delta(data.get("index"), data.get("delta"))
        elif kind == "content_block_stop":
            return self._block_stop(data.get("index"))
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop_reason = str(delta["stop_reason"])
            usage = data.get("usage")
            if isinstance(usage, dict):
                self._usage = {**(self._usage or {}), **usage}
        elif kind == "message_stop":
            self.finished = True
        # ping and event types added later carry nothing for us.
        return ()

    def _start(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        self._id = str(message.get("id") or self._id)
        self._model = str(message.get("model") or self._model)
        if isinstance(message.get("usage"), dict):
            self._usage = dict(message["usage"])

    def _block_start(self, index: Any, block: Any) -> Iterable[pb.StreamCompleteResponse]:
        if not isinstance(block, dict):
            return ()
        kind = block.get("type")
        if kind == "text":
            return self._text(block.get("text"))
        if kind == "thinking":
            self._reasoning.begin(0)
            return self._thinking(block.get("thinking"), block.get("signature"))
        if kind == "redacted_thinking":
            self._reasoning.redacted(0, _string(block.get("data")).encode())
        elif kind == "tool_use" and not self._tools.has(0, index):
            # The block opens with `input: {}` and the arguments follow as input_json_delta;
            # an input already whole in the start (never in Anthropic's transcripts) is kept.
            given = block.get("input")
            arguments = arguments_text(given) if isinstance(given, dict) and given else ""
            self._tool_blocks[index] = bool(arguments)
            return (self._tools.start(0, index, _string(block.get("id")), _string(block.get("name")), arguments),)
        return ()

    def _delta(self, index: Any, delta: Any) -> Iterable[pb.StreamCompleteResponse]:
        if not isinstance(delta, dict):
            return ()
        kind = delta.get("type")
        if kind == "text_delta":
            return self._text(delta.get("text"))
        if kind == "thinking_delta":
            return self._thinking(delta.get("thinking"), None)
        if kind == "signature_delta":
            return self._thinking(None, delta.get("signature"))
        if kind == "input_json_delta" and index in self._tool_blocks:
            message = self._tools.append(0, index, _string(delta.get("partial_json")))
            if message is None:  # the first fragment is often ""
                return ()
            self._tool_blocks[index] = True
            return (message,)
        return ()

    def _block_stop(self, index: Any) -> Iterable[pb.StreamCompleteResponse]:
        if self._tool_blocks.get(index) is False:
            # A call without arguments streams only `partial_json: ""`; its input is {}, as
            # in a unary answer, and the fragments still add up to arguments_json.
            self._tool_blocks[index] = True
            message = self._tools.append(0, index, "{}")
            return (message,) if message is not None else ()
        return ()

    def _thinking(self, text: Any, signature: Any) -> Iterable[pb.StreamCompleteResponse]:
        if isinstance(signature, str) and signature:
            self._reasoning.signature(0, signature.encode())
        message = self._reasoning.text(0, text) if isinstance(text, str) else None
        return (message,) if message is not None else ()

    def _text(self, text: Any) -> Iterable[pb.StreamCompleteResponse]:
        if not isinstance(text, str) or not text:
            return ()
        self._text_bytes += len(text.encode())
        return (pb.StreamCompleteResponse(delta=pb.TextDelta(choice_index=0, text=text)),)

    def summary(self) -> pb.StreamSummary:
        summary = pb.StreamSummary(id=self._id, model=self._model, provider=self._provider)
        raw = {0: self._stop_reason} if self._stop_reason else {}
        summary.finishes.extend(choice_finishes(raw, finish_reason, tools=self._tools, reasoning=self._reasoning))
        if self._usage is not None:
            summary.usage.CopyFrom(usage_from(self._usage, estimated=not self.finished))
        return summary

    @property
    def output_bytes(self) -> int:
        """Billed output seen so far: text, thinking and tool-call arguments, for an estimate
        when usage never comes."""
        return self._text_bytes + self._reasoning.output_bytes + self._tools.output_bytes


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
