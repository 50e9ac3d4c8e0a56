"""Payload files, the suite's test keys, and a gateway reached over a real gRPC channel."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import grpc
from tollway.service.gateway.server import Gateway
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


def mixrouter_config(upstream: FakeUpstream, **extra: Any) -> dict[str, Any]:
    # No retries: these tests look at one upstream exchange; routing tests set their own policy.
    return {"providers": {"mixrouter": {"base_url": f"{upstream.base_url}/v1", **extra}},
            "routing": {"max_retries": 0}}
