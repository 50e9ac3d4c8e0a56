"""Absurd usage figures, oversized usage queries, and what a plain answer's usage says:
against `tollway serve`. Ledger file modes are checked after every test of the suite."""

from __future__ import annotations

import json

import grpc

from tests.support.served import Served
from tests.support.upstream import Reply
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode
W = pb.UsageWarning
INT64_MAX = 2**63 - 1


def request(model: str = "openai/gpt-4.1") -> pb.CompleteRequest:
    return pb.CompleteRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="Hi.")])])


def answer(usage: dict) -> bytes:
    # The standard library writes integers of any size (orjson stops at 64 bits).
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
            "usage": usage}).encode()


async def summary(served: Served, *, caller: str = "alice", **fields) -> pb.GetUsageSummaryResponse:
    call = served.stub().GetUsageSummary(pb.GetUsageSummaryRequest(**fields), metadata=served.auth(caller),
                                         timeout=10)
    try:
        response = await call
    except grpc.aio.AioRpcError as err:
        served.seen.error(err)
        raise
    served.seen.response(response)
    return response


async def test_absurd_usage_figures_are_flagged_unpriced_and_summaries_still_add_up(served: Served):
    await served.start()
    absurd = [{"prompt_tokens": 5 * 10**18, "completion_tokens": 2, "total_tokens": 5 * 10**18 + 2},
              {"prompt_tokens": 10**30, "completion_tokens": 2, "total_tokens": 7},
              {"prompt_tokens": "12", "completion_tokens": 2, "total_tokens": 14},
              {"prompt_tokens": -40, "completion_tokens": 2, "total_tokens": 7},
              # A figure that quotes the key: refused figures are named in the answer, never the key.
              {"prompt_tokens": served.provider_keys["OPENAI_API_KEY"], "completion_tokens": 2}]
    for usage in absurd:
        served.upstream.reply(Reply(body=answer(usage)))
        response = await served.complete(request())
        assert W.USAGE_WARNING_FIGURE_OUT_OF_RANGE in response.usage.warnings, (usage, response.usage)
        assert response.cost.unpriced, (usage, response.cost)
        assert 0 <= response.usage.input.total < 10**13

    # Twice: a summary over records with absurd figures must not overflow, ever.
    for _ in range(2):
        rows = (await summary(served)).rows
        assert rows and all(0 <= row.input.total <= INT64_MAX and row.total_tokens <= INT64_MAX for row in rows)


async def test_a_usage_query_with_thousands_of_labels_is_refused_without_a_path(served: Served):
    await served.start()
    many = {f"k{i}": "v" for i in range(5000)}
    for fields in ({"labels": many}, {"group_by": [pb.USAGE_GROUPING_LABEL],
                                      "group_by_label_keys": [f"k{i}" for i in range(5000)]}):
        try:
            await summary(served, caller="bob", **fields)
            raise AssertionError("a usage query with 5000 labels was answered")
        except grpc.aio.AioRpcError as err:
            assert err.code() == Code.INVALID_ARGUMENT, (err.code(), err.details())
            assert "/" not in err.details().replace("n/a", ""), err.details()
            assert str(served.workdir) not in err.details()


async def test_a_plain_answer_with_no_modality_breakdown_carries_no_incomplete_warning(served: Served):
    await served.start()
    served.upstream.reply(Reply(body=answer({"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})))
    response = await served.complete(request())
    assert list(response.usage.warnings) == []
    assert response.usage.input.unattributed == 9
    assert response.usage.output.unattributed == 2

    # A stated breakdown that does not add up (the MixRouter seed's shape) still warns.
    served.upstream.reply(Reply(body=answer({
        "prompt_tokens": 1986, "completion_tokens": 2, "total_tokens": 1988,
        "prompt_tokens_details": {"text_tokens": 5, "audio_tokens": 175, "cached_tokens": 0}})))
    response = await served.complete(request("mixrouter/gemini-2.0-flash"))
    assert W.USAGE_WARNING_INPUT_MODALITY_DETAILS_INCOMPLETE in response.usage.warnings
    assert response.usage.input.unattributed == 1806
