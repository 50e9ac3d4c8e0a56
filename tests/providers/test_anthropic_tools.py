"""The Anthropic adapter's tools, structured output and thinking: request bodies built from
the contract, published answers (tests/fixtures/anthropic/SOURCES.md, "Tools, structured
output and reasoning") parsed into tool calls and reasoning, and streams assembled.

Every expected body is written out in full; every refusal asserts the code and the message.
"""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import struct_pb2
from httpx_sse import ServerSentEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.gateway import FIXTURES, fixture_json
from tollway.service.plugins.tools import is_minted
from tollway.service.upstream.sse import SSEDecoder
from tollway.v1 import completion_pb2 as pb

from .test_anthropic import MODEL, make_adapter, parse, raises, request, sent_body, text, user

Code = grpc.StatusCode

HELLO = {"role": "user", "content": [{"type": "text", "text": "Hello"}]}


def struct(value: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


WEATHER_SCHEMA = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
WEATHER = pb.Tool(name="get_weather", description="Get the current weather in a given location",
                  parameters=struct(WEATHER_SCHEMA))
WEATHER_JSON = {"name": "get_weather", "description": "Get the current weather in a given location",
                "input_schema": WEATHER_SCHEMA}
CLOCK = pb.Tool(name="get_time")  # no description, no parameters
CLOCK_JSON = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}


def with_tools(*tools: pb.Tool, **fields) -> pb.CompleteRequest:
    return request(user(text("Hello")), tools=list(tools), **fields)


def body_of(req: pb.CompleteRequest, **kwargs) -> dict:
    return sent_body(req, **kwargs)


def refusal(req: pb.CompleteRequest) -> tuple[grpc.StatusCode, str]:
    err = raises(make_adapter().build_request, req, MODEL, stream=False)
    return err.code, err.message


def assistant(*parts: pb.Part) -> pb.Message:
    return pb.Message(role=pb.ROLE_ASSISTANT, parts=list(parts))


def tool_message(*results: pb.ToolResult) -> pb.Message:
    return pb.Message(role=pb.ROLE_TOOL, parts=[pb.Part(tool_result=r) for r in results])


def call_part(call_id: str, name: str, arguments_json: str) -> pb.Part:
    return pb.Part(tool_call=pb.ToolCall(id=call_id, name=name, arguments_json=arguments_json))


def result(call_id: str, value: str, **fields) -> pb.ToolResult:
    return pb.ToolResult(tool_call_id=call_id, parts=[text(value)] if value else [], **fields)


# -- request: tools and tool_choice ----------------------------------------------------------


def test_tools_are_declared_with_their_input_schema():
    body = body_of(with_tools(WEATHER, CLOCK))

    assert body == {"model": MODEL, "max_tokens": 4096, "messages": [HELLO],
                    "tools": [WEATHER_JSON, CLOCK_JSON], "stream": False}


def test_schema_numbers_stay_integers_and_strict_is_passed_on():
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 10}},
              "required": ["n"], "additionalProperties": False}
    tools = [pb.Tool(name="pick", parameters=struct(schema), strict=True),
             pb.Tool(name="loose", parameters=struct(schema), strict=False)]

    body = body_of(with_tools(*tools))

    assert body["tools"] == [{"name": "pick", "input_schema": schema, "strict": True},
                             {"name": "loose", "input_schema": schema, "strict": False}]
    assert json.dumps(body["tools"][0]["input_schema"]["properties"]["n"]["minimum"]) == "1"


@pytest.mark.parametrize(
    "choice, parallel, expected",
    [
        (None, None, None),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO), None, {"type": "auto"}),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), None, {"type": "any"}),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE), None, {"type": "none"}),
        (pb.ToolChoice(function_name="get_weather"), None, {"type": "tool", "name": "get_weather"}),
        # parallel_tool_calls=true is Anthropic's default: nothing to send.
        (None, True, None),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), True, {"type": "any"}),
        # false is a field on tool_choice; with no choice set, auto (the default) carries it.
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO), False, {"type": "auto", "disable_parallel_tool_use": True}),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), False, {"type": "any", "disable_parallel_tool_use": True}),
        (pb.ToolChoice(function_name="get_weather"), False,
         {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
        # "none" calls no tool at all, so at most one is already true ("none" takes no such field).
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE), False, {"type": "none"}),
    ],
)
def test_tool_choice_and_parallel_tool_calls(choice, parallel, expected):
    fields = {}
    if choice is not None:
        fields["tool_choice"] = choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel

    body = body_of(with_tools(WEATHER, CLOCK, **fields))

    assert body.get("tool_choice") == expected
    assert body["tools"] == [WEATHER_JSON, CLOCK_JSON]


def test_tool_choice_none_without_tools_sends_nothing():
    body = body_of(request(user(text("Hello")), tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE)))

    assert body == {"model": MODEL, "max_tokens": 4096, "messages": [HELLO], "stream": False}


# -- request: structured output -------------------------------------------------------------


def test_json_schema_is_output_config_format_as_the_sdk_sends_it():
    recorded = fixture_json("anthropic/structured_output_config_request.json")
    schema = recorded["output_config"]["format"]["schema"]
    req = request(user(text(recorded["messages"][0]["content"])), max_tokens=1024,
                  response_format=pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(
                      name="OrderDetails", schema=struct(schema), strict=True)))

    body = body_of(req)

    # The SDK's recorded body, with its user content as a block list (as this adapter sends
    # every message) and the model and stream flag of this request.
    assert body == {**recorded, "model": MODEL, "stream": False,
                    "messages": [{"role": "user", "content": [{"type": "text",
                                                               "text": recorded["messages"][0]["content"]}]}]}


def test_json_schema_with_strict_false_is_still_sent():
    # Anthropic always constrains the output: more than strict=false asked for, never less.
    req = request(user(text("Hello")), response_format=pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(
        name="x", schema=struct(WEATHER_SCHEMA), strict=False)))

    assert body_of(req)["output_config"] == {"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}}


def test_json_object_mode_is_refused():
    req = request(user(text("Hello")), response_format=pb.ResponseFormat(json_object=pb.JsonObjectFormat()))

    assert refusal(req) == (Code.INVALID_ARGUMENT, 'response_format.json_object: provider "anthropic" has no JSON '
                                                   "mode without a schema (use json_schema)")


def test_json_schema_description_is_refused_not_dropped():
    req = request(user(text("Hello")), response_format=pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(
        name="x", schema=struct(WEATHER_SCHEMA), description="A weather report")))

    assert refusal(req) == (Code.INVALID_ARGUMENT,
                            'response_format.json_schema.description: provider "anthropic" takes no description '
                            "beside the schema (put it in the schema's \"description\")")


# -- request: thinking ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, thinking, effort",
    [
        (pb.ReasoningConfig(budget_tokens=2048), {"type": "enabled", "budget_tokens": 2048}, None),
        (pb.ReasoningConfig(budget_tokens=1024), {"type": "enabled", "budget_tokens": 1024}, None),
        (pb.ReasoningConfig(budget_tokens=4095), {"type": "enabled", "budget_tokens": 4095}, None),
        # An effort without a budget: adaptive thinking, its depth steered by the effort.
        (pb.ReasoningConfig(effort=pb.REASONING_EFFORT_LOW), {"type": "adaptive"}, "low"),
        (pb.ReasoningConfig(effort=pb.REASONING_EFFORT_MEDIUM), {"type": "adaptive"}, "medium"),
        (pb.ReasoningConfig(effort=pb.REASONING_EFFORT_HIGH), {"type": "adaptive"}, "high"),
        # Both: a fixed budget, and the effort beside it.
        (pb.ReasoningConfig(effort=pb.REASONING_EFFORT_MEDIUM, budget_tokens=3000),
         {"type": "enabled", "budget_tokens": 3000}, "medium"),
        (pb.ReasoningConfig(effort=pb.REASONING_EFFORT_NONE), {"type": "disabled"}, None),
        (pb.ReasoningConfig(budget_tokens=2048, include_thoughts=True),
         {"type": "enabled", "budget_tokens": 2048, "display": "summarized"}, None),
        (pb.ReasoningConfig(budget_tokens=2048, include_thoughts=False),
         {"type": "enabled", "budget_tokens": 2048, "display": "omitted"}, None),
        (pb.ReasoningConfig(effort=pb.REASONING_EFFORT_HIGH, include_thoughts=False),
         {"type": "adaptive", "display": "omitted"}, "high"),
        # Nothing set: nothing sent.
        (pb.ReasoningConfig(), None, None),
    ],
)
def test_reasoning_config(config, thinking, effort):
    body = body_of(request(user(text("Hello")), reasoning=config))

    assert body.get("thinking") == thinking
    assert body.get("output_config") == ({"effort": effort} if effort else None)


def test_thinking_with_tools_auto_top_p_and_structured_output_together():
    req = with_tools(WEATHER, tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO), parallel_tool_calls=False,
                     max_tokens=16000, top_p=0.95,
                     reasoning=pb.ReasoningConfig(effort=pb.REASONING_EFFORT_HIGH, budget_tokens=10000),
                     response_format=pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(
                         name="weather", schema=struct(WEATHER_SCHEMA))))

    assert body_of(req) == {
        "model": MODEL, "max_tokens": 16000, "messages": [HELLO], "top_p": 0.95,
        "tools": [WEATHER_JSON],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 10000},
        "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": WEATHER_SCHEMA}},
        "stream": False,
    }


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"reasoning": pb.ReasoningConfig(effort=pb.REASONING_EFFORT_MINIMAL)},
         'reasoning.effort: provider "anthropic" has no minimal effort (it takes low, medium or high)'),
        ({"reasoning": pb.ReasoningConfig(budget_tokens=1023)},
         'reasoning.budget_tokens: provider "anthropic" needs at least 1024, got 1023'),
        ({"reasoning": pb.ReasoningConfig(budget_tokens=0)},
         'reasoning.budget_tokens: provider "anthropic" needs at least 1024, got 0'),
        # The default max_tokens (4096) counts when the request sets none.
        ({"reasoning": pb.ReasoningConfig(budget_tokens=4096)},
         'reasoning.budget_tokens: provider "anthropic" needs it below max_tokens (4096), got 4096'),
        ({"reasoning": pb.ReasoningConfig(budget_tokens=2000), "max_tokens": 1500},
         'reasoning.budget_tokens: provider "anthropic" needs it below max_tokens (1500), got 2000'),
        ({"reasoning": pb.ReasoningConfig(effort=pb.REASONING_EFFORT_NONE, budget_tokens=2048)},
         'reasoning.budget_tokens: provider "anthropic" takes no thinking budget with REASONING_EFFORT_NONE '
         "(no thinking)"),
        ({"reasoning": pb.ReasoningConfig(include_thoughts=True)},
         'reasoning.include_thoughts: provider "anthropic" applies it only to thinking the request turns on '
         "(set budget_tokens or an effort)"),
        ({"reasoning": pb.ReasoningConfig(effort=pb.REASONING_EFFORT_NONE, include_thoughts=False)},
         'reasoning.include_thoughts: provider "anthropic" applies it only to thinking the request turns on '
         "(set budget_tokens or an effort)"),
        ({"reasoning": pb.ReasoningConfig(budget_tokens=2048), "temperature": 0.5},
         'temperature: provider "anthropic" takes no temperature while thinking is on'),
        ({"reasoning": pb.ReasoningConfig(effort=pb.REASONING_EFFORT_LOW), "temperature": 1.0},
         'temperature: provider "anthropic" takes no temperature while thinking is on'),
        ({"reasoning": pb.ReasoningConfig(budget_tokens=2048), "top_p": 0.9},
         'top_p: provider "anthropic" takes 0.95 to 1 while thinking is on, got 0.9'),
        ({"reasoning": pb.ReasoningConfig(budget_tokens=2048), "tools": [WEATHER],
          "tool_choice": pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)},
         'tool_choice.mode: provider "anthropic" cannot force a tool call while thinking is on (use auto or none)'),
        ({"reasoning": pb.ReasoningConfig(effort=pb.REASONING_EFFORT_HIGH), "tools": [WEATHER],
          "tool_choice": pb.ToolChoice(function_name="get_weather")},
         'tool_choice.function_name: provider "anthropic" cannot force a tool call while thinking is on '
         "(use auto or none)"),
    ],
)
def test_reasoning_settings_anthropic_cannot_take_are_refused(fields, message):
    assert refusal(request(user(text("Hello")), **fields)) == (Code.INVALID_ARGUMENT, message)


def test_thinking_off_takes_temperature_and_a_forced_tool():
    req = with_tools(WEATHER, tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), temperature=0.2,
                     reasoning=pb.ReasoningConfig(effort=pb.REASONING_EFFORT_NONE))

    body = body_of(req)

    assert (body["thinking"], body["tool_choice"], body["temperature"]) == ({"type": "disabled"}, {"type": "any"}, 0.2)


# -- request: echoed assistant turns and tool results --------------------------------------


SIGNATURE = fixture_json("anthropic/reasoning_content_thinking_tool_use.json")["content"][0]["signature"]
REDACTED = fixture_json("anthropic/reasoning_content_redacted_thinking.json")["content"][1]["data"]


def test_echoed_assistant_turn_keeps_its_blocks_in_order_and_results_follow_in_one_user_turn():
    content = fixture_json("anthropic/reasoning_content_thinking_tool_use.json")["content"]
    req = request(
        user(text("What's the weather in Paris?")),
        assistant(pb.Part(reasoning=pb.Reasoning(text=content[0]["thinking"], signature=SIGNATURE.encode())),
                  text(content[1]["text"]),
                  call_part("toolu_01CswdEQBMshySk6Y9DFKrfq", "get_weather", '{"location": "Paris"}')),
        tool_message(result("toolu_01CswdEQBMshySk6Y9DFKrfq", "88°F, sunny")),
        tools=[WEATHER], max_tokens=16000, reasoning=pb.ReasoningConfig(budget_tokens=10000))

    body = body_of(req)

    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What's the weather in Paris?"}]},
        # The published content array, unchanged (signature included).
        {"role": "assistant", "content": content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01CswdEQBMshySk6Y9DFKrfq",
                                      "content": "88°F, sunny"}]},
    ]


def test_redacted_thinking_goes_back_as_it_came():
    content = fixture_json("anthropic/reasoning_content_redacted_thinking.json")["content"]
    req = request(user(text("Hello")),
                  assistant(pb.Part(reasoning=pb.Reasoning(text=content[0]["thinking"],
                                                           signature=content[0]["signature"].encode())),
                            pb.Part(reasoning=pb.Reasoning(redacted=REDACTED.encode())),
                            text(content[2]["text"])),
                  user(text("Go on")))

    assert body_of(req)["messages"][1] == {"role": "assistant", "content": content}


def test_parallel_results_merge_into_one_user_turn_and_a_following_user_message_joins_it():
    req = request(
        user(text("Weather and time?")),
        assistant(call_part("toolu_a", "get_weather", '{"location":"Paris"}'), call_part("toolu_b", "get_time", "")),
        tool_message(result("toolu_a", "sunny")),
        tool_message(result("toolu_b", "failed: no clock", is_error=True)),
        user(text("Thanks, and in Rome?")),
        tools=[WEATHER, CLOCK])

    assert body_of(req)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather and time?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"location": "Paris"}},
            # A call with no arguments text has the empty object as input.
            {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": "failed: no clock", "is_error": True},
            {"type": "text", "text": "Thanks, and in Rome?"},
        ]},
    ]


def test_results_come_first_in_their_user_turn_even_after_a_user_message():
    # Anthropic requires the tool_result blocks first in the user turn that follows the calls.
    req = request(
        user(text("Weather?")),
        assistant(call_part("toolu_a", "get_weather", '{"location":"Paris"}')),
        user(text("(take your time)")),
        tool_message(result("toolu_a", "")),
        tools=[WEATHER])

    assert body_of(req)["messages"][2] == {"role": "user", "content": [
        # An empty result is sent without content (the field is optional).
        {"type": "tool_result", "tool_use_id": "toolu_a"},
        {"type": "text", "text": "(take your time)"},
    ]}


def test_tool_call_with_only_parsed_arguments_sends_them():
    call = pb.ToolCall(id="toolu_a", name="get_weather", arguments=struct({"location": "Paris", "days": 3}))
    req = request(user(text("Weather?")), assistant(pb.Part(tool_call=call)),
                  tool_message(result("toolu_a", "sunny")), tools=[WEATHER])

    assert body_of(req)["messages"][1]["content"] == [
        {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"location": "Paris", "days": 3}}
    ]


@pytest.mark.parametrize("arguments", ['["Paris"]', '"Paris"', "{not json", "null"])
def test_tool_call_arguments_that_are_not_an_object_are_refused(arguments):
    req = request(user(text("Weather?")), assistant(text("Checking."), call_part("toolu_a", "get_weather", arguments)),
                  tool_message(result("toolu_a", "sunny")), tools=[WEATHER])

    assert refusal(req) == (Code.INVALID_ARGUMENT, 'messages[1].parts[1].tool_call.arguments_json: provider '
                                                   '"anthropic" takes tool call arguments as a JSON object only')


def test_unsigned_reasoning_is_refused():
    # Thinking from another provider (or typed by hand) has no Anthropic signature.
    req = request(user(text("Hi")), assistant(pb.Part(reasoning=pb.Reasoning(text="Let me think.")), text("Hello!")),
                  user(text("Go on")))

    assert refusal(req) == (Code.INVALID_ARGUMENT, 'messages[1].parts[0].reasoning.signature: provider "anthropic" '
                                                   "takes back only signed thinking (signature or redacted is "
                                                   "required)")


@pytest.mark.parametrize("field", ["signature", "redacted"])
def test_signature_bytes_that_are_not_anthropics_text_are_refused(field):
    req = request(user(text("Hi")), assistant(pb.Part(reasoning=pb.Reasoning(text="x", **{field: b"\xff\xfe"}))),
                  user(text("Go on")))

    assert refusal(req) == (Code.INVALID_ARGUMENT, f"messages[1].parts[0].reasoning.{field}: is not the text "
                                                   "Anthropic returned (not UTF-8)")


# -- response: unary ---------------------------------------------------------------------------


def envelope(content: list) -> dict:
    """A published content fragment placed in the recorded tool-use Message envelope."""
    return {**fixture_json("anthropic/tool_use_response.json"), "content": content}


def test_parallel_tool_use_response():
    choice = parse(fixture_json("anthropic/tools_parallel_tool_use_response.json")).choices[0]

    assert [p.WhichOneof("content") for p in choice.message.parts] == ["text", "tool_call", "tool_call"]
    calls = [p.tool_call for p in choice.message.parts[1:]]
    assert [(c.id, c.name, c.arguments_json) for c in calls] == [
        ("toolu_0179r6ofLHbaispTuUAqMJfr", "test_tool", '{"count":1}'),
        ("toolu_012uz9XtyrRxAoELvYgkQnxi", "test_tool", '{"count":2}'),
    ]
    assert [dict(c.arguments) for c in calls] == [{"count": 1.0}, {"count": 2.0}]
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_TOOL_CALLS, "tool_use")


def test_thinking_then_a_call_without_arguments():
    response = parse(fixture_json("anthropic/reasoning_thinking_tool_use_response.json"))

    recorded = fixture_json("anthropic/reasoning_thinking_tool_use_response.json")["content"]
    choice = response.choices[0]
    assert [p.WhichOneof("content") for p in choice.message.parts] == ["reasoning", "tool_call"]
    assert choice.message.parts[0].reasoning == pb.Reasoning(text=recorded[0]["thinking"],
                                                             signature=recorded[0]["signature"].encode())
    call = choice.message.parts[1].tool_call
    # input {} is the empty object, both as text and parsed.
    assert (call.id, call.name, call.arguments_json) == ("toolu_017R7ACrx7NF7sLDDtvdQ1u9", "checkSandboxErrors", "{}")
    assert call.HasField("arguments") and dict(call.arguments) == {}
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_TOOL_CALLS, "tool_use")
    # 59 output tokens, 18 of them thinking.
    assert response.usage.output == pb.OutputUsage(total=59, reasoning=18, unattributed=41)


def test_docs_thinking_text_and_tool_use_content_in_order():
    content = fixture_json("anthropic/reasoning_content_thinking_tool_use.json")["content"]

    parts = parse(envelope(content)).choices[0].message.parts

    assert list(parts) == [
        pb.Part(reasoning=pb.Reasoning(text=content[0]["thinking"], signature=SIGNATURE.encode())),
        pb.Part(text=content[1]["text"]),
        pb.Part(tool_call=pb.ToolCall(id="toolu_01CswdEQBMshySk6Y9DFKrfq", name="get_weather",
                                      arguments_json='{"location":"Paris"}', arguments=struct({"location": "Paris"}))),
    ]


def test_redacted_thinking_is_reasoning_with_its_data():
    content = fixture_json("anthropic/reasoning_content_redacted_thinking.json")["content"]

    choice = parse({**envelope(content), "stop_reason": "end_turn"}).choices[0]

    assert list(choice.message.parts) == [
        pb.Part(reasoning=pb.Reasoning(text=content[0]["thinking"], signature=content[0]["signature"].encode())),
        pb.Part(reasoning=pb.Reasoning(redacted=REDACTED.encode())),
        pb.Part(text="Based on my analysis..."),
    ]
    assert choice.finish_reason == pb.FINISH_REASON_STOP


def test_structured_output_is_the_json_text_verbatim():
    choice = parse(fixture_json("anthropic/structured_output_config_json_schema.json")).choices[0]

    # The model's text as it came: "5.50" is not rewritten to 5.5.
    assert [p.text for p in choice.message.parts] == [
        '{"items":[{"product_name":"Green Tea","price":5.50,"quantity":2},'
        '{"product_name":"Coffee","price":3.00,"quantity":1}],"total":14.0}'
    ]
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_STOP, "end_turn")


@pytest.mark.parametrize("block_id", ["", None, "absent"])
def test_missing_or_empty_call_ids_are_minted(block_id):
    content = fixture_json("anthropic/tools_parallel_tool_use_response.json")["content"]
    for block in content[1:]:
        if block_id == "absent":
            del block["id"]
        else:
            block["id"] = block_id

    calls = [p.tool_call for p in parse(envelope(content)).choices[0].message.parts[1:]]

    assert all(is_minted(c.id) for c in calls)
    assert calls[0].id != calls[1].id


def test_a_call_cut_off_by_max_tokens_stays_a_length_stop():
    body = {**fixture_json("anthropic/tool_use_response.json"), "stop_reason": "max_tokens"}

    choice = parse(body).choices[0]

    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_LENGTH, "max_tokens")


# -- response: streams ------------------------------------------------------------------------


def sse_text(name: str) -> str:
    return (FIXTURES / "anthropic" / name).read_text(encoding="utf-8")


def events_of(raw: str) -> list[ServerSentEvent]:
    """Events as SSEDecoder gives them, from the whole transcript at once."""
    decoder = SSEDecoder()
    return decoder.feed(raw.encode()) + decoder.feed(b"\n\n")


def event_dicts(name: str) -> list[dict]:
    return [json.loads(e.data) for e in events_of(sse_text(name))]


def as_sse(events: list[dict]) -> str:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


def run(raw: str):
    """(every message the decoder forwarded, the decoder) for a whole transcript."""
    decoder = make_adapter().stream_decoder(request(user(text("Hello"))), MODEL)
    forwarded = [m for event in events_of(raw) for m in decoder.feed(event)]
    assert decoder.finished
    return forwarded, decoder


def tool_deltas(forwarded) -> list[tuple]:
    return [(m.tool_call_delta.index, m.tool_call_delta.id, m.tool_call_delta.name,
             m.tool_call_delta.arguments_fragment) for m in forwarded if m.HasField("tool_call_delta")]


DOCS_ID = "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
DOCS_ARGS = '{"location": "San Francisco, CA", "unit": "fahrenheit"}'
DOCS_FRAGMENTS = ['{"location":', ' "San', ' Francisc', 'o,', ' CA"', ', ', '"unit": "fah', 'renheit"}']


def test_docs_tool_use_stream():
    forwarded, decoder = run(sse_text("tools_stream_docs_input_json_delta.sse"))

    text_out = "Okay, let's check the weather for San Francisco, CA:"
    assert "".join(m.delta.text for m in forwarded if m.HasField("delta")) == text_out
    # The first delta names the call; the empty first partial_json sends nothing; the rest go
    # out as they came, split mid-token.
    assert tool_deltas(forwarded) == [(0, DOCS_ID, "get_weather", "")] + [(0, "", "", f) for f in DOCS_FRAGMENTS]
    [finish] = decoder.summary().finishes
    assert (finish.finish_reason, finish.raw_finish_reason) == (pb.FINISH_REASON_TOOL_CALLS, "tool_use")
    assert list(finish.tool_calls) == [pb.ToolCall(id=DOCS_ID, name="get_weather", arguments_json=DOCS_ARGS,
                                                   arguments=struct(json.loads(DOCS_ARGS)))]
    assert decoder.output_bytes == len(text_out.encode()) + len(DOCS_ARGS.encode())


def test_stream_call_without_arguments_assembles_to_the_empty_object_like_the_unary_input():
    forwarded, decoder = run(sse_text("tools_stream_no_args.sse"))

    # partial_json "" alone: at the block's end the call gets "{}", as a fragment too, so the
    # fragments still add up to arguments_json.
    assert tool_deltas(forwarded) == [(0, "toolu_01QE1WLsSVp5hy5Q3GmGTmjP", "updateIssueList", ""), (0, "", "", "{}")]
    [finish] = decoder.summary().finishes
    [call] = finish.tool_calls
    unary = parse(fixture_json("anthropic/reasoning_thinking_tool_use_response.json")).choices[0].message.parts[1]
    assert call.arguments_json == unary.tool_call.arguments_json == "{}"
    assert call.HasField("arguments") and dict(call.arguments) == {}
    assert finish.finish_reason == pb.FINISH_REASON_TOOL_CALLS


def test_arguments_in_one_chunk_and_in_single_characters():
    events = event_dicts("tools_stream_docs_input_json_delta.sse")
    json_deltas = [e for e in events if e.get("delta", {}).get("type") == "input_json_delta"]
    first, at = json_deltas[0], events.index(json_deltas[0])
    rest = [e for e in events if e not in json_deltas]

    def with_fragments(fragments: list[str]) -> str:
        pieces = [{**first, "delta": {"type": "input_json_delta", "partial_json": f}} for f in fragments]
        return as_sse(rest[:at] + pieces + rest[at:])

    forwarded, decoder = run(with_fragments([DOCS_ARGS]))
    assert tool_deltas(forwarded)[1:] == [(0, "", "", DOCS_ARGS)]
    assert decoder.summary().finishes[0].tool_calls[0].arguments_json == DOCS_ARGS

    forwarded, decoder = run(with_fragments(list(DOCS_ARGS)))
    assert [d[3] for d in tool_deltas(forwarded)[1:]] == list(DOCS_ARGS)
    assert decoder.summary().finishes[0].tool_calls[0].arguments_json == DOCS_ARGS


def test_parallel_calls_in_one_stream_are_numbered_in_order():
    events = event_dicts("tools_stream_docs_input_json_delta.sse")
    tool_block = [e for e in events if e.get("index") == 1]
    # The same tool block again as block 2, with its own id (parallel calls come one block after another).
    second = [{**e, "index": 2} for e in tool_block]
    second[0] = {**second[0], "content_block": {**second[0]["content_block"], "id": "toolu_second"}}
    at = events.index(tool_block[-1]) + 1

    forwarded, decoder = run(as_sse(events[:at] + second + events[at:]))

    deltas = tool_deltas(forwarded)
    assert deltas[0] == (0, DOCS_ID, "get_weather", "") and deltas[9] == (1, "toolu_second", "get_weather", "")
    assert {d[0] for d in deltas[1:9]} == {0} and {d[0] for d in deltas[10:]} == {1}
    calls = decoder.summary().finishes[0].tool_calls
    assert [(c.id, c.arguments_json) for c in calls] == [(DOCS_ID, DOCS_ARGS), ("toolu_second", DOCS_ARGS)]


def thinking_then_tool_stream() -> str:
    """stream_docs_thinking's thinking block, then the docs tool-use stream's blocks moved one
    index on: a thinking block with its signature ahead of a text and a tool_use block."""
    thinking = [e for e in event_dicts("stream_docs_thinking.sse") if e.get("index") == 0]
    tools = event_dicts("tools_stream_docs_input_json_delta.sse")
    shifted = [{**e, "index": e["index"] + 1} if "index" in e else e for e in tools]
    return as_sse(shifted[:1] + thinking + shifted[1:])


THINKING = ("I need to find the GCD of 1071 and 462 using the Euclidean algorithm.\n\n1071 = 2 × 462 + 147"
            "\n462 = 3 × 147 + 21\n147 = 7 × 21 + 0\nThe remainder is 0, so GCD(1071, 462) = 21.")
THINKING_SIGNATURE = b"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."


def test_reasoning_with_signature_then_a_tool_call_in_one_stream():
    forwarded, decoder = run(thinking_then_tool_stream())

    kinds = [m.WhichOneof("event") for m in forwarded]
    assert kinds[:4] == ["reasoning_delta"] * 4 and kinds[4] == "delta"
    assert "".join(m.reasoning_delta.text for m in forwarded if m.HasField("reasoning_delta")) == THINKING
    [finish] = decoder.summary().finishes
    assert list(finish.reasoning) == [pb.Reasoning(text=THINKING, signature=THINKING_SIGNATURE)]
    assert [(c.id, c.arguments_json) for c in finish.tool_calls] == [(DOCS_ID, DOCS_ARGS)]
    assert finish.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    text_out = "Okay, let's check the weather for San Francisco, CA:"
    assert decoder.output_bytes == len(THINKING.encode()) + len(text_out.encode()) + len(DOCS_ARGS.encode())


def test_redacted_thinking_block_in_a_stream():
    redacted = {"type": "content_block_start", "index": 0, "content_block": {"type": "redacted_thinking",
                                                                             "data": REDACTED}}
    events = event_dicts("stream_docs_thinking.sse")
    shifted = [{**e, "index": e["index"] + 1} if "index" in e else e for e in events]
    raw = as_sse(shifted[:1] + [redacted, {"type": "content_block_stop", "index": 0}] + shifted[1:])

    forwarded, decoder = run(raw)

    assert list(decoder.summary().finishes[0].reasoning) == [
        pb.Reasoning(redacted=REDACTED.encode()), pb.Reasoning(text=THINKING, signature=THINKING_SIGNATURE)]


# -- any split of the bytes gives the same answer --------------------------------------------


def expected_calls(raw: str) -> list[pb.ToolCall]:
    """The calls the stream's own content says: each tool_use block's id and name, and its
    partial_json joined ("{}" when it sent none), parsed where it is an object."""
    calls: dict[int, list] = {}
    for e in (json.loads(ev.data) for ev in events_of(raw)):
        if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use":
            calls[e["index"]] = [e["content_block"]["id"], e["content_block"]["name"], ""]
        elif e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta":
            calls[e["index"]][2] += e["delta"]["partial_json"]
    out = []
    for call_id, name, arguments in calls.values():
        arguments = arguments or "{}"
        out.append(pb.ToolCall(id=call_id, name=name, arguments_json=arguments, arguments=struct(json.loads(arguments))))
    return out


STREAMS = {
    "docs_tool_use": sse_text("tools_stream_docs_input_json_delta.sse"),
    "no_args": sse_text("tools_stream_no_args.sse"),
    "thinking": sse_text("stream_docs_thinking.sse"),
    "thinking_then_tool": thinking_then_tool_stream(),
}


def run_split(raw: bytes, cuts: list[int]):
    sse, decoder = SSEDecoder(), make_adapter().stream_decoder(request(user(text("Hello"))), MODEL)
    forwarded = []
    bounds = [0, *sorted(set(cuts)), len(raw)]
    for start, end in zip(bounds, bounds[1:]):
        for event in sse.feed(raw[start:end]):
            forwarded.extend(decoder.feed(event))
    for event in sse.feed(b"\n\n"):
        forwarded.extend(decoder.feed(event))
    return forwarded, decoder


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(STREAMS)), data=st.data())
def test_any_split_of_the_bytes_assembles_the_same_calls_and_reasoning(name, data):
    raw = STREAMS[name].encode()
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(raw) - 1), max_size=40))

    forwarded, decoder = run_split(raw, cuts)

    whole_forwarded, whole = run_split(raw, [])
    summary = decoder.summary()
    assert decoder.finished
    assert summary == whole.summary()
    assert forwarded == whole_forwarded
    [finish] = summary.finishes
    assert list(finish.tool_calls) == expected_calls(STREAMS[name])
    # The fragments forwarded add up to each call's arguments_json.
    for i, call in enumerate(finish.tool_calls):
        assert "".join(m.tool_call_delta.arguments_fragment for m in forwarded
                       if m.HasField("tool_call_delta") and m.tool_call_delta.index == i) == call.arguments_json
    assert "".join(m.reasoning_delta.text for m in forwarded if m.HasField("reasoning_delta")) == \
        "".join(r.text for r in finish.reasoning)


def test_a_split_inside_an_escaped_quote_of_partial_json():
    raw = STREAMS["docs_tool_use"].encode()
    cut = raw.index(b'\\"unit') + 1  # between the backslash and the quote it escapes

    forwarded, decoder = run_split(raw, [cut])

    assert decoder.summary().finishes[0].tool_calls[0].arguments_json == DOCS_ARGS
    assert tool_deltas(forwarded)[1:] == [(0, "", "", f) for f in DOCS_FRAGMENTS]


def test_a_tool_use_start_that_already_holds_its_input_keeps_it():
    # Anthropic opens tool_use with `input: {}`; an input given whole in the start is not lost.
    events = [e for e in event_dicts("tools_stream_docs_input_json_delta.sse")
              if e.get("delta", {}).get("type") != "input_json_delta"]
    start = next(e for e in events if e.get("content_block", {}).get("type") == "tool_use")
    start["content_block"]["input"] = {"location": "Paris"}

    forwarded, decoder = run(as_sse(events))

    assert tool_deltas(forwarded) == [(0, DOCS_ID, "get_weather", '{"location":"Paris"}')]
    assert decoder.summary().finishes[0].tool_calls[0].arguments_json == '{"location":"Paris"}'
