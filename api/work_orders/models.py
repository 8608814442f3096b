"""Work orders: a resident's problem from hotline call to closing, with an enforced state machine."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import StrictInt, field_validator, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import ColumnElement, Index, literal_column, text
from sqlmodel import Field, SQLModel, col

from api.db import Versioned, new_id, ts_field, utcnow
from api.schemas import RequestBody, UtcDatetime, not_null, strip_text


class Source(StrEnum):
    hotline = "hotline"
    visit = "visit"
    proactive = "proactive"
    video = "video"


class Category(StrEnum):
    not_warm = "not_warm"
    leak = "leak"
    noise = "noise"
    air_lock = "air_lock"
    valve = "valve"
    billing = "billing"
    other = "other"


class Priority(StrEnum):
    urgent = "urgent"
    high = "high"
    normal = "normal"
    low = "low"


class Status(StrEnum):
    new = "new"
    assigned = "assigned"
    in_progress = "in_progress"
    waiting_resident = "waiting_resident"
    resolved = "resolved"
    closed = "closed"
    cancelled = "cancelled"


# The state machine. Reopening (resolved -> in_progress) covers "still cold the next morning".
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.new: frozenset({Status.assigned, Status.cancelled}),
    Status.assigned: frozenset({Status.in_progress, Status.cancelled}),
    Status.in_progress: frozenset({Status.waiting_resident, Status.resolved, Status.cancelled}),
    Status.waiting_resident: frozenset({Status.in_progress, Status.resolved, Status.cancelled}),
    Status.resolved: frozenset({Status.closed, Status.in_progress}),
    Status.closed: frozenset(),
    Status.cancelled: frozenset(),
}
OPEN_STATUSES = frozenset({Status.new, Status.assigned, Status.in_progress, Status.waiting_resident})
# An open order in SQL, with the statuses as literals: a partial index serves a query only when the planner
# can see that the query's condition implies the index's, which bound parameters hide.
OPEN_SQL = "status IN (" + ", ".join(f"'{s.value}'" for s in sorted(OPEN_STATUSES)) + ")"
# What a steward may do from the field; assigning, closing and cancelling are office work.
STEWARD_TARGETS = frozenset({Status.in_progress, Status.waiting_resident, Status.resolved})


class WorkOrderBase(SQLModel):
    household_id: uuid.UUID
    source: Source = Source.hotline
    category: Category
    description: str = Field(default="", max_length=4000)
    priority: Priority = Priority.normal
    caller_phone: str | None = Field(default=None, max_length=20)


class WorkOrder(Versioned, WorkOrderBase, table=True):
    __tablename__ = "work_orders"
    # The open orders by due time (the dashboard's late orders, polled; /proactive/sla/breaches): through the
    # index on sla_due_at the database walked every closed order ever due. A partial index of the open ones,
    # which `open_clause()` states in the same words. created_at: the summary's window of new orders.
    __table_args__ = (Index("ix_work_orders_open_sla", "sla_due_at", "id", postgresql_where=text(OPEN_SQL),
                            sqlite_where=text(OPEN_SQL)),
                      Index("ix_work_orders_created_at", "created_at"))

    household_id: uuid.UUID = Field(foreign_key="households.id", ondelete="RESTRICT")  # indexed with id (sync)
    status: Status = Field(default=Status.new, index=True)
    assignee_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", index=True,
                                          ondelete="SET NULL")
    created_by_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    sla_due_at: datetime = ts_field(index=True)
    resolved_at: datetime | None = ts_field(nullable=True)
    closed_at: datetime | None = ts_field(nullable=True)


def open_clause() -> ColumnElement[bool]:
    """`work_orders.status` is open, with the statuses written as literals (`OPEN_SQL`), so that the partial
    index of open orders (`ix_work_orders_open_sla`) serves the lists of late orders."""
    return col(WorkOrder.status).in_([literal_column(f"'{s.value}'") for s in sorted(OPEN_STATUSES)])


class WorkOrderEvent(SQLModel, table=True):
    """One line of a work order's timeline (append-only)."""

    __tablename__ = "work_order_events"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    work_order_id: uuid.UUID = Field(foreign_key="work_orders.id", index=True, ondelete="CASCADE")
    at: datetime = ts_field(default_now=True)
    actor_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    kind: str = Field(max_length=20)  # created | assigned | status
    from_status: Status | None = None
    to_status: Status | None = None
    assignee_id: uuid.UUID | None = None
    note: str = Field(default="", max_length=2000)


def _sla_in_reach(value: datetime | None) -> datetime | None:
    """A deadline before 2100, as notices' dates are: 9999-12-31T23:00Z was stored, and read back on a
    PostgreSQL server east of UTC as year 10000, which failed every list the order was in."""
    if value is not None and value.year >= 2100:
        raise PydanticCustomError("invalid_sla", "sla_due_at must be before the year 2100")
    return value


class WorkOrderCreate(WorkOrderBase, RequestBody):
    id: uuid.UUID | None = None
    assignee_id: uuid.UUID | None = None
    sla_due_at: UtcDatetime | None = None  # null or left out: the SLA the rules give

    _sla_reach = field_validator("sla_due_at")(_sla_in_reach)
    _caller = field_validator("caller_phone", mode="before")(strip_text)

    @field_validator("caller_phone")
    @classmethod
    def _no_blank_caller(cls, value: str | None) -> str | None:
        return value or None  # spaces or invisible characters alone: no number (they were stored as typed)

    @model_validator(mode="after")
    def _check_sla(self) -> WorkOrderCreate:
        # The order is created now: a deadline already passed makes it overdue at birth (REST and sync push).
        if self.sla_due_at is not None and self.sla_due_at <= utcnow():
            raise PydanticCustomError("invalid_sla", "sla_due_at must be after the order is created (now); "
                                      "leave it out for the SLA the rules give")
        return self


class WorkOrderPublic(WorkOrderBase):
    id: uuid.UUID
    version: int
    status: Status
    assignee_id: uuid.UUID | None
    created_by_id: uuid.UUID | None
    sla_due_at: datetime
    resolved_at: datetime | None
    closed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class WorkOrdersPublic(SQLModel):
    data: list[WorkOrderPublic]
    count: int


class AssignRequest(RequestBody):
    assignee_id: uuid.UUID
    note: str = Field(default="", max_length=2000)


class TransitionRequest(RequestBody):
    status: Status
    note: str = Field(default="", max_length=2000)
    base_version: StrictInt | None = Field(default=None, ge=1, description="Refuse if the order changed since.")


class WorkOrderUpdate(RequestBody):
    category: Category | None = None
    description: str | None = Field(default=None, max_length=4000)
    priority: Priority | None = None
    sla_due_at: UtcDatetime | None = None

    # Leave a field out to keep it; a null was answered 200 and dropped (sync pushes refuse it too).
    _not_null = field_validator("category", "description", "priority", "sla_due_at")(not_null)
    _sla_reach = field_validator("sla_due_at")(_sla_in_reach)


class WorkOrderEventPublic(SQLModel):
    id: uuid.UUID
    at: datetime
    actor_id: uuid.UUID | None
    kind: str
    from_status: Status | None
    to_status: Status | None
    assignee_id: uuid.UUID | None
    note: str
