"""What stewards record on site: visits to households and indoor temperature readings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated

from annotated_types import MaxLen
from pydantic import StrictFloat, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError
from sqlalchemy import JSON, Index, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from api.db import Versioned, ts_field, utcnow
from api.schemas import RequestBody, Sha256, UtcDatetime, clean_label, not_null

# How far ahead of the server's clock a field time may be: a handheld's clock or time zone set wrong by a few
# hours is tolerated; a reading dated next year (it would head every newest-first list for a year) is not.
FUTURE_TOLERANCE = timedelta(days=1)
# The earliest field time taken: a handheld whose clock battery ran flat restarts in 1970 (or 2000 on some),
# and a reading dated then would sink to the bottom of every list and history chart. Nothing this service
# records in the field (visits, readings, notes, calls) happened before it.
EARLIEST_FIELD_TIME = datetime(2001, 1, 1, tzinfo=UTC)
# The longest a visit can last (left_at - arrived_at): longer is a wrong date, not a visit.
MAX_VISIT = timedelta(hours=24)
# Photos one visit may name (blobs by sha256): a radiator, its valves, the meter, the damage, before and after.
MAX_PHOTOS = 20
# On PostgreSQL the photo list is jsonb with a GIN index, so that `steward blobs sweep` finds the visits
# naming a batch of hashes with `?|` instead of reading every visit (sync/blobs/sweep.py).
PhotoList = JSON().with_variant(JSONB(), "postgresql")
PhotoHashes = Annotated[list[Sha256], MaxLen(MAX_PHOTOS)]  # `maxItems` in OpenAPI (Field's max_length said maxLength)


def plausible_field_time(value: datetime | None) -> datetime | None:
    """Refuse a field time more than `FUTURE_TOLERANCE` after now, or before `EARLIEST_FIELD_TIME` (a reset
    clock); shared by REST and sync push."""
    if value is None:
        return value
    if value > utcnow() + FUTURE_TOLERANCE:
        raise PydanticCustomError("invalid_time", "{value} is in the future; record the time it happened "
                                  "(check the device's clock and time zone)", {"value": value.isoformat()})
    if value < EARLIEST_FIELD_TIME:
        raise PydanticCustomError("invalid_time", "{value} is before {earliest}: the device's clock was probably "
                                  "reset; set it and record the time it happened",
                                  {"value": value.isoformat(), "earliest": EARLIEST_FIELD_TIME.date().isoformat()})
    return value


def check_visit_length(arrived_at: datetime, left_at: datetime | None) -> str | None:
    """Why a visit's interval is wrong (left before arriving, or longer than `MAX_VISIT`); None if it is fine."""
    if left_at is None:
        return None
    if left_at < arrived_at:
        return "left_at must not be before arrived_at."
    if left_at - arrived_at > MAX_VISIT:
        return (f"A visit lasts at most {MAX_VISIT.total_seconds() / 3600:g} hours; check the dates of "
                "arrived_at and left_at.")
    return None


def distinct_photos(value: list[str] | None) -> list[str] | None:
    """A visit names each photo once (the list is the device's order of taking them)."""
    if value is not None and len(set(value)) != len(value):
        raise PydanticCustomError("duplicate_photo", "a photo is named more than once")
    return value


class VisitResult(StrEnum):
    resolved = "resolved"
    follow_up = "follow_up"
    no_access = "no_access"  # nobody home or resident refused entry
    referred = "referred"  # needs the station or a pipe crew


class VisitBase(SQLModel):
    household_id: uuid.UUID
    work_order_id: uuid.UUID | None = None
    arrived_at: UtcDatetime
    left_at: UtcDatetime | None = None
    indoor_temp_c: StrictFloat | None = Field(default=None, ge=-30, le=50)  # not `true` (1.0)
    actions: str = Field(default="", max_length=4000, description="What was done: bled radiators, ...")
    result: VisitResult | None = None
    photos: PhotoHashes = Field(default_factory=list,
                                 description="Photos taken on the visit: blob hashes (PUT /api/v1/blobs/{sha256}).")
    signature_sha256: Sha256 | None = Field(default=None, description="The resident's signature image, a blob hash.")

    _distinct_photos = field_validator("photos")(distinct_photos)


class Visit(Versioned, VisitBase, table=True):
    __tablename__ = "visits"
    __table_args__ = (Index("ix_visits_photos", "photos", postgresql_using="gin").ddl_if(dialect="postgresql"),)

    household_id: uuid.UUID = Field(foreign_key="households.id", ondelete="RESTRICT")  # indexed with id (sync)
    work_order_id: uuid.UUID | None = Field(default=None, foreign_key="work_orders.id", index=True,
                                            ondelete="SET NULL")
    steward_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="RESTRICT")
    arrived_at: datetime = ts_field()
    left_at: datetime | None = ts_field(nullable=True)
    photos: list[str] = Field(default_factory=list, sa_type=PhotoList,
                              sa_column_kwargs={"nullable": False, "server_default": "[]"})
    signature_sha256: str | None = Field(default=None, max_length=64, index=True)


class VisitCreate(VisitBase, RequestBody):
    id: uuid.UUID | None = None

    _plausible_time = field_validator("arrived_at", "left_at")(plausible_field_time)

    @model_validator(mode="after")
    def _check_length(self) -> VisitCreate:
        # Left before arriving is answered by the services (`invalid_interval`); only the length here.
        if self.left_at is not None and self.left_at - self.arrived_at > MAX_VISIT:
            raise PydanticCustomError("invalid_interval", str(check_visit_length(self.arrived_at, self.left_at)))
        return self


class VisitUpdate(RequestBody):
    left_at: UtcDatetime | None = None
    indoor_temp_c: StrictFloat | None = Field(default=None, ge=-30, le=50)  # not `true` (1.0)
    # `SkipJsonSchema[None]`: may be left out, never null (`not_null`), and OpenAPI says so: a generated client
    # sent `photos: null` to clear the list, which the schema allowed and the server refused.
    actions: Annotated[str, MaxLen(4000)] | SkipJsonSchema[None] = None
    result: VisitResult | None = None
    photos: PhotoHashes | SkipJsonSchema[None] = Field(default=None,
                                        description="The whole list: photos added or removed since.")
    signature_sha256: Sha256 | None = None

    _not_null = field_validator("actions", "photos")(not_null)
    _distinct_photos = field_validator("photos")(distinct_photos)
    _plausible_time = field_validator("left_at")(plausible_field_time)


class VisitPublic(VisitBase):
    id: uuid.UUID
    version: int
    steward_id: uuid.UUID
    created_at: datetime
    updated_at: datetime


class VisitsPublic(SQLModel):
    data: list[VisitPublic]
    count: int


class ReadingBase(SQLModel):
    household_id: uuid.UUID
    taken_at: UtcDatetime
    room: str = Field(default="living_room", min_length=1, max_length=30)
    temp_c: StrictFloat = Field(ge=-30, le=50)  # a JSON true was stored as 1.0
    visit_id: uuid.UUID | None = None


class Reading(Versioned, ReadingBase, table=True):
    """An indoor temperature reading; append-only (a wrong one is corrected by a newer one)."""

    __tablename__ = "readings"
    # A visit's delete finds its readings (sync rules, and PostgreSQL's ON DELETE SET NULL): without an index
    # both scanned every reading while the push held the change sequence. Most readings have no visit.
    __table_args__ = (Index("ix_readings_visit_id", "visit_id", postgresql_where=text("visit_id IS NOT NULL"),
                            sqlite_where=text("visit_id IS NOT NULL")),)

    household_id: uuid.UUID = Field(foreign_key="households.id", ondelete="RESTRICT")  # indexed with id (sync)
    visit_id: uuid.UUID | None = Field(default=None, foreign_key="visits.id", ondelete="SET NULL")
    taken_by_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    taken_at: datetime = ts_field(index=True)


class ReadingCreate(ReadingBase, RequestBody):
    id: uuid.UUID | None = None

    _plausible_time = field_validator("taken_at")(plausible_field_time)
    _clean = field_validator("room", mode="before")(clean_label)  # a room of spaces then fails min_length


class ReadingPublic(ReadingBase):
    id: uuid.UUID
    version: int
    taken_by_id: uuid.UUID | None
    created_at: datetime


class ReadingsPublic(SQLModel):
    data: list[ReadingPublic]
    count: int
