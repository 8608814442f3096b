"""What stewards record on site: visits to households and indoor temperature readings."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import field_validator
from sqlmodel import Field, SQLModel

from api.db import Versioned, ts_field
from api.network.models import not_null
from api.schemas import UtcDatetime


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
    indoor_temp_c: float | None = Field(default=None, ge=-30, le=50)
    actions: str = Field(default="", max_length=4000, description="What was done: bled radiators, ...")
    result: VisitResult | None = None


class Visit(Versioned, VisitBase, table=True):
    __tablename__ = "visits"

    household_id: uuid.UUID = Field(foreign_key="households.id", ondelete="RESTRICT")  # indexed with id (sync)
    work_order_id: uuid.UUID | None = Field(default=None, foreign_key="work_orders.id", index=True,
                                            ondelete="SET NULL")
    steward_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="RESTRICT")
    arrived_at: datetime = ts_field()
    left_at: datetime | None = ts_field(nullable=True)


class VisitCreate(VisitBase):
    id: uuid.UUID | None = None


class VisitUpdate(SQLModel):
    left_at: UtcDatetime | None = None
    indoor_temp_c: float | None = Field(default=None, ge=-30, le=50)
    actions: str | None = Field(default=None, max_length=4000)
    result: VisitResult | None = None

    _not_null = field_validator("actions")(not_null)


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
    temp_c: float = Field(ge=-30, le=50)
    visit_id: uuid.UUID | None = None


class Reading(Versioned, ReadingBase, table=True):
    """An indoor temperature reading; append-only (a wrong one is corrected by a newer one)."""

    __tablename__ = "readings"

    household_id: uuid.UUID = Field(foreign_key="households.id", ondelete="RESTRICT")  # indexed with id (sync)
    visit_id: uuid.UUID | None = Field(default=None, foreign_key="visits.id", ondelete="SET NULL")
    taken_by_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    taken_at: datetime = ts_field(index=True)


class ReadingCreate(ReadingBase):
    id: uuid.UUID | None = None


class ReadingPublic(ReadingBase):
    id: uuid.UUID
    version: int
    taken_by_id: uuid.UUID | None
    created_at: datetime


class ReadingsPublic(SQLModel):
    data: list[ReadingPublic]
    count: int
