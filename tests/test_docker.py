"""The compose file is valid and production-shaped; the Dockerfile migrates before it serves."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
ENV = {"STEWARD_SECRET_KEY": "x" * 48, "TURN_SECRET": "turn-secret"}


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_every_service_has_a_healthcheck_and_the_api_waits_for_postgres() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"postgres", "api", "worker", "coturn"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["api"]["environment"]["STEWARD_ENV"] == "production"
    assert "postgres" in services["api"]["environment"]["STEWARD_DATABASE_URL"]


def test_every_command_a_service_runs_is_a_steward_command() -> None:
    """Regression: the worker ran `steward speech worker`, which does not exist: it exited at once and was
    restarted for ever, its healthcheck (`steward version`) green."""
    from typer.testing import CliRunner

    from api.cli import app

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    commands = [s["command"] for s in services.values() if s.get("command") and s["command"][0] == "steward"]
    assert ["steward", "worker"] in commands
    for command in commands:
        result = CliRunner().invoke(app, [*command[1:], "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_dockerfile_runs_migrations_then_serves() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "steward db upgrade && exec steward serve" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "USER steward" in dockerfile


@pytest.mark.skipif(_compose_cli() is None, reason="no docker compose CLI here (.ci/run installs docker-compose)")
def test_compose_config_validates() -> None:
    cli = _compose_cli()
    assert cli is not None
    for profiles in ([], ["--profile", "speech", "--profile", "video"]):
        result = subprocess.run([*cli, "-f", str(COMPOSE), *profiles, "config", "-q"], capture_output=True,
                                text=True, env=os.environ | ENV)
        assert result.returncode == 0, result.stderr
