"""Launch `tollway serve` for the benchmark, optionally on a different upstream transport.

TOLLWAY_BENCH_TRANSPORT selects the HTTP client under the engine's httpx API:
  http1 (default)    the shipped engine: its own HTTP/1.1 client (service/upstream/http1.py)
  aiohttp            0.1's client: httpx_aiohttp.AiohttpTransport (httpx Request/Response over
                     one aiohttp session), as Engine.start made it before
  httpx              httpx's own connection pool (httpx.AsyncHTTPTransport), limits raised to the
                     engine's max_connections (httpx's default of 100 connections / 20 keep-alive
                     collapses at c=50)

The switch lives here so the comparison needs no change to service/: it replaces
Engine.start before the server starts, then runs the real CLI.

TOLLWAY_BENCH_MERGE_DELTAS=1 builds the engine with merge_deltas on (Engine's option, off
in the shipped server): consecutive deltas of one choice that one read brought go out as
one message.

TOLLWAY_BENCH_PROFILE=FILE runs the gateway under cProfile and writes pstats to FILE on
exit (SIGTERM drains and returns normally, so the profile is complete).

Run: python -m bench.gateway serve --config FILE
"""

from __future__ import annotations

import os
import sys

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

# The function itself: the cli package's `main` attribute is the console entry point
# (tollway.service.cli:main), not its main module (0.1 had a module, service.cli, and called cli.main).
from tollway.service.cli import main as serve_cli
from tollway.service.upstream.engine import Engine

TRANSPORTS = ("http1", "aiohttp", "httpx")


class _NativeTransport(httpx.AsyncHTTPTransport):
    """httpx's pool, answering like the shipped transport: the response knows its request."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        response.request = request
        return response


async def _start_native_httpx(self: Engine) -> None:
    limit = self._max_connections
    self._transport = _NativeTransport(limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit))


async def _start_aiohttp(self: Engine) -> None:
    connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
    session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
    self._transport = AiohttpTransport(client=session)


def main(argv: list[str] | None = None) -> int:
    transport = os.environ.get("TOLLWAY_BENCH_TRANSPORT", "http1")
    if transport not in TRANSPORTS:
        print(f"bench.gateway: TOLLWAY_BENCH_TRANSPORT must be one of {', '.join(TRANSPORTS)}", file=sys.stderr)
        return 2
    if transport == "httpx":
        Engine.start = _start_native_httpx  # type: ignore[method-assign]
    elif transport == "aiohttp":
        Engine.start = _start_aiohttp  # type: ignore[method-assign]
    if os.environ.get("TOLLWAY_BENCH_MERGE_DELTAS") == "1":
        shipped_init = Engine.__init__

        def merging_init(self: Engine, **options) -> None:
            shipped_init(self, **{**options, "merge_deltas": True})

        Engine.__init__ = merging_init  # type: ignore[method-assign]
    profile_path = os.environ.get("TOLLWAY_BENCH_PROFILE")
    if not profile_path:
        return serve_cli(argv)
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(serve_cli, argv)
    finally:
        profiler.dump_stats(profile_path)


if __name__ == "__main__":
    sys.exit(main())
