"""Keys that upstreams echo, log injection, timestamps: against `tollway serve`.

Every test ends with the invariants of tests/support/served.py (no key or key prefix in any
response, log line or ledger file; ledger modes; memory; a normal call).
"""

from __future__ import annotations

from datetime import datetime, timezone

import grpc
import orjson

from tests.support.served import Served
from tests.support.upstream import Reply
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode


def text_request(model: str, text: str = "Say hello.", **fields) -> pb.CompleteRequest:
    return pb.CompleteRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=text)])],
                              **fields)


def stream_request(model: str, text: str = "Say hello.") -> pb.StreamCompleteRequest:
    return pb.StreamCompleteRequest(model=model, messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=text)])])


def answer(text: str = "Hello.") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


def chunk(text: str | None, finish: str | None = None, usage: dict | None = None) -> str:
    delta = {"content": text} if text is not None else {}
    return orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": usage}).decode()


def echoing(key: str) -> list[Reply]:
    """An upstream that quotes the key (whole, and a 20-character prefix) in a 200 whose body is
    an error, then in a 500, before it answers."""
    return [
        Reply(status=200, body={"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid"}}),
        Reply(status=500, body={"error": {"message": f"upstream busy for key {key[:20]}..."}}),
    ]


async def test_a_key_echoed_by_the_upstream_reaches_no_caller_log_or_ledger_on_success(served: Served):
    await served.start({"routing": {"max_retries": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.01}})
    key = served.provider_keys["OPENAI_API_KEY"]
    served.upstream.reply(*echoing(key), Reply(body=answer()))

    response = await served.complete(text_request("openai/gpt-4.1"))

    assert [a.code for a in response.attempts] == [Code.UNAVAILABLE.value[0], Code.UNAVAILABLE.value[0], 0]
    assert "[redacted]" in response.attempts[0].message
    assert "[redacted]" in response.attempts[1].message
    # The invariants (run after the test) scan this response, the log and the ledger files.


async def test_a_key_echoed_before_a_stream_reaches_no_summary_log_or_ledger(served: Served):
    await served.start({"routing": {"max_retries": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.01}})
    key = served.provider_keys["OPENAI_API_KEY"]
    events = [chunk("Hel"), chunk("lo."), chunk(None, "stop", {"prompt_tokens": 5, "completion_tokens": 2,
                                                                 "total_tokens": 7}), "[DONE]"]
    served.upstream.reply(*echoing(key), Reply(events=events))

    messages = await served.stream(stream_request("openai/gpt-4.1"))

    summary = messages[-1].summary
    assert [a.code for a in summary.attempts] == [Code.UNAVAILABLE.value[0], Code.UNAVAILABLE.value[0], 0]
    # The first answer is no event stream (its body is not quoted); the 500 quotes a prefix.
    assert "[redacted]" in summary.attempts[1].message


async def test_a_key_echoed_in_a_final_error_reaches_no_caller(served: Served):
    await served.start()
    key = served.provider_keys["ANTHROPIC_API_KEY"]
    served.upstream.reply(Reply(status=400, body={"type": "error", "error": {
        "type": "invalid_request_error", "message": f"bad request from key {key[:12]}... ({key})"}}))

    err = await served.failure(text_request("anthropic/claude-sonnet-4-5", max_tokens=16))

    assert err.code() == Code.INVALID_ARGUMENT
    assert err.details().startswith("anthropic: upstream returned HTTP 400: ")
    assert "bad request from key [redacted]" in err.details()


async def test_a_model_name_with_newlines_forges_no_log_line_even_unauthenticated(served: Served):
    await served.start()
    forged = 'x\n2026-01-01 00:00:00,000 INFO tollway.request request status=OK caller="admin"'
    anonymous = served.stub().Complete(text_request(forged), timeout=10)  # no key
    try:
        await anonymous
        raise AssertionError("an unauthenticated call succeeded")
    except grpc.aio.AioRpcError as err:
        served.seen.error(err)
        assert err.code() == Code.UNAUTHENTICATED

    err = await served.failure(text_request(forged))
    assert err.code() in (Code.NOT_FOUND, Code.INVALID_ARGUMENT)

    log = served.log_text()
    assert not any(line.startswith("2026-01-01") for line in log.splitlines()), "a forged line reached the log"
    assert 'caller="admin"' not in log.replace('\\"', '"').split("\n", 1)[0]


async def test_a_five_megabyte_model_name_is_not_logged_whole_and_the_request_id_arrives(served: Served):
    await served.start()
    huge = "m" * (5 * 1024 * 1024)
    call = served.stub().Complete(text_request(huge), metadata=served.auth(), timeout=30)
    try:
        await call
        raise AssertionError("a 5 MB model name was accepted")
    except grpc.aio.AioRpcError as err:
        served.seen.error(err)
        assert err.code() in (Code.INVALID_ARGUMENT, Code.NOT_FOUND), err.details()
        assert len(err.details()) < 1000
        assert any(k == "tollway-request-id" for k, _ in err.trailing_metadata() or ())
    longest = max(len(line) for line in served.log_text().splitlines())
    assert longest < 4096, f"a log line of {longest} characters"


async def test_json_log_timestamps_are_utc_whatever_the_local_zone(served: Served):
    await served.start({"server": {"log_format": "json"}}, env={"TZ": "America/New_York"})
    before = datetime.now(timezone.utc)
    served.upstream.reply(Reply(body=answer()))
    await served.complete(text_request("openai/gpt-4.1"))
    after = datetime.now(timezone.utc)
    lines = [orjson.loads(line) for line in served.log_text().splitlines() if line.startswith("{")]
    stamps = [datetime.fromisoformat(line["ts"].replace("Z", "+00:00")) for line in lines
              if line.get("msg") == "request" and line.get("model") == "openai/gpt-4.1"]
    assert stamps, "no request line for the call"
    assert before.replace(microsecond=0) <= stamps[-1] <= after, (stamps[-1], before, after)
