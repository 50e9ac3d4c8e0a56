"""Configuration: an optional TOML file, environment overrides, and the embedded default.

With no file at all the gateway serves every registered provider whose API key is in the
environment, on 127.0.0.1:50051, with plain logs.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tollway.service.admission.auth import Callers, parse_callers
from tollway.service.admission.limits import RequestLimits
from tollway.service.billing.catalog import PriceCatalog
from tollway.service.config.keys import reject_unknown
from tollway.service.gateway.tls import TlsConfig, parse_tls
from tollway.service.gateway.worker import parse_workers
from tollway.service.ledger import LedgerConfig
from tollway.service.media.policy import MediaPolicy
from tollway.service.quota.config import QuotaConfig
from tollway.service.routing.routes import (
    Route,
    RoutingConfigError,
    RoutingPolicy,
    parse_routes,
    parse_routing,
)
from tollway.service.telemetry.tracing_config import TracingConfig
from tollway.service.telemetry.metrics_config import MetricsConfig

DEFAULT_LISTEN = "127.0.0.1:50051"
REDIS_URL_ENV = "TOLLWAY_REDIS_URL"
# The [limits] keys of rate limits and budgets; the rest of the table bounds request sizes.
QUOTA_KEYS = frozenset({"redis_url", "on_store_error", "store_timeout_ms", "key_prefix", "rules", "budgets"})


class ConfigError(Exception):
    """A config file or value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class ProviderConfig:
    """One `[providers.<name>]` table."""

    name: str
    kind: str
    base_url: str | None = None
    # Environment variables holding this provider's keys; requests spread over them.
    api_key_envs: tuple[str, ...] = ()
    # One unary attempt, whole (the caller's remaining deadline may cut it shorter).
    timeout_s: float = 600.0
    # Streams: connecting, the first event, and each gap between events. No total
    # timeout, so a healthy long stream is never killed.
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 120.0
    idle_timeout_s: float = 60.0
    # Streams open at once to this provider; None: server.max_upstream_connections (beyond
    # it a stream would only wait for a connection).
    max_concurrent_streams: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    log_format: str = "plain"
    # How long in-flight calls (streams too) may run on after SIGTERM.
    grace_period_s: float = 30.0
    # Upstream connections open at once, over every provider (the engine's HTTP/1.1 pool).
    max_upstream_connections: int = 1000
    # Streams: deltas that arrive in the same network read and continue each other (text or
    # reasoning of one choice, the arguments of one tool call) go out as one message (the
    # stream's first message always goes alone, and nothing waits to be merged). Fewer messages
    # cost less CPU; callers see the same text, in fewer pieces. false: one per upstream delta.
    merge_stream_deltas: bool = True
    # Upstream answers: a unary body, and one stream line or event, are refused (UNAVAILABLE)
    # once past these, counted as they arrive; an error body is read to 64 KiB at most.
    max_upstream_body_bytes: int = 32 * 1024 * 1024
    max_upstream_event_bytes: int = 8 * 1024 * 1024
    # Streams: a message the caller does not take within this long ends the stream, so a
    # caller that stops reading cannot hold an upstream connection forever.
    stream_send_timeout_s: float = 30.0
    # Clients balancing over a headless Service's addresses learn of new pods only when they
    # resolve the name again, which they do when a connection closes: past this age each
    # connection is told to go (GOAWAY), its calls in flight running to their end. 0: never.
    max_connection_age_s: float = 0.0
    # [server.tls]: None serves plaintext.
    tls: TlsConfig | None = None
    # Serving processes sharing the listen address, under one supervisor: an integer, or
    # "auto" for the cores this process may use. Read at start-up only.
    workers: int | str = 1
    # HOST:PORT serving Prometheus /metrics; None: no metrics are kept at all.
    metrics_listen: str | None = None


@dataclass(frozen=True)
class PluginsConfig:
    # None: load every installed provider plugin.
    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    # None: the embedded default (every registered kind whose key is set).
    providers: Mapping[str, ProviderConfig] | None = None
    media: MediaPolicy = field(default_factory=MediaPolicy)
    routes: Mapping[str, Route] = field(default_factory=dict)
    routing: RoutingPolicy = field(default_factory=RoutingPolicy)
    prices: PriceCatalog = field(default_factory=PriceCatalog.load_default)
    # Empty: calls are anonymous.
    callers: Callers = field(default_factory=Callers)
    # Read at start-up only: a reload keeps the ledger it has.
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    limits: RequestLimits = field(default_factory=RequestLimits)
    # [limits] rate-limit rules and spend budgets, and the store they are counted in.
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    # Read at start-up only; off unless an endpoint is configured (here or by OTEL_*).
    tracing: TracingConfig = field(default_factory=TracingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = "embedded default"


# Every table a config file may hold; the README documents each (tests/system/test_readme.py).
TOP_LEVEL_TABLES = frozenset({"server", "plugins", "providers", "media", "routes", "routing", "prices", "callers",
                              "ledger", "limits", "tracing", "metrics"})

_PROVIDER_KEYS = {"kind", "base_url", "api_key_env", "api_key_envs", "timeout_s", "connect_timeout_s",
                  "first_byte_timeout_s", "idle_timeout_s", "max_concurrent_streams"}
_PROVIDER_TIMEOUTS = ("timeout_s", "connect_timeout_s", "first_byte_timeout_s", "idle_timeout_s")


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] = os.environ) -> Config:
    """Read the TOML file at path (None: the embedded default), then apply environment overrides."""
    raw: dict[str, Any] = {}
    source = "embedded default"
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except OSError as exc:
            # A directory, a file without read permission: say which, in the words of the OS.
            reason = (exc.strerror or str(exc)).lower()
            raise ConfigError(f"cannot read config file {path}: {reason}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text") from exc
        source = str(path)
    config = parse_config(raw, source)
    listen = environ.get("TOLLWAY_LISTEN")
    if listen:
        config = _replace_server(config, listen=parse_listen(listen, "TOLLWAY_LISTEN"))
    try:
        config = replace(config, tracing=config.tracing.with_environment(environ))
        redis_url = environ.get(REDIS_URL_ENV)
        if redis_url:
            # A password belongs in the environment rather than the file: this one wins.
            checked = QuotaConfig.from_table({"redis_url": redis_url}).redis_url
            config = replace(config, quota=replace(config.quota, redis_url=checked))
    except ValueError as exc:
        raise ConfigError(str(exc).replace("limits.redis_url", REDIS_URL_ENV)) from None
    return config


def parse_listen(value: object, where: str) -> str:
    """value if it is HOST:PORT (IPv6 as [::1]:50051, port 0-65535), else a ConfigError naming where.

    gRPC would take "localhost" alone and serve on port 443, which no one means."""
    example = "(e.g. 127.0.0.1:50051 or [::1]:50051)"
    if not isinstance(value, str):
        raise ConfigError(f'{where} must be a string "HOST:PORT" {example}')
    host, sep, port = value.rpartition(":")
    ipv6 = host.startswith("[") and host.endswith("]") and len(host) > 2
    if not sep or not host or not (port.isascii() and port.isdigit()) or any(c.isspace() for c in value):
        raise ConfigError(f"{where} {value!r} is not HOST:PORT {example}")
    if ("[" in host or "]" in host) and not ipv6:
        raise ConfigError(f"{where} {value!r} is not HOST:PORT {example}")
    if ":" in host and not ipv6:
        raise ConfigError(f"{where} {value!r} is not HOST:PORT: write an IPv6 host in brackets {example}")
    if int(port) > 65535:
        raise ConfigError(f"{where} {value!r}: port {port} is out of range 0-65535")
    return value


def parse_config(raw: Mapping[str, Any], source: str = "<memory>") -> Config:
    reject_unknown(raw, TOP_LEVEL_TABLES, "", noun="top-level config table(s)", error=ConfigError)
    server = _parse_server(_table(raw, "server"))
    plugins_raw = _table(raw, "plugins")
    plugins = PluginsConfig(
        allow=tuple(_str_list(plugins_raw, "allow", "plugins")) if "allow" in plugins_raw else None,
        deny=tuple(_str_list(plugins_raw, "deny", "plugins")),
    )
    providers = None
    if "providers" in raw:
        providers = {name: _parse_provider(name, table) for name, table in _table(raw, "providers").items()}
    try:
        media = MediaPolicy.from_table(dict(_table(raw, "media")))
        routes = parse_routes(raw.get("routes", []))
        routing = parse_routing(_table(raw, "routing"))
        prices = raw.get("prices", [])
        if not isinstance(prices, list):
            raise ValueError("prices must be an array of tables ([[prices]])")
        catalog = PriceCatalog.load_default().with_overrides(prices) if prices else PriceCatalog.load_default()
        callers = parse_callers(_table(raw, "callers"))
        ledger = LedgerConfig.from_table(_table(raw, "ledger"))
        limits_table = _table(raw, "limits")
        limits = RequestLimits.from_table({k: v for k, v in limits_table.items() if k not in QUOTA_KEYS})
        quota = QuotaConfig.from_table({k: v for k, v in limits_table.items() if k in QUOTA_KEYS})
        tracing = TracingConfig.from_table(_table(raw, "tracing"))
        metrics = MetricsConfig.from_table(_table(raw, "metrics"))
    except (TypeError, ValueError, RoutingConfigError) as exc:
        raise ConfigError(str(exc)) from None
    _check_certificate_callers(callers, server.tls)
    return Config(server=server, plugins=plugins, providers=providers, media=media, routes=routes, routing=routing,
                  prices=catalog, callers=callers, ledger=ledger, limits=limits, quota=quota, tracing=tracing,
                  metrics=metrics, source=source)


# gRPC takes the age in milliseconds as a 32-bit integer.
MAX_CONNECTION_AGE_S = 2_000_000


def _parse_server(table: Mapping[str, Any]) -> ServerConfig:
    allowed = {"listen", "log_format", "grace_period_s", "max_upstream_connections", "merge_stream_deltas",
               "max_upstream_body_bytes", "max_upstream_event_bytes", "stream_send_timeout_s",
               "max_connection_age_s", "workers", "metrics_listen"}
    _no_unknown(table, allowed | {"tls"}, "server")
    table = dict(table)
    tls = _parse_tls(table.pop("tls", None))
    server = ServerConfig(**table, tls=tls)
    parse_listen(server.listen, "server.listen")
    if server.metrics_listen is not None:
        parse_listen(server.metrics_listen, "server.metrics_listen")
    if server.log_format not in ("plain", "json"):
        raise ConfigError('server.log_format must be "plain" or "json"')
    if not _is_number(server.grace_period_s) or server.grace_period_s < 0:
        raise ConfigError("server.grace_period_s must be a number >= 0")
    if not isinstance(server.max_upstream_connections, int) or isinstance(server.max_upstream_connections, bool) \
            or server.max_upstream_connections < 1:
        raise ConfigError("server.max_upstream_connections must be an integer >= 1")
    if not isinstance(server.merge_stream_deltas, bool):
        raise ConfigError("server.merge_stream_deltas must be true or false")
    if not _is_number(server.stream_send_timeout_s) or server.stream_send_timeout_s <= 0:
        raise ConfigError("server.stream_send_timeout_s must be a number > 0 (seconds)")
    if not _is_number(server.max_connection_age_s) or not 0 <= server.max_connection_age_s <= MAX_CONNECTION_AGE_S:
        raise ConfigError(f"server.max_connection_age_s must be a number from 0 (never) to {MAX_CONNECTION_AGE_S} "
                          "(seconds)")
    for key in ("max_upstream_body_bytes", "max_upstream_event_bytes"):
        value = getattr(server, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1024:
            raise ConfigError(f"server.{key} must be an integer >= 1024 (bytes)")
    try:
        parse_workers(server.workers, "server.workers")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return server


def _parse_tls(table: Any) -> TlsConfig | None:
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise ConfigError("server.tls must be a table")
    try:
        return parse_tls(table)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_certificate_callers(callers: Callers, tls: TlsConfig | None) -> None:
    """A caller known only by its certificate could never call without a client CA to verify one."""
    if tls is not None and tls.client_ca_file is not None:
        return
    for caller in callers.by_certificate:
        raise ConfigError(f"callers.{caller.name}: tls_subject and tls_san identify a caller by its client "
                          "certificate, which needs server.tls.client_ca_file")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_provider(name: str, table: Any) -> ProviderConfig:
    where = f"providers.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    known = {k: v for k, v in table.items() if k in _PROVIDER_KEYS}
    options = {k: v for k, v in table.items() if k not in _PROVIDER_KEYS}
    for key in ("kind", "base_url", "api_key_env"):
        if key in known and not isinstance(known[key], str):
            raise ConfigError(f"{where}.{key} must be a string")
    if "api_key_env" in known and "api_key_envs" in known:
        raise ConfigError(f"{where}: set api_key_env or api_key_envs, not both")
    key_envs = known.get("api_key_envs", [known["api_key_env"]] if "api_key_env" in known else [])
    if not isinstance(key_envs, list) or not all(isinstance(k, str) and k for k in key_envs):
        raise ConfigError(f"{where}.api_key_envs must be a list of environment variable names")
    timeouts = {}
    for key in _PROVIDER_TIMEOUTS:
        if key in known:
            value = known[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{where}.{key} must be a positive number")
            timeouts[key] = float(value)
    max_streams = known.get("max_concurrent_streams")
    if max_streams is not None and (not isinstance(max_streams, int) or isinstance(max_streams, bool)
                                    or max_streams < 1):
        raise ConfigError(f"{where}.max_concurrent_streams must be an integer >= 1")
    return ProviderConfig(
        name=name,
        max_concurrent_streams=max_streams,
        kind=known.get("kind", name),
        base_url=known.get("base_url"),
        api_key_envs=tuple(key_envs),
        options=options,
        **timeouts,
    )


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a table")
    return value


def _str_list(table: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key} must be a list of strings")
    return value


def _no_unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    reject_unknown(table, allowed, f"in [{where}]", error=ConfigError)


def _replace_server(config: Config, **changes: Any) -> Config:
    from dataclasses import replace

    return replace(config, server=replace(config.server, **changes))
