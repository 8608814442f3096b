"""Alembic migrations build the schema the models describe, on an empty SQLite and PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Boolean, DateTime, Engine, Integer, String, Uuid, column, insert, inspect, table, text
from sqlmodel import Session, col, func, select

from api import demo, migrate
from api.db import make_engine
from api.fieldwork.models import Visit
from api.network.models import Building, BuildingPublic, Household, HouseholdPublic, Station, StationPublic
from api.notes.models import Note
from api.notices import service as notices
from api.notices.models import Notice, NoticeTarget
from api.notices.sms import LoggingSender
from api.tables import include_object, metadata
from api.users.models import Role, User
from api.work_orders.models import WorkOrder
from sync.models import SyncState
from tests.conftest import BACKENDS, create_postgres_database, drop_postgres_database, make_settings


@pytest.fixture(params=BACKENDS)
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh' / 'steward.db'}"
        engine = make_engine(make_settings(url, tmp_path))
        yield engine
        engine.dispose()
        return
    url = create_postgres_database()
    engine = make_engine(make_settings(url, tmp_path))
    yield engine
    engine.dispose()
    drop_postgres_database(url)


def test_upgrade_creates_every_table_on_an_empty_database(empty_engine: Engine) -> None:
    assert migrate.current_revision(empty_engine) is None
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == migrate.head_revision()
    tables = set(inspect(empty_engine).get_table_names())
    assert set(metadata.tables) <= tables
    assert "alembic_version" in tables


# SQLite cannot reflect an expression index (users' lower(username)): compared on PostgreSQL only.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")
def test_migrations_match_the_models(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    with empty_engine.connect() as conn:
        opts = {"compare_type": True, "include_object": include_object(conn.dialect.name)}
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), metadata)
    assert diff == [], f"models and migrations differ; write a migration: {diff}"


def test_the_lookups_of_hot_paths_have_their_indexes(empty_engine: Engine) -> None:
    """Regression (0015): a visit's delete scanned every reading and note for the visit's links while its push
    held the change sequence; the late-order lists walked every closed order; the dashboard's counts and the
    transcripts' lists scanned whole tables."""
    migrate.upgrade(empty_engine)
    inspector = inspect(empty_engine)
    indexed = {(table, tuple(ix["column_names"])) for table in ("readings", "notes", "work_orders", "transcripts")
               for ix in inspector.get_indexes(table)}
    for wanted in [("readings", ("visit_id",)), ("notes", ("visit_id",)), ("notes", ("recorded_at",)),
                   ("work_orders", ("sla_due_at", "id")), ("work_orders", ("created_at",)),
                   ("transcripts", ("approved_at",)), ("transcripts", ("transcribed_at",))]:
        assert wanted in indexed, wanted


def test_upgrade_twice_is_a_no_op(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == migrate.head_revision()


def test_a_relative_target_is_behind_as_the_revision_it_counts_out_to() -> None:
    """A regression: `head-1` was behind a database at head-1 for `db upgrade` (which refused it as a step
    back), and `base+16` was not behind one at the head (`0017 -> 0017`, exit 0)."""
    head = migrate.head_revision()
    assert head is not None
    one_back = f"{int(head) - 1:04d}"
    assert not migrate.is_behind(one_back, "head-1") and migrate.is_behind(head, "head-1")
    assert not migrate.is_behind(one_back, f"base+{int(one_back)}") and migrate.is_behind(head, f"base+{int(one_back)}")
    assert not migrate.is_behind(head, "head-0") and not migrate.is_behind(one_back, "+1")
    assert migrate.is_behind("0002", "0001-1")  # base
    assert not migrate.is_behind(head, "head+1") and not migrate.is_behind(head, "base-1")  # Alembic answers those


# The users table as it was at 0010 (the model has columns added since).
USERS_0010 = table("users", *(column(name, type_) for name, type_ in (
    ("id", Uuid()), ("version", Integer()), ("created_at", DateTime(timezone=True)),
    ("updated_at", DateTime(timezone=True)), ("seq", Integer()), ("username", String()), ("full_name", String()),
    ("phone", String()), ("role", User.__table__.c.role.type), ("password_hash", String()),  # type: ignore[attr-defined]
    ("active", Boolean()))))


def test_names_that_differ_only_in_case_stop_the_upgrade_that_makes_them_one(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine, "0010")
    with empty_engine.begin() as conn:
        for name in ("bob", "BOB", "alice"):
            conn.execute(insert(USERS_0010).values(
                id=uuid.uuid4(), version=1, created_at=datetime.now(UTC), updated_at=datetime.now(UTC), seq=0,
                username=name, full_name="", phone="", role=Role.steward, password_hash="x", active=True))
    with pytest.raises(RuntimeError, match=r"differ only in case: bob \(2 users\)"):
        migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == "0010"  # nothing half-done
    with empty_engine.begin() as conn:
        conn.execute(text("UPDATE users SET username = 'bob2' WHERE username = 'BOB'"))
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == migrate.head_revision()


def test_a_database_with_data_goes_down_to_base_and_up_again(empty_engine: Engine) -> None:
    """Regressions: on SQLite, taking a database with rows below 0002 failed on "FOREIGN KEY constraint
    failed" (batch mode drops tables that rows refer to); on PostgreSQL, 0001's downgrade left its enum types
    behind, so the next upgrade failed on `type "role" already exists`."""
    migrate.upgrade(empty_engine)
    demo.generate(empty_engine, households=40, stewards=2, password="demo-password", seed=7, history=1)
    migrate.downgrade(empty_engine, "0002")
    migrate.downgrade(empty_engine, "base")
    assert migrate.current_revision(empty_engine) is None
    assert not set(metadata.tables) & set(inspect(empty_engine).get_table_names())
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == migrate.head_revision()
    if empty_engine.dialect.name == "sqlite":  # the foreign keys are on again after the migration
        with empty_engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_notices_sent_before_0009_are_not_sent_again_after_the_upgrade(empty_engine: Engine,
                                                                      tmp_path: Path) -> None:
    """Regression: 0009 added one delivery row per household for new sends; notices sent before it have none,
    and the periodic run's recovery of a crashed send took them for unplanned and texted every household
    again about last season's dates."""
    migrate.upgrade(empty_engine, "0008")
    sent_at = datetime.now(UTC) - timedelta(days=40)
    station, building = uuid.uuid4(), uuid.uuid4()
    with empty_engine.begin() as conn:
        conn.execute(insert(Station).values(id=station, code="HS-1", name="站", district="历下区"))
        conn.execute(insert(Building).values(id=building, station_id=station, community="燕子山小区", number="1"))
        conn.execute(insert(Household).values([
            {"id": uuid.uuid4(), "building_id": building, "unit": "1", "room": str(i), "phone": f"1380000000{i}",
             "area_m2": 80} for i in range(3)]))
        conn.execute(insert(Notice).values(id=uuid.uuid4(), target=NoticeTarget.building, building_id=building,
                                           service_phone="96133", water_fill_start=sent_at + timedelta(days=2),
                                           water_fill_end=sent_at + timedelta(days=3), sent_at=sent_at,
                                           sent_count=3))
    migrate.upgrade(empty_engine)
    sms = LoggingSender()
    settings = make_settings(empty_engine.url.render_as_string(hide_password=False), tmp_path)
    with Session(empty_engine) as session:
        assert notices.send_due(session=session, settings=settings, sender=sms) == (0, 0)
    assert sms.sent == []


def test_0012_gives_notes_the_household_of_their_visit_or_work_order(empty_engine: Engine) -> None:
    """Sync's note create did not store the household its links name (REST did): 0012 fills it in and stamps
    the notes with a new change number, so the next pull brings them to the stewards who may now see them."""
    migrate.upgrade(empty_engine)
    demo.generate(empty_engine, households=20, stewards=1, password="demo-password", seed=3, history=1)
    with Session(empty_engine, expire_on_commit=False) as session:
        visit = session.exec(select(Visit)).first()
        order = session.exec(select(WorkOrder).where(col(WorkOrder.household_id) != visit.household_id)).first()
        owner = session.exec(select(User)).first()
        assert visit is not None and order is not None and owner is not None
        notes = [Note(owner_id=owner.id, audio_sha256="a" * 64, duration_s=1.0, recorded_at=datetime.now(UTC),
                      **link) for link in ({"visit_id": visit.id}, {"work_order_id": order.id}, {})]
        session.add_all(notes)
        session.commit()
        ids = [n.id for n in notes]
        last_seq = session.exec(select(func.max(Note.seq))).one()
        seq_before = session.exec(select(SyncState.value).where(SyncState.name == "seq")).one()
    migrate.downgrade(empty_engine, "0011")
    migrate.upgrade(empty_engine)
    with Session(empty_engine) as session:
        by_visit, by_order, unlinked = (session.get(Note, id) for id in ids)
        assert by_visit is not None and by_order is not None and unlinked is not None
        assert (by_visit.household_id, by_order.household_id) == (visit.household_id, order.household_id)
        assert unlinked.household_id is None and unlinked.version == 1
        assert by_visit.version == by_order.version == 2 and by_visit.seq == by_order.seq == seq_before + 1
        assert by_visit.seq > last_seq


def test_two_upgrades_at_once_both_succeed(empty_engine: Engine) -> None:
    """Regression: API containers starting together each ran `steward db upgrade`; on PostgreSQL the second
    failed on the first one's tables (duplicate type alembic_version). It now waits for the first."""
    from tests.utils.threads import errors_running_together

    errors = errors_running_together(lambda: migrate.upgrade(empty_engine))
    if empty_engine.dialect.name == "sqlite" and errors:  # SQLite: the second may find the file locked
        assert all("locked" in str(e) for e in errors), errors
    else:
        assert errors == []
    assert migrate.current_revision(empty_engine) == migrate.head_revision()


def test_0014_cleans_the_names_stored_before_input_was_cleaned(empty_engine: Engine) -> None:
    """Regression: rows stored before the cleaning kept `５０１ `: not found by `q=501`, a second `501` was
    accepted beside them, and an SMS read `３号楼 号楼`. 0014 cleans them and stamps them for the devices;
    two rows that would become one (made before the cleaning) are left as they are, for the office."""
    migrate.upgrade(empty_engine, "0013")
    with Session(empty_engine, expire_on_commit=False) as session:
        station = Station(code="HS-OLD-01 ", name="旧站", district="历下区")
        session.add(station)
        session.flush()
        building = Building(station_id=station.id, community="旧改小区 ", number="３号楼 ")
        session.add(building)
        session.flush()
        legacy = Household(building_id=building.id, unit="１", room="５０１ ", resident_name="张\u200b三", area_m2=80)
        twin_a = Household(building_id=building.id, unit="2", room="６０２", area_m2=80)
        twin_b = Household(building_id=building.id, unit="2", room="602", area_m2=80)
        session.add_all([legacy, twin_a, twin_b])
        session.commit()
        seq_before = session.exec(select(SyncState.value).where(SyncState.name == "seq")).one()
    migrate.upgrade(empty_engine)
    with Session(empty_engine) as session:
        s, b, h, a, twin = (session.get(model, row.id) for model, row in (
            (Station, station), (Building, building), (Household, legacy), (Household, twin_a), (Household, twin_b)))
        assert s is not None and b is not None and h is not None and a is not None and twin is not None
        assert (s.code, b.community, b.number) == ("HS-OLD-01", "旧改小区", "3号楼")
        assert (h.unit, h.room, h.resident_name) == ("1", "501", "张三")
        assert h.version == 2 and h.seq == seq_before + 1
        assert (a.room, a.version, twin.room) == ("６０２", 1, "602")  # two rows for one flat: left for the office


def _stored(session: Session, station: Station, building: Building) -> Building:
    """A station and one of its buildings, as an old release stored them (flushed)."""
    session.add(station)
    session.flush()
    building.station_id = station.id
    session.add(building)
    session.flush()
    return building


def test_0014_leaves_a_required_name_that_would_clean_to_nothing(empty_engine: Engine) -> None:
    """Regression: a unit typed as a lone full-width space (or a station named by a zero-width space) became
    `""`, which the API's own models refuse: every list holding the row answered 500. Such rows stay as
    stored, for the office to correct."""
    migrate.upgrade(empty_engine, "0013")
    with Session(empty_engine, expire_on_commit=False) as session:
        station = Station(code="HS-OLD-02", name="\u200b", district="历下区 ")
        building = _stored(session, station, Building(community="旧改小区", number="\u3000"))
        household = Household(building_id=building.id, unit="\u3000", room="１０１", area_m2=80)
        session.add(household)
        session.commit()
    migrate.upgrade(empty_engine)
    with Session(empty_engine) as session:
        s, b, h = (session.get(model, row.id) for model, row in
                   ((Station, station), (Building, building), (Household, household)))
        assert s is not None and b is not None and h is not None
        assert (s.name, s.district, s.version) == ("\u200b", "历下区 ", 1)
        assert (b.number, b.version) == ("\u3000", 1)
        assert (h.unit, h.room, h.version) == ("\u3000", "１０１", 1)
        StationPublic.model_validate(s)  # what the API answers with: it would refuse an empty name or unit
        BuildingPublic.model_validate(b)
        HouseholdPublic.model_validate(h)


def test_0014_leaves_a_value_that_would_clean_longer_than_its_column(empty_engine: Engine) -> None:
    """Regression (review): NFKC writes `⑴` as `(1)`, so a room `1201⑴⑵⑶` the old API took (7 of 10
    characters) cleaned to 13: PostgreSQL refused the update and the whole upgrade failed; SQLite stored it, and
    every list holding the household answered 500. Such rows stay as stored, for the office to correct."""
    migrate.upgrade(empty_engine, "0013")
    with Session(empty_engine, expire_on_commit=False) as session:
        building = _stored(session, Station(code="HS-OLD-03", name="旧站", district="历下区"),
                           Building(community="旧改小区", number="12"))
        long = Household(building_id=building.id, unit="1", room="1201⑴⑵⑶", area_m2=80)
        fine = Household(building_id=building.id, unit="２", room="３０１ ", area_m2=80)
        session.add_all([long, fine])
        session.commit()
    migrate.upgrade(empty_engine)
    with Session(empty_engine) as session:
        h, f = session.get(Household, long.id), session.get(Household, fine.id)
        assert h is not None and f is not None
        assert (h.room, h.version) == ("1201⑴⑵⑶", 1)
        assert (f.unit, f.room, f.version) == ("2", "301", 2)  # the others of the table are cleaned
        HouseholdPublic.model_validate(h)


def test_0013_is_not_undone_while_visits_name_photos(empty_engine: Engine) -> None:
    """Regression: going below 0013 dropped every photo's and signature's link without a word to devices."""
    migrate.upgrade(empty_engine)
    demo.generate(empty_engine, households=10, stewards=1, password="demo-password", seed=3, history=1)
    with Session(empty_engine) as session:
        visit = session.exec(select(Visit)).first()
        assert visit is not None
        visit.photos = ["a" * 64]
        session.add(visit)
        session.commit()
    with pytest.raises(RuntimeError, match="name photos or signatures"):
        migrate.downgrade(empty_engine, "0012")
    assert migrate.current_revision(empty_engine) == migrate.head_revision()


def test_an_upgrade_that_cannot_lock_a_table_gives_up_instead_of_stalling_readers(
        empty_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: on PostgreSQL 0013's ALTER TABLE waited without limit behind an open transaction, and every
    new read of visits (sync pulls) queued behind it for as long."""
    if empty_engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no table locks to wait for")
    migrate.upgrade(empty_engine, "0012")
    monkeypatch.setattr(migrate, "LOCK_TIMEOUT_S", 1)
    monkeypatch.setattr(migrate, "LOCK_TRIES", 2)
    with empty_engine.connect() as reader:
        reader.execute(text("SELECT count(*) FROM visits"))  # a long transaction holding visits
        with pytest.raises(RuntimeError, match="Could not lock a table"):
            migrate.upgrade(empty_engine)
        reader.rollback()
    assert migrate.current_revision(empty_engine) == "0012"
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == migrate.head_revision()
