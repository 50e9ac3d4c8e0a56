"""Shared fixtures: a loopback upstream that plays a provider, and an in-process gateway
on a free port reached over a real gRPC channel."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
import pytest
from tollway.service.config.loader import parse_config
from tollway.service.gateway.logs import configure_logging
from tollway.service.gateway.server import start_gateway
from tollway.v1 import completion_pb2_grpc as pb_grpc

from tests.support.gateway import (  # noqa: F401 - re-exported for tests
    FIXTURES,
    MIXROUTER_TEST_KEY,
    TEST_KEY_PATTERN,
    Client,
    fixture_bytes,
    fixture_json,
    mixrouter_config,
)
from tests.support.upstream import FakeUpstream

_SUITE_LOG = io.StringIO()


@pytest.fixture(scope="session", autouse=True)
def state_home_of_the_suite(tmp_path_factory):
    """The default ledger lives under $XDG_STATE_HOME: point it (and every `tollway serve` the
    suite starts, which inherits the environment) at a temporary directory."""
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    yield
    if old is None:
        del os.environ["XDG_STATE_HOME"]
    else:
        os.environ["XDG_STATE_HOME"] = old


@pytest.fixture(scope="session", autouse=True)
def every_log_line_of_the_suite():
    """Keep every log line the suite produces, at every level, for the key scan at the end."""
    from tollway.service.gateway.logs import PlainFormatter

    handler = logging.StreamHandler(_SUITE_LOG)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(PlainFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    yield
    root.removeHandler(handler)


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any test key appears in any log line of the whole suite."""
    leaked = sorted(set(TEST_KEY_PATTERN.findall(_SUITE_LOG.getvalue())))
    if leaked:
        session.config.get_terminal_writer().line(f"test keys found in the suite's logs: {leaked}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
async def upstream_server():
    server = await FakeUpstream().start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def upstream_servers():
    """Three more loopback upstreams, for tests that need several providers (routes, reload)."""
    started = [await FakeUpstream().start() for _ in range(3)]
    yield started
    for server in started:
        await server.stop()


@pytest.fixture
async def ups(upstream_servers) -> list[FakeUpstream]:
    for server in upstream_servers:
        server.reset()
    return upstream_servers


@pytest.fixture
async def upstream(upstream_server: FakeUpstream) -> FakeUpstream:
    upstream_server.reset()
    return upstream_server


@pytest.fixture
async def start_client(tmp_path):
    """start_client(config_dict, environ, extra_plugins) -> Client; all are stopped after the test.
    Each gateway gets its own SQLite ledger in the test's tmp_path unless config names one."""
    started: list[Client] = []

    async def start(
        config: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        extra_plugins: Iterable[object] = (),
    ) -> Client:
        config = dict(config or {})
        config.setdefault("ledger", {"path": str(tmp_path / f"ledger-{len(started)}.sqlite3")})
        gateway = await start_gateway(
            parse_config(config), environ=environ or {}, extra_plugins=extra_plugins, listen="127.0.0.1:0"
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
        client = Client(gateway, channel, pb_grpc.CompletionStub(channel))
        started.append(client)
        return client

    yield start
    for client in started:
        await client.channel.close()
        await client.gateway.stop(grace=0)


@pytest.fixture
async def client(start_client, upstream: FakeUpstream) -> Client:
    """A gateway with MixRouter pointed at the loopback upstream."""
    return await start_client(mixrouter_config(upstream), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


@pytest.fixture
def log_buffer():
    """configure_logging(fmt, level) as `tollway serve` calls it, writing into a StringIO; the
    previous setup is restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    aiohttp_level = logging.getLogger("aiohttp").level
    buffer = io.StringIO()

    def configure(fmt: str, level: int = logging.INFO) -> io.StringIO:
        configure_logging(fmt, level)
        for handler in root.handlers:
            handler.setStream(buffer)
        return buffer

    yield configure
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    logging.getLogger("aiohttp").setLevel(aiohttp_level)
