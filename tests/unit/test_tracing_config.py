"""[tracing] and the standard OTEL_* variables: which wins, and what is refused at start-up."""

from __future__ import annotations

import pytest
from tollway.service.config.loader import ConfigError, load_config, parse_config
from tollway.service.telemetry.tracing_config import TracingConfig


def loaded(tmp_path, text: str, environ: dict[str, str]) -> TracingConfig:
    path = tmp_path / "tollway.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ).tracing


def refused(tmp_path, text: str, environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as err:
        loaded(tmp_path, text, environ)
    return str(err.value)


def test_tracing_is_off_without_an_endpoint(tmp_path):
    config = loaded(tmp_path, "", {"OTEL_SERVICE_NAME": "gw", "OTEL_TRACES_SAMPLER": "always_on"})
    assert not config.enabled
    assert config.describe() == "off (no tracing.otlp_endpoint)"


def test_the_file_wins_over_the_environment_key_by_key(tmp_path):
    config = loaded(tmp_path, '[tracing]\notlp_endpoint = "http://collector:4317"\nsample_ratio = 0.25\n', {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://elsewhere:4317", "OTEL_TRACES_SAMPLER": "always_off",
        "OTEL_SERVICE_NAME": "gateway-eu",
    })
    assert (config.otlp_endpoint, config.sample_ratio, config.parent_based) == ("http://collector:4317", 0.25, True)
    assert config.service_name == "gateway-eu"
    assert config.describe() == ("OTLP/gRPC to http://collector:4317, service 'gateway-eu' (from OTEL_SERVICE_NAME), "
                                 "parent-based ratio 0.25, content not captured")


def test_the_environment_fills_what_the_file_leaves_unset(tmp_path):
    config = loaded(tmp_path, "", {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example:4317",
        "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1",
    })
    # The traces-specific variable wins over the generic one, as the specification says.
    assert config.otlp_endpoint == "https://traces.example:4317"
    assert (config.sample_ratio, config.parent_based, config.service_name) == (0.1, False, "tollway")
    assert config.describe() == ("OTLP/gRPC to https://traces.example:4317 (from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), "
                                 "service 'tollway', ratio 0.1 (from OTEL_TRACES_SAMPLER), content not captured")


@pytest.mark.parametrize(("sampler", "parent_based", "ratio"), [
    ("always_on", False, 1.0), ("always_off", False, 0.0), ("parentbased_always_on", True, 1.0),
    ("parentbased_always_off", True, 0.0), ("parentbased_traceidratio", True, 1.0),
])
def test_every_standard_sampler_is_understood(tmp_path, sampler, parent_based, ratio):
    config = loaded(tmp_path, "", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_SAMPLER": sampler})
    assert (config.parent_based, config.sample_ratio) == (parent_based, ratio)


def test_otel_sdk_disabled_turns_tracing_off_even_when_the_file_configures_it(tmp_path):
    config = loaded(tmp_path, '[tracing]\notlp_endpoint = "http://collector:4317"\n', {"OTEL_SDK_DISABLED": "TRUE"})
    assert not config.enabled
    assert config.describe() == "off (OTEL_SDK_DISABLED=true)"


def test_bad_environment_values_are_refused_naming_the_variable(tmp_path):
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    assert refused(tmp_path, "", {**on, "OTEL_TRACES_SAMPLER": "jaeger_remote"}) == (
        "OTEL_TRACES_SAMPLER='jaeger_remote' is not one this gateway knows (always_on, always_off, traceidratio, "
        "parentbased_always_on, parentbased_always_off, parentbased_traceidratio)")
    assert refused(tmp_path, "", {**on, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}) == (
        "OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1")
    assert refused(tmp_path, "", {**on, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) == (
        "OTEL_EXPORTER_OTLP_PROTOCOL='http/protobuf': traces are exported with OTLP over gRPC only "
        '(set it to "grpc", or unset it)')
    assert refused(tmp_path, "", {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}) == (
        "OTEL_EXPORTER_OTLP_ENDPOINT 'collector:4317' must start with http:// (plaintext) or https:// (TLS) "
        'and name a host (e.g. "http://otel-collector:4317")')
    # A token never rides in the URL (it would reach the gRPC target and the log line).
    assert refused(tmp_path, "", {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:tw-test-pw@c:4317"}) == (
        "OTEL_EXPORTER_OTLP_ENDPOINT: credentials or a query in the URL are not used; give the collector's token in "
        "OTEL_EXPORTER_OTLP_HEADERS")
    # With tracing off, a protocol meant for another signal's exporter is none of its business.
    assert not loaded(tmp_path, "", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}).enabled


@pytest.mark.parametrize(("table", "message"), [
    ({"otlp_endpoint": "http://collector"}, 'tracing.otlp_endpoint \'http://collector\' must name a port '
                                            '(e.g. "http://otel-collector:4317")'),
    ({"otlp_endpoint": 4317}, 'tracing.otlp_endpoint must be a URL string (e.g. "http://otel-collector:4317")'),
    ({"sample_ratio": 1.5}, "tracing.sample_ratio must be a number from 0 to 1"),
    ({"sample_ratio": True}, "tracing.sample_ratio must be a number from 0 to 1"),
    ({"service_name": " "}, "tracing.service_name must be a non-empty string"),
    ({"capture_content": "yes"}, "tracing.capture_content must be true or false"),
    ({"propagate_upstream": 1}, "tracing.propagate_upstream must be true or false"),
    ({"sample_rate": 0.5}, "unknown key(s) in [tracing]: sample_rate (did you mean sample_ratio?)"),
    ({"parent_based": False}, "unknown key(s) in [tracing]: parent_based"),
])
def test_bad_tracing_keys_are_refused_by_name(table, message):
    with pytest.raises(ConfigError) as err:
        parse_config({"tracing": table})
    assert str(err.value) == message


def test_the_file_alone_configures_every_key():
    config = parse_config({"tracing": {"otlp_endpoint": "https://collector.observability:4317", "sample_ratio": 0,
                                       "service_name": "gw", "capture_content": True,
                                       "propagate_upstream": False}}).tracing
    assert config == TracingConfig(otlp_endpoint="https://collector.observability:4317", sample_ratio=0.0,
                                   service_name="gw", capture_content=True, propagate_upstream=False)
    assert config.describe() == ("OTLP/gRPC to https://collector.observability:4317, service 'gw', "
                                 "parent-based ratio 0, content captured")
