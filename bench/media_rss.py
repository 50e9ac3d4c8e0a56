"""RSS of a real `tollway serve` around hostile media requests (issue 10, item 1).

Each hostile request carries 40 document URLs at a loopback host that streams 19 MB per URL
(760 MB in all, no Content-Length). The gateway must refuse it after reading about
`[media] max_request_bytes`, and its RSS must come back to near the baseline afterwards.

Run: python -m bench.media_rss [--rounds N] [--without-heap-fix]
(--without-heap-fix starts the gateway with glibc's dynamic mmap threshold left as it is, to
see what the start-up setting in tollway.service.gateway.heap is worth.)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

import grpc

from bench.proc import memory_kib
from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json
from tests.support.upstream import FakeUpstream, Reply
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

MIB = 1024 * 1024
PDF_HEAD = b"%PDF-1.4\n"
SERVE_WITHOUT_HEAP_FIX = (
    "import sys, tollway.service.gateway.server as s; s.return_big_blocks_to_the_os = lambda: False; "
    "from tollway.service.cli import main; sys.exit(main())"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--without-heap-fix", action="store_true")
    args = parser.parse_args()
    # The media host sees the gateway hang up mid-body, by design: not an error worth a traceback.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)

    upstream = await FakeUpstream().start()
    upstream.default = Reply(body=fixture_json("mixrouter/seed_response.json"))
    media = await FakeUpstream().start()
    media.default = Reply(events=[PDF_HEAD] + [b"x" * MIB] * 19, headers={"content-type": "application/pdf"})
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "tollway.toml")
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n'
            f'[providers.mixrouter]\nbase_url = "{upstream.base_url}/v1"\n'
            f'[media]\nallow_networks = ["127.0.0.0/8"]\nmax_url_parts = 40\n'
            f'[ledger]\npath = "{tmp}/ledger.sqlite3"\n', encoding="utf-8")
        env = {**os.environ, "MIXROUTER_API_KEY": MIXROUTER_TEST_KEY}
        command = ([sys.executable, "-c", SERVE_WITHOUT_HEAP_FIX] if args.without_heap_fix
                   else [sys.executable, "-m", "tollway.service.cli"])
        server = await asyncio.create_subprocess_exec(*command, "serve", "--config", str(config), env=env,
                                                      stdout=asyncio.subprocess.DEVNULL,
                                                      stderr=asyncio.subprocess.DEVNULL)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.CompletionStub(channel)
        try:
            await asyncio.wait_for(channel.channel_ready(), 30)
            text = pb.CompleteRequest(model="mixrouter/gpt-4o",
                                      messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hi")])])
            for _ in range(20):
                await stub.Complete(text, timeout=10)
            await asyncio.sleep(1)
            baseline = memory_kib(server.pid)["VmRSS"]
            print(f"baseline RSS after 20 normal calls: {mib(baseline)}")
            urls = [pb.Part(document=pb.Media(url=f"{media.base_url}/{k}.pdf")) for k in range(40)]
            hostile = pb.CompleteRequest(model="mixrouter/gpt-4o", messages=[
                pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="summarize"), *urls])])
            for round_ in range(1, args.rounds + 1):
                media.sent_bytes = 0
                try:
                    await stub.Complete(hostile, timeout=120)
                    print("hostile request answered OK (unexpected)")
                except grpc.aio.AioRpcError as err:
                    print(f"round {round_}: {err.code().name}: {err.details()}")
                await stub.Complete(text, timeout=10)
                await asyncio.sleep(1)
                now = memory_kib(server.pid)
                print(f"  media host sent {media.sent_bytes / MIB:.1f} MiB; gateway RSS {mib(now['VmRSS'])} "
                      f"(peak {mib(now['VmHWM'])}, {mib(now['VmRSS'] - baseline)} over baseline)")
        finally:
            await channel.close()
            server.terminate()
            await server.wait()
            await media.stop()
            await upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
