"""The load generator: N in-flight calls against one target, timed per call.

Two kinds of target answer the same question: a Tollway gateway over one grpc.aio
channel (asking for one model name: "provider/model" or a route), and the stand-in
upstream over one aiohttp session (the direct baseline). A phase ends at its request
count or its time limit, whichever comes first.

Every gateway answer is checked: a text stream's deltas join to the stand-in's text; a
tool stream's tool-call deltas join to the stand-in's arguments and its summary holds the
assembled call (check_tool_stream). Portkey's gateway (PortkeyTarget, OpenAI Chat over HTTP)
is checked alike: a unary answer's text and usage, a stream's joined deltas, its usage chunk
and its closing [DONE].
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import grpc
import orjson
from google.protobuf import struct_pb2

from tollway.providers.mixrouter import DIALECT
from tollway.providers.openai_codec import build_body
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from .upstream import CHUNKS, TOOL_ARGUMENTS, TOOL_CALL_ID, TOOL_NAME

MODEL = "mixrouter/bench-model"
API_KEY = "tw-test-bench-0000000000000000"
CALL_TIMEOUT_S = 10.0
UNARY_TEXT = "Hello from the stand-in."
# The text of the stand-in's stream, all deltas joined.
STREAM_TEXT = "".join(f"tok{i} " for i in range(CHUNKS - 1)) + f"tok{CHUNKS - 1}"

# Every gateway the bench starts prices the stand-in's model, so each call is priced as a real
# one is (line items computed, not "unpriced"): $0.15 and $0.60 per million input and output
# tokens. The stand-in's 12 + 20 tokens cost 12 * 150 + 20 * 600 nano-USD.
PRICES_TOML = ('[[prices]]\nprovider = "mixrouter"\nmodel = "bench-model"\neffective_from = 2026-01-01\n'
               'source = "bench"\ninput_text = 150_000_000\noutput_text = 600_000_000\n')
COST_NANO_USD = 12 * 150 + CHUNKS * 600

_MESSAGES = [pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="Say hello in twenty tokens.")])]
COMPLETE_REQUEST = pb.CompleteRequest(model=MODEL, messages=_MESSAGES, max_tokens=32)
STREAM_REQUEST = pb.StreamCompleteRequest(model=MODEL, messages=_MESSAGES, max_tokens=32)


def _weather_tool() -> pb.Tool:
    parameters = struct_pb2.Struct()
    parameters.update({"type": "object", "required": ["city"],
                       "properties": {"city": {"type": "string"}, "country": {"type": "string"},
                                      "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                      "days": {"type": "integer"}, "hourly": {"type": "boolean"}}})
    return pb.Tool(name=TOOL_NAME, description="The weather forecast for a city.", parameters=parameters)


# A tool stream is asked for as a caller would: the request declares the tool the stand-in calls.
_TOOL_MESSAGES = [pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="What is the weather in Paris?")])]
_TOOLS = [_weather_tool()]
TOOL_STREAM_REQUEST = pb.StreamCompleteRequest(model=MODEL, messages=_TOOL_MESSAGES, max_tokens=32, tools=_TOOLS)

# A call returns the perf_counter_ns() of its first token (streams) or None (unary), and the
# number of gRPC messages it read (0 for unary calls and the direct client).
Call = Callable[[], Awaitable[tuple[int | None, int]]]


@dataclass
class Samples:
    latencies_ns: list[int] = field(default_factory=list)
    ttfts_ns: list[int] = field(default_factory=list)
    messages: int = 0
    errors: int = 0
    first_error: str = ""
    elapsed_s: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies_ns)


async def run_phase(call: Call, concurrency: int, count: int, max_s: float) -> Samples:
    samples = Samples()
    remaining = count
    started = time.perf_counter()
    deadline = started + max_s

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            t0 = time.perf_counter_ns()
            try:
                first, messages = await call()
            except Exception as exc:  # counted and reported: a phase with errors is flagged
                samples.errors += 1
                samples.first_error = samples.first_error or f"{type(exc).__name__}: {exc}"[:300]
                continue
            t1 = time.perf_counter_ns()
            samples.latencies_ns.append(t1 - t0)
            samples.messages += messages
            if first is not None:
                samples.ttfts_ns.append(first - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    samples.elapsed_s = time.perf_counter() - started
    return samples


class GatewayTarget:
    """Tollway over one grpc.aio channel, asking for one model name."""

    def __init__(self, address: str, model: str = MODEL, channel: grpc.aio.Channel | None = None,
                 priced: bool = True) -> None:
        """priced: its answers carry the cost of PRICES_TOML (a gateway; the floor and the bare
        pass-through price nothing)."""
        self.priced = priced
        self.channel = channel or grpc.aio.insecure_channel(address)
        self._owns_channel = channel is None
        self.stub = pb_grpc.CompletionStub(self.channel)
        self.complete_request = pb.CompleteRequest(model=model, messages=_MESSAGES, max_tokens=32)
        self.stream_request = pb.StreamCompleteRequest(model=model, messages=_MESSAGES, max_tokens=32)
        self.tool_stream_request = pb.StreamCompleteRequest(model=model, messages=_TOOL_MESSAGES, max_tokens=32,
                                                            tools=_TOOLS)

    def named(self, model: str) -> "GatewayTarget":
        """The same gateway and channel, asking for another model name."""
        return GatewayTarget("", model, channel=self.channel, priced=self.priced)

    async def unary(self) -> tuple[None, int]:
        await self.stub.Complete(self.complete_request, timeout=CALL_TIMEOUT_S)
        return None, 0

    async def stream(self) -> tuple[int | None, int]:
        # Every text delta, in order, and then the summary: however the gateway split the text.
        first = None
        messages = 0
        texts = []
        summary = False
        async for message in self.stub.StreamComplete(self.stream_request, timeout=CALL_TIMEOUT_S):
            if first is None:
                first = time.perf_counter_ns()
            messages += 1
            if message.HasField("summary"):
                summary = True
            else:
                texts.append(message.delta.text)
        if not summary or "".join(texts) != STREAM_TEXT:
            raise RuntimeError(f"stream carried {len(texts)} deltas (summary: {summary}), not the stand-in's text")
        return first, messages

    async def tool_stream(self) -> tuple[int | None, int]:
        # Every message kept, then checked: the read loop costs what the text stream's costs.
        first = None
        received = []
        try:
            async for message in self.stub.StreamComplete(self.tool_stream_request, timeout=CALL_TIMEOUT_S):
                if first is None:
                    first = time.perf_counter_ns()
                received.append(message)
        except grpc.aio.AioRpcError as exc:
            # The status alone, without the call's debug string: this is the phase's first_error.
            raise RuntimeError(f"tool stream: the gateway answered {exc.code().name}: {exc.details()}") from None
        check_tool_stream(received)
        return first, len(received)

    async def check(self) -> None:
        """One of each call, read in full: the gateway answers what the stand-in sent."""
        response = await self.stub.Complete(self.complete_request, timeout=CALL_TIMEOUT_S)
        usage = response.usage
        if response.choices[0].message.parts[0].text != UNARY_TEXT or usage.total_tokens != 12 + CHUNKS:
            raise RuntimeError(f"unexpected unary answer: {response}")
        if self.priced and response.cost.total_nano_usd != COST_NANO_USD:
            raise RuntimeError(f"unary answer priced {response.cost}, not {COST_NANO_USD} nano-USD")
        deltas, summary = [], None
        async for message in self.stub.StreamComplete(self.stream_request, timeout=CALL_TIMEOUT_S):
            if message.HasField("delta"):
                deltas.append(message.delta.text)
            else:
                summary = message.summary
        if "".join(deltas) != STREAM_TEXT or summary is None or summary.usage.output.total != CHUNKS:
            raise RuntimeError(f"unexpected stream: {len(deltas)} deltas, summary {summary}")
        if self.priced and summary.cost.total_nano_usd != COST_NANO_USD:
            raise RuntimeError(f"stream summary priced {summary.cost}, not {COST_NANO_USD} nano-USD")

    async def close(self) -> None:
        if self._owns_channel:
            await self.channel.close()


def check_tool_stream(messages: list[pb.StreamCompleteResponse]) -> None:
    """The stand-in's one tool call, forwarded and assembled: its deltas (id and name on the
    first) join to TOOL_ARGUMENTS, and one summary, last, finishes choice 0 with
    FINISH_REASON_TOOL_CALLS and that call. Raises with what differed."""
    deltas = [m.tool_call_delta for m in messages if m.HasField("tool_call_delta")]
    summaries = [m.summary for m in messages if m.HasField("summary")]
    if not deltas:
        kinds = sorted({m.WhichOneof("event") or "empty" for m in messages})
        raise RuntimeError(f"tool stream: no tool_call_delta among {len(messages)} messages ({', '.join(kinds)}): "
                           "the gateway did not translate the stand-in's delta.tool_calls")
    arguments = "".join(d.arguments_fragment for d in deltas if (d.choice_index, d.index) == (0, 0))
    if (deltas[0].id, deltas[0].name) != (TOOL_CALL_ID, TOOL_NAME) or arguments != TOOL_ARGUMENTS:
        raise RuntimeError(f"tool stream: {len(deltas)} tool-call deltas, the first for {deltas[0].id!r} "
                           f"{deltas[0].name!r}, arguments joined {arguments!r}; expected {TOOL_CALL_ID!r} "
                           f"{TOOL_NAME!r} and {TOOL_ARGUMENTS!r}")
    if len(summaries) != 1 or not messages[-1].HasField("summary"):
        raise RuntimeError(f"tool stream: {len(summaries)} summaries, expected one, last")
    finishes = summaries[0].finishes
    calls = [(c.id, c.name, c.arguments_json) for c in finishes[0].tool_calls] if finishes else []
    reason = pb.FinishReason.Name(finishes[0].finish_reason) if finishes else "no finish"
    if reason != "FINISH_REASON_TOOL_CALLS" or calls != [(TOOL_CALL_ID, TOOL_NAME, TOOL_ARGUMENTS)]:
        raise RuntimeError(f"tool stream: summary finishes[0] is {reason} with tool calls {calls}; expected "
                           f"FINISH_REASON_TOOL_CALLS with [{(TOOL_CALL_ID, TOOL_NAME, TOOL_ARGUMENTS)}]")


class DirectTarget:
    """The stand-in upstream over one aiohttp session: the same HTTP request the gateway sends."""

    def __init__(self, base_url: str, stats_url: str, stream_request: pb.StreamCompleteRequest = STREAM_REQUEST,
                 marker: bytes = b'"content":"tok0 "') -> None:
        """marker: bytes the full stream holds (checked once, by check(): the stand-in answered
        the kind of stream asked for)."""
        self.url = f"{base_url}/chat/completions"
        self.marker = marker
        self.stats_url = stats_url
        # Connections kept across the pauses between phases: the baseline never reconnects.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=3600))
        headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
        self.unary_headers = {**headers, "accept": "application/json"}
        self.stream_headers = {**headers, "accept": "text/event-stream"}
        self.unary_body = orjson.dumps(build_body(COMPLETE_REQUEST, "bench-model", stream=False, dialect=DIALECT))
        self.stream_body = orjson.dumps(build_body(stream_request, "bench-model", stream=True, dialect=DIALECT))

    async def unary(self) -> tuple[None, int]:
        async with self.session.post(self.url, data=self.unary_body, headers=self.unary_headers) as response:
            body = await response.read()
        if response.status != 200 or not body:
            raise RuntimeError(f"direct unary: HTTP {response.status}")
        return None, 0

    async def stream(self) -> tuple[int | None, int]:
        # The cheapest honest client: time the first body bytes, read to the end, check [DONE].
        first = None
        tail = b""
        async with self.session.post(self.url, data=self.stream_body, headers=self.stream_headers) as response:
            async for data in response.content.iter_any():
                if first is None:
                    first = time.perf_counter_ns()
                tail = data
        if response.status != 200 or not tail.endswith(b"data: [DONE]\n\n"):
            raise RuntimeError(f"direct stream: HTTP {response.status}, no [DONE]")
        return first, 0

    async def check(self) -> None:
        await self.unary()
        await self.stream()
        async with self.session.post(self.url, data=self.stream_body, headers=self.stream_headers) as response:
            body = await response.read()
        if self.marker not in body:
            raise RuntimeError(f"direct stream from {self.url} lacks {self.marker!r}")

    async def upstream_stats(self) -> dict[str, int]:
        """Connections the stand-in has accepted and requests it has answered, so far."""
        async with self.session.get(self.stats_url) as response:
            return orjson.loads(await response.read())

    async def close(self) -> None:
        await self.session.close()


class PortkeyTarget:
    """Portkey's gateway over one aiohttp session: the direct call's request, sent to Portkey
    with the stand-in as its OpenAI custom host. Every answer is checked, as Tollway's are."""

    def __init__(self, gateway_url: str, upstream_base_url: str) -> None:
        self.url = f"{gateway_url}/v1/chat/completions"
        self.root_url = f"{gateway_url}/"
        # Node closes a connection idle for 5 s (its keepAliveTimeout): the client lets go first,
        # so it never sends a call on a connection the gateway is closing.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=4),
                                             timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S))
        headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}",
                   "x-portkey-provider": "openai", "x-portkey-custom-host": upstream_base_url}
        self.unary_headers = {**headers, "accept": "application/json"}
        self.stream_headers = {**headers, "accept": "text/event-stream"}
        self.unary_body = orjson.dumps(build_body(COMPLETE_REQUEST, "bench-model", stream=False, dialect=DIALECT))
        self.stream_body = orjson.dumps(build_body(STREAM_REQUEST, "bench-model", stream=True, dialect=DIALECT))

    async def ready(self) -> bool:
        """Whether the gateway answers its root path as it does once listening."""
        try:
            async with self.session.get(self.root_url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                return response.status == 200 and b"AI Gateway" in await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def unary(self) -> tuple[None, int]:
        async with self.session.post(self.url, data=self.unary_body, headers=self.unary_headers) as response:
            body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"portkey unary: HTTP {response.status}: {body[:200]!r}")
        answer = orjson.loads(body)
        usage = answer.get("usage") or {}
        content = answer["choices"][0]["message"]["content"] if answer.get("choices") else None
        if content != UNARY_TEXT or _usage_totals(usage) != (12, CHUNKS, 12 + CHUNKS):
            raise RuntimeError(f"portkey unary: content {content!r}, usage {_usage_totals(usage)}; expected "
                               f"{UNARY_TEXT!r} and {(12, CHUNKS, 12 + CHUNKS)}")
        return None, 0

    async def stream(self) -> tuple[int | None, int]:
        # The first body bytes are timed, as the direct call's; the events are checked at the end.
        first = None
        parts = []
        async with self.session.post(self.url, data=self.stream_body, headers=self.stream_headers) as response:
            async for data in response.content.iter_any():
                if first is None:
                    first = time.perf_counter_ns()
                parts.append(data)
        body = b"".join(parts)
        if response.status != 200:
            raise RuntimeError(f"portkey stream: HTTP {response.status}: {body[:200]!r}")
        return first, check_sse_stream(body)

    async def check(self) -> None:
        await self.unary()
        await self.stream()

    async def close(self) -> None:
        await self.session.close()


def _usage_totals(usage: dict[str, object]) -> tuple[object, object, object]:
    return usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens")


def check_sse_stream(body: bytes) -> int:
    """An OpenAI Chat stream as the stand-in sent it: the deltas' content joins to STREAM_TEXT,
    a usage chunk with its totals arrives, and the last event is [DONE]. Returns the number of
    events; raises with what differed."""
    events = [e[6:] for e in body.replace(b"\r\n", b"\n").split(b"\n\n") if e.startswith(b"data: ")]
    if not events or events[-1] != b"[DONE]":
        raise RuntimeError(f"portkey stream: {len(events)} events, the last not [DONE]: {body[-120:]!r}")
    texts, usages = [], []
    for event in events[:-1]:
        chunk = orjson.loads(event)
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if choice.get("index") == 0 and content:
                texts.append(content)
        if chunk.get("usage"):
            usages.append(_usage_totals(chunk["usage"]))
    text = "".join(texts)
    if text != STREAM_TEXT or usages != [(12, CHUNKS, 12 + CHUNKS)]:
        raise RuntimeError(f"portkey stream: {len(texts)} deltas joined to {text[:60]!r}, usage chunks {usages}; "
                           f"expected the stand-in's text and one usage chunk {(12, CHUNKS, 12 + CHUNKS)}")
    return len(events)
