"""Helpers for the service tests: settings that share the session's model, running queued jobs on either
backend, and transcripts written straight into the database."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlmodel import Session

from api.db import utcnow
from api.notes.models import Note, NoteKind
from api.settings import Settings
from api.users.models import User
from speech.models import Transcript, TranscriptState
from speech.redact import redact_joined
from speech.worker import run_worker

PROCRASTINATE_TABLES = ("procrastinate_events", "procrastinate_periodic_defers", "procrastinate_jobs",
                        "procrastinate_workers")


def clear_procrastinate(engine: Engine) -> None:
    """Forget jobs left by earlier tests (the test database lives for the whole session)."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            names = ", ".join(f"procrastinate.{t}" for t in PROCRASTINATE_TABLES)
            conn.execute(text(f"TRUNCATE {names} CASCADE"))


def post_call(client: TestClient, headers: dict[str, str], audio: bytes, **meta: Any) -> Any:
    metadata = {"caller_phone": "13800138000", "started_at": "2026-11-29T08:00:00+08:00", "agent": "agent-07"} | meta
    return client.post("/api/v1/calls", headers=headers, files={"audio": ("call.wav", audio, "audio/wav")},
                       data={"metadata": json.dumps(metadata, default=str)})


def wait_until_done(engine: Engine, settings: Settings, ids: list[uuid.UUID], timeout: float = 90) -> None:
    """Let the queue of this backend process the jobs: the embedded worker runs by itself (SQLite);
    on PostgreSQL a procrastinate worker runs until the queue is empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.dialect.name == "postgresql":
            run_worker(settings, engine, wait=False)
        with Session(engine) as session:
            states = [session.get(Transcript, i).status for i in ids]  # type: ignore[union-attr]
        if all(s not in (TranscriptState.queued, TranscriptState.running, TranscriptState.waiting_audio)
               for s in states):
            return
        time.sleep(0.3)
    raise AssertionError(f"jobs not done in {timeout} s: {states}")


def make_transcript(session: Session, owner: User, *texts: str,
                    status: TranscriptState = TranscriptState.transcribed, categories: tuple[str, ...] = ("other",),
                    **note_fields: Any) -> Transcript:
    """A recording with a finished transcript of these segment texts (2.5 s each), without running a model;
    the note holds the masked copy of the text, as the worker writes it."""
    note = Note(owner_id=owner.id, kind=note_fields.pop("kind", NoteKind.voice_note),
                audio_sha256=uuid.uuid4().hex * 2, duration_s=5.0,
                recorded_at=note_fields.pop("recorded_at", utcnow()),
                transcript_text=redact_joined(list(texts), "") if texts else None, **note_fields)
    session.add(note)
    session.flush()
    transcript = session.get(Transcript, note.id)
    assert transcript is not None
    transcript.sqlmodel_update({
        "status": status, "engine": "faster-whisper", "model": "whisper-base", "language": "zh",
        "duration_s": 2.5 * len(texts), "text": "".join(texts),
        "segments": [{"start": 2.5 * i, "end": 2.5 * (i + 1), "text": t} for i, t in enumerate(texts)],
        "categories": "," + ",".join(categories) + ",", "transcribed_at": utcnow()})
    session.commit()
    return transcript


def bundled_model_dir(data_dir: Path) -> str:
    from speech.model_store import ensure_bundled_model

    return str(ensure_bundled_model(data_dir))
