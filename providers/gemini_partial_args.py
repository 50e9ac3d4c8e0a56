"""Vertex `partialArgs` (streamFunctionCallArguments) for the Gemini adapter: a function call's
arguments streamed as JSON-path pieces, written as the JSON text they make. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from tollway.plugin import GatewayError, bad_upstream_body

# RFC 9535 segments as Vertex's PartialArg.jsonPath writes them: .name, ['name'], ["name"], [0].
_PATH_SEGMENT = re.compile(r"""\.([^\W\d]\w*)|\[(\d+)\]|\['((?:[^'\\]|\\.)*)'\]|\["((?:[^"\\]|\\.)*)"\]""")

Path = tuple[str | int, ...]


@dataclass
class _Container:
    path: Path
    is_array: bool
    keys: set[str] = field(default_factory=set)
    count: int = 0


class PartialArguments:
    """One call's arguments streamed as Vertex `partialArgs` (streamFunctionCallArguments),
    written as JSON text as they arrive, byte for byte the text arguments_text gives for the
    same arguments sent whole: members in the order they come, compact separators.

    Every piece is forwarded at once except what only a later piece can decide: the closing
    quote of a string whose PartialArg said willContinue, and the brackets closing an object
    or array, which wait until a value outside it (or the call's end) arrives. The model
    writes arguments in order; a value that lands inside an object already closed, or on a
    member already written, cannot extend the text sent so far and is refused.
    """

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._open: list[_Container] = []  # the root object first; empty before any value
        self._string: Path | None = None  # a string value whose end has not come yet

    def feed(self, arg: Any) -> str:
        if not isinstance(arg, dict):
            raise bad_upstream_body(self._provider, "a partialArgs item that is not an object")
        path = self._path(arg.get("jsonPath"))
        out: list[str] = []
        if self._string is not None:
            if path == self._string and "stringValue" in arg:
                return self._string_piece(arg, path)
            out.append('"')  # the next path began: that string is whole
            self._string = None
        if not self._open:
            out.append("{")
            self._open.append(_Container((), is_array=False))
        while self._open[-1].path != path[:len(self._open[-1].path)] or len(self._open[-1].path) == len(path):
            out.append("]" if self._open.pop().is_array else "}")
        for depth in range(len(self._open[-1].path), len(path)):
            out.append(self._member(self._open[-1], path, depth))
            if depth < len(path) - 1:
                is_array = isinstance(path[depth + 1], int)
                out.append("[" if is_array else "{")
                self._open.append(_Container(path[:depth + 1], is_array))
        if "stringValue" in arg:
            out.append('"')
            out.append(self._string_piece(arg, path))
        elif "numberValue" in arg or "boolValue" in arg:
            value = arg.get("numberValue", arg.get("boolValue"))
            if not isinstance(value, (int, float)):
                raise bad_upstream_body(self._provider, "a partialArgs value of the wrong type")
            out.append(orjson.dumps(value).decode())
        elif "nullValue" in arg:
            out.append("null")
        else:
            raise bad_upstream_body(self._provider, "a partialArgs item without a value")
        return "".join(out)

    def close(self) -> str:
        """What ends the text once the call is complete ("{}" for a call that streamed no value)."""
        end = '"' if self._string is not None else ""
        self._string = None
        if not self._open:
            return "{}"
        end += "".join("]" if c.is_array else "}" for c in reversed(self._open))
        self._open.clear()
        return end

    def _string_piece(self, arg: Mapping[str, Any], path: Path) -> str:
        value = arg["stringValue"]
        if not isinstance(value, str):
            raise bad_upstream_body(self._provider, "a partialArgs stringValue that is not a string")
        try:
            piece = orjson.dumps(value).decode()[1:-1]  # escaping is per character: pieces concatenate
        except orjson.JSONEncodeError:
            raise bad_upstream_body(self._provider, "a partialArgs string that is not valid Unicode") from None
        if arg.get("willContinue"):
            self._string = path
            return piece
        self._string = None
        return piece + '"'

    def _member(self, container: _Container, path: Path, depth: int) -> str:
        segment = path[depth]
        if container.is_array:
            if isinstance(segment, str) or segment != container.count:
                raise self._out_of_order(path)
            text = ""
        else:
            if not isinstance(segment, str) or segment in container.keys:
                raise self._out_of_order(path)
            container.keys.add(segment)
            text = orjson.dumps(segment).decode() + ":"
        container.count += 1
        return ("," if container.count > 1 else "") + text

    def _out_of_order(self, path: Path) -> GatewayError:
        where = "$" + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path)
        return bad_upstream_body(self._provider, f"partialArgs that go back to {where}, already written")

    def _path(self, text: Any) -> Path:
        if not isinstance(text, str) or not text.startswith("$"):
            raise bad_upstream_body(self._provider, "a partialArgs item without a jsonPath")
        segments: list[str | int] = []
        position = 1
        while position < len(text):
            match = _PATH_SEGMENT.match(text, position)
            if match is None:
                raise bad_upstream_body(self._provider, f"a partialArgs jsonPath it cannot follow ({text!r})")
            name, index, single, double = match.groups()
            if index is not None:
                segments.append(int(index))
            elif name is not None:
                segments.append(name)
            else:
                quoted = double if double is not None else single.replace("\\'", "'").replace('"', '\\"')
                try:
                    segments.append(orjson.loads(f'"{quoted}"'))
                except orjson.JSONDecodeError:
                    raise bad_upstream_body(self._provider, f"a partialArgs jsonPath it cannot follow ({text!r})") \
                        from None
            position = match.end()
        if not segments:  # the arguments themselves are an object, never one streamed value
            raise bad_upstream_body(self._provider, "a partialArgs value for the whole arguments")
        return tuple(segments)
