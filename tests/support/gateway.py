"""Payload files, the suite's test keys, and a gateway reached over a real gRPC channel."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from tollway.service.config.loader import parse_config
from tollway.service.gateway.server import Gateway, start_gateway
from tollway.v1 import completion_pb2_grpc as pb_grpc

from .upstream import FakeUpstream
import tests.support as _root

FIXTURES = _root.FIXTURES
# Not a real key: a marker the log-scan tests look for.
MIXROUTER_TEST_KEY = "tw-test-mixrouter-key-0123456789abcdef"


def fixture_json(relative: str) -> Any:
    return json.loads((FIXTURES / relative).read_text(encoding="utf-8"))


def fixture_bytes(relative: str) -> bytes:
    return (FIXTURES / relative).read_bytes()


# Every key the suite uses starts with this; none may ever reach a log line.
TEST_KEY_PATTERN = re.compile(r"tw-test-[A-Za-z0-9-]{4,}")

@dataclass
class Client:
    gateway: Gateway
    channel: grpc.aio.Channel
    stub: pb_grpc.CompletionStub

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"


@asynccontextmanager
async def serving(config: dict[str, Any], environ: dict[str, str]) -> AsyncIterator[Client]:
    """A gateway on a free port and a channel to it, for fixtures wider than one test (the
    function-scoped start_client of conftest.py serves one test)."""
    gateway = await start_gateway(parse_config(config), environ=environ, listen="127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    try:
        yield Client(gateway, channel, pb_grpc.CompletionStub(channel))
    finally:
        await channel.close()
        await gateway.stop(grace=0)


def mixrouter_config(upstream: FakeUpstream, **extra: Any) -> dict[str, Any]:
    # No retries: these tests look at one upstream exchange; routing tests set their own policy.
    return {"providers": {"mixrouter": {"base_url": f"{upstream.base_url}/v1", **extra}},
            "routing": {"max_retries": 0}}
