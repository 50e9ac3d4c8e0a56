"""MetricsConfig: the `[metrics]` table (the listen address is `server.metrics_listen`).

    [metrics]
    label_keys = ["team"]     # request labels that become metric labels (as label_team)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollway.service.config.keys import reject_unknown

# Request label keys may hold what a Prometheus label name cannot ("cost-center").
_NOT_IN_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")
# Every request label key is a free-form string of the caller's: only the ones an operator
# lists become metric labels, and only this many, so the series count stays in the operator's hands.
MAX_LABEL_KEYS = 8


def metric_label_name(key: str) -> str:
    """The Prometheus label a request label key becomes: `label_` and the key, every character
    a label name cannot hold as `_` (kube-state-metrics does the same with Kubernetes labels)."""
    return "label_" + _NOT_IN_LABEL_NAME.sub("_", key)


@dataclass(frozen=True)
class MetricsConfig:
    # Request labels (the request's own, or the caller's configured ones, which win) whose
    # values are metric labels on the request, token and cost counters.
    label_keys: tuple[str, ...] = ()

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(metric_label_name(key) for key in self.label_keys)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> MetricsConfig:
        reject_unknown(table, {"label_keys"}, "in [metrics]")
        keys = table.get("label_keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            raise ValueError("metrics.label_keys must be a list of non-empty strings (request label keys)")
        if len(keys) > MAX_LABEL_KEYS:
            raise ValueError(f"metrics.label_keys lists {len(keys)} keys; at most {MAX_LABEL_KEYS} may be "
                             "metric labels")
        names: dict[str, str] = {}
        for key in keys:
            name = metric_label_name(key)
            if name in names:
                raise ValueError(f"metrics.label_keys: {names[name]!r} and {key!r} are both the metric label {name}")
            names[name] = key
        return cls(label_keys=tuple(keys))
