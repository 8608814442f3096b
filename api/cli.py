"""The `steward` command: serve, migrate, create users, seed demo data."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from api import __version__
from api.bench_cli import bench_app
from api.settings import Settings, describe_problem, get_settings
from speech.cli import transcribe, worker

if TYPE_CHECKING:
    from sqlalchemy import Engine

app = typer.Typer(help="Heat Steward: the heating steward service backend.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(bench_app, name="bench")
app.command("transcribe")(transcribe)
app.command("worker")(worker)
proactive_app = typer.Typer(help="Proactive service (未诉先办): clusters, revisits, campaign retries.",
                            no_args_is_help=True)
app.add_typer(proactive_app, name="proactive")
blobs_app = typer.Typer(help="The blob store (photos, recordings, snapshots).", no_args_is_help=True)
app.add_typer(blobs_app, name="blobs")


class RoleOption(StrEnum):
    admin = "admin"
    supervisor = "supervisor"
    steward = "steward"


def _settings() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        typer.secho(f"Configuration error: {describe_problem(exc)}", fg="red", err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:  # a `.env` this user may not read
        typer.secho(f"Configuration error: cannot read {exc.filename or 'the settings'}: {exc.strerror or exc}",
                    fg="red", err=True)
        raise typer.Exit(2) from exc


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg="red", err=True)
    return typer.Exit(code)


def _database_name(settings: Settings) -> str:
    """The configured database as a user may see it: the URL without its password (libpq's `?password=` and
    `?sslpassword=` included)."""
    from sqlalchemy.exc import ArgumentError

    from api.urls import hide_passwords, shown_url

    url = settings.resolved_database_url
    try:
        return shown_url(url)
    except (ArgumentError, ValueError):  # not a URL SQLAlchemy can read (`:54x2` as port): still never print
        # what may be a password
        return repr(hide_passwords(re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@",
                                          re.sub(r"(:/+[^:/@]*:)[^@/]*@", r"\1***@", url))))


def _one_line(exc: BaseException) -> str:
    # SQLAlchemy wraps the driver's error in several lines (the SQL, a link); the driver's own says it all.
    orig = getattr(exc, "orig", None)
    return " ".join(line.strip() for line in str(orig or exc).splitlines() if line.strip())


@contextmanager
def _database_errors(settings: Settings) -> Iterator[None]:
    """Turn a database that cannot be created, opened or migrated (a bad URL, a path that is a file or a
    directory, a file that is not SQLite, a server that refuses, an unknown revision) into one line naming
    the database and the cause, with exit code 2, as for any other configuration error."""
    from alembic.util import CommandError
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from api.db import DatabaseConfigError

    try:
        yield
    except (DatabaseConfigError, ArgumentError, DBAPIError, CommandError) as exc:
        raise _fail(f"Cannot use the database {_database_name(settings)}: {_one_line(exc)}", 2) from exc
    except ImportError as exc:  # a URL for a database this service does not support (mysql://...)
        raise _fail(f"Cannot use the database {_database_name(settings)}: use SQLite or PostgreSQL "
                    f"({_one_line(exc)})", 2) from exc


def _missing_sqlite_file(settings: Settings) -> bool:
    """Whether the configured database is a SQLite file that does not exist (opening it would create it, and
    the directories above it, at a mistyped path)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(settings.resolved_database_url)
    except (ArgumentError, ValueError):  # `_database` says what is wrong with it
        return False
    path = Path(url.database or "")
    try:
        return (url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
                and not path.exists() and not any(parent.is_file() for parent in path.parents))
    except OSError:  # a folder this user may not enter (Python 3.11's `exists` raises): opening it says so
        return False


def _exists(path: Path) -> bool:
    """Whether `path` exists; a folder this user may not enter is one line (exit 2), not a traceback."""
    try:
        return path.exists()
    except OSError as exc:
        raise _fail(f"Cannot use the database: cannot reach {path}: {exc.strerror or exc}", 2) from exc


@contextmanager
def _database(settings: Settings, *, create: bool = False) -> Iterator[Engine]:
    """The configured database's engine, disposed on the way out; its errors as in `_database_errors`. Only
    `create` (`db upgrade`) makes a SQLite file that is not there: every other command refuses, in one line,
    rather than leave an empty database at a mistyped path."""
    from api.db import make_engine

    if not create and _missing_sqlite_file(settings):
        raise _fail(f"Cannot use the database {_database_name(settings)}: there is no such file: run "
                    "`steward db upgrade` first, or check STEWARD_DATABASE_URL / STEWARD_DATA_DIR.", 2)
    with _database_errors(settings):
        engine = make_engine(settings)
        try:
            yield engine
        finally:
            engine.dispose()


def _require_schema(engine: Engine) -> None:
    """Refuse a database that is not at the code's schema (a never-migrated one has no tables at all)."""
    from api.startup import schema_problem

    problem = schema_problem(engine)
    if problem:
        raise _fail(problem, 2)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"heat-steward {__version__}")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Create or migrate the database schema to the newest version."""
    from api import migrate

    if not revision.strip():  # `db upgrade "$REV"` with REV unset: Alembic fails on it with a bare assertion
        raise _fail("No revision given: name one (`db upgrade head`, the default, or a revision like 0016).", 2)
    settings = _settings()
    with _database(settings, create=True) as engine:
        before = migrate.current_revision(engine)
        try:
            migrate.upgrade(engine, revision)
        except RuntimeError as exc:  # a migration that refuses (names that clash, a table it could not lock)
            raise _fail(f"Cannot upgrade the database {_database_name(settings)}: {exc}", 2) from exc
        except AssertionError as exc:  # `head+5`, `0012+10`: a relative step past the newest revision
            raise _fail(f"Cannot upgrade the database {_database_name(settings)} to {revision}: there is no such "
                        f"revision (the newest is {migrate.head_revision()}); nothing was changed.", 2) from exc
        after = migrate.current_revision(engine)
        remasked = _remask(engine) if after == migrate.head_revision() else 0
    # `is_behind` counts a relative target (`head-1`, `base+16`) out first: `head-1` on a database at head-1 was
    # refused as a step back (a deploy script pinning it failed), while `base+16` at the head passed as done.
    if before is not None and after == before and migrate.is_behind(before, revision):
        # Alembic's upgrade to an older revision changes nothing and says nothing: tell the operator why
        raise _fail(f"The database {_database_name(settings)} is at {before}, already past {revision}: "
                    "`db upgrade` never goes back (restore a backup taken before the upgrade, docs/reliability.md)"
                    "; nothing was changed.", 2)
    typer.echo(f"database {_database_name(settings)}: {before or 'empty'} -> {after}")
    if remasked:
        typer.echo(f"masked copies of {remasked} transcripts rewritten with this release's masking rules")


def _remask(engine: Engine) -> int:
    """The masked copies of transcripts brought to this release's rules (`remask_stored_copies`), with a
    progress bar: one pass over the notes, only when the rules changed since the last."""
    from rich.progress import Progress

    from speech.service import remask_stored_copies

    with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("masking rules", total=None)
        return remask_stored_copies(engine, progress=lambda n: bar.advance(task, n))


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database and of the code."""
    from api import migrate

    settings = _settings()
    if _missing_sqlite_file(settings):
        # A question, not a command: it created the directory and an empty file at a mistyped path, after
        # which `serve` called the database empty instead of missing.
        typer.echo(json.dumps({"database": None, "code": migrate.head_revision(), "exists": False}))
        return
    with _database(settings) as engine:
        current = migrate.current_revision(engine)
    typer.echo(json.dumps({"database": current, "code": migrate.head_revision()}))


def _sqlite_in_use(database: str) -> bool:
    """Whether another process has this SQLite database open: every connection of SQLite's unix VFS holds a
    shared lock on byte 128 of the `-shm` file (its "dead man switch") for as long as it is open."""
    import fcntl
    import struct

    try:
        shm = open(f"{database}-shm", "rb")  # noqa: SIM115 (closed below; the lock test needs a descriptor)
    except FileNotFoundError:
        return False
    with shm:
        probe = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 128, 1, 0)
        held = fcntl.fcntl(shm.fileno(), fcntl.F_GETLK, probe)
        return struct.unpack("hhqqi", held)[0] != fcntl.F_UNLCK


@db_app.command("restored")
def db_restored() -> None:
    """Run after restoring a backup: give the database a new sync identity, so that every handheld's next pull
    starts over from a fresh snapshot (their cursors name positions the restored database may reuse)."""
    from sqlalchemy.engine import make_url

    from api.db import DatabaseConfigError
    from sync.tracking import new_database_id

    settings = _settings()
    with _database_errors(settings):  # a URL that does not parse is one line, as for every other command
        try:
            url = make_url(settings.resolved_database_url)
        except ValueError as exc:  # a port `54x2`
            raise DatabaseConfigError(f"the URL cannot be read: {exc}") from exc
    db = url.database
    if url.get_backend_name() == "sqlite" and db and _exists(Path(f"{db}-wal")) and not _sqlite_in_use(db):
        # Nobody has the database open, yet a write-ahead log is beside it: after a restore, most likely the log
        # of the server whose database the backup replaced. Opening the copy would replay it onto the backup (a
        # corrupt, or silently mixed, "restored" database).
        raise _fail(f"{db}-wal is beside the database and no process has it open: if the server whose database "
                    "this backup replaces left it, opening the copy would replay that log onto the backup. With "
                    f"the server stopped, delete {db}-wal and {db}-shm and copy the backup again, or restore with "
                    f"`sqlite3 {db} \".restore backup.db\"` (docs/reliability.md); then run this again.", 2)
    with _database(settings) as engine:
        new_database_id(engine)
    typer.echo(f"database {_database_name(settings)}: new sync identity; every handheld resyncs on its next pull")


@app.command("create-user")
def create_user(
    username: Annotated[str, typer.Option(help="Sign-in name.")],
    password: Annotated[str, typer.Option(help="At least 8 characters.")],
    role: Annotated[RoleOption, typer.Option(help="admin, supervisor or steward.")],
    grid: Annotated[str, typer.Option(help="Comma-separated building ids (stewards).")] = "",
    full_name: Annotated[str, typer.Option(help="Display name.")] = "",
) -> None:
    """Create a user (the first admin, for instance)."""
    import uuid

    from pydantic import ValidationError
    from sqlmodel import Session

    from api.errors import DomainError
    from api.users.models import Role, UserCreate
    from api.users.service import create_user as create

    try:
        grid_ids = [uuid.UUID(part.strip()) for part in grid.split(",") if part.strip()]
        data = UserCreate(username=username, password=password, role=Role(role.value), grid=grid_ids,
                          full_name=full_name)
    except ValidationError as exc:  # each problem without its input: never echo the password
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors(include_input=False))
        raise _fail(f"Invalid user: {problems}", 2) from exc
    except ValueError as exc:
        raise _fail(f"Invalid user: {exc}", 2) from exc
    with _database(_settings()) as engine:
        _require_schema(engine)
        try:
            with Session(engine) as session:
                user = create(session=session, data=data)
                typer.echo(json.dumps({"id": str(user.id), "username": user.username, "role": user.role.value,
                                       "grid": [str(g) for g in dict.fromkeys(grid_ids)]}))  # as stored: once each
        except DomainError as exc:
            raise _fail(f"{exc.code}: {exc.message}") from exc


def _check_password(password: str) -> None:
    """A password given on the command line, by the rules of every user's (`UserCreate`): the demo users'
    `--password` was only counted, and bytes that are not UTF-8 (a GBK terminal) ended in a traceback."""
    from pydantic import ValidationError

    from api.users.models import Role, UserCreate

    try:
        password.encode("utf-8")
        UserCreate(username="check", password=password, role=Role.admin)
    except UnicodeEncodeError as exc:
        raise _fail("Invalid password: it is not UTF-8 text (set the terminal to UTF-8).", 2) from exc
    except ValidationError as exc:  # without its input: never echo the password
        problems = "; ".join(e["msg"] for e in exc.errors(include_input=False))
        raise _fail(f"Invalid password: {problems}", 2) from exc


@app.command("demo-data")
def demo_data(
    households: Annotated[int, typer.Option(min=1, max=5_000_000, help="How many households.")] = 2000,
    stewards: Annotated[int, typer.Option(min=1, max=10_000, help="How many stewards (one grid each).")] = 4,
    password: Annotated[str | None, typer.Option(help="Password of every demo user (default: "
                                                      "STEWARD_DEMO_PASSWORD, itself steward-demo).")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same data.")] = 1,
) -> None:
    """Seed a realistic district (stations, buildings, households, users, open work orders)."""
    from api.demo import DemoError, generate
    from api.settings import DEMO_PASSWORD

    settings = _settings()
    password = settings.demo_password if password is None else password
    _check_password(password)
    if settings.env != "dev" and password == DEMO_PASSWORD:  # as STEWARD_DEMO=1 is refused (api/settings.py)
        raise _fail("Outside dev mode the demo users need a password of your own: --password '<at least 8 "
                    "chars>' (the default is published in the README, and one of the users is an admin).", 2)
    with _database(settings) as engine:
        _require_schema(engine)
        try:
            summary = generate(engine, households=households, stewards=stewards, password=password, seed=seed,
                               progress=sys.stderr.isatty())
        except DemoError as exc:
            raise _fail(str(exc)) from exc
    if password != DEMO_PASSWORD:  # a secret of the operator's own stays out of terminals and logs
        summary["password"] = "as given (--password or STEWARD_DEMO_PASSWORD)"
    typer.echo(json.dumps(summary, ensure_ascii=False, indent=2))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default: settings).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: settings).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes: PostgreSQL only beyond 1, and then no "
                                                      "video calls (one process per port: docs/video.md).")] = 1,
) -> None:
    """Serve the API with uvicorn."""
    import os

    import uvicorn

    from api.startup import prepare

    # The app reads its settings again (`get_settings`, cached per process; uvicorn builds it in this process
    # with one worker): what the command line chose must reach it before anything reads and caches them. The
    # video relay names itself <host>:<port> and a room is pinned to that name: set afterwards, a second
    # process on another port also called itself <host>:8000 and closed the first one's calls as lost.
    if host is not None:
        os.environ["STEWARD_HOST"] = host
    if port is not None:
        os.environ["STEWARD_PORT"] = str(port)
    # Every worker process reads it: they share one port and one relay name, so none may host a video call.
    os.environ["STEWARD_SERVE_WORKERS"] = str(workers)
    get_settings.cache_clear()
    settings = _settings()
    # Both checks before `prepare`: it migrates the database and may load the demo data, which a refused start
    # then left behind.
    if workers > 1 and settings.resolved_database_url.startswith("sqlite"):
        raise _fail("--workers beyond 1 needs PostgreSQL: an embedded SQLite database takes one process (its "
                    "transcription and proactive workers run inside it).", 2)
    # Not `port or settings.port`: that read --port 0 as "the default" (the option's bounds now refuse it).
    bind_host, bind_port = host or settings.host, port if port is not None else settings.port
    if (busy := _port_taken(bind_host, bind_port)) is not None:
        # Before the app starts: its start-up closes the video rooms of this relay name as lost, which were
        # the live calls of the server already on this port.
        raise _fail(f"Cannot serve on {bind_host}:{bind_port}: {busy}.", 2)
    if _missing_sqlite_file(settings):  # opening it made an empty file at a mistyped path, "to be migrated"
        raise _fail(f"Cannot use the database {_database_name(settings)}: there is no such file: run "
                    "`steward db upgrade` first, or check STEWARD_DATABASE_URL / STEWARD_DATA_DIR.", 2)
    # The one-server lock before `prepare` too: a refused second server loaded the demo data (and its admin
    # with the published password) into the database the first one was serving.
    with _one_server(settings):
        with _database_errors(settings):
            prepare(settings)
        from api.security import configure_logging, install_log_redaction

        install_log_redaction()
        configure_logging(settings.log_level)
        # timeout_graceful_shutdown: on SIGTERM uvicorn waits for every open connection before the app's own
        # shutdown (closing video calls, saving their recordings, stopping the transcription threads); one
        # handheld's slow upload held it back past docker's SIGKILL. Uploads resume (PATCH): cutting one is cheap.
        uvicorn.run("api.main:app", host=bind_host, port=bind_port, workers=workers, log_level=settings.log_level,
                    proxy_headers=True, forwarded_allow_ips=settings.forwarded_allow_ips,
                    timeout_graceful_shutdown=settings.shutdown_grace_s)


@contextmanager
def _one_server(settings: Settings) -> Iterator[None]:
    """Hold `<database>.serve.lock` while serving an embedded SQLite database. A second `steward serve` on
    the same file (another port, or a restart while the old process still drained) started fine, and its
    transcription worker's start-up recovery took the first one's running job back as interrupted: the call
    was transcribed twice, and each overlap spent one of its attempts. PostgreSQL takes many servers."""
    import fcntl

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(settings.resolved_database_url)
    except (ArgumentError, ValueError):  # `prepare` names what is wrong with it, in one line (`_database_errors`)
        yield
        return
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        yield
        return
    path = Path(url.database).resolve()
    if not path.parent.is_dir():  # a file in the way of its directory: `prepare` says so, in one line
        yield
        return
    try:
        lock = open(path.with_name(path.name + ".serve.lock"), "a")  # noqa: SIM115 - held while serving
    except OSError as exc:  # a read-only directory: one line, as for the database itself
        raise _fail(f"Cannot use the SQLite database {path}: cannot create its lock file: {exc.strerror or exc}",
                    2) from exc
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise _fail(f"Another `steward serve` is using the SQLite database {path} (an embedded database "
                        "takes one server; stop it first, or use PostgreSQL for several).", 2) from exc
        yield


def _port_taken(host: str, port: int) -> str | None:
    """Why nothing can listen on host:port now (None if it can): tried the way uvicorn binds."""
    import errno
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except socket.gaierror as exc:  # not "another server is running": the host name itself is wrong
        return f"{host!r} is not an address or a known host name of this machine ({exc.strerror}); check --host " \
               "or STEWARD_HOST"
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            return f"{why} (another `steward serve` is running there? pick another --port)"
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"{why} (not an address of this machine; check --host or STEWARD_HOST)"
        return why
    return None


@blobs_app.command("sweep")
def blobs_sweep(
    grace_days: Annotated[float, typer.Option(min=0, max=36500, help="Keep unreferenced blobs younger than this: "
                                                          "an upload whose row is still queued on a handheld.")] = 7,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be deleted.")] = False,
) -> None:
    """Delete stored blobs that no note, visit (photos, signature) or video snapshot names (for a daily cron
    job; docs/sync-protocol.md)."""
    from datetime import timedelta

    from botocore.exceptions import BotoCoreError, ClientError
    from rich.progress import Progress

    from sync.blobs.service import make_store
    from sync.blobs.sweep import SweepReport, sweep

    settings = _settings()
    if settings.blob_store == "s3":
        from sync.blobs.storage import bucket_problem

        if problem := bucket_problem(settings):  # not a traceback from the first listing call
            raise _fail(f"Configuration error: STEWARD_S3_BUCKET: {problem}", 2)
    with _database(settings) as engine:
        _require_schema(engine)
        with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("blobs", total=None)
            report = SweepReport()
            try:
                sweep(engine, make_store(settings), grace=timedelta(days=grace_days), dry_run=dry_run,
                      progress=lambda n: bar.advance(task, n), report=report)
            except (OSError, BotoCoreError, ClientError) as exc:
                # The store failed midway (a delete refused without s3:DeleteObject, the endpoint gone): what
                # was done, then one line, not a traceback. A rerun finds the rest again.
                typer.echo(json.dumps(dataclasses.asdict(report)))
                raise _fail(f"The blob store failed during the sweep, after {report.deleted} deletions: {exc}. "
                            "Run the sweep again once it works: the blobs left are found again.", 1) from None
    typer.echo(json.dumps(dataclasses.asdict(report)))


@proactive_app.command("run")
def proactive_run() -> None:
    """Evaluate once: open cluster and revisit work orders, retry due campaign SMS (for cron)."""
    from sqlmodel import Session

    from api.notices.sms import make_sender
    from api.proactive import service
    from api.security import configure_logging, install_log_redaction

    settings = _settings()
    install_log_redaction()  # as in `steward serve`: what the run logs is masked, and shown
    configure_logging(settings.log_level)
    with _database(settings) as engine:
        _require_schema(engine)
        sender = make_sender(settings)
        with Session(engine, expire_on_commit=False) as session:
            report = service.run(session=session, settings=settings, sender=sender)
        close = getattr(sender, "close", None)
        if close is not None:
            close()
    typer.echo(json.dumps(report.model_dump()))
