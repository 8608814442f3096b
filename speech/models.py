"""Transcripts of recordings (voice notes and hotline calls), their edit history, and call metadata.

Every recording is a `notes` row (a call is a note of kind `call_recording`), so a transcript shares its
note's id. The transcript row is also the durable job: its status says what the worker must do.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import StrictInt, field_validator
from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from api.db import new_id, ts_field
from api.fieldwork.models import plausible_field_time
from api.schemas import RequestBody, UtcDatetime, strip_text


class TranscriptState(StrEnum):
    waiting_audio = "waiting_audio"  # the note arrived before its audio blob
    queued = "queued"
    running = "running"
    failed = "failed"
    transcribed = "transcribed"
    approved = "approved"


class Transcript(SQLModel, table=True):
    __tablename__ = "transcripts"

    @property
    def tries(self) -> int:
        """Attempts since the last retry (what the budget and the API count)."""
        return self.attempts - self.retry_base

    id: uuid.UUID = Field(primary_key=True, foreign_key="notes.id", ondelete="CASCADE")
    status: TranscriptState = Field(default=TranscriptState.queued, index=True)
    # Claims ever made: the number an outcome is written against, so it only grows (a supervisor's retry reset
    # it, and a worker presumed dead then matched the new run's first attempt and wrote over it). The budget
    # of attempts counts those after the last retry: `attempts - retry_base`.
    attempts: int = 0
    retry_base: int = 0
    next_attempt_at: datetime = ts_field(default_now=True, index=True)
    lease_until: datetime | None = ts_field(nullable=True)
    failure_reason: str | None = Field(default=None, max_length=2000)
    engine: str | None = Field(default=None, max_length=32)
    model: str | None = Field(default=None, max_length=200)
    language: str | None = Field(default=None, max_length=10)
    duration_s: float | None = None
    # The original text (never masked): joined segment texts, kept in step with `segments` for search.
    text: str = ""
    segments: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Work-order categories, comma-delimited with a leading and trailing comma (",leak,not_warm,").
    categories: str = Field(default="", max_length=200)
    revision: int = 0
    draft_work_order_id: uuid.UUID | None = Field(default=None, foreign_key="work_orders.id", ondelete="SET NULL")
    approved_by_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    approved_at: datetime | None = ts_field(nullable=True, index=True)  # the dashboard's counts of the day
    transcribed_at: datetime | None = ts_field(nullable=True, index=True)
    created_at: datetime = ts_field(default_now=True)
    updated_at: datetime = ts_field(default_now=True)

    @property
    def category_list(self) -> list[str]:
        return [c for c in self.categories.split(",") if c]


class TranscriptRevision(SQLModel, table=True):
    """One supervisor edit: which segments changed, from what to what, by whom, when."""

    __tablename__ = "transcript_revisions"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    transcript_id: uuid.UUID = Field(foreign_key="transcripts.id", index=True, ondelete="CASCADE")
    revision: int
    user_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    at: datetime = ts_field(default_now=True)
    changes: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class Call(SQLModel, table=True):
    """What the telephony system knows about a hotline call; its recording is the note with the same id."""

    __tablename__ = "calls"

    id: uuid.UUID = Field(primary_key=True, foreign_key="notes.id", ondelete="CASCADE")
    caller_phone: str = Field(max_length=32)
    agent: str = Field(max_length=64)
    started_at: datetime = ts_field()
    created_by_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")


# --- API schemas --------------------------------------------------------------------------------------


class CallMetadata(RequestBody):
    """The telephony system's facts about a call. A field it does not know is refused (a misspelt
    `houshold_id` stored the call without its household), and so is a start time in the future (it would head
    every newest-first list), as for visits and readings."""

    caller_phone: str = Field(min_length=3, max_length=32)
    started_at: UtcDatetime  # refused at validation when it has no UTC equivalent, not at commit
    agent: str = Field(min_length=1, max_length=64)
    household_id: uuid.UUID | None = None
    work_order_id: uuid.UUID | None = None

    _plausible_time = field_validator("started_at")(plausible_field_time)
    # A number or an agent of spaces passed `min_length` and was stored blank.
    _strip = field_validator("caller_phone", "agent", mode="before")(strip_text)


class CallQueued(SQLModel):
    id: uuid.UUID
    status: TranscriptState


class SegmentPublic(SQLModel):
    index: int
    start: float
    end: float
    text: str


class TranscriptPublic(SQLModel):
    id: uuid.UUID
    status: TranscriptState
    kind: str
    attempts: int
    failure_reason: str | None
    engine: str | None
    model: str | None
    language: str | None
    duration_s: float | None
    text: str
    categories: list[str]
    revision: int
    owner_id: uuid.UUID
    household_id: uuid.UUID | None
    work_order_id: uuid.UUID | None
    draft_work_order_id: uuid.UUID | None
    recorded_at: datetime
    caller_phone: str | None = None
    agent: str | None = None
    approved_by_id: uuid.UUID | None
    approved_at: datetime | None
    transcribed_at: datetime | None
    redacted: bool


class TranscriptDetail(TranscriptPublic):
    segments: list[SegmentPublic]


class TranscriptsPublic(SQLModel):
    data: list[TranscriptPublic]
    count: int


class SegmentEdit(RequestBody):  # a `start` or `end` beside the text was dropped and the PATCH answered 200
    index: StrictInt = Field(ge=0)  # not `true` (segment 1) nor "1"
    text: str = Field(max_length=2000)


class TranscriptUpdate(RequestBody):
    segments: list[SegmentEdit] = Field(min_length=1, max_length=2000)
    base_revision: StrictInt | None = Field(default=None, description="The revision edited; 409 if it moved on.")


class TranscriptApprove(RequestBody):
    base_revision: StrictInt | None = Field(default=None, description="The revision reviewed; 409 if it moved on "
                                                                "(another supervisor corrected it meanwhile).")


class RevisionPublic(SQLModel):
    revision: int
    user_id: uuid.UUID | None
    at: datetime
    changes: list[dict[str, Any]]
