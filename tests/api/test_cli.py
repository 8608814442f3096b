"""The `steward` command line: migrate, create users, seed demo data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app
from api.settings import get_settings

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("STEWARD_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and result.stdout.startswith("heat-steward ")


def test_db_upgrade_creates_the_sqlite_database_under_data_dir(data_dir: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert (data_dir / "steward.db").exists()
    current = runner.invoke(app, ["db", "current"])
    revisions = json.loads(current.stdout)
    assert revisions["database"] == revisions["code"] is not None


def test_create_user_then_refuse_a_duplicate(data_dir: Path) -> None:
    runner.invoke(app, ["db", "upgrade"])
    args = ["create-user", "--username", "admin", "--password", "first-admin-pw", "--role", "admin"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["role"] == "admin"
    again = runner.invoke(app, args)
    assert again.exit_code == 1
    assert "already_exists" in again.output


def test_create_user_rejects_bad_input(data_dir: Path) -> None:
    runner.invoke(app, ["db", "upgrade"])
    short = runner.invoke(app, ["create-user", "--username", "a1", "--password", "short", "--role", "admin"])
    assert short.exit_code == 2
    bad_role = runner.invoke(app, ["create-user", "--username", "abc", "--password", "long-enough", "--role", "boss"])
    assert bad_role.exit_code == 2
    bad_grid = runner.invoke(app, ["create-user", "--username", "abc", "--password", "long-enough",
                                   "--role", "steward", "--grid", "not-a-uuid"])
    assert bad_grid.exit_code == 2


def test_demo_data_prints_a_summary_with_users_and_grids(data_dir: Path) -> None:
    runner.invoke(app, ["db", "upgrade"])
    result = runner.invoke(app, ["demo-data", "--households", "400", "--stewards", "2", "--password",
                                 "demo-pass-1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["households"] == 400
    stewards = [u for u in summary["users"] if u["role"] == "steward"]
    assert [s["username"] for s in stewards] == ["steward01", "steward02"]
    assert all(s["grid"] for s in stewards)
    again = runner.invoke(app, ["demo-data", "--households", "10", "--seed", "3"])
    assert again.exit_code == 1 and "empty database" in again.output


def test_serve_refuses_an_unmigrated_database(data_dir: Path) -> None:
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "steward db upgrade" in result.output


def test_configuration_errors_are_reported_not_raised(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEWARD_ENV", "production")
    get_settings.cache_clear()
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2
    assert "STEWARD_SECRET_KEY" in result.output
