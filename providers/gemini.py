"""Google Gemini API (v1beta): generateContent and streamGenerateContent over SSE.

The key goes in the `x-goog-api-key` header, never in the URL, so it cannot reach an
access log. Media goes as `inline_data` (bytes) or `file_data` (a URI Gemini resolves
itself: its own Files API and YouTube); every other web URL is fetched and inlined by
the engine before the request reaches this module. Pure: no IO.

Tools go as functionDeclarations with their JSON Schema, results as functionResponse parts
matched by name (Gemini gives calls no id, so Tollway mints ids and never sends those back).
Thinking comes back as `thought: true` parts; the thoughtSignature Gemini puts on a part
(thought, functionCall or text) is kept as Reasoning.signature so that an echoed assistant
turn puts it back on the same part, as Gemini requires during function calling.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from google.protobuf import timestamp_pb2

from tollway.plugin import (
    AUDIO,
    DOCUMENT,
    IMAGE,
    VIDEO,
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
    calls_in,
    choice_finishes,
    finish_with_tools,
    hookimpl,
    invalid_argument,
    is_minted,
    json_object,
    json_object_or_none,
    normalize,
    result_text,
    stream_usage,
    struct_to_dict,
    tool_call,
    upstream_http_error,
)
from tollway.providers.gemini_partial_args import PartialArguments
from tollway.v1 import completion_pb2 as pb

W = pb.UsageWarning

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
USER_AGENT = "tollway/0.1"

# URIs Gemini fetches itself. Files API URIs are always on Google's host, whatever
# base_url points at (a proxy still forwards them to the same Files API).
FILES_API_PREFIX = "https://generativelanguage.googleapis.com/v1beta/files/"
YOUTUBE_PREFIXES = (
    "https://www.youtube.com/watch?v=",
    "https://youtube.com/watch?v=",
    "https://m.youtube.com/watch?v=",
    "https://youtu.be/",
)

# Gemini documents its own spelling for some types; sniffers and servers use the IANA
# names on the left. Both are accepted and the documented spelling is sent.
GEMINI_SPELLING = {
    "audio/mpeg": "audio/mp3",
    "audio/x-aiff": "audio/aiff",
    "video/quicktime": "video/mov",
    "video/x-msvideo": "video/avi",
    "video/x-ms-wmv": "video/wmv",
}

CAPABILITIES = Capabilities(
    # The types listed in Gemini's image, audio, video and document understanding guides.
    mime_types={
        IMAGE: frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"}),
        AUDIO: frozenset({"audio/wav", "audio/mp3", "audio/aiff", "audio/aac", "audio/ogg", "audio/flac",
                          "audio/mpeg", "audio/x-aiff"}),
        VIDEO: frozenset({"video/mp4", "video/mpeg", "video/mov", "video/avi", "video/x-flv", "video/mpg",
                          "video/webm", "video/wmv", "video/3gpp", "video/quicktime", "video/x-msvideo",
                          "video/x-ms-wmv"}),
        DOCUMENT: frozenset({"application/pdf", "text/plain"}),
    },
    url_modalities=frozenset(),
    url_prefixes={
        IMAGE: (FILES_API_PREFIX,),
        AUDIO: (FILES_API_PREFIX,),
        VIDEO: (FILES_API_PREFIX, *YOUTUBE_PREFIXES),
        DOCUMENT: (FILES_API_PREFIX,),
    },
    tools=True,
    structured_output=True,
    reasoning=True,
)

# ToolChoiceMode -> FunctionCallingConfig.mode ("ANY": the model must call a function).
TOOL_MODES = {
    pb.TOOL_CHOICE_MODE_AUTO: "AUTO",
    pb.TOOL_CHOICE_MODE_NONE: "NONE",
    pb.TOOL_CHOICE_MODE_REQUIRED: "ANY",
}

# ReasoningEffort -> ThinkingConfig.thinkingLevel (the enum's names; which levels a model
# takes is the model's business, e.g. Gemini 3 Pro only LOW and HIGH). NONE is thinkingBudget 0.
THINKING_LEVELS = {
    pb.REASONING_EFFORT_MINIMAL: "MINIMAL",
    pb.REASONING_EFFORT_LOW: "LOW",
    pb.REASONING_EFFORT_MEDIUM: "MEDIUM",
    pb.REASONING_EFFORT_HIGH: "HIGH",
}

# Candidate.FinishReason, every value of the v1beta enum, each mapped on purpose.
FINISH_REASONS = {
    "STOP": pb.FINISH_REASON_STOP,  # natural stop or a stop sequence
    "MAX_TOKENS": pb.FINISH_REASON_LENGTH,
    # The provider withheld or cut the content for what it says: a content filter.
    "SAFETY": pb.FINISH_REASON_CONTENT_FILTER,
    "RECITATION": pb.FINISH_REASON_CONTENT_FILTER,
    "BLOCKLIST": pb.FINISH_REASON_CONTENT_FILTER,
    "PROHIBITED_CONTENT": pb.FINISH_REASON_CONTENT_FILTER,
    "SPII": pb.FINISH_REASON_CONTENT_FILTER,
    "IMAGE_SAFETY": pb.FINISH_REASON_CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": pb.FINISH_REASON_CONTENT_FILTER,
    "IMAGE_RECITATION": pb.FINISH_REASON_CONTENT_FILTER,
    # "flagged for using an unsupported language": the candidate was flagged and cut
    # like the filters above, so a caller handles it the same way.
    "LANGUAGE": pb.FINISH_REASON_CONTENT_FILTER,
    # Failed or refused calls: no call came back that the caller could act on.
    "MALFORMED_FUNCTION_CALL": pb.FINISH_REASON_OTHER,
    "UNEXPECTED_TOOL_CALL": pb.FINISH_REASON_OTHER,
    "TOO_MANY_TOOL_CALLS": pb.FINISH_REASON_OTHER,
    "IMAGE_OTHER": pb.FINISH_REASON_OTHER,
    "NO_IMAGE": pb.FINISH_REASON_OTHER,
    "OTHER": pb.FINISH_REASON_OTHER,
    "FINISH_REASON_UNSPECIFIED": pb.FINISH_REASON_OTHER,
}

# ModalityTokenCount.modality -> usage bucket names.
MODALITIES = {"TEXT": "text", "IMAGE": "image", "AUDIO": "audio", "VIDEO": "video", "DOCUMENT": "document"}

MAX_STOP_SEQUENCES = 5
INT32_MAX = 2**31 - 1


# -- request -----------------------------------------------------------------------------


def build_body(request: AnyRequest, provider: str) -> dict[str, Any]:
    system_parts: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    calls: dict[str, pb.ToolCall] | None = None  # the conversation's calls, found once when needed
    previous_role = pb.ROLE_UNSPECIFIED
    for i, message in enumerate(request.messages):
        if message.role == pb.ROLE_SYSTEM:
            # Gemini has one system instruction; system turns are joined into it in order.
            for j, part in enumerate(message.parts):
                if part.WhichOneof("content") != "text":
                    raise invalid_argument(f"messages[{i}].parts[{j}]", "system messages take text parts only")
                system_parts.append({"text": part.text})
            continue
        if message.role == pb.ROLE_TOOL:
            calls = calls_in(request.messages) if calls is None else calls
            parts = [_function_response(i, j, p.tool_result, calls) for j, p in enumerate(message.parts)]
            if previous_role == pb.ROLE_TOOL:
                # The results of one turn's calls go back together, in one user turn.
                contents[-1]["parts"].extend(parts)
            else:
                contents.append({"role": "user", "parts": parts})
        elif message.role == pb.ROLE_ASSISTANT:
            contents.append({"role": "model", "parts": _model_parts(i, message, provider)})
        else:
            contents.append({"role": "user", "parts": [_part(i, j, p) for j, p in enumerate(message.parts)]})
        previous_role = message.role
    if not contents:
        raise invalid_argument("messages", f'provider "{provider}" needs at least one user or assistant message')
    body: dict[str, Any] = {"contents": contents}
    if system_parts:
        body["system_instruction"] = {"parts": system_parts}
    body.update(_tools(request, provider))
    config = _generation_config(request, provider)
    if config:
        body["generationConfig"] = config
    return body


def _generation_config(request: AnyRequest, provider: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if request.HasField("max_tokens"):
        config["maxOutputTokens"] = request.max_tokens
    if request.HasField("temperature"):
        config["temperature"] = request.temperature
    if request.HasField("top_p"):
        config["topP"] = request.top_p
    if request.stop:
        if len(request.stop) > MAX_STOP_SEQUENCES:
            raise invalid_argument("stop", f'provider "{provider}" accepts at most {MAX_STOP_SEQUENCES} stop sequences')
        config["stopSequences"] = list(request.stop)
    if request.HasField("seed"):
        if not -INT32_MAX - 1 <= request.seed <= INT32_MAX:
            raise invalid_argument("seed", f'provider "{provider}" takes a 32-bit seed')
        config["seed"] = request.seed
    if request.HasField("response_format"):
        config.update(_response_format(request.response_format, provider))
    if request.HasField("reasoning"):
        thinking = _thinking_config(request.reasoning, provider)
        if thinking:
            config["thinkingConfig"] = thinking
    return config


def _response_format(fmt: pb.ResponseFormat, provider: str) -> dict[str, Any]:
    """json_schema -> responseJsonSchema (JSON Schema, the v1beta alternative to the OpenAPI
    subset of responseSchema); json_object -> JSON mode without a schema."""
    config: dict[str, Any] = {"responseMimeType": "application/json"}
    if fmt.WhichOneof("format") == "json_schema":
        schema = struct_to_dict(fmt.json_schema.schema)
        # The format's name only labels the schema for OpenAI; Gemini has no place for it and
        # it changes nothing in the answer. Its description guides the model, so it goes into
        # the schema's own "description" keyword (one Gemini supports), never over another.
        description = fmt.json_schema.description
        if description:
            if schema.get("description", description) != description:
                raise invalid_argument("response_format.json_schema.description",
                                       f'provider "{provider}" takes one description: the schema already has another')
            schema["description"] = description
        config["responseJsonSchema"] = schema
    return config


def _thinking_config(reasoning: pb.ReasoningConfig, provider: str) -> dict[str, Any]:
    thinking: dict[str, Any] = {}
    effort = reasoning.effort
    if effort != pb.REASONING_EFFORT_UNSPECIFIED and reasoning.HasField("budget_tokens"):
        # Gemini refuses thinkingLevel and thinkingBudget in one request (400).
        raise invalid_argument("reasoning.budget_tokens",
                               f'provider "{provider}" takes reasoning.effort or reasoning.budget_tokens, not both')
    if effort == pb.REASONING_EFFORT_NONE:
        thinking["thinkingBudget"] = 0  # thinking off, on the models that allow it
    elif effort != pb.REASONING_EFFORT_UNSPECIFIED:
        thinking["thinkingLevel"] = THINKING_LEVELS[effort]
    if reasoning.HasField("budget_tokens"):
        thinking["thinkingBudget"] = reasoning.budget_tokens
    if reasoning.HasField("include_thoughts"):
        thinking["includeThoughts"] = reasoning.include_thoughts
    return thinking


def _tools(request: AnyRequest, provider: str) -> dict[str, Any]:
    """tools -> one Tool of functionDeclarations; tool_choice -> toolConfig."""
    out: dict[str, Any] = {}
    if request.HasField("parallel_tool_calls") and not request.parallel_tool_calls:
        raise invalid_argument("parallel_tool_calls",
                               f'provider "{provider}" has no switch to turn parallel tool calls off')
    declarations = []
    for k, tool in enumerate(request.tools):
        if tool.strict:
            raise invalid_argument(f"tools[{k}].strict", f'provider "{provider}" has no strict mode for tool schemas')
        declaration: dict[str, Any] = {"name": tool.name}
        if tool.description:
            declaration["description"] = tool.description
        if tool.HasField("parameters"):
            # Full JSON Schema (FunctionDeclaration.parametersJsonSchema, v1beta), so nothing of
            # the caller's schema is lost to the OpenAPI subset `parameters` takes. A tool
            # without parameters leaves both unset, as the reference says.
            declaration["parametersJsonSchema"] = struct_to_dict(tool.parameters)
        declarations.append(declaration)
    if declarations:
        out["tools"] = [{"functionDeclarations": declarations}]
    choice = request.tool_choice.WhichOneof("choice") if request.HasField("tool_choice") else None
    if choice == "function_name":
        config = {"mode": "ANY", "allowedFunctionNames": [request.tool_choice.function_name]}
        out["toolConfig"] = {"functionCallingConfig": config}
    elif choice == "mode" and declarations:
        # NONE with no tools declared is honoured by sending nothing: there is nothing to call.
        out["toolConfig"] = {"functionCallingConfig": {"mode": TOOL_MODES[request.tool_choice.mode]}}
    return out


def _model_parts(i: int, message: pb.Message, provider: str) -> list[dict[str, Any]]:
    """An assistant turn as Gemini's `model` content. A signature-only Reasoning part (what a
    functionCall or text part's thoughtSignature became) goes back on the part after it, so
    an unchanged echo reproduces the parts Gemini sent."""
    parts: list[dict[str, Any]] = []
    signature: bytes | None = None
    for j, part in enumerate(message.parts):
        kind = part.WhichOneof("content")
        if kind == "reasoning":
            reasoning = part.reasoning
            if reasoning.redacted:
                raise invalid_argument(f"messages[{i}].parts[{j}].reasoning.redacted",
                                       f'provider "{provider}" has no redacted thinking to send back')
            if signature is not None:
                parts.append({"text": "", "thoughtSignature": _b64(signature)})
                signature = None
            if reasoning.text:
                thought: dict[str, Any] = {"text": reasoning.text, "thought": True}
                if reasoning.signature:
                    thought["thoughtSignature"] = _b64(reasoning.signature)
                parts.append(thought)
            elif reasoning.signature:
                signature = reasoning.signature
            continue
        out = _function_call(i, j, part.tool_call, provider) if kind == "tool_call" else _part(i, j, part)
        if signature is not None:
            out["thoughtSignature"] = _b64(signature)
            signature = None
        parts.append(out)
    if signature is not None:
        # Nothing follows it: Gemini sends such a signature on an empty text part.
        parts.append({"text": "", "thoughtSignature": _b64(signature)})
    return parts


def _function_call(i: int, j: int, call: pb.ToolCall, provider: str) -> dict[str, Any]:
    args = arguments_object(call)
    if args is None:
        raise invalid_argument(f"messages[{i}].parts[{j}].tool_call.arguments_json",
                               f'provider "{provider}" takes tool call arguments as a JSON object')
    function_call: dict[str, Any] = {"name": call.name, "args": args}
    if not is_minted(call.id):  # Gemini never saw an id Tollway made up
        function_call["id"] = call.id
    return {"functionCall": function_call}


def _function_response(i: int, j: int, result: pb.ToolResult, calls: Mapping[str, pb.ToolCall]) -> dict[str, Any]:
    """A tool result as a functionResponse. `response` must be a JSON object: a result that is
    one goes as it is; any other text goes under "output", or under "error" for a failed call
    (the keys FunctionResponse.response documents for a function's output and its error)."""
    text = result_text(result)
    value = json_object_or_none(text)
    if result.is_error:
        response: dict[str, Any] = {"error": text if value is None else value}
    else:
        response = {"output": text} if value is None else value
    name = result.name or (calls[result.tool_call_id].name if result.tool_call_id in calls else "")
    if not name:  # Gemini matches results to calls by name
        raise invalid_argument(f"messages[{i}].parts[{j}].tool_result.name",
                               "is required when no earlier tool_call has this tool_call_id")
    function_response: dict[str, Any] = {"name": name, "response": response}
    if not is_minted(result.tool_call_id):
        function_response["id"] = result.tool_call_id
    return {"functionResponse": function_response}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _part(i: int, j: int, part: pb.Part) -> dict[str, Any]:
    kind = part.WhichOneof("content")
    if kind == "text":
        return {"text": part.text}
    media: pb.Media = getattr(part, kind)
    mime = gemini_mime_type(media.mime_type)
    if media.WhichOneof("source") == "data":
        return {"inline_data": {"mime_type": mime, "data": base64.b64encode(media.data).decode("ascii")}}
    file_data = {"file_uri": media.url}
    if mime:
        file_data = {"mime_type": mime, **file_data}
    elif not media.url.startswith((FILES_API_PREFIX, *YOUTUBE_PREFIXES)):
        # FileData.mime_type is optional only because Gemini knows the type of its own
        # files (recorded at upload) and of YouTube videos; for any other URI it must be said.
        raise invalid_argument(f"messages[{i}].parts[{j}].{kind}.mime_type", "is required for this URL")
    return {"file_data": file_data}


def gemini_mime_type(mime: str) -> str:
    mime = mime.lower()
    return GEMINI_SPELLING.get(mime, mime)


@functools.lru_cache(maxsize=256)
def model_url(base_url: str, model: str, stream: bool) -> httpx.URL:
    """The URL of one model's generate call, parsed once per model rather than per request
    (parsing took about half of building each request); the bound keeps callers' model
    names from growing it."""
    # "gemini/models/gemini-2.5-flash" and "gemini/gemini-2.5-flash" name the same model;
    # quoting keeps a model name from adding path segments or a query.
    name = quote(model.removeprefix("models/"), safe="-._~")
    method = "streamGenerateContent" if stream else "generateContent"
    url = f"{base_url}/models/{name}:{method}"
    # As httpx.Request builds it: `params` replaces any query, so it is passed only for streams.
    return httpx.URL(url, params={"alt": "sse"}) if stream else httpx.URL(url)


def build_http_request(settings: ProviderSettings, model: str, body: Mapping[str, Any], *,
                       stream: bool) -> httpx.Request:
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        "user-agent": USER_AGENT,
    }
    if settings.api_key:
        headers["x-goog-api-key"] = settings.api_key
    return httpx.Request("POST", model_url(settings.base_url, model, stream), headers=headers,
                         content=orjson.dumps(body))


# -- response ----------------------------------------------------------------------------


def finish_reason(raw: str | None) -> pb.FinishReason:
    if not raw:
        return pb.FINISH_REASON_UNSPECIFIED
    # A value added to the enum after this table was written is still a stop.
    return FINISH_REASONS.get(raw, pb.FINISH_REASON_OTHER)


def candidate_parts(provider: str, candidate: Mapping[str, Any]) -> list[pb.Part]:
    """A candidate's parts in the order the model produced them: thought parts are reasoning;
    a thoughtSignature on any other part becomes a signature-only Reasoning part just before
    it (see _model_parts for the way back); calls without an id get a minted one."""
    out: list[pb.Part] = []
    for part in _parts_of(candidate):
        signature = thought_signature(provider, part)
        if part.get("thought"):
            out.append(pb.Part(reasoning=pb.Reasoning(text=_text_of(part), signature=signature or b"")))
            continue
        if signature is not None:
            out.append(pb.Part(reasoning=pb.Reasoning(signature=signature)))
        call = part.get("functionCall")
        if isinstance(call, dict):
            name = call.get("name")
            if not isinstance(name, str) or not name:
                raise bad_upstream_body(provider, "a functionCall without a name")
            out.append(pb.Part(tool_call=tool_call(str(call.get("id") or ""), name, arguments_text(call.get("args")))))
        elif _text_of(part):
            out.append(pb.Part(text=_text_of(part)))
    return out


def _parts_of(candidate: Mapping[str, Any]) -> list[dict[str, Any]]:
    parts = (candidate.get("content") or {}).get("parts") or ()
    return [p for p in parts if isinstance(p, dict)]


def _text_of(part: Mapping[str, Any]) -> str:
    text = part.get("text")
    return text if isinstance(text, str) else ""


def thought_signature(provider: str, part: Mapping[str, Any]) -> bytes | None:
    """Part.thoughtSignature, a protobuf bytes field, so base64 in JSON: the decoded bytes, which
    _b64 encodes back to the same text."""
    value = part.get("thoughtSignature")
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_upstream_body(provider, "a thoughtSignature that is not a string")
    try:
        # Protobuf's JSON form also accepts the URL-safe alphabet and missing padding.
        text = value.replace("-", "+").replace("_", "/")
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise bad_upstream_body(provider, "a thoughtSignature that is not base64") from None


def refuse_blocked_prompt(provider: str, data: Mapping[str, Any]) -> None:
    """A prompt Gemini blocked comes back as HTTP 200 with promptFeedback and no candidates.

    It becomes INVALID_ARGUMENT, not an empty OK nor a CONTENT_FILTER finish: there is no
    candidate to finish (one would have to be invented), the caller must change the
    request before a retry can succeed, and OpenAI-format providers refuse a flagged
    prompt with HTTP 400, which the error table also maps to INVALID_ARGUMENT, so
    swapping providers keeps the status.
    """
    feedback = data.get("promptFeedback")
    if data.get("candidates") or not isinstance(feedback, dict):
        return
    reason = feedback.get("blockReason")
    detail = feedback.get("blockReasonMessage")
    if not reason and not detail:
        return
    why = f"blockReason {reason}" if reason else "no blockReason"
    if detail:
        why += f": {detail}"
    raise invalid_argument("messages", f'provider "{provider}" blocked the prompt ({why})')


def in_body_error(provider: str, error: Any, secrets: Iterable[str | None]) -> GatewayError:
    """An error object inside a 2xx body (a stream can end with one)."""
    status = error.get("code") if isinstance(error, dict) else None
    http_status = status if isinstance(status, int) and 400 <= status <= 599 else 502
    return upstream_http_error(provider, http_status, None, _error_message(error), secrets=secrets)


def parse_generate_content(provider: str, body: bytes, requested_model: str,
                           secrets: Iterable[str | None] = ()) -> pb.CompleteResponse:
    data = json_object(provider, body, "a body")
    if "error" in data:
        raise in_body_error(provider, data["error"], secrets)
    refuse_blocked_prompt(provider, data)
    candidates = data.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise bad_upstream_body(provider, "a response without candidates")
    out = pb.CompleteResponse(id=str(data.get("responseId") or ""),
                              model=str(data.get("modelVersion") or requested_model), provider=provider)
    _set_created(out.created, data.get("createTime"))
    for position, candidate in enumerate(candidates):
        parts = candidate_parts(provider, candidate)
        raw = candidate.get("finishReason") or ""
        # Gemini says STOP when the turn ended in calls.
        calls = any(p.WhichOneof("content") == "tool_call" for p in parts)
        out.choices.append(
            pb.Choice(
                index=int(candidate.get("index", position)),
                message=pb.Message(role=pb.ROLE_ASSISTANT, parts=parts),
                finish_reason=finish_with_tools(finish_reason(raw), calls),
                raw_finish_reason=raw,
            )
        )
    usage = data.get("usageMetadata")
    if isinstance(usage, dict):
        out.usage.CopyFrom(normalize(reported_usage(usage)))
    return out


def _set_created(timestamp: timestamp_pb2.Timestamp, value: Any) -> None:
    # Vertex-style createTime (RFC 3339); the Gemini API itself does not send one.
    if isinstance(value, str) and value:
        try:
            timestamp.FromJsonString(value)
        except ValueError:
            timestamp.Clear()


# -- errors ------------------------------------------------------------------------------


def _error_message(error: Any) -> str | None:
    if not isinstance(error, dict):
        return str(error) if error else None
    message = error.get("message")
    status = error.get("status")
    if message and status:
        return f"{status}: {message}"
    return message or status or None


def _error_details(error: Any) -> list[dict[str, Any]]:
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _retry_delay(details: list[dict[str, Any]]) -> str | None:
    """google.rpc.RetryInfo.retryDelay ("26s", "1.2036s") as Retry-After seconds."""
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                return delay[:-1]
    return None


def _error_reason(details: list[dict[str, Any]]) -> str:
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.ErrorInfo"):
            return str(detail.get("reason") or "")
    return ""


def parse_error(settings: ProviderSettings, response: httpx.Response) -> GatewayError:
    """{"error": {"code", "message", "status", "details"}} -> the status table, message kept."""
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return upstream_http_error(settings.name, response.status_code, response.headers.get("retry-after"),
                                   "the body is not JSON (an HTML error page or a proxy's answer)",
                                   secrets=(settings.api_key,))
    if isinstance(data, list) and data:  # some Google front ends wrap the error in a list
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    details = _error_details(error)
    reason = _error_reason(details)
    if response.status_code == 400 and reason.startswith("API_KEY_"):
        # Gemini answers a bad key with 400 INVALID_ARGUMENT; the caller's request is
        # fine, the gateway's credentials are not, so it is treated as the 401 it means.
        denied = upstream_http_error(settings.name, 401, None, None)
        return dataclasses.replace(
            denied, message=f"{settings.name}: provider rejected the gateway's credentials (HTTP 400 {reason})",
            http_status=400,
        )
    retry_after = response.headers.get("retry-after") or _retry_delay(details)
    return upstream_http_error(settings.name, response.status_code, retry_after, _error_message(error),
                               secrets=(settings.api_key,))


# -- usage -------------------------------------------------------------------------------


def _by_modality(r: ReportedUsage, *lists: Any) -> dict[str, int]:
    """ModalityTokenCount lists summed per bucket; unknown modalities are left out (they
    end up unattributed, never guessed)."""
    out: dict[str, int] = {}
    for entries in lists:
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, dict):
                continue
            name = MODALITIES.get(str(entry.get("modality", "")))
            if name:
                out[name] = out.get(name, 0) + r.figure(entry, "tokenCount")
    return out


def reported_usage(u: Mapping[str, Any]) -> ReportedUsage:
    """usageMetadata in the provider-neutral sense (USAGE.md, Gemini rules)."""
    r = ReportedUsage()
    count = r.figure  # a figure that is not a token count is 0 here, and named in r.refused
    prompt = count(u, "promptTokenCount")  # includes cachedContentTokenCount
    tool_use = count(u, "toolUsePromptTokenCount")  # outside promptTokenCount
    candidates = count(u, "candidatesTokenCount")  # excludes thoughtsTokenCount
    thoughts = count(u, "thoughtsTokenCount")
    total = r.stated_figure(u, "totalTokenCount")

    r.input_total = prompt + tool_use
    r.input_by_modality = _by_modality(r, u.get("promptTokensDetails"), u.get("toolUsePromptTokensDetails"))
    r.cache_read = count(u, "cachedContentTokenCount")
    # An empty or absent list is no breakdown: cache reads then come out in rule-4 order.
    r.cache_read_by_modality = _by_modality(r, u.get("cacheTokensDetails")) if u.get("cacheTokensDetails") else None
    r.reasoning = thoughts
    r.provider_total = total
    r.tool_use_prompt_tokens = tool_use if "toolUsePromptTokenCount" in u else None
    output_by_modality = _by_modality(r, u.get("candidatesTokensDetails"))
    if thoughts and total is not None and total == prompt + tool_use + candidates:
        # The provider's own total proves the thoughts are already inside the candidates.
        r.output_total = candidates
        r.warnings.add(W.USAGE_WARNING_THOUGHTS_INCLUDED_IN_CANDIDATES)
        if sum(output_by_modality.values()) == candidates and output_by_modality.get("text", 0) >= thoughts:
            # Then a breakdown that covers all candidates counts the thoughts as text.
            output_by_modality["text"] -= thoughts
    else:
        r.output_total = candidates + thoughts
    r.output_by_modality = output_by_modality
    return r


# -- stream ------------------------------------------------------------------------------

class GeminiStreamDecoder:
    """streamGenerateContent?alt=sse events -> text, reasoning and tool-call deltas and a summary.

    Every event is a whole GenerateContentResponse; usageMetadata is cumulative, so the
    last one wins. There is no terminal event: the stream is finished once every
    candidate seen has a finishReason, and one that ends before that was cut off.
    A functionCall comes whole in one part (the Gemini API), or on Vertex with
    streamFunctionCallArguments as an opening part (name, willContinue), partialArgs parts
    and an empty closing part; both give the same call.
    """

    def __init__(self, provider: str, requested_model: str, secrets: Iterable[str | None]) -> None:
        self._provider = provider
        self._secrets = tuple(secrets)
        self._text_bytes = 0
        self._id = ""
        self._model = requested_model
        self._created = timestamp_pb2.Timestamp()
        self._seen: set[int] = set()
        self._finishes: dict[int, str] = {}
        self._usage: Mapping[str, Any] | None = None
        self._tools = ToolCallAssembler()
        self._reasoning = ReasoningAssembler()
        self._calls = 0  # a fresh assembler key per call
        self._partial: dict[int, tuple[int, PartialArguments]] = {}  # a call whose arguments are streaming
        self._thinking: set[int] = set()  # choices whose last part was unsigned thought text

    @property
    def finished(self) -> bool:
        return bool(self._finishes) and self._seen <= set(self._finishes)

    def feed(self, event: ServerSentEvent) -> Iterable[pb.StreamCompleteResponse]:
        if not event.data:
            return ()
        chunk = json_object(self._provider, event.data, "a stream event")
        if "error" in chunk:
            raise in_body_error(self._provider, chunk["error"], self._secrets)
        refuse_blocked_prompt(self._provider, chunk)
        if not self._id and chunk.get("responseId"):
            self._id = str(chunk["responseId"])
        if chunk.get("modelVersion"):
            self._model = str(chunk["modelVersion"])
        if not self._created.seconds:
            _set_created(self._created, chunk.get("createTime"))
        usage = chunk.get("usageMetadata")
        if isinstance(usage, dict):
            self._usage = usage
        out: list[pb.StreamCompleteResponse] = []
        for position, candidate in enumerate(chunk.get("candidates") or ()):
            if not isinstance(candidate, dict):
                continue
            index = int(candidate.get("index", position))
            self._seen.add(index)
            for part in _parts_of(candidate):
                out.extend(self._part(index, part))
            if candidate.get("finishReason"):
                out.extend(self._end_partial(index))
                self._finishes[index] = str(candidate["finishReason"])
        return out

    def _part(self, choice: int, part: Mapping[str, Any]) -> list[pb.StreamCompleteResponse]:
        signature = thought_signature(self._provider, part)
        if part.get("thought"):
            # A thought summary streams over several parts: one block until a signature ends it.
            if choice not in self._thinking:
                self._reasoning.begin(choice)
            delta = self._reasoning.text(choice, _text_of(part))
            if signature is not None:
                self._reasoning.signature(choice, signature)
                self._thinking.discard(choice)
            else:
                self._thinking.add(choice)
            return [delta] if delta else []
        self._thinking.discard(choice)
        if signature is not None:
            # Its own signature-only block, just before the call or text it came on (as unary).
            self._reasoning.begin(choice)
            self._reasoning.signature(choice, signature)
        call = part.get("functionCall")
        if isinstance(call, dict):
            return self._function_call(choice, call)
        text = _text_of(part)
        if not text:
            return []
        self._text_bytes += len(text.encode())
        return [pb.StreamCompleteResponse(delta=pb.TextDelta(choice_index=choice, text=text))]

    def _function_call(self, choice: int, call: Mapping[str, Any]) -> list[pb.StreamCompleteResponse]:
        name = call.get("name")
        if not name:
            if choice not in self._partial:
                raise bad_upstream_body(self._provider, "a functionCall without a name")
            out = self._partial_args(choice, call)
            if not call.get("willContinue"):  # the closing part: the call is complete
                out.extend(self._end_partial(choice))
            return out
        out = self._end_partial(choice)
        key = self._calls
        self._calls += 1
        call_id = str(call.get("id") or "")
        if not call.get("willContinue"):
            out.append(self._tools.start(choice, key, call_id, str(name), arguments_text(call.get("args"))))
            return out
        if call.get("args"):
            raise bad_upstream_body(self._provider, "a streamed functionCall with args and willContinue both")
        self._partial[choice] = (key, PartialArguments(self._provider))
        out.append(self._tools.start(choice, key, call_id, str(name)))
        out.extend(self._partial_args(choice, call))
        return out

    def _partial_args(self, choice: int, call: Mapping[str, Any]) -> list[pb.StreamCompleteResponse]:
        key, arguments = self._partial[choice]
        pieces = call.get("partialArgs") or []
        if not isinstance(pieces, list):
            raise bad_upstream_body(self._provider, "partialArgs that are not a list")
        deltas = (self._tools.append(choice, key, arguments.feed(piece)) for piece in pieces)
        return [d for d in deltas if d is not None]

    def _end_partial(self, choice: int) -> list[pb.StreamCompleteResponse]:
        if choice not in self._partial:
            return []
        key, arguments = self._partial.pop(choice)
        delta = self._tools.append(choice, key, arguments.close())
        return [delta] if delta is not None else []

    def summary(self) -> pb.StreamSummary:
        summary = pb.StreamSummary(id=self._id, model=self._model, provider=self._provider)
        summary.created.CopyFrom(self._created)
        summary.finishes.extend(choice_finishes(self._finishes, finish_reason, tools=self._tools,
                                                reasoning=self._reasoning))
        reported = reported_usage(self._usage) if self._usage is not None else None
        usage = stream_usage(reported, finished=self.finished)
        if usage is not None:
            summary.usage.CopyFrom(usage)
        return summary

    @property
    def output_bytes(self) -> int:
        """Billed output seen so far (thinking and call arguments included), for an estimate
        when usage never comes."""
        return self._text_bytes + self._reasoning.output_bytes + self._tools.output_bytes


# -- the adapter -------------------------------------------------------------------------


class GeminiAdapter:
    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.capabilities = CAPABILITIES

    def build_request(self, request: AnyRequest, model: str, *, stream: bool) -> httpx.Request:
        body = build_body(request, self.settings.name)
        return build_http_request(self.settings, model, body, stream=stream)

    def parse_response(self, response: httpx.Response, request: AnyRequest, model: str) -> pb.CompleteResponse:
        return parse_generate_content(self.settings.name, response.content, model.removeprefix("models/"),
                                      secrets=(self.settings.api_key,))

    def stream_decoder(self, request: AnyRequest, model: str) -> GeminiStreamDecoder:
        return GeminiStreamDecoder(self.settings.name, model.removeprefix("models/"),
                                   secrets=(self.settings.api_key,))

    def parse_error(self, response: httpx.Response) -> GatewayError:
        return parse_error(self.settings, response)


def create(settings: ProviderSettings) -> GeminiAdapter:
    return GeminiAdapter(settings)


@hookimpl
def tollway_register_providers(register: Callable[[ProviderKind], None]) -> None:
    register(
        ProviderKind(
            name="gemini",
            create=create,
            default_base_url=DEFAULT_BASE_URL,
            default_api_key_env="GEMINI_API_KEY",
        )
    )
