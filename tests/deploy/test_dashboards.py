"""Static checks of the Grafana provisioning, the dashboard and the alert rules (no server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service.observability.metrics import ServiceMetrics
from tests.deploy.stack import (
    DASHBOARDS_DIR,
    GRAFANA_DIR,
    dashboard_files,
    dashboard_queries,
    load_dashboard,
    metric_names,
    panels,
    rule_files,
    rule_queries,
    substitute_grafana_variables,
)

DASHBOARD = DASHBOARDS_DIR / "rocketserve.json"


def exposed_metric_names() -> set[str]:
    """Every series name the service's metrics produce, suffixes included."""
    names = set()
    for family in ServiceMetrics().registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{s}" for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def provisioned_datasource_uids() -> set[str]:
    """uids of the datasources Grafana provisions."""
    uids = set()
    for path in (GRAFANA_DIR / "provisioning" / "datasources").glob("*.yml"):
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]:
            uids.add(source["uid"])
    return uids


def test_dashboards_exist_and_parse() -> None:
    assert DASHBOARD in dashboard_files()
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        assert dashboard["uid"] and dashboard["title"]
        nested = [p for row in dashboard["panels"] for p in row.get("panels", [])]
        ids = [p["id"] for p in dashboard["panels"] + nested]
        assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_every_panel_queries_the_provisioned_datasource(path: Path) -> None:
    uids = provisioned_datasource_uids()
    for panel in panels(load_dashboard(path)):
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in [panel, *panel["targets"]]:
            assert target["datasource"]["uid"] in uids, panel["title"]
        assert all(t.get("expr") for t in panel["targets"]), panel["title"]


def test_queries_read_only_metrics_the_service_exposes() -> None:
    exposed = exposed_metric_names()
    queries = [q for p in dashboard_files() for q in dashboard_queries(p)]
    queries += [q for p in rule_files() for q in rule_queries(p)]
    assert queries
    for query in queries:
        unknown = metric_names(query.expr) - exposed
        assert not unknown, f"{query.where}: unknown metric(s) {sorted(unknown)}"


def test_dashboard_covers_the_issue() -> None:
    """Traffic, errors, latency quantiles, queue, batching and the trade-off are all there."""
    dashboard = load_dashboard(DASHBOARD)
    exprs = " ".join(q.expr for q in dashboard_queries(DASHBOARD))
    for needle in (
        "sum by (status) (rate(rocketserve_requests_total",
        'status=~"5.."',
        "histogram_quantile(0.5, sum by (model, le) (rate(rocketserve_request_latency_seconds",
        "histogram_quantile(0.95, sum by (model, le) (rate(rocketserve_request_latency_seconds",
        "histogram_quantile(0.99, sum by (model, le) (rate(rocketserve_request_latency_seconds",
        "rocketserve_queue_wait_seconds_bucket",
        "rocketserve_inference_seconds_bucket",
        "rocketserve_batch_size_bucket",
        "rocketserve_queue_depth",
        "rocketserve_in_flight_requests",
    ):
        assert needle in exprs, needle
    by_type = {p["type"]: p for p in panels(dashboard)}
    table = " ".join(t["expr"] for t in by_type["table"]["targets"])
    for metric in (
        "rocketserve_model_top1_accuracy",
        "rocketserve_model_calibration_error",
        "rocketserve_model_parameters",
        "rocketserve_model_macs",
        "histogram_quantile(0.99",
    ):
        assert metric in table, metric
    assert all(t["instant"] and t["format"] == "table" for t in by_type["table"]["targets"])
    # only served versions: a retired one keeps its constant gauges, with model_info at 0
    assert all(
        re.search(r"rocketserve_model_info(\{[^}]*\})? == 1", t["expr"])
        for t in by_type["table"]["targets"]
    )
    charts = [p for p in panels(dashboard) if p["type"] == "xychart"]
    # Offline accuracy and live agreement with the teacher, each against live p99 latency.
    for metric in ("rocketserve_model_top1_accuracy", "rocketserve_agreement_ratio"):
        [chart] = [c for c in charts if any(metric in t["expr"] for t in c["targets"])]
        assert any("histogram_quantile(0.99" in t["expr"] for t in chart["targets"])
        series = chart["options"]["series"][0]
        renamed = chart["transformations"][-1]["options"]["renameByName"].values()
        assert {series["x"]["matcher"]["options"], series["y"]["matcher"]["options"]} <= set(
            renamed
        )


def test_grafana_variables_are_substituted() -> None:
    expr = 'rate(m{model=~"$model"}[$__rate_interval]) + rate(m{model=~"${model:regex}"}[$__range])'
    assert substitute_grafana_variables(expr) == (
        'rate(m{model=~".*"}[1m]) + rate(m{model=~".*"}[5m])'
    )
    with pytest.raises(KeyError, match="instance"):
        substitute_grafana_variables('up{instance="$instance"}')
    for path in dashboard_files():
        for query in dashboard_queries(path):
            assert "$" not in substitute_grafana_variables(query.expr), query.where


def test_alert_rules_cover_the_issue() -> None:
    rules = {q.where.split("/")[-1]: q.expr for p in rule_files() for q in rule_queries(p)}
    assert "rocketserve_requests_total" in rules["RocketserveHighErrorRatio"]
    assert "histogram_quantile(0.99" in rules["RocketserveLatencySLO"]
    queue = rules["RocketserveQueueNearCapacity"]
    assert "rocketserve_queue_depth" in queue and "rocketserve_queue_capacity" in queue
    assert "rocketserve_model_ready == 0" in rules["RocketserveModelNotReady"]
    assert "rocketserve_queue_capacity > 0" in rules["RocketserveModelNotReady"]  # not retired
    assert "rocketserve_agreement_total" in rules["RocketserveAgreementDrop"]
    assert "absent(up" in rules["RocketserveAbsent"]


def test_dashboard_provider_points_at_the_mounted_dashboards() -> None:
    provider_file = GRAFANA_DIR / "provisioning" / "dashboards" / "rocketserve.yml"
    provider = yaml.safe_load(provider_file.read_text(encoding="utf-8"))["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/grafana/dashboards"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_panels_fit_the_grid_without_overlapping(path: Path) -> None:
    dashboard = load_dashboard(path)
    boxes = []
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        boxes.append((panel["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, (name, x0, y0, x1, y1) in enumerate(boxes):
        for other, u0, v0, u1, v1 in boxes[i + 1 :]:
            overlap = x0 < u1 and u0 < x1 and y0 < v1 and v0 < y1
            assert not overlap, f"panels {name!r} and {other!r} overlap"
