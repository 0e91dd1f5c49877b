"""The wiring of docker/docker-compose.yml and the images, checked statically (no Docker engine needed)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
RAY_SERVICES = ("ray-head", "ray-worker")
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def _option(command: list[str], name: str) -> str:
    values = [item.split("=", 1)[1] for item in command if item.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} given {len(values)} times in {command}"
    return values[0]


def _resolve_default(text: str) -> str:
    """Replace `${VAR:-default}` by its default (the values the stack uses without a .env override)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", text)


def _published(port: str | dict[str, Any]) -> tuple[str | None, str]:
    """(host ip, container port) of a short or long port entry."""
    if isinstance(port, dict):
        return port.get("host_ip"), str(port["target"])
    parts = _resolve_default(port).split(":")
    if len(parts) == 3:
        return parts[0], parts[2]
    return None, parts[-1]


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (named volume or host path) of the service's volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def _ports_beyond_loopback(compose: dict[str, Any]) -> list[str]:
    offenders = []
    for name, service in _services(compose).items():
        if service.get("network_mode") == "host":
            offenders.append(f"{name}: network_mode host")
        for port in service.get("ports", []):
            if _published(port)[0] != "127.0.0.1":
                offenders.append(f"{name}: {port}")
    return offenders


def test_every_published_port_is_bound_to_loopback(compose: dict[str, Any]) -> None:
    assert _ports_beyond_loopback(compose) == []
    published = sorted(name for name, service in _services(compose).items() if service.get("ports"))
    assert published == ["mlflow", "ray-head"]


def test_loopback_check_catches_wider_bindings(compose: dict[str, Any]) -> None:
    widened = copy.deepcopy(compose)
    widened["services"]["ray-head"]["ports"] = ["8265:8265"]
    widened["services"]["mlflow"]["ports"] = [{"target": 5000, "published": 5000, "host_ip": "0.0.0.0"}]
    widened["services"]["postgres"]["network_mode"] = "host"
    assert _ports_beyond_loopback(widened) == [
        "ray-head: 8265:8265",
        "mlflow: {'target': 5000, 'published': 5000, 'host_ip': '0.0.0.0'}",
        "postgres: network_mode host",
    ]


def test_head_runs_dashboard_without_gpus(compose: dict[str, Any]) -> None:
    head = _services(compose)["ray-head"]
    command = _command(head)
    assert command[:3] == ["ray", "start", "--head"]
    assert "--block" in command
    assert _option(command, "--num-gpus") == "0"
    assert _option(command, "--dashboard-host") == "0.0.0.0"
    dashboard_port = _option(command, "--dashboard-port")
    assert [_published(port)[1] for port in head["ports"]] == [dashboard_port]
    assert "deploy" not in head


def test_workers_join_the_head_and_request_gpus(compose: dict[str, Any]) -> None:
    services = _services(compose)
    worker = services["ray-worker"]
    command = _command(worker)
    head_port = _option(_command(services["ray-head"]), "--port")
    assert command[:2] == ["ray", "start"]
    assert _option(command, "--address") == f"ray-head:{head_port}"
    assert "--block" in command and "--head" not in command
    assert "ports" not in worker and "container_name" not in worker, "a fixed port or name prevents --scale"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    assert _resolve_default(str(devices[0]["count"])) == "all"
    assert "ray-head" in worker["depends_on"]


def test_mlflow_uses_postgres_and_an_artifact_volume(compose: dict[str, Any]) -> None:
    services = _services(compose)
    mlflow = services["mlflow"]
    command = _command(mlflow)
    assert command[:2] == ["mlflow", "server"]
    backend = _resolve_default(_option(command, "--backend-store-uri"))
    assert backend == "postgresql+psycopg2://mlflow@postgres:5432/mlflow"
    assert "PGPASSWORD" in mlflow["environment"], "the password travels by environment, not on the command line"
    artifacts = _option(command, "--artifacts-destination")
    assert "--serve-artifacts" in command
    assert _option(command, "--default-artifact-root") == "mlflow-artifacts:/"
    assert _mounts(mlflow)[artifacts] in compose["volumes"]
    assert _option(command, "--host") == "0.0.0.0"
    assert "mlflow:5000" in _option(command, "--allowed-hosts").split(",")
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert _mounts(postgres)["/var/lib/postgresql/data"] in compose["volumes"]
    assert "ports" not in postgres


def test_shared_storage_is_mounted_at_the_same_path(compose: dict[str, Any]) -> None:
    services = _services(compose)
    head_mounts = _mounts(services["ray-head"])
    worker_mounts = _mounts(services["ray-worker"])
    storage = services["ray-head"]["environment"]["LTRAY_STORAGE"]
    assert head_mounts[storage] == worker_mounts[storage]
    assert head_mounts[storage] in compose["volumes"]
    assert services["ray-worker"]["environment"]["LTRAY_STORAGE"] == storage


def test_ray_services_use_token_auth_and_the_mlflow_service(compose: dict[str, Any]) -> None:
    services = _services(compose)
    mlflow_port = _option(_command(services["mlflow"]), "--port")
    for name in RAY_SERVICES:
        environment = services[name]["environment"]
        assert environment["RAY_AUTH_MODE"] == "token", name
        secret_path = Path(environment["RAY_AUTH_TOKEN_PATH"])
        assert secret_path.parent == Path("/run/secrets")
        assert services[name]["secrets"] == [secret_path.name]
        assert environment["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"
        assert "RAY_AUTH_TOKEN" not in environment, "the token comes from the secret file only"
    secret_file = compose["secrets"]["ray_auth_token"]["file"]
    assert _resolve_default(secret_file) == "./secrets/ray_auth_token"
    ignored = (DOCKER_DIR / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignored and "!.gitignore" in ignored
    assert ".env" in (DOCKER_DIR / ".gitignore").read_text().split()


def _from_line(dockerfile: Path) -> str:
    lines = [line.split() for line in dockerfile.read_text().splitlines() if line.startswith("FROM ")]
    assert len(lines) == 1
    return lines[0][1]


def _arg_defaults(dockerfile: Path) -> dict[str, str]:
    pairs = re.findall(r"^ARG ([A-Z][A-Z0-9_]*)=(\S*)$", dockerfile.read_text(), flags=re.MULTILINE)
    return dict(pairs)


def test_ray_image_matches_installed_ray_and_python(compose: dict[str, Any]) -> None:
    python_tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert _from_line(DOCKER_DIR / "Dockerfile.gpu") == f"rayproject/ray:{ray.__version__}-{python_tag}-gpu"
    for name in RAY_SERVICES:
        service = _services(compose)[name]
        assert service["image"] == f"ltray-ray:{ray.__version__}"
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.gpu",
                                    "args": {"LTRAY_GIT_COMMIT": "${LTRAY_GIT_COMMIT:-}"}}


def test_image_pins_match_the_tested_versions(compose: dict[str, Any]) -> None:
    gpu_args = _arg_defaults(DOCKER_DIR / "Dockerfile.gpu")
    assert gpu_args["LTRAY_GIT_COMMIT"] == ""  # empty: git_commit() falls back to `git rev-parse`
    assert "ENV LTRAY_GIT_COMMIT=${LTRAY_GIT_COMMIT}" in (DOCKER_DIR / "Dockerfile.gpu").read_text()
    assert gpu_args["TORCH_VERSION"] == version("torch").split("+")[0]
    assert gpu_args["TORCHVISION_VERSION"] == version("torchvision").split("+")[0]
    pyproject = REPO_ROOT / "pyproject.toml"
    if pyproject.exists():
        text = pyproject.read_text()
        for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
            pins = re.findall(rf'"{package}==([^";\s]+)', text)
            assert all(pin == gpu_args[arg] for pin in pins), (package, pins)
    mlflow_args = _arg_defaults(DOCKER_DIR / "Dockerfile.mlflow")
    assert mlflow_args["MLFLOW_VERSION"] == version("mlflow")
    assert re.fullmatch(r"\d+\.\d+\.\d+", mlflow_args["PSYCOPG2_VERSION"])
    assert _services(compose)["mlflow"]["image"] == f"ltray-mlflow:{version('mlflow')}"


def test_images_run_as_non_root_and_keep_secrets_out_of_the_context() -> None:
    for dockerfile in ("Dockerfile.gpu", "Dockerfile.mlflow"):
        users = re.findall(r"^USER (\S+)$", (DOCKER_DIR / dockerfile).read_text(), flags=re.MULTILINE)
        assert users and users[-1] not in ("root", "0"), dockerfile
    ignored = (DOCKER_DIR / "Dockerfile.gpu.dockerignore").read_text().split()
    for entry in (".venv", ".git", "docker/secrets", "docker/.env", "mlflow.db"):
        assert entry in ignored, entry


def test_every_variable_is_documented_in_env_example() -> None:
    used = set(VARIABLE.findall(COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (DOCKER_DIR / ".env.example").read_text(), re.MULTILINE))
    assert used, "the compose file is expected to use variables"
    assert used <= documented, f"undocumented: {sorted(used - documented)}"
    assert documented <= used, f"documented but unused: {sorted(documented - used)}"


def _compose_cli() -> list[str] | None:
    """`docker compose` (v2) when the CLI plugin is installed; an engine is not needed for `config`."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    return [docker, "compose"] if probe.returncode == 0 else None


@pytest.mark.skipif(_compose_cli() is None, reason="no docker compose (v2) CLI on this machine")
def test_docker_compose_config_parses(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("0" * 64)
    env_file = tmp_path / "env"
    env_file.write_text(f"POSTGRES_PASSWORD=test-only\nRAY_AUTH_TOKEN_FILE={token}\n")
    cli = _compose_cli()
    assert cli is not None
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    for name, service in rendered["services"].items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", name
    assert rendered["services"]["mlflow"]["environment"]["PGPASSWORD"] == "test-only"
