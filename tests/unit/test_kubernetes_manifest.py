"""deploy/kubernetes/tollway.yaml: probes on the gateway's own gRPC health service, a headless
Service naming the grpc port, a termination grace that outlasts the drain, and a ConfigMap
that tollway's own loader accepts."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import support
from tollway.service.config.loader import load_config
from tollway.service.gateway.server import SERVICE_NAME

MANIFEST = support.ROOT / "deploy" / "kubernetes" / "tollway.yaml"


@pytest.fixture(scope="module")
def documents() -> dict[str, dict[str, Any]]:
    loaded = [doc for doc in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if doc]
    kinds = [doc["kind"] for doc in loaded]
    assert sorted(kinds) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
    return {doc["kind"]: doc for doc in loaded}


@pytest.fixture(scope="module")
def pod(documents) -> dict[str, Any]:
    return documents["Deployment"]["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict[str, Any]:
    [only] = pod["containers"]
    return only


@pytest.fixture(scope="module")
def grpc_port(container) -> int:
    [port] = [p for p in container["ports"] if p.get("name") == "grpc"]
    return int(port["containerPort"])


@pytest.fixture(scope="module")
def config(documents, container, tmp_path_factory):
    """The ConfigMap's file, loaded by tollway's loader from where the pod mounts it."""
    args = container["args"]
    assert args[:2] == ["serve", "--config"]
    config_path = Path(args[2])
    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    [volume] = [v for v in documents["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    config_map = documents["ConfigMap"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    copy = tmp_path_factory.mktemp("configmap") / config_path.name
    copy.write_text(config_map["data"][config_path.name], encoding="utf-8")
    return load_config(copy, environ={})


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_probes_are_grpc_health_checks_on_the_grpc_port(container, grpc_port, probe):
    handler = {k: v for k, v in container[probe].items() if k in ("grpc", "httpGet", "tcpSocket", "exec")}
    assert list(handler) == ["grpc"]
    assert handler["grpc"]["port"] == grpc_port
    # A service the gateway registers with its health service (an unknown one is NOT_FOUND).
    assert handler["grpc"].get("service", "") in ("", SERVICE_NAME)


def test_readiness_asks_for_the_completion_service_and_fails_fast(container):
    probe = container["readinessProbe"]
    assert probe["grpc"]["service"] == "tollway.v1.Completion" == SERVICE_NAME
    assert probe["failureThreshold"] * probe["periodSeconds"] <= 5


def test_the_service_is_headless_and_names_the_grpc_port(documents, grpc_port):
    service = documents["Service"]["spec"]
    assert service["clusterIP"] == "None"
    [port] = service["ports"]
    assert port["name"] == "grpc"
    assert port["port"] == grpc_port
    assert port["targetPort"] in ("grpc", grpc_port)
    pod_labels = documents["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()


def test_termination_grace_outlasts_the_prestop_sleep_and_the_drain(pod, container, config):
    [sleep, seconds] = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(seconds) + config.server.grace_period_s


def test_the_config_map_loads_and_listens_on_every_interface_at_the_grpc_port(config, grpc_port):
    host, _, port = config.server.listen.rpartition(":")
    assert host in ("0.0.0.0", "[::]")
    assert int(port) == grpc_port
    assert config.source.endswith("tollway.toml")
    assert config.ledger.backend == "postgresql"
    # Clients of the headless Service re-resolve, and find new pods, when a connection ends.
    assert 0 < config.server.max_connection_age_s <= 600
    assert not config.callers.anonymous


def test_provider_keys_come_from_a_secret_and_none_is_written_down(container, config):
    assert [source["secretRef"]["name"] for source in container["envFrom"]] == ["tollway-keys"]
    assert config.providers is not None
    assert config.providers["mixrouter"].api_key_envs == ("MIXROUTER_API_KEY",)
    # The comment at the top says how the Secret is made; both variables are named there.
    header = MANIFEST.read_text(encoding="utf-8").split("apiVersion", 1)[0]
    assert "MIXROUTER_API_KEY" in header and "PGPASSWORD" in header
    assert "sk-" not in MANIFEST.read_text(encoding="utf-8")
    assert ":" not in config.ledger.dsn.split("@", 1)[0].removeprefix("postgresql://")  # no password in the DSN


def test_the_pod_runs_the_gateway_as_a_non_root_user_on_a_read_only_root(pod, container):
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert shlex.join(container["command"] + container["args"]).startswith("tollway serve --config ")


def test_metrics_are_served_on_a_declared_port_that_the_scrape_annotations_name(documents, container, config):
    assert config.server.metrics_listen is not None
    host, _, port = config.server.metrics_listen.rpartition(":")
    assert host in ("0.0.0.0", "[::]")
    [declared] = [p for p in container["ports"] if p.get("name") == "metrics"]
    assert declared["containerPort"] == int(port)
    annotations = documents["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_traces_stay_off_until_an_endpoint_is_set_and_spans_name_the_pod(container, config):
    env = {item["name"]: item for item in container.get("env", [])}
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert config.tracing.otlp_endpoint is None
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "k8s.pod.name=$(POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
