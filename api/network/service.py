"""Stations, buildings and households: create, update, look up and list within the caller's scope."""

from __future__ import annotations

import uuid
from typing import Any

from sqlmodel import Session, col, func, select

from api import access
from api.db import folded, lock_for_update, refuse_taken_id
from api.deps import Page
from api.errors import Conflict, NotFound
from api.network.models import (
    BUILDING_WORDS,
    ROOM_WORDS,
    UNIT_WORDS,
    Building,
    BuildingCreate,
    BuildingUpdate,
    HeatingStatus,
    Household,
    HouseholdCreate,
    HouseholdUpdate,
    Station,
    StationCreate,
    StationUpdate,
    spellings,
)
from api.schemas import clean_label
from api.users.models import User


def _check_unique(session: Session, stmt: Any, message: str, exclude: uuid.UUID | None = None) -> None:
    existing = session.exec(stmt).first()
    if existing is not None and existing.id != exclude:
        raise Conflict(message, code="already_exists")


def create_station(*, session: Session, data: StationCreate) -> Station:
    """Add a heat-exchange station; codes are unique."""
    refuse_taken_id(session, Station, data.id, "station")
    _check_unique(session, select(Station).where(Station.code == data.code),
                  f"Station code {data.code!r} is already used.")
    station = Station.model_validate(data.model_dump(exclude_none=True))
    session.add(station)
    session.commit()
    return station


def get_station(*, session: Session, id: uuid.UUID) -> Station:
    """A station by id (stations are not secret: every signed-in user may read them)."""
    station = session.get(Station, id)
    if station is None:
        raise NotFound(f"No station with id {id}.")
    return station


def update_station(*, session: Session, station: Station, data: StationUpdate) -> Station:
    """Change a station's master data (the row locked the way a sync push locks, `lock_for_update`: two edits at
    once each wrote the version after the one both had read)."""
    lock_for_update(session, station)
    changes = data.model_dump(exclude_unset=True)
    if "code" in changes:
        _check_unique(session, select(Station).where(Station.code == changes["code"]),
                      f"Station code {changes['code']!r} is already used.", exclude=station.id)
    station.sqlmodel_update(changes)
    session.add(station)
    session.commit()
    return station


def list_stations(*, session: Session, page: Page, district: str | None = None) -> tuple[list[Station], int]:
    """Stations, optionally of one district, by code."""
    stmt = select(Station)
    if district := str(clean_label(district or "")):  # as names are stored, as for buildings' community
        stmt = stmt.where(Station.district == district)
    return access.paged(session, stmt, page, Station.code)


def create_building(*, session: Session, data: BuildingCreate) -> Building:
    """Add a building fed by an existing station; community + number is unique."""
    refuse_taken_id(session, Building, data.id, "building")
    # Taken before the spelling check, which is no constraint: a create (or an edit) of the same building
    # typed another way waits here and is checked against this one, as households are.
    lock_for_update(session, get_station(session=session, id=data.station_id))
    _check_unique(session, _same_building(data.community, data.number),
                  f"Building {data.community} {data.number} already exists.")
    building = Building.model_validate(data.model_dump(exclude_none=True))
    session.add(building)
    session.commit()
    return building


def _same_building(community: str, number: str) -> Any:
    """The buildings of the community with this number however it was typed: 7, 7号楼 and 7栋 are one building
    (燕子山小区7号楼 in every SMS and work order)."""
    return select(Building).where(Building.community == community,
                                  col(Building.number).in_(spellings(number, BUILDING_WORDS)))


def get_building(*, session: Session, user: User, id: uuid.UUID) -> Building:
    """A building the user may see."""
    return access.get_visible(session, Building, id, access.building_clause(user, Building.id),
                              what="building")


def update_building(*, session: Session, building: Building, data: BuildingUpdate) -> Building:
    """Change a building's master data (station, address...), the row locked as `update_station` locks it."""
    lock_for_update(session, building)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("station_id") is not None:
        get_station(session=session, id=changes["station_id"])
    community = changes.get("community", building.community)
    number = changes.get("number", building.number)
    if (community, number) != (building.community, building.number):  # a twin stored before the check stays
        _check_unique(session, _same_building(community, number).where(Building.id != building.id),
                      f"Building {community} {number} already exists.")
    building.sqlmodel_update(changes)
    session.add(building)
    session.commit()
    return building


def list_buildings(*, session: Session, user: User, page: Page, station_id: uuid.UUID | None = None,
                   community: str | None = None) -> tuple[list[Building], int]:
    """Buildings the user may see, filtered by station or community."""
    stmt = select(Building).where(access.building_clause(user, Building.id))
    if station_id:
        stmt = stmt.where(Building.station_id == station_id)
    if community := str(clean_label(community or "")):  # as names are stored (full-width, spaces: one name)
        stmt = stmt.where(Building.community == community)
    return access.paged(session, stmt, page, Building.community, Building.number)


def create_household(*, session: Session, data: HouseholdCreate) -> Household:
    """Add a household to an existing building; building + unit + room is unique."""
    refuse_taken_id(session, Household, data.id, "household")
    building = session.get(Building, data.building_id)
    if building is None:
        raise NotFound(f"No building with id {data.building_id}.")
    # Two spellings of one flat are not the same string, so the unique constraint cannot refuse the second of
    # two creates checked at once: the change sequence (which the insert takes anyway) orders them first.
    lock_for_update(session, building)
    _check_unique(session, _same_flat(data.building_id, data.unit, data.room),
                  f"Unit {data.unit} room {data.room} already exists in this building.")
    household = Household.model_validate(data.model_dump(exclude_none=True))
    session.add(household)
    session.commit()
    return household


def _same_flat(building_id: uuid.UUID, unit: str, room: str) -> Any:
    """The households of the building at this flat however its unit and room were typed: 2/501 and 2单元/501室
    are one flat (one address in every SMS), and two rows for it were texted twice."""
    return select(Household).where(Household.building_id == building_id,
                                   col(Household.unit).in_(spellings(unit, UNIT_WORDS)),
                                   col(Household.room).in_(spellings(room, ROOM_WORDS)))


def get_household(*, session: Session, user: User, id: uuid.UUID) -> Household:
    """A household the user may see."""
    return access.get_visible(session, Household, id, access.building_clause(user, Household.building_id),
                              what="household")


def update_household(*, session: Session, household: Household, data: HouseholdUpdate) -> Household:
    """Change a household's resident data, heating status or sensitivity, or correct its unit or room (still
    one flat per building, unit and room), on the row as it is now: a push may just have changed it,
    `lock_for_update`."""
    lock_for_update(session, household)
    changes = data.model_dump(exclude_unset=True)
    unit, room = changes.get("unit", household.unit), changes.get("room", household.room)
    if (unit, room) != (household.unit, household.room):  # a form sent whole keeps its flat: nothing to check
        _check_unique(session, _same_flat(household.building_id, unit, room).where(Household.id != household.id),
                      f"Unit {unit} room {room} of this building is another household.")
    household.sqlmodel_update(changes)
    session.add(household)
    session.commit()
    return household


def list_households(*, session: Session, user: User, page: Page, building_id: uuid.UUID | None = None,
                    sensitive: bool | None = None, heating_status: HeatingStatus | None = None,
                    q: str | None = None) -> tuple[list[Household], int]:
    """Households the user may see; `q` matches resident name, phone or room."""
    stmt = select(Household).where(access.building_clause(user, Household.building_id))
    if building_id:
        stmt = stmt.where(Household.building_id == building_id)
    if sensitive is not None:
        stmt = stmt.where(Household.sensitive == sensitive)
    if heating_status is not None:
        stmt = stmt.where(Household.heating_status == heating_status)
    if q := str(clean_label(q or "")):
        # A literal match (`%` and `_` in the query are not wildcards), case-insensitive on both databases
        # (SQLite's LIKE folds ASCII case only, PostgreSQL's none: `folded`), typed full-width or not.
        # A phone is stored as typed (`0531-8888-6666`, `138 1234 5678`) and looked for as the hotline's caller ID
        # has it, digits only: both are compared without their separators.
        phone = func.replace(func.replace(col(Household.phone), "-", ""), " ", "")
        stmt = stmt.where(folded(session, col(Household.resident_name)).icontains(q.lower(), autoescape=True)
                          | phone.contains(q.replace("-", "").replace(" ", "") or q, autoescape=True)
                          | col(Household.room).in_(spellings(q, ROOM_WORDS)))
    return access.paged(session, stmt, page, Household.building_id, Household.unit, Household.room)
