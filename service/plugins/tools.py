"""Tool calls and reasoning as every adapter needs them: ids, parsed arguments, and the
assembly of streamed pieces into whole calls. Pure, like the adapters that use it.

Streams are assembled here once, so that "arguments split mid-token", "a call whose arguments
arrive in one chunk" and "parallel calls" mean the same thing for every provider: fragments go
to the caller as they arrive, and the summary carries each call whole.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf import struct_pb2

from tollway.v1 import completion_pb2 as pb

# Ids Tollway makes for calls the provider gave none: recognisable, so an adapter whose
# provider never saw the id (Gemini) knows not to send it back.
MINTED_ID_PREFIX = "call_tw"


def mint_tool_call_id() -> str:
    """A fresh call id, unique within a response (96 random bits)."""
    return f"{MINTED_ID_PREFIX}{secrets.token_hex(12)}"


def is_minted(tool_call_id: str) -> bool:
    return tool_call_id.startswith(MINTED_ID_PREFIX)


def json_object_or_none(text: str) -> dict[str, Any] | None:
    """The text parsed when it is a JSON object; None for anything else (never guessed)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def arguments_object(call: pb.ToolCall) -> dict[str, Any] | None:
    """An echoed call's arguments as the object providers that take parsed arguments want
    (Anthropic `input`, Gemini `args`): arguments_json parsed, or the parsed `arguments` when
    only those were set, or {} for a call with neither; None when arguments_json is not a
    JSON object (the adapter refuses it, naming the part)."""
    if not call.arguments_json:
        return struct_to_dict(call.arguments) if call.HasField("arguments") else {}
    return json_object_or_none(call.arguments_json)


def parsed_arguments(arguments_json: str) -> struct_pb2.Struct | None:
    """The arguments as a Struct when the text is a JSON object; None otherwise (never guessed:
    text that is not JSON, or JSON that is not an object, stays only in arguments_json)."""
    value = json_object_or_none(arguments_json) if arguments_json else None
    if value is None:
        return None
    out = struct_pb2.Struct()
    try:
        out.update(value)
    except (ValueError, TypeError):  # a value protobuf cannot hold (an integer beyond 64 bits)
        return None
    return out


def tool_call(call_id: str, name: str, arguments_json: str) -> pb.ToolCall:
    """A ToolCall with its id (minted when empty) and its arguments parsed where they can be."""
    call = pb.ToolCall(id=call_id or mint_tool_call_id(), name=name, arguments_json=arguments_json)
    arguments = parsed_arguments(arguments_json)
    if arguments is not None:
        call.arguments.CopyFrom(arguments)
    return call


def arguments_text(arguments: object) -> str:
    """An arguments object a provider sent parsed (Anthropic `input`, Gemini `args`) as JSON text."""
    return orjson.dumps(arguments if arguments is not None else {}).decode()


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON values, for request bodies (integers stay integers where exact).
    Read straight from the Value messages: json_format's MessageToDict took three times as long
    for a tool's schema. Numbers are finite (admission refuses NaN and Infinity)."""
    return {key: _plain(item) for key, item in value.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        # Struct holds every number as a double: 3.0 was 3 in the caller's schema or arguments.
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    return None  # null_value, or no value set (MessageToDict gives None too)


def result_text(result: pb.ToolResult) -> str:
    """The text of a tool result, for providers that take results as one string."""
    return "".join(p.text for p in result.parts if p.WhichOneof("content") == "text")


def calls_in(messages: Iterable[pb.Message]) -> dict[str, pb.ToolCall]:
    """Every tool call of the conversation's assistant turns, by id: how a result that names
    only its call id finds the function name (Gemini needs the name)."""
    return {p.tool_call.id: p.tool_call for m in messages for p in m.parts if p.WhichOneof("content") == "tool_call"}


# -- streams -----------------------------------------------------------------------------


@dataclass
class _PendingCall:
    id: str
    name: str
    fragments: list[str] = field(default_factory=list)


class ToolCallAssembler:
    """Streamed tool-call pieces -> ToolCallDelta messages now, whole ToolCalls at the end.

    Providers key a call by their own index (OpenAI `tool_calls[].index`, Anthropic content
    block index); each choice's calls are numbered 0, 1, ... in the order they began.
    """

    def __init__(self) -> None:
        self._calls: dict[int, dict[object, _PendingCall]] = {}

    def start(self, choice: int, key: object, call_id: str, name: str,
              arguments: str = "") -> pb.StreamCompleteResponse:
        """A call begins: its first delta carries the id (minted when the provider gave none)."""
        calls = self._calls.setdefault(choice, {})
        pending = _PendingCall(call_id or mint_tool_call_id(), name)
        index = len(calls)
        calls[key] = pending
        if arguments:
            pending.fragments.append(arguments)
        return pb.StreamCompleteResponse(tool_call_delta=pb.ToolCallDelta(
            choice_index=choice, index=index, id=pending.id, name=name, arguments_fragment=arguments))

    def has(self, choice: int, key: object) -> bool:
        return key in self._calls.get(choice, {})

    def append(self, choice: int, key: object, fragment: str) -> pb.StreamCompleteResponse | None:
        """More argument text for a call that began; None for an empty fragment."""
        if not fragment:
            return None
        calls = self._calls[choice]
        pending = calls[key]
        pending.fragments.append(fragment)
        index = list(calls).index(key)
        return pb.StreamCompleteResponse(tool_call_delta=pb.ToolCallDelta(
            choice_index=choice, index=index, arguments_fragment=fragment))

    def calls(self, choice: int) -> list[pb.ToolCall]:
        return [tool_call(c.id, c.name, "".join(c.fragments)) for c in self._calls.get(choice, {}).values()]

    def choices(self) -> Iterator[int]:
        return iter(sorted(self._calls))

    @property
    def output_bytes(self) -> int:
        return sum(len(f.encode()) for calls in self._calls.values() for c in calls.values() for f in c.fragments)


class ReasoningAssembler:
    """Streamed thinking -> ReasoningDelta messages now, whole Reasoning blocks at the end.

    A choice may think in several blocks (Anthropic thinking blocks, Gemini thought parts);
    each keeps its own signature, in order."""

    def __init__(self) -> None:
        self._blocks: dict[int, list[pb.Reasoning]] = {}
        self._texts: dict[int, list[list[str]]] = {}
        self.output_bytes = 0

    def begin(self, choice: int) -> None:
        """A new block starts (signatures and redacted data then belong to it)."""
        self._blocks.setdefault(choice, []).append(pb.Reasoning())
        self._texts.setdefault(choice, []).append([])

    def _current(self, choice: int) -> tuple[pb.Reasoning, list[str]]:
        if not self._blocks.get(choice):
            self.begin(choice)
        return self._blocks[choice][-1], self._texts[choice][-1]

    def text(self, choice: int, text: str) -> pb.StreamCompleteResponse | None:
        if not text:
            return None
        _, texts = self._current(choice)
        texts.append(text)
        self.output_bytes += len(text.encode())
        return pb.StreamCompleteResponse(reasoning_delta=pb.ReasoningDelta(choice_index=choice, text=text))

    def signature(self, choice: int, signature: bytes) -> None:
        block, _ = self._current(choice)
        block.signature += signature

    def redacted(self, choice: int, data: bytes) -> None:
        self.begin(choice)
        self._blocks[choice][-1].redacted = data

    def blocks(self, choice: int) -> list[pb.Reasoning]:
        out = []
        for block, texts in zip(self._blocks.get(choice, []), self._texts.get(choice, [])):
            whole = pb.Reasoning()
            whole.CopyFrom(block)
            whole.text = "".join(texts)
            if whole.text or whole.signature or whole.redacted:
                out.append(whole)
        return out

    def choices(self) -> Iterator[int]:
        return iter(sorted(self._blocks))
