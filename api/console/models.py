"""Shapes of the console's JSON: who is signed in, the review queue, segment confidence, a work order's
timeline and the dashboard. Nothing here is stored (the conflicts' reviewed mark lives in sync)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlmodel import SQLModel

from api.proactive.models import Summary
from speech.models import TranscriptPublic


class PersonPublic(SQLModel):
    id: uuid.UUID
    username: str
    full_name: str
    role: str


class ConsoleMe(SQLModel):
    """The signed-in user and what the console lets them do; `people` names the users the pages show."""

    user: PersonPublic
    can_review: bool  # supervisors and admins: edit, approve, conflicts, dashboard
    view_pii: bool  # phone and ID numbers unmasked (speech/redact.py)
    refresh_s: float
    timezone: str  # STEWARD_TIMEZONE: the zone the pages show times in, as the date filters count days
    people: list[PersonPublic]


class QueuePage(SQLModel):
    data: list[TranscriptPublic]
    count: int
    pending: int  # transcribed, not yet approved, in the same scope and filters


class SegmentQuality(SQLModel):
    index: int
    avg_logprob: float | None
    no_speech_prob: float | None
    low: bool


class TranscriptQuality(SQLModel):
    low_logprob: float
    high_no_speech: float
    segments: list[SegmentQuality]


class TimelineItem(SQLModel):
    """One thing that happened on a work order; `data` depends on `kind`."""

    at: datetime
    kind: str  # created | assigned | status | visit | reading | note | call | video | snapshot
    actor_id: uuid.UUID | None = None
    data: dict[str, Any]


class ReadingPoint(SQLModel):
    taken_at: datetime
    temp_c: float
    room: str


class Timeline(SQLModel):
    work_order: dict[str, Any]
    household: dict[str, Any]
    items: list[TimelineItem]
    readings: list[ReadingPoint]


class Count(SQLModel):
    key: str
    label: str
    count: int


class Breach(SQLModel):
    id: uuid.UUID
    category: str
    priority: str
    status: str
    sla_due_at: datetime
    station: str


class RoomLine(SQLModel):
    id: uuid.UUID
    work_order_id: uuid.UUID
    created_at: datetime
    expires_at: datetime


class ProactiveLine(SQLModel):
    """One open proactive work order: a complaint cluster (riser, building, station) or a revisit."""

    id: uuid.UUID  # the proactive order
    work_order_id: uuid.UUID  # its work order: the timeline is `#/wo/<work_order_id>`
    kind: str  # riser | building | station | revisit
    place: str  # 燕子山小区3号楼2单元立管, 燕子山小区3号楼, 历下换热站, or the household's address
    station: str
    members: int  # complaints grouped into it (work orders and call transcripts)
    signal_count: int  # complaints in the window when it was opened
    category: str
    priority: str
    status: str
    sla_due_at: datetime
    opened_at: datetime


class ProactivePanel(SQLModel):
    """未诉先办: the proactive service's summary for the caller, and its newest open orders."""

    summary: Summary
    clusters: list[ProactiveLine]  # open cluster orders, widest group first (station, building, riser)
    revisits: list[ProactiveLine]  # open sensitive-household revisits, newest first


class Dashboard(SQLModel):
    at: datetime
    open_total: int
    open_by_category: list[Count]
    open_by_station: list[Count]
    open_by_source: list[Count]
    proactive_open: int
    sla_breached: int
    breaches: list[Breach]
    transcripts_by_status: list[Count]
    pending_review: int
    transcribed_last_hour: int
    transcribed_last_day: int
    approved_last_day: int
    active_rooms: list[RoomLine]
    proactive: ProactivePanel
