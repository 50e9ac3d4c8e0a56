"""Two-turn tool conversations with Gemini through the in-process gateway.

Turn 1 replays a recorded Gemini answer (thinking, a signed functionCall, parallel calls);
the caller echoes the assistant message unchanged and sends ROLE_TOOL results; turn 2's
upstream body is asserted exactly: the signature back on the functionCall part, results
matched by name in one user turn, no minted id sent.
"""

from __future__ import annotations

import json

import grpc
import pytest

from tests.support.gateway import FIXTURES, fixture_json
from tests.support.upstream import Reply
from tollway.service.plugins.tools import is_minted
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode

GEMINI_TEST_KEY = "tw-test-gemini-key-0123456789abcdef"
MODEL = "gemini-2.5-flash"
SIGNED = "gemini/tools_unary-thinking-function-call-signature.json"
PARALLEL = "gemini/tools_unary-parallel-function-calls.json"
STREAM_SIGNED = "gemini/tools_streaming-thinking-function-call-signature.sse"
STREAM_PARTIAL = "gemini/tools_streaming-vertex-partial-args.sse"
ANSWER = "gemini/unary-basic-reply-short.json"

NOW = pb.Tool(name="now", description="The current date and time.")
NOW.parameters.update({"type": "object", "properties": {}})
NOW_DECLARATION = {"name": "now", "description": "The current date and time.",
                   "parametersJsonSchema": {"type": "object", "properties": {}}}
QUESTION = pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="How many days until New Year's Eve?")])
NOW_RESULT = '{"now": "2025-07-28T10:00:00Z"}'


@pytest.fixture
async def gemini(start_client, upstream):
    return await start_client({"providers": {"gemini": {"base_url": f"{upstream.base_url}/v1beta"}}},
                              {"GEMINI_API_KEY": GEMINI_TEST_KEY})


def stream_events(relative: str) -> list[str]:
    text = (FIXTURES / relative).read_bytes().decode().replace("\r\n", "\n")
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block.startswith("data: ")]


def fields(*messages: pb.Message, **more) -> dict:
    return dict(model=f"gemini/{MODEL}", messages=list(messages), tools=[NOW],
                reasoning=pb.ReasoningConfig(include_thoughts=True), **more)


def tool_message(*results: pb.ToolResult) -> pb.Message:
    return pb.Message(role=pb.ROLE_TOOL, parts=[pb.Part(tool_result=r) for r in results])


def turn_two_body(model_parts: list[dict], responses: list[dict]) -> dict:
    return {
        "contents": [
            {"role": "user", "parts": [{"text": "How many days until New Year's Eve?"}]},
            {"role": "model", "parts": model_parts},
            {"role": "user", "parts": responses},
        ],
        "tools": [{"functionDeclarations": [NOW_DECLARATION]}],
        "generationConfig": {"thinkingConfig": {"includeThoughts": True}},
    }


async def test_unary_turn_then_results_carry_the_signature_back(gemini, upstream):
    upstream.reply(Reply(body=fixture_json(SIGNED)), Reply(body=fixture_json(ANSWER)))

    first = await gemini.stub.Complete(pb.CompleteRequest(**fields(QUESTION)), timeout=10)

    assert upstream.received[0].json() == {
        "contents": [{"role": "user", "parts": [{"text": "How many days until New Year's Eve?"}]}],
        "tools": [{"functionDeclarations": [NOW_DECLARATION]}],
        "generationConfig": {"thinkingConfig": {"includeThoughts": True}},
    }
    choice = first.choices[0]
    assert choice.finish_reason == pb.FINISH_REASON_TOOL_CALLS and choice.raw_finish_reason == "STOP"
    assert [p.WhichOneof("content") for p in choice.message.parts] == ["reasoning", "reasoning", "tool_call"]
    call = choice.message.parts[2].tool_call
    assert is_minted(call.id) and (call.name, call.arguments_json) == ("now", "{}")

    second = await gemini.stub.Complete(pb.CompleteRequest(**fields(
        QUESTION, choice.message, tool_message(pb.ToolResult(tool_call_id=call.id, parts=[pb.Part(text=NOW_RESULT)])))),
        timeout=10)

    wire = fixture_json(SIGNED)["candidates"][0]["content"]["parts"]
    assert upstream.received[1].json() == turn_two_body(
        [{"text": wire[0]["text"], "thought": True},
         {"functionCall": {"name": "now", "args": {}}, "thoughtSignature": wire[1]["thoughtSignature"]}],
        [{"functionResponse": {"name": "now", "response": {"now": "2025-07-28T10:00:00Z"}}}])
    assert second.choices[0].finish_reason == pb.FINISH_REASON_STOP


async def test_stream_turn_echoed_from_the_summary_carries_the_signature_back(gemini, upstream):
    upstream.reply(Reply(events=stream_events(STREAM_SIGNED), newline="\r\n"), Reply(body=fixture_json(ANSWER)))

    messages = [m async for m in gemini.stub.StreamComplete(pb.StreamCompleteRequest(**fields(QUESTION)), timeout=10)]

    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds == ["reasoning_delta", "reasoning_delta", "tool_call_delta", "summary"]
    delta = messages[2].tool_call_delta
    assert (delta.index, delta.name, delta.arguments_fragment) == (0, "now", "{}")
    (finish,) = messages[-1].summary.finishes
    assert finish.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [c.id for c in finish.tool_calls] == [delta.id]
    echo = pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(reasoning=r) for r in finish.reasoning]
                      + [pb.Part(tool_call=c) for c in finish.tool_calls])

    await gemini.stub.Complete(pb.CompleteRequest(**fields(
        QUESTION, echo, tool_message(pb.ToolResult(tool_call_id=delta.id, parts=[pb.Part(text="not JSON")])))),
        timeout=10)

    chunks = [json.loads(e) for e in stream_events(STREAM_SIGNED)]
    parts = [c["candidates"][0]["content"]["parts"][0] for c in chunks]
    assert upstream.received[1].json() == turn_two_body(
        [{"text": parts[0]["text"] + parts[1]["text"], "thought": True},
         {"functionCall": {"name": "now", "args": {}}, "thoughtSignature": parts[2]["thoughtSignature"]}],
        [{"functionResponse": {"name": "now", "response": {"output": "not JSON"}}}])


async def test_parallel_calls_results_go_back_in_one_user_turn_in_order(gemini, upstream):
    upstream.reply(Reply(body=fixture_json(PARALLEL)), Reply(body=fixture_json(ANSWER)))
    tools = [pb.Tool(name="fetchWeather"), pb.Tool(name="completelyDifferentFunction")]
    first = await gemini.stub.Complete(pb.CompleteRequest(model=f"gemini/{MODEL}", messages=[QUESTION], tools=tools),
                                       timeout=10)
    message = first.choices[0].message
    weather, other = (p.tool_call for p in message.parts)

    await gemini.stub.Complete(pb.CompleteRequest(model=f"gemini/{MODEL}", tools=tools, messages=[
        QUESTION, message,
        tool_message(pb.ToolResult(tool_call_id=other.id, parts=[pb.Part(text="quota exceeded")], is_error=True)),
        tool_message(pb.ToolResult(tool_call_id=weather.id, parts=[pb.Part(text='{"forecast": "sunny"}')])),
    ]), timeout=10)

    args = {"param": {"state": "MA", "city": "Boston", "date": "2024-10-17"}}
    assert upstream.received[1].json() == {
        "contents": [
            {"role": "user", "parts": [{"text": "How many days until New Year's Eve?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "fetchWeather", "args": args}},
                                        {"functionCall": {"name": "completelyDifferentFunction", "args": args}}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "completelyDifferentFunction", "response": {"error": "quota exceeded"}}},
                {"functionResponse": {"name": "fetchWeather", "response": {"forecast": "sunny"}}},
            ]},
        ],
        "tools": [{"functionDeclarations": [{"name": "fetchWeather"}, {"name": "completelyDifferentFunction"}]}],
    }


async def test_vertex_partial_args_stream_through_the_gateway(gemini, upstream):
    upstream.reply(Reply(events=stream_events(STREAM_PARTIAL)))

    messages = [m async for m in gemini.stub.StreamComplete(pb.StreamCompleteRequest(
        model=f"gemini/{MODEL}", messages=[QUESTION], tools=[pb.Tool(name="getWeather")]), timeout=10)]

    calls = [m.tool_call_delta for m in messages if m.HasField("tool_call_delta")]
    # Each call's fragments join to its arguments, however many of them one read brought
    # together (server.merge_stream_deltas); each call's first delta names it.
    assert [c.name for c in calls if c.name] == ["getWeather", "getWeather"]
    joined: dict[int, str] = {}
    for call in calls:
        joined[call.index] = joined.get(call.index, "") + call.arguments_fragment
    assert joined == {0: '{"location":"Boston"}', 1: '{"location":"San Francisco"}'}
    (finish,) = messages[-1].summary.finishes
    assert [c.arguments_json for c in finish.tool_calls] == ['{"location":"Boston"}', '{"location":"San Francisco"}']
    assert not messages[-1].summary.usage.estimated


def _strict() -> pb.Tool:
    return pb.Tool(name="now", strict=True)


def _bad_echo() -> list[pb.Message]:
    call = pb.ToolCall(id="call_tw0001", name="now", arguments_json='"yesterday"')
    return [QUESTION, pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(tool_call=call)]),
            tool_message(pb.ToolResult(tool_call_id="call_tw0001", parts=[pb.Part(text="{}")]))]


def _redacted_echo() -> list[pb.Message]:
    return [QUESTION, pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(reasoning=pb.Reasoning(redacted=b"x")),
                                                                 pb.Part(text="Hello")]), QUESTION]


def _described_schema() -> pb.ResponseFormat:
    fmt = pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(name="a", description="One thing."))
    fmt.json_schema.schema.update({"type": "object", "description": "Another."})
    return fmt


@pytest.mark.parametrize(("more", "message"), [
    (dict(parallel_tool_calls=False),
     'parallel_tool_calls: provider "gemini" has no switch to turn parallel tool calls off'),
    (dict(tools=[_strict()]), 'tools[0].strict: provider "gemini" has no strict mode for tool schemas'),
    (dict(reasoning=pb.ReasoningConfig(effort=pb.REASONING_EFFORT_HIGH, budget_tokens=512)),
     'reasoning.budget_tokens: provider "gemini" takes reasoning.effort or reasoning.budget_tokens, not both'),
    (dict(messages=_bad_echo()),
     'messages[1].parts[0].tool_call.arguments_json: provider "gemini" takes tool call arguments as a JSON object'),
    (dict(messages=_redacted_echo()),
     'messages[1].parts[0].reasoning.redacted: provider "gemini" has no redacted thinking to send back'),
    (dict(response_format=_described_schema()),
     'response_format.json_schema.description: provider "gemini" takes one description: the schema already has '
     "another"),
], ids=["parallel-off", "strict", "effort-and-budget", "non-object-arguments", "redacted", "two-descriptions"])
@pytest.mark.parametrize("kind", ["unary", "stream"])
async def test_refusals_reach_the_caller_before_any_upstream_call(gemini, upstream, more, message, kind):
    request = {**dict(model=f"gemini/{MODEL}", messages=[QUESTION], tools=[NOW]), **more}

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if kind == "unary":
            await gemini.stub.Complete(pb.CompleteRequest(**request), timeout=10)
        else:
            [m async for m in gemini.stub.StreamComplete(pb.StreamCompleteRequest(**request), timeout=10)]

    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == message
    assert upstream.received == []


async def test_list_models_reports_geminis_features(gemini):
    response = await gemini.stub.ListModels(pb.ListModelsRequest(), timeout=10)

    (info,) = [p for p in response.providers if p.name == "gemini"]
    assert info.features == pb.Features(tools=True, structured_output=True, reasoning=True)
