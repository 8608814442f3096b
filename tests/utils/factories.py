"""Factories that build rows directly in the database, and helpers to act as a user."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlmodel import Session

from api.db import utcnow
from api.fieldwork.models import Reading, Visit
from api.network.models import Building, Household, Station
from api.notes.models import Note
from api.notices.models import Notice, NoticeTarget
from api.security import create_access_token, hash_password
from api.settings import Settings
from api.users.models import GridBuilding, Role, User
from api.work_orders.models import Category, Priority, Status, WorkOrder

_seq = itertools.count(1)
PASSWORD = "correct-horse-battery"
_PASSWORD_HASH = hash_password(PASSWORD)


def make_station(session: Session, **kw: Any) -> Station:
    n = next(_seq)
    station = Station(**({"code": f"HS-T{n:05d}", "name": f"测试换热站{n}", "district": "历下区"} | kw))
    session.add(station)
    session.commit()
    return station


def make_building(session: Session, station: Station | None = None, **kw: Any) -> Building:
    station = station or make_station(session)
    n = next(_seq)
    building = Building(**({"station_id": station.id, "community": "燕子山小区", "number": str(n)} | kw))
    session.add(building)
    session.commit()
    return building


def make_household(session: Session, building: Building | None = None, **kw: Any) -> Household:
    building = building or make_building(session)
    n = next(_seq)
    household = Household(**({"building_id": building.id, "unit": "1", "room": f"{n}", "resident_name": "王秀英",
                              "phone": "13800000000", "area_m2": 88.5} | kw))
    session.add(household)
    session.commit()
    return household


def make_user(session: Session, role: Role = Role.steward, grid: list[Building] | None = None,
              **kw: Any) -> User:
    n = next(_seq)
    user = User(**({"username": f"{role.value}{n}", "role": role, "password_hash": _PASSWORD_HASH} | kw))
    session.add(user)
    session.flush()
    for b in grid or []:
        session.add(GridBuilding(user_id=user.id, building_id=b.id))
    session.commit()
    return user


def make_work_order(session: Session, household: Household, *, status: Status = Status.new,
                    assignee: User | None = None, **kw: Any) -> WorkOrder:
    order = WorkOrder(**({"household_id": household.id, "category": Category.not_warm, "priority": Priority.normal,
                          "status": status, "assignee_id": assignee.id if assignee else None,
                          "sla_due_at": utcnow() + timedelta(hours=24)} | kw))
    session.add(order)
    session.commit()
    return order


def auth(settings: Settings, user: User) -> dict[str, str]:
    """Headers that act as this user."""
    token, _ = create_access_token(settings=settings, user_id=user.id, role=user.role.value, epoch=user.token_epoch)
    return {"Authorization": f"Bearer {token}"}


def random_id() -> str:
    return str(uuid.uuid4())


def make_visit(session: Session, household: Household, steward: User, **kw: Any) -> Visit:
    visit = Visit(**({"household_id": household.id, "steward_id": steward.id,
                      "arrived_at": utcnow() - timedelta(minutes=30)} | kw))
    session.add(visit)
    session.commit()
    return visit


def make_reading(session: Session, household: Household, user: User | None = None, **kw: Any) -> Reading:
    reading = Reading(**({"household_id": household.id, "taken_at": utcnow(), "temp_c": 19.5,
                          "taken_by_id": user.id if user else None} | kw))
    session.add(reading)
    session.commit()
    return reading


def make_note(session: Session, owner: User, **kw: Any) -> Note:
    note = Note(**({"owner_id": owner.id, "audio_sha256": f"{next(_seq):064x}", "duration_s": 12.5,
                    "recorded_at": utcnow()} | kw))
    session.add(note)
    session.commit()
    return note


def make_notice(session: Session, building: Building | None = None, station: Station | None = None,
                **kw: Any) -> Notice:
    target = NoticeTarget.station if station is not None else NoticeTarget.building
    start = utcnow() + timedelta(days=3)
    notice = Notice(**({"target": target, "building_id": building.id if building else None,
                        "station_id": station.id if station else None, "water_fill_start": start,
                        "water_fill_end": start + timedelta(hours=8), "service_phone": "96133"} | kw))
    session.add(notice)
    session.commit()
    return notice


@dataclass
class World:
    """Two stewards with one building each on one station, and the office: the usual scope test."""

    settings: Settings
    station: Station
    building_a: Building
    building_b: Building
    household_a: Household
    household_b: Household
    steward_a: User
    steward_b: User
    supervisor: User
    admin: User

    def headers(self, user: User) -> dict[str, str]:
        return auth(self.settings, user)


def make_world(session: Session, settings: Settings) -> World:
    station = make_station(session)
    building_a = make_building(session, station, community="燕子山小区")
    building_b = make_building(session, station, community="文化东路小区")
    return World(
        settings=settings, station=station, building_a=building_a, building_b=building_b,
        household_a=make_household(session, building_a, resident_name="王秀英", phone="13800000001"),
        household_b=make_household(session, building_b, resident_name="李桂兰", phone="13800000002"),
        steward_a=make_user(session, Role.steward, grid=[building_a]),
        steward_b=make_user(session, Role.steward, grid=[building_b]),
        supervisor=make_user(session, Role.supervisor),
        admin=make_user(session, Role.admin),
    )
