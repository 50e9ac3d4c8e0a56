"""Soak, counted rather than timed: 200 concurrent streams through a route with a fallback,
about one upstream call in ten faulted.

Each call's text carries its number, so the upstreams know which call every request
belongs to and the test can work out, from the faults that call met, the one outcome it
must have: OK with every delta and a summary, or the status of the fault that ended it.
Afterwards no stalled upstream request is left open, nothing was logged at ERROR, and
sockets and asyncio tasks are back to where they were before the gateway started.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_status import rpc_status
from tollway.service.config.loader import parse_config
from tollway.service.gateway.server import start_gateway
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from tests.support.upstream import FakeUpstream, Received, Reply, sse_events

Code = grpc.StatusCode
CALLS = 200
FAULT_EVERY = 10
IDLE_S = 0.3
WORDS = ["every ", "delta ", "of ", "a ", "healthy ", "stream ", "arrives"]
KEYS = {"SOAK_A_KEY": "tw-test-soak-a-0001", "SOAK_B_KEY": "tw-test-soak-b-0001"}

# Faults that leave the caller with nothing yet, so the route falls back...
BEFORE_OUTPUT = ("503", "reset", "stall-before-text")
# ...and faults after the first delta, which end the stream.
AFTER_OUTPUT = ("cut", "stall")
FAULTS = BEFORE_OUTPUT + AFTER_OUTPUT


def _chunk(content: str | None = None, *, finish: str | None = None, usage: dict | None = None) -> dict:
    delta = {} if content is None else {"content": content}
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-soak", "object": "chat.completion.chunk", "created": 1766735500, "model": "m",
            "choices": choices, "usage": usage}


HEALTHY = sse_events([
    *(_chunk(w) for w in WORDS),
    _chunk(finish="stop"),
    _chunk(usage={"prompt_tokens": 4, "completion_tokens": len(WORDS), "total_tokens": 4 + len(WORDS)}),
])
ROLE_ONLY = sse_events([{**_chunk(""), "choices": [{"index": 0, "delta": {"role": "assistant"},
                                                    "finish_reason": None}]}], done=False)


def fault_reply(kind: str) -> Reply:
    if kind == "503":
        return Reply(status=503, body={"error": {"message": "overloaded"}})
    if kind == "reset":
        return Reply(fault="reset")
    if kind == "stall-before-text":
        return Reply(events=ROLE_ONLY, fault="stall")
    if kind == "cut":
        return Reply(events=HEALTHY[:3], fault="cut")
    return Reply(events=HEALTHY[:1], fault="stall")


def expected_error(provider: str, kind: str) -> tuple[Code, str]:
    return {
        "503": (Code.UNAVAILABLE, f"{provider}: upstream returned HTTP 503: overloaded"),
        "reset": (Code.UNAVAILABLE, f"{provider}: upstream closed the connection"),
        "cut": (Code.UNAVAILABLE, f"{provider}: upstream closed the connection"),
        "stall-before-text": (Code.DEADLINE_EXCEEDED, f"{provider}: upstream stalled for {IDLE_S:.3g}s mid-stream"),
        "stall": (Code.DEADLINE_EXCEEDED, f"{provider}: upstream stalled for {IDLE_S:.3g}s mid-stream"),
    }[kind]


class FaultPlan:
    """Faults one upstream request in ten, by arrival, cycling through every kind, and
    remembers per call what each of its requests met. Which call a fault lands on is up
    to the scheduling of 200 concurrent calls."""

    def __init__(self) -> None:
        self._arrivals = 0
        self.met: dict[int, list[tuple[str, str | None]]] = defaultdict(list)

    def responder(self, provider: str) -> Callable[[Received], Reply]:
        def respond(received: Received) -> Reply:
            call = int(re.search(rb"soak call (\d+)", received.body).group(1))
            n = self._arrivals
            self._arrivals += 1
            kind = FAULTS[(n // FAULT_EVERY) % len(FAULTS)] if n % FAULT_EVERY == FAULT_EVERY // 2 else None
            self.met[call].append((provider, kind))
            return Reply(events=HEALTHY) if kind is None else fault_reply(kind)

        return respond


@dataclass
class Outcome:
    code: Code
    details: str
    texts: list[str]
    summaries: list[pb.StreamSummary]
    failure: pb.CallFailure | None


async def one_call(stub, number: int) -> Outcome:
    request = pb.StreamCompleteRequest(
        model="soak", messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text=f"soak call {number}")])])
    texts, summaries = [], []
    call = stub.StreamComplete(request, timeout=20)
    try:
        async for message in call:
            if message.HasField("delta"):
                texts.append(message.delta.text)
            else:
                summaries.append(message.summary)
    except grpc.aio.AioRpcError as err:
        status = rpc_status.from_call(err)
        failure = None
        for detail in status.details if status else ():
            if detail.Is(pb.CallFailure.DESCRIPTOR):
                failure = pb.CallFailure()
                detail.Unpack(failure)
        return Outcome(err.code(), err.details(), texts, summaries, failure)
    return Outcome(await call.code(), "", texts, summaries, None)


def check(number: int, met: list[tuple[str, str | None]], outcome: Outcome) -> None:
    """The one outcome the faults this call met allow."""
    assert 1 <= len(met) <= 2, (number, met)
    for index, (provider, kind) in enumerate(met):
        last = index == len(met) - 1
        if kind is None:
            assert last, (number, met)
            assert outcome.code == Code.OK, (number, met, outcome.code, outcome.details)
            # Deltas read together may arrive merged (server.merge_stream_deltas); the first alone.
            assert "".join(outcome.texts) == "".join(WORDS), (number, met, outcome.texts)
            assert outcome.texts[0] == WORDS[0], (number, met, outcome.texts)
            assert len(outcome.summaries) == 1, (number, met)
            summary = outcome.summaries[0]
            assert (summary.provider, summary.route) == (provider, "soak")
            assert [(a.provider, a.code == 0) for a in summary.attempts] == [(p, k is None) for p, k in met]
            assert summary.usage.output.total == len(WORDS) and not summary.usage.estimated
            return
        if kind in AFTER_OUTPUT or last:
            code, details = expected_error(provider, kind)
            assert (outcome.code, outcome.details) == (code, details), (number, met, outcome.code, outcome.details)
            assert not outcome.summaries
            assert outcome.failure is not None and outcome.failure.route == "soak"
            assert [a.provider for a in outcome.failure.attempts] == [p for p, _ in met]
            if kind in AFTER_OUTPUT:
                assert last, (number, met)  # no retry, no fallback once output began
                assert outcome.texts and "".join(WORDS).startswith("".join(outcome.texts)), outcome.texts
                assert outcome.failure.usage.estimated
            else:
                assert outcome.texts == []
            return


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass  # closed while listing
    return count


async def settle(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll until predicate holds; bounded, and the caller asserts the result."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.05)
    return True


class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def run_gateway(plan: FaultPlan | None, calls: int) -> tuple[list[Outcome], list[FakeUpstream]]:
    """Upstreams, gateway and channel for one run, all stopped before returning."""
    ups = [await FakeUpstream().start() for _ in range(2)]
    config = {
        "providers": {
            name: {"kind": "mixrouter", "base_url": f"{up.base_url}/v1", "api_key_env": env,
                   "idle_timeout_s": IDLE_S, "first_byte_timeout_s": 5}
            for name, up, env in (("a", ups[0], "SOAK_A_KEY"), ("b", ups[1], "SOAK_B_KEY"))
        },
        "routes": [{"name": "soak", "targets": [{"provider": "a", "model": "m"},
                                                 {"provider": "b", "model": "m", "priority": 2}]}],
        # No retries and breakers out of reach: each call meets at most one request per target,
        # so its outcome follows from the faults alone.
        "routing": {"max_retries": 0, "breaker": {"consecutive_failures": 100_000, "min_calls": 100_000}},
    }
    for name, up in zip("ab", ups):
        up.responder = plan.responder(name) if plan else (lambda _received: Reply(events=HEALTHY))
    gateway = await start_gateway(parse_config(config), environ=KEYS, listen="127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    try:
        stub = pb_grpc.CompletionStub(channel)
        outcomes = await asyncio.gather(*(one_call(stub, n) for n in range(calls)))
        # Every stalled or cut upstream request was closed by the gateway, not left hanging.
        assert await settle(lambda: all(up.active == 0 for up in ups)), [up.active for up in ups]
    finally:
        await channel.close()
        await gateway.stop(grace=0)
        for up in ups:
            await up.stop()
    return outcomes, ups


async def test_200_concurrent_streams_with_one_upstream_call_in_ten_faulted():
    # gRPC's asyncio engine keeps a socket pair while any channel or server object lives and
    # frees it only when the last one is garbage-collected: an idle channel (it never
    # connects) keeps the engine up, so the baseline includes it and no GC timing matters.
    pin = grpc.aio.insecure_channel("127.0.0.1:9")
    errors = ErrorRecords()
    root = logging.getLogger()
    try:
        # A first run warms up what a process creates once (resolver threads and the like).
        await run_gateway(None, 3)
        await asyncio.sleep(0.1)
        sockets_before = open_sockets()
        tasks_before = len(asyncio.all_tasks())
        plan = FaultPlan()
        root.addHandler(errors)
        try:
            outcomes, ups = await run_gateway(plan, CALLS)
        finally:
            root.removeHandler(errors)

        for number, outcome in enumerate(outcomes):
            check(number, plan.met[number], outcome)
        requests = sum(len(up.received) for up in ups)
        faulted = [kind for met in plan.met.values() for _, kind in met if kind]
        assert len(faulted) == requests // FAULT_EVERY + (requests % FAULT_EVERY > FAULT_EVERY // 2)
        assert set(faulted) == set(FAULTS)
        codes = Counter(o.code for o in outcomes)
        assert set(codes) == {Code.OK, Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED}, codes
        fell_back = [met for met in plan.met.values() if len(met) == 2 and met[-1][1] is None]
        assert fell_back
        assert errors.records == [], [(r.name, r.getMessage(), repr(r.exc_info and r.exc_info[1]))
                                      for r in errors.records]
        assert await settle(lambda: open_sockets() <= sockets_before), (open_sockets(), sockets_before)
        assert await settle(lambda: len(asyncio.all_tasks()) <= tasks_before), (len(asyncio.all_tasks()),
                                                                                tasks_before)
    finally:
        await pin.close()
