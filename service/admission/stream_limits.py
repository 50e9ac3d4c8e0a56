"""Streams open right now, counted per name (a caller, a provider): what the per-caller and
per-provider stream limits are checked against.

A stream holds an upstream connection for as long as it runs; without a bound, a few callers
could hold every connection of the pool while everyone else waits."""

from __future__ import annotations

from collections import Counter


class OpenStreams:
    """Counts only: one event loop, so no lock; a name leaves the table at zero."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def count(self, name: str) -> int:
        return self._open[name]

    def take(self, name: str) -> None:
        self._open[name] += 1

    def release(self, name: str) -> None:
        self._open[name] -= 1
        if self._open[name] <= 0:
            del self._open[name]
