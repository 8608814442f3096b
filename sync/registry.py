"""The syncable tables: wire columns, who sees which rows, how deletes are routed, who owns which field.

One place to read when a table or field is added: its visibility (the REST API's SQL filters), the rows a
scope change touches, the keys a tombstone keeps, and which side wins a conflict on each field.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Enum, String, Table, Uuid, and_, cast, false, func, or_, true, type_coerce
from sqlmodel import Session, col, select

from api import access
from api.db import UTCDateTime, Versioned
from api.fieldwork.models import Reading, Visit
from api.network.models import Building, Household, Station
from api.notes.models import Note
from api.notes.service import note_clause
from api.notices.models import Notice
from api.proactive.models import Campaign, CampaignDelivery
from api.users.models import User
from api.work_orders.models import WorkOrder

INTERNAL_COLUMNS = frozenset({"seq", "field_versions", "origin_client_id"})


@dataclass(frozen=True)
class ScopeKeys:
    """Subqueries of the building, work-order and station ids whose related rows must be re-checked."""

    buildings: Any
    work_orders: Any
    stations: Any


@dataclass(frozen=True)
class SyncTable:
    """How one table takes part in sync."""

    name: str
    model: type[Versioned]
    visible: Callable[[User], ColumnElement[bool]]
    related: Callable[[ScopeKeys], ColumnElement[bool]]
    # Fields the office owns: on a conflict the server value stays. Every other writable field is
    # observed in the field, and the device value wins.
    office_fields: frozenset[str] = field(default_factory=frozenset)
    append_only: bool = False
    # Snapshots of big tables page by (this column, id) on a composite index: a grid is a set of
    # buildings and households, so each page is an index range instead of a re-sort of the whole grid.
    page_key: str | None = None
    # For stewards, `visible` = `in_grid` OR `own` (rows they made or were given outside the grid). A
    # snapshot pages the two apart and merges them, because an OR hides the index order from planners.
    in_grid: Callable[[User], ColumnElement[bool]] | None = None
    # The page-key values of a steward's grid (buildings for households, households for the rest): on
    # PostgreSQL a snapshot page walks them in order and reads each one's rows (sync/pull.py).
    grid_keys: Callable[[User], Any] | None = None
    own: Callable[[User], ColumnElement[bool]] | None = None

    @property
    def table(self) -> Table:
        table: Table = self.model.__table__  # type: ignore[attr-defined]
        return table

    @property
    def columns(self) -> list[Any]:
        """The columns a record carries: `id` first (queries rely on it), then the table's order."""
        return _columns(self.table)

    @property
    def column_names(self) -> list[str]:
        return _column_names(self.table)

    def wire(self, dialect: str) -> Wire:
        """How to select this table's records as the JSON text the device receives (see `Wire`)."""
        return _wire_plan(self.table, dialect)


@cache
def _columns(table: Table) -> list[Any]:
    rest = [c for c in table.columns if c.name not in INTERNAL_COLUMNS and c.name != "id"]
    return [table.c.id, *rest]


@cache
def _column_names(table: Table) -> list[str]:
    return [c.name for c in _columns(table)]


def _uuid_text(value: str | None) -> str | None:
    # SQLite keeps 32 hex digits; the wire has the dashed form.
    return None if value is None else f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"


def _timestamp_text(value: str | None) -> str | None:
    # SQLite keeps naive UTC as 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return None if value is None else value.replace(" ", "T") + "+00:00"


def wire(column: Any, dialect: str) -> tuple[Any, Callable[[Any], Any] | None]:
    """A column as wire text: PostgreSQL formats in SQL (C code); SQLite returns the stored text and a
    small Python function finishes it (cheaper there than SQLite string functions). Either way no
    `uuid.UUID` or `datetime` object is built per value."""
    kind = column.type
    if isinstance(kind, Uuid):
        if dialect == "postgresql":
            return cast(column, String), None
        return type_coerce(column, String), _uuid_text
    if isinstance(kind, UTCDateTime):
        if dialect == "postgresql":
            return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), None
        return type_coerce(column, String), _timestamp_text
    if isinstance(kind, Enum):
        return cast(column, String), None
    return column, None


@dataclass(frozen=True)
class Wire:
    """Columns to select (id first) and the Python finishing step per row."""

    columns: list[Any]
    names: list[str]
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_build", _record_builder(tuple(self.names), self.converters))

    def record(self, row: Any, offset: int = 0) -> dict[str, Any]:
        """The record of a result row whose record columns start at `offset`."""
        build: Callable[[Any, int], dict[str, Any]] = self._build  # type: ignore[attr-defined]
        return build(row, offset)


# The finishing steps written out where a record is built: a first sync makes ~50,000 records of ~10 values,
# and a call per value (and a list, a loop and a zip per record) was a third of a SQLite pull's time.
_INLINE = {
    _uuid_text: 'None if (v{i} := row[o + {i}]) is None else '
                'f"{{v{i}[:8]}}-{{v{i}[8:12]}}-{{v{i}[12:16]}}-{{v{i}[16:20]}}-{{v{i}[20:]}}"',
    _timestamp_text: 'None if (v{i} := row[o + {i}]) is None else v{i}.replace(" ", "T") + "+00:00"',
}


def _record_builder(names: tuple[str, ...], converters: tuple[tuple[int, Callable[[Any], Any]], ...]
                    ) -> Callable[[Any, int], dict[str, Any]]:
    """A function `(row, offset) -> record` with the columns' finishing steps inlined (as `namedtuple` writes
    its class): the same values as `_uuid_text` and `_timestamp_text` give, one dict display per row."""
    steps = dict(converters)
    env: dict[str, Any] = {}
    parts = []
    for i, name in enumerate(names):
        if not name.isidentifier():
            raise ValueError(f"column name {name!r}")
        convert = steps.get(i)
        if convert is None:
            value = f"row[o + {i}]"
        elif convert in _INLINE:
            value = "(" + _INLINE[convert].format(i=i) + ")"
        else:
            env[f"c{i}"] = convert
            value = f"c{i}(row[o + {i}])"
        parts.append(f"{name!r}: {value}")
    exec("def build(row, o):\n    return {" + ", ".join(parts) + "}\n", env)  # column names only: checked above
    build: Callable[[Any, int], dict[str, Any]] = env["build"]
    return build


@cache
def _wire_plan(table: Table, dialect: str) -> Wire:
    columns, converters = [], []
    for index, column in enumerate(_columns(table)):
        expr, convert = wire(column, dialect)
        columns.append(expr.label(column.name))
        if convert is not None:
            converters.append((index, convert))
    return Wire(columns, _column_names(table), tuple(converters))


def wire_value(value: Any) -> Any:
    """A Python value as the wire shows it (the same text `wire` produces from the database)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _always(_: Any) -> ColumnElement[bool]:
    return true()


def _never(_: Any) -> ColumnElement[bool]:
    return false()


def _households_of(keys: ScopeKeys) -> Any:
    return select(Household.id).where(col(Household.building_id).in_(keys.buildings))


def notice_clause(user: User) -> ColumnElement[bool]:
    """Notices a user may see: the rule of `api.notices.service.get` (their buildings and stations)."""
    clause = access.building_clause(user, Notice.building_id)
    if access.is_office(user):
        return clause
    stations = select(Building.station_id).where(col(Building.id).in_(access.grid_buildings(user)))
    return or_(clause, col(Notice.station_id).in_(stations))


def campaign_clause(user: User) -> ColumnElement[bool]:
    """Campaigns a user may see: the rule of `api.proactive.campaigns.get_campaign`."""
    from api.proactive.campaigns import campaign_clause as clause

    return clause(user)


TABLES: tuple[SyncTable, ...] = (
    SyncTable("stations", Station, _always, _never),
    SyncTable("buildings", Building, lambda u: access.building_clause(u, Building.id),
              lambda k: col(Building.id).in_(k.buildings)),
    SyncTable("households", Household, lambda u: access.building_clause(u, Household.building_id),
              lambda k: col(Household.building_id).in_(k.buildings),
              office_fields=frozenset({"resident_name", "phone", "area_m2", "heating_status", "sensitive"}),
              page_key="building_id", grid_keys=access.grid_buildings),
    SyncTable("work_orders", WorkOrder, access.work_order_clause,
              lambda k: or_(col(WorkOrder.household_id).in_(_households_of(k)), col(WorkOrder.id).in_(k.work_orders)),
              office_fields=frozenset({"assignee_id", "priority", "sla_due_at", "category", "description"}),
              page_key="household_id", in_grid=lambda u: access.household_clause(u, WorkOrder.household_id),
              own=lambda u: col(WorkOrder.assignee_id) == u.id, grid_keys=access.grid_households),
    SyncTable("visits", Visit, access.visit_clause,
              lambda k: col(Visit.household_id).in_(_households_of(k)), page_key="household_id",
              in_grid=lambda u: access.household_clause(u, Visit.household_id),
              own=lambda u: col(Visit.steward_id) == u.id, grid_keys=access.grid_households),
    SyncTable("readings", Reading, access.reading_clause,
              lambda k: col(Reading.household_id).in_(_households_of(k)), append_only=True,
              page_key="household_id", in_grid=lambda u: access.household_clause(u, Reading.household_id),
              own=lambda u: col(Reading.taken_by_id) == u.id, grid_keys=access.grid_households),
    SyncTable("notes", Note, note_clause,
              lambda k: or_(col(Note.household_id).in_(_households_of(k)),
                            col(Note.work_order_id).in_(
                                select(WorkOrder.id).where(col(WorkOrder.household_id).in_(_households_of(k)))),
                            col(Note.work_order_id).in_(k.work_orders))),
    SyncTable("notices", Notice, notice_clause,
              lambda k: or_(col(Notice.building_id).in_(k.buildings),
                            col(Notice.station_id).in_(
                                select(Building.station_id).where(col(Building.id).in_(k.buildings))),
                            col(Notice.station_id).in_(k.stations))),
    # Proactive notice campaigns (api/proactive): a steward sees those of the stations feeding the grid, and
    # the delivery status of each household of the grid. Read-only on devices.
    SyncTable("notice_campaigns", Campaign, campaign_clause,
              lambda k: or_(col(Campaign.station_id).in_(
                  select(Building.station_id).where(col(Building.id).in_(k.buildings))),
                  col(Campaign.station_id).in_(k.stations))),
    # A delivery is seen with its campaign (as REST's `get_campaign` asks): a building moved to another station
    # takes its households' deliveries of the old station's campaigns off the handheld (the `station` scope
    # event of the move names both stations).
    SyncTable("campaign_deliveries", CampaignDelivery,
              lambda u: and_(access.household_clause(u, CampaignDelivery.household_id),
                             col(CampaignDelivery.campaign_id).in_(select(Campaign.id).where(campaign_clause(u)))),
              lambda k: or_(col(CampaignDelivery.household_id).in_(_households_of(k)),
                            col(CampaignDelivery.campaign_id).in_(
                                select(Campaign.id).where(col(Campaign.station_id).in_(k.stations))))),
)
BY_NAME = {t.name: t for t in TABLES}
BY_MODEL: dict[type[Any], SyncTable] = {t.model: t for t in TABLES}
SYNC_TABLE_NAMES = frozenset(BY_NAME)


def spec_of(obj: Any) -> SyncTable | None:
    """The sync table of an ORM object, or None if the object is not synced."""
    return BY_MODEL.get(type(obj))


def record(spec: SyncTable, obj: Any) -> dict[str, Any]:
    """The wire record of an ORM object."""
    return {name: wire_value(getattr(obj, name)) for name in spec.column_names}


def _building_of_household(session: Session, household_id: uuid.UUID | None) -> uuid.UUID | None:
    if household_id is None:
        return None
    return session.connection().execute(
        select(Household.building_id).where(Household.id == household_id)).scalar()


def _household_of_order(session: Session, order_id: uuid.UUID | None) -> uuid.UUID | None:
    if order_id is None:
        return None
    return session.connection().execute(
        select(WorkOrder.household_id).where(WorkOrder.id == order_id)).scalar()


def route_keys(session: Session, spec: SyncTable, obj: Any) -> dict[str, uuid.UUID | None]:
    """The keys a tombstone of this row keeps, so the delete reaches exactly the devices that saw it."""
    name = spec.name
    if name == "stations":
        return {"station_id": obj.id}
    if name == "buildings":
        return {"building_id": obj.id, "station_id": obj.station_id}
    if name == "households":
        return {"building_id": obj.building_id}
    if name == "work_orders":
        return {"building_id": _building_of_household(session, obj.household_id), "user_id": obj.assignee_id,
                "work_order_id": obj.id}
    if name == "visits":
        return {"building_id": _building_of_household(session, obj.household_id), "user_id": obj.steward_id}
    if name == "readings":
        return {"building_id": _building_of_household(session, obj.household_id), "user_id": obj.taken_by_id}
    if name == "notes":
        household = obj.household_id or _household_of_order(session, obj.work_order_id)
        return {"building_id": _building_of_household(session, household), "user_id": obj.owner_id,
                "work_order_id": obj.work_order_id}
    if name == "notices":
        return {"building_id": obj.building_id, "station_id": obj.station_id}
    if name == "notice_campaigns":
        return {"station_id": obj.station_id}
    if name == "campaign_deliveries":
        return {"building_id": _building_of_household(session, obj.household_id)}
    raise KeyError(name)
