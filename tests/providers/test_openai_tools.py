"""Tools, structured output and reasoning in the OpenAI Chat Completions format (mixrouter,
openai, openai_compatible): the exact JSON each request becomes, the published answers and
streams parsed, and any split of a stream's bytes assembling to the same calls and reasoning.

Payloads are the published fixtures (tests/fixtures/openai*/SOURCES.md); where a test needs a
variant (ids removed, arguments in one chunk) it builds it here from a published file.
"""

from __future__ import annotations

import json

import grpc
import orjson
import pytest
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.support.adapters import FIXTURES, fixture_text, respond, settings, sse_events, user
from tollway.providers import mixrouter, openai_compatible
from tollway.providers import openai as openai_provider
from tollway.providers.openai_compatible import CompatibleOptions
from tollway.service.errors import GatewayError
from tollway.service.plugins.tools import is_minted
from tollway.service.upstream.sse import SSEDecoder
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode

OPENAI = openai_provider.create(settings())
MIXROUTER = mixrouter.create(settings(name="mixrouter", kind="mixrouter", base_url="https://api.mixrouter.com/v1"))


def compatible(**options):
    return openai_compatible.create(settings(name="local", kind="openai_compatible",
                                             base_url="http://127.0.0.1:8080/v1", api_key=None, **options))


ALL = [pytest.param(OPENAI, id="openai"), pytest.param(MIXROUTER, id="mixrouter"),
       pytest.param(compatible(), id="openai_compatible")]


def struct(value: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer",
                                                                                       "maximum": 7}},
                  "required": ["city", "days"], "additionalProperties": False}
WEATHER = pb.Tool(name="get_weather", description="Weather for a city.", parameters=struct(WEATHER_SCHEMA),
                  strict=True)
HI = user(pb.Part(text="Weather in Paris?"))


def body(adapter, request, model: str = "m", *, stream: bool = False) -> dict:
    return json.loads(adapter.build_request(request, model, stream=stream).content)


def refused(adapter, request) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        adapter.build_request(request, "m", stream=False)
    return caught.value


# -- capabilities and options --------------------------------------------------------------


@pytest.mark.parametrize("adapter", ALL)
def test_every_kind_takes_tools_structured_output_and_reasoning_by_default(adapter):
    caps = adapter.capabilities
    assert (caps.tools, caps.structured_output, caps.reasoning) == (True, True, True)


def test_features_option_sets_the_capabilities():
    caps = compatible(features=["reasoning", "tools"]).capabilities

    assert (caps.tools, caps.structured_output, caps.reasoning) == (True, False, True)
    assert CompatibleOptions.parse({"features": []}).features == ()
    none = compatible(features=[]).capabilities
    assert (none.tools, none.structured_output, none.reasoning) == (False, False, False)


@pytest.mark.parametrize(("options", "message"), [
    ({"features": "tools"}, "option features must be a list of strings"),
    ({"features": ["tools", 1]}, "option features must be a list of strings"),
    ({"features": ["tools", "vision"]},
     "option features: unknown feature 'vision' (known: tools, structured_output, reasoning)"),
    ({"reasoning_echo": "reasoning"},
     "option reasoning_echo must be \"none\" or \"reasoning_content\", not 'reasoning'"),
])
def test_bad_feature_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError) as caught:
        CompatibleOptions.parse(options)

    assert str(caught.value) == message


# -- request: tools, tool_choice, parallel calls -------------------------------------------


@pytest.mark.parametrize("adapter", ALL)
def test_tools_become_function_tools(adapter):
    request = pb.CompleteRequest(messages=[HI], tools=[WEATHER, pb.Tool(name="now")])

    got = body(adapter, request)

    assert got["tools"] == [
        {"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city.",
            # Struct holds numbers as doubles: the integers come back as integers.
            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                            "days": {"type": "integer", "maximum": 7}},
                           "required": ["city", "days"], "additionalProperties": False},
            "strict": True}},
        # Unset description, parameters and strict are left out, not sent empty.
        {"type": "function", "function": {"name": "now"}},
    ]
    assert "tool_choice" not in got and "parallel_tool_calls" not in got


def test_strict_false_is_sent():
    got = body(OPENAI, pb.CompleteRequest(messages=[HI], tools=[pb.Tool(name="now", strict=False)]))

    assert got["tools"] == [{"type": "function", "function": {"name": "now", "strict": False}}]


@pytest.mark.parametrize(("choice", "expected"), [
    (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO), "auto"),
    (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE), "none"),
    (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), "required"),
    (pb.ToolChoice(function_name="get_weather"), {"type": "function", "function": {"name": "get_weather"}}),
])
def test_each_tool_choice(choice, expected):
    got = body(OPENAI, pb.CompleteRequest(messages=[HI], tools=[WEATHER], tool_choice=choice))

    assert got["tool_choice"] == expected


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_tool_calls_is_sent_when_set(parallel):
    got = body(MIXROUTER, pb.CompleteRequest(messages=[HI], tools=[WEATHER], parallel_tool_calls=parallel))

    assert got["parallel_tool_calls"] is parallel


def test_a_whole_tool_request_exactly():
    request = pb.StreamCompleteRequest(messages=[HI], tools=[WEATHER], max_tokens=100,
                                       tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED),
                                       parallel_tool_calls=False)

    assert body(OPENAI, request, "gpt-4.1", stream=True) == {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}],
        "max_completion_tokens": 100,
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                            "days": {"type": "integer", "maximum": 7}},
                           "required": ["city", "days"], "additionalProperties": False},
            "strict": True}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# -- request: response_format and reasoning --------------------------------------------------


def test_json_schema_response_format():
    fmt = pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(
        name="weather", schema=struct(WEATHER_SCHEMA), strict=True, description="A forecast."))

    got = body(OPENAI, pb.CompleteRequest(messages=[HI], response_format=fmt))

    assert got["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "weather", "schema": WEATHER_SCHEMA, "strict": True, "description": "A forecast."}}


def test_json_schema_without_name_strict_or_description():
    fmt = pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(schema=struct({"type": "object"})))

    got = body(MIXROUTER, pb.CompleteRequest(messages=[HI], response_format=fmt))

    # OpenAI requires a name: "response" stands in for an empty one.
    assert got["response_format"] == {"type": "json_schema",
                                      "json_schema": {"name": "response", "schema": {"type": "object"}}}


@pytest.mark.parametrize("adapter", ALL)
def test_json_object_response_format(adapter):
    got = body(adapter, pb.CompleteRequest(messages=[HI], response_format=pb.ResponseFormat(
        json_object=pb.JsonObjectFormat())))

    assert got["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(("effort", "expected"), [
    (pb.REASONING_EFFORT_NONE, "none"),
    (pb.REASONING_EFFORT_MINIMAL, "minimal"),
    (pb.REASONING_EFFORT_LOW, "low"),
    (pb.REASONING_EFFORT_MEDIUM, "medium"),
    (pb.REASONING_EFFORT_HIGH, "high"),
])
def test_reasoning_effort(effort, expected):
    got = body(OPENAI, pb.CompleteRequest(messages=[HI], reasoning=pb.ReasoningConfig(effort=effort)))

    assert got["reasoning_effort"] == expected


def test_an_empty_reasoning_config_sends_nothing():
    got = body(OPENAI, pb.CompleteRequest(messages=[HI], reasoning=pb.ReasoningConfig()))

    assert "reasoning_effort" not in got


@pytest.mark.parametrize(("adapter", "name"), [(OPENAI, "openai"), (MIXROUTER, "mixrouter"),
                                               (compatible(), "local")])
def test_a_budget_is_refused_naming_field_and_provider(adapter, name):
    request = pb.CompleteRequest(messages=[HI], reasoning=pb.ReasoningConfig(
        effort=pb.REASONING_EFFORT_LOW, budget_tokens=1024))

    error = refused(adapter, request)

    assert error.code == Code.INVALID_ARGUMENT
    assert error.message == (f'reasoning.budget_tokens: provider "{name}" takes a reasoning effort only '
                             "(reasoning_effort), not a token budget")


@pytest.mark.parametrize("include", [True, False])
def test_include_thoughts_is_refused_naming_field_and_provider(include):
    request = pb.CompleteRequest(messages=[HI], reasoning=pb.ReasoningConfig(include_thoughts=include))

    error = refused(OPENAI, request)

    assert error.code == Code.INVALID_ARGUMENT
    assert error.message == ('reasoning.include_thoughts: provider "openai" has no switch for returning thoughts '
                             "(the server decides whether it returns them)")


# -- request: echoed assistant turns and tool results ----------------------------------------


def call_part(call_id: str, name: str, arguments: str) -> pb.Part:
    return pb.Part(tool_call=pb.ToolCall(id=call_id, name=name, arguments_json=arguments))


def result_part(call_id: str, *texts: str, is_error: bool = False) -> pb.Part:
    return pb.Part(tool_result=pb.ToolResult(tool_call_id=call_id, parts=[pb.Part(text=t) for t in texts],
                                             is_error=is_error))


ECHO = [
    HI,
    pb.Message(role=pb.ROLE_ASSISTANT, parts=[
        pb.Part(reasoning=pb.Reasoning(text="Two cities: two calls.", signature=b"sig")),
        pb.Part(text="Checking both."),
        call_part("call_1", "get_weather", '{"city": "Paris", "days": 1}'),
        call_part("call_2", "get_weather", '{"city":"Oslo","days":2}'),
    ]),
    pb.Message(role=pb.ROLE_TOOL, parts=[
        result_part("call_2", '{"temp": -3}'),
        result_part("call_1", "upstream ", "timed out", is_error=True),
    ]),
]

ECHO_MESSAGES = [
    {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
    {"role": "assistant", "content": "Checking both.", "tool_calls": [
        # arguments exactly as the model wrote them (spacing kept).
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "days": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city":"Oslo","days":2}'}},
    ]},
    # One "tool" message per result, in the caller's order; an error result's text as it is.
    {"role": "tool", "tool_call_id": "call_2", "content": '{"temp": -3}'},
    {"role": "tool", "tool_call_id": "call_1", "content": "upstream timed out"},
]


@pytest.mark.parametrize("adapter", ALL)
def test_an_echoed_turn_and_its_results(adapter):
    got = body(adapter, pb.CompleteRequest(messages=ECHO, tools=[WEATHER]))

    # The reasoning part has no input field in the Chat format: left out.
    assert got["messages"] == ECHO_MESSAGES


def test_calls_without_text_send_content_null():
    messages = [HI, pb.Message(role=pb.ROLE_ASSISTANT, parts=[
        pb.Part(reasoning=pb.Reasoning(text="hm")), call_part("call_1", "now", "")])]

    got = body(OPENAI, pb.CompleteRequest(messages=messages, tools=[pb.Tool(name="now")]))

    assert got["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": ""}}]}


def test_an_assistant_turn_of_reasoning_only_sends_empty_content():
    messages = [HI, pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(reasoning=pb.Reasoning(text="hm"))]), HI]

    got = body(OPENAI, pb.CompleteRequest(messages=messages))

    assert got["messages"][1] == {"role": "assistant", "content": ""}


def test_reasoning_echo_sends_reasoning_content_back():
    # DeepSeek's thinking mode requires the reasoning_content of a turn that called tools back.
    got = body(compatible(reasoning_echo="reasoning_content"), pb.CompleteRequest(messages=ECHO, tools=[WEATHER]))

    assert got["messages"][1] == {**ECHO_MESSAGES[1], "reasoning_content": "Two cities: two calls."}
    assert got["messages"][2:] == ECHO_MESSAGES[2:]


def test_reasoning_echo_sends_nothing_for_a_turn_without_reasoning_text():
    messages = [HI, pb.Message(role=pb.ROLE_ASSISTANT, parts=[
        pb.Part(reasoning=pb.Reasoning(redacted=b"opaque")), call_part("call_1", "now", "{}")])]

    got = body(compatible(reasoning_echo="reasoning_content"), pb.CompleteRequest(messages=messages,
                                                                               tools=[pb.Tool(name="now")]))

    assert "reasoning_content" not in got["messages"][1]


# -- unary answers -------------------------------------------------------------------------


def parse(adapter, payload: bytes) -> pb.CompleteResponse:
    request = pb.CompleteRequest(messages=[HI])
    http_request = adapter.build_request(request, "m", stream=False)
    return adapter.parse_response(respond(http_request, 200, payload), request, "m")


def parse_fixture(name: str, adapter=OPENAI) -> pb.CompleteResponse:
    return parse(adapter, (FIXTURES / name).read_bytes())


def kinds(message: pb.Message) -> list[str]:
    return [p.WhichOneof("content") for p in message.parts]


def test_a_single_call():
    choice = parse_fixture("openai/chat_completion_tool_calls.json").choices[0]

    assert choice.message.parts[0] == pb.Part(tool_call=pb.ToolCall(
        id="call_KjzAbhiZC6nk81tQzL7pwlpc", name="read_file", arguments_json='{"path":"README.md"}',
        arguments=struct({"path": "README.md"})))
    assert kinds(choice.message) == ["tool_call"]
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_TOOL_CALLS, "tool_calls")


def test_parallel_calls_in_order():
    response = parse_fixture("openai/tools_parallel_tool_calls.json", MIXROUTER)

    calls = [p.tool_call for p in response.choices[0].message.parts]
    assert [(c.id, c.name, c.arguments_json) for c in calls] == [
        ("call_fdNz3vOBKYgOIpMdWotB9MjY", "GetWeatherArgs", '{"city": "Edinburgh", "country": "GB", "units": "c"}'),
        ("call_h1DWI1POMJLb0KwIyQHWXD4p", "get_stock_price", '{"ticker": "AAPL", "exchange": "NASDAQ"}'),
    ]
    assert calls[1].arguments == struct({"ticker": "AAPL", "exchange": "NASDAQ"})
    assert response.choices[0].finish_reason == pb.FINISH_REASON_TOOL_CALLS


def test_deepseek_reasoning_then_call():
    choice = parse_fixture("openai_compatible/deepseek_tools_reasoning_content.json", compatible()).choices[0]

    # content "" gives no part; the extra `index` on the call changes nothing.
    assert list(choice.message.parts) == [
        pb.Part(reasoning=pb.Reasoning(
            text="The user asks about weather in San Francisco. I'll call the weather tool.")),
        pb.Part(tool_call=pb.ToolCall(id="call_00_lCIkdHRa7AKmCG3TlxXz1061", name="weather",
                                      arguments_json='{"location": "San Francisco"}',
                                      arguments=struct({"location": "San Francisco"}))),
    ]
    assert choice.finish_reason == pb.FINISH_REASON_TOOL_CALLS


def test_xai_reasoning_then_call():
    choice = parse_fixture("openai_compatible/xai_grok3mini_tool_call.json", compatible()).choices[0]

    assert kinds(choice.message) == ["reasoning", "tool_call"]
    assert choice.message.parts[0].reasoning.text.startswith("First, the user is asking about the weather")
    assert choice.message.parts[0].reasoning.text.endswith("I should call this function to advance the user's request.")
    assert choice.message.parts[1].tool_call.id == "call_93562515"
    assert choice.message.parts[1].tool_call.arguments_json == '{"location":"San Francisco"}'


def test_empty_ids_are_minted_and_stop_becomes_tool_calls():
    choice = parse_fixture("openai_compatible/openpipe_tools_empty_ids.json", compatible()).choices[0]

    calls = [p.tool_call for p in choice.message.parts]
    assert [c.name for c in calls] == ["get_current_weather", "get_current_weather"]
    assert all(is_minted(c.id) for c in calls)
    assert calls[0].id != calls[1].id
    assert calls[1].arguments == struct({"location": "Orlando, FL", "unit": "celsius"})
    # The server said "stop" although it called tools: the raw reason is kept beside.
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_TOOL_CALLS, "stop")


def test_created_in_milliseconds_is_read_as_such():
    # OpenPipe's `created` is 1702666185703: milliseconds (2023-12-15), not seconds.
    response = parse_fixture("openai_compatible/openpipe_tools_empty_ids.json", compatible())

    assert response.created.seconds == 1702666185


def test_a_missing_id_is_minted_and_empty_arguments_are_kept():
    data = json.loads(fixture_text("openai/chat_completion_tool_calls.json"))
    call = data["choices"][0]["message"]["tool_calls"][0]
    del call["id"]
    call["function"]["arguments"] = "{}"

    part = parse(OPENAI, orjson.dumps(data)).choices[0].message.parts[0]

    assert is_minted(part.tool_call.id)
    assert part.tool_call.arguments_json == "{}"
    assert part.tool_call.HasField("arguments") and part.tool_call.arguments == struct({})


def test_structured_output_is_text():
    choice = parse_fixture("openai/structured_json_schema.json").choices[0]

    assert list(choice.message.parts) == [pb.Part(text='{"city":"San Francisco","temperature":65,"units":"f"}')]
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_STOP, "stop")


def test_a_refusal_is_text_ending_as_a_content_filter():
    choice = parse_fixture("openai/structured_refusal.json").choices[0]

    assert list(choice.message.parts) == [pb.Part(text="I'm very sorry, but I can't assist with that.")]
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_CONTENT_FILTER, "stop")


# -- streams -------------------------------------------------------------------------------

STREAM = pb.StreamCompleteRequest(messages=[HI])


def run(adapter, events) -> tuple[list[pb.StreamCompleteResponse], pb.StreamSummary, object]:
    decoder = adapter.stream_decoder(STREAM, "m")
    out = [m for e in events for m in decoder.feed(e)]
    assert decoder.finished
    return out, decoder.summary(), decoder


def run_fixture(name: str, adapter=OPENAI):
    return run(adapter, sse_events(fixture_text(name)))


def tool_deltas(messages) -> list[tuple[int, int, str, str, str]]:
    return [(d.choice_index, d.index, d.id, d.name, d.arguments_fragment)
            for d in (m.tool_call_delta for m in messages if m.WhichOneof("event") == "tool_call_delta")]


def test_a_streamed_call_is_forwarded_piece_by_piece():
    messages, summary, decoder = run_fixture("openai/stream_tool_calls.sse")

    # The first delta carries id and name; fragments split mid-token follow as they came.
    assert tool_deltas(messages) == [
        (0, 0, "call_HjeqP7YeRkoNj0de9e3U4X4B", "read_file", ""),
        (0, 0, "", "", '{"'), (0, 0, "", "", "path"), (0, 0, "", "", '":"'), (0, 0, "", "", "README"),
        (0, 0, "", "", ".md"), (0, 0, "", "", '"}'),
    ]
    assert [m.WhichOneof("event") for m in messages] == ["tool_call_delta"] * 7
    finish = summary.finishes[0]
    assert list(finish.tool_calls) == [pb.ToolCall(id="call_HjeqP7YeRkoNj0de9e3U4X4B", name="read_file",
                                                   arguments_json='{"path":"README.md"}',
                                                   arguments=struct({"path": "README.md"}))]
    assert (finish.finish_reason, finish.raw_finish_reason) == (pb.FINISH_REASON_TOOL_CALLS, "tool_calls")
    # Tool arguments are billed output.
    assert decoder.output_bytes == len(b'{"path":"README.md"}')


def test_parallel_streamed_calls():
    messages, summary, decoder = run_fixture("openai/tools_stream_parallel_tool_calls.sse", MIXROUTER)

    deltas = tool_deltas(messages)
    assert deltas[0] == (0, 0, "call_lQnnsesjFMWMQ5IeWPHzR4th", "GetWeatherArgs", "")
    assert deltas[12] == (0, 1, "call_2xjOUgaCdiwAcl9ZBL9LyMUU", "get_stock_price", "")
    # Each call: its opening delta, then 11 and 9 fragments.
    assert [d[1] for d in deltas] == [0] * 12 + [1] * 10
    calls = summary.finishes[0].tool_calls
    assert [(c.id, c.name, c.arguments_json) for c in calls] == [
        ("call_lQnnsesjFMWMQ5IeWPHzR4th", "GetWeatherArgs", '{"city": "Edinburgh", "country": "UK", "units": "c"}'),
        ("call_2xjOUgaCdiwAcl9ZBL9LyMUU", "get_stock_price", '{"ticker": "AAPL", "exchange": "NASDAQ"}'),
    ]
    assert summary.finishes[0].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert decoder.output_bytes == sum(len(c.arguments_json.encode()) for c in calls)


def test_deepseek_stream_reasoning_then_call():
    messages, summary, decoder = run_fixture("openai_compatible/deepseek_tools_stream_reasoning_content.sse",
                                             compatible())

    events = [m.WhichOneof("event") for m in messages]
    # 17 reasoning deltas (the first, empty one sends nothing), then the call's 11 pieces.
    assert events == ["reasoning_delta"] * 17 + ["tool_call_delta"] * 11
    thinking = "The user asks about the weather in San Francisco. I should use the weather tool."
    assert "".join(m.reasoning_delta.text for m in messages[:17]) == thinking
    finish = summary.finishes[0]
    assert list(finish.reasoning) == [pb.Reasoning(text=thinking)]
    assert [(c.id, c.name, c.arguments_json) for c in finish.tool_calls] == [
        ("call_00_IhCAliIHtM9gKpgfqbBV9873", "weather", '{"location": "San Francisco"}')]
    assert finish.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert decoder.output_bytes == len(thinking.encode()) + len(b'{"location": "San Francisco"}')
    assert summary.usage.output.reasoning == 17


def test_structured_output_streams_as_text():
    messages, summary, _ = run_fixture("openai/structured_stream_json_schema.sse")

    assert "".join(m.delta.text for m in messages) == '{"city":"San Francisco","temperature":68,"units":"f"}'
    assert {m.WhichOneof("event") for m in messages} == {"delta"}
    assert summary.finishes[0].finish_reason == pb.FINISH_REASON_STOP


def _chunks(name: str) -> list[dict]:
    return [json.loads(e.data) for e in sse_events(fixture_text(name)) if e.data != "[DONE]"]


def _events(chunks: list[dict]) -> list:
    return sse_events("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n")


def test_a_streamed_refusal_is_text_ending_as_a_content_filter():
    # The structured-output stream with its content moved to `refusal`, as a refused one comes.
    chunks = _chunks("openai/structured_stream_json_schema.sse")
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                delta["refusal"] = delta.pop("content")

    messages, summary, _ = run(OPENAI, _events(chunks))

    assert "".join(m.delta.text for m in messages) == '{"city":"San Francisco","temperature":68,"units":"f"}'
    finish = summary.finishes[0]
    assert (finish.finish_reason, finish.raw_finish_reason) == (pb.FINISH_REASON_CONTENT_FILTER, "stop")


def test_arguments_in_one_chunk():
    # The parallel stream with each call's fragments folded into its opening piece.
    chunks = _chunks("openai/tools_stream_parallel_tool_calls.sse")
    opened: dict[int, dict] = {}
    kept = []
    for chunk in chunks:
        pieces = (chunk["choices"][0]["delta"].get("tool_calls") or []) if chunk["choices"] else []
        if pieces and "id" not in pieces[0]:
            opened[pieces[0]["index"]]["function"]["arguments"] += pieces[0]["function"]["arguments"]
            continue
        for piece in pieces:
            opened[piece["index"]] = piece
        kept.append(chunk)

    messages, summary, _ = run(OPENAI, _events(kept))

    assert tool_deltas(messages) == [
        (0, 0, "call_lQnnsesjFMWMQ5IeWPHzR4th", "GetWeatherArgs",
         '{"city": "Edinburgh", "country": "UK", "units": "c"}'),
        (0, 1, "call_2xjOUgaCdiwAcl9ZBL9LyMUU", "get_stock_price", '{"ticker": "AAPL", "exchange": "NASDAQ"}'),
    ]
    _, whole, _ = run_fixture("openai/tools_stream_parallel_tool_calls.sse")
    assert summary.finishes == whole.finishes


def test_pieces_without_index_or_id():
    # The parallel stream as a server that numbers nothing and gives no ids sends it.
    chunks = _chunks("openai/tools_stream_parallel_tool_calls.sse")
    for chunk in chunks:
        for choice in chunk["choices"]:
            for piece in choice["delta"].get("tool_calls") or ():
                del piece["index"]
                piece.pop("id", None)

    messages, summary, _ = run(OPENAI, _events(chunks))

    calls = summary.finishes[0].tool_calls
    assert [(c.name, c.arguments_json) for c in calls] == [
        ("GetWeatherArgs", '{"city": "Edinburgh", "country": "UK", "units": "c"}'),
        ("get_stock_price", '{"ticker": "AAPL", "exchange": "NASDAQ"}'),
    ]
    # Minted on the first delta, and the same in the summary: what turn 2 must send back.
    firsts = [d for d in tool_deltas(messages) if d[3]]
    assert [d[2] for d in firsts] == [c.id for c in calls]
    assert all(is_minted(c.id) for c in calls) and calls[0].id != calls[1].id


def test_a_stream_split_after_every_backslash():
    # Cut inside every JSON escape of the events (\" in the arguments), the same summary.
    raw = (FIXTURES / "openai/tools_stream_parallel_tool_calls.sse").read_bytes()
    cuts = [i + 1 for i, b in enumerate(raw) if b == ord("\\")]
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]

    assert summary_of(OPENAI, pieces).finishes == run_fixture("openai/tools_stream_parallel_tool_calls.sse")[1].finishes


# -- any split of the bytes ------------------------------------------------------------------


def summary_of(adapter, pieces: list[bytes]) -> pb.StreamSummary:
    sse = SSEDecoder()
    decoder = adapter.stream_decoder(STREAM, "m")
    for piece in pieces:
        for event in sse.feed(piece):
            decoder.feed(event)
    assert decoder.finished
    return decoder.summary()


def calls_by_hand(raw: str) -> list[tuple[str, str, str]]:
    """The calls of a stream read straight from its JSON: (id, name, arguments) by index."""
    calls: dict[int, list[str]] = {}
    for event in sse_events(raw):
        if event.data == "[DONE]":
            continue
        for choice in json.loads(event.data)["choices"]:
            for piece in choice["delta"].get("tool_calls") or ():
                call = calls.setdefault(piece["index"], ["", "", ""])
                call[0] = call[0] or piece.get("id", "")
                call[1] = call[1] or piece.get("function", {}).get("name", "")
                call[2] += piece.get("function", {}).get("arguments", "")
    return [tuple(c) for _, c in sorted(calls.items())]


def reasoning_by_hand(raw: str) -> str:
    return "".join(choice["delta"].get("reasoning_content") or ""
                   for e in sse_events(raw) if e.data != "[DONE]" for choice in json.loads(e.data)["choices"])


STREAM_FIXTURES = ["openai/stream_tool_calls.sse", "openai/tools_stream_parallel_tool_calls.sse",
                   "openai_compatible/deepseek_tools_stream_reasoning_content.sse"]


@pytest.mark.parametrize("name", STREAM_FIXTURES)
def test_the_assembled_calls_match_the_streams_own_json(name):
    raw = fixture_text(name)

    finish = summary_of(OPENAI, [raw.encode()]).finishes[0]

    assert [(c.id, c.name, c.arguments_json) for c in finish.tool_calls] == calls_by_hand(raw)
    assert "".join(r.text for r in finish.reasoning) == reasoning_by_hand(raw)
    for call in finish.tool_calls:
        assert call.arguments == struct(json.loads(call.arguments_json))


@pytest.mark.parametrize("name", STREAM_FIXTURES)
@hsettings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=40))
def test_any_split_of_the_bytes_gives_the_same_summary(name, cuts):
    raw = (FIXTURES / name).read_bytes()
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)])]

    split = summary_of(OPENAI, pieces)

    whole = summary_of(OPENAI, [raw])
    assert split == whole
    assert [(c.id, c.name, c.arguments_json) for c in split.finishes[0].tool_calls] == calls_by_hand(raw.decode())
    assert "".join(r.text for r in split.finishes[0].reasoning) == reasoning_by_hand(raw.decode())
