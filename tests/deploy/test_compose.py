"""The compose files: services, ports, volumes, healthchecks, and every file they use exists."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import ENV_PREFIX, Settings
from tests.deploy.stack import COMPOSE_FILES, DASHBOARDS_DIR, GRAFANA_DIR, PROMETHEUS_CONFIG, ROOT
from tests.deploy.test_dockerfile import stages


class ComposeLoader(yaml.SafeLoader):
    """safe_load plus compose's merge tags (!reset, !override), kept as tagged values."""


def _tagged(tag: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.SequenceNode):
            value: Any = loader.construct_sequence(node)
        elif isinstance(node, yaml.MappingNode):
            value = loader.construct_mapping(node)
        else:
            value = loader.construct_scalar(node)  # type: ignore[arg-type]
        return {tag: value}

    return construct


ComposeLoader.add_constructor("!reset", _tagged("!reset"))
ComposeLoader.add_constructor("!override", _tagged("!override"))


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(COMPOSE_FILES[name].read_text("utf-8"), ComposeLoader)
    return data


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of each bind mount (short syntax starting with . or /)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((ROOT / source).resolve(), target))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a path inside the container comes from on the host, through the bind mounts."""
    for source, target in sorted(bind_mounts(service), key=lambda m: -len(m[1])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not inside any bind mount")


def published(service: dict[str, Any]) -> dict[str, str]:
    """container port -> host port spec of the short port syntax."""
    ports = {}
    for spec in service.get("ports", []):
        host, container = str(spec).rsplit(":", 1)
        ports[container] = host
    return ports


def test_base_services_and_profiles() -> None:
    services = load("base")["services"]
    assert set(services) == {"api", "prometheus", "grafana", "loadtest"}
    assert services["loadtest"]["profiles"] == ["loadtest"]
    for name in ("api", "prometheus", "grafana"):
        assert "profiles" not in services[name], f"{name} must start with a plain `up`"
    assert published(services["api"]) == {"8000": "${API_PORT:-8000}", "8001": "${GRPC_PORT:-8001}"}
    assert services["api"]["environment"]["ROCKETSERVE_GRPC_PORT"] == "8001"
    assert published(services["prometheus"]) == {"9090": "${PROMETHEUS_PORT:-9090}"}
    assert published(services["grafana"]) == {"3000": "${GRAFANA_PORT:-3000}"}


def test_api_builds_the_runtime_target_and_checks_readiness() -> None:
    api = load("base")["services"]["api"]
    assert api["build"]["context"] == "."
    assert api["build"]["target"] in stages()
    assert (ROOT / api["build"]["context"] / "Dockerfile").is_file()
    test = " ".join(api["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/readyz" in test
    assert api["environment"]["ROCKETSERVE_PORT"] == "8000"


@pytest.mark.parametrize("name", list(COMPOSE_FILES))
def test_environment_names_are_service_settings(name: str) -> None:
    fields = {f.upper() for f in Settings.model_fields}
    for service in load(name)["services"].values():
        for key in service.get("environment", {}):
            if key.startswith(ENV_PREFIX):
                assert key[len(ENV_PREFIX) :] in fields, f"{key} is not a service setting"


@pytest.mark.parametrize("name", list(COMPOSE_FILES))
def test_every_mounted_or_built_file_exists(name: str) -> None:
    data = load(name)
    for service_name, service in data["services"].items():
        for source, _ in bind_mounts(service):
            assert source.exists(), f"{service_name}: mount source {source} is missing"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in data.get("volumes", {}), f"named volume {source} not declared"
        build = service.get("build")
        if build:
            assert (ROOT / build["context"]).is_dir()
            assert build["target"] in stages(), f"{service_name}: no stage {build['target']}"


@pytest.mark.parametrize("name", list(COMPOSE_FILES))
def test_every_variable_has_a_default(name: str) -> None:
    """`docker compose up` needs no .env file: every ${VAR} carries a :- default."""
    for match in re.finditer(r"\$\{([^}]*)\}", COMPOSE_FILES[name].read_text("utf-8")):
        assert ":-" in match.group(1), f"${{{match.group(1)}}} has no default"


def test_long_running_services_have_healthchecks() -> None:
    services = load("base")["services"] | {"lb": load("scale")["services"]["lb"]}
    for name in ("api", "prometheus", "grafana", "lb"):
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD" and check["interval"] and check["retries"] >= 1, name


def test_depends_on_defined_services() -> None:
    services = load("base")["services"] | load("scale")["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_prometheus_reads_the_project_config_and_scrapes_api() -> None:
    services = load("base")["services"]
    prometheus = services["prometheus"]
    flags = dict(arg.split("=", 1) for arg in prometheus["command"] if "=" in arg)
    assert host_path(prometheus, flags["--config.file"]).resolve() == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text("utf-8"))
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "rocketserve")
    assert job["metrics_path"] == "/metrics"
    discovery = job["dns_sd_configs"][0]
    assert discovery["names"] == ["api"] and discovery["port"] == 8000
    assert str(discovery["port"]) in published(services["api"])


def test_grafana_is_provisioned_anonymous_and_password_from_env() -> None:
    grafana = load("base")["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-admin}"
    for kind in ("datasources", "dashboards"):
        inside = f"/etc/grafana/provisioning/{kind}"
        assert host_path(grafana, inside) == GRAFANA_DIR / "provisioning" / kind
    provider = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "rocketserve.yml").read_text("utf-8")
    )["providers"][0]
    assert host_path(grafana, provider["options"]["path"]) == DASHBOARDS_DIR
    assert host_path(grafana, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).is_file()
    source = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text("utf-8")
    )["datasources"][0]
    assert source["url"] == "http://prometheus:9090"


def test_loadtest_runs_the_locustfile_against_api() -> None:
    loadtest = load("base")["services"]["loadtest"]
    assert loadtest["build"]["target"] == "loadtest"
    command = loadtest["command"]
    locustfile = command[command.index("-f") + 1]
    assert locustfile == "loadtest/locustfile.py"
    assert "--headless" in command
    assert command[command.index("--host") + 1] == "${LOADTEST_HOST:-http://api:8000}"
    image = dict(stages()["loadtest"])
    assert image["ENTRYPOINT"] == '["locust"]' and image["WORKDIR"] == loadtest["working_dir"]
    assert image["COPY"] == "loadtest ./loadtest"
    assert (ROOT / locustfile).is_file()
    assert loadtest["depends_on"]["api"]["condition"] == "service_healthy"


def test_gpu_override_builds_gpu_and_reserves_a_device() -> None:
    api = load("gpu")["services"]["api"]
    assert api["build"]["target"] == "gpu" and "gpu" in stages()
    assert api["environment"]["ROCKETSERVE_PROVIDER"] == "cuda"
    device = api["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_scale_override_puts_replicas_behind_a_balancer() -> None:
    services = load("scale")["services"]
    assert services["api"]["ports"] == {"!reset": []}, "replicas cannot share a host port"
    lb = services["lb"]
    assert published(lb) == {"8000": "${API_PORT:-8000}", "8001": "${GRPC_PORT:-8001}"}
    conf = host_path(lb, "/etc/nginx/nginx.conf").read_text("utf-8")
    assert "listen 8000;" in conf and "http://api:8000" in conf and "resolver 127.0.0.11" in conf
    assert "listen 8001 http2;" in conf and "grpc://api:8001" in conf  # gRPC, each call balanced


def test_balancer_config_passes_nginx_check(tmp_path: Path) -> None:
    """`nginx -t` on the scale-out balancer's config (nginx comes from install-system-deps.sh)."""
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    assert nginx, "nginx is not installed: run scripts/install-system-deps.sh"
    (tmp_path / "logs").mkdir()
    conf = host_path(load("scale")["services"]["lb"], "/etc/nginx/nginx.conf")
    where = f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/logs/error.log;"
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-g", where],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0 and "syntax is ok" in result.stderr, result.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def loadtest_image_modules() -> set[str]:
    """Top-level modules of the pip packages the loadtest stage pins, and of their dependencies."""
    pinned = {
        _canonical(name)
        for word, rest in stages()["loadtest"]
        if word == "RUN"
        for name in re.findall(r"([A-Za-z0-9_.-]+)==", rest)
    }
    assert "locust" in pinned
    dists = set(pinned)
    for pin in pinned:
        for requirement in metadata.requires(pin) or []:
            if "extra ==" not in requirement:
                dists.add(_canonical(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]))
    return {
        module
        for module, owners in metadata.packages_distributions().items()
        if any(_canonical(owner) in dists for owner in owners)
    }


def test_locustfile_imports_what_the_loadtest_image_installs() -> None:
    """The loadtest image holds the standard library, loadtest/ and its pinned pip packages."""
    installed = loadtest_image_modules()
    seen: set[str] = set()
    todo = ["loadtest.locustfile"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / module.replace(".", "/") / "__init__.py"
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "loadtest":
                todo.append(name)
            else:
                allowed = top in sys.stdlib_module_names or top in installed
                assert allowed, f"{path.name} imports {name}: not in the loadtest image"
