"""Paths of the deployment files and readers for the PromQL they contain (dashboards and rules)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
K8S_DIR = DEPLOY / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILES = {
    "base": ROOT / "docker-compose.yml",
    "gpu": ROOT / "docker-compose.gpu.yml",
    "scale": ROOT / "docker-compose.scale.yml",
}

# Grafana's built-in and dashboard variables, replaced by values that make sense for a query
# evaluated once at "now" against a Prometheus scraping every second: rate windows of a minute,
# the dashboard range of five minutes, every model.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "model": ".*",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<metric>.+),\s*)?(?P<label>\w+)\)$")
_METRIC = re.compile(r"\brocketserve_[a-z0-9_]+\b")


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it was found."""

    where: str
    expr: str


def substitute_grafana_variables(expr: str) -> str:
    """Replace $var, ${var} and ${var:format}; an unknown variable raises KeyError."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            raise KeyError(f"no test value for Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARIABLES[name]

    return _VARIABLE.sub(one, expr)


def dashboard_files() -> list[Path]:
    """Every provisioned dashboard JSON."""
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    """A dashboard JSON as a dict."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """All panels, including those nested in collapsed rows, rows themselves excluded."""
    found = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def _variable_query(variable: dict[str, Any]) -> str:
    """A template variable's query as PromQL (label_values(m, l) becomes count by (l) (m))."""
    query = variable.get("query")
    text = str(query.get("query", "") if isinstance(query, dict) else query or "").strip()
    match = _LABEL_VALUES.match(text)
    if match:
        metric = match.group("metric") or '{__name__=~".+"}'
        return f"count by ({match.group('label')}) ({metric})"
    return text


def dashboard_queries(path: Path) -> list[Query]:
    """Every PromQL expression of one dashboard (panel targets and query variables), raw."""
    dashboard = load_dashboard(path)
    queries = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                where = f"{path.name}: panel {panel['title']!r} target {target.get('refId')}"
                queries.append(Query(where, target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            queries.append(
                Query(f"{path.name}: variable ${variable['name']}", _variable_query(variable))
            )
    return queries


def rule_files() -> list[Path]:
    """The rule files prometheus.yml loads (its rule_files globs, relative to its folder)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    files: list[Path] = []
    for pattern in config.get("rule_files", []):
        files.extend(sorted(PROMETHEUS_DIR.glob(pattern)))
    return files


def rule_queries(path: Path) -> list[Query]:
    """Every alerting or recording rule expression of one rule file."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    queries = []
    for group in data["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            queries.append(Query(f"{path.name}: {group['name']}/{name}", rule["expr"]))
    return queries


def metric_names(expr: str) -> set[str]:
    """The rocketserve_* metric names an expression reads."""
    return set(_METRIC.findall(expr))
