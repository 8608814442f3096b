"""What `steward serve` checks before it listens: schema up to date, and a way in for the first user."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from api import migrate
from api.db import make_engine
from api.settings import DEMO_PASSWORD, DEV_SECRET_KEY, Settings, unknown_variables
from api.users.models import User


def schema_problem(engine: Engine) -> str | None:
    """Why this code cannot work on the database's schema (never migrated, or another revision), or None."""
    current, head = migrate.current_revision(engine), migrate.head_revision()
    if current == head:
        return None
    if current is not None and not migrate.known_revision(current):
        return (f"The database is at schema {current}, newer than this release of the code (which knows up to "
                f"{head}): run the release that upgraded it, or restore a backup made before.")
    return f"The database is at schema {current or 'empty'}, the code needs {head}: run `steward db upgrade` first."


# Every compute type CTranslate2 (faster-whisper's runtime) knows; which of them a device runs is asked of it.
COMPUTE_TYPES = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")


def compute_type_problem(settings: Settings, *, transcribes_here: bool = True) -> str | None:
    """Why CTranslate2 would refuse STEWARD_WHISPER_COMPUTE_TYPE on STEWARD_WHISPER_DEVICE, or None. It
    raises only when a job loads the model ("Requested float16 compute type, but the target device or backend
    do not support efficient float16 computation", "Invalid compute type: int9"): every job failed one by one.
    Asks CTranslate2 what the device supports, without loading a model. A process that does not transcribe
    (`steward serve` with `steward worker` processes, perhaps on a GPU machine with the same settings) only
    refuses a name no device knows."""
    import ctranslate2

    value, device = settings.whisper_compute_type, settings.whisper_device
    if value in ("default", "auto"):  # CTranslate2 picks: the model's own type, or the fastest one
        return None
    if not transcribes_here:
        if value in COMPUTE_TYPES or value in ctranslate2.get_supported_compute_types("cpu"):
            return None
        return (f"Configuration error: STEWARD_WHISPER_COMPUTE_TYPE: unknown compute type {value!r} "
                f"(known: {', '.join(COMPUTE_TYPES)}, default, auto)")
    try:
        supported = set(ctranslate2.get_supported_compute_types(device))
    except (RuntimeError, ValueError) as exc:  # cuda without a usable GPU: every job would fail on it too
        reason = " ".join(str(exc).split())
        return f"Configuration error: STEWARD_WHISPER_DEVICE: {device} cannot be used here ({reason}); use cpu or auto"
    if value in supported:
        return None
    choices = ", ".join([*sorted(supported), "default", "auto"])
    if value in COMPUTE_TYPES:
        return (f"Configuration error: STEWARD_WHISPER_COMPUTE_TYPE: {value} is not supported on "
                f"STEWARD_WHISPER_DEVICE={device} here (it supports {choices})")
    return (f"Configuration error: STEWARD_WHISPER_COMPUTE_TYPE: unknown compute type {value!r} "
            f"(on STEWARD_WHISPER_DEVICE={device} here: {choices})")


def queue_problem(settings: Settings) -> str | None:
    """Why the chosen transcription queue cannot run on this database, or None. procrastinate lives in
    PostgreSQL: on SQLite no job would ever run, and every upload waited on a PostgreSQL that is not there."""
    if settings.speech_queue == "procrastinate" and settings.resolved_database_url.startswith("sqlite"):
        return ("Configuration error: STEWARD_SPEECH_QUEUE=procrastinate needs PostgreSQL (STEWARD_DATABASE_URL); "
                "with SQLite, use `embedded` (or `auto`), which transcribes inside `steward serve`.")
    return None


def speech_problem(settings: Settings, *, transcribes_here: bool = True) -> str | None:
    """Why every transcription job would fail with these settings (language, glossary, model path, compute
    type), or None. `transcribes_here`: whether this process runs the jobs (what its hardware supports is
    checked then)."""
    from speech.engines import engine_available
    from speech.glossary import GlossaryError, load_glossary
    from speech.model_store import FASTER_WHISPER, ModelError, check_model
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
    if transcribes_here and (missing := engine_available(settings.whisper_engine)):
        return f"Configuration error: STEWARD_WHISPER_ENGINE: {missing}"
    if settings.whisper_engine == FASTER_WHISPER:
        return compute_type_problem(settings, transcribes_here=transcribes_here)
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


def _dotenv_names() -> list[str]:
    """The names the `.env` file sets (python-dotenv: what pydantic-settings reads it with)."""
    from dotenv import dotenv_values

    return list(dotenv_values(".env")) if Path(".env").is_file() else []


def prepare(settings: Settings) -> None:
    """Refuse bad speech settings, an unusable blob directory or an unmigrated database; on an empty one, seed
    demo data or say how to start."""
    # Checked here, not when the first job loads the model: there, every job would fail one by one. The blob
    # directory too: it is created while the app is built, inside uvicorn, where a failure is a traceback.
    # `auto` is the embedded queue on SQLite (speech.worker.queue_mode): then this process transcribes.
    sqlite = settings.resolved_database_url.startswith("sqlite")
    embedded = settings.speech_queue == "embedded" or (settings.speech_queue == "auto" and sqlite)
    for line in unknown_variables([*os.environ, *_dotenv_names()]):
        typer.secho(line, fg="yellow", err=True)
    problem = queue_problem(settings) or speech_problem(settings, transcribes_here=embedded) or storage_problem(
        settings)
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
            from api.demo import DemoError, generate

            try:
                summary = generate(engine, households=2000, stewards=4, password=settings.demo_password, seed=1)
            except DemoError as exc:  # stations without users, say: one line, as for any configuration error
                typer.secho(f"Cannot load the demo (STEWARD_DEMO=1): {exc}", fg="red", err=True)
                raise typer.Exit(2) from exc
            brief = {k: summary[k] for k in ("stations", "buildings", "households", "work_orders")}
            typer.secho(f"Demo data created: {json.dumps(brief)}", fg="green", err=True)
            # Only the published password is printed: one of the operator's own went into container logs.
            shown = repr(DEMO_PASSWORD) if settings.demo_password == DEMO_PASSWORD else "STEWARD_DEMO_PASSWORD"
            typer.secho(f"Sign in as admin / supervisor / steward01..04 with password {shown}", fg="green", err=True)
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
