"""Kubernetes manifests: schema-valid for a recent release, and consistent with each other."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import ENV_PREFIX, Settings
from tests.deploy.stack import K8S_DIR
from tests.deploy.test_dockerfile import stages

KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
SERVICE_MONITOR = K8S_DIR / "prometheus-operator" / "servicemonitor.yaml"


def k8s_version() -> str:
    """The newest Kubernetes schema bundled with kubernetes-validate (offline)."""
    version: str = kubernetes_validate.latest_version()
    major, minor = (int(x) for x in version.split(".")[:2])
    assert (major, minor) >= (1, 30), f"bundled schemas too old: {version}"
    return version


def manifests() -> list[Path]:
    """The manifests `kubectl apply -k deploy/k8s` applies (kustomization.yaml excluded)."""
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p != KUSTOMIZATION)


def resources() -> dict[str, dict[str, Any]]:
    """Every resource of the validated manifests, by kind."""
    found = {}
    for path in manifests():
        for doc in yaml.safe_load_all(path.read_text("utf-8")):
            found[doc["kind"]] = doc
    return found


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_manifest_is_schema_valid(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text("utf-8")):
        kubernetes_validate.validate(doc, k8s_version(), strict=True)


def test_validation_rejects_a_misspelled_field() -> None:
    deployment = copy.deepcopy(resources()["Deployment"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, k8s_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text("utf-8"))
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifests())


def test_deployment_probes_resources_and_scraping() -> None:
    deployment = resources()["Deployment"]
    pod = deployment["spec"]["template"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["ROCKETSERVE_PORT"]) == ports["http"]
    assert int(env["ROCKETSERVE_GRPC_PORT"]) == ports["grpc"]
    fields = {f.upper() for f in Settings.model_fields}
    assert all(name[len(ENV_PREFIX) :] in fields for name in env), "unknown setting"
    runtime_user = dict(stages()["runtime"])["USER"].split(":")[0]
    assert str(pod["spec"]["securityContext"]["runAsUser"]) == runtime_user


def test_service_and_autoscaler_target_the_deployment() -> None:
    found = resources()
    deployment, service = found["Deployment"], found["Service"]
    hpa = found["HorizontalPodAutoscaler"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {
        p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]
    }
    assert all(p["targetPort"] in container_ports for p in service["spec"]["ports"])
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = found["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_service_monitor_selects_the_service() -> None:
    """A Prometheus Operator CRD: no bundled schema, so checked against the Service instead."""
    monitor = yaml.safe_load(SERVICE_MONITOR.read_text("utf-8"))
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    service = resources()["Service"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
