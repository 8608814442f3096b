"""The `steward` command line: migrate, create users, seed demo data."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from api.cli import app
from api.settings import get_settings
from tests.conftest import BACKENDS, create_postgres_database, drop_postgres_database
from tests.utils.server import wait_healthy

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
    result = runner.invoke(app, ["serve", "--port", str(_free_port())])
    assert result.exit_code == 2
    assert "steward db upgrade" in result.output


def test_configuration_errors_are_reported_not_raised(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEWARD_ENV", "production")
    get_settings.cache_clear()
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2
    assert "STEWARD_SECRET_KEY" in result.output


def test_create_user_and_demo_data_refuse_an_unmigrated_database(data_dir: Path) -> None:
    """Regression: both printed a `no such table` traceback."""
    for args in (["create-user", "--username", "admin", "--password", "first-admin-pw", "--role", "admin"],
                 ["demo-data", "--households", "10", "--stewards", "1"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "run `steward db upgrade` first" in result.stderr
        assert len(result.stderr.splitlines()) == 1


DATABASE_COMMANDS = [["db", "upgrade"], ["db", "current"], ["serve", "--port", "18999"],
                     ["create-user", "--username", "admin", "--password", "first-admin-pw", "--role", "admin"],
                     ["proactive", "run"], ["demo-data", "--households", "10", "--stewards", "1"]]


def _unusable_database(kind: str, tmp_path: Path) -> tuple[str, str]:
    """A database URL that cannot be used, and the cause the error must name."""
    if kind == "parent is a file":
        (tmp_path / "afile").write_text("")
        return f"sqlite:///{tmp_path / 'afile' / 'steward.db'}", "cannot create the directory"
    if kind == "a directory":
        (tmp_path / "dir.db").mkdir()
        return f"sqlite:///{tmp_path / 'dir.db'}", "unable to open database file"
    if kind == "not sqlite":
        (tmp_path / "notes.db").write_text("not a database\n" * 100)
        return f"sqlite:///{tmp_path / 'notes.db'}", "file is not a database"
    if kind == "server refuses":
        return "postgresql://steward:hunter2-secret@127.0.0.1:1/steward", "Connection refused"
    return "notaurl", "Could not parse SQLAlchemy URL"


@pytest.mark.parametrize("args", DATABASE_COMMANDS, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("kind", ["parent is a file", "a directory", "not sqlite", "server refuses", "bad url"])
def test_an_unusable_database_is_one_line_naming_it(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     kind: str, args: list[str]) -> None:
    """Regression: each of these printed a traceback (FileExistsError, OperationalError, ArgumentError...)."""
    url, cause = _unusable_database(kind, data_dir)
    monkeypatch.setenv("STEWARD_DATABASE_URL", url)
    get_settings.cache_clear()
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    (line,) = result.stderr.splitlines()
    assert line.startswith("Cannot use the database ") and cause in line
    assert "hunter2-secret" not in result.output
    if kind != "bad url":
        assert url.split("://", 1)[1].split("@")[-1] in line  # the path or the host: which database it is


def test_db_upgrade_to_an_unknown_revision_is_one_line(data_dir: Path) -> None:
    """Regression: alembic's CommandError came out as a traceback."""
    result = runner.invoke(app, ["db", "upgrade", "nosuchrev"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert str(data_dir / "steward.db") in line and "nosuchrev" in line


def test_serve_takes_only_real_ports(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: --port 70000 served on 4464 (uvicorn wraps it) and --port 0 on the default port."""
    import uvicorn

    from video.service import worker_name

    runs: list[dict[str, Any]] = []
    # uvicorn with one worker builds the app in this process, from `get_settings()`: record what it reads
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(kw | {"relay": worker_name(get_settings())}))
    monkeypatch.setenv("STEWARD_PORT", "8000")  # restored afterwards: `serve --port` sets it for the app
    get_settings()  # cached before the command runs, as an earlier command in the process would
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    for bad in ("70000", "0", "-1"):
        result = runner.invoke(app, ["serve", "--port", bad])
        assert result.exit_code == 2 and "--port" in result.output, result.output
    assert runs == []
    assert runner.invoke(app, ["serve", "--port", "8123"]).exit_code == 0
    # Regression: the app reads its settings afresh and named its video relay <host>:8000 whatever --port said.
    assert os.environ["STEWARD_PORT"] == "8123"
    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert [r["port"] for r in runs] == [8123, get_settings().port]
    # Regression: the cached settings still said 8000, so two processes on two ports were one relay name
    assert runs[0]["relay"].endswith(":8123"), runs


def test_serve_refuses_several_workers_on_sqlite(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: accepted, it started several processes on one SQLite file, each with its own embedded
    transcription worker, checkpointer and proactive loop."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("served"))
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code == 2 and "PostgreSQL" in result.output


def test_serve_tells_its_worker_processes_how_many_they_are(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--workers N` reaches every worker process (spawned by uvicorn, reading the environment): with N > 1 none of
    them relays video calls (tests/video/test_pinning.py, the multi-worker server)."""
    import uvicorn

    from api import startup
    from api.settings import Settings

    seen: list[int] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.append(Settings().serve_workers))
    monkeypatch.setattr(startup, "prepare", lambda settings: None)
    monkeypatch.setenv("STEWARD_DATABASE_URL", "postgresql://steward@127.0.0.1:1/steward")
    monkeypatch.delenv("STEWARD_SERVE_WORKERS", raising=False)  # restored afterwards: `serve` sets it
    get_settings.cache_clear()
    assert runner.invoke(app, ["serve", "--port", "18997", "--workers", "3"]).exit_code == 0
    assert runner.invoke(app, ["serve", "--port", "18997"]).exit_code == 0
    assert seen == [3, 1]


def test_operator_mistakes_are_one_line_not_a_traceback(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner.invoke(app, ["db", "upgrade"])
    # Regression: the rejected password was printed back (pydantic echoes the input).
    short = runner.invoke(app, ["create-user", "--username", "bob", "--password", "abc", "--role", "admin"])
    assert short.exit_code == 2 and "abc" not in short.output and "password" in short.output
    # Regression: a URL for an unsupported database was a traceback (ModuleNotFoundError).
    monkeypatch.setenv("STEWARD_DATABASE_URL", "mysql://x@y/z")
    get_settings.cache_clear()
    mysql = runner.invoke(app, ["db", "current"])
    assert mysql.exit_code == 2 and "SQLite or PostgreSQL" in mysql.output
    # Regression: a bad log level crashed `serve` inside uvicorn; settings refuse it (exit 2, one line).
    monkeypatch.delenv("STEWARD_DATABASE_URL")
    monkeypatch.setenv("STEWARD_LOG_LEVEL", "loud")
    get_settings.cache_clear()
    loud = runner.invoke(app, ["serve"])
    assert loud.exit_code == 2 and "Configuration error" in loud.output and "STEWARD_LOG_LEVEL" in loud.output
    # Regression: pydantic's message quoted the input, which printed the secret key (and the SMS key).
    monkeypatch.delenv("STEWARD_LOG_LEVEL")
    secret = "utility-prod-secret-31-chars-xx"
    monkeypatch.setenv("STEWARD_ENV", "production")
    monkeypatch.setenv("STEWARD_SECRET_KEY", secret)
    get_settings.cache_clear()
    short = runner.invoke(app, ["db", "current"])
    assert short.exit_code == 2 and "STEWARD_SECRET_KEY" in short.output and secret[-12:] not in short.output


@pytest.mark.parametrize(("name", "value", "said"), [
    ("STEWARD_SPEECH_GLOSSARY", "/nonexistent/glossary.toml", "STEWARD_SPEECH_GLOSSARY"),
    ("STEWARD_WHISPER_MODEL", "/nonexistent/model", "STEWARD_WHISPER_MODEL"),
    ("STEWARD_BLOB_DIR", "{data_dir}/a-file/blobs", "STEWARD_BLOB_DIR"),
    # Regression: each was accepted; every transcription, or every call, or every proxied sign-in then failed.
    ("STEWARD_WHISPER_COMPUTE_TYPE", "int9", "STEWARD_WHISPER_COMPUTE_TYPE: unknown compute type 'int9'"),
    ("STEWARD_VIDEO_ICE_SERVERS", "turn:turn.example.cn:3478", "STEWARD_VIDEO_TURN_SECRET is empty"),
    ("STEWARD_FORWARDED_ALLOW_IPS", "nginx", "STEWARD_FORWARDED_ALLOW_IPS: "),
    ("STEWARD_VIDEO_PUBLIC_URL", "steward.example.cn", "STEWARD_VIDEO_PUBLIC_URL: "),
    ("STEWARD_VIDEO_WORKER_URL", "relay-a:8001", "STEWARD_VIDEO_WORKER_URL: "),
    ("STEWARD_SHUTDOWN_GRACE_S", "0", "STEWARD_SHUTDOWN_GRACE_S: "),
])
def test_serve_refuses_settings_that_would_fail_later(data_dir: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                       value: str, said: str) -> None:
    """Regression: a glossary or model that cannot be loaded started fine and failed every transcription one
    by one; a blob directory that cannot be created was a 150-line traceback from inside uvicorn."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("served"))
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    (data_dir / "a-file").write_text("not a directory")
    monkeypatch.setenv(name, value.format(data_dir=data_dir))
    get_settings.cache_clear()
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2 and said in result.output, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_database_url_that_cannot_be_parsed_is_shown_without_its_password(data_dir: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a mistyped URL (one slash) was printed whole, password included."""
    monkeypatch.setenv("STEWARD_DATABASE_URL", "postgresql:/steward:Db-Pw-77x@127.0.0.1/steward")
    get_settings.cache_clear()
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 2 and "Db-Pw-77x" not in result.output and "steward:***@" in result.output


@pytest.mark.parametrize("url", ["postgresql://steward:Pw@Secret77@127.0.0.1:1/steward",
                                 "postgresql://steward@127.0.0.1:1/steward?password=Secret77"])
def test_a_database_url_is_never_shown_with_its_password(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                         url: str) -> None:
    """Regression: a password with an unencoded `@` was printed from the `@` on (as part of the host, by us and
    by the driver), and one given as libpq's `?password=` was printed whole."""
    monkeypatch.setenv("STEWARD_DATABASE_URL", url)
    get_settings.cache_clear()
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2 and "Secret77" not in result.output, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("url", ["postgresql://steward@127.0.0.1:1/steward?sslmode=disable&sslpassword=Secret77",
                                 "postgresql://steward@127.0.0.1:54x2/steward?sslpassword=Secret77"])
def test_a_password_of_any_name_in_the_query_is_never_shown(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                            url: str) -> None:
    """Regression: only libpq's `?password=` was masked: its `?sslpassword=` (the client key's) was printed whole,
    from a URL that parses and from one that does not."""
    monkeypatch.setenv("STEWARD_DATABASE_URL", url)
    get_settings.cache_clear()
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 2 and "Secret77" not in result.output and "sslpassword=***" in result.output


def test_db_upgrade_creates_the_database_in_a_data_dir_of_any_name(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: STEWARD_DATA_DIR was pasted into the SQLite URL unquoted: a `?` began a query (a database file
    `q` beside the data directory) and `%41` was read as `A`; the directory, made from the URL's text, was a
    stray `q%3Fx` folder."""
    data_dir = tmp_path / "q?x pct%41" / "data"
    monkeypatch.setenv("STEWARD_DATA_DIR", str(data_dir))
    monkeypatch.delenv("STEWARD_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
        current = runner.invoke(app, ["db", "current"])
    finally:
        get_settings.cache_clear()
    assert current.exit_code == 0 and json.loads(current.stdout)["database"] is not None, current.output
    assert (data_dir / "steward.db").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["q?x pct%41"]


def test_demo_data_outside_dev_mode_needs_a_password_of_its_own(data_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `steward demo-data` in production created admin / steward-demo, the password the README
    prints (STEWARD_DEMO=1 was already refused for that)."""
    monkeypatch.setenv("STEWARD_ENV", "production")
    monkeypatch.setenv("STEWARD_SECRET_KEY", "p" * 40)
    get_settings.cache_clear()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    refused = runner.invoke(app, ["demo-data", "--households", "10", "--stewards", "1"])
    assert refused.exit_code == 2 and "--password" in refused.stderr, refused.output
    own = runner.invoke(app, ["demo-data", "--households", "10", "--stewards", "1", "--password", "pilot-2026!"])
    assert own.exit_code == 0, own.output
    assert json.loads(own.stdout)["households"] == 10


def test_demo_data_takes_the_password_of_the_settings(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: STEWARD_DEMO_PASSWORD, documented as the demo users' password, was ignored by `demo-data`,
    which gave them steward-demo; outside dev mode it then refused and asked for --password."""
    monkeypatch.setenv("STEWARD_ENV", "production")
    monkeypatch.setenv("STEWARD_SECRET_KEY", "p" * 40)
    monkeypatch.setenv("STEWARD_DEMO_PASSWORD", "my-own-secret")
    get_settings.cache_clear()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["demo-data", "--households", "10", "--stewards", "1"])
    assert result.exit_code == 0, result.output
    from api.db import make_engine
    from api.security import verify_password
    from api.settings import Settings
    from api.users.models import User

    engine = make_engine(Settings(data_dir=data_dir))
    with Session(engine) as session:
        admin = session.exec(select(User).where(User.username == "admin")).one()
        assert verify_password(admin.password_hash, "my-own-secret")
    engine.dispose()
    # Regression (review): the operator's own password was printed in the summary (and by `serve`, to its log).
    assert "my-own-secret" not in result.output


def test_serve_with_a_demo_that_cannot_load_is_one_line(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: STEWARD_DEMO=1 on a database with stations but no users was a 44-line DemoError traceback."""
    import uvicorn

    from api.db import make_engine
    from api.settings import Settings
    from tests.utils.factories import make_station

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("served"))
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    engine = make_engine(Settings(data_dir=data_dir))
    with Session(engine) as session:
        make_station(session)
        session.commit()
    engine.dispose()
    monkeypatch.setenv("STEWARD_DEMO", "1")
    get_settings.cache_clear()
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2 and "already has stations" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_refuses_a_port_in_use_before_the_app_starts(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a second `steward serve` on a busy port ran the app's start-up (which closes the video
    rooms of its relay name as lost: the live calls of the server on that port) before failing to bind."""
    import socket

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("served"))
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 2 and f"127.0.0.1:{port}" in result.output, result.output


@pytest.mark.parametrize("args", [["db", "current"], ["db", "upgrade"], ["db", "restored"], ["proactive", "run"],
                                  ["create-user", "--username", "admin", "--password", "first-admin-pw",
                                   "--role", "admin"]])
def test_a_database_url_with_a_port_that_is_no_number_is_one_line(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  args: list[str]) -> None:
    """Regression: SQLAlchemy's ValueError for `:54x2` was a 90-line traceback (exit 1) in every command."""
    monkeypatch.setenv("STEWARD_DATABASE_URL", "postgresql://steward:secret@127.0.0.1:54x2/steward")
    get_settings.cache_clear()
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "54x2" in result.output and "secret" not in result.output


def test_db_current_does_not_create_the_database_it_is_asked_about(data_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `db current` with a mistyped path created the directory and an empty database there."""
    missing = data_dir / "typo" / "steward.db"
    monkeypatch.setenv("STEWARD_DATABASE_URL", f"sqlite:///{missing}")
    get_settings.cache_clear()
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 0 and json.loads(result.stdout)["exists"] is False
    assert not missing.parent.exists()


@pytest.mark.parametrize("days", ["inf", "1e300", "1000000"])
def test_the_sweep_takes_a_grace_period_it_can_count(data_dir: Path, days: str) -> None:
    """Regression: `--grace-days inf` (meant as "keep everything") overflowed: a traceback every night."""
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["blobs", "sweep", "--grace-days", days, "--dry-run"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output


def test_a_second_server_on_one_sqlite_file_is_refused(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a second `steward serve` on the same SQLite file (another port) started, and its
    transcription worker took the first one's running job back as interrupted: transcribed twice."""
    import uvicorn

    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    inner: list[Any] = []

    def first(_app: str, **kw: Any) -> None:  # while the first server runs, a second one starts
        inner.append(runner.invoke(app, ["serve", "--port", str(kw["port"] + 1)]))

    monkeypatch.setattr(uvicorn, "run", first)
    assert runner.invoke(app, ["serve", "--port", "18601"]).exit_code == 0
    assert inner[0].exit_code == 2 and "Another `steward serve`" in inner[0].output, inner[0].output
    monkeypatch.setattr(uvicorn, "run", lambda _app, **kw: None)
    assert runner.invoke(app, ["serve", "--port", "18602"]).exit_code == 0  # the first one has stopped


def test_serve_passes_the_trusted_proxies_to_uvicorn(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(kw))
    monkeypatch.setenv("STEWARD_FORWARDED_ALLOW_IPS", "10.0.0.5")
    get_settings.cache_clear()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["serve", "--port", "18123"]).exit_code == 0
    assert runs[0]["forwarded_allow_ips"] == "10.0.0.5" and runs[0]["proxy_headers"] is True


def test_serve_gives_open_requests_a_bounded_grace_on_shutdown(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(kw))
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["serve", "--port", "18124"]).exit_code == 0
    monkeypatch.setenv("STEWARD_SHUTDOWN_GRACE_S", "45")
    get_settings.cache_clear()
    assert runner.invoke(app, ["serve", "--port", "18124"]).exit_code == 0
    assert [r["timeout_graceful_shutdown"] for r in runs] == [20, 45]


@pytest.mark.slow
def test_sigterm_reaches_the_shutdown_while_a_client_uploads_slowly(tmp_path: Path) -> None:
    """Regression: uvicorn runs the app's shutdown (closing video calls and saving their recordings, stopping
    the transcription threads, SQLite's last checkpoint) only once every connection has closed, and `steward
    serve` set no limit: one handheld uploading over a weak link held it back until docker's SIGKILL."""
    import contextlib
    import signal
    import socket
    import subprocess
    import sys
    import time


    steward = str(Path(sys.executable).with_name("steward"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")} | {
        "STEWARD_DATA_DIR": str(tmp_path), "STEWARD_SPEECH_QUEUE": "off", "STEWARD_PROACTIVE_INTERVAL_MINUTES": "0",
        "STEWARD_SHUTDOWN_GRACE_S": "1"}
    assert subprocess.run([steward, "db", "upgrade"], env=env, capture_output=True, timeout=120).returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "serve.log").open("w+")
    server = subprocess.Popen([steward, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server)
        with socket.create_connection(("127.0.0.1", port)) as upload:  # a body that arrives ever so slowly
            upload.sendall(b"POST /api/v1/auth/token HTTP/1.1\r\nHost: steward\r\n"
                           b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n"
                           b"username=admin&pass")
            time.sleep(0.5)  # the app is reading the body
            server.send_signal(signal.SIGTERM)
            upload.settimeout(15)
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := upload.recv(4096):
                    answer += chunk
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=10)  # 1 s of grace, then the shutdown
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
    log.seek(0)
    output = log.read()
    assert "Application shutdown complete" in output, output
    # Regression: the cut request was answered a plain-text 500, and a 70-line traceback was logged for it.
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 5" in head.lower(), answer
    assert json.loads(body)["detail"]["code"] == "shutting_down"
    assert "Exception in ASGI application" not in output and "cut by the shutdown: answered 503" in output, output


@pytest.mark.parametrize("args", [
    ["bench", "load", "--postgres-url", "postgresql://steward:secret@127.0.0.1:1/postgres"],
    ["bench", "load", "--postgres-url", "notaurl"],
    ["bench", "sync", "--no-sqlite", "--postgres-url", "postgresql://steward:secret@127.0.0.1:1/postgres"]])
def test_a_benchmark_database_that_cannot_be_used_is_one_line(tmp_path: Path, args: list[str]) -> None:
    """Regression: an unreachable or malformed --postgres-url was a 450-line traceback."""
    result = runner.invoke(app, [*args, "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Cannot use the benchmark database" in result.output and "secret" not in result.output


@pytest.mark.parametrize("command", [["bench", "load"], ["bench", "sync", "--no-sqlite"]])
def test_a_benchmark_database_without_a_driver_here_is_one_line(tmp_path: Path, command: list[str]) -> None:
    """Regression: `--postgres-url mysql://...` was a 64-line traceback (ModuleNotFoundError, exit 1), where
    `steward db` commands say it in one line."""
    result = runner.invoke(app, [*command, "--postgres-url", "mysql://steward:secret@127.0.0.1:1/steward",
                                 "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "use PostgreSQL" in result.output and "secret" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_benchmark_checks_where_its_results_go_before_it_runs(tmp_path: Path) -> None:
    """Regression: `bench sync`/`bench load` created --out-dir only after the whole run: a file in the way
    cost the run (a traceback at the end)."""
    taken = tmp_path / "results"
    taken.write_text("{}")
    for args in (["bench", "sync", "--sqlite", "--households", "100"],
                 ["bench", "load", "--postgres-url", "postgresql://steward:secret@127.0.0.1:1/postgres"]):
        result = runner.invoke(app, [*args, "--out-dir", str(taken)])
        assert result.exit_code == 2 and "is a file" in result.output, result.output


@pytest.mark.parametrize("rooms", ["a", "1.5", "1,two"])
def test_bench_video_takes_room_counts_only(rooms: str) -> None:
    """Regression: `--rooms a` was a ValueError traceback (exit 1)."""
    result = runner.invoke(app, ["bench", "video", "--rooms", rooms])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output


def test_bench_video_checks_where_its_results_go_before_it_runs(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import video.bench

    monkeypatch.setattr(video.bench, "run_bench", lambda *a, **k: pytest.fail("ran before checking --out"))
    taken = tmp_path / "results.json"
    taken.write_text("{}")
    result = runner.invoke(app, ["bench", "video", "--rooms", "1", "--out", str(taken)])
    assert result.exit_code == 2 and "is a file" in result.output, result.output


def test_db_upgrade_to_an_older_revision_says_it_never_goes_back(data_dir: Path) -> None:
    """Regression: `db upgrade 0005` on a database at the head printed `0015 -> 0015` and exit 0, as if done."""
    runner.invoke(app, ["db", "upgrade"])
    head = json.loads(runner.invoke(app, ["db", "current"]).stdout)["database"]
    result = runner.invoke(app, ["db", "upgrade", "0005"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert f"is at {head}, already past 0005" in line and "nothing was changed" in line
    assert json.loads(runner.invoke(app, ["db", "current"]).stdout)["database"] == head
    again = runner.invoke(app, ["db", "upgrade", head])  # naming the revision it is at is fine
    assert again.exit_code == 0 and f"{head} -> {head}" in again.stdout
    # Regression (review): `base`, before every revision, printed `head -> head` with exit 0, and an empty
    # revision (`db upgrade "$REV"`, REV unset) was a bare AssertionError from inside Alembic.
    base = runner.invoke(app, ["db", "upgrade", "base"])
    assert base.exit_code == 2 and "already past base" in base.output, base.output
    empty = runner.invoke(app, ["db", "upgrade", " "])
    assert empty.exit_code == 2 and "No revision given" in empty.output, empty.output
    # Regression (review): a relative step past the newest revision was a 204-line AssertionError from inside
    # Alembic, and a relative step back printed `head -> head` with exit 0.
    for past in ("head+5", "0012+30"):
        result = runner.invoke(app, ["db", "upgrade", past])
        assert result.exit_code == 2, result.output
        (line,) = result.stderr.splitlines()
        assert f"to {past}: there is no such revision (the newest is {head})" in line
    back = runner.invoke(app, ["db", "upgrade", "head-1"])
    assert back.exit_code == 2 and "already past head-1" in back.output, back.output
    assert json.loads(runner.invoke(app, ["db", "current"]).stdout)["database"] == head


@pytest.fixture(params=BACKENDS)
def cli_database(request: pytest.FixtureRequest, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The commands' database on each backend: SQLite under `data_dir`, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield
        return
    url = create_postgres_database()
    monkeypatch.setenv("STEWARD_DATABASE_URL", url)
    get_settings.cache_clear()
    yield
    drop_postgres_database(url)


def test_db_upgrade_to_a_relative_revision_compares_the_revision_it_names(cli_database: None) -> None:
    """A regression: `db upgrade head-1` on a database at head-1 (as `db upgrade 0016` at 0016: nothing to do)
    was refused as a step back with exit 2, failing a deploy script that pins a relative target; and `base+16`
    on a database at the head, a step back, printed `0017 -> 0017` with exit 0."""
    head = json.loads(runner.invoke(app, ["db", "current"]).stdout)["code"]
    one_back = f"{int(head) - 1:04d}"
    assert runner.invoke(app, ["db", "upgrade", one_back]).exit_code == 0
    same = runner.invoke(app, ["db", "upgrade", one_back])
    assert same.exit_code == 0 and f"{one_back} -> {one_back}" in same.stdout, same.output
    for relative in ("head-1", f"base+{int(one_back)}", f"{head}-1", f"{int(one_back) - 2:04d}+2"):
        result = runner.invoke(app, ["db", "upgrade", relative])
        assert result.exit_code == 0 and result.stdout == same.stdout, (relative, result.output)
    assert json.loads(runner.invoke(app, ["db", "current"]).stdout)["database"] == one_back
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    for back in ("head-1", f"base+{int(one_back)}", f"{int(one_back) - 2:04d}+2"):
        result = runner.invoke(app, ["db", "upgrade", back])
        assert result.exit_code == 2, (back, result.output)
        (line,) = result.stderr.splitlines()
        assert f"is at {head}, already past {back}" in line and "nothing was changed" in line
    at_head = runner.invoke(app, ["db", "upgrade", "head-0"])  # the head itself, not a step back
    assert at_head.exit_code == 0 and f"{head} -> {head}" in at_head.stdout, at_head.output
    assert json.loads(runner.invoke(app, ["db", "current"]).stdout)["database"] == head


@pytest.mark.parametrize("args", [["db", "restored"], ["proactive", "run"], ["blobs", "sweep"], ["demo-data"],
                                  ["create-user", "--username", "admin", "--password", "long-enough", "--role",
                                   "admin"]])
def test_commands_do_not_create_a_mistyped_database(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                    args: list[str]) -> None:
    """Regression: as `db current` once did, these commands created the directory and an empty database at a
    mistyped SQLite path before refusing it; only `db upgrade` creates one."""
    missing = data_dir / "typo" / "steward.db"
    monkeypatch.setenv("STEWARD_DATABASE_URL", f"sqlite:///{missing}")
    get_settings.cache_clear()
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert str(missing) in line and "steward db upgrade" in line
    assert not missing.exists() and not missing.parent.exists()


def test_db_restored_refuses_a_copy_beside_the_old_servers_log(data_dir: Path) -> None:
    """Regression (upgrade walkthrough): a backup copied over steward.db beside the crashed server's -wal file
    was opened by `db restored`, which replayed that log onto the backup (a corrupt or silently mixed
    database) and reported success."""
    import sqlite3

    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    database = data_dir / "steward.db"
    wal = Path(f"{database}-wal")
    wal.write_bytes(b"\x37\x7f\x06\x82" + bytes(28))  # a log left by the server the backup replaces
    result = runner.invoke(app, ["db", "restored"])
    assert result.exit_code == 2 and "-wal is beside the database and no process has it open" in result.stderr, \
        result.output
    assert wal.read_bytes()[:4] == b"\x37\x7f\x06\x82"  # nothing opened the database
    wal.unlink()
    with contextlib.closing(sqlite3.connect(database)) as conn:  # and it has no identity yet
        assert conn.execute("SELECT value FROM sync_state WHERE name = 'database_id'").fetchone() is None
    result = runner.invoke(app, ["db", "restored"])
    assert result.exit_code == 0 and "new sync identity" in result.stdout, result.output
    with contextlib.closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT value FROM sync_state WHERE name = 'database_id'").fetchone() is not None


def test_db_upgrade_records_the_masking_rules_its_copies_follow(data_dir: Path) -> None:
    """`db upgrade` brings stored masked copies to this release's masking rules (speech.service
    .remask_stored_copies) and records the rules' edition, so the next upgrade walks the notes only if they
    changed."""
    import sqlite3

    from speech.redact import MASKING_RULES

    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0 and "masked copies" not in result.stdout, result.output  # nothing to rewrite
    with contextlib.closing(sqlite3.connect(data_dir / "steward.db")) as conn:
        stored = conn.execute("SELECT value FROM sync_state WHERE name = 'masking_rules'").fetchone()
    assert stored == (MASKING_RULES,)


def test_db_restored_runs_beside_a_server_that_has_the_database_open(data_dir: Path) -> None:
    """Regression (review): the refusal above also met a restored database already being served (its log is
    live, and the docs let the command run then); only a log that no process holds is refused."""
    import subprocess
    import sys

    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    database = data_dir / "steward.db"
    server = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(database)!r}); c.execute('PRAGMA journal_mode=WAL')\n"
        "c.execute('SELECT count(*) FROM sync_state').fetchall(); print('open', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "open"
        assert Path(f"{database}-wal").exists()
        result = runner.invoke(app, ["db", "restored"])
        assert result.exit_code == 0 and "new sync identity" in result.stdout, result.output
    finally:
        server.kill()
        server.wait(timeout=30)


def test_serve_refused_for_several_workers_loads_nothing_first(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): `serve --workers 2` on SQLite with STEWARD_DEMO=1 migrated the database and loaded the
    demo district, then refused to start."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("served"))
    monkeypatch.setenv("STEWARD_DEMO", "1")
    get_settings.cache_clear()
    result = runner.invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code == 2 and "PostgreSQL" in result.output
    assert not (data_dir / "steward.db").exists()


def test_serve_does_not_print_a_demo_password_of_the_operators_own(data_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): `serve` printed STEWARD_DEMO_PASSWORD to its output (a container's log), in
    production too; the published dev password is still shown, it is in the README."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    monkeypatch.setenv("STEWARD_DEMO", "1")
    monkeypatch.setenv("STEWARD_DEMO_PASSWORD", "S3cret-Admin-Pw!")
    get_settings.cache_clear()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["serve", "--port", str(_free_port())])
    assert result.exit_code == 0, result.output
    assert "Demo data created" in result.output and "S3cret-Admin-Pw!" not in result.output


def test_a_database_newer_than_the_code_says_so(data_dir: Path) -> None:
    """Regression (review): a database upgraded by a newer release was told to run `steward db upgrade`, which
    then failed ("Can't locate revision")."""
    from sqlalchemy import text

    from api.db import make_engine
    from api.settings import Settings

    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    engine = make_engine(Settings(data_dir=data_dir))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    engine.dispose()
    result = runner.invoke(app, ["serve", "--port", str(_free_port())])
    assert result.exit_code == 2 and "newer than this release" in result.output, result.output
    assert "steward db upgrade" not in result.output


def test_serve_on_a_host_that_is_no_address_says_so(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): a mistyped host was answered "another `steward serve` is running there?"."""
    monkeypatch.setenv("STEWARD_HOST", "127.0.0.1")  # `serve --host` sets it in os.environ: restored after the test
    result = runner.invoke(app, ["serve", "--host", "not..valid host", "--port", str(_free_port())])
    assert result.exit_code == 2 and "STEWARD_HOST" in result.output and "another" not in result.output


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_names_a_misspelt_variable(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    monkeypatch.setenv("STEWARD_FORWARDED_ALLOW_IP", "10.0.0.1")
    get_settings.cache_clear()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["serve", "--port", str(_free_port())])
    assert result.exit_code == 0, result.output
    assert "STEWARD_FORWARDED_ALLOW_IP is not a setting and is ignored: did you mean STEWARD_FORWARDED_ALLOW_IPS?" \
        in result.output


@pytest.mark.parametrize("password", [" " * 8, "x" * 129, "\udcb9\udca9\udcc5\udcaf\udcb9\udcdc\udcbc\udcd2"])
def test_demo_data_checks_its_password_as_any_users(data_dir: Path, password: str) -> None:
    """Regression (review): `--password` was only counted: eight spaces or 129 characters, which the users API
    refuses, were taken, and bytes that are not UTF-8 (typed in a GBK terminal) ended in a traceback."""
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["demo-data", "--households", "5", "--stewards", "1", "--password", password])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert result.stderr.startswith("Invalid password: ") and len(result.stderr.strip().splitlines()) == 1
    assert password.strip() == "" or password not in result.output


def test_serve_does_not_create_a_database_at_a_mistyped_path(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): `serve` opened a SQLite path that did not exist, which created the directories and an
    empty file there, then advised `steward db upgrade`, which migrated the mistyped file."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("served"))
    missing = data_dir / "typo" / "stewrd.db"
    monkeypatch.setenv("STEWARD_DATABASE_URL", f"sqlite:///{missing}")
    get_settings.cache_clear()
    result = runner.invoke(app, ["serve", "--port", str(_free_port())])
    assert result.exit_code == 2 and "there is no such file" in result.stderr, result.output
    assert not missing.parent.exists()


def test_a_refused_second_server_loads_no_demo_data(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): the one-server lock was taken after the start-up's preparation, so a second `serve`
    with STEWARD_DEMO=1, refused, had first loaded the demo district (and its admin with the published
    password) into the database the first server was serving."""
    import uvicorn

    from api.db import make_engine
    from api.settings import Settings
    from api.users.models import User

    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    inner: list[Any] = []

    def first(_app: str, **kw: Any) -> None:
        monkeypatch.setenv("STEWARD_DEMO", "1")
        get_settings.cache_clear()
        inner.append(runner.invoke(app, ["serve", "--port", str(kw["port"] + 1)]))

    monkeypatch.setattr(uvicorn, "run", first)
    assert runner.invoke(app, ["serve", "--port", "18611"]).exit_code == 0
    assert inner[0].exit_code == 2 and "Another `steward serve`" in inner[0].output, inner[0].output
    engine = make_engine(Settings(data_dir=data_dir))
    with Session(engine) as session:
        assert session.exec(select(User)).all() == []
    engine.dispose()


def test_demo_data_progress_goes_to_stderr_and_stdout_is_the_summary(data_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): with stderr on a terminal, the row counter was printed to stdout, in front of the
    JSON summary (`steward demo-data > demo.json` wrote a file `json.load` could not read)."""
    from api import demo

    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    generate = demo.generate
    monkeypatch.setattr(demo, "generate", lambda *a, **kw: generate(*a, **kw | {"progress": True}))  # a terminal
    result = runner.invoke(app, ["demo-data", "--households", "50", "--stewards", "2", "--password", "demo-pass-1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["households"] == 50
    assert "demo-data:" in result.stderr and "demo-data:" not in result.stdout


def test_a_database_in_a_folder_this_user_may_not_enter_is_one_line(data_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): Python 3.11's `Path.exists` raises PermissionError for a path in a folder the user
    may not enter (an operator running `steward create-user` without `sudo -u steward`): a traceback."""
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    real_exists = Path.exists

    def exists(self: Path, **kwargs: Any) -> bool:
        if str(self).startswith(str(data_dir)):
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    for args in (["db", "current"], ["create-user", "--username", "ops1", "--password", "long-enough-1",
                                      "--role", "admin"]):
        result = runner.invoke(app, args)  # the file itself opens here (root): only the checks are in the way
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
    restored = runner.invoke(app, ["db", "restored"])
    assert restored.exit_code == 2 and "Permission denied" in restored.output, restored.output


def test_the_sweep_fails_on_a_blob_folder_it_cannot_list(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): the listing's `glob` skipped what it could not read, so a sweep of a blob folder
    that is a file (or unreadable) reported `"stored": 0` and exit 0, every night."""
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    not_a_folder = data_dir / "blobs-file"
    not_a_folder.write_bytes(b"x")
    monkeypatch.setenv("STEWARD_BLOB_DIR", str(not_a_folder))
    get_settings.cache_clear()
    result = runner.invoke(app, ["blobs", "sweep", "--dry-run"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Not a directory" in result.stderr  # the report of what was done (nothing) is still printed


def test_an_unreadable_env_file_is_a_configuration_error(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): a `.env` the user may not read ended every command in a PermissionError traceback."""
    from api import settings as settings_module

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", ".env")

    monkeypatch.setattr(settings_module, "get_settings", unreadable)
    monkeypatch.setattr("api.cli.get_settings", unreadable)
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 2 and "cannot read .env: Permission denied" in result.output, result.output


def test_create_user_prints_the_grid_it_stored(data_dir: Path) -> None:
    """Regression (review): `--grid B,B` printed the building twice; one grid row is stored."""
    from sqlmodel import create_engine

    from api.users.models import GridBuilding
    from tests.utils.factories import make_building

    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    engine = create_engine(f"sqlite:///{data_dir / 'steward.db'}")
    with Session(engine) as session:
        building = str(make_building(session).id)
    result = runner.invoke(app, ["create-user", "--username", "st1", "--password", "long-enough-1", "--role",
                                 "steward", "--grid", f"{building},{building}"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["grid"] == [building]
    with Session(engine) as session:
        assert [str(g.building_id) for g in session.exec(select(GridBuilding)).all()] == [building]
    engine.dispose()
