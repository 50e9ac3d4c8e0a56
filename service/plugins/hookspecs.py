"""The plugin seam: the hooks a provider plugin implements.

Hook names carry the project prefix (the pytest/pluggy convention) so a misspelled
hookimpl is caught by check_pending() instead of being silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from tollway.service.plugins.adapter import ProviderKind

PROJECT = "tollway"
ENTRY_POINT_GROUP = "tollway.providers"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def tollway_register_providers(register: Callable[[ProviderKind], None]) -> None:
    """Register provider kinds by calling register(ProviderKind(...)) once per kind.

    Runs at start-up and on config reload, never per request.
    """
