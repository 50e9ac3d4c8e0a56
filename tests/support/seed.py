"""The seed request (shared/seed/mixrouter-example.md) and a recorded MixRouter stream."""

from __future__ import annotations

from tollway.v1 import completion_pb2 as pb

W = pb.UsageWarning


SEED_TEXT = "请分析下面附件的内容"


SEED_IMAGE_URL = "https://s2.loli.net/2024/02/01/QSWVdw9bX56gj7O.jpg"


SEED_AUDIO_URL = "https://cdn.openai.com/API/docs/audio/alloy.wav"


def seed_fields() -> dict:
    """The seed request in the contract's words."""
    return dict(
        model="mixrouter/gemini-2.0-flash",
        messages=[
            pb.Message(
                role=pb.ROLE_USER,
                parts=[
                    pb.Part(text=SEED_TEXT),
                    pb.Part(image=pb.Media(url=SEED_IMAGE_URL)),
                    pb.Part(audio=pb.Media(url=SEED_AUDIO_URL)),
                ],
            )
        ],
        max_tokens=2000,
        temperature=0.8,
        top_p=0.1,
    )


def seed_request() -> pb.CompleteRequest:
    return pb.CompleteRequest(**seed_fields())


def seed_stream_request() -> pb.StreamCompleteRequest:
    return pb.StreamCompleteRequest(**seed_fields())


STREAM_ID = "chatcmpl-stream-0001"


STREAM_CREATED = 1766735200


def _chunk(choices: list, usage: dict | None = None) -> dict:
    """One chat.completion.chunk in the shape OpenAI-format servers send it."""
    return {
        "id": STREAM_ID,
        "object": "chat.completion.chunk",
        "created": STREAM_CREATED,
        "model": "gemini-2.0-flash",
        "choices": choices,
        "usage": usage,
    }


def _delta(index: int, content: str | None = None, finish: str | None = None, role: str | None = None) -> dict:
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {"index": index, "delta": delta, "finish_reason": finish}


STREAM_USAGE = {
    "prompt_tokens": 1986,
    "completion_tokens": 12,
    "total_tokens": 1998,
    "prompt_tokens_details": {"cached_tokens": 0, "text_tokens": 5, "audio_tokens": 175, "image_tokens": 0},
    "completion_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "reasoning_tokens": 0},
}


def recorded_stream(*, with_usage: bool = True) -> list[dict]:
    """Two choices interleaved, finish reasons on their own chunks, usage on a chunk with no choices."""
    chunks = [
        _chunk([_delta(0, "", role="assistant")]),
        _chunk([_delta(0, "The image ")]),
        _chunk([_delta(1, "Two people ")]),
        _chunk([_delta(0, "shows an office.")]),
        _chunk([_delta(1, "at work.")]),
        _chunk([_delta(0, finish="stop")]),
        _chunk([_delta(1, finish="length")]),
    ]
    if with_usage:
        chunks.append(_chunk([], usage=STREAM_USAGE))
    return chunks
