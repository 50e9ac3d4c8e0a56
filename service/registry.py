"""The immutable map from configured provider names to ready adapters.

Built once at start-up (and on reload) from the registered kinds, the config and the
environment; the request path only reads it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import grpc

from .adapter import Adapter, ProviderKind, ProviderSettings
from .config import Config, ConfigError, ProviderConfig
from .errors import GatewayError

log = logging.getLogger("tollway.registry")


@dataclass(frozen=True)
class Provider:
    """A configured provider: its adapter, or why it cannot serve."""

    name: str
    kind: str
    adapter: Adapter | None
    timeout_s: float
    # Why the provider is configured but unusable (no key), for the caller's error.
    unusable_reason: str | None = None


@dataclass(frozen=True)
class Registry:
    providers: Mapping[str, Provider]

    def usable(self) -> list[Provider]:
        return [p for p in self.providers.values() if p.adapter is not None]

    def resolve(self, model: str) -> tuple[Provider, str]:
        """"provider/model" -> (provider, upstream model name)."""
        name, sep, upstream_model = model.partition("/")
        if not sep or not name or not upstream_model:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'model: "{model}" is not of the form "provider/model"',
            )
        provider = self.providers.get(name)
        if provider is None:
            known = ", ".join(sorted(self.providers)) or "none"
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                f'model: unknown provider "{name}" (configured: {known})',
            )
        if provider.adapter is None:
            raise GatewayError(grpc.StatusCode.FAILED_PRECONDITION, f"{name}: {provider.unusable_reason}")
        return provider, upstream_model


def build_registry(
    config: Config, kinds: Mapping[str, ProviderKind], environ: Mapping[str, str] = os.environ
) -> Registry:
    """Instantiate an adapter per configured provider (or per keyed kind, with no config)."""
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
    return Registry(providers=MappingProxyType(providers))


def _build_provider(cfg: ProviderConfig, kinds: Mapping[str, ProviderKind], environ: Mapping[str, str]) -> Provider:
    kind = kinds.get(cfg.kind)
    if kind is None:
        raise ConfigError(
            f"providers.{cfg.name}: unknown kind {cfg.kind!r} (installed: {', '.join(sorted(kinds)) or 'none'})"
        )
    base_url = environ.get(f"TOLLWAY_{cfg.name.upper()}_BASE_URL") or cfg.base_url or kind.default_base_url
    if not base_url:
        raise ConfigError(f"providers.{cfg.name}.base_url is required for kind {kind.name!r}")
    key_env = cfg.api_key_env or kind.default_api_key_env
    api_key = environ.get(key_env) if key_env else None
    if kind.requires_api_key and not api_key:
        reason = f"provider is configured but has no API key (set {key_env})"
        log.warning("%s: %s", cfg.name, reason)
        return Provider(cfg.name, kind.name, None, cfg.timeout_s, unusable_reason=reason)
    settings = ProviderSettings(
        name=cfg.name, kind=kind.name, base_url=base_url.rstrip("/"), api_key=api_key, options=cfg.options
    )
    try:
        adapter = kind.create(settings)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"providers.{cfg.name}: {exc}") from exc
    return Provider(cfg.name, kind.name, adapter, cfg.timeout_s)
