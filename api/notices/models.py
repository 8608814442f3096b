"""Pre-season notices to residents: water filling, radiator bleeding, the service number."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import field_validator, model_validator
from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from api.db import Versioned, new_id, ts_field
from api.proactive.models import DeliveryState
from api.schemas import HOTLINE_PATTERN, RequestBody, UtcDatetime, strip_text

DEFAULT_BLEED_INSTRUCTIONS = ("注水期间请家中留人，发现暖气片或管道漏水请立即关闭阀门并拨打服务热线；"
                              "注水后如暖气片上热下凉，请用排气钥匙逆时针拧开排气阀，见水后关闭。")


class NoticeTarget(StrEnum):
    building = "building"
    station = "station"


class NoticeBase(SQLModel):
    target: NoticeTarget
    building_id: uuid.UUID | None = None
    station_id: uuid.UUID | None = None
    title: str = Field(default="供暖季前注水通知", min_length=1, max_length=100)
    water_fill_start: UtcDatetime
    water_fill_end: UtcDatetime
    bleed_instructions: str = Field(default=DEFAULT_BLEED_INSTRUCTIONS, max_length=500)
    service_phone: str | None = Field(default=None, max_length=20, description="Default: settings.")


class Notice(Versioned, NoticeBase, table=True):
    __tablename__ = "notices"

    building_id: uuid.UUID | None = Field(default=None, foreign_key="buildings.id", index=True,
                                          ondelete="CASCADE")
    station_id: uuid.UUID | None = Field(default=None, foreign_key="stations.id", index=True,
                                         ondelete="CASCADE")
    water_fill_start: datetime = ts_field()
    water_fill_end: datetime = ts_field()
    service_phone: str = Field(max_length=20)
    created_by_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    sent_at: datetime | None = ts_field(nullable=True)
    sent_count: int = 0


class NoticeDelivery(DeliveryState, table=True):
    """One household's copy of a notice, like a campaign delivery: the unique key and the claim before each
    send (`api.notices.deliveries`) are what stop a second SMS; failures keep their reason and are retried.
    Not synced to the handhelds."""

    __tablename__ = "notice_deliveries"
    __table_args__ = (UniqueConstraint("notice_id", "household_id", name="uq_notice_deliveries_notice_household"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    notice_id: uuid.UUID = Field(foreign_key="notices.id", index=True, ondelete="CASCADE")
    household_id: uuid.UUID = Field(foreign_key="households.id", index=True, ondelete="CASCADE")
    created_at: datetime = ts_field(default_now=True)


class NoticeDeliveryPublic(DeliveryState):
    id: uuid.UUID
    notice_id: uuid.UUID
    household_id: uuid.UUID


class NoticeDeliveriesPublic(SQLModel):
    data: list[NoticeDeliveryPublic]
    count: int


FILL_WINDOW_MAX = timedelta(days=60)  # the longest filling one notice announces
FILL_LEAD_MAX = timedelta(days=300)  # how far ahead a filling may be announced: its SMS gives no year


class NoticeCreate(NoticeBase, RequestBody):
    id: uuid.UUID | None = None
    # Into every SMS: a blank title or a hotline of spaces or words ("请拨打供暖服务热线 。") was accepted.
    service_phone: str | None = Field(default=None, max_length=20, description="Default: settings.",
                                      schema_extra={"pattern": HOTLINE_PATTERN})
    # Blank instructions (spaces, zero-width characters) went into every resident's SMS; leave the field out
    # for the default text.
    bleed_instructions: str = Field(default=DEFAULT_BLEED_INSTRUCTIONS, min_length=1, max_length=500)

    _strip = field_validator("title", "service_phone", "bleed_instructions", mode="before")(strip_text)

    @model_validator(mode="after")
    def _check(self) -> NoticeCreate:
        if (self.target == NoticeTarget.building) != (self.building_id is not None) or (
            self.target == NoticeTarget.station
        ) != (self.station_id is not None):
            raise ValueError("give building_id for target=building, or station_id for target=station")
        if self.water_fill_end <= self.water_fill_start:
            raise ValueError("water_fill_end must be after water_fill_start")
        if not (self.water_fill_start.year >= 2000 and self.water_fill_end.year <= 2100):
            raise ValueError("water filling must be scheduled between the years 2000 and 2100")
        if self.water_fill_end - self.water_fill_start > FILL_WINDOW_MAX:
            # The SMS gives the window's dates without a year; one that began years ago read as this autumn.
            raise ValueError(f"a water filling lasts at most {FILL_WINDOW_MAX.days} days")
        return self


class NoticePublic(NoticeBase):
    id: uuid.UUID
    version: int
    service_phone: str
    sent_at: datetime | None
    sent_count: int
    created_at: datetime


class NoticesPublic(SQLModel):
    data: list[NoticePublic]
    count: int


class NoticeMessage(SQLModel):
    household_id: uuid.UUID
    phone: str | None
    text: str


class NoticeMessages(SQLModel):
    notice_id: uuid.UUID
    data: list[NoticeMessage]
    count: int
