"""The per-call cost of the metrics hook: GatewayMetrics.call_finished for a finished unary call
(one attempt, usage with cache and reasoning tokens, priced), timed in-process over 100,000
calls, best of 7; and the same call with metrics off (the one None check).

    .venv/bin/python -m bench.metrics_hook
"""

from __future__ import annotations

import timeit
from typing import Any

from tollway.service.admission.auth import Caller
from tollway.service.gateway.call import Call
from tollway.service.routing.router import RoutedCall
from tollway.service.routing.routes import Route, Target
from tollway.service.telemetry.metrics import GatewayMetrics
from tollway.service.telemetry.metrics_config import MetricsConfig
from tollway.v1 import completion_pb2 as pb

CALLS = 100_000
REPEAT = 7


def finished_call(metrics: GatewayMetrics | None, labels: dict[str, str]) -> Call:
    request = pb.CompleteRequest(model="fast")
    # The hook reads none of the state or the ledger.
    state: Any = None
    call = Call("Complete", request, state, state, metrics)
    call.caller = Caller("search-team")
    call.labels = labels
    route = Route("fast", (Target("mixrouter", "gemini-2.0-flash"),))
    routed = RoutedCall(route, request, 0.0)
    routed.target = route.targets[0]
    routed.reached_upstream = True
    attempt = pb.Attempt(provider="mixrouter", model="gemini-2.0-flash", code=0)
    attempt.duration.FromNanoseconds(800_000_000)
    routed.attempts.append(attempt)
    call.routed = routed
    call.usage = pb.Usage(input=pb.InputUsage(total=1986, text=1886, cache_read=100),
                          output=pb.OutputUsage(total=120, text=100, reasoning=20))
    call.cost = pb.Cost(total_nano_usd=351_600)
    return call


def per_call_us(call: Call) -> float:
    count = getattr(call, "_count")
    count("OK")  # the first call of a label combination resolves its children
    return min(timeit.repeat(lambda: count("OK"), number=CALLS, repeat=REPEAT)) / CALLS * 1e6


def main() -> None:
    plain = finished_call(GatewayMetrics(MetricsConfig()), {})
    labelled = finished_call(GatewayMetrics(MetricsConfig(label_keys=("team", "cost_center"))),
                             {"team": "search", "cost_center": "cc-17"})
    off = finished_call(None, {})
    print(f"metrics on:                 {per_call_us(plain):6.2f} us per call")
    print(f"metrics on, two label keys: {per_call_us(labelled):6.2f} us per call")
    print(f"metrics off:                {per_call_us(off):6.3f} us per call")


if __name__ == "__main__":
    main()
