"""Voice notes and call recordings: audio by sha256, transcript written by the server."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import StrictFloat, field_validator
from sqlmodel import Field, SQLModel

from api.db import Versioned, ts_field
from api.fieldwork.models import plausible_field_time
from api.schemas import SHA256_PATTERN, RequestBody, UtcDatetime


class NoteKind(StrEnum):
    voice_note = "voice_note"
    call_recording = "call_recording"


class TranscriptStatus(StrEnum):
    none = "none"
    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"


class NoteBase(SQLModel):
    kind: NoteKind = NoteKind.voice_note
    work_order_id: uuid.UUID | None = None
    visit_id: uuid.UUID | None = None
    household_id: uuid.UUID | None = None
    audio_sha256: str = Field(max_length=64, schema_extra={"pattern": SHA256_PATTERN})
    duration_s: StrictFloat = Field(ge=0, le=6 * 3600)
    recorded_at: UtcDatetime


class Note(Versioned, NoteBase, table=True):
    __tablename__ = "notes"

    owner_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="RESTRICT")
    work_order_id: uuid.UUID | None = Field(default=None, foreign_key="work_orders.id", index=True,
                                            ondelete="SET NULL")
    visit_id: uuid.UUID | None = Field(default=None, foreign_key="visits.id", index=True,
                                       ondelete="SET NULL")  # a visit's delete finds its notes
    household_id: uuid.UUID | None = Field(default=None, foreign_key="households.id", index=True,
                                           ondelete="SET NULL")
    audio_sha256: str = Field(max_length=64, index=True)
    recorded_at: datetime = ts_field(index=True)  # the transcripts' lists are sorted by it
    # Written by the server (the transcription worker), never by clients.
    transcript_status: TranscriptStatus = TranscriptStatus.none
    transcript_text: str | None = None
    transcript_language: str | None = Field(default=None, max_length=10)


def not_a_call(kind: NoteKind | None) -> NoteKind | None:
    """Clients write voice notes only. A call recording is made by `POST /calls` (the office, with its `calls`
    row) or by a video call: one a steward posted or pushed was transcribed as a resident's call, could open a
    hotline draft order and counted as a complaint towards the proactive clusters."""
    if kind == NoteKind.call_recording:
        raise ValueError("call recordings come from POST /calls or a video call; a client writes voice_note")
    return kind


class NoteCreate(NoteBase, RequestBody):
    id: uuid.UUID | None = None

    _kind = field_validator("kind")(not_a_call)

    # As for visits and readings: a handheld's clock set years ahead put its note at the top of every
    # newest-first list (notes, transcripts) until that year came.
    _plausible_time = field_validator("recorded_at")(plausible_field_time)


class NotePublic(NoteBase):
    id: uuid.UUID
    version: int
    owner_id: uuid.UUID
    transcript_status: TranscriptStatus
    transcript_text: str | None
    transcript_language: str | None
    created_at: datetime
    updated_at: datetime


class NotesPublic(SQLModel):
    data: list[NotePublic]
    count: int
