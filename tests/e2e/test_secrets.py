"""No configured key, nor any prefix or tail of 8+ characters of one, reaches a caller, a log
line or the ledger: on failures, and on calls that succeed after an attempt whose answer
quoted a key (issue 10, item 2).

Three providers are configured at once; the upstream quotes fragments of all their keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from tollway.service.gateway.logs import JsonFormatter, PlainFormatter
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, Client, fixture_json, mixrouter_config
from tests.support.ledger_calls import failure_of, flushed_records, request_id_of
from tests.support.upstream import FakeUpstream, Reply, sse_events

Code = grpc.StatusCode
MODEL = "mixrouter/gemini-2.0-flash"
OPENAI_KEY = "tw-test-openai-key-9f3b2c7d1e5a4f60b8c2d4e6"
ANTHROPIC_KEY = "tw-test-anthropic-4c1d8e2f7a9b3c5d6e0f1a2b"
KEYS = (MIXROUTER_TEST_KEY, OPENAI_KEY, ANTHROPIC_KEY)
ENVIRON = {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY, "OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}

# What the upstream says, and what the caller, the logs and the ledger may see of it.
ECHO = (f"channel error: key {MIXROUTER_TEST_KEY} rejected; tried {MIXROUTER_TEST_KEY[:20]}... and "
        f"{OPENAI_KEY[:8]}x, backup ...{ANTHROPIC_KEY[-12:]}")
SCRUBBED = "channel error: key [redacted] rejected; tried [redacted]... and [redacted]x, backup ...[redacted]"

STREAM_CHUNKS = [
    {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1766735400, "model": "gemini-2.0-flash",
     "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]},
    {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1766735400, "model": "gemini-2.0-flash",
     "choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}},
]


def fragments() -> list[str]:
    """Every piece of a key that must not appear: whole, 20- and 8-character prefixes, 8- and
    12-character tails."""
    return [piece for key in KEYS for piece in (key, key[:20], key[:8], key[-8:], key[-12:])]


def leaks(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [piece for piece in fragments() if piece in text]


def error_body(message: str = ECHO) -> dict:
    return {"error": {"message": message, "type": "upstream_error", "code": None}}


def config(upstream: FakeUpstream) -> dict:
    cfg = mixrouter_config(upstream)
    cfg["providers"]["openai"] = {"base_url": f"{upstream.base_url}/v1"}
    cfg["providers"]["anthropic"] = {"base_url": upstream.base_url}
    cfg["routing"] = {"max_retries": 1, "backoff_initial_s": 0.001, "backoff_max_s": 0.005}
    return cfg


def request(cls=pb.CompleteRequest):
    return cls(model=MODEL, labels={"team": "search"},
               messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hello")])])


@pytest.fixture
def logs() -> Iterator[list[logging.Handler]]:
    """Every log line of the test at every level, in both formats."""
    import io

    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    for formatter in (PlainFormatter(), JsonFormatter()):
        handler = logging.StreamHandler(io.StringIO())
        handler.setFormatter(formatter)
        handler.setLevel(logging.DEBUG)
        handlers.append(handler)
        root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    yield handlers
    root.setLevel(level)
    for handler in handlers:
        root.removeHandler(handler)


def log_text(handlers: list[logging.Handler]) -> str:
    return "".join(h.stream.getvalue() for h in handlers)  # type: ignore[attr-defined]


def journal_bytes(client: Client) -> bytes:
    journal = client.gateway.runtime.ledger.config.journal_path
    return b"".join(p.read_bytes() for p in sorted(Path(journal).rglob("*")) if p.is_file())


def ledger_file_bytes(client: Client) -> bytes:
    """Every file of the ledger (database, its WAL, the journal) as it lies on disk."""
    db = client.gateway.runtime.ledger.config.sqlite_path
    return b"".join(p.read_bytes() for p in sorted(db.parent.rglob(f"{db.name}*")) if p.is_file())


async def check_ledger(client: Client, request_id: str, messages: list[str]) -> None:
    journal = journal_bytes(client)
    assert request_id.encode() in journal, "the record is not in the journal"
    assert leaks(journal) == []
    [record] = [r for r in await flushed_records(client) if r.request_id == request_id]
    assert [a.message for a in record.attempts] == messages
    assert leaks(repr(record)) == []
    assert leaks(ledger_file_bytes(client)) == []


@pytest.mark.parametrize("first", [
    Reply(status=200, body=error_body()),
    Reply(status=503, body=error_body()),
    Reply(status=500, body=error_body()),
], ids=["200-error-body", "503", "500"])
async def test_unary_success_after_an_answer_quoting_keys(start_client, upstream, logs, first):
    client = await start_client(config(upstream), ENVIRON)
    upstream.reply(first, Reply(body=fixture_json("mixrouter/seed_response.json")))

    call = client.stub.Complete(request(), timeout=10)
    response = await call

    prefix = ("mixrouter: upstream answered with an error" if first.status == 200
              else f"mixrouter: upstream returned HTTP {first.status}")
    assert [(a.code, a.message) for a in response.attempts] == [
        (Code.UNAVAILABLE.value[0], f"{prefix}: {SCRUBBED}"), (Code.OK.value[0], "")]
    assert leaks(response.SerializeToString()) == []
    request_id = request_id_of(await call.trailing_metadata())
    await check_ledger(client, request_id, [f"{prefix}: {SCRUBBED}", ""])
    assert request_id in log_text(logs)
    assert leaks(log_text(logs)) == []


@pytest.mark.parametrize("first", [
    Reply(events=[orjson.dumps(error_body()).decode()]),
    Reply(status=503, body=error_body()),
], ids=["error-event", "503"])
async def test_stream_success_after_an_answer_quoting_keys(start_client, upstream, logs, first):
    client = await start_client(config(upstream), ENVIRON)
    upstream.reply(first, Reply(events=sse_events(STREAM_CHUNKS)))

    call = client.stub.StreamComplete(request(pb.StreamCompleteRequest), timeout=10)
    messages = [m async for m in call]

    summary = messages[-1].summary
    prefix = ("mixrouter: upstream answered with an error" if first.events is not None
              else "mixrouter: upstream returned HTTP 503")
    assert [(a.code, a.message) for a in summary.attempts] == [
        (Code.UNAVAILABLE.value[0], f"{prefix}: {SCRUBBED}"), (Code.OK.value[0], "")]
    assert all(leaks(m.SerializeToString()) == [] for m in messages)
    request_id = request_id_of(await call.trailing_metadata())
    await check_ledger(client, request_id, [f"{prefix}: {SCRUBBED}", ""])
    assert leaks(log_text(logs)) == []


async def test_failure_quoting_keys_after_a_retry(start_client, upstream, logs):
    client = await start_client(config(upstream), ENVIRON)
    upstream.reply(Reply(status=503, body=error_body()), Reply(status=400, body=error_body()))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(request(), timeout=10)

    error = caught.value
    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == f"mixrouter: upstream returned HTTP 400: {SCRUBBED}"
    failure = failure_of(error)
    assert [a.message for a in failure.attempts] == [f"mixrouter: upstream returned HTTP 503: {SCRUBBED}",
                                                     f"mixrouter: upstream returned HTTP 400: {SCRUBBED}"]
    assert leaks(str(error.trailing_metadata())) == []
    request_id = request_id_of(error.trailing_metadata())
    await check_ledger(client, request_id, [a.message for a in failure.attempts])
    assert leaks(log_text(logs)) == []


async def test_a_callers_own_key_is_never_logged(start_client, upstream, logs):
    """A caller key minted by `tollway keys new`, wrong or right, sent or quoted in a request field."""
    from tollway.service.admission.auth import new_key

    key, _ = new_key("alice")
    cfg = config(upstream)
    cfg["callers"] = {"bob": {"key_sha256": "0" * 64}}
    client = await start_client(cfg, ENVIRON)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Complete(pb.CompleteRequest(model=f"mixrouter/{key}", labels={"k": key}), timeout=10,
                                   metadata=(("authorization", f"Bearer {key}"),))

    assert (caught.value.code(), caught.value.details()) == (Code.UNAUTHENTICATED, "invalid caller key")
    text = log_text(logs)
    assert request_id_of(caught.value.trailing_metadata()) in text
    assert key not in text and key[:20] not in text
