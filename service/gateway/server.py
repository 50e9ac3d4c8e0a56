"""The grpc.aio server: Completion, health, reflection, graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tollway.service.admission.limits import RpcSlots, grpc_receive_limit
from tollway.service.config.loader import Config, ConfigError, load_config
from tollway.service.gateway.heap import HeapTrimmer, return_big_blocks_to_the_os
from tollway.service.gateway.intake import Intake
from tollway.service.gateway.listen import ListenError, check_can_listen
from tollway.service.gateway.servicer import CompletionServicer, Runtime, ServingState
from tollway.service.gateway.tls import ListenerTls, TlsConfig, TlsMaterial, read_material
from tollway.service.gateway.worker import WorkerSlot
from tollway.service.ledger import Ledger
from tollway.service.media.fetch import MediaFetcher
from tollway.service.plugins.adapter import ProviderKind
from tollway.service.plugins.loader import PluginError, load_provider_kinds
from tollway.service.plugins.registry import build_registry
from tollway.service.quota.startup import start_limits
from tollway.service.routing.health import HealthBoard
from tollway.service.routing.router import Router
from tollway.service.telemetry.metrics import GatewayMetrics
from tollway.service.telemetry.metrics_export import MULTIPROC_DIR_ENV, MetricsServer, in_worker, serve_metrics
from tollway.service.telemetry.tracing import start_tracing
from tollway.service.upstream.engine import Engine
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

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
    environ: Mapping[str, str]
    extra_plugins: tuple[object, ...] = ()
    config_path: str | None = None
    # The listener's TLS; None: plaintext.
    tls: ListenerTls | None = None
    # The /metrics endpoint this process serves (None: metrics off, or a worker) and the task
    # that reads the breaker, cool-down and journal gauges.
    metrics_server: MetricsServer | None = None
    metrics_sampler: asyncio.Task[None] | None = None

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server is not None else None

    def reload(self) -> bool:
        """Re-read the config file and swap in a new registry atomically.

        A bad file is refused with a log line and the old config stays. Calls in flight
        finish on the state they started with. Listen address and media limits of the
        server itself take effect only on restart."""
        try:
            config = load_config(self.config_path, self.environ)
            state = build_state(config, self.environ, self.extra_plugins)
            # Read again even when the config did not change: certificate files are rotated in place.
            tls_material = _tls_material(config.server.tls) if config.server.tls is not None else None
        except (ConfigError, PluginError, OSError) as exc:
            log.error("config reload refused, keeping the running config: %s", exc)
            return False
        except Exception as exc:
            # Whatever else a bad file trips over, a reload must not take the running config
            # (or, under SIGHUP, the event loop's callback) down with it.
            log.error("config reload refused, keeping the running config: %s: %s", type(exc).__name__, exc)
            return False
        if config.ledger != self.runtime.state.config.ledger:
            log.warning("[ledger] changed: the new settings take effect at the next restart")
        if config.tracing != self.runtime.state.config.tracing:
            log.warning("[tracing] changed: the new settings take effect at the next restart")
        running = self.runtime.state.config
        if (config.server.metrics_listen, config.metrics) != (running.server.metrics_listen, running.metrics):
            log.warning("server.metrics_listen or [metrics] changed: the new settings take effect at the next restart")
        router = self.runtime.router
        router.board = router.board.with_policy(config.routing.breaker)
        self.runtime.media.policy = config.media
        self.runtime.engine.max_body_bytes = config.server.max_upstream_body_bytes
        self.runtime.engine.max_event_bytes = config.server.max_upstream_event_bytes
        self.runtime.state = state
        if self.runtime.limits is not None:
            self.runtime.limits.reconfigure(config.quota)
        self._reload_tls(config, tls_material)
        log.info("config reloaded from %s; providers: %s; routes: %s", config.source,
                 ", ".join(p.name for p in state.registry.usable()) or "none",
                 ", ".join(sorted(state.registry.routes)) or "none")
        return True

    def _reload_tls(self, config: Config, material: TlsMaterial | None) -> None:
        if self.tls is not None:
            self.tls.reload(config.server.tls, material)
        elif config.server.tls is not None:
            log.warning("[server.tls] added: the listener stays plaintext until the next restart")

    async def stop(self, grace: float | None = None) -> None:
        """Health turns NOT_SERVING, new calls are refused, in-flight calls get the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_period_s if grace is None else grace)
        if self.metrics_sampler is not None:
            self.metrics_sampler.cancel()
            await asyncio.gather(self.metrics_sampler, return_exceptions=True)
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.close)
        if self.runtime.limits is not None:
            # In-flight calls have ended: their settlements go out before the store closes.
            await self.runtime.limits.close()
        # In-flight calls have recorded their usage by now: flush it before the process ends.
        await self.runtime.ledger.aclose()
        await self.runtime.engine.aclose()
        await self.runtime.media.aclose()
        if self.runtime.tracing is not None:
            # After the server: every call's spans have ended, and the last batch goes out.
            await self.runtime.tracing.shutdown()


def _tls_material(tls: TlsConfig) -> TlsMaterial:
    try:
        return read_material(tls)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_kinds(config: Config, extra_plugins: Iterable[object] = ()) -> Mapping[str, ProviderKind]:
    return load_provider_kinds(allow=config.plugins.allow, deny=config.plugins.deny, extra_plugins=extra_plugins)


def build_state(config: Config, environ: Mapping[str, str], extra_plugins: Iterable[object] = ()) -> ServingState:
    """Plugins' hooks run here, at start-up and on reload, never per request."""
    kinds = load_kinds(config, extra_plugins)
    return ServingState(config=config, registry=build_registry(config, kinds, environ))


async def start_gateway(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    extra_plugins: Iterable[object] = (),
    listen: str | None = None,
    config_path: str | None = None,
) -> Gateway:
    """Load plugins, build the registry, bind and start. listen overrides config (tests use port 0)."""
    import os

    environ = os.environ if environ is None else environ
    extra_plugins = tuple(extra_plugins)
    state = build_state(config, environ, extra_plugins)
    # Whatever a later step fails on (the port, the ledger), what started before it is closed
    # again, so a failed start leaves no open sessions, tasks or locks behind.
    async with contextlib.AsyncExitStack() as started:
        gateway = await _start(config, state, environ, extra_plugins, listen, config_path, started)
        started.pop_all()
    return gateway


async def _start(config: Config, state: ServingState, environ: Mapping[str, str], extra_plugins: tuple[object, ...],
                 listen: str | None, config_path: str | None, started: contextlib.AsyncExitStack) -> Gateway:
    registry = state.registry
    address = listen or config.server.listen
    # One of the workers of `tollway serve --workers N`: they share the port (SO_REUSEPORT),
    # each has its own ledger journal. A process on its own keeps the port to itself, so a
    # second gateway on a taken port fails clearly.
    worker = WorkerSlot.from_environ(environ)
    # gRPC's own bind failure says neither why nor in one line (it logs its reason to stderr
    # itself): a plain socket tries the address first, before anything is opened, and names the cause.
    check_can_listen(address, reuse_port=worker is not None)
    engine = Engine(max_connections=config.server.max_upstream_connections,
                    merge_deltas=config.server.merge_stream_deltas,
                    max_body_bytes=config.server.max_upstream_body_bytes,
                    max_event_bytes=config.server.max_upstream_event_bytes)
    await engine.start()
    started.push_async_callback(engine.aclose)
    media = MediaFetcher(config.media)
    await media.start()
    started.push_async_callback(media.aclose)
    router = Router(engine, media, HealthBoard(config.routing.breaker))
    ledger = await Ledger.open(config.ledger, worker_index=worker.index if worker else 0,
                               worker_count=worker.count if worker else 1)
    started.push_async_callback(ledger.aclose)
    log.info("usage ledger: %s; journal %s", config.ledger.describe(), ledger.journal_path)
    tracing = start_tracing(config.tracing)
    if tracing is not None:
        started.push_async_callback(tracing.shutdown)
    runtime = Runtime(state=state, engine=engine, media=media, router=router, ledger=ledger, tracing=tracing)
    metrics_server, metrics_sampler = _start_metrics(config, runtime, environ, started)
    runtime.limits = await start_limits(config.quota, ledger, partial(_route_targets, runtime), runtime.metrics,
                                        worker.count if worker else 1)
    started.push_async_callback(runtime.limits.close)

    max_bytes = grpc_receive_limit(config.limits)
    # Answers are bounded like requests; a unary answer over it is refused before it is recorded OK.
    runtime.max_send_bytes = max_bytes
    server = grpc.aio.server(
        interceptors=[Intake(RpcSlots(config.limits.max_concurrent_rpcs))],
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 1 if worker else 0),
            *connection_age_options(config.server.max_connection_age_s),
        ]
    )
    # completion_pb2_grpc is generated without annotations.
    pb_grpc.add_CompletionServicer_to_server(CompletionServicer(runtime), server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    tls = None
    if config.server.tls is not None:
        tls = ListenerTls(config.server.tls, _tls_material(config.server.tls))
    try:
        if tls is not None:
            port = server.add_secure_port(address, tls.server_credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ListenError(f"cannot listen on {address}")
    started.push_async_callback(server.stop, None)
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    if config.callers.anonymous:
        log.warning("no callers configured: calls are anonymous and every caller may use every model")
    else:
        log.info("%d callers configured: calls need 'authorization: Bearer <key>'", len(config.callers.entries))
    if tls is not None:
        known = len(config.callers.by_certificate)
        log.info("TLS on the listener: %s%s", tls.material.describe(),
                 f"; {known} callers known by their client certificate" if known else "")
    usable = ", ".join(p.name for p in registry.usable()) or "none (set a provider's API key)"
    log.info("serving on %s (config: %s)%s; providers: %s", address.rsplit(":", 1)[0] + f":{port}", config.source,
             f" as worker {worker.index} of {worker.count}" if worker else "", usable)
    return Gateway(server, health_servicer, runtime, port, config.server.grace_period_s, environ, extra_plugins,
                   config_path, tls, metrics_server, metrics_sampler)


def _route_targets(runtime: Runtime, route: str) -> tuple[str, ...]:
    """"provider/model" of a configured route's targets, as the running config has them."""
    found = runtime.state.registry.routes.get(route)
    return found.target_names if found is not None else ()


def _start_metrics(config: Config, runtime: Runtime, environ: Mapping[str, str],
                   started: contextlib.AsyncExitStack) -> tuple[MetricsServer | None, asyncio.Task[None] | None]:
    """With server.metrics_listen: instruments for every hook, the gauge sampler, and (unless this
    is a worker, whose supervisor serves every worker's values) the /metrics endpoint."""
    listen = config.server.metrics_listen
    if listen is None:
        return None, None
    metrics = GatewayMetrics(config.metrics, process_metrics=not environ.get(MULTIPROC_DIR_ENV))
    runtime.metrics = metrics
    runtime.media.metrics = metrics
    server = None
    if not in_worker(environ):
        server = serve_metrics(listen, environ.get(MULTIPROC_DIR_ENV), metrics.registry)
        started.callback(server.close)
        log.info("metrics on http://%s:%d/metrics", listen.rsplit(":", 1)[0], server.port)
    sampler = asyncio.create_task(metrics.sample_forever(runtime.router, runtime.ledger), name="metrics-sampler")
    started.callback(sampler.cancel)
    return server, sampler


def connection_age_options(age_s: float) -> list[tuple[str, int]]:
    """gRPC's server options for server.max_connection_age_s (none when 0). No age grace is
    set: gRPC's default, unbounded, lets a long stream on an old connection finish."""
    return [("grpc.max_connection_age_ms", max(1, round(age_s * 1000)))] if age_s else []


async def serve_forever(config: Config, config_path: str | None = None,
                        on_serving: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and return (the process exits 0). SIGHUP reloads.
    on_serving runs once the server answers (a worker tells its supervisor)."""
    return_big_blocks_to_the_os()
    # Handlers first: the server answers (health SERVING) before start_gateway returns, and a
    # signal meanwhile must not find the default action (SIGHUP's ends the process). A stop
    # asked for during start-up drains right after it; a reload asked for then runs then.
    stop = asyncio.Event()
    started: list[Gateway] = []
    reload_asked = asyncio.Event()

    def on_sighup() -> None:
        if started:
            started[0].reload()
        else:
            reload_asked.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    gateway = await start_gateway(config, config_path=config_path)
    started.append(gateway)
    if reload_asked.is_set():
        gateway.reload()
    trimmer = asyncio.create_task(HeapTrimmer().run())
    if on_serving is not None:
        on_serving()
    await stop.wait()
    trimmer.cancel()
    log.info("stopping: draining in-flight calls for up to %.3gs", gateway.grace_period_s)
    await gateway.stop()
    log.info("stopped")
