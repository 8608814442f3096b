"""The heating network: heat-exchange stations, the buildings they feed, and the households inside."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import StrictBool, StrictFloat, StrictInt, field_validator
from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from api.db import Versioned
from api.schemas import RequestBody, clean_label, not_null, strip_text

PHONE_PATTERN = r"^\+?[0-9][0-9\- ]{4,19}$"
PHONE_MIN_DIGITS = 7  # a local landline (7-8 digits) is the shortest number a household has


def phone_digits(value: str | None) -> str | None:
    """A household's number as entered (`PHONE_PATTERN` checks its characters) with at least
    `PHONE_MIN_DIGITS` digits: "1----" or "1    " matched the pattern and could be texted nothing. Checked on
    what is written, not on what is read, so that an older row stays readable."""
    if value is not None and sum(ch.isdigit() for ch in value) < PHONE_MIN_DIGITS:
        raise ValueError(f"needs at least {PHONE_MIN_DIGITS} digits")
    return value


class StationBase(SQLModel):
    code: str = Field(min_length=1, max_length=32, description="Utility code, e.g. HS-LX-03.")
    name: str = Field(min_length=1, max_length=100)
    district: str = Field(default="", max_length=50)
    address: str = Field(default="", max_length=200)
    capacity_mw: StrictFloat | None = Field(default=None, gt=0, le=1000)


class Station(Versioned, StationBase, table=True):
    __tablename__ = "stations"

    code: str = Field(max_length=32, unique=True, index=True)


class StationCreate(StationBase, RequestBody):
    id: uuid.UUID | None = None

    _clean = field_validator("code", "name", "district", mode="before")(clean_label)


class StationUpdate(RequestBody):
    code: str | None = Field(default=None, min_length=1, max_length=32)
    name: str | None = Field(default=None, min_length=1, max_length=100)
    district: str | None = Field(default=None, max_length=50)
    address: str | None = Field(default=None, max_length=200)
    capacity_mw: StrictFloat | None = Field(default=None, gt=0, le=1000)

    _not_null = field_validator("code", "name", "district", "address")(not_null)
    _clean = field_validator("code", "name", "district", mode="before")(clean_label)


class StationPublic(StationBase):
    id: uuid.UUID
    version: int
    updated_at: datetime


class BuildingBase(SQLModel):
    station_id: uuid.UUID
    community: str = Field(min_length=1, max_length=100, description="Residential community (小区).")
    number: str = Field(min_length=1, max_length=20, description="Building number (楼号).")
    address: str = Field(default="", max_length=200)
    floors: StrictInt | None = Field(default=None, ge=1, le=200)
    units: StrictInt | None = Field(default=None, ge=1, le=50)


class Building(Versioned, BuildingBase, table=True):
    __tablename__ = "buildings"
    __table_args__ = (UniqueConstraint("community", "number", name="uq_buildings_community_number"),)

    station_id: uuid.UUID = Field(foreign_key="stations.id", index=True, ondelete="RESTRICT")


class BuildingCreate(BuildingBase, RequestBody):
    id: uuid.UUID | None = None

    _clean = field_validator("community", "number", mode="before")(clean_label)


class BuildingUpdate(RequestBody):
    station_id: uuid.UUID | None = None
    community: str | None = Field(default=None, min_length=1, max_length=100)
    number: str | None = Field(default=None, min_length=1, max_length=20)
    address: str | None = Field(default=None, max_length=200)
    floors: StrictInt | None = Field(default=None, ge=1, le=200)
    units: StrictInt | None = Field(default=None, ge=1, le=50)

    _not_null = field_validator("station_id", "community", "number", "address")(not_null)
    _clean = field_validator("community", "number", mode="before")(clean_label)


class BuildingPublic(BuildingBase):
    id: uuid.UUID
    version: int
    updated_at: datetime


class HeatingStatus(StrEnum):
    normal = "normal"
    suspended = "suspended"  # 报停: the resident pays a reduced fee and the radiators are valved off


class HouseholdBase(SQLModel):
    building_id: uuid.UUID
    unit: str = Field(min_length=1, max_length=10, description="Stairwell unit (单元).")
    room: str = Field(min_length=1, max_length=10)
    resident_name: str = Field(default="", max_length=100)
    phone: str | None = Field(default=None, max_length=20, schema_extra={"pattern": PHONE_PATTERN})
    area_m2: StrictFloat = Field(gt=0, le=2000, description="Heated area, the basis of the bill.")
    heating_status: HeatingStatus = HeatingStatus.normal
    sensitive: StrictBool = Field(default=False, description="Elderly, infant or temperature-sensitive.")


class Household(Versioned, HouseholdBase, table=True):
    __tablename__ = "households"
    __table_args__ = (UniqueConstraint("building_id", "unit", "room", name="uq_households_building_unit_room"),)

    building_id: uuid.UUID = Field(foreign_key="buildings.id", ondelete="RESTRICT")  # indexed with id (sync)


class HouseholdCreate(HouseholdBase, RequestBody):
    id: uuid.UUID | None = None

    _clean = field_validator("unit", "room", "resident_name", mode="before")(clean_label)
    _strip = field_validator("phone", mode="before")(strip_text)  # "138… " was stored, " 138…" refused
    _phone = field_validator("phone")(phone_digits)


class HouseholdUpdate(RequestBody):
    unit: str | None = Field(default=None, min_length=1, max_length=10, description="A mistyped unit corrected.")
    room: str | None = Field(default=None, min_length=1, max_length=10, description="A mistyped room corrected.")
    resident_name: str | None = Field(default=None, max_length=100)
    phone: str | None = Field(default=None, max_length=20, schema_extra={"pattern": PHONE_PATTERN})
    area_m2: StrictFloat | None = Field(default=None, gt=0, le=2000)
    heating_status: HeatingStatus | None = None
    sensitive: StrictBool | None = None  # not "yes" (true) nor 1

    _not_null = field_validator("unit", "room", "resident_name", "area_m2", "heating_status", "sensitive")(not_null)
    _clean = field_validator("unit", "room", "resident_name", mode="before")(clean_label)
    _strip = field_validator("phone", mode="before")(strip_text)  # "138… " was stored, " 138…" refused
    _phone = field_validator("phone")(phone_digits)


class HouseholdPublic(HouseholdBase):
    id: uuid.UUID
    version: int
    updated_at: datetime


def _ending(value: str, suffixes: tuple[str, ...], add: str) -> str:
    return value if value.endswith(suffixes) else value + add


def building_text(building: Building) -> str:
    """A building as residents write it (燕子山小区3号楼), its number's word added only when not typed."""
    community, number = (str(clean_label(v)) for v in (building.community, building.number))
    return f"{community}{_ending(number, BUILDING_WORDS, '号楼')}"


BUILDING_WORDS = ("号楼", "栋", "幢", "座", "楼")  # 号楼 before 楼: 7号楼 is 7 bare
UNIT_WORDS = ("单元", "门")
ROOM_WORDS = ("室", "号", "户")


def spellings(value: str, words: tuple[str, ...]) -> list[str]:
    """The ways one building number, unit or room is typed: bare and with each of its words (2, 2单元, 2门), so
    that a lookup finds it however it was entered; `building_text` and `address_text` read them all as one. A
    space before the word is one more way (`clean_label` keeps inner spaces): "1 单元" and "501 室" were
    stored as a second household of flat 1/501, and the home got every notice twice."""
    bare = next((value[:-len(w)] for w in words if value.endswith(w) and len(value) > len(w)), value).rstrip()
    return [bare, *(bare + w for w in words), *(f"{bare} {w}" for w in words)]


def unit_text(unit: str) -> str:
    """A unit (entrance) as residents write it: 2 and 2单元 are both 2单元."""
    return _ending(str(clean_label(unit)), UNIT_WORDS, "单元")


def address_text(building: Building, household: Household) -> str:
    """A household's address as residents write it (燕子山小区3号楼2单元501室), for SMS texts and work orders. A
    number typed with its word already ("3号楼", "2单元", "501室") does not get it twice
    ("3号楼号楼2单元单元501室室")."""
    room = str(clean_label(household.room))
    return f"{building_text(building)}{unit_text(household.unit)}{_ending(room, ROOM_WORDS, '室')}"
