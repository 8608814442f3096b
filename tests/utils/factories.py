"""Factories that build rows directly in the database, and helpers to act as a user."""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta
from typing import Any

from sqlmodel import Session

from api.db import utcnow
from api.network.models import Building, Household, Station
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
    token, _ = create_access_token(settings=settings, user_id=user.id, role=user.role.value)
    return {"Authorization": f"Bearer {token}"}


def random_id() -> str:
    return str(uuid.uuid4())
