"""Engine.stream against the loopback upstream: deltas merged only from what one read
brought (order and text kept, nothing held back), errors after merged deltas, and the
idle timer never left armed while the caller holds a message."""

from __future__ import annotations

import asyncio

import grpc
import orjson
import pytest
from tollway.providers.mixrouter import create
from tollway.service.errors import GatewayError
from tollway.service.plugins.adapter import ProviderSettings
from tollway.service.upstream.engine import AttemptTimeouts, Engine, merge_deltas
from tollway.v1 import completion_pb2 as pb

from tests.support.upstream import FakeUpstream, Reply

Code = grpc.StatusCode
WAIT_S = 5.0
REQUEST = pb.StreamCompleteRequest(model="mixrouter/m", messages=[
    pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="Say hello.")])])


def chunk(text: str | None = None, index: int = 0, finish: str | None = None) -> bytes:
    delta = {"content": text} if text is not None else {}
    event = {"id": "c1", "model": "m", "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(event) + b"\n\n"


DONE = b"data: [DONE]\n\n"


@pytest.fixture
async def engine():
    engine = Engine(merge_deltas=True)
    await engine.start()
    yield engine
    await engine.aclose()


def adapter(upstream: FakeUpstream):
    return create(ProviderSettings(name="mixrouter", kind="mixrouter", base_url=f"{upstream.base_url}/v1",
                                   api_key="tw-test-engine-0000"))


def timeouts(idle: float = WAIT_S) -> AttemptTimeouts:
    return AttemptTimeouts(connect=WAIT_S, total=WAIT_S, first_byte=WAIT_S, idle=idle)


def deltas(messages: list[pb.StreamCompleteResponse]) -> list[tuple[int, str]]:
    return [(m.delta.choice_index, m.delta.text) for m in messages if m.WhichOneof("event") == "delta"]


async def read_all(engine: Engine, upstream: FakeUpstream, idle: float = WAIT_S) -> list[pb.StreamCompleteResponse]:
    return [m async for m in engine.stream(adapter(upstream), REQUEST, "m", timeouts(idle))]


# One write: every event arrives in the same read.
INTERLEAVED = b"".join([chunk("Hel"), chunk("lo"), chunk("Bon", index=1), chunk("jour", index=1), chunk(" you"),
                        chunk("!", finish="stop"), chunk(finish="stop", index=1), DONE])


async def test_deltas_read_together_merge_per_choice_in_order(engine, upstream):
    upstream.reply(Reply(events=[INTERLEAVED]))

    messages = await read_all(engine, upstream)

    # The first delta goes at once; after it, consecutive deltas of one choice join and a
    # change of choice starts a new message.
    assert deltas(messages) == [(0, "Hel"), (0, "lo"), (1, "Bonjour"), (0, " you!")]
    assert messages[-1].WhichOneof("event") == "summary"
    assert [f.index for f in messages[-1].summary.finishes] == [0, 1]


async def test_merged_deltas_carry_the_same_text_per_choice_as_unmerged_ones(engine, upstream):
    unmerged = Engine(merge_deltas=False)
    await unmerged.start()
    try:
        upstream.reply(Reply(events=[INTERLEAVED]))
        one_per_event = [m async for m in unmerged.stream(adapter(upstream), REQUEST, "m", timeouts())]
    finally:
        await unmerged.aclose()
    upstream.reply(Reply(events=[INTERLEAVED]))
    merged = await read_all(engine, upstream)

    assert deltas(one_per_event) == [(0, "Hel"), (0, "lo"), (1, "Bon"), (1, "jour"), (0, " you"), (0, "!")]
    for choice in (0, 1):
        assert "".join(t for i, t in deltas(merged) if i == choice) == \
            "".join(t for i, t in deltas(one_per_event) if i == choice)
    assert merged[-1].summary == one_per_event[-1].summary


async def test_a_delta_is_never_held_back_waiting_for_more(engine, upstream):
    # The upstream sends three events in one write, then goes silent without ending the stream.
    upstream.reply(Reply(events=[chunk("Hel") + chunk("lo") + chunk("!"), chunk("never sent")], fault="stall"))

    stream = engine.stream(adapter(upstream), REQUEST, "m", timeouts())
    try:
        # They arrive while the upstream sends nothing more: the merge took only what was in hand.
        received = [await asyncio.wait_for(anext(stream), WAIT_S) for _ in range(2)]
    finally:
        await stream.aclose()

    assert deltas(received) == [(0, "Hel"), (0, "lo!")]
    await asyncio.wait_for(upstream.disconnected.wait(), WAIT_S)


async def test_deltas_before_an_error_event_in_the_same_read_reach_the_caller_first(engine, upstream):
    error = b'data: {"error": {"message": "overloaded"}}\n\n'
    upstream.reply(Reply(events=[chunk("Hel") + chunk("lo") + chunk("!") + error + chunk("lost")]))

    received = []
    with pytest.raises(GatewayError) as caught:
        async for message in engine.stream(adapter(upstream), REQUEST, "m", timeouts()):
            received.append(message)

    assert deltas(received) == [(0, "Hel"), (0, "lo!")]
    assert caught.value.code == Code.UNAVAILABLE
    assert caught.value.message == "mixrouter: upstream answered with an error: overloaded"
    # The caller saw output: the error carries the usage so far, estimated.
    assert caught.value.partial_summary is not None and caught.value.partial_summary.usage.estimated


async def test_a_slow_caller_is_not_an_idle_upstream(engine, upstream):
    """The idle timer runs only while the engine waits for the upstream: a caller that holds
    each message longer than the idle limit is neither cancelled nor failed."""
    upstream.reply(Reply(events=[chunk("one "), chunk("two "), chunk("three"), chunk(finish="stop"), DONE],
                         event_delay_s=0.05))

    received = []
    async for message in engine.stream(adapter(upstream), REQUEST, "m", timeouts(idle=0.2)):
        received.append(message)
        if message.WhichOneof("event") == "delta":
            # Not a timing assertion: longer than the idle limit, while the stream is suspended here.
            await asyncio.sleep(0.4)

    assert "".join(text for _, text in deltas(received)) == "one two three"
    assert received[-1].WhichOneof("event") == "summary"


async def test_an_upstream_silent_past_the_idle_limit_still_times_out(engine, upstream):
    upstream.reply(Reply(events=[chunk("one "), chunk("never sent")], fault="stall"))

    received = []
    with pytest.raises(GatewayError) as caught:
        async for message in engine.stream(adapter(upstream), REQUEST, "m", timeouts(idle=0.2)):
            received.append(message)

    assert deltas(received) == [(0, "one ")]
    assert caught.value.code == Code.DEADLINE_EXCEEDED
    assert caught.value.message == "mixrouter: upstream stalled for 0.2s mid-stream"
    await asyncio.wait_for(upstream.disconnected.wait(), WAIT_S)


def test_merge_deltas_keeps_a_summary_where_it_is():
    summary = pb.StreamCompleteResponse(summary=pb.StreamSummary(id="s"))
    messages = [pb.StreamCompleteResponse(delta=pb.TextDelta(choice_index=0, text=t)) for t in ("a", "b")]
    tail = [pb.StreamCompleteResponse(delta=pb.TextDelta(choice_index=0, text="c"))]

    merged = merge_deltas([*messages, summary, *tail])

    assert [m.WhichOneof("event") for m in merged] == ["delta", "summary", "delta"]
    assert (merged[0].delta.text, merged[2].delta.text) == ("ab", "c")


def test_merge_deltas_joins_reasoning_and_each_tool_calls_arguments_and_never_a_calls_first_delta():
    def reasoning(text: str, choice: int = 0) -> pb.StreamCompleteResponse:
        return pb.StreamCompleteResponse(reasoning_delta=pb.ReasoningDelta(choice_index=choice, text=text))

    def call(fragment: str, index: int = 0, call_id: str = "", name: str = "") -> pb.StreamCompleteResponse:
        return pb.StreamCompleteResponse(tool_call_delta=pb.ToolCallDelta(
            choice_index=0, index=index, id=call_id, name=name, arguments_fragment=fragment))

    merged = merge_deltas([
        reasoning("Think"), reasoning("ing."), reasoning("Other", choice=1),
        call("", call_id="call_a", name="get_weather"), call('{"ci'), call('ty": "Oslo"}'),
        call("", index=1, call_id="call_b", name="get_time"), call('{"tz"', index=1), call(': "CET"}', index=1),
        # A new call at the same index (its first delta names it) is never folded into the last.
        call('{}', index=1, call_id="call_c", name="noop"),
    ])

    assert [(m.reasoning_delta.choice_index, m.reasoning_delta.text) for m in merged
            if m.HasField("reasoning_delta")] == [(0, "Thinking."), (1, "Other")]
    calls = [m.tool_call_delta for m in merged if m.HasField("tool_call_delta")]
    assert [(c.index, c.id, c.name, c.arguments_fragment) for c in calls] == [
        (0, "call_a", "get_weather", '{"city": "Oslo"}'),
        (1, "call_b", "get_time", '{"tz": "CET"}'),
        (1, "call_c", "noop", "{}"),
    ]


async def test_the_server_switch_merges_deltas_end_to_end_without_changing_the_text(start_client, upstream):
    from tests.support.gateway import MIXROUTER_TEST_KEY, mixrouter_config
    from tests.support.seed import STREAM_USAGE, _chunk, _delta, seed_stream_request

    config = mixrouter_config(upstream)
    config["server"] = {"merge_stream_deltas": True}
    client = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    # Every event in one write: what reaches the gateway in a single read.
    chunks = [_chunk([_delta(0, t)]) for t in ("The ", "image ", "shows ", "an ", "office.")]
    chunks += [_chunk([_delta(0, finish="stop")]), _chunk([], usage=STREAM_USAGE)]
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    upstream.reply(Reply(events=[body]))

    messages = [m async for m in client.stub.StreamComplete(seed_stream_request(), timeout=5)]

    deltas = [m.delta for m in messages if m.HasField("delta")]
    assert "".join(d.text for d in deltas) == "The image shows an office."
    # The first delta goes alone; the four read with it go out as one message.
    assert [d.text for d in deltas] == ["The ", "image shows an office."]
    assert messages[-1].HasField("summary") and messages[-1].summary.usage.total_tokens > 0


def test_merge_stream_deltas_must_be_a_boolean():
    from tollway.service.config.loader import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"server": {"merge_stream_deltas": "yes"}})
    assert str(err.value) == "server.merge_stream_deltas must be true or false"
