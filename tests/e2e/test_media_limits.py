"""Hostile media requests stay bounded (issue 10, item 1): URL parts per request, fetches in
flight per request, one byte count for the whole request, siblings cancelled on the first
failure, and other callers' fetches never starved by one request's slow parts.

Media hosts are FakeUpstreams on 127.0.0.1, allowed explicitly as in test_media_fetch.
"""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from tollway.service.media.policy import MIB
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json, mixrouter_config
from tests.support.upstream import FakeUpstream, Reply

Code = grpc.StatusCode
PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
# Generous guards for a loaded machine: reaching one fails the test, nothing is timed.
GUARD_S = 20


@pytest.fixture
async def media_host():
    host = await FakeUpstream().start()
    yield host
    await host.stop()


@pytest.fixture
async def slow_host():
    host = await FakeUpstream().start()
    host.default = Reply(fault="stall", headers={"content-type": "application/pdf"})
    yield host
    await host.stop()


def documents_request(urls: list[str], text: str = "summarize") -> pb.CompleteRequest:
    parts = [pb.Part(text=text)] + [pb.Part(document=pb.Media(url=url)) for url in urls]
    return pb.CompleteRequest(model="mixrouter/gpt-4o", messages=[pb.Message(role=pb.ROLE_USER, parts=parts)])


async def start_with_media(start_client, upstream, **media):
    config = {**mixrouter_config(upstream), "media": {"allow_networks": ["127.0.0.0/8"], **media}}
    return await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


async def until(condition, what: str) -> None:
    try:
        async with asyncio.timeout(GUARD_S):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"gave up waiting for {what}")


async def test_too_many_media_urls_are_refused_before_any_fetch(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream)
    urls = [f"{media_host.base_url}/{k}.pdf" for k in range(17)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(documents_request(urls), timeout=10)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == ("messages: the request has 17 media URLs; the limit per request is 16 "
                                   "(media.max_url_parts)")
    assert media_host.received == [] and upstream.received == []


async def test_fetched_bytes_count_against_one_limit_for_the_whole_request(start_client, upstream, media_host):
    """40 parts of 19 MB each (760 MB): refused once the request passes max_request_bytes,
    after reading about that much, not after buffering every part."""
    client = await start_with_media(start_client, upstream, max_url_parts=40)
    # Streamed without a Content-Length: only the running count can stop it.
    media_host.default = Reply(events=[PDF] + [b"x" * MIB] * 19, headers={"content-type": "application/pdf"})
    urls = [f"{media_host.base_url}/{k}.pdf" for k in range(40)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(documents_request(urls), timeout=60)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert re.fullmatch(r"messages\[0\]\.parts\[\d+\]\.document\.url: fetching it takes the request over "
                        r"50331648 bytes \(media\.max_request_bytes\)", err.value.details())
    # What was sent beyond the limit is what sat in socket buffers of the fetches in flight.
    print(f"media host sent {media_host.sent_bytes} bytes over {len(media_host.received)} fetches")
    assert media_host.sent_bytes < 2 * 48 * MIB
    assert len(media_host.received) < 40
    assert upstream.received == []


async def test_a_declared_length_over_what_the_request_has_left_is_refused_before_reading(
        start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream, max_request_bytes=4000)
    media_host.reply(Reply(body=PDF + b"x" * 5000, headers={"content-type": "application/pdf"}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(documents_request([f"{media_host.base_url}/a.pdf"]), timeout=10)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == ("messages[0].parts[1].document.url: fetching it takes the request over "
                                   "4000 bytes (media.max_request_bytes)")


async def test_the_requests_text_counts_toward_the_limit_too(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream, max_request_bytes=1000)
    media_host.reply(Reply(events=[PDF], headers={"content-type": "application/pdf"}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(documents_request([f"{media_host.base_url}/a.pdf"], text="t" * 900),
                                   timeout=10)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == ("messages[0].parts[1].document.url: fetching it takes the request over "
                                   "1000 bytes (media.max_request_bytes)")


async def test_the_first_failed_fetch_cancels_its_siblings(start_client, upstream, media_host, slow_host):
    client = await start_with_media(start_client, upstream, fetch_timeout_s=120)
    media_host.reply(Reply(status=404, body="gone"))
    urls = [f"{slow_host.base_url}/{k}.pdf" for k in range(3)] + [f"{media_host.base_url}/gone.pdf"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(documents_request(urls), timeout=60)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == "messages[0].parts[4].document.url: fetching the URL failed with HTTP 404"
    # The stalled siblings were abandoned at once, not left to run out their 120 s.
    await until(lambda: slow_host.disconnects == 3, "the stalled fetches to be closed")
    assert slow_host.active == 0


async def test_one_requests_slow_parts_do_not_starve_another_callers_fetch(
        start_client, upstream, media_host, slow_host):
    client = await start_with_media(start_client, upstream, max_url_parts=100, fetch_timeout_s=120)
    async def hostile_call():
        return await client.stub.Complete(documents_request([f"{slow_host.base_url}/{k}.pdf" for k in range(100)]),
                                          timeout=120)

    hostile = asyncio.create_task(hostile_call())
    try:
        await until(lambda: slow_host.active >= 4, "the hostile fetches to start")
        media_host.reply(Reply(body=PDF, headers={"content-type": "application/pdf"}))
        upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
        async with asyncio.timeout(GUARD_S):
            answer = await client.stub.Complete(documents_request([f"{media_host.base_url}/mine.pdf"]), timeout=60)
        assert answer.choices
        assert not hostile.done()
        # One request holds at most max_parallel_fetches_per_request connections.
        assert len(slow_host.received) == 4
    finally:
        hostile.cancel()
        with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
            await hostile


@pytest.mark.parametrize(("key", "value", "message"), [
    ("max_url_parts", -1, "media.max_url_parts must be >= 0"),
    ("max_parallel_fetches_per_request", 0, "media.max_parallel_fetches_per_request must be >= 1"),
])
def test_media_limit_keys_are_validated(key, value, message):
    from tollway.service.config.loader import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"media": {key: value}})
    assert str(err.value) == message


async def test_a_refused_request_keeps_none_of_the_bytes_it_read(start_client, upstream, media_host):
    """The refusal's traceback outlives the call (gRPC keeps the call's last exception): it must
    hold no fetched bytes. Measured with tracemalloc in this process, which runs the gateway."""
    import gc
    import tracemalloc

    client = await start_with_media(start_client, upstream, max_url_parts=10, max_request_bytes=8 * MIB)
    media_host.default = Reply(events=[PDF] + [b"x" * MIB] * 4, headers={"content-type": "application/pdf"})
    urls = [f"{media_host.base_url}/{k}.pdf" for k in range(10)]
    tracemalloc.start()
    try:
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.stub.Complete(documents_request(urls), timeout=60)
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details().endswith("fetching it takes the request over 8388608 bytes (media.max_request_bytes)")
    assert peak - before > 8 * MIB  # it did read up to the limit
    assert after - before < MIB


async def test_a_part_over_max_part_bytes_after_fetching_is_refused(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream, max_part_bytes=100)
    media_host.reply(Reply(body=PDF + b"x" * 200, headers={"content-type": "application/pdf"}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(documents_request([f"{media_host.base_url}/a.pdf"]), timeout=10)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == (f"messages[0].parts[1].document: inline media is {len(PDF) + 200} bytes; "
                                   "the limit per part is 100")
    assert upstream.received == []
