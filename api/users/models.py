"""Users (admin, supervisor, steward) and stewards' grids (the buildings each one looks after)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, StrictBool, field_validator
from sqlalchemy import Index, func, text
from sqlmodel import Field, SQLModel

from api.db import Versioned, ts_field
from api.schemas import RequestBody, not_null, strip_text

GRID_MAX_BUILDINGS = 5000  # a grid's buildings in one request: creating a steward and setting a grid alike


class Role(StrEnum):
    admin = "admin"
    supervisor = "supervisor"
    steward = "steward"


class UserBase(SQLModel):
    username: str = Field(min_length=3, max_length=64, schema_extra={"pattern": r"^[A-Za-z0-9_.\-]+$"})
    full_name: str = Field(default="", max_length=100)
    phone: str = Field(default="", max_length=32)
    role: Role


class User(Versioned, UserBase, table=True):
    __tablename__ = "users"
    # One name whatever its case: `Admin` next to `admin` would be a look-alike account (and they would share
    # a sign-in lockout, which counts by the lower-cased name).
    __table_args__ = (Index("uq_users_username_lower", func.lower(text("username")), unique=True),)

    username: str = Field(max_length=64, unique=True, index=True)
    password_hash: str = Field(max_length=255)
    active: bool = True
    # Access tokens carry the epoch they were signed in; a new password or a disabled account moves it on, and
    # every token from before is refused (a lost handheld's token does not come back with a re-enabled account).
    token_epoch: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class GridBuilding(SQLModel, table=True):
    """One building in one steward's grid."""

    __tablename__ = "grid_buildings"

    user_id: uuid.UUID = Field(foreign_key="users.id", primary_key=True, ondelete="CASCADE")
    building_id: uuid.UUID = Field(foreign_key="buildings.id", primary_key=True, index=True,
                                   ondelete="CASCADE")
    assigned_at: datetime = ts_field(default_now=True)


class LoginThrottle(SQLModel, table=True):
    """Counters of sign-in attempts by key (`rate:<address>`, `user:<name>`, `ip:<address>`), shared by every
    process through the database; a row whose `locked_until` is ahead refuses sign-ins on that key."""

    __tablename__ = "login_throttle"

    key: str = Field(max_length=300, primary_key=True)
    count: int = Field(default=0)
    window_start: datetime = ts_field()
    locked_until: datetime | None = ts_field(nullable=True)
    expires_at: datetime = ts_field(index=True)


def not_blank_password(value: str | None) -> str | None:
    """Spaces count toward a password's length, but a password of spaces alone is refused."""
    if value is not None and not value.strip():
        raise ValueError("A password cannot be only spaces.")
    return value


STAFF_PHONE_PATTERN = r"^(\+?[0-9][0-9\- ]{2,31})?$"  # empty, or a number: 13800000000, 0531-8888-6666, 8001


def _clean_name(value: object) -> object:
    """A person's name as typed (full-width brackets kept, unlike `clean_label`), less invisible format
    characters, spaces at the ends and runs of spaces."""
    text = strip_text(value)
    return " ".join(text.split()) if isinstance(text, str) else text


def _staff_phone(value: str | None) -> str | None:
    """A staff member's number: digits, spaces and dashes after an optional `+`, or empty for none."""
    if value is not None and not re.fullmatch(STAFF_PHONE_PATTERN, value):
        raise ValueError("must be a phone number (digits, spaces, dashes, an optional leading +) or empty")
    return value


class UserCreate(UserBase, RequestBody):
    password: str = Field(min_length=8, max_length=128)
    _not_blank = field_validator("password")(not_blank_password)
    # A name of zero-width characters signed residents' SMS with nothing ("您的供暖管家\u200b，"); names and
    # numbers are stored without invisible characters, runs of spaces or spaces at the ends.
    _clean = field_validator("full_name", mode="before")(_clean_name)
    _strip = field_validator("phone", mode="before")(strip_text)
    _phone = field_validator("phone")(_staff_phone)
    grid: list[uuid.UUID] = Field(default_factory=list, max_length=GRID_MAX_BUILDINGS,
                                  description="Building ids (stewards only).")


class UserUpdate(RequestBody):
    full_name: str | None = Field(default=None, max_length=100)
    phone: str | None = Field(default=None, max_length=32)
    role: Role | None = None
    active: StrictBool | None = None  # "false" disabled the account
    password: str | None = Field(default=None, min_length=8, max_length=128)
    _not_blank = field_validator("password")(not_blank_password)
    # null was taken as "no change" (`{"active": null}` a 200 that changed nothing); as for work orders: 422
    _not_null = field_validator("full_name", "phone", "role", "active", "password")(not_null)
    _clean = field_validator("full_name", mode="before")(_clean_name)
    _strip = field_validator("phone", mode="before")(strip_text)
    _phone = field_validator("phone")(_staff_phone)


class UserPublic(UserBase):
    # What is stored, as it is: the create rules (pattern, lengths) are not checked on the way out. A name stored
    # before the pattern was enforced (`zhang wei`) made every users list, and a PATCH already committed, a 500.
    username: str
    full_name: str = ""
    phone: str = ""
    id: uuid.UUID
    version: int
    active: bool
    created_at: datetime


class UsersPublic(SQLModel):
    data: list[UserPublic]
    count: int


class GridUpdate(RequestBody):
    building_ids: list[uuid.UUID] = Field(max_length=GRID_MAX_BUILDINGS)


class GridPublic(SQLModel):
    user_id: uuid.UUID
    building_ids: list[uuid.UUID]


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    role: Role


__all__ = ["GridBuilding", "LoginThrottle", "Role", "Token", "User", "UserCreate", "UserPublic", "UserUpdate"]
