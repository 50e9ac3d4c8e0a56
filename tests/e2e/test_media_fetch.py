"""The gateway fetches URL media for providers that need bytes: the SSRF guard and the limits.

Media hosts are real HTTP servers on 127.0.0.1; loopback is exactly what the guard must
refuse, so tests allow it explicitly where a fetch is meant to succeed.
"""

from __future__ import annotations

import base64
import socket

import grpc
import pytest
from aiohttp.abc import AbstractResolver
from tollway.service.errors import GatewayError
from tollway.service.media.fetch import MediaFetcher
from tollway.service.media.policy import MediaPolicy
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json, mixrouter_config
from tests.support.upstream import FakeUpstream, Reply

PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture
async def media_host():
    host = await FakeUpstream().start()
    yield host
    await host.stop()


def document_request(url: str, mime_type: str = "") -> pb.CompleteRequest:
    return pb.CompleteRequest(
        model="mixrouter/gpt-4o",
        messages=[pb.Message(role=pb.ROLE_USER, parts=[
            pb.Part(text="summarize"), pb.Part(document=pb.Media(url=url, mime_type=mime_type))])],
    )


async def start_with_media(start_client, upstream, media: dict):
    config = {**mixrouter_config(upstream), "media": media}
    return await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


async def test_document_url_is_fetched_and_inlined_for_a_provider_that_needs_bytes(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream, {"allow_networks": ["127.0.0.0/8"]})
    media_host.reply(Reply(body=PDF, headers={"content-type": "application/pdf"}))
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))

    await client.stub.Complete(document_request(f"{media_host.base_url}/report.pdf"), timeout=5)

    assert media_host.received[0].path == "/report.pdf"
    sent = upstream.received[0].json()["messages"][0]["content"][1]
    assert sent["type"] == "file"
    assert sent["file"]["file_data"] == "data:application/pdf;base64," + base64.b64encode(PDF).decode()


async def test_loopback_is_refused_without_an_allow_entry(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream, {})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(document_request(f"{media_host.base_url}/report.pdf"), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == (
        "messages[0].parts[1].document.url: the URL's host is not allowed for media fetching")
    assert media_host.received == [] and upstream.received == []


async def test_a_name_that_resolves_to_loopback_is_refused(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream, {})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(document_request(f"http://localhost:{media_host.port}/r.pdf"), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "document.url: the URL's host is not allowed" in err.value.details()
    assert media_host.received == []


async def test_redirect_from_an_allowed_host_into_loopback_is_refused(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream, {"allow_hosts": ["localhost"]})
    media_host.reply(Reply(status=302, headers={"location": f"http://127.0.0.1:{media_host.port}/internal"}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(document_request(f"http://localhost:{media_host.port}/r.pdf"), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "the URL's host is not allowed" in err.value.details()
    # The first hop was fetched, the redirect target never was.
    assert [r.path for r in media_host.received] == ["/r.pdf"]
    assert upstream.received == []


async def test_redirects_are_followed_up_to_the_limit(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream, {"allow_networks": ["127.0.0.0/8"], "max_redirects": 1})
    hop = f"{media_host.base_url}/next"
    media_host.reply(Reply(status=302, headers={"location": hop}), Reply(status=301, headers={"location": hop}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(document_request(f"{media_host.base_url}/r.pdf"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "messages[0].parts[1].document.url: the URL redirected more than 1 times"


async def test_body_over_the_size_limit_is_refused_while_streaming(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream, {"allow_networks": ["127.0.0.0/8"], "max_fetch_bytes": 1000})
    # Streamed without a Content-Length, so only the running count can catch it.
    media_host.reply(Reply(events=[PDF + b"x" * 5000], headers={"content-type": "application/pdf"}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(document_request(f"{media_host.base_url}/big.pdf"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "messages[0].parts[1].document.url: the media is larger than the 1000-byte limit"


async def test_content_that_is_not_the_parts_kind_is_refused(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream, {"allow_networks": ["127.0.0.0/8"]})
    media_host.reply(Reply(body=PNG, headers={"content-type": "application/pdf"}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(document_request(f"{media_host.base_url}/fake.pdf"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "messages[0].parts[1].document.url: fetched content is image/png, not document"


async def test_http_error_from_the_media_host(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream, {"allow_networks": ["127.0.0.0/8"]})
    media_host.reply(Reply(status=404, body="not here"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(document_request(f"{media_host.base_url}/gone.pdf"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "messages[0].parts[1].document.url: fetching the URL failed with HTTP 404"


async def test_slow_media_host_times_out_inside_the_fetch_budget(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream,
                                    {"allow_networks": ["127.0.0.0/8"], "fetch_timeout_s": 0.2})
    media_host.reply(Reply(body=PDF, delay_s=2))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(document_request(f"{media_host.base_url}/slow.pdf"), timeout=5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.value.details() == "messages[0].parts[1].document.url: fetching the URL timed out"


async def test_non_http_scheme_is_refused_before_any_fetch(start_client, upstream):
    client = await start_with_media(start_client, upstream, {})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(document_request("file:///etc/passwd"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "messages[0].parts[1].document.url: is not a valid http(s) or data: URL"


async def test_inline_data_over_the_part_limit_is_refused(start_client, upstream):
    client = await start_with_media(start_client, upstream, {"max_part_bytes": 100})
    request = pb.CompleteRequest(model="mixrouter/gpt-4o", messages=[pb.Message(role=pb.ROLE_USER, parts=[
        pb.Part(image=pb.Media(data=b"\x89PNG" + b"0" * 200, mime_type="image/png"))])])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "messages[0].parts[0].image: inline media is 204 bytes; the limit per part is 100"
    assert upstream.received == []


async def test_inline_data_over_the_request_limit_is_refused(start_client, upstream):
    client = await start_with_media(start_client, upstream, {"max_part_bytes": 300, "max_request_bytes": 500})
    image = pb.Part(image=pb.Media(data=b"0" * 300, mime_type="image/png"))
    request = pb.CompleteRequest(model="mixrouter/gpt-4o",
                                 messages=[pb.Message(role=pb.ROLE_USER, parts=[image, image])])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "messages: inline media totals 600 bytes; the limit per request is 500"


class StaticResolver(AbstractResolver):
    """DNS answers fixed by the test: names that resolve to private ranges, without a DNS server."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [{"hostname": host, "host": self.answers[host], "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self):
        pass


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.10", "172.16.5.5", "169.254.169.254", "224.0.0.1",
                                     "100.64.0.1", "0.0.0.0"])
async def test_names_resolving_to_non_public_addresses_are_refused(address):
    fetcher = MediaFetcher(MediaPolicy(), resolver=StaticResolver({"intranet.test": address}))
    await fetcher.start()
    try:
        with pytest.raises(GatewayError) as err:
            await fetcher.fetch("messages[0].parts[0].image.url", pb.MODALITY_IMAGE,
                                pb.Media(url="http://intranet.test/a.png"), budget=5)
    finally:
        await fetcher.aclose()
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.message == "messages[0].parts[0].image.url: the URL's host is not allowed for media fetching"
    assert address not in err.value.message


@pytest.mark.parametrize("url", ["http://10.0.0.1/a.png", "http://[::1]/a.png", "http://[::ffff:127.0.0.1]/a.png",
                                 "http://169.254.169.254/latest/meta-data"])
async def test_ip_literals_in_non_public_ranges_are_refused(url):
    fetcher = MediaFetcher(MediaPolicy())
    await fetcher.start()
    try:
        with pytest.raises(GatewayError) as err:
            await fetcher.fetch("messages[0].parts[0].image.url", pb.MODALITY_IMAGE, pb.Media(url=url), budget=5)
    finally:
        await fetcher.aclose()
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED


async def test_data_url_document_is_decoded_for_a_provider_that_needs_bytes(start_client, upstream, media_host):
    client = await start_with_media(start_client, upstream, {})
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    url = "data:application/pdf;base64," + base64.b64encode(PDF).decode()
    await client.stub.Complete(document_request(url), timeout=5)
    sent = upstream.received[0].json()["messages"][0]["content"][1]
    assert sent["file"]["file_data"] == url
    assert media_host.received == []


async def test_data_url_of_the_wrong_kind_is_refused(start_client, upstream):
    client = await start_with_media(start_client, upstream, {})
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Complete(document_request(url), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The provider's MIME list refuses it before anything is decoded.
    assert err.value.details() == ('messages[0].parts[1].document.mime_type: provider "mixrouter" does not accept '
                                   "image/png (accepted: application/pdf)")
