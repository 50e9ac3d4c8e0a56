"""Modality warnings carry a signal: they fire only where the provider stated a modality
breakdown that does not add up to its total (USAGE.md rule 1), never on a plain answer."""

from __future__ import annotations

from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import fixture_json
from tests.support.seed import seed_request
from tests.support.upstream import Reply

W = pb.UsageWarning


async def test_a_plain_answer_with_no_stated_breakdown_carries_no_modality_warning(client, upstream):
    body = fixture_json("mixrouter/seed_response.json")
    # What OpenAI sends for a text answer: details of zeros, that is no breakdown (rule 2).
    body["usage"] = {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                     "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                   "accepted_prediction_tokens": 0,
                                                   "rejected_prediction_tokens": 0}}
    upstream.reply(Reply(body=body))

    response = await client.stub.Complete(seed_request(), timeout=5)

    assert response.usage.input == pb.InputUsage(total=19, unattributed=19)
    assert response.usage.output == pb.OutputUsage(total=10, unattributed=10)
    assert list(response.usage.warnings) == []


async def test_a_stated_breakdown_that_does_not_add_up_is_still_warned(client, upstream):
    # The MixRouter seed: text 5 + audio 175 of 1986 prompt tokens; its output details are zeros.
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))

    response = await client.stub.Complete(seed_request(), timeout=5)

    assert response.usage.input.unattributed == 1806
    assert list(response.usage.warnings) == [W.USAGE_WARNING_INPUT_MODALITY_DETAILS_INCOMPLETE]
