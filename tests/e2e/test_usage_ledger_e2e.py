"""The usage ledger end to end: gRPC caller -> in-process gateway -> loopback MixRouter -> one
ledger record per request that reached a provider, read back from the gateway's SQLite file.

Each test runs its own gateway with its own ledger, so "exactly one record" counts the whole
ledger. OK records are journaled before the answer goes out; the tests flush the ledger to its
database before reading it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from tollway.service.ledger import (
    InputTokens,
    OutputTokens,
)
from tollway.service.usage.estimate import estimate_tokens, request_text_bytes
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from tests.support.gateway import Client
from tests.support.ledger_calls import (  # noqa: F401
    _CLASSES,
    _CODE_NAMES,
    _WARNINGS,
    ALICE_KEY,
    ALICE_LABELS,
    BACKUP_TEST_KEY,
    BOB_KEY,
    CLAUDE_USAGE,
    ENVIRON,
    GEMINI_USAGE,
    MERGED_LABELS,
    REQUEST_ID_KEY,
    REQUEST_LABELS,
    WAIT_S,
    assert_attempts_match,
    assert_cost_matches,
    assert_timed,
    assert_usage_matches,
    attempts_of,
    auth,
    completion,
    failure_of,
    flushed_records,
    gateway_config,
    ledger_path,
    now,
    only_record,
    read_records,
    request_id_of,
    sha,
    stream_chunk,
    text_request,
    until_records,
)
from tests.support.seed import SEED_TEXT, recorded_stream, seed_request
from tests.support.upstream import Reply, sse_events

Code = grpc.StatusCode
# Not real keys: markers the suite-wide log scan looks for.
# Bound on every wait for something the gateway does on its own (a cancel reaching it).

# The request says team=ads: the caller's configured label wins.








@pytest.fixture
async def gateway(start_client, upstream) -> Client:
    return await start_client(gateway_config(upstream), ENVIRON)


# -- reading the ledger --------------------------------------------------------------------
















# -- what a record must say, from what the caller was told ---------------------------------













# -- upstream payloads ---------------------------------------------------------------------




# Gemini behind the relay: text, image and audio input, a cache read, reasoning, and the
# relay's own cost figure (OpenRouter-style, in USD).
# Claude behind the relay: prompt_tokens leaves out cache reads and both kinds of cache write.








# -- OK calls ------------------------------------------------------------------------------


@pytest.mark.parametrize("upstream_model, usage, buckets", [
    ("gemini-2.0-flash", GEMINI_USAGE, {"input.cache_read": 200, "input.image": 300, "output.reasoning": 50}),
    ("claude-sonnet-4-5", CLAUDE_USAGE, {"input.cache_read": 1000, "input.cache_write_5m": 300,
                                         "input.cache_write_1h": 400}),
], ids=["gemini", "claude-cache-writes"])
async def test_an_ok_unary_call_gives_exactly_one_complete_record(gateway, upstream, upstream_model, usage, buckets):
    upstream.reply(Reply(body=completion(upstream_model, usage)))
    before = now()

    call = gateway.stub.Complete(text_request(f"mixrouter/{upstream_model}"), timeout=10, metadata=auth(ALICE_KEY))
    response = await call
    request_id = request_id_of(await call.trailing_metadata())
    after = now()

    record = await only_record(gateway)
    assert record.request_id == request_id
    assert_timed(record, before, after)
    assert record.caller == "alice"
    assert record.labels == MERGED_LABELS
    assert (record.route, record.provider, record.model) == (f"mixrouter/{upstream_model}", "mixrouter",
                                                             upstream_model)
    assert record.status == "OK"
    assert attempts_of(record) == [("mixrouter", upstream_model, "OK", "")]
    assert_attempts_match(record, response.attempts)
    assert record.ttft_ms is None  # a unary call has no first token apart from its answer
    assert_usage_matches(record, response.usage)
    for path, tokens in buckets.items():
        side, bucket = path.split(".")
        assert getattr(getattr(record, side), bucket) == tokens > 0
    assert_cost_matches(record, response.cost)
    assert not record.unpriced and record.cost_nano_usd > 0
    assert record.provider_cost_nano_usd == response.cost.provider_reported_nano_usd == \
        round(usage["cost"] * 1_000_000_000)
    assert not record.estimated


async def test_an_ok_stream_gives_one_record_with_its_time_to_first_token(gateway, upstream):
    upstream.reply(Reply(events=sse_events(recorded_stream()), event_delay_s=0.01))
    before = now()

    call = gateway.stub.StreamComplete(text_request("fast", stream=True), timeout=10, metadata=auth(ALICE_KEY))
    messages = [m async for m in call]
    request_id = request_id_of(await call.trailing_metadata())
    after = now()

    summary = messages[-1].summary
    record = await only_record(gateway)
    assert record.request_id == request_id
    assert_timed(record, before, after)
    assert (record.caller, record.labels) == ("alice", MERGED_LABELS)
    assert (record.route, record.provider, record.model, record.status) == (
        "fast", "mixrouter", "gemini-2.0-flash", "OK")
    assert_attempts_match(record, summary.attempts)
    assert attempts_of(record) == [("mixrouter", "gemini-2.0-flash", "OK", "")]
    assert record.ttft_ms is not None and 0 < record.ttft_ms <= record.latency_ms
    assert_usage_matches(record, summary.usage)
    assert record.input.total == 1986 and record.output.total == 12
    assert_cost_matches(record, summary.cost)
    assert record.cost_nano_usd > 0
    assert record.provider_cost_nano_usd is None  # the relay reported no cost of its own


async def test_a_fallback_gives_one_record_naming_the_provider_that_answered_and_both_attempts(gateway, upstream):
    upstream.reply(Reply(status=503, body={"error": {"message": "overloaded"}}),
                   Reply(body=completion("gemini-2.0-flash", GEMINI_USAGE)))

    call = gateway.stub.Complete(text_request("resilient"), timeout=10, metadata=auth(ALICE_KEY))
    response = await call
    request_id = request_id_of(await call.trailing_metadata())

    record = await only_record(gateway)
    assert record.request_id == request_id
    assert (record.route, record.provider, record.model, record.status) == (
        "resilient", "backup", "gemini-2.0-flash", "OK")
    assert [(a[0], a[2]) for a in attempts_of(record)] == [("mixrouter", "UNAVAILABLE"), ("backup", "OK")]
    assert record.attempts[0].message == "mixrouter: upstream returned HTTP 503: overloaded"
    assert_attempts_match(record, response.attempts)
    assert_usage_matches(record, response.usage)
    assert_cost_matches(record, response.cost)
    # The backup relay is priced like any relay of its kind.
    assert not record.unpriced and record.cost_nano_usd > 0


# -- calls that never reached a provider ----------------------------------------------------


@pytest.mark.parametrize("model, metadata, code, message", [
    ("fast", (), Code.UNAUTHENTICATED, "missing caller key: send metadata 'authorization: Bearer <key>'"),
    ("fast", auth("tw-test-ledger-nobody-000000"), Code.UNAUTHENTICATED, "invalid caller key"),
    ("resilient", auth(BOB_KEY), Code.PERMISSION_DENIED, 'model: caller "bob" may not use "resilient"'),
    ("no-such-route", auth(ALICE_KEY), Code.NOT_FOUND,
     'model: unknown route "no-such-route" (routes: fast, resilient; or name "provider/model")'),
    ("", auth(ALICE_KEY), Code.INVALID_ARGUMENT, 'model: is required ("provider/model" or a route name)'),
], ids=["no-key", "bad-key", "model-not-allowed", "unknown-route", "no-model"])
async def test_a_request_refused_before_any_upstream_call_gives_no_record(gateway, upstream, model, metadata,
                                                                          code, message):
    unary = gateway.stub.Complete(text_request(model), timeout=10, metadata=metadata)
    stream = gateway.stub.StreamComplete(text_request(model, stream=True), timeout=10, metadata=metadata)
    for outcome in (unary, _read_all(stream)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await outcome
        assert caught.value.code() == code
        assert caught.value.details() == message
        # The caller still gets an id to quote, which no record carries.
        request_id = request_id_of(caught.value.trailing_metadata())
        assert await gateway.gateway.runtime.ledger.get(request_id) is None

    assert upstream.received == []
    assert await flushed_records(gateway) == []


async def _read_all(call) -> list[pb.StreamCompleteResponse]:
    return [message async for message in call]


async def test_an_empty_message_list_is_refused_and_gives_no_record(gateway, upstream):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Complete(pb.CompleteRequest(model="fast"), timeout=10, metadata=auth(ALICE_KEY))
    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert caught.value.details() == "messages: at least one message is required"
    assert upstream.received == []
    assert await flushed_records(gateway) == []


# -- failed and abandoned calls -------------------------------------------------------------


async def test_an_upstream_503_gives_one_unavailable_record_with_its_attempts(start_client, upstream):
    gateway = await start_client(gateway_config(upstream, max_retries=1, backoff_initial_s=0.001,
                                                backoff_max_s=0.001), ENVIRON)
    upstream.reply(*[Reply(status=503, body={"error": {"message": "upstream overloaded"}})] * 2)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Complete(text_request("fast"), timeout=10, metadata=auth(ALICE_KEY))
    assert caught.value.code() == Code.UNAVAILABLE
    assert caught.value.details() == "mixrouter: upstream returned HTTP 503: upstream overloaded"
    request_id = request_id_of(caught.value.trailing_metadata())

    record = await only_record(gateway)
    assert record.request_id == request_id
    assert (record.caller, record.labels, record.route, record.provider, record.model, record.status) == (
        "alice", MERGED_LABELS, "fast", "mixrouter", "gemini-2.0-flash", "UNAVAILABLE")
    # The first try and its retry, each with what the upstream said.
    assert [(a[0], a[1], a[2]) for a in attempts_of(record)] == [("mixrouter", "gemini-2.0-flash", "UNAVAILABLE")] * 2
    assert_attempts_match(record, failure_of(caught.value).attempts)
    assert all(a.message == caught.value.details() for a in record.attempts)
    # No tokens were consumed: nothing to bill, nothing estimated.
    assert (record.input, record.output, record.total_tokens) == (InputTokens(), OutputTokens(), 0)
    assert (record.cost_items, record.cost_nano_usd, record.estimated) == ((), 0, False)
    assert record.ttft_ms is None


@pytest.mark.parametrize("with_usage", [False, True], ids=["before-usage", "after-usage"])
async def test_a_stream_cut_after_output_gives_one_unavailable_record_with_estimated_usage(
        gateway, upstream, with_usage):
    chunks = [stream_chunk("The image "), stream_chunk("shows an office."), stream_chunk(finish="stop")]
    if with_usage:
        chunks.append(stream_chunk(usage={"prompt_tokens": 1986, "completion_tokens": 12, "total_tokens": 1998}))
    upstream.reply(Reply(events=sse_events(chunks, done=False), fault="cut"))

    call = gateway.stub.StreamComplete(text_request("fast", stream=True), timeout=10, metadata=auth(ALICE_KEY))
    deltas = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            deltas.append(message.delta.text)
    assert caught.value.code() == Code.UNAVAILABLE
    assert caught.value.details() == "mixrouter: upstream closed the connection"
    assert "".join(deltas) == "The image shows an office."
    request_id = request_id_of(caught.value.trailing_metadata())
    failure = failure_of(caught.value)

    record = await only_record(gateway)
    assert record.request_id == request_id
    assert (record.caller, record.labels, record.route, record.provider, record.model, record.status) == (
        "alice", MERGED_LABELS, "fast", "mixrouter", "gemini-2.0-flash", "UNAVAILABLE")
    assert attempts_of(record) == [("mixrouter", "gemini-2.0-flash", "UNAVAILABLE",
                                    "mixrouter: upstream closed the connection")]
    assert_attempts_match(record, failure.attempts)
    assert record.ttft_ms is not None and 0 < record.ttft_ms <= record.latency_ms
    # The record holds exactly the partial usage the caller was told of, marked estimated.
    assert_usage_matches(record, failure.usage)
    assert record.estimated
    if with_usage:
        assert (record.input.total, record.output.total) == (1986, 12)
    else:
        assert record.input.total == estimate_tokens(len(SEED_TEXT.encode()))
        assert record.output.total == estimate_tokens(len("The image shows an office.".encode()))
    assert record.cost_nano_usd == sum(item.amount_nano_usd for item in record.cost_items) > 0


async def test_a_stream_the_caller_cancels_after_the_first_delta_gives_one_cancelled_estimated_record(
        gateway, upstream):
    # The first delta arrives, then the upstream keeps the stream open without sending more.
    upstream.reply(Reply(events=sse_events([stream_chunk("Two people "), stream_chunk("at work.")]), fault="stall"))
    request = text_request("fast", stream=True)
    before = now()

    call = gateway.stub.StreamComplete(request, timeout=30, metadata=auth(ALICE_KEY))
    first = await asyncio.wait_for(call.read(), WAIT_S)
    assert first.delta.text == "Two people "
    call.cancel()
    assert await call.code() == Code.CANCELLED
    await asyncio.wait_for(upstream.disconnected.wait(), WAIT_S)

    [record] = await until_records(gateway, 1)
    assert_timed(record, before, now())
    assert (record.caller, record.labels, record.route, record.provider, record.model, record.status) == (
        "alice", MERGED_LABELS, "fast", "mixrouter", "gemini-2.0-flash", "CANCELLED")
    assert record.estimated
    assert "USAGE_MISSING" in record.warnings
    # Estimated from the request's text and the text forwarded before the cancel.
    assert record.input.total == estimate_tokens(request_text_bytes(request))
    assert record.output.total == estimate_tokens(len("Two people ".encode()))
    assert record.total_tokens == record.input.total + record.output.total
    assert record.ttft_ms is not None and 0 < record.ttft_ms <= record.latency_ms
    assert record.cost_nano_usd == sum(item.amount_nano_usd for item in record.cost_items) > 0
    # The attempt the cancel cut short is on the record.
    assert attempts_of(record) == [("mixrouter", "gemini-2.0-flash", "CANCELLED", "the call was cancelled")]
    # Once, whatever else happens to the call afterwards.
    await asyncio.sleep(0.05)
    assert len(await flushed_records(gateway)) == 1


async def test_a_stream_whose_caller_deadline_passes_mid_stream_gives_one_deadline_exceeded_record(
        gateway, upstream):
    # The first delta arrives, then the upstream goes quiet until the caller's deadline passes.
    upstream.reply(Reply(events=sse_events([stream_chunk("Two people "), stream_chunk("at work.")]), fault="stall"))
    request = text_request("fast", stream=True)

    call = gateway.stub.StreamComplete(request, timeout=0.5, metadata=auth(ALICE_KEY))
    deltas = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            deltas.append(message.delta.text)
    assert deltas == ["Two people "]
    assert caught.value.code() == Code.DEADLINE_EXCEEDED
    # The gRPC runtime's words: the deadline is the caller's own.
    assert caught.value.details() in ("Deadline Exceeded", "Stream removed (Deadline Exceeded)")

    [record] = await until_records(gateway, 1)
    # What the caller saw, not a cancel.
    assert (record.caller, record.route, record.status) == ("alice", "fast", "DEADLINE_EXCEEDED")
    assert attempts_of(record) == [("mixrouter", "gemini-2.0-flash", "DEADLINE_EXCEEDED",
                                    "the caller's deadline passed")]
    assert record.estimated
    assert record.input.total == estimate_tokens(request_text_bytes(request))
    assert record.output.total == estimate_tokens(len("Two people ".encode()))


async def test_a_slow_reader_that_goes_away_mid_stream_gives_one_cancelled_record(gateway, upstream):
    """The caller stops reading, so the gateway waits on gRPC flow control to send the next
    message, and then cancels: the stream is closed where it stood (not cancelled inside an
    upstream read), and is recorded all the same."""
    piece = "x" * 4000
    upstream.reply(Reply(events=sse_events([stream_chunk(piece) for _ in range(2000)]
                                           + [stream_chunk(finish="stop")])))
    # Without BDP probing the caller's receive window stays small, and fills.
    channel = grpc.aio.insecure_channel(gateway.target, options=[("grpc.http2.bdp_probe", 0)])
    try:
        call = pb_grpc.CompletionStub(channel).StreamComplete(text_request("fast", stream=True), timeout=30,
                                                              metadata=auth(ALICE_KEY))
        first = await asyncio.wait_for(call.read(), WAIT_S)
        assert first.delta.text.startswith(piece)
        await asyncio.sleep(0.3)  # not a timing assertion: lets the window fill before the cancel
        call.cancel()
        await asyncio.wait_for(upstream.disconnected.wait(), WAIT_S)
    finally:
        await channel.close()

    [record] = await until_records(gateway, 1)
    assert (record.caller, record.route, record.provider, record.status) == ("alice", "fast", "mixrouter",
                                                                            "CANCELLED")
    assert record.estimated
    # What was forwarded before the caller left: at least the message it read, never all of it.
    assert estimate_tokens(len(piece)) <= record.output.total < estimate_tokens(2000 * len(piece))
    assert attempts_of(record) == [("mixrouter", "gemini-2.0-flash", "CANCELLED", "the call was cancelled")]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
async def test_a_call_the_gateway_stop_cuts_short_is_recorded_before_the_ledger_closes(gateway, upstream, stream):
    """The grace period ends with the call still running: the server cancels it, and its record
    is taken while it unwinds, though the server has stopped by then."""
    if stream:
        upstream.reply(Reply(events=sse_events([stream_chunk("Two people "), stream_chunk("at work.")]),
                             fault="stall"))
        call = gateway.stub.StreamComplete(text_request("fast", stream=True), timeout=30, metadata=auth(ALICE_KEY))
        await asyncio.wait_for(call.read(), WAIT_S)
    else:
        upstream.reply(Reply(fault="stall"))
        call = gateway.stub.Complete(text_request("fast"), timeout=30, metadata=auth(ALICE_KEY))
        await _until(lambda: len(upstream.received) == 1)

    await gateway.gateway.stop(grace=0.1)

    assert await call.code() == Code.UNAVAILABLE
    [record] = read_records(ledger_path(gateway))  # the ledger is closed: read its file
    assert (record.caller, record.route, record.status) == ("alice", "fast", "CANCELLED")
    assert record.estimated and record.input.total > 0
    assert attempts_of(record) == [("mixrouter", "gemini-2.0-flash", "CANCELLED", "the call was cancelled")]


async def test_a_unary_call_the_caller_cancels_mid_request_gives_one_cancelled_record(gateway, upstream):
    upstream.reply(Reply(fault="stall"))
    request = text_request("fast")

    call = gateway.stub.Complete(request, timeout=30, metadata=auth(ALICE_KEY))
    await _until(lambda: len(upstream.received) == 1)
    call.cancel()
    await asyncio.wait_for(upstream.disconnected.wait(), WAIT_S)

    [record] = await until_records(gateway, 1)
    assert (record.caller, record.route, record.provider, record.status) == ("alice", "fast", "mixrouter",
                                                                            "CANCELLED")
    # The upstream read the prompt: its tokens are estimated; nothing was answered.
    assert record.estimated
    assert record.input.total == estimate_tokens(request_text_bytes(request))
    assert record.output.total == 0
    assert record.ttft_ms is None
    assert attempts_of(record) == [("mixrouter", "gemini-2.0-flash", "CANCELLED", "the call was cancelled")]


async def _until(predicate: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), WAIT_S)


async def test_requests_and_their_records_pair_up_one_to_one(gateway, upstream):
    """Mixed outcomes on one gateway: each request that reached the provider has its own record."""
    upstream.reply(Reply(body=completion("gemini-2.0-flash", GEMINI_USAGE)),
                   Reply(status=503, body={"error": {"message": "overloaded"}}),
                   Reply(events=sse_events(recorded_stream())),
                   Reply(body=completion("gemini-2.0-flash", GEMINI_USAGE)))
    ids = {}
    call = gateway.stub.Complete(text_request("fast"), timeout=10, metadata=auth(ALICE_KEY))
    await call
    ids[request_id_of(await call.trailing_metadata())] = "OK"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Complete(text_request("fast"), timeout=10, metadata=auth(ALICE_KEY))
    ids[request_id_of(caught.value.trailing_metadata())] = "UNAVAILABLE"
    stream = gateway.stub.StreamComplete(text_request("fast", stream=True), timeout=10, metadata=auth(BOB_KEY))
    [m async for m in stream]
    ids[request_id_of(await stream.trailing_metadata())] = "OK"
    with pytest.raises(grpc.aio.AioRpcError):
        await gateway.stub.Complete(text_request("resilient"), timeout=10, metadata=auth(BOB_KEY))
    call = gateway.stub.Complete(seed_request(), timeout=10, metadata=auth(ALICE_KEY))
    await call
    ids[request_id_of(await call.trailing_metadata())] = "OK"

    records = await flushed_records(gateway)
    assert {r.request_id: r.status for r in records} == ids
    assert len(records) == len(ids) == len(upstream.received) == 4
    assert {r.caller for r in records} == {"alice", "bob"}
    assert [r.labels for r in records if r.caller == "bob"] == [REQUEST_LABELS]
