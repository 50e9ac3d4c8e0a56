"""A refused connection: the operator's log line names where the gateway tried to connect
(scheme://host:port/path, never a query that could carry a key); the caller
hears the provider's name only."""

from __future__ import annotations

import logging

import grpc
import pytest

from tests.support.answers import request, stream_request
from tests.support.gateway import MIXROUTER_TEST_KEY
from tests.support.upstream import RefusedPort

Code = grpc.StatusCode


@pytest.fixture
def refused():
    port = RefusedPort()
    yield port
    port.close()


@pytest.mark.parametrize("kind", ["unary", "stream"])
async def test_cannot_connect_is_logged_with_the_base_url_and_told_without_it(start_client, refused, caplog, kind):
    base_url = f"http://127.0.0.1:{refused.port}/v1?key=tw-test-query-secret"
    client = await start_client({"providers": {"mixrouter": {"base_url": base_url}}, "routing": {"max_retries": 0}},
                                {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})

    with caplog.at_level(logging.WARNING, logger="tollway.upstream"), \
            pytest.raises(grpc.aio.AioRpcError) as caught:
        if kind == "unary":
            await client.stub.Complete(request("mixrouter/m"), timeout=10)
        else:
            async for _ in client.stub.StreamComplete(stream_request("mixrouter/m"), timeout=10):
                pass

    assert caught.value.code() == Code.UNAVAILABLE
    assert caught.value.details() == "mixrouter: cannot connect to upstream"
    lines = [r.getMessage() for r in caplog.records if r.name == "tollway.upstream"]
    assert len(lines) == 1
    assert lines[0].startswith(f"mixrouter: cannot connect to upstream at http://127.0.0.1:{refused.port}/v1: ")
    assert "secret" not in lines[0]


@pytest.mark.parametrize(("base_url", "logged"), [
    ("https://ops:secret@api.example.com/v1beta?key=secret#x", "https://api.example.com:443/v1beta"),
    ("http://[::1]:8080/v1", "http://[::1]:8080/v1"),
    ("api.example.com/v1", "(unparsable base URL)"),
])
def test_the_logged_address_carries_no_user_info_query_or_fragment(base_url, logged):
    from tollway.service.upstream.engine import operator_address

    assert operator_address(base_url) == logged
