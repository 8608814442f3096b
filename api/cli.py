"""The `steward` command: serve, migrate, create users, seed demo data."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated

import typer

from api import __version__
from api.bench_cli import bench_app
from api.settings import Settings, get_settings
from speech.cli import transcribe, worker

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


class RoleOption(StrEnum):
    admin = "admin"
    supervisor = "supervisor"
    steward = "steward"


def _settings() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        typer.secho(f"Configuration error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg="red", err=True)
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"heat-steward {__version__}")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Create or migrate the database schema to the newest version."""
    from api import migrate
    from api.db import make_engine

    settings = _settings()
    engine = make_engine(settings)
    before = migrate.current_revision(engine)
    migrate.upgrade(engine, revision)
    after = migrate.current_revision(engine)
    typer.echo(f"database {engine.url.render_as_string(hide_password=True)}: {before or 'empty'} -> {after}")
    engine.dispose()


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database and of the code."""
    from api import migrate
    from api.db import make_engine

    engine = make_engine(_settings())
    typer.echo(json.dumps({"database": migrate.current_revision(engine), "code": migrate.head_revision()}))
    engine.dispose()


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

    from api.db import make_engine
    from api.errors import DomainError
    from api.users.models import Role, UserCreate
    from api.users.service import create_user as create

    try:
        grid_ids = [uuid.UUID(part.strip()) for part in grid.split(",") if part.strip()]
        data = UserCreate(username=username, password=password, role=Role(role.value), grid=grid_ids,
                          full_name=full_name)
    except (ValueError, ValidationError) as exc:
        raise _fail(f"Invalid user: {exc}", 2) from exc
    engine = make_engine(_settings())
    try:
        with Session(engine) as session:
            user = create(session=session, data=data)
            typer.echo(json.dumps({"id": str(user.id), "username": user.username, "role": user.role.value,
                                   "grid": [str(g) for g in grid_ids]}))
    except DomainError as exc:
        raise _fail(f"{exc.code}: {exc.message}") from exc
    finally:
        engine.dispose()


@app.command("demo-data")
def demo_data(
    households: Annotated[int, typer.Option(min=1, max=5_000_000, help="How many households.")] = 2000,
    stewards: Annotated[int, typer.Option(min=1, max=10_000, help="How many stewards (one grid each).")] = 4,
    password: Annotated[str, typer.Option(help="Password of every demo user.")] = "steward-demo",
    seed: Annotated[int, typer.Option(help="Same seed, same data.")] = 1,
) -> None:
    """Seed a realistic district (stations, buildings, households, users, open work orders)."""
    from api.db import make_engine
    from api.demo import DemoError, generate

    engine = make_engine(_settings())
    try:
        summary = generate(engine, households=households, stewards=stewards, password=password, seed=seed,
                           progress=sys.stderr.isatty())
    except DemoError as exc:
        raise _fail(str(exc)) from exc
    finally:
        engine.dispose()
    typer.echo(json.dumps(summary, ensure_ascii=False, indent=2))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default: settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (PostgreSQL only beyond 1).")] = 1,
) -> None:
    """Serve the API with uvicorn."""
    import uvicorn

    from api.startup import prepare

    settings = _settings()
    prepare(settings)
    uvicorn.run("api.main:app", host=host or settings.host, port=port or settings.port, workers=workers,
                log_level=settings.log_level, proxy_headers=True)


@proactive_app.command("run")
def proactive_run() -> None:
    """Evaluate once: open cluster and revisit work orders, retry due campaign SMS (for cron)."""
    from sqlmodel import Session

    from api import migrate
    from api.db import make_engine
    from api.notices.sms import make_sender
    from api.proactive import service

    settings = _settings()
    engine = make_engine(settings)
    try:
        if migrate.current_revision(engine) != migrate.head_revision():
            raise _fail("The database schema is not up to date: run `steward db upgrade` first.", 2)
        sender = make_sender(settings)
        with Session(engine, expire_on_commit=False) as session:
            report = service.run(session=session, settings=settings, sender=sender)
        close = getattr(sender, "close", None)
        if close is not None:
            close()
    finally:
        engine.dispose()
    typer.echo(json.dumps(report.model_dump()))
