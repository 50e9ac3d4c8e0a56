"""Tool calling with Anthropic through the whole gateway: a caller over gRPC, the in-process
gateway, and a loopback upstream replaying Anthropic's published answers.

Turn 1 returns tool calls (with thinking where the fixture has it); the caller echoes the
assistant message and sends ROLE_TOOL results; turn 2's upstream body is asserted exactly:
ids, signatures, one user turn holding every result, order.
"""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import struct_pb2

from tests.support.gateway import FIXTURES, fixture_json
from tests.support.upstream import Reply
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode

KEY = "tw-test-anthropic-key-0123456789abcdef"


def struct(value: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def text(value: str) -> pb.Part:
    return pb.Part(text=value)


def user(*parts: pb.Part) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, parts=list(parts))


def results(*pairs: tuple[str, str]) -> list[pb.Message]:
    """One ROLE_TOOL message per result, as a caller answering calls one by one sends them."""
    return [pb.Message(role=pb.ROLE_TOOL, parts=[pb.Part(tool_result=pb.ToolResult(tool_call_id=i, parts=[text(t)]))])
            for i, t in pairs]


def sse(events: list[dict]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def sse_fixture(name: str) -> bytes:
    blocks = (FIXTURES / "anthropic" / name).read_text(encoding="utf-8").strip("\n").split("\n\n")
    return "".join(block + "\n\n" for block in blocks).encode()


def fixture_events(name: str) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in sse_fixture(name).decode().splitlines()
            if line.startswith("data: ")]


@pytest.fixture
async def claude(start_client, upstream):
    config = {"providers": {"anthropic": {"base_url": f"{upstream.base_url}/v1"}}, "routing": {"max_retries": 0}}
    return await start_client(config, {"ANTHROPIC_API_KEY": KEY})


async def collect(call):
    """(messages before the summary, the summary)."""
    messages = [m async for m in call]
    assert messages[-1].HasField("summary")
    return messages[:-1], messages[-1].summary


def echoed_from_stream(messages, summary) -> pb.Message:
    """The assistant turn a streaming caller rebuilds: the summary's reasoning, the text it
    received, then the summary's tool calls."""
    [finish] = summary.finishes
    parts = [pb.Part(reasoning=r) for r in finish.reasoning]
    streamed = "".join(m.delta.text for m in messages if m.HasField("delta"))
    if streamed:
        parts.append(text(streamed))
    parts.extend(pb.Part(tool_call=c) for c in finish.tool_calls)
    return pb.Message(role=pb.ROLE_ASSISTANT, parts=parts)


# -- unary ---------------------------------------------------------------------------------------


TURN2 = fixture_json("anthropic/tools_parallel_tool_result_request.json")
TEST_TOOL = pb.Tool(name="test_tool", description="A test tool", parameters=struct(TURN2["tools"][0]["input_schema"]))
PROMPT = TURN2["messages"][0]["content"]


async def test_parallel_calls_then_results_is_the_body_anthropics_sdk_sent(claude, upstream):
    upstream.reply(Reply(body=fixture_json("anthropic/tools_parallel_tool_use_response.json")),
                   Reply(body=fixture_json("anthropic/api_reference_response.json")))
    first = [user(text(PROMPT))]

    response = await claude.stub.Complete(pb.CompleteRequest(
        model="anthropic/claude-sonnet-4-0", messages=first, tools=[TEST_TOOL], max_tokens=1000), timeout=10)
    calls = [p.tool_call for p in response.choices[0].message.parts if p.WhichOneof("content") == "tool_call"]
    assert response.choices[0].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    await claude.stub.Complete(pb.CompleteRequest(
        model="anthropic/claude-sonnet-4-0", tools=[TEST_TOOL], max_tokens=1000,
        messages=[*first, response.choices[0].message,
                  *results((calls[0].id, "Called with 1"), (calls[1].id, "Called with 2"))]), timeout=10)

    # The SDK's recorded turn-2 body, but for two spellings this adapter does not use: user
    # content as a block list rather than a bare string, and tools without the optional
    # `"type": "custom"` (the default).
    expected = {**TURN2,
                "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}, *TURN2["messages"][1:]],
                "tools": [{k: v for k, v in TURN2["tools"][0].items() if k != "type"}]}
    assert upstream.received[1].json() == expected
    assert upstream.received[0].json() == {**expected, "messages": expected["messages"][:1]}


async def test_thinking_and_a_call_then_the_result(claude, upstream):
    answer = fixture_json("anthropic/reasoning_thinking_tool_use_response.json")
    upstream.reply(Reply(body=answer), Reply(body=fixture_json("anthropic/api_reference_response.json")))
    tool = pb.Tool(name="checkSandboxErrors", description="Check the sandbox for errors")
    first = [user(text("Check the sandbox for errors now."))]
    fields = dict(model="anthropic/claude-sonnet-4-6", tools=[tool], max_tokens=4096,
                  reasoning=pb.ReasoningConfig(budget_tokens=2048))

    response = await claude.stub.Complete(pb.CompleteRequest(messages=first, **fields), timeout=10)
    message = response.choices[0].message
    assert [p.WhichOneof("content") for p in message.parts] == ["reasoning", "tool_call"]
    await claude.stub.Complete(pb.CompleteRequest(
        messages=[*first, message, *results((message.parts[1].tool_call.id, "No errors."))], **fields), timeout=10)

    thinking, call = answer["content"]
    assert upstream.received[1].json() == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 4096,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Check the sandbox for errors now."}]},
            {"role": "assistant", "content": [
                # The thinking block exactly as it came, signature included.
                thinking,
                {"type": "tool_use", "id": "toolu_017R7ACrx7NF7sLDDtvdQ1u9", "name": "checkSandboxErrors",
                 "input": {}},
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "No errors."}]},
        ],
        "tools": [{"name": "checkSandboxErrors", "description": "Check the sandbox for errors",
                   "input_schema": {"type": "object", "properties": {}}}],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "stream": False,
    }


# -- streaming ---------------------------------------------------------------------------------


WEATHER = pb.Tool(name="get_weather", description="Get the current weather in a given location",
                  parameters=struct({"type": "object", "properties": {"location": {"type": "string"}},
                                     "required": ["location"]}))
WEATHER_JSON = {"name": "get_weather", "description": "Get the current weather in a given location",
                "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                                 "required": ["location"]}}
TOOL_ID = "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
ANSWER_TEXT = "Okay, let's check the weather for San Francisco, CA:"
TOOL_USE = {"type": "tool_use", "id": TOOL_ID, "name": "get_weather",
            "input": {"location": "San Francisco, CA", "unit": "fahrenheit"}}
ASK = "What is the weather like in San Francisco?"


def thinking_then_tool() -> bytes:
    """stream_docs_thinking's thinking block ahead of the docs tool-use stream's blocks (moved
    one index on): thinking with a signature, text, then a tool call."""
    thinking = [e for e in fixture_events("stream_docs_thinking.sse") if e.get("index") == 0]
    tools = fixture_events("tools_stream_docs_input_json_delta.sse")
    shifted = [{**e, "index": e["index"] + 1} if "index" in e else e for e in tools]
    return sse(shifted[:1] + thinking + shifted[1:])


THINKING = ("I need to find the GCD of 1071 and 462 using the Euclidean algorithm.\n\n1071 = 2 × 462 + 147"
            "\n462 = 3 × 147 + 21\n147 = 7 × 21 + 0\nThe remainder is 0, so GCD(1071, 462) = 21.")
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."


@pytest.mark.parametrize(
    "stream, reasoning, thinking_blocks",
    [
        (sse_fixture("tools_stream_docs_input_json_delta.sse"), None, []),
        (thinking_then_tool(), pb.ReasoningConfig(budget_tokens=16000),
         [{"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}]),
    ],
    ids=["tool_use", "thinking_then_tool_use"],
)
async def test_stream_then_results(claude, upstream, stream, reasoning, thinking_blocks):
    upstream.reply(Reply(events=[stream]), Reply(events=[sse_fixture("stream_docs_basic.sse")]))
    first = [user(text(ASK))]
    fields = dict(model="anthropic/claude-sonnet-4-5", tools=[WEATHER], max_tokens=20000,
                  tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO))
    if reasoning is not None:
        fields["reasoning"] = reasoning

    messages, summary = await collect(claude.stub.StreamComplete(
        pb.StreamCompleteRequest(messages=first, **fields), timeout=10))

    # The call's first delta names it, the others carry arguments (fragments one read brought
    # may arrive joined, to the naming delta too: server.merge_stream_deltas).
    calls = [m.tool_call_delta for m in messages if m.HasField("tool_call_delta")]
    assert (calls[0].index, calls[0].id, calls[0].name) == (0, TOOL_ID, "get_weather")
    assert all((c.index, c.id, c.name) == (0, "", "") for c in calls[1:])
    assert "".join(c.arguments_fragment for c in calls) == summary.finishes[0].tool_calls[0].arguments_json
    assert "".join(m.reasoning_delta.text for m in messages if m.HasField("reasoning_delta")) == \
        (THINKING if thinking_blocks else "")
    assert summary.finishes[0].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    echoed = echoed_from_stream(messages, summary)
    _, last = await collect(claude.stub.StreamComplete(pb.StreamCompleteRequest(
        messages=[*first, echoed, *results((TOOL_ID, "15 degrees, sunny"))], **fields), timeout=10))

    assert last.finishes[0].finish_reason == pb.FINISH_REASON_STOP
    body = upstream.received[1].json()
    assert body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 20000,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": ASK}]},
            {"role": "assistant", "content": [*thinking_blocks, {"type": "text", "text": ANSWER_TEXT}, TOOL_USE]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": TOOL_ID,
                                          "content": "15 degrees, sunny"}]},
        ],
        "tools": [WEATHER_JSON],
        "tool_choice": {"type": "auto"},
        **({"thinking": {"type": "enabled", "budget_tokens": 16000}} if thinking_blocks else {}),
        "stream": True,
    }


async def test_stream_call_without_arguments_echoes_an_empty_input(claude, upstream):
    upstream.reply(Reply(events=[sse_fixture("tools_stream_no_args.sse")]),
                   Reply(body=fixture_json("anthropic/api_reference_response.json")))
    tool = pb.Tool(name="updateIssueList")
    first = [user(text("Update the issue list."))]

    messages, summary = await collect(claude.stub.StreamComplete(pb.StreamCompleteRequest(
        model="anthropic/claude-sonnet-4-5", messages=first, tools=[tool]), timeout=10))
    [call] = summary.finishes[0].tool_calls
    assert call.arguments_json == "{}"
    await claude.stub.Complete(pb.CompleteRequest(
        model="anthropic/claude-sonnet-4-5", tools=[tool],
        messages=[*first, echoed_from_stream(messages, summary), *results((call.id, "done"))]), timeout=10)

    assert upstream.received[1].json()["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "I'll update the issue list for you."},
            {"type": "tool_use", "id": "toolu_01QE1WLsSVp5hy5Q3GmGTmjP", "name": "updateIssueList", "input": {}},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01QE1WLsSVp5hy5Q3GmGTmjP",
                                      "content": "done"}]},
    ]


async def test_list_models_reports_tools_structured_output_and_reasoning(claude):
    response = await claude.stub.ListModels(pb.ListModelsRequest(), timeout=10)

    [info] = response.providers
    assert info.features == pb.Features(tools=True, structured_output=True, reasoning=True)


# -- refusals, before any network call ---------------------------------------------------------


CALLED = [user(text("Weather?")),
          pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(tool_call=pb.ToolCall(
              id="toolu_a", name="get_weather", arguments_json='["Paris"]'))]),
          *results(("toolu_a", "sunny"))]
THOUGHT = [user(text("Hi")),
           pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(reasoning=pb.Reasoning(text="Let me think.")),
                                                     text("Hello!")]),
           user(text("Go on"))]
BAD_SIGNATURE = [user(text("Hi")),
                 pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(reasoning=pb.Reasoning(text="x", signature=b"\xff"))]),
                 user(text("Go on"))]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"response_format": pb.ResponseFormat(json_object=pb.JsonObjectFormat())},
         'response_format.json_object: provider "anthropic" has no JSON mode without a schema (use json_schema)'),
        ({"response_format": pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(
            name="w", schema=struct({"type": "object"}), description="A weather report"))},
         'response_format.json_schema.description: provider "anthropic" takes no description beside the schema '
         "(put it in the schema's \"description\")"),
        ({"reasoning": pb.ReasoningConfig(effort=pb.REASONING_EFFORT_MINIMAL)},
         'reasoning.effort: provider "anthropic" has no minimal effort (it takes low, medium or high)'),
        ({"reasoning": pb.ReasoningConfig(budget_tokens=512)},
         'reasoning.budget_tokens: provider "anthropic" needs at least 1024, got 512'),
        ({"reasoning": pb.ReasoningConfig(budget_tokens=8000), "max_tokens": 8000},
         'reasoning.budget_tokens: provider "anthropic" needs it below max_tokens (8000), got 8000'),
        ({"reasoning": pb.ReasoningConfig(effort=pb.REASONING_EFFORT_NONE, budget_tokens=2048)},
         'reasoning.budget_tokens: provider "anthropic" takes no thinking budget with REASONING_EFFORT_NONE '
         "(no thinking)"),
        ({"reasoning": pb.ReasoningConfig(include_thoughts=False)},
         'reasoning.include_thoughts: provider "anthropic" applies it only to thinking the request turns on '
         "(set budget_tokens or an effort)"),
        ({"reasoning": pb.ReasoningConfig(budget_tokens=2048), "temperature": 0.3},
         'temperature: provider "anthropic" takes no temperature while thinking is on'),
        ({"reasoning": pb.ReasoningConfig(effort=pb.REASONING_EFFORT_LOW), "top_p": 0.5},
         'top_p: provider "anthropic" takes 0.95 to 1 while thinking is on, got 0.5'),
        ({"reasoning": pb.ReasoningConfig(budget_tokens=2048), "tools": [WEATHER],
          "tool_choice": pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)},
         'tool_choice.mode: provider "anthropic" cannot force a tool call while thinking is on (use auto or none)'),
        ({"reasoning": pb.ReasoningConfig(budget_tokens=2048), "tools": [WEATHER],
          "tool_choice": pb.ToolChoice(function_name="get_weather")},
         'tool_choice.function_name: provider "anthropic" cannot force a tool call while thinking is on '
         "(use auto or none)"),
        ({"messages": CALLED, "tools": [WEATHER]},
         'messages[1].parts[0].tool_call.arguments_json: provider "anthropic" takes tool call arguments as a JSON '
         "object only"),
        ({"messages": THOUGHT},
         'messages[1].parts[0].reasoning.signature: provider "anthropic" takes back only signed thinking '
         "(signature or redacted is required)"),
        ({"messages": BAD_SIGNATURE},
         "messages[1].parts[0].reasoning.signature: is not the text Anthropic returned (not UTF-8)"),
    ],
    ids=["json_object", "schema_description", "minimal_effort", "small_budget", "budget_not_below_max_tokens",
         "none_with_budget", "include_thoughts_without_thinking", "temperature_while_thinking",
         "top_p_while_thinking", "required_while_thinking", "named_tool_while_thinking", "arguments_not_object",
         "unsigned_reasoning", "signature_not_utf8"],
)
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_refusals_name_the_field(claude, upstream, fields, message, streaming):
    fields = {"messages": [user(text("Hello"))], **fields}

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streaming:
            await collect(claude.stub.StreamComplete(pb.StreamCompleteRequest(model="anthropic/claude-sonnet-4-5",
                                                                              **fields), timeout=10))
        else:
            await claude.stub.Complete(pb.CompleteRequest(model="anthropic/claude-sonnet-4-5", **fields), timeout=10)

    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == message
    assert upstream.received == []
