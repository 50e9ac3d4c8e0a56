"""The seed request end to end: gRPC caller -> in-process gateway -> loopback MixRouter.

Asserts what the upstream received byte for byte (as JSON) and what the caller got back,
for unary and streaming calls.
"""

from __future__ import annotations

import base64

import grpc
import pytest
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json
from tests.support.seed import (  # noqa: F401
    SEED_AUDIO_URL,
    SEED_IMAGE_URL,
    SEED_TEXT,
    STREAM_CREATED,
    STREAM_ID,
    STREAM_USAGE,
    W,
    _chunk,
    _delta,
    recorded_stream,
    seed_fields,
    seed_request,
    seed_stream_request,
)
from tests.support.upstream import Reply, sse_events


def expected_upstream_body(*, stream: bool) -> dict:
    """The seed request as MixRouter got it from our users, minus their "steam" typo."""
    body = fixture_json("mixrouter/seed_request.json")
    del body["steam"]
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


# -- unary ---------------------------------------------------------------------------------


async def test_seed_request_reaches_upstream_exactly(client, upstream):
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))

    await client.stub.Complete(seed_request(), timeout=10)

    assert len(upstream.received) == 1
    got = upstream.received[0]
    assert got.method == "POST"
    assert got.path == "/v1/chat/completions"
    assert got.query == ""
    assert got.headers["Authorization"] == f"Bearer {MIXROUTER_TEST_KEY}"
    assert got.headers["Content-Type"] == "application/json"
    body = got.json()
    assert body == expected_upstream_body(stream=False)
    # Spelled out as well, so a failure names the part that differs.
    assert body["model"] == "gemini-2.0-flash"
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": SEED_TEXT},
                {"type": "image_url", "image_url": {"url": SEED_IMAGE_URL}},
                {"type": "audio_url", "audio_url": {"url": SEED_AUDIO_URL}},
            ],
        }
    ]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stream"]) == (2000, 0.8, 0.1, False)
    assert "steam" not in body


async def test_seed_response_is_normalized(client, upstream):
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))

    response = await client.stub.Complete(seed_request(), timeout=10)

    assert response.id == "chatcmpl-toio20251226074613833316175pDor54M8"
    assert response.model == "gemini-2.0-flash"
    assert response.provider == "mixrouter"
    assert response.created.seconds == 1766735188
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == pb.FINISH_REASON_STOP
    assert choice.raw_finish_reason == "stop"
    assert choice.message.role == pb.ROLE_ASSISTANT
    text = "".join(p.text for p in choice.message.parts)
    assert text.startswith("The image depicts two people in an office setting.")
    assert text.endswith("The color scheme is predominantly blue and white.")

    usage = response.usage
    # prompt_tokens 1986 = text 5 + audio 175 + 1806 the relay did not attribute (USAGE.md rule 1);
    # image_tokens 0 is a relay's "not filled" (rule 2), so no image bucket is invented.
    assert usage.input == pb.InputUsage(total=1986, text=5, audio=175, unattributed=1806)
    # completion_tokens_details are all relay zeros: the 83 output tokens are unattributed.
    assert usage.output.total == 83
    assert usage.output.text == 0 and usage.output.reasoning == 0
    assert usage.output.unattributed == 83
    assert usage.total_tokens == 2069 == 1986 + 83
    assert W.USAGE_WARNING_INPUT_MODALITY_DETAILS_INCOMPLETE in usage.warnings
    assert W.USAGE_WARNING_PROVIDER_TOTAL_MISMATCH not in usage.warnings
    assert W.USAGE_WARNING_DETAILS_EXCEED_TOTAL not in usage.warnings
    assert not usage.estimated
    assert usage.provider_reported.total_tokens == 2069


async def test_inline_bytes_are_sent_as_data_urls(client, upstream):
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    image = b"\x89PNG\r\n\x1a\n-not-a-real-image"
    audio = b"RIFF\x00\x00\x00\x00WAVEfmt "
    request = pb.CompleteRequest(
        model="mixrouter/gemini-2.0-flash",
        messages=[
            pb.Message(role=pb.ROLE_SYSTEM, parts=[pb.Part(text="Be brief.")]),
            pb.Message(
                role=pb.ROLE_USER,
                parts=[
                    pb.Part(text="what is this?"),
                    pb.Part(image=pb.Media(data=image, mime_type="image/png")),
                    pb.Part(audio=pb.Media(data=audio, mime_type="audio/wav")),
                ],
            ),
        ],
        seed=0,
        stop=["END", "STOP"],
    )

    await client.stub.Complete(request, timeout=10)

    body = upstream.received[0].json()
    assert body == {
        "model": "gemini-2.0-flash",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url",
                     "image_url": {"url": "data:image/png;base64," + base64.b64encode(image).decode()}},
                    {"type": "audio_url",
                     "audio_url": {"url": "data:audio/wav;base64," + base64.b64encode(audio).decode()}},
                ],
            },
        ],
        # seed 0 is set, not "unset": proto3 optional keeps the difference.
        "seed": 0,
        "stop": ["END", "STOP"],
        "stream": False,
    }


# -- streaming -----------------------------------------------------------------------------











async def _collect(call) -> tuple[list[pb.TextDelta], list[pb.StreamSummary]]:
    deltas, summaries = [], []
    async for message in call:
        if message.HasField("delta"):
            deltas.append(message.delta)
        else:
            summaries.append(message.summary)
    return deltas, summaries


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
async def test_stream_with_usage(client, upstream, newline):
    upstream.reply(Reply(events=sse_events(recorded_stream()), newline=newline))

    call = client.stub.StreamComplete(seed_stream_request(), timeout=10)
    deltas, summaries = await _collect(call)

    assert await call.code() == grpc.StatusCode.OK
    body = upstream.received[0].json()
    assert body == expected_upstream_body(stream=True)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert upstream.received[0].headers["Accept"] == "text/event-stream"
    assert upstream.received[0].headers["Authorization"] == f"Bearer {MIXROUTER_TEST_KEY}"

    # Deltas in upstream order with their choice index; the empty role-only delta sends nothing.
    assert [(d.choice_index, d.text) for d in deltas] == [
        (0, "The image "),
        (1, "Two people "),
        (0, "shows an office."),
        (1, "at work."),
    ]
    assert len(summaries) == 1
    summary = summaries[0]
    assert (summary.id, summary.model, summary.provider) == (STREAM_ID, "gemini-2.0-flash", "mixrouter")
    assert summary.created.seconds == STREAM_CREATED
    assert [(f.index, f.finish_reason, f.raw_finish_reason) for f in summary.finishes] == [
        (0, pb.FINISH_REASON_STOP, "stop"),
        (1, pb.FINISH_REASON_LENGTH, "length"),
    ]
    usage = summary.usage
    assert usage.input == pb.InputUsage(total=1986, text=5, audio=175, unattributed=1806)
    assert (usage.output.total, usage.output.unattributed) == (12, 12)
    assert usage.total_tokens == 1998
    assert W.USAGE_WARNING_INPUT_MODALITY_DETAILS_INCOMPLETE in usage.warnings
    assert not usage.estimated


async def test_stream_cut_without_done_ends_unavailable(client, upstream):
    # Everything but the terminal [DONE], then the connection drops.
    upstream.reply(Reply(events=sse_events(recorded_stream(), done=False), fault="cut"))

    call = client.stub.StreamComplete(seed_stream_request(), timeout=10)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            received.append(message)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "mixrouter: upstream closed the connection"
    assert await call.code() == grpc.StatusCode.UNAVAILABLE
    # Never a summary: a cut stream is not a finished one.
    assert not any(m.HasField("summary") for m in received)


async def test_stream_ended_cleanly_without_done_is_truncated(client, upstream):
    # The body ends in good order but the terminal event never came.
    upstream.reply(Reply(events=sse_events(recorded_stream(), done=False)))

    call = client.stub.StreamComplete(seed_stream_request(), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _collect(call)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "mixrouter: upstream stream ended before its final event (truncated)"


async def test_stream_without_usage_is_estimated(client, upstream):
    upstream.reply(Reply(events=sse_events(recorded_stream(with_usage=False))))

    call = client.stub.StreamComplete(seed_stream_request(), timeout=10)
    deltas, summaries = await _collect(call)

    assert await call.code() == grpc.StatusCode.OK
    assert len(deltas) == 4
    usage = summaries[0].usage
    assert usage.estimated
    # An estimate states no modality breakdown, so only the missing usage is warned about.
    assert set(usage.warnings) == {W.USAGE_WARNING_USAGE_MISSING}
    # The estimate is about four bytes a token of the text that went each way (media sizes
    # say nothing about their token counts), all unattributed.
    output_bytes = len("The image Two people shows an office.at work.".encode())
    assert usage.output == pb.OutputUsage(total=(output_bytes + 3) // 4, unattributed=(output_bytes + 3) // 4)
    input_bytes = len("请分析下面附件的内容".encode())
    assert usage.input == pb.InputUsage(total=(input_bytes + 3) // 4, unattributed=(input_bytes + 3) // 4)
    assert usage.total_tokens == usage.input.total + usage.output.total


# -- ListModels ----------------------------------------------------------------------------


async def test_list_models_names_mixrouter_and_its_modalities(client):
    response = await client.stub.ListModels(pb.ListModelsRequest(), timeout=10)

    assert [p.name for p in response.providers] == ["mixrouter"]
    info = response.providers[0]
    assert info.kind == "mixrouter"
    assert list(info.input_modalities) == [
        pb.MODALITY_TEXT, pb.MODALITY_IMAGE, pb.MODALITY_AUDIO, pb.MODALITY_VIDEO, pb.MODALITY_DOCUMENT
    ]
    for mime in ("image/jpeg", "image/png", "audio/wav", "audio/mpeg", "video/mp4", "application/pdf"):
        assert mime in info.mime_types
    assert list(info.mime_types) == sorted(info.mime_types)
