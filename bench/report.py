"""The benchmark's figures as Markdown: medians over repetitions, gateway minus direct per
repetition, and the targets (shared performance targets)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from typing import Any

DIRECT = "direct"
FLOOR = "floor"
# grpc.aio in front of aiohttp with nothing else (bench/passthrough.py): what Python alone costs.
PASSTHROUGH = "passthrough"
# Targets on the first transport's gateway under other model names, and its merged-deltas twin.
ROUTE = "route"
FALLBACK = "fallback"
MERGED = "merged"
# The gateway of another checkout (--baseline-tree): the code before a change.
BASELINE = "baseline"
# Portkey's gateway (Node, bench/portkey), called over HTTP with the stand-in as its custom host.
PORTKEY = "portkey"
# The transport Tollway ships with: the side-by-side table's Tollway when it was measured.
SHIPPED_TRANSPORT = "http1"
# The performance targets' fixed figures (shared PERFORMANCE.md), for one worker; the others are
# ratios to Portkey and to the bare pass-through measured in the same run.
P99_GOAL_MS = 2.5
RPS_OVER_PORTKEY_GOAL = 1.15
UNARY_CPU_GOAL_MS = 0.80  # the bare pass-through's CPU per call at c=50 where the targets were set
TTFT_GOAL_MS = 1.0
STREAM_CPU_GOALS_MS = {1: 2.0, 50: 1.1}
TOOL_PER_MESSAGE_GOAL = 1.10

Phase = dict[str, Any]


def _median(values: Iterable[float | None]) -> float:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else float("nan")


class Figures:
    """Per-repetition phases, looked up by target, mode and concurrency."""

    def __init__(self, phases: list[Phase]) -> None:
        self.phases = phases
        self.repetitions = sorted({p["repetition"] for p in phases})

    def _one(self, target: str, mode: str, c: int, repetition: int) -> Phase | None:
        for p in self.phases:
            if (p["target"], p["mode"], p["concurrency"], p["repetition"]) == (target, mode, c, repetition):
                return p
        return None

    def median(self, target: str, mode: str, c: int, key: str) -> float:
        return _median((p or {}).get(key) for p in (self._one(target, mode, c, r) for r in self.repetitions))

    def added(self, target: str, mode: str, c: int, key: str) -> float:
        """Median over repetitions of (gateway - direct) in the same repetition."""
        return self.between(target, DIRECT, mode, c, key)

    def between(self, target: str, other: str, mode: str, c: int, key: str) -> float:
        """Median over repetitions of (target - other) in the same repetition."""
        diffs = []
        for r in self.repetitions:
            a, b = self._one(target, mode, c, r), self._one(other, mode, c, r)
            if a and b and a.get(key) is not None and b.get(key) is not None:
                diffs.append(a[key] - b[key])
        return _median(diffs)

    def ratio(self, target: str, mode: str, c: int, key: str) -> float:
        """Median over repetitions of gateway / direct in the same repetition."""
        ratios = []
        for r in self.repetitions:
            gw, direct = self._one(target, mode, c, r), self._one(DIRECT, mode, c, r)
            if gw and direct and direct.get(key):
                ratios.append(gw[key] / direct[key])
        return _median(ratios)

    def ratio_between(self, target: str, other: str, mode: str, c: int, key: str, added: bool = False) -> float:
        """Median over repetitions of target / other in the same repetition; with added, of
        (target - direct) / (other - direct)."""
        ratios = []
        for r in self.repetitions:
            a, b, d = self._one(target, mode, c, r), self._one(other, mode, c, r), self._one(DIRECT, mode, c, r)
            if not (a and b) or a.get(key) is None or b.get(key) is None:
                continue
            x, y = a[key], b[key]
            if added:
                if not d or d.get(key) is None:
                    continue
                x, y = x - d[key], y - d[key]
            if y and not math.isnan(x) and not math.isnan(y):
                ratios.append(x / y)
        return _median(ratios)

    def per_message(self, target: str, mode: str, c: int) -> float:
        """Median over repetitions of server CPU per stream / messages per stream."""
        return _median(_cpu_per_message(p) for p in (self._one(target, mode, c, r) for r in self.repetitions))

    def per_message_ratio(self, target: str, mode: str, other: str, c: int) -> float:
        """Median over repetitions of (CPU per message in mode) / (in other), same repetition."""
        ratios = []
        for r in self.repetitions:
            a = _cpu_per_message(self._one(target, mode, c, r))
            b = _cpu_per_message(self._one(target, other, c, r))
            if a is not None and b:
                ratios.append(a / b)
        return _median(ratios)

    def errors(self) -> int:
        return sum(p["errors"] for p in self.phases)


def _cpu_per_message(phase: Phase | None) -> float | None:
    # A phase whose calls all failed read no messages: no figure rather than a division by zero.
    if not phase or not phase.get("messages_per_call") or phase.get("gateway_cpu_ms") is None or not phase["requests"]:
        return None
    return phase["gateway_cpu_ms"] / phase["messages_per_call"]


def _f(value: float, digits: int = 2, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _label(target: str) -> str:
    if target == DIRECT:
        return "direct (aiohttp client)"
    if target == FLOOR:
        return "gRPC floor (no work)"
    if target == PASSTHROUGH:
        return "bare pass-through (grpc.aio + aiohttp, no features)"
    if target == ROUTE:
        return "Tollway, a route of two weighted targets"
    if target == FALLBACK:
        return "Tollway, a route falling back after a 503"
    if target == MERGED:
        return "Tollway, deltas merged (option)"
    if target == BASELINE:
        return "Tollway @ baseline"
    if target == PORTKEY:
        return "Portkey gateway (Node)"
    return f"Tollway, {target} transport"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _present(fig: Figures, targets: list[str], mode: str) -> list[str]:
    return [t for t in targets if any(p["target"] == t and p["mode"] == mode for p in fig.phases)]


def _unary_rows(fig: Figures, targets: list[str]) -> list[list[str]]:
    rows = []
    for c in (1, 50):
        for t in _present(fig, targets, "unary"):
            gw = t != DIRECT
            m = lambda key: fig.median(t, "unary", c, key)  # noqa: E731
            rows.append([
                str(c), _label(t), _f(m("p50_ms")), _f(m("p99_ms")),
                _f(fig.added(t, "unary", c, "p50_ms"), sign=True) if gw else "",
                _f(fig.added(t, "unary", c, "p99_ms"), sign=True) if gw else "",
                _f(m("rps"), 0), _f(fig.ratio(t, "unary", c, "rps")) if gw else "1",
                _f(m("gateway_cpu_ms")) if gw else "", _f(m("loop_thread_cpu_ms")) if gw else "",
                _f(m("client_cpu_ms")), _f(m("upstream_cpu_ms"), 3),
                _f(m("other_cores")),
            ])
    return rows


def _stream_rows(fig: Figures, targets: list[str], mode: str = "stream") -> list[list[str]]:
    rows = []
    for c in (1, 50):
        for t in _present(fig, targets, mode):
            gw = t != DIRECT
            m = lambda key: fig.median(t, mode, c, key)  # noqa: E731
            rows.append([
                str(c), _label(t), _f(m("ttft_p50_ms")), _f(m("ttft_p99_ms")),
                _f(fig.added(t, mode, c, "ttft_p50_ms"), sign=True) if gw else "",
                _f(fig.added(t, mode, c, "ttft_p99_ms"), sign=True) if gw else "",
                _f(m("p50_ms")), _f(fig.added(t, mode, c, "p50_ms"), sign=True) if gw else "",
                _f(m("rps"), 0), _f(fig.ratio(t, mode, c, "rps")) if gw else "1",
                _f(m("messages_per_call"), 1) if gw else "",
                _f(m("gateway_cpu_ms")) if gw else "", _f(m("loop_thread_cpu_ms")) if gw else "",
                _f(m("client_cpu_ms")), _f(m("upstream_cpu_ms"), 3),
                _f(m("other_cores")),
            ])
    return rows


def _routing_rows(fig: Figures, first: str) -> list[list[str]]:
    """The same request as "provider/model" and as a two-target route: same gateway, same run."""
    rows = []
    for mode in ("unary", "stream"):
        for c in (1, 50):
            m = lambda t, key: fig.median(t, mode, c, key)  # noqa: E731
            d = lambda key: fig.between(ROUTE, first, mode, c, key)  # noqa: E731
            rows.append([mode, str(c), _f(m(first, "p50_ms")), _f(m(ROUTE, "p50_ms")), _f(d("p50_ms"), sign=True),
                         _f(d("p99_ms"), sign=True), _f(m(first, "gateway_cpu_ms")), _f(m(ROUTE, "gateway_cpu_ms")),
                         _f(d("gateway_cpu_ms"), 3, sign=True)])
    return rows


def _fallback_rows(fig: Figures, first: str) -> list[list[str]]:
    rows = []
    for mode in ("unary", "stream"):
        for c in (1, 50):
            m = lambda key: fig.median(FALLBACK, mode, c, key)  # noqa: E731
            over = lambda key: fig.between(FALLBACK, first, mode, c, key)  # noqa: E731
            rows.append([mode, str(c), _f(m("p50_ms")), _f(m("p99_ms")),
                         _f(fig.added(FALLBACK, mode, c, "p50_ms"), sign=True),
                         _f(fig.added(FALLBACK, mode, c, "p99_ms"), sign=True),
                         _f(over("p50_ms"), sign=True), _f(m("rps"), 0), _f(m("gateway_cpu_ms")),
                         _f(over("gateway_cpu_ms"), sign=True)])
    return rows


def _baseline_rows(fig: Figures, first: str) -> list[list[str]]:
    """This tree's gateway against the baseline tree's, same transport, same repetitions."""
    rows = []
    for mode in ("unary", "stream"):
        for c in (1, 50):
            m = lambda t, key: fig.median(t, mode, c, key)  # noqa: E731
            d = lambda key: fig.between(first, BASELINE, mode, c, key)  # noqa: E731
            ttft = _f(d("ttft_p50_ms"), sign=True) if mode == "stream" else ""
            rows.append([mode, str(c), _f(m(BASELINE, "p50_ms")), _f(m(first, "p50_ms")), _f(d("p50_ms"), sign=True),
                         _f(d("p99_ms"), sign=True), ttft, _f(m(BASELINE, "rps"), 0), _f(m(first, "rps"), 0),
                         _f(m(BASELINE, "gateway_cpu_ms"), 3), _f(m(first, "gateway_cpu_ms"), 3),
                         _f(d("gateway_cpu_ms"), 3, sign=True), _f(d("loop_thread_cpu_ms"), 3, sign=True)])
    return rows


def _per_message_rows(fig: Figures, first: str) -> list[list[str]]:
    """Text and tool-call streams of the same gateway: CPU per stream, messages, CPU per message."""
    rows = []
    for c in (1, 50):
        for mode, what in (("stream", "text"), ("tool", "tool call")):
            m = lambda key: fig.median(first, mode, c, key)  # noqa: E731
            ratio = _f(fig.per_message_ratio(first, "tool", "stream", c)) if mode == "tool" else ""
            rows.append([str(c), what, _f(m("gateway_cpu_ms"), 3), _f(m("messages_per_call"), 1),
                         _f(fig.per_message(first, mode, c) * 1000, 1), ratio, str(_errors(fig, first, mode, c))])
    return rows


def _errors(fig: Figures, target: str, mode: str, c: int) -> int:
    return sum(p["errors"] for p in fig.phases if (p["target"], p["mode"], p["concurrency"]) == (target, mode, c))


def _failure_lines(fig: Figures) -> list[str]:
    """Each (target, mode, c) with failed calls, and the first failure: a figure measured
    over failing calls is not a figure."""
    failed: dict[tuple[str, str, int], list[Phase]] = {}
    for p in fig.phases:
        if p["errors"]:
            failed.setdefault((p["target"], p["mode"], p["concurrency"]), []).append(p)
    if not failed:
        return []
    rows = [[_label(t), _MODE_NAMES[mode], str(c), str(sum(p["errors"] for p in ps)),
             str(sum(p["requests"] for p in ps)), ps[0]["first_error"].replace("|", "\\|")]
            for (t, mode, c), ps in failed.items()]
    return ["### FAILED CALLS (their phases' figures do not count)", "",
            *_table(["target", "phase", "c", "failed", "answered", "first failure"], rows), ""]


_MODE_NAMES = {"unary": "unary", "stream": "stream", "paced": "paced stream", "tool": "tool stream"}


def _verdict(value: float, ok: Callable[[float], bool]) -> str:
    if math.isnan(value):
        return "-"
    return "met" if ok(value) else "missed"


def _target_rows(fig: Figures, t: str) -> list[list[str]]:
    """The performance targets (shared PERFORMANCE.md), each against its figure in this run."""
    portkey = _present(fig, [PORTKEY], "unary")
    bare = _present(fig, [PASSTHROUGH], "unary")
    added50 = fig.added(t, "unary", 1, "p50_ms")
    added99 = fig.added(t, "unary", 1, "p99_ms")
    cpu50 = fig.median(t, "unary", 50, "gateway_cpu_ms")
    rows = []
    if portkey:
        over = fig.between(t, PORTKEY, "unary", 1, "p50_ms")
        rows.append(["unary c=1, added p50 minus Portkey's", "<= 0", f"{_f(over, sign=True)} ms",
                     _verdict(over, lambda v: v <= 0.0)])
    rows.append(["unary c=1, added p99", f"<= {P99_GOAL_MS} ms", f"{_f(added99, sign=True)} ms",
                 _verdict(added99, lambda v: v <= P99_GOAL_MS)])
    if portkey:
        ratio = fig.ratio_between(t, PORTKEY, "unary", 50, "rps")
        rows.append(["unary c=50, calls/s / Portkey's", f">= {RPS_OVER_PORTKEY_GOAL:.2f}", _f(ratio),
                     _verdict(ratio, lambda v: v >= RPS_OVER_PORTKEY_GOAL)])
    if bare:
        ratio = fig.ratio_between(t, PASSTHROUGH, "unary", 50, "gateway_cpu_ms")
        rows.append(["unary c=50, CPU/call / the bare pass-through's", "<= 1.00", _f(ratio),
                     _verdict(ratio, lambda v: v <= 1.0)])
    rows.append(["unary c=50, CPU/call (the pass-through's figure where the goal was set)",
                 f"<= {UNARY_CPU_GOAL_MS:.2f} ms", f"{_f(cpu50)} ms", _verdict(cpu50, lambda v: v <= UNARY_CPU_GOAL_MS)])
    if portkey:
        ratio = fig.ratio_between(t, PORTKEY, "stream", 50, "rps")
        rows.append(["stream c=50, streams/s / Portkey's", ">= 1.00", _f(ratio), _verdict(ratio, lambda v: v >= 1.0)])
    rows += _stream_goal_rows(fig, t, "stream", "")
    if bare:
        ratio = fig.ratio_between(t, PASSTHROUGH, "stream", 50, "gateway_cpu_ms")
        rows.append(["stream c=50, CPU/stream / the bare pass-through's (indicative)", "<= 1.00", _f(ratio),
                     _verdict(ratio, lambda v: v <= 1.0)])
    return [*rows, *_paced_target_rows(fig, t), *_tool_target_rows(fig, t)]


# The side-by-side table's columns: (mode, c, phase key, figure over the direct call, heading).
_SIDE_COLUMNS = [
    ("unary", 1, "p50_ms", True, "unary c=1: added p50"),
    ("unary", 1, "p99_ms", True, "added p99"),
    ("unary", 1, "gateway_cpu_ms", False, "CPU/call"),
    ("unary", 50, "rps", False, "unary c=50: calls/s"),
    ("unary", 50, "gateway_cpu_ms", False, "CPU/call"),
    ("stream", 1, "ttft_p50_ms", True, "stream c=1: added TTFT p50"),
    ("stream", 1, "gateway_cpu_ms", False, "CPU/stream"),
    ("stream", 50, "rps", False, "stream c=50: streams/s"),
    ("stream", 50, "gateway_cpu_ms", False, "CPU/stream"),
]


def _side_by_side_lines(fig: Figures, tollway: str, version: str | None) -> list[str]:
    """Tollway, Portkey, the direct call, the bare pass-through and the floor on one table, and
    Tollway / Portkey."""
    if not _present(fig, [PORTKEY], "unary"):
        return []
    rows = []
    for t in (tollway, PORTKEY, DIRECT, PASSTHROUGH, FLOOR):
        if t == PASSTHROUGH and not _present(fig, [t], "unary"):
            continue
        row = [_label(t) + (f" {version}" if t == PORTKEY and version else "")]
        for mode, c, key, added, _ in _SIDE_COLUMNS:
            if t == DIRECT:
                row.append("0" if added else ("" if key == "gateway_cpu_ms" else _f(fig.median(t, mode, c, key), 0)))
            elif added:
                row.append(_f(fig.added(t, mode, c, key), sign=True))
            else:
                row.append(_f(fig.median(t, mode, c, key), 0 if key == "rps" else 2))
        rows.append(row)
    rows.append(["**Tollway / Portkey**"] + [f"**{_f(fig.ratio_between(tollway, PORTKEY, mode, c, key, added))}x**"
                                             for mode, c, key, added, _ in _SIDE_COLUMNS])
    return [
        (f"### Side by side: Tollway ({tollway} transport), Portkey, the direct call, the bare pass-through, "
         "the gRPC floor (ms; CPU is "
         "the server's, per call or stream; \"added\" is over the direct call; the last row is Tollway / Portkey, "
         "medians of per-repetition ratios of the same figures: below 1 is less time or CPU, above 1 more "
         "calls/s)"),
        "",
        *_table(["target", *(h for *_, h in _SIDE_COLUMNS)], rows),
        "",
    ]


def _tool_target_rows(fig: Figures, t: str) -> list[list[str]]:
    """A stream of tool-call deltas costs within 10 % of a text stream's CPU per message."""
    if not _present(fig, [t], "tool"):
        return []
    rows = []
    for c in (1, 50):
        ratio = fig.per_message_ratio(t, "tool", "stream", c)
        # Calls that failed their check cost CPU too: no verdict over them.
        verdict = "failed calls" if _errors(fig, t, "tool", c) else _verdict(ratio, lambda v: v <= TOOL_PER_MESSAGE_GOAL)
        rows.append([f"tool stream c={c}, gateway CPU per message / text stream's", f"<= {TOOL_PER_MESSAGE_GOAL:.2f}",
                     _f(ratio), verdict])
    return rows


def _stream_goal_rows(fig: Figures, t: str, mode: str, what: str) -> list[list[str]]:
    """The stream goals (added TTFT p50, CPU per stream at c=1 and c=50) for one mode of t."""
    ttft = fig.added(t, mode, 1, "ttft_p50_ms")
    rows = [[f"stream c=1{what}, added TTFT p50", f"<= {TTFT_GOAL_MS} ms", f"{_f(ttft, sign=True)} ms",
             _verdict(ttft, lambda v: v <= TTFT_GOAL_MS)]]
    for c, goal in STREAM_CPU_GOALS_MS.items():
        cpu = fig.median(t, mode, c, "gateway_cpu_ms")
        rows.append([f"stream c={c}{what}, CPU/stream", f"<= {goal} ms", f"{_f(cpu)} ms",
                     _verdict(cpu, lambda v: v <= goal)])
    return rows


def _paced_target_rows(fig: Figures, t: str) -> list[list[str]]:
    """The stream goals again with events 1 ms apart (indicative: the goals were set for back to back)."""
    if not _present(fig, [t], "paced"):
        return []
    return _stream_goal_rows(fig, t, "paced", ", 1 ms apart (indicative)")


def _tool_lines(fig: Figures, targets: list[str], first: str, stream_header: list[str]) -> list[str]:
    if not _present(fig, [first], "tool"):  # a run from before tool streams were measured
        return []
    return [
        ("### Tool-call streams, one call in 20 chunks written back to back (ms; CPU in ms per stream; TTFT: time "
         "to the first message)"),
        "",
        *_table(stream_header, _stream_rows(fig, targets, "tool")),
        "",
        (f"### CPU per message, tool-call deltas against text deltas (the gateway, {first} transport; the ratio "
         "is the median of per-repetition ratios)"),
        "",
        *_table(["c", "stream", "server CPU/stream (ms)", "messages/stream", "server CPU/message (us)",
                 "tool / text, per message", "failed calls"], _per_message_rows(fig, first)),
        "",
    ]


def _memory_lines(memory: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for transport, m in memory.items():
        steps = m.get("soak_steps") or []
        soak = ", ".join(f"{n}: {kib / 1024:.1f}" for n, kib in steps) or "-"
        rows.append([transport, f"{m['after_warmup_kib'] / 1024:.1f}", soak,
                     f"{m.get('end_kib', 0) / 1024:.1f}", f"{m.get('peak_kib', 0) / 1024:.1f}"])
    return _table(["gateway", "RSS after warm-up (MiB)", "RSS after N further unary requests (N: MiB)",
                   "RSS at end (MiB)", "peak RSS (MiB)"], rows)


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    fig = Figures(result["phases"])
    transports = meta["transports"]
    first = transports[0]
    targets = [DIRECT, FLOOR, PASSTHROUGH, *transports, BASELINE, ROUTE, FALLBACK, MERGED, PORTKEY]
    shipped = SHIPPED_TRANSPORT if SHIPPED_TRANSPORT in transports else first
    stream_header = ["c", "target", "TTFT p50", "TTFT p99", "added TTFT p50", "added TTFT p99", "stream p50",
                     "added stream p50", "streams/s", "x direct", "messages/stream", "server CPU",
                     "of which loop thread", "load-gen CPU", "upstream CPU", "other load (cores)"]
    out = [
        f"Run: `{meta['command']}` on {meta['date']}; {meta['nproc']} cores ({meta['cpu_model']}), "
        f"Python {meta['python']}; code {meta.get('code', 'unknown')}; medians of {meta['repetitions']} repetition(s); "
        f"{result['duration_s']} s of load; {fig.errors()} failed calls."
        + (" PROFILED: the gateways ran under cProfile, figures are not comparable." if meta["profiled"] else "")
        + (f" Baseline (\"Tollway @ baseline\"): the gateway of the tree at {meta['baseline_tree']}, with "
           "the upstream client it ships." if meta.get("baseline_tree") else "")
        + (f" Portkey: @portkey-ai/gateway {meta['portkey']} on node, called over HTTP with the stand-in as its "
           "OpenAI custom host." if meta.get("portkey") else ""),
        "",
        *_failure_lines(fig),
        *_side_by_side_lines(fig, shipped, meta.get("portkey")),
        "### Unary (ms; CPU in ms per request; server CPU is the gateway's, or the floor's)",
        "",
        *_table(["c", "target", "p50", "p99", "added p50", "added p99", "req/s", "x direct", "server CPU",
                 "of which loop thread", "load-gen CPU", "upstream CPU", "other load (cores)"], _unary_rows(fig, targets)),
        "",
        "### Streaming, 20 chunks written back to back (ms; CPU in ms per stream; TTFT: time to the first text)",
        "",
        *_table(stream_header, _stream_rows(fig, targets)),
        "",
        "### Streaming, 20 chunks 1 ms apart, each in a read of its own (ms; CPU in ms per stream)",
        "",
        *_table(stream_header, _stream_rows(fig, targets, "paced")),
        "",
        *_tool_lines(fig, targets, first, stream_header),
        f"### The routing layer on the happy path ({first} transport): \"mixrouter/bench-model\" against "
        "the route \"bench-weighted\" (3:1 over two providers on the same stand-in); differences are medians "
        "of per-repetition differences",
        "",
        *_table(["mode", "c", "p50 as provider/model", "p50 as route", "route minus provider/model, p50",
                 "same, p99", "CPU as provider/model", "CPU as route", "route minus provider/model, CPU"], _routing_rows(fig, first)),
        "",
        f"### Fallback ({first} transport): route \"bench-fallback\", priority 1 answers 503 at once, priority 2 "
        "serves (no retries, breaker held closed: every call pays the failed attempt)",
        "",
        *_table(["mode", "c", "p50", "p99", "added p50 (vs direct)", "added p99 (vs direct)",
                 "p50 over the happy path", "calls/s", "server CPU", "CPU over the happy path"],
                _fallback_rows(fig, first)),
        "",
        "### Memory (gateway RSS)",
        "",
        *_memory_lines(result["memory"]),
        "",
        "Idle CPU of each server with no calls (ms of CPU per second): "
        + ", ".join(f"{name} {ms}" for name, ms in result.get("idle_cpu_ms_per_s", {}).items()) + ". "
        "Upstream connections opened during the measured phases (0: the pool kept reusing its connections): "
        + ", ".join(f"{t} {sum(p['upstream_connections'] for p in fig.phases if p['target'] == t)}"
                    for t in targets if t != FLOOR and any(p["target"] == t for p in fig.phases)) + ".",
    ]
    if _present(fig, [BASELINE], "unary"):
        out += ["", (f"### Before and after: this tree's gateway against the baseline tree's ({first} transport; "
                     "differences are this tree minus the baseline, medians of per-repetition differences)"), "",
                *_table(["mode", "c", "p50 baseline", "p50 this tree", "p50 difference", "p99 difference",
                         "TTFT p50 difference", "calls/s baseline", "calls/s this tree", "CPU baseline",
                         "CPU this tree", "CPU difference", "loop-thread CPU difference"],
                        _baseline_rows(fig, first))]
    for t in transports:
        out += ["", f"### Targets, {t} transport", "",
                *_table(["target", "goal", "measured", ""], _target_rows(fig, t))]
    if _present(fig, [MERGED], "stream"):
        out += ["", f"### Stream targets with deltas merged (an option, off in the shipped server; {first} transport)",
                "", *_table(["target", "goal", "measured", ""], _merged_rows(fig))]
    return "\n".join(out) + "\n"


def _merged_rows(fig: Figures) -> list[list[str]]:
    return [*_stream_goal_rows(fig, MERGED, "stream", " (back to back)"),
            *_stream_goal_rows(fig, MERGED, "paced", " (1 ms apart)")]
