"""The one check every config table goes through: keys it does not know are refused by name.

A misspelled key that is silently ignored is a setting that silently does not apply, so every
table ([server], [media], [routing], [ledger], callers, routes, provider options) calls this.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def reject_unknown(table: Mapping[str, Any], known: Iterable[str], where: str, *, noun: str = "key(s)",
                   show_known: bool = False, error: Callable[[str], Exception] = ValueError) -> None:
    """Raise `error("unknown key(s) in [server]: listne (did you mean listen?)")` when table has
    keys outside known.

    where: "in [server]", "for kind openai"; show_known adds "(known: ...)" to the message."""
    known = set(known)
    unknown = sorted(set(table) - known)
    if unknown:
        named = ", ".join(_with_suggestion(str(key), known) for key in unknown)
        message = f"unknown {noun}{' ' + where if where else ''}: {named}"
        if show_known:
            message += f" (known: {', '.join(sorted(known)) or 'none'})"
        raise error(message)


def _with_suggestion(key: str, known: Iterable[str]) -> str:
    # A typo is the usual cause, so the nearest known key is most often the fix.
    nearest = difflib.get_close_matches(key, sorted(known), n=1)
    return f"{key} (did you mean {nearest[0]}?)" if nearest else key
