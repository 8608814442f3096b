"""The transcription job, shared by both queues: claim a transcript, transcribe its audio, record the outcome.

The transcript row is the durable job. Claiming is one conditional UPDATE, so two workers can never run
the same transcript: the embedded queue claims `queued` rows whose time has come, or `running` rows whose
lease ran out (their worker died); procrastinate claims the row its job names (procrastinate itself
guarantees one worker per job and retries jobs of dead workers).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, or_, update
from sqlmodel import Session, col, select

from api.db import utcnow
from api.notes.models import Note, NoteKind, TranscriptStatus
from api.settings import Settings
from speech.audio import AudioDecodeError, decode_audio
from speech.glossary import categorize, load_glossary
from speech.models import Call, Transcript, TranscriptState
from speech.redact import redact_text
from speech.storage import audio_file, audio_stored

log = logging.getLogger(__name__)

# A job that runs longer than this (embedded queue) is presumed dead and taken over.
LEASE = timedelta(minutes=30)
DRAFT_CATEGORIES = ("leak", "not_warm")
DRAFT_NAMESPACE = uuid.UUID("6c1b0f52-8d3e-4f0a-9a57-3f7e2c1d9b44")  # draft work-order ids


class RetryableError(RuntimeError):
    """The job failed for a reason that may pass (audio not uploaded yet, a database hiccup)."""


def backoff(settings: Settings, attempts: int) -> timedelta:
    """Wait before the next try: STEWARD_SPEECH_RETRY_BACKOFF_S, doubled after each failure."""
    return timedelta(seconds=settings.speech_retry_backoff_s * 2 ** max(attempts - 1, 0))


def claim(engine: Engine, transcript_id: uuid.UUID, *, takeover: bool = False) -> bool:
    """Mark the transcript running (one more attempt); False if another worker has it or it is finished.

    `takeover` lets a procrastinate job take a `running` row: procrastinate only hands a job to a second
    worker after the first one stopped sending heartbeats.
    """
    now = utcnow()
    running = col(Transcript.status) == TranscriptState.running
    if not takeover:
        running = running & (col(Transcript.lease_until) < now)
    stmt = (update(Transcript)
            .where(col(Transcript.id) == transcript_id,
                   or_(col(Transcript.status) == TranscriptState.queued, running))
            .values(status=TranscriptState.running, attempts=Transcript.attempts + 1, lease_until=now + LEASE,
                    updated_at=now))
    with engine.begin() as conn:
        return conn.execute(stmt).rowcount == 1


def next_due(engine: Engine) -> uuid.UUID | None:
    """The transcript the embedded queue should take next, if any."""
    now = utcnow()
    with Session(engine) as session:
        return session.exec(
            select(Transcript.id).where(or_(
                (col(Transcript.status) == TranscriptState.queued) & (col(Transcript.next_attempt_at) <= now),
                (col(Transcript.status) == TranscriptState.running) & (col(Transcript.lease_until) < now),
            )).order_by(col(Transcript.next_attempt_at)).limit(1)
        ).first()


def promote_waiting(engine: Engine, settings: Settings) -> list[uuid.UUID]:
    """Queue the transcripts whose audio blob has arrived since their note did."""
    promoted = []
    with Session(engine) as session:
        rows = session.exec(select(Transcript, Note).join(Note, col(Note.id) == Transcript.id)
                            .where(col(Transcript.status) == TranscriptState.waiting_audio).limit(500)).all()
        stored = audio_stored(settings, (note.audio_sha256 for _, note in rows))
        for transcript, note in rows:
            if note.audio_sha256 in stored:
                transcript.status = TranscriptState.queued
                transcript.next_attempt_at = utcnow()
                promoted.append(transcript.id)
        session.commit()
    return promoted


def run(engine: Engine, settings: Settings, transcript_id: uuid.UUID, *, pipeline: Any = None,
        final_attempt: bool | None = None) -> TranscriptState:
    """Transcribe a claimed transcript and record the outcome; the state it ends in.

    Undecodable audio fails at once (retrying cannot help). Other errors are retried with backoff
    until STEWARD_SPEECH_MAX_ATTEMPTS; `final_attempt` overrides that count (procrastinate keeps its own).
    """
    from speech.pipeline import shared_pipeline

    with Session(engine) as session:
        transcript = session.get(Transcript, transcript_id)
        note = session.get(Note, transcript_id)
        if transcript is None or note is None:
            return TranscriptState.failed
        sha256, attempts = note.audio_sha256, transcript.attempts
    where = "recording"
    try:
        # With the S3 store the file is a temporary download, kept only while it is decoded.
        with audio_file(settings, sha256) as path:
            if path is None:
                raise RetryableError(f"the audio blob {sha256} has not been uploaded")
            where = str(path)
            audio = decode_audio(path)
        result = (pipeline or shared_pipeline(settings)).run(audio)
    except AudioDecodeError as exc:
        return _fail(engine, transcript_id, f"undecodable audio: {exc}".replace(where, "recording"))
    except Exception as exc:
        log.exception("transcription of %s failed (attempt %d)", transcript_id, attempts)
        last = attempts >= settings.speech_max_attempts if final_attempt is None else final_attempt
        reason = f"{type(exc).__name__}: {exc}"
        if last:
            return _fail(engine, transcript_id, f"gave up after {attempts} attempts: {reason}")
        _retry_later(engine, settings, transcript_id, attempts, reason)
        raise
    _complete(engine, settings, transcript_id, result)
    return TranscriptState.transcribed


def _fail(engine: Engine, transcript_id: uuid.UUID, reason: str) -> TranscriptState:
    with Session(engine) as session:
        transcript = session.get(Transcript, transcript_id)
        note = session.get(Note, transcript_id)
        if transcript is not None:
            transcript.status = TranscriptState.failed
            transcript.failure_reason = reason[:2000]
            transcript.lease_until = None
            transcript.updated_at = utcnow()
        if note is not None:
            note.transcript_status = TranscriptStatus.failed
        session.commit()
    log.warning("transcript %s failed: %s", transcript_id, reason)
    return TranscriptState.failed


def _retry_later(engine: Engine, settings: Settings, transcript_id: uuid.UUID, attempts: int, reason: str) -> None:
    with Session(engine) as session:
        transcript = session.get(Transcript, transcript_id)
        if transcript is not None:
            transcript.status = TranscriptState.queued
            transcript.failure_reason = reason[:2000]
            transcript.next_attempt_at = utcnow() + backoff(settings, attempts)
            transcript.lease_until = None
            transcript.updated_at = utcnow()
            session.commit()


def _complete(engine: Engine, settings: Settings, transcript_id: uuid.UUID, result: Any) -> None:
    segments = [{"start": round(s.start, 2), "end": round(s.end, 2), "text": s.text,
                 "avg_logprob": round(s.avg_logprob, 4), "no_speech_prob": round(s.no_speech_prob, 4)}
                for s in result.segments]
    categories = categorize(result.text, load_glossary(settings.speech_glossary))
    now = utcnow()
    with Session(engine) as session:
        transcript = session.get(Transcript, transcript_id)
        note = session.get(Note, transcript_id)
        if transcript is None or note is None:
            return
        # The draft work order commits first, under an id derived from the recording: a worker that dies
        # before the transcript below is written leaves the job to be retried, and the retry finds the draft
        # instead of opening a second one (or losing it, had the transcript been committed first).
        draft_id = transcript.draft_work_order_id
        if settings.speech_draft_work_orders and note.kind == NoteKind.call_recording:
            draft_id = _open_draft_work_order(session, settings, note, categories, result.text) or draft_id
        transcript.sqlmodel_update({
            "status": TranscriptState.transcribed, "failure_reason": None, "lease_until": None,
            "engine": result.engine, "model": result.model, "language": result.language,
            "duration_s": result.duration, "text": result.text, "segments": segments,
            "categories": "," + ",".join(categories) + ",", "transcribed_at": now, "updated_at": now,
            "draft_work_order_id": draft_id})
        # The note's copy travels to handhelds through sync: stewards' devices get it masked.
        note.transcript_status = TranscriptStatus.done
        note.transcript_text = redact_text(result.text)
        note.transcript_language = result.language
        session.commit()


def draft_work_order_id(note_id: uuid.UUID) -> uuid.UUID:
    """The id of the draft work order a call may open: one per recording, whatever the number of tries."""
    return uuid.uuid5(DRAFT_NAMESPACE, str(note_id))


def _open_draft_work_order(session: Session, settings: Settings, note: Note, categories: list[str],
                           text: str) -> uuid.UUID | None:
    """A call about a leak or a cold home opens a work order (status new) for its household; its id."""
    from api.users.models import User
    from api.work_orders import service as work_orders
    from api.work_orders.models import Category, Source, WorkOrder, WorkOrderCreate

    category = next((c for c in categories if c in DRAFT_CATEGORIES), None)
    if category is None or note.household_id is None or note.work_order_id is not None:
        return None
    order_id = draft_work_order_id(note.id)
    if session.get(WorkOrder, order_id) is not None:  # opened by an earlier try of this job
        return order_id
    call = session.get(Call, note.id)
    author = session.get(User, call.created_by_id) if call and call.created_by_id else None
    if author is None:
        return None
    data = WorkOrderCreate(id=order_id, household_id=note.household_id, source=Source.hotline,
                           category=Category(category), description=f"[来电转写草稿] {redact_text(text)}"[:4000],
                           caller_phone=call.caller_phone[:20] if call else None)
    work_orders.create(session=session, settings=settings, user=author, data=data)
    return order_id
