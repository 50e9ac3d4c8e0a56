"""Driving an adapter with nothing but payloads: settings, requests, responses, decoded streams."""

from __future__ import annotations

import base64
import json

import httpx
from httpx_sse import ServerSentEvent
from tollway.service.plugins.adapter import ProviderSettings
from tollway.v1 import completion_pb2 as pb
import tests.support as _root

W = pb.UsageWarning


FIXTURES = _root.FIXTURES


OPENAI_TEST_KEY = "tw-test-openai-key-0123456789abcdef"


def fixture_text(relative: str) -> str:
    return (FIXTURES / relative).read_text(encoding="utf-8")


def sse_events(raw: str) -> list[ServerSentEvent]:
    """The events of a recorded stream, as the engine's SSE reader hands them over."""
    events = []
    for block in raw.split("\n\n"):
        data = [line[len("data:"):].removeprefix(" ") for line in block.splitlines() if line.startswith("data:")]
        if data:
            events.append(ServerSentEvent(event="message", data="\n".join(data)))
    return events


def settings(name: str = "openai", kind: str = "openai", base_url: str = "https://api.openai.com/v1",
             api_key: str | None = OPENAI_TEST_KEY, **options) -> ProviderSettings:
    return ProviderSettings(name=name, kind=kind, base_url=base_url, api_key=api_key, options=options)


def respond(request: httpx.Request, status: int, body: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.Response(status, content=body, headers=headers or {}, request=request)


def decode_stream(adapter, raw: str, request: pb.StreamCompleteRequest, model: str, decoder=None):
    """(text per choice, summary) of a recorded stream, through the adapter's decoder."""
    decoder = decoder or adapter.stream_decoder(request, model)
    texts: dict[int, str] = {}
    for event in sse_events(raw):
        for message in decoder.feed(event):
            if message.HasField("delta"):
                texts[message.delta.choice_index] = texts.get(message.delta.choice_index, "") + message.delta.text
    assert decoder.finished
    return texts, decoder.summary()


def assert_buckets_add_up(usage: pb.Usage) -> None:
    i, o = usage.input, usage.output
    assert i.total == (i.text + i.image + i.audio + i.video + i.document + i.cache_read + i.cache_write_5m
                       + i.cache_write_1h + i.cache_write_unknown_ttl + i.unattributed)
    assert o.total == o.text + o.audio + o.image + o.reasoning + o.unattributed
    assert usage.total_tokens == i.total + o.total


def user(*parts: pb.Part) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, parts=list(parts))


def build_json(adapter, request, model: str = "gpt-4.1", *, stream: bool = False) -> dict:
    http_request = adapter.build_request(request, model, stream=stream)
    return json.loads(http_request.content)


WAV = (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x40\x1f\x00\x00\x80\x3e\x00\x00"
       b"\x02\x00\x10\x00data")


PDF = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00"
