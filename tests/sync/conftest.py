"""A small district for sync tests: three buildings on two stations, two stewards, the office."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from api.db import utcnow
from api.fieldwork.models import Reading, Visit
from api.network.models import Building, Household, Station
from api.notes.models import Note
from api.notices.models import Notice, NoticeTarget
from api.settings import Settings
from api.users.models import Role, User
from api.work_orders.models import Status, WorkOrder
from tests.sync.device import Device
from tests.utils.factories import auth, make_building, make_household, make_station, make_user, make_work_order


@dataclass
class District:
    settings: Settings
    station: Station
    station2: Station
    b1: Building  # steward1's grid
    b2: Building  # steward2's grid
    b3: Building  # nobody's grid, on station2
    h1a: Household
    h1b: Household
    h2a: Household
    h3a: Household
    steward1: User
    steward2: User
    supervisor: User
    admin: User
    wo1: WorkOrder  # h1a, assigned to steward1
    wo2: WorkOrder  # h2a, assigned to steward2, in progress
    wo3: WorkOrder  # h3a, new
    visit1: Visit  # steward1 at h1a for wo1
    reading1: Reading
    note1: Note
    notice1: Notice  # building b1
    notice2: Notice  # station2

    def headers(self, user: User) -> dict[str, str]:
        return auth(self.settings, user)


def build_district(session: Session, settings: Settings) -> District:
    station, station2 = make_station(session), make_station(session)
    b1, b2 = make_building(session, station), make_building(session, station)
    b3 = make_building(session, station2)
    h1a, h1b = make_household(session, b1), make_household(session, b1, sensitive=True)
    h2a, h3a = make_household(session, b2), make_household(session, b3)
    steward1 = make_user(session, Role.steward, grid=[b1])
    steward2 = make_user(session, Role.steward, grid=[b2])
    supervisor, admin = make_user(session, Role.supervisor), make_user(session, Role.admin)
    wo1 = make_work_order(session, h1a, status=Status.assigned, assignee=steward1)
    wo2 = make_work_order(session, h2a, status=Status.in_progress, assignee=steward2)
    wo3 = make_work_order(session, h3a)
    now = utcnow()
    visit1 = Visit(household_id=h1a.id, work_order_id=wo1.id, steward_id=steward1.id,
                   arrived_at=now - timedelta(hours=1), actions="bled radiators")
    reading1 = Reading(household_id=h1a.id, taken_at=now - timedelta(hours=1), temp_c=16.5, taken_by_id=steward1.id)
    note1 = Note(owner_id=steward1.id, household_id=h1a.id, audio_sha256="a" * 64, duration_s=3.0, recorded_at=now)
    notice1 = Notice(target=NoticeTarget.building, building_id=b1.id, water_fill_start=now + timedelta(days=1),
                     water_fill_end=now + timedelta(days=1, hours=8), service_phone="96133")
    notice2 = Notice(target=NoticeTarget.station, station_id=station2.id, water_fill_start=now + timedelta(days=1),
                     water_fill_end=now + timedelta(days=1, hours=8), service_phone="96133")
    session.add_all([visit1, reading1, note1, notice1, notice2])
    session.commit()
    return District(settings, station, station2, b1, b2, b3, h1a, h1b, h2a, h3a, steward1, steward2, supervisor,
                    admin, wo1, wo2, wo3, visit1, reading1, note1, notice1, notice2)


def autocommit(conn: Any) -> bool:
    """Whether a connection's driver runs each statement on its own, outside a transaction (psycopg's
    `autocommit`, sqlite3 with no isolation level)."""
    raw = conn.connection.dbapi_connection
    return bool(raw.autocommit) if conn.dialect.name == "postgresql" else raw.isolation_level is None


@pytest.fixture
def district(session: Session, settings: Settings) -> District:
    return build_district(session, settings)


@pytest.fixture
def device(client: TestClient, district: District) -> Callable[..., Device]:
    """Make a device for a user: `device(district.steward1, "phone")`."""

    def make(user: User, name: str = "device", **kw: Any) -> Device:
        return Device(http=client, headers=district.headers(user), name=name, **kw)

    return make


def server_rows(client: TestClient, headers: dict[str, str]) -> dict[str, dict[str, dict[str, Any]]]:
    """What a brand-new device of this user receives: the server's truth for that scope."""
    fresh = Device(http=client, headers=headers, name="fresh")
    fresh.pull()
    return fresh.rows
