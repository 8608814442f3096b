"""What `steward serve` checks before it listens: schema up to date, and a way in for the first user."""

from __future__ import annotations

import json
import os

import typer
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from api import migrate
from api.db import make_engine
from api.settings import DEV_SECRET_KEY, Settings
from api.users.models import User


def schema_problem(engine: Engine) -> str | None:
    """Why this code cannot work on the database's schema (never migrated, or another revision), or None."""
    current, head = migrate.current_revision(engine), migrate.head_revision()
    if current == head:
        return None
    return f"The database is at schema {current or 'empty'}, the code needs {head}: run `steward db upgrade` first."


def speech_problem(settings: Settings) -> str | None:
    """Why every transcription job would fail with these settings (language, glossary, model path), or None."""
    from speech.glossary import GlossaryError, load_glossary
    from speech.model_store import ModelError, check_model
    from speech.pipeline import check_language

    if settings.speech_queue == "off":  # nothing transcribes here
        return None
    try:
        check_language(settings.speech_language)
    except ValueError as exc:
        return f"Configuration error: STEWARD_SPEECH_LANGUAGE: {exc}"
    try:
        load_glossary(settings.speech_glossary)
    except GlossaryError as exc:
        return f"Configuration error: STEWARD_SPEECH_GLOSSARY: {exc}"
    try:
        check_model(engine=settings.whisper_engine, model=settings.whisper_model)
    except ModelError as exc:  # a missing path, or a folder without model.bin: every job would fail on it
        return f"Configuration error: STEWARD_WHISPER_MODEL: {exc} (empty: the bundled model)"
    return None


def storage_problem(settings: Settings) -> str | None:
    """Why the blob store's directory cannot be used (created, written), or None."""
    root = settings.blob_dir or settings.data_dir / "blobs"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"Configuration error: STEWARD_BLOB_DIR: cannot use {root}: {exc.strerror or exc}"
    if settings.blob_store == "s3":
        from sync.blobs.storage import bucket_problem

        problem = bucket_problem(settings)
        if problem:
            return f"Configuration error: STEWARD_S3_BUCKET: {problem}"
    return None


def prepare(settings: Settings) -> None:
    """Refuse bad speech settings, an unusable blob directory or an unmigrated database; on an empty one, seed
    demo data or say how to start."""
    # Checked here, not when the first job loads the model: there, every job would fail one by one. The blob
    # directory too: it is created while the app is built, inside uvicorn, where a failure is a traceback.
    problem = speech_problem(settings) or storage_problem(settings)
    if problem:
        typer.secho(problem, fg="red", err=True)
        raise typer.Exit(2)
    engine = make_engine(settings)
    try:
        problem = schema_problem(engine)
        if problem:
            typer.secho(problem, fg="red", err=True)
            raise typer.Exit(2)
        with Session(engine) as session:
            users = session.exec(select(func.count()).select_from(User)).one()
        if users == 0 and settings.demo:
            from api.demo import generate

            summary = generate(engine, households=2000, stewards=4, password=settings.demo_password, seed=1)
            brief = {k: summary[k] for k in ("stations", "buildings", "households", "work_orders")}
            typer.secho(f"Demo data created: {json.dumps(brief)}", fg="green", err=True)
            typer.secho(f"Sign in as admin / supervisor / steward01..04 with password {settings.demo_password!r}",
                        fg="green", err=True)
        elif users == 0:
            typer.secho("The database has no users yet. Create the first admin with:\n"
                        "  .venv/bin/steward create-user --username admin --password '<at least 8 chars>' "
                        "--role admin\nor restart with STEWARD_DEMO=1 to load a demo district.",
                        fg="yellow", err=True)
        if settings.secret_key == DEV_SECRET_KEY:
            typer.secho("Dev mode: tokens are signed with the development key; set STEWARD_ENV=production "
                        "and STEWARD_SECRET_KEY before real use.", fg="yellow", err=True)
    finally:
        engine.dispose()
