"""An upstream that reports absurd usage: the call still answers OK with the figure refused,
named and warned about, the response and its ledger record are unpriced (never $0), and every
later GetUsageSummary that includes the record still answers, on SQLite and PostgreSQL."""

from __future__ import annotations

import grpc
import pytest
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json, mixrouter_config
from tests.support.ledger import pg_admin, pg_schema, with_schema  # noqa: F401 - fixtures
from tests.support.ledger_calls import REQUEST_ID_KEY
from tests.support.seed import recorded_stream, seed_request, seed_stream_request
from tests.support.upstream import Reply, sse_events

W = pb.UsageWarning


@pytest.fixture(params=["sqlite", "postgresql"])
async def gateway(request, start_client, upstream, tmp_path):
    config = mixrouter_config(upstream)
    if request.param == "postgresql":
        dsn = with_schema(request.getfixturevalue("pg_admin"), request.getfixturevalue("pg_schema"))
        config["ledger"] = {"dsn": dsn, "journal_dir": str(tmp_path / "journal")}
    return await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


def seed_with_prompt_tokens(value: object) -> dict:
    body = fixture_json("mixrouter/seed_response.json")
    body["usage"]["prompt_tokens"] = value
    return body


@pytest.mark.parametrize("value, quoted", [
    (5 * 10**18, "5000000000000000000"),
    (2**64 - 1, "18446744073709551615"),
    (1e30, "1e+30"),
    ("1986", "'1986'"),
    (-1986, "-1986"),
])
async def test_an_absurd_prompt_figure_is_refused_flagged_unpriced_and_summaries_still_answer(
        gateway, upstream, value, quoted):
    # Twice: two records of 5e18 tokens each used to overflow every summary over both.
    for _ in range(2):
        upstream.reply(Reply(body=seed_with_prompt_tokens(value)))
        call = gateway.stub.Complete(seed_request(), timeout=10)
        response = await call

        usage = response.usage
        assert list(usage.refused_figures) == [f"prompt_tokens={quoted}"]
        assert W.USAGE_WARNING_FIGURE_OUT_OF_RANGE in usage.warnings
        # The stated breakdown (text 5, audio 175) stays, clamped to the input it can belong
        # to: none, since the total was refused.
        assert usage.input.total == 0 and usage.output == pb.OutputUsage(total=83, unattributed=83)
        assert response.cost.unpriced and response.cost.total_nano_usd == 0
        assert response.cost.unpriced_reason == (
            f"usage for gemini-2.0-flash has figures that are not token counts: prompt_tokens={quoted}")

        request_id = dict(await call.trailing_metadata())[REQUEST_ID_KEY]
        ledger = gateway.gateway.runtime.ledger
        assert await ledger.flush(10)
        record = await ledger.get(request_id)
        assert record is not None
        assert "FIGURE_OUT_OF_RANGE" in record.warnings
        assert record.unpriced and record.unpriced_reason == response.cost.unpriced_reason
        assert record.input.total == 0

    [row] = (await gateway.stub.GetUsageSummary(pb.GetUsageSummaryRequest(), timeout=10)).rows
    assert (row.requests, row.unpriced_requests, row.cost_nano_usd) == (2, 2, 0)
    assert (row.input.total, row.output.total, row.total_tokens) == (0, 166, 166)



async def test_a_stream_whose_final_usage_is_absurd_ends_ok_with_the_figure_refused(gateway, upstream):
    chunks = recorded_stream()
    chunks[-1]["usage"] = {**chunks[-1]["usage"], "completion_tokens": 2**64 - 1}
    upstream.reply(Reply(events=sse_events(chunks)))

    call = gateway.stub.StreamComplete(seed_stream_request(), timeout=10)
    summaries = [m.summary async for m in call if m.HasField("summary")]

    assert await call.code() == grpc.StatusCode.OK
    [summary] = summaries
    assert list(summary.usage.refused_figures) == ["completion_tokens=18446744073709551615"]
    assert W.USAGE_WARNING_FIGURE_OUT_OF_RANGE in summary.usage.warnings
    assert summary.usage.output.total == 0
    assert summary.cost.unpriced
