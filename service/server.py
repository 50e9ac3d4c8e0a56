"""The grpc.aio server: Completion, health, reflection, graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from .adapter import ProviderKind
from .config import Config
from .engine import Engine, MediaFetcher
from .plugins import load_provider_kinds
from .registry import Registry, build_registry
from .servicer import CompletionServicer, Runtime

log = logging.getLogger("tollway.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Completion"].full_name


@dataclass
class Gateway:
    """A started server and what it needs to stop cleanly."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    runtime: Runtime
    port: int
    grace_period_s: float

    async def stop(self, grace: float | None = None) -> None:
        """Health turns NOT_SERVING, new calls are refused, in-flight calls get the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_period_s if grace is None else grace)
        await self.runtime.engine.aclose()
        await self.runtime.media.aclose()


def load_kinds(config: Config, extra_plugins: Iterable[object] = ()) -> Mapping[str, ProviderKind]:
    return load_provider_kinds(allow=config.plugins.allow, deny=config.plugins.deny, extra_plugins=extra_plugins)


async def start_gateway(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    extra_plugins: Iterable[object] = (),
    listen: str | None = None,
) -> Gateway:
    """Load plugins, build the registry, bind and start. listen overrides config (tests use port 0)."""
    import os

    kinds = load_kinds(config, extra_plugins)
    registry: Registry = build_registry(config, kinds, os.environ if environ is None else environ)
    engine = Engine(max_connections=config.server.max_upstream_connections)
    await engine.start()
    media = MediaFetcher(config.media)
    await media.start()
    runtime = Runtime(registry=registry, engine=engine, media=media)

    # The receive limit matches the inline media limit, plus room for the text around it.
    max_bytes = config.media.max_request_bytes + 4 * 1024 * 1024
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_CompletionServicer_to_server(CompletionServicer(runtime), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    address = listen or config.server.listen
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    usable = ", ".join(p.name for p in registry.usable()) or "none (set a provider's API key)"
    log.info("serving on %s (config: %s); providers: %s", address.rsplit(":", 1)[0] + f":{port}", config.source,
             usable)
    return Gateway(server, health_servicer, runtime, port, config.server.grace_period_s)


async def serve_forever(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then drain and return (the process exits 0)."""
    gateway = await start_gateway(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight calls for up to %.3gs", gateway.grace_period_s)
    await gateway.stop()
    log.info("stopped")
