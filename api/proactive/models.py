"""Tables and schemas of the proactive service.

- `SeasonCalendar`: one station's dates for one heating season (water filling, pressure test, heating).
- `Campaign` / `CampaignDelivery`: a notice sent to every household of a station, one delivery row per
  household (unique), synced to the stewards' handhelds with its status.
- `ProactiveOrder` / `ProactiveMember`: a work order the service opened by itself for a complaint cluster
  (riser, building, station) or a sensitive-household revisit, and the complaints it groups. `open_key`
  is set while the work order is open and unique, so a group never has two open orders.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import field_validator, model_validator
from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from api.db import Versioned, new_id, ts_field
from api.schemas import HOTLINE_PATTERN, RequestBody, UtcDatetime, strip_text

SEASON_PATTERN = r"^(20[0-9]{2})-(20[0-9]{2})$"


class SeasonCalendarBase(SQLModel):
    water_fill_start: UtcDatetime
    water_fill_end: UtcDatetime
    pressure_test_at: UtcDatetime
    heating_start_at: UtcDatetime
    heating_end_at: UtcDatetime


class SeasonCalendar(SQLModel, table=True):
    """A station's calendar for one heating season (e.g. `2026-2027`)."""

    __tablename__ = "season_calendars"
    __table_args__ = (UniqueConstraint("station_id", "season", name="uq_season_calendars_station_season"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    station_id: uuid.UUID = Field(foreign_key="stations.id", index=True, ondelete="CASCADE")
    season: str = Field(max_length=9)
    water_fill_start: datetime = ts_field()
    water_fill_end: datetime = ts_field()
    pressure_test_at: datetime = ts_field()
    heating_start_at: datetime = ts_field(index=True)
    heating_end_at: datetime = ts_field(index=True)
    updated_by_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    created_at: datetime = ts_field(default_now=True)
    updated_at: datetime = ts_field(default_now=True)


CALENDAR_LEAD = timedelta(days=90)  # the longest run from water filling to heating start


class SeasonCalendarPut(SeasonCalendarBase, RequestBody):
    @model_validator(mode="after")
    def _check(self) -> SeasonCalendarPut:
        # The season's steps in the order the network goes through them (the season label is checked by
        # `api.proactive.campaigns.put_calendar`, which knows it and the local time zone).
        if self.water_fill_end <= self.water_fill_start:
            raise ValueError("water_fill_end must be after water_fill_start")
        if self.pressure_test_at < self.water_fill_end:
            raise ValueError("pressure_test_at must not be before water_fill_end (the network is filled first)")
        if self.heating_start_at < self.pressure_test_at:
            raise ValueError("heating_start_at must not be before pressure_test_at (the network is tested first)")
        if self.heating_end_at <= self.heating_start_at:
            raise ValueError("heating_end_at must be after heating_start_at")
        if self.heating_start_at - self.water_fill_start > CALENDAR_LEAD:
            # The heating dates are held to the season (`season_mismatch`); the filling, unbounded, could be
            # years earlier and a campaign announced it as this season's.
            raise ValueError(f"water_fill_start must be at most {CALENDAR_LEAD.days} days before heating_start_at")
        stamps = (self.water_fill_start, self.water_fill_end, self.pressure_test_at, self.heating_start_at,
                  self.heating_end_at)
        if not all(2000 <= ts.year <= 2100 for ts in stamps):
            raise ValueError("season dates must lie between the years 2000 and 2100")
        return self


class SeasonCalendarPublic(SeasonCalendarBase):
    id: uuid.UUID
    station_id: uuid.UUID
    season: str
    updated_at: datetime


class SeasonCalendarsPublic(SQLModel):
    data: list[SeasonCalendarPublic]
    count: int


class CampaignKind(StrEnum):
    water_fill = "water_fill"  # 注水
    pressure_test = "pressure_test"  # 打压试验
    heating_start = "heating_start"  # 开始供暖


class CampaignStatus(StrEnum):
    draft = "draft"  # created, nothing sent
    sending = "sending"  # some deliveries are queued or wait for a retry
    completed = "completed"  # every delivery is sent, skipped or failed for good


class DeliveryStatus(StrEnum):
    queued = "queued"
    sent = "sent"
    failed = "failed"  # retried while attempts remain (`next_attempt_at` set), else final
    # `reason` says why: `no_phone`; `suspended` (报停, heating-start campaigns only); `event_passed` (the filling,
    # test or heating start it announces was over before it could be sent, so it never will be)
    skipped = "skipped"


class CampaignBase(SQLModel):
    station_id: uuid.UUID
    season: str = Field(schema_extra={"pattern": SEASON_PATTERN}, max_length=9, description="e.g. 2026-2027")
    kind: CampaignKind
    title: str | None = Field(default=None, min_length=1, max_length=60, description="Default: by kind.")
    bleed_instructions: str | None = Field(default=None, min_length=1, max_length=300,
                                           description="Default: the standard radiator bleeding text.")
    service_phone: str | None = Field(default=None, min_length=3, max_length=20, description="Default: settings.")


class Campaign(Versioned, table=True):
    """A notice campaign: one station, one season, one kind (unique), its dates copied from the calendar."""

    __tablename__ = "notice_campaigns"
    __table_args__ = (UniqueConstraint("station_id", "season", "kind", name="uq_notice_campaigns_station_season_kind"),)

    station_id: uuid.UUID = Field(foreign_key="stations.id", index=True, ondelete="CASCADE")
    season: str = Field(max_length=9)
    kind: CampaignKind
    title: str = Field(max_length=60)
    bleed_instructions: str = Field(max_length=300)
    service_phone: str = Field(max_length=20)
    event_start: datetime = ts_field()
    event_end: datetime | None = ts_field(nullable=True)
    status: CampaignStatus = Field(default=CampaignStatus.draft, index=True)
    total_count: int = 0
    sent_count: int = 0
    failed_count: int = 0
    skipped_count: int = 0
    pending_count: int = 0
    created_by_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    first_sent_at: datetime | None = ts_field(nullable=True)
    last_run_at: datetime | None = ts_field(nullable=True)
    # A send in progress holds the campaign until then, so two sends never hand out the same delivery.
    sending_until: datetime | None = ts_field(nullable=True)


class CampaignCreate(CampaignBase, RequestBody):
    id: uuid.UUID | None = None
    # As for notices: a title, instructions or hotline of spaces or words went into every resident's SMS.
    service_phone: str | None = Field(default=None, min_length=3, max_length=20, description="Default: settings.",
                                      schema_extra={"pattern": HOTLINE_PATTERN})

    _strip = field_validator("title", "bleed_instructions", "service_phone", mode="before")(strip_text)


class CampaignPublic(SQLModel):
    id: uuid.UUID
    version: int
    station_id: uuid.UUID
    season: str
    kind: CampaignKind
    title: str
    bleed_instructions: str
    service_phone: str
    event_start: datetime
    event_end: datetime | None
    status: CampaignStatus
    total_count: int
    sent_count: int
    failed_count: int
    skipped_count: int
    pending_count: int
    first_sent_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime


class CampaignsPublic(SQLModel):
    data: list[CampaignPublic]
    count: int


class DeliveryState(SQLModel):
    """What an SMS delivery to one household holds, for campaigns and notices alike (`api.notices.deliveries`
    claims, sends and records it)."""

    phone: str | None = Field(default=None, max_length=20)
    text: str = Field(default="", max_length=1000)
    status: DeliveryStatus = Field(default=DeliveryStatus.queued, index=True)
    attempts: int = 0
    reason: str | None = Field(default=None, max_length=500)
    next_attempt_at: datetime | None = ts_field(nullable=True)
    sent_at: datetime | None = ts_field(nullable=True)


class CampaignDelivery(Versioned, DeliveryState, table=True):
    """One household's copy of a campaign; the unique key is what stops a second SMS."""

    __tablename__ = "campaign_deliveries"
    __table_args__ = (UniqueConstraint("campaign_id", "household_id",
                                       name="uq_campaign_deliveries_campaign_household"),)

    campaign_id: uuid.UUID = Field(foreign_key="notice_campaigns.id", index=True, ondelete="CASCADE")
    household_id: uuid.UUID = Field(foreign_key="households.id", index=True, ondelete="CASCADE")


class DeliveryPublic(DeliveryState):
    id: uuid.UUID
    campaign_id: uuid.UUID
    household_id: uuid.UUID
    updated_at: datetime


class DeliveriesPublic(SQLModel):
    data: list[DeliveryPublic]
    count: int


class PreviewMessage(SQLModel):
    household_id: uuid.UUID
    phone: str | None
    text: str
    skip_reason: str | None


class CampaignPreview(SQLModel):
    campaign_id: uuid.UUID
    data: list[PreviewMessage]
    count: int
    will_send: int
    will_skip: int


class ProactiveKind(StrEnum):
    riser = "riser"  # one building's unit (单元立管)
    building = "building"
    station = "station"
    revisit = "revisit"  # a sensitive household's scheduled visit


class ProactiveOrder(SQLModel, table=True):
    """A work order the service opened on its own, and the group it stands for."""

    __tablename__ = "proactive_orders"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    kind: ProactiveKind = Field(index=True)
    group_key: str = Field(max_length=100, index=True)
    # `<kind>:<group_key>` while the work order is open, NULL after: at most one open order per group.
    open_key: str | None = Field(default=None, max_length=110, unique=True)
    station_id: uuid.UUID | None = Field(default=None, foreign_key="stations.id", ondelete="CASCADE")
    building_id: uuid.UUID | None = Field(default=None, foreign_key="buildings.id", ondelete="CASCADE")
    unit: str | None = Field(default=None, max_length=10)
    household_id: uuid.UUID | None = Field(default=None, foreign_key="households.id", ondelete="CASCADE")
    work_order_id: uuid.UUID = Field(foreign_key="work_orders.id", index=True, ondelete="CASCADE")
    signal_count: int = 0
    opened_at: datetime = ts_field(default_now=True, index=True)
    closed_at: datetime | None = ts_field(nullable=True)


class ProactiveMember(SQLModel, table=True):
    """One complaint (a work order, or a tagged call transcript without one) grouped into a proactive order."""

    __tablename__ = "proactive_members"
    __table_args__ = (
        UniqueConstraint("proactive_order_id", "work_order_id", name="uq_proactive_members_order_work_order"),
        UniqueConstraint("proactive_order_id", "transcript_id", name="uq_proactive_members_order_transcript"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    proactive_order_id: uuid.UUID = Field(foreign_key="proactive_orders.id", index=True, ondelete="CASCADE")
    work_order_id: uuid.UUID | None = Field(default=None, foreign_key="work_orders.id", index=True,
                                            ondelete="CASCADE")
    transcript_id: uuid.UUID | None = Field(default=None, foreign_key="transcripts.id", ondelete="CASCADE")
    household_id: uuid.UUID = Field(foreign_key="households.id", ondelete="CASCADE")
    at: datetime = ts_field()


class ProactiveOrderPublic(SQLModel):
    id: uuid.UUID
    kind: ProactiveKind
    group_key: str
    open: bool
    station_id: uuid.UUID | None
    building_id: uuid.UUID | None
    unit: str | None
    household_id: uuid.UUID | None
    work_order_id: uuid.UUID
    signal_count: int
    opened_at: datetime
    closed_at: datetime | None
    member_work_order_ids: list[uuid.UUID]
    member_transcript_ids: list[uuid.UUID]


class ProactiveOrdersPublic(SQLModel):
    data: list[ProactiveOrderPublic]
    count: int


class RunReport(SQLModel):
    """What one evaluation did."""

    closed: int
    clusters_opened: int
    members_linked: int
    revisits_opened: int
    deliveries_sent: int
    deliveries_failed: int


class Breach(SQLModel):
    work_order_id: uuid.UUID
    household_id: uuid.UUID
    category: str
    priority: str
    status: str
    source: str
    assignee_id: uuid.UUID | None
    sensitive: bool | None = Field(description="The household's flag; null for a household outside the "
                                               "steward's grid (an order assigned to them there).")
    sla_due_at: datetime
    resolved_at: datetime | None
    overdue_minutes: int


class BreachesPublic(SQLModel):
    data: list[Breach]
    count: int


class Summary(SQLModel):
    """The console's proactive panel: counts only, scoped to the caller."""

    generated_at: datetime
    sla_open_overdue: int
    sla_due_within_2h: int
    sla_resolved_late: int
    sla_window_days: int
    clusters_open: dict[str, int]
    revisits_open: int
    campaigns: dict[str, int]
    deliveries: dict[str, int]
