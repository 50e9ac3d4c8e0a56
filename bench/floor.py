"""The gRPC floor: a grpc.aio server with Tollway's contract that does no work at all.

It answers Complete with a prebuilt response and StreamComplete with 20 prebuilt deltas
and a summary, the same messages the gateway sends for the stand-in's answer, with no
validation, upstream call, parsing or logging. Measured beside the gateway, it shows how
much of the gateway's cost is grpc.aio itself, which no change to Tollway's code removes.
For a model named "paced/...", the messages go out PACE_S apart, as the stand-in paces
its events: each message then costs the wake-up a gateway pays for each upstream event.

Run: python -m bench.floor --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from httpx_sse import ServerSentEvent

from tollway.providers.mixrouter import create
from tollway.service.plugins.adapter import ProviderSettings
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from .load import STREAM_REQUEST
from .upstream import PACE_S, STREAM_WRITES, UNARY_BODY


def _messages() -> tuple[pb.CompleteResponse, list[pb.StreamCompleteResponse]]:
    """The gateway's own translation of the stand-in's answers, made once."""
    adapter = create(ProviderSettings(name="mixrouter", kind="mixrouter", base_url="http://127.0.0.1", api_key="x"))
    unary = adapter.parse_response(httpx.Response(200, content=UNARY_BODY), STREAM_REQUEST, "bench-model")
    decoder = adapter.stream_decoder(STREAM_REQUEST, "bench-model")
    stream: list[pb.StreamCompleteResponse] = []
    for write in STREAM_WRITES:
        chunk = write[write.index(b"data: ") :]
        data = chunk[len(b"data: ") : chunk.index(b"\n\n")].decode()
        stream.extend(decoder.feed(ServerSentEvent(data=data)))
    stream.append(pb.StreamCompleteResponse(summary=decoder.summary()))
    return unary, stream


class FloorServicer(pb_grpc.CompletionServicer):
    def __init__(self) -> None:
        self.unary, self.stream = _messages()

    async def Complete(self, request, context):
        return self.unary

    async def StreamComplete(self, request, context):
        if request.model.startswith("paced/"):
            for i, message in enumerate(self.stream):
                if i:
                    await asyncio.sleep(PACE_S)
                yield message
            return
        for message in self.stream:
            yield message


async def serve(listen: str, servicer: pb_grpc.CompletionServicer) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_CompletionServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()  # for the benchmark's readiness check only
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def run_server(listen: str, servicer: pb_grpc.CompletionServicer) -> None:
    """Serve on uvloop, as `tollway serve` does, until SIGTERM or SIGINT."""
    try:
        import uvloop

        uvloop.run(serve(listen, servicer))
    except ImportError:
        asyncio.run(serve(listen, servicer))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="grpc.aio server with Tollway's contract and no work")
    parser.add_argument("--listen", required=True)
    args = parser.parse_args(argv)
    run_server(args.listen, FloorServicer())
    return 0


if __name__ == "__main__":
    sys.exit(main())
