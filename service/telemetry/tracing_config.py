"""TracingConfig: the `[tracing]` table, and the standard OTEL_* variables where it says nothing.

    [tracing]
    otlp_endpoint = "http://otel-collector:4317"   # OTLP over gRPC; http:// plaintext, https:// TLS
    sample_ratio = 0.1                             # of new traces; a caller's sampled parent is followed
    service_name = "tollway"
    capture_content = false                        # true: prompts and answers on attempt spans
    propagate_upstream = true                      # traceparent on requests to providers

No OpenTelemetry import here: the config is read by every command, traces only by `serve`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from tollway.service.config.keys import reject_unknown

DEFAULT_SERVICE_NAME = "tollway"

# OTEL_TRACES_SAMPLER values: (parent-based, fixed ratio or None for OTEL_TRACES_SAMPLER_ARG).
_SAMPLERS: Mapping[str, tuple[bool, float | None]] = {
    "always_on": (False, 1.0),
    "always_off": (False, 0.0),
    "traceidratio": (False, None),
    "parentbased_always_on": (True, 1.0),
    "parentbased_always_off": (True, 0.0),
    "parentbased_traceidratio": (True, None),
}


@dataclass(frozen=True)
class TracingConfig:
    # None: tracing is off (no tracer provider at all, nothing per call).
    otlp_endpoint: str | None = None
    # Of traces this gateway starts; a caller's traceparent decides for its own trace when
    # parent_based (the sampled flag is followed either way).
    sample_ratio: float = 1.0
    parent_based: bool = True
    service_name: str = DEFAULT_SERVICE_NAME
    # Prompt and answer text on attempt spans (bounded); never keys, never metadata.
    capture_content: bool = False
    # traceparent/tracestate on upstream requests, so an instrumented upstream (vLLM, a
    # proxy) continues the trace. Never on media fetches: those hosts are the caller's choice.
    propagate_upstream: bool = True
    # Where each setting came from, for the start-up log line: "[tracing]" or a variable name.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def enabled(self) -> bool:
        return self.otlp_endpoint is not None

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> TracingConfig:
        """Parse a `[tracing]` table; ValueError names the bad key."""
        allowed = {f.name for f in fields(cls)} - {"parent_based", "sources"}
        reject_unknown(table, allowed, "in [tracing]")
        values: dict[str, Any] = {}
        if "otlp_endpoint" in table:
            values["otlp_endpoint"] = parse_endpoint(table["otlp_endpoint"], "tracing.otlp_endpoint")
        if "sample_ratio" in table:
            values["sample_ratio"] = parse_ratio(table["sample_ratio"], "tracing.sample_ratio")
        if "service_name" in table:
            name = table["service_name"]
            if not isinstance(name, str) or not name.strip():
                raise ValueError("tracing.service_name must be a non-empty string")
            values["service_name"] = name
        for key in ("capture_content", "propagate_upstream"):
            if key in table:
                if not isinstance(table[key], bool):
                    raise ValueError(f"tracing.{key} must be true or false")
                values[key] = table[key]
        return cls(**values, sources={key: "[tracing]" for key in values})

    def with_environment(self, environ: Mapping[str, str]) -> TracingConfig:
        """The standard OTEL_* variables fill what the file left unset; OTEL_SDK_DISABLED=true
        turns tracing off whatever the file says (the SDK's own switch, meant for exactly that).
        ValueError names a variable whose value cannot be used."""
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return replace(self, otlp_endpoint=None, sources={**self.sources, "otlp_endpoint": "OTEL_SDK_DISABLED"})
        changes: dict[str, Any] = {}
        sources = dict(self.sources)
        if "otlp_endpoint" not in sources:
            for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
                if environ.get(name):
                    changes["otlp_endpoint"] = parse_endpoint(environ[name], name)
                    sources["otlp_endpoint"] = name
                    break
        if "service_name" not in sources and environ.get("OTEL_SERVICE_NAME", "").strip():
            changes["service_name"] = environ["OTEL_SERVICE_NAME"].strip()
            sources["service_name"] = "OTEL_SERVICE_NAME"
        if "sample_ratio" not in sources and environ.get("OTEL_TRACES_SAMPLER", "").strip():
            changes["parent_based"], changes["sample_ratio"] = _sampler_from(environ)
            sources["sample_ratio"] = "OTEL_TRACES_SAMPLER"
        config = replace(self, **changes, sources=sources)
        if config.enabled:
            # Only OTLP over gRPC is exported: an endpoint meant for OTLP/HTTP (port 4318) would
            # silently receive nothing.
            for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
                protocol = environ.get(name, "").strip()
                if protocol and protocol != "grpc":
                    raise ValueError(f"{name}={protocol!r}: traces are exported with OTLP over gRPC only "
                                     '(set it to "grpc", or unset it)')
                if protocol:
                    break
        return config

    def describe(self) -> str:
        """The start-up log line's account of tracing (the endpoint without user info or query)."""
        if not self.enabled:
            why = self.sources.get("otlp_endpoint")
            return f"off ({why}=true)" if why == "OTEL_SDK_DISABLED" else "off (no tracing.otlp_endpoint)"
        sampler = "parent-based ratio" if self.parent_based else "ratio"

        def where(key: str) -> str:
            return f" (from {self.sources[key]})" if self.sources.get(key, "[tracing]") != "[tracing]" else ""

        return (f"OTLP/gRPC to {endpoint_address(self.otlp_endpoint or '')}{where('otlp_endpoint')}, "
                f"service {self.service_name!r}{where('service_name')}, {sampler} {self.sample_ratio:g}"
                f"{where('sample_ratio')}, content {'captured' if self.capture_content else 'not captured'}")


def parse_endpoint(value: object, where: str) -> str:
    """An OTLP/gRPC endpoint with its scheme: http:// (plaintext) or https:// (TLS)."""
    example = '(e.g. "http://otel-collector:4317")'
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a URL string {example}")
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"{where} {value!r} is not a valid URL {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where} {value!r} must start with http:// (plaintext) or https:// (TLS) "
                         f"and name a host {example}")
    if port is None:
        raise ValueError(f"{where} {value!r} must name a port {example}")
    if parts.username is not None or parts.query:
        # It would end up in the gRPC target (and in logs); a collector's token belongs in
        # OTEL_EXPORTER_OTLP_HEADERS, which stays out of the config file.
        raise ValueError(f"{where}: credentials or a query in the URL are not used; give the collector's "
                         "token in OTEL_EXPORTER_OTLP_HEADERS")
    return value.strip()


def endpoint_address(endpoint: str) -> str:
    """scheme://host:port of an endpoint: no user info or query, where a token could ride along."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}:{parts.port}"


def parse_ratio(value: object, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{where} must be a number from 0 to 1") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        raise ValueError(f"{where} must be a number from 0 to 1")
    return float(value)


def _sampler_from(environ: Mapping[str, str]) -> tuple[bool, float]:
    name = environ["OTEL_TRACES_SAMPLER"].strip().lower()
    if name not in _SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER={name!r} is not one this gateway knows "
                         f"({', '.join(_SAMPLERS)})")
    parent_based, ratio = _SAMPLERS[name]
    if ratio is None:
        arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        ratio = parse_ratio(arg, "OTEL_TRACES_SAMPLER_ARG") if arg else 1.0
    return parent_based, ratio
