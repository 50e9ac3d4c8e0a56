"""Two-turn tool conversations in the OpenAI Chat format, end to end: gRPC caller -> in-process
gateway -> loopback upstream replaying a published tool-call answer, then the caller echoes the
assistant turn (from the unary message, or from the stream summary) with its tool results, and
the upstream's turn-2 body is asserted exactly. MixRouter (the first users' provider) and an
openai_compatible instance whose server gives empty ids (the minted ids must come back).
"""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import struct_pb2

from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_bytes, mixrouter_config
from tests.support.upstream import Reply, sse_events
from tollway.service.plugins.tools import is_minted
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode


def struct(value: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def tool(name: str, **properties: str) -> pb.Tool:
    return pb.Tool(name=name, parameters=struct({
        "type": "object", "properties": {k: {"type": t} for k, t in properties.items()},
        "required": list(properties)}))


def tool_json(name: str, **properties: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": {k: {"type": t} for k, t in properties.items()}, "required": list(properties)}}}


def user(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=text)])


def results(*pairs: tuple[str, str]) -> pb.Message:
    return pb.Message(role=pb.ROLE_TOOL, parts=[
        pb.Part(tool_result=pb.ToolResult(tool_call_id=i, parts=[pb.Part(text=t)])) for i, t in pairs])


def from_summary(finish: pb.ChoiceFinish) -> pb.Message:
    """The assistant turn a streaming caller rebuilds from the summary alone."""
    return pb.Message(role=pb.ROLE_ASSISTANT, parts=[*(pb.Part(reasoning=r) for r in finish.reasoning),
                                                     *(pb.Part(tool_call=c) for c in finish.tool_calls)])


def stream_reply(name: str) -> Reply:
    return Reply(events=[fixture_bytes(name)])


def stream_reply_of(chunks: list[dict]) -> Reply:
    return Reply(events=sse_events(chunks))


async def turn_one(client, model: str, request_fields: dict, *, stream: bool) -> pb.Message:
    """Turn 1, unary or streamed; the assistant message the caller echoes."""
    if not stream:
        response = await client.stub.Complete(pb.CompleteRequest(model=model, **request_fields), timeout=10)
        assert response.choices[0].finish_reason == pb.FINISH_REASON_TOOL_CALLS
        return response.choices[0].message
    call = client.stub.StreamComplete(pb.StreamCompleteRequest(model=model, **request_fields), timeout=10)
    messages = [m async for m in call]
    assert await call.code() == Code.OK
    finish = messages[-1].summary.finishes[0]
    assert finish.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    # The calls were forwarded as they came: the first delta of each carries its summary id.
    firsts = [m.tool_call_delta for m in messages if m.HasField("tool_call_delta") and m.tool_call_delta.name]
    assert [(d.index, d.id, d.name) for d in firsts] == [(i, c.id, c.name) for i, c in enumerate(finish.tool_calls)]
    return from_summary(finish)


async def turn_two(client, model: str, first: list[pb.Message], assistant: pb.Message, tool_results: pb.Message,
                   tools: list[pb.Tool], *, stream: bool) -> None:
    messages = [*first, assistant, tool_results]
    if stream:
        call = client.stub.StreamComplete(pb.StreamCompleteRequest(model=model, messages=messages, tools=tools),
                                          timeout=10)
        assert [m async for m in call][-1].HasField("summary")
    else:
        await client.stub.Complete(pb.CompleteRequest(model=model, messages=messages, tools=tools), timeout=10)


def turn_two_body(upstream, *, stream: bool) -> dict:
    assert len(upstream.received) == 2
    body = upstream.received[1].json()
    assert body.pop("stream") is stream
    if stream:
        assert body.pop("stream_options") == {"include_usage": True}
    return body


# -- MixRouter -------------------------------------------------------------------------------

MIX_TOOLS = [tool("GetWeatherArgs", city="string", country="string", units="string"),
             tool("get_stock_price", ticker="string", exchange="string")]
MIX_TOOLS_JSON = [tool_json("GetWeatherArgs", city="string", country="string", units="string"),
                  tool_json("get_stock_price", ticker="string", exchange="string")]
ASK = user("Weather in Edinburgh and the price of AAPL?")
ASK_JSON = {"role": "user", "content": [{"type": "text", "text": "Weather in Edinburgh and the price of AAPL?"}]}
# The second text is what a stream answer arrives with: the SDK recorded it with "UK", not "GB".
PARALLEL = {
    False: ("openai/tools_parallel_tool_calls.json",
            [("call_fdNz3vOBKYgOIpMdWotB9MjY", "GetWeatherArgs", '{"city": "Edinburgh", "country": "GB", "units": "c"}'),
             ("call_h1DWI1POMJLb0KwIyQHWXD4p", "get_stock_price", '{"ticker": "AAPL", "exchange": "NASDAQ"}')]),
    True: ("openai/tools_stream_parallel_tool_calls.sse",
           [("call_lQnnsesjFMWMQ5IeWPHzR4th", "GetWeatherArgs", '{"city": "Edinburgh", "country": "UK", "units": "c"}'),
            ("call_2xjOUgaCdiwAcl9ZBL9LyMUU", "get_stock_price", '{"ticker": "AAPL", "exchange": "NASDAQ"}')]),
}


@pytest.fixture
async def mix(start_client, upstream):
    return await start_client(mixrouter_config(upstream), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


def replay(name: str, *, stream: bool) -> Reply:
    return stream_reply(name) if stream else Reply(body=fixture_bytes(name))


def final_answer(*, stream: bool) -> Reply:
    """Turn 2's answer: any published one will do, the test looks at what turn 2 sent."""
    return replay("openai/structured_stream_json_schema.sse" if stream else "openai/structured_json_schema.json",
                  stream=stream)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_mixrouter_parallel_calls_two_turns(mix, upstream, stream):
    name, calls = PARALLEL[stream]
    upstream.reply(replay(name, stream=stream), final_answer(stream=stream))

    assistant = await turn_one(mix, "mixrouter/gpt-4o", {"messages": [ASK], "tools": MIX_TOOLS}, stream=stream)
    (weather_id, *_), (stock_id, *_) = calls
    # Results in the opposite order of the calls: each goes in its own message, as given.
    await turn_two(mix, "mixrouter/gpt-4o", [ASK], assistant,
                   results((stock_id, '{"price": 227.5}'), (weather_id, '{"temp_c": 11}')), MIX_TOOLS, stream=stream)

    assert upstream.received[0].json()["tools"] == MIX_TOOLS_JSON
    assert turn_two_body(upstream, stream=stream) == {
        "model": "gpt-4o",
        "messages": [
            ASK_JSON,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in calls]},
            {"role": "tool", "tool_call_id": stock_id, "content": '{"price": 227.5}'},
            {"role": "tool", "tool_call_id": weather_id, "content": '{"temp_c": 11}'},
        ],
        "tools": MIX_TOOLS_JSON,
    }


DEEPSEEK = {
    False: ("openai_compatible/deepseek_tools_reasoning_content.json", "call_00_lCIkdHRa7AKmCG3TlxXz1061",
            "The user asks about weather in San Francisco. I'll call the weather tool."),
    True: ("openai_compatible/deepseek_tools_stream_reasoning_content.sse", "call_00_IhCAliIHtM9gKpgfqbBV9873",
           "The user asks about the weather in San Francisco. I should use the weather tool."),
}
WEATHER = [tool("weather", location="string")]
SF = user("Weather in San Francisco?")


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_mixrouter_reasoning_comes_back_but_is_not_sent_again(mix, upstream, stream):
    name, call_id, thinking = DEEPSEEK[stream]
    upstream.reply(replay(name, stream=stream), final_answer(stream=stream))

    assistant = await turn_one(mix, "mixrouter/deepseek-v4-flash", {"messages": [SF], "tools": WEATHER}, stream=stream)
    assert assistant.parts[0] == pb.Part(reasoning=pb.Reasoning(text=thinking))
    await turn_two(mix, "mixrouter/deepseek-v4-flash", [SF], assistant, results((call_id, "18C, fog")), WEATHER,
                   stream=stream)

    # The Chat format has no input field for reasoning: MixRouter gets the turn without it.
    assert turn_two_body(upstream, stream=stream)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in San Francisco?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {
            "name": "weather", "arguments": '{"location": "San Francisco"}'}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "18C, fog"},
    ]


# -- openai_compatible -----------------------------------------------------------------------


def compat_config(upstream, **options) -> dict:
    return {"plugins": {"allow": ["openai_compatible"]},
            "providers": {"local": {"kind": "openai_compatible", "base_url": f"{upstream.base_url}/v1", **options}},
            "routing": {"max_retries": 0}}


OPENPIPE_TOOLS = [tool("get_current_weather", location="string", unit="string")]
TWO_CITIES = user("Weather in San Francisco and Orlando, in celsius?")


async def test_empty_ids_are_minted_and_sent_back(start_client, upstream):
    client = await start_client(compat_config(upstream))
    upstream.reply(Reply(body=fixture_bytes("openai_compatible/openpipe_tools_empty_ids.json")),
                   final_answer(stream=False))

    assistant = await turn_one(client, "local/openpipe:test-tool-calls-ft",
                               {"messages": [TWO_CITIES], "tools": OPENPIPE_TOOLS}, stream=False)
    sf, orlando = (p.tool_call.id for p in assistant.parts)
    assert is_minted(sf) and is_minted(orlando) and sf != orlando
    await turn_two(client, "local/openpipe:test-tool-calls-ft", [TWO_CITIES], assistant,
                   results((sf, "16"), (orlando, "24")), OPENPIPE_TOOLS, stream=False)

    assert turn_two_body(upstream, stream=False)["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": sf, "type": "function", "function": {
                "name": "get_current_weather", "arguments": '{"location": "San Francisco, CA", "unit": "celsius"}'}},
            {"id": orlando, "type": "function", "function": {
                "name": "get_current_weather", "arguments": '{"location": "Orlando, FL", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": sf, "content": "16"},
        {"role": "tool", "tool_call_id": orlando, "content": "24"},
    ]


async def test_a_stream_without_ids_gets_minted_ones_sent_back(start_client, upstream):
    # The published parallel stream with its ids blanked, as such a server would stream it.
    chunks = [json.loads(line[len("data: "):])
              for line in fixture_bytes("openai/tools_stream_parallel_tool_calls.sse").decode().splitlines()
              if line.startswith("data: {")]
    for chunk in chunks:
        for choice in chunk["choices"]:
            for piece in choice["delta"].get("tool_calls") or ():
                if "id" in piece:
                    piece["id"] = ""
    client = await start_client(compat_config(upstream))
    upstream.reply(stream_reply_of(chunks), final_answer(stream=True))

    assistant = await turn_one(client, "local/m", {"messages": [ASK], "tools": MIX_TOOLS}, stream=True)
    weather, stock = (p.tool_call.id for p in assistant.parts)
    assert is_minted(weather) and is_minted(stock)
    await turn_two(client, "local/m", [ASK], assistant, results((weather, "11"), (stock, "227.5")), MIX_TOOLS,
                   stream=True)

    _, calls = PARALLEL[True]
    assert turn_two_body(upstream, stream=True)["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, (_, n, a) in zip((weather, stock), calls)]},
        {"role": "tool", "tool_call_id": weather, "content": "11"},
        {"role": "tool", "tool_call_id": stock, "content": "227.5"},
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_deepseek_reasoning_is_echoed_where_the_instance_says_so(start_client, upstream, stream):
    client = await start_client(compat_config(upstream, reasoning_echo="reasoning_content"))
    name, call_id, thinking = DEEPSEEK[stream]
    upstream.reply(replay(name, stream=stream), final_answer(stream=stream))

    assistant = await turn_one(client, "local/deepseek-v4-flash", {"messages": [SF], "tools": WEATHER}, stream=stream)
    await turn_two(client, "local/deepseek-v4-flash", [SF], assistant, results((call_id, "18C, fog")), WEATHER,
                   stream=stream)

    # DeepSeek's thinking mode requires the reasoning of a turn that called tools back.
    assert turn_two_body(upstream, stream=stream)["messages"][1] == {
        "role": "assistant", "content": None, "reasoning_content": thinking,
        "tool_calls": [{"id": call_id, "type": "function", "function": {
            "name": "weather", "arguments": '{"location": "San Francisco"}'}}]}


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "message"), [
    (pb.ReasoningConfig(effort=pb.REASONING_EFFORT_HIGH, budget_tokens=2048),
     ('reasoning.budget_tokens: provider "mixrouter" takes a reasoning effort only (reasoning_effort), '
      "not a token budget")),
    (pb.ReasoningConfig(include_thoughts=True),
     ('reasoning.include_thoughts: provider "mixrouter" has no switch for returning thoughts '
      "(the server decides whether it returns them)")),
])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_reasoning_settings_the_format_lacks_are_refused(mix, upstream, config, message, stream):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if stream:
            call = mix.stub.StreamComplete(pb.StreamCompleteRequest(model="mixrouter/o3", messages=[SF],
                                                                    reasoning=config), timeout=10)
            [m async for m in call]
        else:
            await mix.stub.Complete(pb.CompleteRequest(model="mixrouter/o3", messages=[SF], reasoning=config),
                                    timeout=10)

    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == message
    assert upstream.received == []


@pytest.mark.parametrize(("fields", "message"), [
    ({"tools": WEATHER}, 'tools: provider "local" does not support tool calling'),
    ({"response_format": pb.ResponseFormat(json_object=pb.JsonObjectFormat())},
     'response_format: provider "local" does not support structured output'),
    ({"reasoning": pb.ReasoningConfig(effort=pb.REASONING_EFFORT_LOW)},
     'reasoning: provider "local" does not support reasoning settings'),
])
async def test_features_an_instance_leaves_out_are_refused(start_client, upstream, fields, message):
    client = await start_client(compat_config(upstream, features=[]))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(pb.CompleteRequest(model="local/m", messages=[SF], **fields), timeout=10)

    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == message
    assert upstream.received == []


async def test_list_models_shows_the_features(start_client, upstream):
    client = await start_client(compat_config(upstream, features=["tools"]))

    response = await client.stub.ListModels(pb.ListModelsRequest(), timeout=10)

    assert response.providers[0].features == pb.Features(tools=True)
