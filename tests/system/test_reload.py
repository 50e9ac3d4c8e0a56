"""Config reload: new routes are served, a bad file is refused and the old config stays,
calls in flight finish on the config they started with. In process through
Gateway.reload(), and once with a real SIGHUP to `tollway serve`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import grpc
import pytest
from tollway.service.config.loader import load_config
from tollway.service.gateway.server import start_gateway
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from tests.support.upstream import FakeUpstream, Reply, sse_events
from tests import support

Code = grpc.StatusCode
WAIT_S = 5.0
KEYS = {"A_KEY": "tw-test-reload-a-0001", "B_KEY": "tw-test-reload-b-0001"}


def toml(ups: list[FakeUpstream], routes: dict[str, list[str]], extra: str = "") -> str:
    """Providers a and b on the two upstreams; each route lists providers in priority order."""
    a, b = ups[:2]
    lines = [
        "[routing]",
        "max_retries = 0",
        "[providers.a]",
        'kind = "mixrouter"',
        f'base_url = "{a.base_url}/v1"',
        'api_key_env = "A_KEY"',
        "[providers.b]",
        'kind = "mixrouter"',
        f'base_url = "{b.base_url}/v1"',
        'api_key_env = "B_KEY"',
    ]
    for name, providers in routes.items():
        targets = ", ".join(f'{{ provider = "{p}", model = "model-{p}", priority = {i + 1} }}'
                            for i, p in enumerate(providers))
        lines += ["[[routes]]", f'name = "{name}"', f"targets = [{targets}]"]
    return "\n".join(lines) + "\n" + extra


class Served:
    def __init__(self, gateway, channel) -> None:
        self.gateway = gateway
        self.channel = channel
        self.stub = pb_grpc.CompletionStub(channel)


@pytest.fixture
async def serve(tmp_path: Path):
    """serve(toml_text) -> a gateway started from a file at `path`, which tests rewrite."""
    path = tmp_path / "tollway.toml"
    started: list[Served] = []

    async def start(text: str) -> Served:
        path.write_text(text, encoding="utf-8")
        gateway = await start_gateway(load_config(path, KEYS), environ=KEYS, listen="127.0.0.1:0",
                                      config_path=str(path))
        served = Served(gateway, grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}"))
        started.append(served)
        return served

    start.path = path
    yield start
    for served in started:
        await served.channel.close()
        await served.gateway.stop(grace=0)


def answer(text: str) -> dict:
    return {"id": "chatcmpl-reload", "object": "chat.completion", "created": 1766735400, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}


def stream_chunks(words: list[str]) -> list[dict]:
    base = {"id": "chatcmpl-reload", "object": "chat.completion.chunk", "created": 1766735400, "model": "m"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in words]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": len(words),
                                                     "total_tokens": 2 + len(words)}})
    return chunks


def request(model: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hi")])])


def stream_request(model: str) -> pb.StreamCompleteRequest:
    return pb.StreamCompleteRequest(model=model,
                                    messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hi")])])


async def route_names(stub) -> list[str]:
    return [r.name for r in (await stub.ListModels(pb.ListModelsRequest(), timeout=WAIT_S)).routes]


# -- in process ----------------------------------------------------------------------------


async def test_reload_serves_new_routes_and_retargets_old_ones(serve, ups):
    a, b = ups[:2]
    served = await serve(toml(ups, {"fast": ["a"]}))
    a.default = Reply(body=answer("from a"))
    b.default = Reply(body=answer("from b"))
    assert (await served.stub.Complete(request("fast"), timeout=WAIT_S)).provider == "a"

    serve.path.write_text(toml(ups, {"fast": ["b"], "smart": ["b", "a"]}), encoding="utf-8")
    assert served.gateway.reload()

    assert await route_names(served.stub) == ["fast", "smart"]
    fast = await served.stub.Complete(request("fast"), timeout=WAIT_S)
    smart = await served.stub.Complete(request("smart"), timeout=WAIT_S)
    assert (fast.provider, fast.route) == ("b", "fast")
    assert (smart.provider, smart.route) == ("b", "smart")
    assert (len(a.received), len(b.received)) == (1, 2)


BAD_FILES = {
    "not TOML": ("[[routes]\nname = ", "is not valid TOML"),
    "unknown provider": (None, "route 'ghost': provider 'nobody' is not configured"),
    "bad routing value": (None, "routing.max_retries must be a number >= 0"),
    "unknown kind": (None, "providers.c: unknown kind 'no-such-kind'"),
    "wrong type in [server]": (None, "server.grace_period_s must be a number >= 0"),
    "not UTF-8": (None, "is not UTF-8 text"),
    "a directory": (None, "tollway.toml: is a directory"),
}


def bad_file(ups, case: str) -> str:
    if case == "not TOML":
        return BAD_FILES[case][0]
    if case == "unknown provider":
        return toml(ups, {"fast": ["b"]}) + '[[routes]]\nname = "ghost"\ntargets = [{ provider = "nobody", model = "m" }]\n'
    if case == "bad routing value":
        return toml(ups, {"fast": ["b"]}).replace("max_retries = 0", "max_retries = -1")
    if case == "wrong type in [server]":
        return '[server]\ngrace_period_s = "soon"\n' + toml(ups, {"fast": ["b"]})
    return toml(ups, {"fast": ["b"]}) + '[providers.c]\nkind = "no-such-kind"\nbase_url = "http://127.0.0.1:9"\n'


@pytest.mark.parametrize("case", list(BAD_FILES))
async def test_a_bad_file_is_refused_with_a_log_line_and_the_old_config_stays(serve, ups, caplog, case):
    a, b = ups[:2]
    served = await serve(toml(ups, {"fast": ["a"]}))
    a.default = Reply(body=answer("from a"))
    if case == "not UTF-8":
        serve.path.write_bytes(b"\xff\xfe[server]\n")
    elif case == "a directory":
        serve.path.unlink()
        serve.path.mkdir()
    else:
        serve.path.write_text(bad_file(ups, case), encoding="utf-8")

    with caplog.at_level(logging.INFO, logger="tollway.server"):
        assert served.gateway.reload() is False

    refusals = [r for r in caplog.records if r.name == "tollway.server" and r.levelno == logging.ERROR]
    assert len(refusals) == 1
    line = refusals[0].getMessage()
    assert line.startswith("config reload refused, keeping the running config: ")
    assert BAD_FILES[case][1] in line
    assert not any("config reloaded" in r.getMessage() for r in caplog.records)
    # Still the old config: the old route, to the old provider.
    assert await route_names(served.stub) == ["fast"]
    response = await served.stub.Complete(request("fast"), timeout=WAIT_S)
    assert response.provider == "a"
    assert len(b.received) == 0


async def test_an_in_flight_stream_finishes_on_the_config_it_started_with(serve, ups):
    a, b = ups[:2]
    served = await serve(toml(ups, {"fast": ["a"]}))
    words = ["started ", "before ", "the ", "reload ", "and ", "finished ", "on ", "a"]
    a.reply(Reply(events=sse_events(stream_chunks(words)), event_delay_s=0.1))
    b.default = Reply(events=sse_events(stream_chunks(["from ", "b"])))

    stream = served.stub.StreamComplete(stream_request("fast"), timeout=30)
    first = await asyncio.wait_for(stream.read(), WAIT_S)
    # Provider a is gone from the new file altogether.
    serve.path.write_text(toml(ups, {"fast": ["b"]}).replace('[providers.a]\nkind = "mixrouter"\n'
                                                              f'base_url = "{a.base_url}/v1"\n'
                                                              'api_key_env = "A_KEY"\n', ""), encoding="utf-8")
    assert served.gateway.reload()
    rest = []
    while (message := await asyncio.wait_for(stream.read(), WAIT_S)) is not grpc.aio.EOF:
        rest.append(message)

    assert await stream.code() == Code.OK
    assert [first.delta.text] + [m.delta.text for m in rest if m.HasField("delta")] == words
    summary = rest[-1].summary
    assert (summary.provider, summary.route) == ("a", "fast")
    # A call started after the reload takes the new route.
    texts = [m.delta.text async for m in served.stub.StreamComplete(stream_request("fast"), timeout=WAIT_S)
             if m.HasField("delta")]
    assert texts == ["from ", "b"]
    assert (len(a.received), len(b.received)) == (1, 1)


async def test_an_in_flight_call_falls_back_along_its_old_route(serve, ups):
    a, b = ups[:2]
    served = await serve(toml(ups, {"fast": ["a", "b"]}))
    # a fails slowly; by then the route no longer lists b, but this call started before that.
    a.reply(Reply(status=503, body={"error": {"message": "down"}}, delay_s=0.5))
    b.default = Reply(body=answer("fallback from the old route"))

    call = served.stub.Complete(request("fast"), timeout=30)
    await asyncio.wait_for(_until(lambda: len(a.received) == 1), WAIT_S)
    serve.path.write_text(toml(ups, {"fast": ["a"]}), encoding="utf-8")
    assert served.gateway.reload()
    response = await call

    assert response.provider == "b"
    assert [x.provider for x in response.attempts] == ["a", "b"]
    a.reply(Reply(status=503, body={"error": {"message": "down again"}}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.Complete(request("fast"), timeout=WAIT_S)
    assert caught.value.code() == Code.UNAVAILABLE
    assert caught.value.details() == "a: upstream returned HTTP 503: down again"
    assert len(b.received) == 1


async def test_breaker_state_survives_a_reload(serve, ups):
    a, b = ups[:2]
    breaker = "[routing.breaker]\nconsecutive_failures = 2\ncooldown_s = 60\n"
    served = await serve(toml(ups, {"fast": ["a", "b"]}, breaker))
    a.default = Reply(status=503, body={"error": {"message": "down"}})
    b.default = Reply(body=answer("from b"))
    for _ in range(2):
        await served.stub.Complete(request("fast"), timeout=WAIT_S)

    serve.path.write_text(toml(ups, {"fast": ["a", "b"], "other": ["b"]}, breaker), encoding="utf-8")
    assert served.gateway.reload()
    response = await served.stub.Complete(request("fast"), timeout=WAIT_S)

    assert response.attempts[0].message == "skipped: circuit breaker open"
    assert len(a.received) == 2


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


# -- SIGHUP to the real process ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StderrLines:
    """Collects a subprocess's stderr lines as they come, so a test can wait for one."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace"))
            self._changed.set()

    async def wait_for(self, text: str, timeout: float = 20) -> str:
        async def poll() -> str:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(poll(), timeout)

    async def close(self) -> None:
        await asyncio.wait_for(self._task, WAIT_S)


async def test_tollway_serve_reloads_on_sighup(ups, tmp_path: Path):
    a, b = ups[:2]
    a.default = Reply(body=answer("from a"))
    b.default = Reply(body=answer("from b"))
    port = _free_port()
    target = f"127.0.0.1:{port}"
    path = tmp_path / "tollway.toml"
    server_table = f'[server]\nlisten = "{target}"\n'
    path.write_text(server_table + toml(ups, {"fast": ["a"]}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")} | KEYS
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tollway.service.cli", "serve", "--config", str(path),
        cwd=support.ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    stderr = StderrLines(proc.stderr)
    try:
        await stderr.wait_for("serving on")
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.CompletionStub(channel)
            assert (await stub.Complete(request("fast"), timeout=WAIT_S)).provider == "a"

            path.write_text(server_table + toml(ups, {"fast": ["a"], "smart": ["b"]}), encoding="utf-8")
            proc.send_signal(signal.SIGHUP)
            reloaded = await stderr.wait_for("config reloaded")
            assert "routes: fast, smart" in reloaded
            assert await route_names(stub) == ["fast", "smart"]
            assert (await stub.Complete(request("smart"), timeout=WAIT_S)).provider == "b"

            path.write_text("this is = = not toml", encoding="utf-8")
            proc.send_signal(signal.SIGHUP)
            refused = await stderr.wait_for("config reload refused")
            assert "ERROR" in refused and "is not valid TOML" in refused
            assert await route_names(stub) == ["fast", "smart"]
            assert (await stub.Complete(request("smart"), timeout=WAIT_S)).provider == "b"

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        await stderr.close()
        assert proc.returncode == 0
        log = "".join(stderr.lines)
        assert "Traceback" not in log
        assert all(key not in log for key in KEYS.values())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
