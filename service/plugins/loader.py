"""Loads provider plugins and builds the immutable map of provider kinds."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

import pluggy

from tollway.service.plugins import hookspecs
from tollway.service.plugins.adapter import ProviderKind

if TYPE_CHECKING:
    from importlib.metadata import EntryPoints

log = logging.getLogger("tollway.plugins")

_KIND_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PluginError(Exception):
    """A plugin that cannot be loaded or registers something invalid."""


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_provider_kinds(
    *,
    allow: Iterable[str] | None = None,
    deny: Iterable[str] = (),
    extra_plugins: Iterable[object] = (),
    pm: pluggy.PluginManager | None = None,
) -> Mapping[str, ProviderKind]:
    """Load plugins from the entry-point group (built-ins included) and collect their kinds.

    allow/deny name entry points (plugins); allow=None loads all. extra_plugins are
    plugin objects registered directly, as tests and embedders do.
    """
    pm = pm or new_plugin_manager()
    allowed = set(allow) if allow is not None else None
    denied = set(deny)
    # Entry-point names by plugin object, so errors name the plugin as allow/deny do.
    loaded: dict[int, str] = {}
    for dist_plugin in _entry_points():
        name = dist_plugin.name
        if name in denied or (allowed is not None and name not in allowed):
            log.info("plugin %s not loaded (config allow/deny)", name)
            continue
        if pm.has_plugin(name):
            continue
        try:
            plugin = dist_plugin.load()
        except Exception as exc:  # a broken third-party plugin must not hide which one
            raise PluginError(f"plugin {name!r} failed to import: {exc}") from exc
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise _invalid(name, exc) from exc
        loaded[id(plugin)] = name
    for plugin in extra_plugins:
        try:
            pm.register(plugin)
        except pluggy.PluginValidationError as exc:
            raise _invalid(None, exc) from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise _invalid(loaded.get(id(exc.plugin)), exc) from exc

    kinds: dict[str, ProviderKind] = {}

    def register(kind: ProviderKind) -> None:
        if not isinstance(kind, ProviderKind):
            raise PluginError(f"register() takes a ProviderKind, got {type(kind).__name__}")
        if not _KIND_NAME.match(kind.name):
            raise PluginError(f"provider kind name {kind.name!r} must match {_KIND_NAME.pattern}")
        if kind.name in kinds:
            raise PluginError(f"provider kind {kind.name!r} is registered twice")
        kinds[kind.name] = kind

    pm.hook.tollway_register_providers(register=register)
    return MappingProxyType(kinds)


def _invalid(name: str | None, exc: pluggy.PluginValidationError) -> PluginError:
    """A hookimpl that matches no spec (a misspelled hook name, a wrong argument) as a
    PluginError, which `tollway serve` reports in one line instead of a traceback."""
    # pluggy's message names the hook and the plugin object.
    return PluginError(f"plugin {name!r} is invalid: {exc}" if name else f"invalid plugin: {exc}")


def _entry_points() -> EntryPoints:
    from importlib.metadata import entry_points

    return entry_points(group=hookspecs.ENTRY_POINT_GROUP)
