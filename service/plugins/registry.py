"""The immutable map from configured provider names to ready adapters.

Built once at start-up (and on reload) from the registered kinds, the config and the
environment; the request path only reads it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import grpc
import httpx

from tollway.service.config.keys import reject_unknown
from tollway.service.config.loader import _PROVIDER_KEYS, Config, ConfigError, ProviderConfig
from tollway.service.errors import GatewayError, quoted
from tollway.service.plugins.adapter import (
    Adapter,
    Capabilities,
    ProviderKind,
    ProviderSettings,
    intersect_capabilities,
)
from tollway.service.redaction import remember_keys
from tollway.service.routing.routes import Route, direct_route

log = logging.getLogger("tollway.registry")


@dataclass(frozen=True)
class ProviderKey:
    """One credential of a provider and the adapter that sends it."""

    # The environment variable the key came from: a name safe to log, never the key.
    key_id: str
    adapter: Adapter


@dataclass(frozen=True)
class Provider:
    """A configured provider: one adapter per key, or why it cannot serve."""

    name: str
    kind: str
    config: ProviderConfig
    keys: tuple[ProviderKey, ...] = ()
    # Why the provider is configured but unusable (no key), for the caller's error.
    unusable_reason: str | None = None

    @property
    def adapter(self) -> Adapter | None:
        """The first key's adapter: capabilities are the same for every key."""
        return self.keys[0].adapter if self.keys else None


@dataclass(frozen=True)
class Registry:
    providers: Mapping[str, Provider]
    routes: Mapping[str, Route] = field(default_factory=dict)
    # Every configured key, for scrubbing text that leaves the gateway.
    secrets: tuple[str, ...] = ()
    # Named routes' capabilities, computed once.
    _route_caps: Mapping[str, Capabilities | None] = field(default_factory=dict)

    def usable(self) -> list[Provider]:
        return [p for p in self.providers.values() if p.keys]

    def resolve(self, model: str) -> Route:
        """A route name, or "provider/model" as a route of one target."""
        if "/" not in model:
            route = self.routes.get(model)
            if route is None:
                known = ", ".join(sorted(self.routes)) or "none"
                raise GatewayError(
                    grpc.StatusCode.NOT_FOUND,
                    f'model: unknown route {quoted(model)} (routes: {known}; or name "provider/model")',
                )
            return route
        name, _, upstream_model = model.partition("/")
        if not name or not upstream_model:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'model: {quoted(model)} is not of the form "provider/model"',
            )
        if name not in self.providers:
            known = ", ".join(sorted(self.providers)) or "none"
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                f"model: unknown provider {quoted(name)} (configured: {known})",
            )
        return direct_route(name, upstream_model)

    def provider(self, name: str) -> Provider:
        """The provider behind a target; unusable ones fail with the reason."""
        provider = self.providers[name]
        if not provider.keys:
            raise GatewayError(grpc.StatusCode.FAILED_PRECONDITION, f"{name}: {provider.unusable_reason}")
        return provider

    def route_capabilities(self, route: Route) -> Capabilities | None:
        """What every usable target of the route accepts (the intersection); None if none is usable."""
        if route.name in self._route_caps:
            return self._route_caps[route.name]
        if len(route.targets) == 1:  # a direct "provider/model": no intersection to compute
            adapter = self.providers[route.targets[0].provider].adapter
            return adapter.capabilities if adapter is not None else None
        return _intersect_route(self, route)


def _intersect_route(registry: Registry, route: Route) -> Capabilities | None:
    providers = [registry.providers[t.provider] for t in route.targets]
    adapters = [p.adapter for p in providers if p.adapter is not None]
    if not adapters:
        return None
    return intersect_capabilities([a.capabilities for a in adapters])


def build_registry(
    config: Config, kinds: Mapping[str, ProviderKind], environ: Mapping[str, str] = os.environ
) -> Registry:
    """Instantiate adapters per configured provider and key (or per keyed kind, with no config)."""
    if config.providers is None:
        wanted = [
            ProviderConfig(name=kind.name, kind=kind.name)
            for kind in kinds.values()
            if kind.default_base_url
            and (not kind.requires_api_key or (kind.default_api_key_env and environ.get(kind.default_api_key_env)))
        ]
    else:
        wanted = list(config.providers.values())
    providers = {}
    for provider_config in wanted:
        providers[provider_config.name] = _build_provider(provider_config, kinds, environ)
    for route in config.routes.values():
        for target in route.targets:
            if target.provider not in providers:
                raise ConfigError(f"route {route.name!r}: provider {target.provider!r} is not configured")
    secrets = tuple(k.adapter.settings.api_key for p in providers.values() for k in p.keys if k.adapter.settings.api_key)
    # Log lines are scrubbed of these from now on, whichever registry serves.
    remember_keys(secrets)
    registry = Registry(providers=MappingProxyType(providers), routes=MappingProxyType(dict(config.routes)),
                        secrets=secrets)
    route_caps = {name: _intersect_route(registry, route) for name, route in config.routes.items()}
    return Registry(registry.providers, registry.routes, secrets, MappingProxyType(route_caps))


def _build_provider(cfg: ProviderConfig, kinds: Mapping[str, ProviderKind], environ: Mapping[str, str]) -> Provider:
    kind = kinds.get(cfg.kind)
    if kind is None:
        raise ConfigError(
            f"providers.{cfg.name}: unknown kind {cfg.kind!r} (installed: {', '.join(sorted(kinds)) or 'none'})"
        )
    # The keys every provider table takes count as known too: a misspelled timeout_s lands here,
    # and the list (and the suggestion) must name it.
    reject_unknown(cfg.options, kind.options | _PROVIDER_KEYS, f"for kind {kind.name}", noun="option(s)",
                   show_known=True,
                   error=lambda message: ConfigError(f"providers.{cfg.name}: {message}"))
    env_name = f"TOLLWAY_{cfg.name.upper()}_BASE_URL"
    base_url = environ.get(env_name) or cfg.base_url or kind.default_base_url
    if not base_url:
        raise ConfigError(f"providers.{cfg.name}.base_url is required for kind {kind.name!r}")
    _check_base_url(base_url, env_name if environ.get(env_name) else f"providers.{cfg.name}.base_url")
    key_envs = cfg.api_key_envs or ((kind.default_api_key_env,) if kind.default_api_key_env else ())
    present: list[tuple[str, str | None]] = [(env, environ[env]) for env in key_envs if environ.get(env)]
    missing = [env for env in key_envs if not environ.get(env)]
    if missing and present:
        log.warning("%s: no key in %s; serving with the others", cfg.name, ", ".join(missing))
    if not present:
        if kind.requires_api_key:
            reason = f"provider is configured but has no API key (set {' or '.join(key_envs) or 'api_key_env'})"
            log.warning("%s: %s", cfg.name, reason)
            return Provider(cfg.name, kind.name, cfg, unusable_reason=reason)
        if cfg.api_key_envs:
            log.warning("%s: no key in %s; sending requests without one", cfg.name, ", ".join(cfg.api_key_envs))
        present = [("", None)]
    keys = []
    for key_id, api_key in present:
        settings = ProviderSettings(
            name=cfg.name, kind=kind.name, base_url=base_url.rstrip("/"), api_key=api_key, options=cfg.options
        )
        try:
            keys.append(ProviderKey(key_id, kind.create(settings)))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"providers.{cfg.name}: {exc}") from exc
    return Provider(cfg.name, kind.name, cfg, tuple(keys))


def _check_base_url(url: str, where: str) -> None:
    """An http(s) URL with a host and no credentials in it: a user:password@ part would be sent
    beside the provider's own auth header (aiohttp refuses the pair at the first call), and it is
    a secret the config file and logs should not carry; keys belong in api_key_env."""
    try:
        parts = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"{where}: {url!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.host:
        raise ConfigError(f"{where}: {url!r} is not an http(s) URL with a host")
    if parts.userinfo:
        raise ConfigError(f"{where}: the URL carries credentials (user:password@); put the key in api_key_env")
