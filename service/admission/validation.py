"""Request validation: every refusal is INVALID_ARGUMENT naming the field, before any network call."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from google.protobuf import struct_pb2

from tollway.service.errors import invalid_argument
from tollway.service.media.policy import normalize_mime
from tollway.service.media.urls import BadMediaURL, parse_http_url
from tollway.service.plugins.adapter import (
    MEDIA_PARTS,
    PART_MODALITY,
    AnyRequest,
    Capabilities,
    modality_name,
)
from tollway.v1 import completion_pb2 as pb


def validate_request(request: AnyRequest) -> None:
    """Checks that need no provider: shape, ranges, URLs."""
    if not request.model:
        raise invalid_argument("model", 'is required ("provider/model" or a route name)')
    if not request.messages:
        raise invalid_argument("messages", "at least one message is required")
    call_ids: set[str] = set()  # tool calls of the assistant turns so far
    for i, message in enumerate(request.messages):
        if message.role == pb.ROLE_UNSPECIFIED:
            raise invalid_argument(f"messages[{i}].role",
                                   "is required (ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL)")
        if message.role not in (pb.ROLE_SYSTEM, pb.ROLE_USER, pb.ROLE_ASSISTANT, pb.ROLE_TOOL):
            raise invalid_argument(f"messages[{i}].role", f"unknown role {message.role}")
        if not message.parts:
            raise invalid_argument(f"messages[{i}].parts", "at least one part is required")
        for j, part in enumerate(message.parts):
            path = f"messages[{i}].parts[{j}]"
            _validate_part(path, part)
            _check_part_role(path, part, message.role, call_ids)
    _validate_tools(request)
    if request.HasField("max_tokens") and request.max_tokens <= 0:
        raise invalid_argument("max_tokens", "must be > 0")
    if request.HasField("temperature") and not (0.0 <= request.temperature <= 2.0):
        raise invalid_argument("temperature", "must be between 0 and 2")
    if request.HasField("top_p") and not (0.0 < request.top_p <= 1.0):
        raise invalid_argument("top_p", "must be > 0 and <= 1")
    for k, stop in enumerate(request.stop):
        if not stop:
            raise invalid_argument(f"stop[{k}]", "must not be empty")


def _validate_part(path: str, part: pb.Part) -> None:
    kind = part.WhichOneof("content")
    if kind is None:
        raise invalid_argument(path, "part is empty (set text, image, audio, video, document, tool_call, "
                                     "tool_result or reasoning)")
    if kind == "text" and not part.text:
        # An empty text part is a caller's mistake (a template that rendered nothing), and some
        # providers reject it with a less helpful message: refuse it here, naming the part.
        raise invalid_argument(f"{path}.text", "must not be empty")
    if kind not in MEDIA_PARTS:
        return
    media = getattr(part, kind)
    source = media.WhichOneof("source")
    if source is None:
        raise invalid_argument(f"{path}.{kind}", "set url or data")
    if source == "data":
        if not media.data:
            raise invalid_argument(f"{path}.{kind}.data", "is empty")
        if not media.mime_type:
            raise invalid_argument(f"{path}.{kind}.mime_type", "is required with inline data")
        return
    if media.url.startswith("data:"):
        header, sep, _ = media.url.partition(",")
        if not (sep and "/" in header):
            raise invalid_argument(f"{path}.{kind}.url", "is not a valid http(s) or data: URL")
        return
    if not media.url[:8].lower().startswith(("http://", "https://")):
        raise invalid_argument(f"{path}.{kind}.url", "is not a valid http(s) or data: URL")
    try:
        parse_http_url(media.url)
    except BadMediaURL as exc:
        raise invalid_argument(f"{path}.{kind}.url", f"is not a valid http(s) or data: URL ({exc})") from None


# OpenAI's rule for function names, the strictest of the providers (Anthropic allows 128
# characters, Gemini also dots and colons): a name valid here is valid everywhere.
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOOL_NAME_RULE = "1 to 64 letters, digits, underscores or dashes"
# Where each part kind may stand.
_PART_ROLES = {
    "tool_call": (pb.ROLE_ASSISTANT, "an assistant"),
    "reasoning": (pb.ROLE_ASSISTANT, "an assistant"),
    "tool_result": (pb.ROLE_TOOL, "a ROLE_TOOL"),
}


def _check_part_role(path: str, part: pb.Part, role: pb.Role, call_ids: set[str]) -> None:
    """Tool calls and reasoning come from the model (assistant turns); results come from the
    caller in ROLE_TOOL messages, each answering a call made earlier in the conversation."""
    kind = part.WhichOneof("content")
    if role == pb.ROLE_TOOL and kind != "tool_result":
        raise invalid_argument(path, "ROLE_TOOL messages take tool_result parts only")
    if kind in _PART_ROLES and role != _PART_ROLES[kind][0]:
        raise invalid_argument(f"{path}.{kind}", f"belongs in {_PART_ROLES[kind][1]} message")
    if kind == "tool_call":
        call = part.tool_call
        if not call.id:
            raise invalid_argument(f"{path}.tool_call.id", "is required (echo the id the answer carried)")
        if not call.name:
            raise invalid_argument(f"{path}.tool_call.name", "is required")
        if call.HasField("arguments"):
            check_json_numbers(call.arguments, f"{path}.tool_call.arguments")
        call_ids.add(call.id)
    elif kind == "tool_result":
        result = part.tool_result
        if not result.tool_call_id:
            raise invalid_argument(f"{path}.tool_result.tool_call_id", "is required")
        if result.tool_call_id not in call_ids:
            raise invalid_argument(f"{path}.tool_result.tool_call_id",
                                   f'"{result.tool_call_id}" answers no tool_call of an earlier assistant message')
        for k, inner in enumerate(result.parts):
            if inner.WhichOneof("content") != "text":
                raise invalid_argument(f"{path}.tool_result.parts[{k}]", "tool results take text parts only")
            if not inner.text:
                raise invalid_argument(f"{path}.tool_result.parts[{k}].text", "must not be empty")


def _validate_tools(request: AnyRequest) -> None:
    names: set[str] = set()
    for k, tool in enumerate(request.tools):
        if not TOOL_NAME.match(tool.name):
            raise invalid_argument(f"tools[{k}].name", f"{tool.name!r} is not a valid tool name ({TOOL_NAME_RULE})")
        if tool.name in names:
            raise invalid_argument(f"tools[{k}].name", f'"{tool.name}" is declared twice')
        names.add(tool.name)
        schema_type = tool.parameters.fields.get("type")
        if tool.HasField("parameters") and schema_type is not None and schema_type.string_value != "object":
            raise invalid_argument(f"tools[{k}].parameters", 'must be a JSON Schema of "type": "object"')
        check_json_numbers(tool.parameters, f"tools[{k}].parameters")
    choice = request.tool_choice.WhichOneof("choice") if request.HasField("tool_choice") else None
    if choice == "function_name" and request.tool_choice.function_name not in names:
        raise invalid_argument("tool_choice.function_name",
                               f'"{request.tool_choice.function_name}" is not one of the request\'s tools')
    if choice == "mode" and request.tool_choice.mode == pb.TOOL_CHOICE_MODE_UNSPECIFIED:
        raise invalid_argument("tool_choice.mode", "is required when tool_choice is set")
    if not names:
        if choice == "mode" and request.tool_choice.mode != pb.TOOL_CHOICE_MODE_NONE:
            raise invalid_argument("tool_choice.mode", "asks for tools but the request declares none")
        if request.HasField("parallel_tool_calls"):
            raise invalid_argument("parallel_tool_calls", "is set but the request declares no tools")
    if request.HasField("response_format"):
        fmt = request.response_format
        kind = fmt.WhichOneof("format")
        if kind is None:
            raise invalid_argument("response_format", "set json_schema or json_object")
        if kind == "json_schema":
            if not fmt.json_schema.HasField("schema"):
                raise invalid_argument("response_format.json_schema.schema", "is required")
            check_json_numbers(fmt.json_schema.schema, "response_format.json_schema.schema")
            if fmt.json_schema.name and not TOOL_NAME.match(fmt.json_schema.name):
                raise invalid_argument("response_format.json_schema.name",
                                       f"{fmt.json_schema.name!r} is not a valid name ({TOOL_NAME_RULE})")
    if request.HasField("reasoning") and request.reasoning.HasField("budget_tokens") \
            and request.reasoning.budget_tokens < 0:
        raise invalid_argument("reasoning.budget_tokens", "must be >= 0")


def check_json_numbers(struct: struct_pb2.Struct, path: str) -> None:
    """A Struct becomes JSON in the provider's request, and JSON has no NaN or Infinity: a binary
    client can still put them in a double, so they are refused here, naming the field."""
    for key, value in struct.fields.items():
        _check_json_value(value, f"{path}.{key}")


def _check_json_value(value: struct_pb2.Value, path: str) -> None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise invalid_argument(path, f"is {value.number_value}, which JSON cannot carry: send a finite number")
    elif kind == "struct_value":
        check_json_numbers(value.struct_value, path)
    elif kind == "list_value":
        for index, item in enumerate(value.list_value.values):
            _check_json_value(item, f"{path}[{index}]")


def media_mime_type(media: pb.Media) -> str:
    """The declared media type, or the one a data: URL names."""
    if media.mime_type:
        return normalize_mime(media.mime_type)
    if media.WhichOneof("source") == "url" and media.url.startswith("data:"):
        return normalize_mime(media.url[5:].partition(",")[0])
    return ""


def _features_used(request: AnyRequest) -> list[tuple[str, str, Callable[[Capabilities], bool]]]:
    """The request's settings that need a feature: (field, feature, whether capabilities grant it)."""
    used: list[tuple[str, str, Callable[[Capabilities], bool]]] = []
    if request.tools or any(p.WhichOneof("content") in ("tool_call", "tool_result")
                            for m in request.messages for p in m.parts):
        used.append(("tools", "tool calling", lambda c: c.tools))
    if request.HasField("response_format"):
        used.append(("response_format", "structured output", lambda c: c.structured_output))
    if request.HasField("reasoning"):
        used.append(("reasoning", "reasoning settings", lambda c: c.reasoning))
    return used


def check_capabilities(subject: str, capabilities: Capabilities, request: AnyRequest) -> None:
    """Refuse what the provider (or every target of a route) cannot take; nothing is ever
    silently dropped. subject names it for the message: 'provider "openai"', 'route "fast"'."""
    for setting, feature, granted in _features_used(request):
        if not granted(capabilities):
            raise invalid_argument(setting, f"{subject} does not support {feature}")
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.parts):
            kind = part.WhichOneof("content")
            if kind not in MEDIA_PARTS:
                continue
            modality = PART_MODALITY[kind]
            path = f"messages[{i}].parts[{j}].{kind}"
            accepted = capabilities.mime_types.get(modality)
            if accepted is None:
                raise invalid_argument(path, f"{subject} does not accept {modality_name(modality)} input")
            media = getattr(part, kind)
            mime = media_mime_type(media)
            if mime and mime not in accepted:
                raise invalid_argument(
                    f"{path}.mime_type",
                    f'{subject} does not accept {mime} (accepted: {", ".join(sorted(accepted))})',
                )
