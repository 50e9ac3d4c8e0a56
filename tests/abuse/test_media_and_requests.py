"""Hostile media URLs, oversized and malformed requests: against `tollway serve`.

Gemini takes no media by URL, so the gateway fetches every URL part of a Gemini request; the
loopback upstream doubles as the media host (paths under /media/), allowed by [media].
"""

from __future__ import annotations

import asyncio

import grpc

from tests.support.served import Served
from tests.support.upstream import Received, Reply
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode
MIB = 1024 * 1024
GEMINI = "gemini/gemini-2.5-flash"
MEDIA = {"media": {"allow_networks": ["127.0.0.0/8"]}}
PDF_19MB = b"%PDF-1.4\n" + b"0" * (19 * MIB)
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
GEMINI_ANSWER = {
    "candidates": [{"content": {"role": "model", "parts": [{"text": "A document."}]}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 3, "totalTokenCount": 13},
    "modelVersion": "gemini-2.5-flash",
}


def request(*parts: pb.Part, model: str = GEMINI, **fields) -> pb.CompleteRequest:
    return pb.CompleteRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER, parts=list(parts))], **fields)


def text(value: str) -> pb.Part:
    return pb.Part(text=value)


def document(url: str) -> pb.Part:
    return pb.Part(document=pb.Media(url=url, mime_type="application/pdf"))


def image(url: str) -> pb.Part:
    return pb.Part(image=pb.Media(url=url))


class MediaHost:
    """Answers /media/ paths of the loopback upstream; counts what it was asked for."""

    def __init__(self, served: Served, *, big: bytes = PDF_19MB, slow_s: float = 0.0) -> None:
        self.requests = 0
        self.big = big
        self.slow_s = slow_s
        served.upstream.responder = self.respond

    def respond(self, received: Received) -> Reply | None:
        if received.path.startswith("/media/big"):
            self.requests += 1
            return Reply(body=self.big, headers={"content-type": "application/pdf"})
        if received.path.startswith("/media/slow"):
            self.requests += 1
            return Reply(body=PNG, headers={"content-type": "image/png"}, delay_s=self.slow_s)
        if received.path.startswith("/media/png"):
            return Reply(body=PNG, headers={"content-type": "image/png"})
        if ":generateContent" in received.path:
            return Reply(body=GEMINI_ANSWER)
        return None


def url(served: Served, path: str) -> str:
    return f"{served.upstream.base_url}/media/{path}"


async def test_forty_19mb_documents_are_refused_without_buffering_them(served: Served):
    await served.start(MEDIA)
    host = MediaHost(served)

    err = await served.failure(request(text("Summarize."), *(document(url(served, f"big-{i}.pdf")) for i in range(40))))

    assert err.code() == Code.INVALID_ARGUMENT, err.details()
    assert "limit" in err.details() or "at most" in err.details(), err.details()
    # At most the request's byte budget was read: 48 MiB is three 19 MB documents (the fourth
    # passes it); parallel fetches may each have started.
    assert host.requests <= 8, f"{host.requests} documents were fetched"


async def test_documents_past_the_request_budget_stop_the_fetch_at_once(served: Served):
    await served.start(MEDIA)
    host = MediaHost(served)

    err = await served.failure(request(text("Summarize."), *(document(url(served, f"big-{i}.pdf")) for i in range(6))))

    assert err.code() == Code.INVALID_ARGUMENT, err.details()
    assert "max_request_bytes" in err.details() or "per request" in err.details(), err.details()
    assert host.requests <= 6


async def test_slow_media_of_one_caller_does_not_starve_another_callers_fetch(served: Served, ups):
    """A hundred and twenty fetches at one slow host (ten requests of twelve parts) and one small
    fetch at another host: the small one is answered while the slow ones still wait."""
    await served.start(MEDIA)
    MediaHost(served, slow_s=6.0)
    other_host = ups[0]
    other_host.responder = lambda received: Reply(body=PNG, headers={"content-type": "image/png"})
    hostile = [asyncio.create_task(served.complete(
        request(text("Look."), *(image(url(served, f"slow-{r}-{i}.png")) for i in range(12))), caller="bob"))
        for r in range(10)]
    await asyncio.sleep(0.5)  # the hostile fetches are all waiting on the slow host now

    answer = await served.complete(request(text("Look."), image(f"{other_host.base_url}/media/png-small.png")),
                                   caller="alice", timeout=4.0)

    assert answer.choices[0].message.parts[0].text == "A document."
    assert not any(task.done() for task in hostile), "the slow fetches ended before the other caller's"
    for task in hostile:
        task.cancel()
    await asyncio.gather(*hostile, return_exceptions=True)


async def test_malformed_media_urls_are_invalid_argument_naming_the_part(served: Served):
    await served.start(MEDIA)
    MediaHost(served)
    bad = ["http://127.000.000.001/x.png", "http://xn--a.com/x.png", f"http://{'a' * 70}.example/x.png",
           "http://evil.example%2f@127.0.0.1/x.png", "http://[::1/x.png", "http://exa mple.com/x.png"]
    for model in (GEMINI, "openai/gpt-4.1"):
        for value in bad:
            err = await served.failure(request(text("Look."), image(value), model=model))
            assert err.code() in (Code.INVALID_ARGUMENT, Code.PERMISSION_DENIED), (model, value, err.details())
            assert "messages[0].parts[1].image" in err.details(), (model, value, err.details())
            assert "Traceback" not in err.details()


async def test_malformed_protobuf_is_invalid_argument(served: Served):
    await served.start()
    assert served.channel is not None
    raw = served.channel.unary_unary("/tollway.v1.Completion/Complete")
    try:
        await raw(b"\x0a\xff\xff\xff\xff\x0f garbage", metadata=served.auth(), timeout=5)
        raise AssertionError("a malformed request was answered")
    except grpc.aio.AioRpcError as err:
        served.seen.error(err)
        assert err.code() == Code.INVALID_ARGUMENT, (err.code(), err.details())
        assert "Traceback" not in (err.details() or "")


async def test_an_empty_text_part_is_invalid_argument(served: Served):
    await served.start()
    err = await served.failure(request(text(""), model="openai/gpt-4.1"))
    assert err.code() == Code.INVALID_ARGUMENT
    assert err.details().startswith("messages[0].parts[0].text: "), err.details()


async def test_thousands_of_labels_and_huge_label_values_are_refused(served: Served):
    await served.start()
    many = {f"k{i}": "v" for i in range(2000)}
    err = await served.failure(request(text("Hi."), model="openai/gpt-4.1", labels=many))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "labels" in err.details(), err.details()

    err = await served.failure(request(text("Hi."), model="openai/gpt-4.1", labels={"team": "x" * (20 * MIB)}))
    assert err.code() == Code.INVALID_ARGUMENT
    assert "labels" in err.details(), err.details()


async def test_eight_concurrent_48mb_texts_leave_memory_where_it_was(served: Served):
    await served.start()
    served.upstream.default = Reply(body={"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                       "finish_reason": "stop"}],
                                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    big = "x" * (48 * MIB)
    results = await asyncio.gather(*(served.failure(request(text(big), model="openai/gpt-4.1")) for _ in range(8)),
                                   return_exceptions=True)
    for result in results:
        assert isinstance(result, grpc.aio.AioRpcError), result
        assert result.code() in (Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED), result.details()
    # The invariants then check memory came back within 50 MB of the baseline.
