"""Transcripts as records: calls in, notes queued, listing, search, correction with history, approval."""

from __future__ import annotations

import io
import uuid
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, event
from sqlmodel import Session, col, select

from api import access
from api.db import utcnow
from api.deps import Page
from api.errors import Conflict, InvalidTransition, NotFound, Unprocessable
from api.network.service import get_household
from api.notes.models import Note, NoteKind, TranscriptStatus
from api.notes.service import note_clause
from api.settings import Settings
from api.users.models import User
from api.work_orders import service as work_orders
from speech.glossary import categorize, load_glossary
from speech.models import (
    Call,
    CallMetadata,
    SegmentPublic,
    Transcript,
    TranscriptDetail,
    TranscriptPublic,
    TranscriptRevision,
    TranscriptState,
    TranscriptUpdate,
)
from speech.pipeline import join_segments
from speech.redact import can_view_pii, redact_text
from speech.search import search_clause
from speech.storage import probe_duration, store_audio


@event.listens_for(Session, "before_flush")
def _queue_new_recordings(session: Session, _flush_context: Any, _instances: Any) -> None:
    """Every new note gets its transcript job in the same transaction (the note may arrive through sync
    before its audio: the job waits for the blob)."""
    pending = {o.id for o in session.new if isinstance(o, Transcript)}
    for obj in list(session.new):
        if isinstance(obj, Note) and obj.id not in pending:
            session.add(Transcript(id=obj.id, status=TranscriptState.waiting_audio))


def create_call(*, session: Session, settings: Settings, user: User, metadata: CallMetadata,
                audio: bytes) -> Transcript:
    """Store a hotline recording and queue its transcription."""
    if not audio:
        raise Unprocessable("The audio file is empty.", code="empty_audio")
    if metadata.household_id is not None:
        get_household(session=session, user=user, id=metadata.household_id)
    if metadata.work_order_id is not None:
        order = work_orders.get(session=session, user=user, id=metadata.work_order_id)
        if metadata.household_id is not None and order.household_id != metadata.household_id:
            raise Unprocessable("The work order belongs to another household.", code="household_mismatch")
    sha256 = store_audio(settings, audio)
    note = Note(kind=NoteKind.call_recording, owner_id=user.id, household_id=metadata.household_id,
                work_order_id=metadata.work_order_id, audio_sha256=sha256,
                duration_s=min(probe_duration(io.BytesIO(audio)), 6 * 3600.0),
                recorded_at=metadata.started_at, transcript_status=TranscriptStatus.pending)
    session.add(note)
    session.flush()  # the hook adds the transcript
    session.add(Call(id=note.id, caller_phone=metadata.caller_phone, agent=metadata.agent,
                     started_at=metadata.started_at, created_by_id=user.id))
    transcript = session.get(Transcript, note.id)
    assert transcript is not None
    transcript.status = TranscriptState.queued
    session.commit()
    return transcript


# --- reading --------------------------------------------------------------------------------------------


def _public(transcript: Transcript, note: Note, call: Call | None, user: User) -> dict[str, Any]:
    pii = can_view_pii(user)

    def show(text: str) -> str:
        return text if pii else redact_text(text)

    return {
        "id": transcript.id, "status": transcript.status, "kind": note.kind.value, "attempts": transcript.attempts,
        "failure_reason": transcript.failure_reason, "engine": transcript.engine, "model": transcript.model,
        "language": transcript.language, "duration_s": transcript.duration_s, "text": show(transcript.text),
        "categories": transcript.category_list, "revision": transcript.revision, "owner_id": note.owner_id,
        "household_id": note.household_id, "work_order_id": note.work_order_id,
        "draft_work_order_id": transcript.draft_work_order_id, "recorded_at": note.recorded_at,
        "caller_phone": (call.caller_phone if pii else redact_text(call.caller_phone)) if call else None,
        "agent": call.agent if call else None, "approved_by_id": transcript.approved_by_id,
        "approved_at": transcript.approved_at, "transcribed_at": transcript.transcribed_at, "redacted": not pii,
    }


def present(session: Session, user: User, transcript: Transcript, *, detail: bool = False) -> Any:
    """The transcript as this user may read it (numbers masked without the view_pii right)."""
    note = session.get(Note, transcript.id)
    assert note is not None
    data = _public(transcript, note, session.get(Call, transcript.id), user)
    if not detail:
        return TranscriptPublic(**data)
    show = (lambda t: t) if can_view_pii(user) else redact_text
    segments = [SegmentPublic(index=i, start=s["start"], end=s["end"], text=show(s["text"]))
                for i, s in enumerate(transcript.segments)]
    return TranscriptDetail(**data, segments=segments)


def get(*, session: Session, user: User, id: uuid.UUID) -> Transcript:
    """A transcript whose recording the user may see."""
    row = session.exec(select(Transcript).join(Note, col(Note.id) == Transcript.id)
                       .where(col(Transcript.id) == id, note_clause(user))).first()
    if row is None:
        raise NotFound(f"No transcript with id {id} (or it is outside your grid).")
    return row


def list_transcripts(*, session: Session, settings: Settings, user: User, page: Page,
                     status: TranscriptState | None = None, category: str | None = None,
                     date_from: date | None = None, date_to: date | None = None,
                     steward_id: uuid.UUID | None = None, work_order_id: uuid.UUID | None = None,
                     q: str | None = None) -> tuple[list[Transcript], int]:
    """Transcripts the user may see, newest recording first, filtered."""
    stmt = select(Transcript).join(Note, col(Note.id) == Transcript.id).where(note_clause(user))
    if status is not None:
        stmt = stmt.where(col(Transcript.status) == status)
    if category:
        stmt = stmt.where(col(Transcript.categories).contains(f",{category},"))
    zone = ZoneInfo(settings.timezone)  # a date is a local calendar day
    if date_from is not None:
        stmt = stmt.where(col(Note.recorded_at) >= datetime.combine(date_from, time.min, zone))
    if date_to is not None:
        stmt = stmt.where(col(Note.recorded_at) < datetime.combine(date_to + timedelta(days=1), time.min, zone))
    if steward_id is not None:
        stmt = stmt.where(col(Note.owner_id) == steward_id)
    if work_order_id is not None:
        stmt = stmt.where(or_work_order(work_order_id))
    if q and q.strip():
        bind = session.get_bind()
        assert isinstance(bind, Engine)
        stmt = stmt.where(search_clause(q, bind))
    return access.paged(session, stmt, page, col(Note.recorded_at).desc(), col(Transcript.id))


def or_work_order(work_order_id: uuid.UUID) -> Any:
    """Recordings linked to the work order, or that opened it."""
    return (col(Note.work_order_id) == work_order_id) | (col(Transcript.draft_work_order_id) == work_order_id)


def revisions(*, session: Session, transcript: Transcript) -> list[TranscriptRevision]:
    """The edit history, oldest first."""
    return list(session.exec(select(TranscriptRevision).where(TranscriptRevision.transcript_id == transcript.id)
                             .order_by(col(TranscriptRevision.revision))).all())


# --- review ---------------------------------------------------------------------------------------------


def update(*, session: Session, settings: Settings, user: User, transcript: Transcript,
           data: TranscriptUpdate) -> Transcript:
    """Correct segment texts; the edit is kept as a revision (who, when, before and after)."""
    if transcript.status != TranscriptState.transcribed:
        raise InvalidTransition(f"Only a transcribed, not yet approved transcript can be corrected (it is "
                                f"{transcript.status.value}).")
    if data.base_revision is not None and data.base_revision != transcript.revision:
        raise Conflict(f"The transcript is at revision {transcript.revision}, not {data.base_revision}; reload it "
                       "and apply your corrections again.", code="stale_revision")
    segments = [dict(s) for s in transcript.segments]
    changes = []
    for edit in data.segments:
        if edit.index >= len(segments):
            raise Unprocessable(f"Segment {edit.index} does not exist (the transcript has {len(segments)}).",
                                code="no_such_segment")
        before = segments[edit.index]["text"]
        after = edit.text.strip()
        if after != before:
            segments[edit.index]["text"] = after
            changes.append({"index": edit.index, "before": before, "after": after})
    if not changes:
        return transcript
    now = utcnow()
    transcript.revision += 1
    transcript.segments = segments  # a new list: JSON columns do not see in-place changes
    transcript.text = join_segments([s["text"] for s in segments], transcript.language or "zh")
    transcript.categories = "," + ",".join(categorize(transcript.text, load_glossary(settings.speech_glossary))) + ","
    transcript.updated_at = now
    session.add(TranscriptRevision(transcript_id=transcript.id, revision=transcript.revision, user_id=user.id,
                                   at=now, changes=changes))
    _sync_note_text(session, transcript)
    session.commit()
    return transcript


def approve(*, session: Session, user: User, transcript: Transcript) -> Transcript:
    """Mark the transcript reviewed; it can no longer be edited."""
    if transcript.status != TranscriptState.transcribed:
        raise InvalidTransition(f"Only a transcribed transcript can be approved (it is {transcript.status.value}).")
    transcript.status = TranscriptState.approved
    transcript.approved_by_id = user.id
    transcript.approved_at = transcript.updated_at = utcnow()
    session.commit()
    return transcript


def _sync_note_text(session: Session, transcript: Transcript) -> None:
    note = session.get(Note, transcript.id)
    if note is not None:
        note.transcript_text = redact_text(transcript.text)
