"""`steward bench load` runs end to end on a tiny district: real uvicorn server, real PostgreSQL, httpx devices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app
from api.urls import hide_passwords
from tests.conftest import POSTGRES_URL
from tests.stress.conftest import require_postgres


@pytest.mark.slow
def test_the_load_benchmark_runs_and_writes_its_results(tmp_path: Path) -> None:
    require_postgres()
    devices, cycles = 6, 3
    result = CliRunner().invoke(app, ["bench", "load", "--devices", str(devices), "--cycles", str(cycles),
                                      "--households", "300", "--think-ms", "20", "--resync", "0.2",
                                      "--postgres-url", POSTGRES_URL, "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [written] = list(tmp_path.glob("load-*.json"))
    report = json.loads(written.read_text())
    assert report["parameters"]["devices"] == devices and report["machine"]["cpus"] >= 1
    assert len(report["machine"]["load_average_at_start"]) == 3
    run = report["result"]
    assert run["errors"] == 0 and run["failures"] == [] and run["goals"]["zero_errors"] is True
    ops = run["operations"]
    # Every cycle pulls a (quiet, one-page) delta and pushes once; first syncs: one per device plus resyncs.
    assert ops["pull"]["count"] == ops["push"]["count"] == devices * cycles
    assert ops["first_sync"]["count"] >= devices and ops["first_sync_page"]["count"] >= ops["first_sync"]["count"]
    for op in ("pull", "push", "first_sync"):
        assert set(ops[op]) >= {"count", "errors", "per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms"}
        assert 0 < ops[op]["p50_ms"] <= ops[op]["p95_ms"] <= ops[op]["p99_ms"] <= ops[op]["max_ms"]
    assert run["push_statuses"] == {"applied": run["mutations_acknowledged"]} and run["unpushed_at_end"] == 0
    assert devices * cycles <= run["mutations_acknowledged"] <= devices * cycles * 5
    assert "pull" in report["table"]
    assert POSTGRES_URL not in written.read_text()  # no database password in the results


def test_the_results_never_hold_a_database_password() -> None:
    command = "steward bench load --postgres-url postgresql://steward:s3cr:et@db:5432/postgres --devices 5"
    assert hide_passwords(command) == ("steward bench load --postgres-url postgresql://steward:***@db:5432/postgres "
                                       "--devices 5")
    assert hide_passwords("steward bench load --devices 5") == "steward bench load --devices 5"


def test_the_results_never_hold_a_password_given_in_the_query() -> None:
    """Regression: libpq's `?password=` and `?sslpassword=` (the client key's) were recorded whole."""
    command = ("steward bench load --postgres-url postgresql://steward@db/postgres?sslmode=require&sslpassword=K3y"
               "&password=s3cr --devices 5")
    assert hide_passwords(command) == ("steward bench load --postgres-url postgresql://steward@db/postgres"
                                       "?sslmode=require&sslpassword=***&password=*** --devices 5")


def test_the_results_never_hold_a_password_of_a_url_without_a_user_name() -> None:
    """Regression: `postgresql://:secret@host/db` (libpq takes the user from PGUSER) was recorded whole."""
    assert hide_passwords("--postgres-url postgresql+psycopg://:s3cr@db:5432/postgres") == (
        "--postgres-url postgresql+psycopg://:***@db:5432/postgres")


def test_the_load_benchmark_needs_postgresql(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "load", "--out-dir", str(tmp_path)],
                                env={"STEWARD_BENCH_POSTGRES_URL": ""})
    assert result.exit_code == 2 and "PostgreSQL" in result.output
    assert not list(tmp_path.iterdir())
