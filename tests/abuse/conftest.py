"""The abuse suite: each test attacks one `tollway serve` process, then the invariants of
tests/support/served.py are checked on it (keys, file modes, memory, a normal call)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.served import Figures, Served, write_report
from tests.support.upstream import FakeUpstream

_FIGURES: list[Figures] = []


@pytest.fixture
async def served(tmp_path: Path, upstream: FakeUpstream, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """A gateway process, not started yet (the test starts it with its own config); after the
    test, if it was started, every invariant is checked."""
    gateway = Served(tmp_path, upstream, request.node.name)
    try:
        yield gateway
        if gateway.proc is not None and not gateway.checked:
            await gateway.check_invariants()
        if gateway.checked and gateway.figures is not None:
            _FIGURES.append(gateway.figures)
    finally:
        await gateway.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    write_report(_FIGURES)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not _FIGURES:
        return
    terminalreporter.section("abuse suite: memory and a normal call after each scenario")
    for f in _FIGURES:
        row = f.as_row()
        terminalreporter.line(f"{row['scenario']:<70} RSS {row['rss_baseline_mib']:>6} -> peak "
                              f"{row['rss_peak_mib']:>7} -> {row['rss_after_mib']:>6} MiB   "
                              f"normal call {row['normal_call_ms']:>6} ms")
