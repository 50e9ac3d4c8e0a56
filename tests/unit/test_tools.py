"""Tool-call ids, parsed arguments and stream assembly: the pieces every adapter shares."""

from __future__ import annotations

from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from tollway.service.plugins.tools import (
    ReasoningAssembler,
    ToolCallAssembler,
    arguments_object,
    calls_in,
    is_minted,
    mint_tool_call_id,
    parsed_arguments,
    struct_to_dict,
    tool_call,
)
from tollway.v1 import completion_pb2 as pb


def test_minted_ids_are_unique_and_recognisable():
    ids = {mint_tool_call_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_minted(i) for i in ids)
    assert not is_minted("call_abc123") and not is_minted("toolu_01A09q90qw90lq917835lq9")


def test_arguments_are_parsed_only_when_they_are_a_json_object():
    assert struct_to_dict(parsed_arguments('{"city": "Paris", "days": 3}')) == {"city": "Paris", "days": 3}
    assert struct_to_dict(parsed_arguments("{}")) == {}
    for text in ("", "[1, 2]", '"Paris"', "3", '{"city": "Par', "not json", "null"):
        assert parsed_arguments(text) is None, text


def test_a_struct_becomes_the_json_values_it_holds_with_exact_integers_kept_integers():
    value = struct_pb2.Struct()
    value.update({"type": "object", "count": 3, "ratio": 0.5, "big": 2.0**60, "flag": False, "none": None,
                  "list": [1, "a", {"deep": [2.5, True, None]}], "empty": {}, "empty_list": []})
    assert struct_to_dict(value) == json_format.MessageToDict(value) | {"count": 3, "big": 2.0**60}
    assert struct_to_dict(value) == {"type": "object", "count": 3, "ratio": 0.5, "big": 2.0**60, "flag": False,
                                     "none": None, "list": [1, "a", {"deep": [2.5, True, None]}], "empty": {},
                                     "empty_list": []}
    assert type(struct_to_dict(value)["count"]) is int and type(struct_to_dict(value)["list"][0]) is int
    assert struct_to_dict(struct_pb2.Struct()) == {}


def test_a_call_keeps_its_text_exactly_and_gets_an_id_when_it_had_none():
    call = tool_call("", "get_weather", '{ "city" : "Paris" }')
    assert is_minted(call.id)
    assert call.arguments_json == '{ "city" : "Paris" }'
    assert struct_to_dict(call.arguments) == {"city": "Paris"}
    unparsed = tool_call("call_1", "f", "{broken")
    assert unparsed.id == "call_1" and not unparsed.HasField("arguments")


def test_a_result_finds_its_function_name_through_the_conversation():
    messages = [
        pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="weather?")]),
        pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(tool_call=pb.ToolCall(id="a", name="get_weather")),
                                                  pb.Part(tool_call=pb.ToolCall(id="b", name="get_time"))]),
    ]
    assert {k: v.name for k, v in calls_in(messages).items()} == {"a": "get_weather", "b": "get_time"}


def test_parallel_streamed_calls_keep_their_order_ids_and_arguments():
    tools = ToolCallAssembler()
    first = tools.start(0, 0, "call_a", "get_weather", '{"ci')
    second = tools.start(0, 1, "", "get_time")
    later = [tools.append(0, 0, 'ty": "Paris"}'), tools.append(0, 1, "{}"), tools.append(0, 1, "")]

    assert (first.tool_call_delta.index, first.tool_call_delta.id) == (0, "call_a")
    assert second.tool_call_delta.index == 1 and is_minted(second.tool_call_delta.id)
    assert [m.tool_call_delta.index for m in later if m] == [0, 1]
    assert later[2] is None
    calls = tools.calls(0)
    assert [(c.name, c.arguments_json) for c in calls] == [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")]
    assert calls[1].id == second.tool_call_delta.id


@given(st.text(min_size=0, max_size=60), st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_any_split_of_the_arguments_assembles_to_the_same_text(arguments, cuts):
    tools = ToolCallAssembler()
    points = sorted({min(c, len(arguments)) for c in cuts})
    pieces = [arguments[a:b] for a, b in zip([0, *points], [*points, len(arguments)])]
    tools.start(0, "k", "id", "f", pieces[0])
    deltas = [tools.append(0, "k", piece) for piece in pieces[1:]]
    assert tools.calls(0)[0].arguments_json == arguments
    assert "".join([pieces[0], *(d.tool_call_delta.arguments_fragment for d in deltas if d)]) == arguments


def test_reasoning_blocks_keep_their_own_signatures_and_redacted_data():
    reasoning = ReasoningAssembler()
    deltas = [reasoning.text(0, "Let me "), reasoning.text(0, "think."), reasoning.text(0, "")]
    reasoning.signature(0, b"sig-1")
    reasoning.redacted(0, b"opaque")
    reasoning.begin(0)
    reasoning.text(0, "More.")
    reasoning.signature(0, b"sig-2")

    assert [d.reasoning_delta.text for d in deltas if d] == ["Let me ", "think."]
    assert reasoning.blocks(0) == [pb.Reasoning(text="Let me think.", signature=b"sig-1"),
                                   pb.Reasoning(redacted=b"opaque"),
                                   pb.Reasoning(text="More.", signature=b"sig-2")]
    assert reasoning.output_bytes == len(b"Let me think.More.")


def test_struct_numbers_come_back_as_integers_where_they_were():
    value = struct_pb2.Struct()
    value.update({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 2.5}}})
    assert struct_to_dict(value) == {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1,
                                                                            "maximum": 2.5}}}


def test_an_echoed_calls_arguments_become_the_object_providers_take():
    assert arguments_object(pb.ToolCall(arguments_json='{"city": "Paris"}')) == {"city": "Paris"}
    assert arguments_object(pb.ToolCall()) == {}
    assert arguments_object(pb.ToolCall(arguments=parsed_arguments('{"n": 3}'))) == {"n": 3}
    assert arguments_object(pb.ToolCall(arguments_json="[1]")) is None
    assert arguments_object(pb.ToolCall(arguments_json="{broken")) is None
