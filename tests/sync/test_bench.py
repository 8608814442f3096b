"""`steward bench sync` runs end to end on a tiny district (a real uvicorn server, real HTTP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from api.cli import app
from api.settings import Settings


@pytest.mark.slow
def test_the_sync_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "sync", "--households", "300", "--history", "1", "--devices", "5",
                                      "--rounds", "1", "--batches", "2", "--batch-size", "50", "--duration", "1",
                                      "--period", "0.5", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "raw SELECT + orjson (baseline)" in result.output
    [written] = list(tmp_path.glob("sync-300-*.json"))
    [sqlite] = json.loads(written.read_text())["results"]
    records = sqlite["baseline"]["records"]
    assert records > 300
    for key in ("first_sync_in_process_1000", "first_sync_in_process_5000", "first_sync_http_1000",
                "first_sync_http_5000", "first_sync_http_gzip_1000", "first_sync_http_gzip_5000"):
        assert sqlite[key]["records"] == records  # the same rows as the raw SELECT, no more, no less
    plain, packed = sqlite["first_sync_http_5000"], sqlite["first_sync_http_gzip_5000"]
    assert packed["bytes"] == plain["bytes"] and plain["wire_bytes"] >= plain["bytes"]
    assert packed["wire_bytes"] < plain["bytes"] / 3  # gzip was asked for and given
    assert "HTTP gzip, limit 5000" in result.output
    assert sqlite["delta_10_rows"]["rows_per_pull"] == [10]
    steady = sqlite["delta_10_rows"]["steady"]
    assert 0 < steady["server_p50_ms"] <= steady["server_p95_ms"] and steady["server_p50_ms"] <= steady["p50_ms"]
    for key in ("push", "push_random_ids"):  # new readings with UUIDv7 ids, then with random ones
        assert sqlite[key]["statuses"] == {"applied": 100}  # the untimed first batch is not counted
        assert len(sqlite[key]["batch_ms"]) == 2 and sqlite[key]["median_batch_ms"] in sqlite[key]["batch_ms"]
    assert "UUIDv7 ids" in result.output and "random UUIDv4 ids" in result.output
    assert sqlite["server_memory_end"]["peak_kib"] > 0



def test_the_results_never_hold_a_database_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `bench sync` recorded its command line whole, the --postgres-url password included, in the
    results JSON (committed under bench/results/); `bench load` masked it. The run itself is stubbed here."""
    import sync.bench

    class Backend:
        def __init__(self, name: str, url: str, workdir: Path) -> None:
            pass

        def drop(self) -> None:
            pass

    monkeypatch.setattr(sync.bench, "Backend", Backend)
    monkeypatch.setattr(sync.bench, "run_backend", lambda backend, **kwargs: {"backend": "postgresql"})
    monkeypatch.setattr(sync.bench, "_table", lambda results: "table")
    url = "postgresql://steward:Pw-77x@127.0.0.1:5432/postgres?sslpassword=Key-99y"
    args = ["bench", "sync", "--no-sqlite", "--postgres-url", url, "--out-dir", str(tmp_path)]
    monkeypatch.setattr("sys.argv", ["steward", *args])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [written] = tmp_path.glob("sync-*.json")
    assert "Pw-77x" not in written.read_text() and "Key-99y" not in written.read_text()
    assert json.loads(written.read_text())["command"] == (
        "steward bench sync --no-sqlite --postgres-url postgresql://steward:***@127.0.0.1:5432/postgres"
        f"?sslpassword=*** --out-dir {tmp_path}")


def test_the_baseline_reads_the_grid_the_pull_sends_through_indexes(engine: Engine, settings: Settings) -> None:
    """The benchmark's baseline is the same rows as a first sync, read the way an indexed SELECT reads them.
    Regression (review): on PostgreSQL `household_id IN (SELECT ...) OR taken_by_id = :u` was a filter over the
    whole readings table, so first sync "beat" a baseline that grew with the district."""
    from sqlalchemy import text
    from sqlmodel import Session, select

    from api.demo import generate
    from api.users.models import User
    from sync.bench import _baseline, _service_first_sync, baseline_queries

    generate(engine, households=300, stewards=2, password="bench-password", seed=1, history=1)
    with Session(engine) as session:
        steward = session.exec(select(User).where(User.username == "steward01")).one()
    records, _ = _baseline(engine, steward.id)
    assert records > 300 and records == _service_first_sync(engine, settings, steward, 1000)[0]
    if engine.dialect.name != "postgresql":
        return
    queries = baseline_queries("postgresql")
    with engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))  # as the planner chooses once the tables are large
        for table in ("work_orders", "visits", "readings", "notes"):
            plan = "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + queries[table]), {"u": str(steward.id)}))
            assert f"Seq Scan on {table}" not in plan, plan


def test_a_postgresql_url_that_cannot_be_used_is_told_before_the_sqlite_run(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: with SQLite on, a bad --postgres-url was reported after the whole SQLite run (minutes)."""
    import sync.bench

    runs: list[str] = []
    monkeypatch.setattr(sync.bench, "run_backend", lambda backend, **kwargs: runs.append(backend.name) or {})
    args = ["bench", "sync", "--postgres-url", "postgresql://nobody:x@127.0.0.1:1/postgres", "--out-dir",
            str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Cannot use the benchmark database" in result.output, result.output
    assert runs == [] and not list(tmp_path.iterdir())
