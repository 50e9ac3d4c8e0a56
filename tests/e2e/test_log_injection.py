"""A caller cannot forge log lines, flood the log, or overflow the trailers with what it sends
(issue 10, item 3); log timestamps are UTC whatever the host's zone (item 14).

Logging is configured as `tollway serve` configures it, into a buffer (see test_logs.py).
"""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
from datetime import datetime, timezone

import grpc
import orjson
import pytest
from tollway.service.gateway.logs import REQUEST_LOGGER
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, mixrouter_config
from tests.support.ledger_calls import auth, request_id_of, sha

Code = grpc.StatusCode
FORGED = "2026-01-01T00:00:00.000Z INFO tollway.request request request_id=forged status=OK"
HUGE = 5 * 1024 * 1024
CALLER_KEY = "tw-test-injection-caller-7d3e1f"


# The bounds here must hold on their own, whatever limits.max_model_chars lets through (its own
# refusal comes first with the default of 256): these gateways take model names of any size.
NO_MODEL_LIMIT = {"limits": {"max_model_chars": 2 * HUGE}}


@pytest.fixture
async def client(start_client, upstream):
    config = {**mixrouter_config(upstream), **NO_MODEL_LIMIT}
    return await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


def request(model: str, **labels: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(model=model, labels=labels,
                              messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hi")])])


def request_lines(buffer: io.StringIO) -> list[str]:
    marks = (f" {REQUEST_LOGGER} ", f'"logger":"{REQUEST_LOGGER}"')
    return [line for line in buffer.getvalue().splitlines() if any(mark in line for mark in marks)]


def plain_fields(line: str) -> dict[str, str]:
    _, _, tail = line.partition(f" INFO {REQUEST_LOGGER} request ")
    assert tail, line
    return dict(token.split("=", 1) for token in shlex.split(tail))


async def failing(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_a_newline_in_the_model_name_forges_no_line(client, log_buffer):
    buffer = log_buffer("plain")
    model = f"nosuch\n{FORGED}"

    error = await failing(client.stub.Complete(request(model), timeout=10))

    assert error.code() == Code.NOT_FOUND
    assert error.details() == f'model: unknown route "{model}" (routes: none; or name "provider/model")'
    lines = buffer.getvalue().splitlines()
    assert not any(line.startswith(FORGED) for line in lines)
    [line] = request_lines(buffer)
    fields = plain_fields(line)
    assert fields["request_id"] == request_id_of(error.trailing_metadata())
    assert fields["model"] == "nosuch\\n" + FORGED  # escaped: the line stays one line
    assert fields["status"] == "NOT_FOUND"


@pytest.mark.parametrize("fmt", ["plain", "json"])
async def test_an_unauthenticated_call_logs_no_request_fields(start_client, upstream, log_buffer, fmt):
    config = mixrouter_config(upstream)
    config["callers"] = {"alice": {"key_sha256": sha(CALLER_KEY)}}
    client = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    buffer = log_buffer(fmt)

    error = await failing(client.stub.Complete(request(f"x\n{FORGED}", team="t\n" + FORGED), timeout=10,
                                               metadata=auth("tw-test-wrong-key-000000")))

    assert (error.code(), error.details()) == (Code.UNAUTHENTICATED, "invalid caller key")
    assert FORGED not in buffer.getvalue()
    [line] = request_lines(buffer)
    fields = orjson.loads(line) if fmt == "json" else plain_fields(line)
    request_fields = {k: v for k, v in fields.items() if k not in ("ts", "level", "logger", "msg")}
    assert request_fields == {"request_id": request_id_of(error.trailing_metadata()), "rpc": "Complete",
                              "status": "UNAUTHENTICATED", "error": "invalid caller key"}


@pytest.mark.parametrize("fmt", ["plain", "json"])
@pytest.mark.parametrize("model, message", [
    ("r" * HUGE, f'model: unknown route "{"r" * 100}..." ({HUGE - 100} more characters) '
                 '(routes: none; or name "provider/model")'),
    ("p" * HUGE + "/m", f'model: unknown provider "{"p" * 100}..." ({HUGE - 100} more characters) '
                        '(configured: mixrouter)'),
], ids=["route", "provider"])
async def test_a_huge_model_name_is_bounded_in_the_message_and_the_log(client, log_buffer, fmt, model, message):
    buffer = log_buffer(fmt)

    error = await failing(client.stub.Complete(request(model), timeout=30))

    # The status arrives whole (not RESOURCE_EXHAUSTED from overflowing trailers), request id too.
    assert (error.code(), error.details()) == (Code.NOT_FOUND, message)
    request_id = request_id_of(error.trailing_metadata())
    [line] = request_lines(buffer)
    assert len(line) < 2000
    fields = orjson.loads(line) if fmt == "json" else plain_fields(line)
    assert fields["request_id"] == request_id
    assert fields["model"] == model[:200] + f"...({len(model) - 200} more)"
    assert fields["error"] == message


async def test_a_huge_model_name_a_caller_may_not_use_is_bounded(start_client, upstream):
    config = {**mixrouter_config(upstream), **NO_MODEL_LIMIT}
    config["callers"] = {"alice": {"key_sha256": sha(CALLER_KEY), "allowed_models": ["mixrouter/*"]}}
    client = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    model = "é" * HUGE

    error = await failing(client.stub.Complete(request(model), timeout=30, metadata=auth(CALLER_KEY)))

    assert error.code() == Code.PERMISSION_DENIED
    assert error.details() == f'model: caller "alice" may not use "{"é" * 100}..." ({HUGE - 100} more characters)'
    request_id_of(error.trailing_metadata())


_LOG_IN_ZONE = """
import logging, sys
from tollway.service.gateway.logs import configure_logging
configure_logging(sys.argv[1])
logging.getLogger("tollway.test").warning("stamp")
"""


def _stamp(line: str, fmt: str) -> datetime:
    text = orjson.loads(line)["ts"] if fmt == "json" else line.split(" ", 1)[0]
    assert text.endswith("Z"), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_log_timestamps_are_utc_in_any_time_zone(fmt):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    done = subprocess.run([sys.executable, "-c", _LOG_IN_ZONE, fmt], capture_output=True, text=True, check=True,
                          env={"TZ": "America/New_York", "PATH": "/usr/bin:/bin"}, timeout=60)
    after = datetime.now(timezone.utc)

    [line] = done.stderr.splitlines()
    assert "stamp" in line
    # New York is 4 or 5 hours off UTC: a local time stamped Z falls far outside this window.
    assert before <= _stamp(line, fmt) <= after


async def test_any_message_quoting_a_huge_value_is_bounded(client):
    """A check that quotes a caller's value whole (here a tool_choice naming no tool) still gives a
    status that fits the trailers: the message and its BadRequest are cut, the request id arrives."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    name = "é" * HUGE
    message = request("mixrouter/gemini-2.0-flash")
    message.tools.add(name="get_weather")
    message.tool_choice.function_name = name

    error = await failing(client.stub.Complete(message, timeout=30))

    assert error.code() == Code.INVALID_ARGUMENT
    details = error.details()
    full = f"tool_choice.function_name: \"{name}\" is not one of the request's tools"
    cut = len(full.encode()) - 640  # 640 bytes: the 28 of the field and quote, then 306 two-byte "é"
    assert details == f'tool_choice.function_name: "{"é" * 306}...({cut} more bytes)'
    request_id_of(error.trailing_metadata())
    [violation] = [v for d in rpc_status.from_call(error).details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)
                   for v in _unpack(d).field_violations]
    assert violation.field == "tool_choice.function_name"
    assert len(violation.description.encode()) < 700 and violation.description.endswith(" more bytes)")


def _unpack(detail):
    from google.rpc import error_details_pb2

    bad = error_details_pb2.BadRequest()
    detail.Unpack(bad)
    return bad
