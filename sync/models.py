"""Offline sync: the bookkeeping tables (counter, tombstones, scope events, clients, conflicts) and the
request/response shapes of the pull and push protocol (docs/sync-protocol.md)."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, model_validator
from pydantic import Field as PydanticField
from sqlalchemy import JSON, BigInteger, Index
from sqlmodel import Field, SQLModel

from api.db import new_id, ts_field
from api.fieldwork.models import Reading, Visit
from api.network.models import Household
from api.schemas import RequestBody
from api.work_orders.models import WorkOrder

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
DEFAULT_LIMIT = 1000
MAX_LIMIT = 5000
MAX_CURSOR = 4096  # characters; the server's cursors are a few hundred
STATUSES = ("applied", "merged", "conflict", "rejected", "duplicate")


class SyncState(SQLModel, table=True):
    """Named counters: `seq` (the change sequence) and `purged_seq` (tombstones up to it are gone).

    One row each, so the row lock that orders writers (`seq`) never waits on the purge (`purged_seq`).
    """

    __tablename__ = "sync_state"

    name: str = Field(primary_key=True, max_length=32)
    value: int = Field(default=0, sa_type=BigInteger)
    updated_at: datetime = ts_field(default_now=True)


class Tombstone(SQLModel, table=True):
    """A deleted syncable row, with the keys that route the delete to the devices that saw it."""

    __tablename__ = "sync_tombstones"
    __table_args__ = (Index("ix_sync_tombstones_table_seq_row", "table_name", "seq", "row_id"),)

    table_name: str = Field(primary_key=True, max_length=20)
    row_id: uuid.UUID = Field(primary_key=True)
    seq: int = Field(sa_type=BigInteger, index=True)
    deleted_at: datetime = ts_field(default_now=True, index=True)
    building_id: uuid.UUID | None = Field(default=None, index=True)
    station_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    work_order_id: uuid.UUID | None = None
    origin_client_id: uuid.UUID | None = None


class ScopeEvent(SQLModel, table=True):
    """The rows related to a building, work order or station may have changed visibility for a user."""

    __tablename__ = "sync_scope_events"
    __table_args__ = (Index("ix_sync_scope_events_user_seq", "user_id", "seq"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    seq: int = Field(sa_type=BigInteger)
    user_id: uuid.UUID
    kind: str = Field(max_length=20)  # building | work_order | station
    key_id: uuid.UUID
    created_at: datetime = ts_field(default_now=True, index=True)


class SyncClient(SQLModel, table=True):
    """One device install of one user, and the last mutation id it had applied (exactly-once push)."""

    __tablename__ = "sync_clients"

    client_id: uuid.UUID = Field(primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    last_mutation_id: int = Field(default=0, sa_type=BigInteger)
    created_at: datetime = ts_field(default_now=True)
    updated_at: datetime = ts_field(default_now=True)


class SyncConflict(SQLModel, table=True):
    """One field (or one row, for deletes) written on both sides: both values, the winner, the device."""

    __tablename__ = "sync_conflicts"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    created_at: datetime = ts_field(default_now=True, index=True)
    user_id: uuid.UUID = Field(index=True)
    client_id: uuid.UUID
    mutation_id: int = Field(sa_type=BigInteger)
    table_name: str = Field(max_length=20)
    row_id: uuid.UUID = Field(index=True)
    field: str | None = Field(default=None, max_length=64)
    kind: str = Field(max_length=30)  # field | delete_wins | deleted | invalid_transition
    base_version: int | None = None
    server_version: int | None = None
    server_value: Any = Field(default=None, sa_type=JSON, nullable=True)
    device_value: Any = Field(default=None, sa_type=JSON, nullable=True)
    winner: str = Field(max_length=10)  # device | server
    # A supervisor looked at it (the console's "reviewed" mark); null while nobody has.
    reviewed_at: datetime | None = ts_field(nullable=True, index=True)
    reviewed_by_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")


# Composite indexes for snapshot paging by (scope key, id) (sync/registry.py `page_key`). They belong to
# the domain tables but exist for sync, so they are declared here, next to their reason.
def _page_index(model: Any, column: str) -> Index:
    table = model.__table__
    return Index(f"ix_{table.name}_{column}_id", table.c[column], table.c.id)


PAGE_INDEXES = (_page_index(Household, "building_id"), _page_index(WorkOrder, "household_id"),
                _page_index(Visit, "household_id"), _page_index(Reading, "household_id"))
# A steward's own readings outside the grid (api/access.reading_clause) are found by taker.
TAKER_INDEX = Index("ix_readings_taken_by_id", Reading.__table__.c.taken_by_id)  # type: ignore[attr-defined]


class ConflictPublic(SQLModel):
    id: uuid.UUID
    created_at: datetime
    user_id: uuid.UUID
    client_id: uuid.UUID
    mutation_id: int
    table_name: str
    row_id: uuid.UUID
    field: str | None
    kind: str
    base_version: int | None
    server_version: int | None
    server_value: Any
    device_value: Any
    winner: str
    reviewed_at: datetime | None = None
    reviewed_by_id: uuid.UUID | None = None


class ConflictReview(RequestBody):
    reviewed: StrictBool = True  # not "no" (which cleared a supervisor's mark) nor 1


class ConflictsPublic(SQLModel):
    data: list[ConflictPublic]
    count: int


# --- protocol shapes -------------------------------------------------------------------------------


class Mutation(BaseModel):
    """One queued change. `table`, `op` and `id` are checked per mutation (a bad one is rejected, not
    the whole push), so they are plain strings here, of any length (the body limit bounds them): a length
    limit here would fail the whole batch with 422 and stall the device's queue on one bad mutation."""

    model_config = ConfigDict(extra="forbid")

    # Strict: `true` read as 1 and "5" as 5 gave exactly-once bookkeeping to whatever number they became.
    mutation_id: StrictInt = PydanticField(ge=1, le=2**62)
    table: str
    op: str
    id: str = PydanticField(description="The row's UUID. A new row's id is made by the device, "
                            "preferably a time-ordered UUIDv7 (docs/sync-protocol.md, Ids); any UUID is accepted.")
    # Any integer: one out of range (0 for "never synced") is that mutation's `invalid_base_version`; bounded
    # here, it refused the whole batch with 422 and the device resent it for ever.
    base_version: int | None = None
    fields: dict[str, Any] = PydanticField(default_factory=dict)


class PushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id: uuid.UUID
    schema_version: int
    cursor: str | None = PydanticField(default=None, max_length=MAX_CURSOR,
                                       description="The device's last pull cursor (recommended).")
    mutations: list[Mutation]

    @model_validator(mode="after")
    def _increasing(self) -> PushRequest:
        ids = [m.mutation_id for m in self.mutations]
        if any(b <= a for a, b in itertools.pairwise(ids)):
            raise ValueError("mutation ids must be strictly increasing within a push")
        return self


class MutationResult(BaseModel):
    mutation_id: int
    status: Literal["applied", "merged", "conflict", "rejected", "duplicate"]
    version: int | None = None
    reason: str | None = None
    message: str | None = None
    record: dict[str, Any] | None = None


class PushResponse(BaseModel):
    last_mutation_id: int
    cursor: str
    results: list[MutationResult]


class TableChanges(BaseModel):
    upserts: list[dict[str, Any]]
    deletes: list[str]


class PullResponse(BaseModel):
    """Documentation of the pull answer (the route writes it with orjson directly)."""

    cursor: str
    has_more: bool
    reset: bool
    schema_version: int
    changes: dict[str, TableChanges]
