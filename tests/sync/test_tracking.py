"""Change tracking on flush: one sequence number per transaction, field versions, tombstones, scope events."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, delete, update
from sqlmodel import Session, select

from api.db import utcnow
from api.fieldwork.models import Reading, Visit
from api.network.models import Household
from api.users.models import GridBuilding
from sync import registry, tracking
from sync.models import ScopeEvent, Tombstone
from sync.tracking import SEQ, read_counter
from tests.sync.conftest import District


def _counter(engine: Engine) -> int:
    with engine.connect() as conn:
        return read_counter(conn, SEQ)


def test_every_row_of_a_transaction_gets_the_same_new_number(district: District, engine: Engine) -> None:
    before = _counter(engine)
    with Session(engine) as s:
        rows = [Reading(household_id=district.h1a.id, taken_at=utcnow(), temp_c=20 + n) for n in range(3)]
        s.add_all(rows)
        s.flush()
        household = s.get(Household, district.h1a.id)
        assert household is not None
        household.phone = "13800001111"
        s.add(household)
        s.commit()
        assert {r.seq for r in rows} == {household.seq} == {before + 1}
    with Session(engine) as s:
        s.add(Reading(household_id=district.h1a.id, taken_at=utcnow(), temp_c=20))
        s.commit()
    assert _counter(engine) == before + 2


def test_a_transaction_that_writes_nothing_synced_takes_no_number(district: District, engine: Engine) -> None:
    before = _counter(engine)
    with Session(engine) as s:
        user = s.get(type(district.admin), district.admin.id)
        assert user is not None
        user.full_name = "new name"
        s.add(user)
        s.commit()
    assert _counter(engine) == before


def test_field_versions_record_when_and_by_whom_each_field_changed(district: District, engine: Engine) -> None:
    client = uuid.uuid4()
    with Session(engine) as s:
        visit = s.get(Visit, district.visit1.id)
        assert visit is not None and visit.field_versions is None
        visit.actions = "first"
        s.add(visit)
        s.commit()
        assert visit.field_versions == {"actions": [2, None]}
        s.info[tracking.WRITER] = client
        visit.indoor_temp_c = 17.0
        visit.actions = "first"  # the same value: not a change
        s.add(visit)
        s.commit()
        # Not a target of the push: a side effect, the server's write (as for origin_client_id).
        assert visit.field_versions == {"actions": [2, None], "indoor_temp_c": [3, None]}
        assert visit.origin_client_id is None  # only a push's own targets are marked
        s.info[tracking.TARGETS] = {("visits", visit.id)}
        visit.indoor_temp_c = 18.0
        s.add(visit)
        s.commit()
        assert visit.field_versions == {"actions": [2, None], "indoor_temp_c": [4, str(client)]}
        assert visit.origin_client_id == client


def test_a_number_taken_inside_a_rolled_back_savepoint_is_taken_again(district: District, engine: Engine) -> None:
    before = _counter(engine)
    with Session(engine, expire_on_commit=False) as s:
        savepoint = s.begin_nested()
        s.add(Reading(household_id=district.h1a.id, taken_at=utcnow(), temp_c=20))
        s.flush()
        savepoint.rollback()
        kept = Reading(household_id=district.h1a.id, taken_at=utcnow(), temp_c=21)
        s.add(kept)
        s.commit()
    assert kept.seq == before + 1 == _counter(engine)
    with Session(engine, expire_on_commit=False) as s:
        savepoint = s.begin_nested()
        inner = Reading(household_id=district.h1a.id, taken_at=utcnow(), temp_c=22)
        s.add(inner)
        s.flush()
        savepoint.commit()
        outer = Reading(household_id=district.h1a.id, taken_at=utcnow(), temp_c=23)
        s.add(outer)
        s.commit()
    assert inner.seq == outer.seq == before + 2 == _counter(engine)


def _fresh_row(district: District, name: str) -> object:
    """A row of this table that nothing refers to, so deleting it is legal."""
    from api.network.models import Building, Station
    from api.notes.models import Note
    from api.notices.models import Notice, NoticeTarget
    from api.proactive.models import CampaignDelivery
    from api.work_orders.models import Category, WorkOrder

    now, d = utcnow(), district
    return {
        "stations": lambda: Station(code=f"HS-X{uuid.uuid4().hex[:6]}", name="新站"),
        "buildings": lambda: Building(station_id=d.station.id, community="新小区", number=uuid.uuid4().hex[:6]),
        "households": lambda: Household(building_id=d.b1.id, unit="9", room=uuid.uuid4().hex[:6], area_m2=60),
        "work_orders": lambda: WorkOrder(household_id=d.h1a.id, category=Category.leak, sla_due_at=now,
                                         assignee_id=d.steward1.id),
        "visits": lambda: Visit(household_id=d.h1a.id, steward_id=d.steward1.id, arrived_at=now),
        "readings": lambda: Reading(household_id=d.h1a.id, taken_at=now, temp_c=18, taken_by_id=d.steward1.id),
        "notes": lambda: Note(owner_id=d.steward1.id, work_order_id=d.wo1.id, audio_sha256="c" * 64, duration_s=1,
                              recorded_at=now),
        "notices": lambda: Notice(target=NoticeTarget.station, station_id=d.station.id, water_fill_start=now,
                                  water_fill_end=now, service_phone="96133"),
        "notice_campaigns": lambda: _campaign(d),
        "campaign_deliveries": lambda: CampaignDelivery(campaign_id=_campaign(d, commit=True).id,
                                                        household_id=d.h1a.id),
    }[name]()


def _campaign(d: District, commit: bool = False) -> object:
    from sqlmodel import Session

    from api.proactive.models import Campaign, CampaignKind

    campaign = Campaign(station_id=d.station.id, season="2026-2027", kind=CampaignKind.water_fill, title="t",
                        bleed_instructions="b", service_phone="96133", event_start=utcnow())
    if commit:  # a delivery needs its campaign stored: use the district fixture's own session
        session = Session.object_session(d.station)
        assert session is not None
        session.add(campaign)
        session.commit()
    return campaign


EXPECTED_KEYS = {
    "stations": lambda d, row: {"station_id": row.id},
    "buildings": lambda d, row: {"building_id": row.id, "station_id": d.station.id},
    "households": lambda d, row: {"building_id": d.b1.id},
    "work_orders": lambda d, row: {"building_id": d.b1.id, "user_id": d.steward1.id, "work_order_id": row.id},
    "visits": lambda d, row: {"building_id": d.b1.id, "user_id": d.steward1.id},
    "readings": lambda d, row: {"building_id": d.b1.id, "user_id": d.steward1.id},
    "notes": lambda d, row: {"building_id": d.b1.id, "user_id": d.steward1.id, "work_order_id": d.wo1.id},
    "notices": lambda d, row: {"building_id": None, "station_id": d.station.id},
    "notice_campaigns": lambda d, row: {"station_id": d.station.id},
    "campaign_deliveries": lambda d, row: {"building_id": d.b1.id},
}


@pytest.mark.parametrize("name", [t.name for t in registry.TABLES])
def test_deleting_any_synced_row_writes_a_routable_tombstone(district: District, engine: Engine, name: str) -> None:
    with Session(engine, expire_on_commit=False) as s:
        row = _fresh_row(district, name)
        s.add(row)
        s.commit()
        s.delete(row)
        s.commit()
    with Session(engine) as s:
        tomb = s.get(Tombstone, (name, row.id))  # type: ignore[attr-defined]
        assert tomb is not None and tomb.seq == _counter(engine)
        expected = EXPECTED_KEYS[name](district, row)
        assert {k: getattr(tomb, k) for k in ("building_id", "station_id", "user_id", "work_order_id")} == (
            {"building_id": None, "station_id": None, "user_id": None, "work_order_id": None} | expected)


def test_route_keys_follow_the_rows_scope(district: District, session: Session) -> None:
    keys = registry.route_keys(session, registry.BY_NAME["work_orders"], district.wo1)
    assert keys == {"building_id": district.b1.id, "user_id": district.steward1.id, "work_order_id": district.wo1.id}
    keys = registry.route_keys(session, registry.BY_NAME["notes"], district.note1)
    assert keys["building_id"] == district.b1.id and keys["user_id"] == district.steward1.id
    keys = registry.route_keys(session, registry.BY_NAME["notices"], district.notice2)
    assert keys == {"building_id": None, "station_id": district.station2.id}


def test_bulk_deletes_through_a_session_are_logged(district: District, engine: Engine) -> None:
    with Session(engine) as s:
        s.exec(delete(GridBuilding).where(GridBuilding.user_id == district.steward1.id))  # type: ignore[call-overload]
        s.exec(delete(Reading).where(Reading.household_id == district.h1a.id))  # type: ignore[call-overload]
        s.commit()
    seq = _counter(engine)
    with Session(engine) as s:
        events = s.exec(select(ScopeEvent).where(ScopeEvent.seq == seq)).all()
        # the building, and its station as it stands now (its notices are found again through it)
        assert sorted((e.user_id, e.kind, e.key_id) for e in events) == [
            (district.steward1.id, "building", district.b1.id), (district.steward1.id, "station", district.station.id)]
        tomb = s.get(Tombstone, ("readings", district.reading1.id))
        assert tomb is not None and tomb.seq == seq and tomb.building_id == district.b1.id


def test_bulk_updates_of_synced_rows_are_refused(district: District, engine: Engine) -> None:
    with Session(engine) as s, pytest.raises(tracking.UntrackedWrite, match="load the rows"):
        s.exec(update(Visit).values(actions="x"))  # type: ignore[call-overload]
