"""Gemini tool calling, structured output and thinking: request bodies, parsed answers and
streams, from the published payloads in tests/fixtures/gemini (tools_*, *thinking*).

Payload variants (a stream cut elsewhere, a call with an id, other partialArgs) are built here
from the published files, never stored as files of their own.
"""

from __future__ import annotations

import base64
import copy
import json
import re

import grpc
import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.gateway import FIXTURES, fixture_bytes, fixture_json
from tollway.providers.gemini import DEFAULT_BASE_URL, create
from tollway.service.errors import GatewayError
from tollway.service.plugins.adapter import ProviderSettings
from tollway.service.plugins.tools import arguments_text, is_minted, struct_to_dict, tool_call
from tollway.service.upstream.sse import SSEDecoder
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode

GEMINI_TEST_KEY = "tw-test-gemini-key-0123456789abcdef"
MODEL = "gemini-2.5-flash"

SINGLE = "gemini/tools_unary-function-call-gemini-pro.json"
PARALLEL = "gemini/tools_unary-parallel-function-calls.json"
SIGNED = "gemini/tools_unary-thinking-function-call-signature.json"
THOUGHT_SUMMARY = "gemini/unary-thinking-thought-summary.json"
STREAM_SIGNED = "gemini/tools_streaming-thinking-function-call-signature.sse"
STREAM_GEMINI3 = "gemini/tools_streaming-function-call-gemini3.sse"
STREAM_PARTIAL = "gemini/tools_streaming-vertex-partial-args.sse"
STREAM_THOUGHTS = "gemini/streaming-thinking-thought-summary.sse"
STREAMS = [STREAM_SIGNED, STREAM_GEMINI3, STREAM_PARTIAL, STREAM_THOUGHTS]

WEATHER = pb.Tool(name="get_weather", description="Current weather for a city.")
WEATHER.parameters.update({"type": "object", "properties": {"city": {"type": "string"},
                                                            "days": {"type": "integer", "maximum": 7}},
                           "required": ["city"]})


def adapter():
    return create(ProviderSettings(name="gemini", kind="gemini", base_url=DEFAULT_BASE_URL, api_key=GEMINI_TEST_KEY))


def user(text: str = "hi") -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=text)])


def assistant(*parts: pb.Part) -> pb.Message:
    return pb.Message(role=pb.ROLE_ASSISTANT, parts=list(parts))


def results(*results: pb.ToolResult) -> pb.Message:
    return pb.Message(role=pb.ROLE_TOOL, parts=[pb.Part(tool_result=r) for r in results])


def result(call_id: str, text: str, **fields) -> pb.ToolResult:
    return pb.ToolResult(tool_call_id=call_id, parts=[pb.Part(text=text)], **fields)


def request(*messages: pb.Message, **fields) -> pb.CompleteRequest:
    return pb.CompleteRequest(model=f"gemini/{MODEL}", messages=list(messages or [user()]), **fields)


def body(req: pb.CompleteRequest, *, stream: bool = False) -> dict:
    return json.loads(adapter().build_request(req, MODEL, stream=stream).content)


def refusal(req: pb.CompleteRequest) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        adapter().build_request(req, MODEL, stream=False)
    return caught.value


def parse_bytes(content: bytes) -> pb.CompleteResponse:
    a = adapter()
    req = request()
    http_request = a.build_request(req, MODEL, stream=False)
    return a.parse_response(httpx.Response(200, content=content, request=http_request), req, MODEL)


def parse(relative: str) -> pb.CompleteResponse:
    return parse_bytes(fixture_bytes(relative))


def parse_error(content: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse_bytes(content)
    return caught.value


def wire_parts(relative: str) -> list[dict]:
    return fixture_json(relative)["candidates"][0]["content"]["parts"]


def signature_of(part: dict) -> bytes:
    return base64.b64decode(part["thoughtSignature"])


def minted_away(call: pb.ToolCall) -> pb.ToolCall:
    """The call with a minted id blanked, to compare runs (minted ids are random)."""
    out = pb.ToolCall()
    out.CopyFrom(call)
    if is_minted(out.id):
        out.id = "<minted>"
    return out


def events_of(raw: bytes, splits: list[int] = ()) -> list:
    """The stream's events as the engine decodes them, with the bytes cut at `splits`."""
    decoder = SSEDecoder()
    events = []
    cuts = [0, *sorted(set(splits)), len(raw)]
    for start, end in zip(cuts, cuts[1:]):
        events.extend(decoder.feed(raw[start:end]))
    events.extend(decoder.feed(b"\n\n"))  # a last event without its blank line
    return events


def decode(raw: bytes, splits: list[int] = ()):
    decoder = adapter().stream_decoder(request(), MODEL)
    messages = [m for e in events_of(raw, splits) for m in decoder.feed(e)]
    return decoder, messages


def sse_of(chunks: list[dict]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)


def chunks_of(relative: str) -> list[dict]:
    return [json.loads(e.data) for e in events_of(fixture_bytes(relative))]


def summary_view(summary: pb.StreamSummary) -> list[tuple]:
    return [(f.index, f.finish_reason, f.raw_finish_reason, [minted_away(c) for c in f.tool_calls], list(f.reasoning))
            for f in summary.finishes]


# -- request: tools, tool_choice, parallel calls ----------------------------------------------


def test_tools_go_as_function_declarations_with_their_json_schema():
    now = pb.Tool(name="now")  # no description, no parameters: both left out

    got = body(request(tools=[WEATHER, now]))

    assert got == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "tools": [{"functionDeclarations": [
            {"name": "get_weather", "description": "Current weather for a city.",
             "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"},
                                                                       "days": {"type": "integer", "maximum": 7}},
                                      "required": ["city"]}},
            {"name": "now"},
        ]}],
    }


def test_a_json_schema_union_goes_unchanged_in_the_json_schema_dialect():
    tool = pb.Tool(name="find")
    tool.parameters.update({"type": "object", "properties": {"q": {"type": ["string", "null"]},
                                                             "v": {"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/x"}]}},
                            "$defs": {"x": {"type": "string"}}, "additionalProperties": False})

    declaration = body(request(tools=[tool]))["tools"][0]["functionDeclarations"][0]

    assert declaration["parametersJsonSchema"] == struct_to_dict(tool.parameters)


@pytest.mark.parametrize(("choice", "config"), [
    (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO), {"mode": "AUTO"}),
    (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE), {"mode": "NONE"}),
    (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), {"mode": "ANY"}),
    (pb.ToolChoice(function_name="get_weather"), {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
], ids=["auto", "none", "required", "function"])
def test_every_tool_choice_goes_as_function_calling_config(choice, config):
    got = body(request(tools=[WEATHER], tool_choice=choice))

    assert got["toolConfig"] == {"functionCallingConfig": config}


def test_no_tool_choice_and_parallel_calls_on_send_no_tool_config():
    assert "toolConfig" not in body(request(tools=[WEATHER]))
    assert body(request(tools=[WEATHER], parallel_tool_calls=True)) == body(request(tools=[WEATHER]))


def test_tool_choice_none_without_tools_sends_nothing():
    assert body(request(tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE))) == body(request())


def test_strict_false_is_fine():
    tool = pb.Tool()
    tool.CopyFrom(WEATHER)
    tool.strict = False

    assert body(request(tools=[tool])) == body(request(tools=[WEATHER]))


def _strict_tool() -> pb.Tool:
    tool = pb.Tool(name="now", strict=True)
    return tool


@pytest.mark.parametrize(("req", "message"), [
    (request(tools=[WEATHER], parallel_tool_calls=False),
     'parallel_tool_calls: provider "gemini" has no switch to turn parallel tool calls off'),
    (request(tools=[WEATHER, _strict_tool()]),
     'tools[1].strict: provider "gemini" has no strict mode for tool schemas'),
    (request(reasoning=pb.ReasoningConfig(effort=pb.REASONING_EFFORT_LOW, budget_tokens=1024)),
     'reasoning.budget_tokens: provider "gemini" takes reasoning.effort or reasoning.budget_tokens, not both'),
    (request(reasoning=pb.ReasoningConfig(effort=pb.REASONING_EFFORT_NONE, budget_tokens=0)),
     'reasoning.budget_tokens: provider "gemini" takes reasoning.effort or reasoning.budget_tokens, not both'),
], ids=["parallel-off", "strict", "effort-and-budget", "none-and-budget"])
def test_settings_gemini_cannot_honour_are_refused(req, message):
    err = refusal(req)

    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == message


# -- request: structured output and thinking -------------------------------------------------


def test_json_schema_goes_as_response_json_schema():
    fmt = pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(name="answer", strict=True))
    fmt.json_schema.schema.update({"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"]})

    got = body(request(response_format=fmt, max_tokens=50))

    assert got["generationConfig"] == {
        "maxOutputTokens": 50,
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }


def test_a_json_schema_description_goes_into_the_schema():
    fmt = pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(name="answer", description="Where it is."))
    fmt.json_schema.schema.update({"type": "object"})

    assert body(request(response_format=fmt))["generationConfig"]["responseJsonSchema"] == {
        "type": "object", "description": "Where it is."}

    fmt.json_schema.schema.update({"description": "Something else."})
    err = refusal(request(response_format=fmt))
    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == ('response_format.json_schema.description: provider "gemini" takes one description: '
                           "the schema already has another")


def test_json_object_is_json_mode_without_a_schema():
    got = body(request(response_format=pb.ResponseFormat(json_object=pb.JsonObjectFormat())))

    assert got["generationConfig"] == {"responseMimeType": "application/json"}


@pytest.mark.parametrize(("config", "thinking"), [
    (pb.ReasoningConfig(budget_tokens=2048), {"thinkingBudget": 2048}),
    (pb.ReasoningConfig(budget_tokens=0, include_thoughts=True), {"thinkingBudget": 0, "includeThoughts": True}),
    (pb.ReasoningConfig(effort=pb.REASONING_EFFORT_NONE), {"thinkingBudget": 0}),
    (pb.ReasoningConfig(effort=pb.REASONING_EFFORT_MINIMAL), {"thinkingLevel": "MINIMAL"}),
    (pb.ReasoningConfig(effort=pb.REASONING_EFFORT_LOW), {"thinkingLevel": "LOW"}),
    (pb.ReasoningConfig(effort=pb.REASONING_EFFORT_MEDIUM), {"thinkingLevel": "MEDIUM"}),
    (pb.ReasoningConfig(effort=pb.REASONING_EFFORT_HIGH, include_thoughts=False),
     {"thinkingLevel": "HIGH", "includeThoughts": False}),
    (pb.ReasoningConfig(include_thoughts=True), {"includeThoughts": True}),
], ids=["budget", "budget-0-thoughts", "none", "minimal", "low", "medium", "high-no-thoughts", "thoughts"])
def test_reasoning_goes_as_thinking_config(config, thinking):
    assert body(request(reasoning=config))["generationConfig"] == {"thinkingConfig": thinking}


def test_an_empty_reasoning_config_sends_nothing():
    assert body(request(reasoning=pb.ReasoningConfig())) == body(request())


# -- request: the assistant's turn echoed back, and the results -------------------------------


@pytest.mark.parametrize("relative", [SINGLE, PARALLEL, SIGNED, THOUGHT_SUMMARY])
def test_an_unchanged_echo_reproduces_the_parts_gemini_sent(relative):
    message = parse(relative).choices[0].message

    contents = body(request(user(), message))["contents"]

    assert contents[1] == {"role": "model", "parts": wire_parts(relative)}


def test_an_echo_sends_provider_ids_but_never_minted_ones():
    message = assistant(pb.Part(tool_call=pb.ToolCall(id="fc_1", name="get_weather", arguments_json='{"city":"Oslo"}')),
                        pb.Part(tool_call=pb.ToolCall(id="call_tw0123456789abcdef01234567", name="now")))

    parts = body(request(user(), message))["contents"][1]["parts"]

    assert parts == [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}, "id": "fc_1"}},
                     {"functionCall": {"name": "now", "args": {}}}]


def test_signature_only_reasoning_with_nothing_after_it_goes_on_an_empty_text_part():
    message = assistant(pb.Part(text="Done."), pb.Part(reasoning=pb.Reasoning(signature=b"\x01\x02")),
                        pb.Part(reasoning=pb.Reasoning(text="more thought", signature=b"\x03")),
                        pb.Part(reasoning=pb.Reasoning(signature=b"\x04")))

    parts = body(request(user(), message))["contents"][1]["parts"]

    assert parts == [{"text": "Done."}, {"text": "", "thoughtSignature": "AQI="},
                     {"text": "more thought", "thought": True, "thoughtSignature": "Aw=="},
                     {"text": "", "thoughtSignature": "BA=="}]


@pytest.mark.parametrize(("part", "message"), [
    (pb.Part(tool_call=pb.ToolCall(id="fc_1", name="now", arguments_json="[1, 2]")),
     'messages[1].parts[0].tool_call.arguments_json: provider "gemini" takes tool call arguments as a JSON object'),
    (pb.Part(tool_call=pb.ToolCall(id="fc_1", name="now", arguments_json='{"a": ')),
     'messages[1].parts[0].tool_call.arguments_json: provider "gemini" takes tool call arguments as a JSON object'),
    (pb.Part(reasoning=pb.Reasoning(redacted=b"opaque")),
     'messages[1].parts[0].reasoning.redacted: provider "gemini" has no redacted thinking to send back'),
], ids=["array-arguments", "broken-arguments", "redacted"])
def test_echoed_parts_gemini_cannot_take_are_refused(part, message):
    err = refusal(request(user(), assistant(part)))

    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == message


def test_consecutive_tool_messages_are_one_user_turn_of_function_responses():
    calls = assistant(pb.Part(tool_call=pb.ToolCall(id="call_tw000000000000000000000001", name="get_weather",
                                                    arguments_json='{"city":"Oslo"}')),
                      pb.Part(tool_call=pb.ToolCall(id="fc_2", name="now", arguments_json="{}")),
                      pb.Part(tool_call=pb.ToolCall(id="call_tw000000000000000000000003", name="lookup")))
    req = request(user(), calls,
                  results(result("call_tw000000000000000000000001", '{"temp": 21, "unit": "C"}')),
                  results(result("fc_2", "2025-07-28T10:00:00Z"),
                          result("call_tw000000000000000000000003", "no such entry", is_error=True, name="lookup_v2")),
                  user("thanks"))

    contents = body(req)["contents"]

    assert contents[2:] == [
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp": 21, "unit": "C"}}},
            {"functionResponse": {"name": "now", "response": {"output": "2025-07-28T10:00:00Z"}, "id": "fc_2"}},
            {"functionResponse": {"name": "lookup_v2", "response": {"error": "no such entry"}}},
        ]},
        {"role": "user", "parts": [{"text": "thanks"}]},
    ]


def test_a_failed_call_with_a_json_error_keeps_it_under_error():
    req = request(user(), assistant(pb.Part(tool_call=pb.ToolCall(id="call_tw01", name="now"))),
                  results(result("call_tw01", '{"code": 503}', is_error=True)))

    assert body(req)["contents"][2]["parts"] == [{"functionResponse": {"name": "now",
                                                                       "response": {"error": {"code": 503}}}}]


def test_a_result_gemini_cannot_name_is_refused():
    # The gateway refuses this before an adapter sees it; the adapter does not guess either.
    err = refusal(request(user(), results(result("call_tw404", "x"))))

    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == ("messages[1].parts[0].tool_result.name: is required when no earlier tool_call has this "
                           "tool_call_id")


# -- unary answers ---------------------------------------------------------------------------


def test_a_single_call_gets_a_minted_id_and_its_arguments_as_json_text():
    choice = parse(SINGLE).choices[0]

    (part,) = choice.message.parts
    call = part.tool_call
    assert is_minted(call.id) and call.name == "find_theaters"
    assert call.arguments_json == '{"movie":"Barbie","location":"Mountain View, CA"}'
    assert struct_to_dict(call.arguments) == {"movie": "Barbie", "location": "Mountain View, CA"}
    assert (choice.finish_reason, choice.raw_finish_reason) == (pb.FINISH_REASON_TOOL_CALLS, "STOP")


def test_parallel_calls_keep_their_order_and_get_distinct_ids():
    choice = parse(PARALLEL).choices[0]

    calls = [p.tool_call for p in choice.message.parts]
    assert [c.name for c in calls] == ["fetchWeather", "completelyDifferentFunction"]
    assert all(is_minted(c.id) for c in calls) and calls[0].id != calls[1].id
    assert [c.arguments_json for c in calls] == ['{"param":{"state":"MA","city":"Boston","date":"2024-10-17"}}'] * 2
    assert choice.finish_reason == pb.FINISH_REASON_TOOL_CALLS


def test_thinking_then_a_signed_call_without_arguments():
    parts = wire_parts(SIGNED)
    choice = parse(SIGNED).choices[0]

    thought, signature, call = choice.message.parts
    assert thought == pb.Part(reasoning=pb.Reasoning(text=parts[0]["text"]))
    # The signature came on the functionCall part: a signature-only block just before the call.
    assert signature == pb.Part(reasoning=pb.Reasoning(signature=signature_of(parts[1])))
    assert (call.tool_call.name, call.tool_call.arguments_json) == ("now", "{}")
    assert struct_to_dict(call.tool_call.arguments) == {}
    assert choice.finish_reason == pb.FINISH_REASON_TOOL_CALLS


def test_a_call_id_from_gemini_is_kept():
    data = fixture_json(SINGLE)
    data["candidates"][0]["content"]["parts"][0]["functionCall"]["id"] = "fc-7f3a"

    (part,) = parse_bytes(orjson.dumps(data)).choices[0].message.parts

    assert part.tool_call.id == "fc-7f3a"


def test_a_signed_text_part_gets_its_signature_just_before_it():
    data = fixture_json(THOUGHT_SUMMARY)
    data["candidates"][0]["content"]["parts"][1]["thoughtSignature"] = "c2lnbmVk"
    data["candidates"][0]["content"]["parts"].append({"text": "", "thoughtSignature": "ZW5k"})

    message = parse_bytes(orjson.dumps(data)).choices[0].message

    assert list(message.parts)[1:] == [pb.Part(reasoning=pb.Reasoning(signature=b"signed")),
                                       pb.Part(text="Mountain View"),
                                       pb.Part(reasoning=pb.Reasoning(signature=b"end"))]
    assert message.parts[0].reasoning.text.startswith("**Thinking About Google's Headquarters**")
    # Sent back, each signature lands on the part it came on.
    assert body(request(user(), message))["contents"][1]["parts"] == data["candidates"][0]["content"]["parts"]
    assert parse_bytes(orjson.dumps(data)).choices[0].finish_reason == pb.FINISH_REASON_STOP


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda p: p[1].update(thoughtSignature="not base64!"), "gemini: upstream answered with a thoughtSignature "
                                                            "that is not base64"),
    (lambda p: p[1].update(thoughtSignature=7), "gemini: upstream answered with a thoughtSignature that is not a "
                                                "string"),
    (lambda p: p[1]["functionCall"].pop("name"), "gemini: upstream answered with a functionCall without a name"),
], ids=["signature-not-base64", "signature-not-a-string", "call-without-name"])
def test_parts_that_cannot_be_read_are_unavailable(mutate, message):
    data = fixture_json(SIGNED)
    mutate(data["candidates"][0]["content"]["parts"])

    err = parse_error(orjson.dumps(data))

    assert err.code == Code.UNAVAILABLE
    assert err.message == message


# -- streams ---------------------------------------------------------------------------------


def test_stream_thinking_then_a_signed_call():
    chunks = chunks_of(STREAM_SIGNED)
    decoder, messages = decode(fixture_bytes(STREAM_SIGNED))

    thoughts = [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks[:2]]
    assert [m.WhichOneof("event") for m in messages] == ["reasoning_delta", "reasoning_delta", "tool_call_delta"]
    assert [m.reasoning_delta.text for m in messages[:2]] == thoughts
    delta = messages[2].tool_call_delta
    assert (delta.choice_index, delta.index, delta.name, delta.arguments_fragment) == (0, 0, "now", "{}")
    assert is_minted(delta.id)
    assert decoder.finished
    (finish,) = decoder.summary().finishes
    assert (finish.finish_reason, finish.raw_finish_reason) == (pb.FINISH_REASON_TOOL_CALLS, "STOP")
    assert list(finish.tool_calls) == [tool_call(delta.id, "now", "{}")]
    signature = signature_of(chunks[2]["candidates"][0]["content"]["parts"][0])
    assert list(finish.reasoning) == [pb.Reasoning(text="".join(thoughts)), pb.Reasoning(signature=signature)]
    assert decoder.output_bytes == len("".join(thoughts).encode()) + 2


def test_stream_call_arriving_whole_in_one_chunk_with_its_signature():
    chunks = chunks_of(STREAM_GEMINI3)
    decoder, messages = decode(fixture_bytes(STREAM_GEMINI3))

    (message,) = messages  # the closing chunk's empty text part sends no delta
    delta = message.tool_call_delta
    assert (delta.index, delta.name, delta.arguments_fragment) == (0, "weather", '{"location":"San Francisco"}')
    (finish,) = decoder.summary().finishes
    assert finish.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [c.arguments_json for c in finish.tool_calls] == ['{"location":"San Francisco"}']
    assert list(finish.reasoning) == [pb.Reasoning(signature=signature_of(chunks[0]["candidates"][0]["content"]["parts"][0]))]


def test_stream_parallel_calls_in_one_chunk():
    chunks = chunks_of(STREAM_GEMINI3)
    parts = chunks[0]["candidates"][0]["content"]["parts"]
    parts.append({"functionCall": {"name": "time", "args": {"zone": "America/Los_Angeles"}}})

    decoder, messages = decode(sse_of(chunks))

    deltas = [m.tool_call_delta for m in messages]
    assert [(d.index, d.name) for d in deltas] == [(0, "weather"), (1, "time")]
    assert deltas[0].id != deltas[1].id
    calls = decoder.summary().finishes[0].tool_calls
    assert [c.arguments_json for c in calls] == ['{"location":"San Francisco"}', '{"zone":"America/Los_Angeles"}']


def test_stream_thought_summary_is_one_reasoning_block_and_the_answer_is_text():
    chunks = chunks_of(STREAM_THOUGHTS)
    decoder, messages = decode(fixture_bytes(STREAM_THOUGHTS))

    assert [m.WhichOneof("event") for m in messages] == ["reasoning_delta"] * 3 + ["delta"] * 2
    thoughts = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks[:3])
    (finish,) = decoder.summary().finishes
    assert list(finish.reasoning) == [pb.Reasoning(text=thoughts)]
    assert (finish.finish_reason, list(finish.tool_calls)) == (pb.FINISH_REASON_STOP, [])


def test_vertex_partial_args_stream_as_a_prefix_of_the_arguments():
    chunks = chunks_of(STREAM_PARTIAL)
    decoder, messages = decode(fixture_bytes(STREAM_PARTIAL))

    deltas = [m.tool_call_delta for m in messages]
    assert [(d.index, d.name, d.arguments_fragment) for d in deltas] == [
        (0, "getWeather", ""), (0, "", '{"location":"Boston'), (0, "", '"'), (0, "", "}"),
        (1, "getWeather", ""), (1, "", '{"location":"San Francisco'), (1, "", '"'), (1, "", "}"),
    ]
    assert is_minted(deltas[0].id) and is_minted(deltas[4].id) and deltas[0].id != deltas[4].id
    summary = decoder.summary()
    (finish,) = summary.finishes
    assert [(c.name, c.arguments_json) for c in finish.tool_calls] == [
        ("getWeather", '{"location":"Boston"}'), ("getWeather", '{"location":"San Francisco"}')]
    assert [struct_to_dict(c.arguments) for c in finish.tool_calls] == [{"location": "Boston"},
                                                                         {"location": "San Francisco"}]
    assert list(finish.reasoning) == [pb.Reasoning(signature=signature_of(chunks[0]["candidates"][0]["content"]["parts"][0]))]
    assert (finish.finish_reason, finish.raw_finish_reason) == (pb.FINISH_REASON_TOOL_CALLS, "STOP")
    assert summary.created.ToJsonString() == "2026-04-02T17:03:50.399550Z"
    assert decoder.output_bytes == len('{"location":"Boston"}{"location":"San Francisco"}')


def whole_call_form(chunks: list[dict]) -> list[dict]:
    """The partialArgs stream as the Gemini API sends it: each call whole in its opening chunk
    (args assembled from the stringValues), the partialArgs and closing parts left out."""
    out, opener, values = [], None, {}
    for chunk in copy.deepcopy(chunks):
        part = chunk["candidates"][0]["content"]["parts"][0]
        call = part["functionCall"]
        if call.get("name"):
            opener, values = chunk, {}
            del call["willContinue"]
            out.append(chunk)
            continue
        for arg in call.get("partialArgs", ()):
            key = arg["jsonPath"].removeprefix("$.")
            values[key] = values.get(key, "") + arg["stringValue"]
        if not call.get("willContinue"):
            opener["candidates"][0]["content"]["parts"][0]["functionCall"]["args"] = values
            if "finishReason" in chunk["candidates"][0]:
                chunk["candidates"][0]["content"]["parts"] = []
                out.append(chunk)
    return out


def test_vertex_partial_args_assemble_the_same_call_as_the_whole_call_form():
    partial, _ = decode(fixture_bytes(STREAM_PARTIAL))
    whole, _ = decode(sse_of(whole_call_form(chunks_of(STREAM_PARTIAL))))

    assert summary_view(partial.summary()) == summary_view(whole.summary())
    assert partial.summary().usage == whole.summary().usage


def _partial_variant(pieces: list[dict]) -> bytes:
    """The published partialArgs stream with its first call's pieces replaced."""
    chunks = chunks_of(STREAM_PARTIAL)[:4]
    middle = chunks[1]
    middle["candidates"][0]["content"]["parts"][0]["functionCall"]["partialArgs"] = pieces
    chunks = [chunks[0], middle, chunks[3]]
    chunks[-1]["candidates"][0]["finishReason"] = "STOP"
    return sse_of(chunks)


def test_partial_strings_split_mid_escape_and_nested_values_stream_in_order():
    pieces = [
        {"jsonPath": "$.q", "stringValue": 'say "hi', "willContinue": True},
        {"jsonPath": "$.q", "stringValue": '"\n\\ é', "willContinue": True},
        {"jsonPath": "$.q", "stringValue": "\U0001F600"},
        {"jsonPath": "$.where.city", "stringValue": "Oslo"},
        {"jsonPath": "$.where['zip code']", "numberValue": 150},
        {"jsonPath": "$.tags[0]", "stringValue": "a"},
        {"jsonPath": "$.tags[1]", "boolValue": True},
        {"jsonPath": "$.tags[2].x", "nullValue": None},
        {"jsonPath": "$.n", "numberValue": 2.5},
    ]
    expected = {"q": 'say "hi"\n\\ é\U0001F600', "where": {"city": "Oslo", "zip code": 150},
                "tags": ["a", True, {"x": None}], "n": 2.5}

    decoder, messages = decode(_partial_variant(pieces))

    fragments = [m.tool_call_delta.arguments_fragment for m in messages]
    assert fragments == ["", '{"q":"say \\"hi', '\\"\\n\\\\ é', '\U0001F600"', ',"where":{"city":"Oslo"',
                         ',"zip code":150', '},"tags":["a"', ",true", ',{"x":null', '}],"n":2.5', "}"]
    (call,) = decoder.summary().finishes[0].tool_calls
    assert call.arguments_json == arguments_text(expected)
    assert json.loads(call.arguments_json) == expected


def test_a_call_that_streamed_no_arguments_has_an_empty_object():
    decoder, _ = decode(_partial_variant([]))

    (call,) = decoder.summary().finishes[0].tool_calls
    assert call.arguments_json == "{}"


@pytest.mark.parametrize(("pieces", "message"), [
    ([{"jsonPath": "$.a.x", "stringValue": "1"}, {"jsonPath": "$.b", "stringValue": "2"},
      {"jsonPath": "$.a.y", "stringValue": "3"}],
     "gemini: upstream answered with partialArgs that go back to $.a.y, already written"),
    ([{"jsonPath": "$.a", "stringValue": "1"}, {"jsonPath": "$.a", "numberValue": 2}],
     "gemini: upstream answered with partialArgs that go back to $.a, already written"),
    ([{"jsonPath": "$.list[1]", "stringValue": "1"}],
     "gemini: upstream answered with partialArgs that go back to $.list[1], already written"),
    ([{"jsonPath": "$..a", "stringValue": "1"}],
     "gemini: upstream answered with a partialArgs jsonPath it cannot follow ('$..a')"),
    ([{"jsonPath": "$.a"}], "gemini: upstream answered with a partialArgs item without a value"),
], ids=["back-into-closed-object", "member-twice", "index-skipped", "descendant-path", "no-value"])
def test_partial_args_that_cannot_extend_the_text_are_unavailable(pieces, message):
    with pytest.raises(GatewayError) as caught:
        decode(_partial_variant(pieces))

    assert caught.value.code == Code.UNAVAILABLE
    assert caught.value.message == message


def test_a_stream_cut_before_the_finish_is_not_finished_and_keeps_what_came():
    decoder, _ = decode(sse_of(chunks_of(STREAM_PARTIAL)[:6]))

    assert not decoder.finished
    summary = decoder.summary()
    assert [c.arguments_json for c in summary.finishes[0].tool_calls] == [
        '{"location":"Boston"}', '{"location":"San Francisco']
    assert summary.usage.estimated  # cut off: the engine estimates from output_bytes


# -- any split of the bytes gives the same summary ------------------------------------------------


def expected_from_content(relative: str) -> list[tuple]:
    """What the stream's own JSON says, read without the decoder: calls whole (or their
    partialArgs joined), thoughts joined per block, signatures decoded."""
    chunks = chunks_of(relative)
    if relative == STREAM_PARTIAL:
        chunks = whole_call_form(chunks)
    calls, reasoning, thinking = [], [], False
    for chunk in chunks:
        for part in chunk["candidates"][0]["content"]["parts"]:
            signature = signature_of(part) if "thoughtSignature" in part else b""
            if part.get("thought"):
                if thinking:
                    reasoning[-1].text += part["text"]
                else:
                    reasoning.append(pb.Reasoning(text=part["text"]))
                thinking = True
                continue
            thinking = False
            if signature:
                reasoning.append(pb.Reasoning(signature=signature))
            if "functionCall" in part:
                call = part["functionCall"]
                arguments = arguments_text(call.get("args"))
                calls.append(tool_call("<minted>", call["name"], arguments))
    raw = chunks[-1]["candidates"][0]["finishReason"]
    reason = pb.FINISH_REASON_TOOL_CALLS if calls else pb.FINISH_REASON_STOP
    return [(0, reason, raw, calls, reasoning)]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(STREAMS), st.lists(st.integers(min_value=1, max_value=20000), max_size=12))
def test_any_split_of_a_stream_gives_the_same_calls_and_reasoning(relative, splits):
    raw = fixture_bytes(relative)
    splits = [s % len(raw) for s in splits]

    decoder, messages = decode(raw, splits)

    assert decoder.finished
    assert summary_view(decoder.summary()) == expected_from_content(relative)
    # The deltas carry the same calls, fragment by fragment.
    fragments: dict[int, str] = {}
    for m in messages:
        if m.HasField("tool_call_delta"):
            d = m.tool_call_delta
            fragments[d.index] = fragments.get(d.index, "") + d.arguments_fragment
    assert [fragments[i] for i in sorted(fragments)] == [
        c.arguments_json for c in decoder.summary().finishes[0].tool_calls]


@pytest.mark.parametrize("relative", [SIGNED, STREAM_SIGNED, STREAM_GEMINI3, STREAM_PARTIAL])
def test_the_fixtures_signatures_survive_a_round_trip_byte_for_byte(relative):
    values = re.findall(r'"thoughtSignature":\s*"([^"]*)"', (FIXTURES / relative).read_text())

    assert values
    for value in values:
        assert base64.b64encode(base64.b64decode(value)).decode() == value
