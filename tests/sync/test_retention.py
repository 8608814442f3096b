"""Tombstone retention: expired deletes are purged, older cursors get a reset, and a reset never loops."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlmodel import Session, func, select

from api.db import utcnow
from api.fieldwork.models import Visit
from api.settings import Settings
from sync import pull as pull_module
from sync.models import ScopeEvent, SyncConflict, Tombstone
from sync.retention import maybe_purge, purge
from tests.sync.conftest import District, autocommit, server_rows
from tests.sync.device import Device


def _count(engine: Engine, model: type) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(model)).one()  # type: ignore[call-overload]


def _purge_later(engine: Engine, settings: Settings, days: float) -> dict[str, int]:
    with Session(engine) as s:
        return purge(session=s, settings=settings, now=utcnow() + timedelta(days=days))


def test_a_cursor_older_than_the_retention_window_gets_a_reset(client: TestClient, district: District,
                                                               device: Callable[..., Device], engine: Engine) -> None:
    d, settings = district, district.settings
    old = device(d.steward1, "old")
    old.pull()
    author = device(d.steward1, "author")
    author.pull()
    author.delete("readings", str(d.reading1.id))
    author.push()
    author.pull()
    assert _count(engine, Tombstone) == 1
    # within the window nothing is purged and the old cursor just gets the delete
    assert _purge_later(engine, settings, settings.sync_tombstone_retention_days - 1)["tombstones"] == 0
    within = device(d.steward1, "within", cursor=old.cursor, rows=old.snapshot())
    page = within.pull_page()
    assert not page["reset"] and page["changes"]["readings"]["deletes"] == [str(d.reading1.id)]
    # after the window the tombstone is gone: the old cursor cannot know what it missed
    result = _purge_later(engine, settings, settings.sync_tombstone_retention_days + 1)
    assert result["tombstones"] == 1 and result["scope_events"] >= 1
    assert _count(engine, Tombstone) == 0 and _count(engine, ScopeEvent) == 0
    page = old.pull_page(limit=2)
    assert page["reset"]
    old.pull(limit=2)
    assert old.resets == 1
    assert old.rows == server_rows(client, d.headers(d.steward1))
    assert str(d.reading1.id) not in old.rows["readings"]
    # the new cursor is past the purge: no second reset
    assert not old.pull_page()["reset"]
    # and a device that synced after the delete is not disturbed
    assert not author.pull_page()["reset"]


def test_a_reset_snapshot_finishes_even_while_purges_run(client: TestClient, district: District,
                                                         device: Callable[..., Device], engine: Engine) -> None:
    d = district
    old = device(d.steward1)
    old.pull()
    other = device(d.supervisor)
    other.delete("notes", str(d.note1.id))
    other.push()
    _purge_later(engine, d.settings, d.settings.sync_tombstone_retention_days + 1)
    pages = 0
    while True:
        page = old.pull_page(limit=1)
        pages += 1
        assert page["reset"] == (pages == 1)
        if pages <= 6:  # new deletes and purges of old ones happen while the device pages
            reading = other.create("readings", household_id=str(d.h1a.id), taken_at="2026-12-01T08:00:00+00:00",
                                   temp_c=18)
            other.push()
            other.delete("readings", reading)
            other.push()
            _purge_later(engine, d.settings, 0)
        if not page["has_more"]:
            break
        assert pages < 100
    assert old.resets == 1
    old.pull()
    assert old.rows == server_rows(client, d.headers(d.steward1))


def test_purging_runs_at_most_once_per_interval(district: District, engine: Engine) -> None:
    settings = district.settings
    now = utcnow()
    with Session(engine) as s:
        assert maybe_purge(session=s, settings=settings, now=now)  # never purged before
    with Session(engine) as s:
        assert not maybe_purge(session=s, settings=settings, now=now + timedelta(minutes=1))
    later = now + timedelta(minutes=settings.sync_purge_interval_minutes + 1)
    with Session(engine) as s:
        assert maybe_purge(session=s, settings=settings, now=later)


def test_pulls_purge_expired_tombstones_by_themselves(client: TestClient, district: District,
                                                      device: Callable[..., Device], engine: Engine) -> None:
    from api.app import create_app

    d = district
    author = device(d.supervisor)
    author.delete("readings", str(d.reading1.id))
    author.push()
    with Session(engine) as s:
        for tomb in s.exec(select(Tombstone)).all():
            tomb.deleted_at = utcnow() - timedelta(days=d.settings.sync_tombstone_retention_days + 1)
            s.add(tomb)
        s.commit()
    deletes: list[bool] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("DELETE"):
            deletes.append(autocommit(conn))

    app = create_app(d.settings.model_copy(update={"sync_purge_interval_minutes": 0.0001}), engine=engine)
    event.listen(engine, "before_cursor_execute", record)
    try:
        with TestClient(app) as later:
            fresh = Device(http=later, headers=d.headers(d.steward1))
            fresh.pull()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert _count(engine, Tombstone) == 0
    # The pull reads outside a transaction; its purge (the claim, the deletes, the new purge position) is one.
    assert deletes and not any(deletes)


def test_a_purge_of_the_seq_a_cursor_stopped_inside_gets_a_reset(client: TestClient, district: District,
                                                                  device: Callable[..., Device],
                                                                  engine: Engine) -> None:
    """Regression: a page boundary inside one seq (three deletes of one push) left the cursor at that seq;
    purging exactly it was not a reset, and the two deletes not yet read never arrived."""
    d = district
    office = device(d.supervisor, "office")
    office.pull()
    ids = [office.create("readings", household_id=str(d.h1a.id), taken_at="2026-12-01T08:00:00+00:00",
                         temp_c=18 + i) for i in range(3)]
    office.push()
    one = device(d.steward1, "one")
    one.pull()
    assert set(ids) <= set(one.rows["readings"])
    for rid in ids:
        office.delete("readings", rid)
    office.push()  # three tombstones with one seq
    page = one.pull_page(limit=1)
    assert page["has_more"] and sum(len(c["deletes"]) for c in page["changes"].values()) == 1
    with Session(engine) as s:  # the device stays away past the retention window
        purge(session=s, settings=d.settings,
              now=utcnow() + timedelta(days=d.settings.sync_tombstone_retention_days + 1))
    one.pull()
    assert one.resets == 1 and one.rows == server_rows(client, d.headers(d.steward1))


def test_a_purge_that_commits_while_a_pull_reads_gets_a_reset(client: TestClient, district: District,
                                                              device: Callable[..., Device], engine: Engine,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a pull checked its cursor against the purge position, then read the tombstones, each
    statement on its own snapshot. A purge (another pull's) that committed in between took tombstones the
    cursor had not read, and the page was an ordinary delta without them: the deleted rows stayed on the
    device for good."""
    d = district
    old = device(d.steward1, "old")
    old.pull()
    author = device(d.supervisor, "author")
    author.delete("readings", str(d.reading1.id))
    author.delete("notes", str(d.note1.id))
    author.push()
    delta_step = pull_module._delta_step
    purged: list[dict[str, int]] = []

    def purge_first(*args: Any) -> Any:
        if not purged:  # after the pull's checks, before its reads: the device stayed away past the window
            purged.append(_purge_later(engine, d.settings, d.settings.sync_tombstone_retention_days + 1))
        return delta_step(*args)

    monkeypatch.setattr(pull_module, "_delta_step", purge_first)
    page = old.pull_page()
    assert purged and purged[0]["tombstones"] == 2
    assert page["reset"]
    old.pull()
    assert old.resets == 1
    assert str(d.reading1.id) not in old.rows["readings"] and str(d.note1.id) not in old.rows["notes"]
    assert old.rows == server_rows(client, d.headers(d.steward1))


def test_a_deleted_row_stays_deleted_after_its_tombstone_is_purged(client: TestClient, district: District,
                                                                   engine: Engine) -> None:
    """Regression: once the retention window purged a delete's tombstone, a device's queued full write
    (upsert, base_version 1) re-created the row. A missing row with a base_version was deleted here."""
    d = district
    phone = Device(http=client, headers=d.headers(d.steward1), name="phone")
    phone.pull()
    visit_id = phone.create("visits", household_id=str(d.h1a.id), arrived_at="2026-12-01T08:00:00+00:00",
                            actions="first")
    assert phone.push()["results"][0]["status"] == "applied"
    office = Device(http=client, headers=d.headers(d.supervisor), name="office")
    office.pull()
    office.delete("visits", visit_id)
    assert office.push()["results"][0]["status"] == "applied"
    upsert = {"mutation_id": 99, "table": "visits", "op": "upsert", "id": visit_id, "base_version": 1,
              "fields": {"household_id": str(d.h1a.id), "arrived_at": "2026-12-01T08:00:00+00:00",
                         "actions": "edited offline"}}
    for mutation_id in (99, 100):  # within the window (tombstone), then after it (purged)
        if mutation_id == 100:
            with Session(engine) as session:
                purge(session=session, settings=d.settings,
                      now=utcnow() + timedelta(days=d.settings.sync_tombstone_retention_days + 1))
                assert session.exec(select(func.count()).select_from(Tombstone)).one() == 0
        result = client.post("/api/v1/sync/push", json=phone.push_body([upsert | {"mutation_id": mutation_id}]),
                             headers=d.headers(d.steward1)).json()["results"][0]
        assert (result["status"], result["reason"]) == ("conflict", "deleted"), result
    with Session(engine) as session:
        assert session.get(Visit, uuid.UUID(visit_id)) is None
    # a row the device creates (no base_version) is still created
    create = upsert | {"mutation_id": 101, "id": str(uuid.uuid4()), "base_version": None}
    result = client.post("/api/v1/sync/push", json=phone.push_body([create]),
                         headers=d.headers(d.steward1)).json()["results"][0]
    assert result["status"] == "applied", result


def test_conflict_lines_reviewed_before_their_window_are_purged_and_unreviewed_ones_kept(
        district: District, engine: Engine) -> None:
    """Regression: the conflict log was never trimmed; every field two devices wrote stayed a row forever."""
    d = district
    now = utcnow()
    window = timedelta(days=d.settings.sync_conflict_retention_days)

    def line(reviewed_at: Any) -> SyncConflict:
        return SyncConflict(created_at=now - window * 2, user_id=d.steward1.id, client_id=uuid.uuid4(), mutation_id=1,
                            table_name="visits", row_id=uuid.uuid4(), field="findings", kind="field",
                            server_value="a", device_value="b", winner="server", reviewed_at=reviewed_at,
                            reviewed_by_id=d.supervisor.id if reviewed_at else None)

    lines = {"long ago": line(now - window - timedelta(days=1)), "lately": line(now - window + timedelta(days=1)),
             "never": line(None)}
    with Session(engine) as s:
        s.add_all(lines.values())
        s.commit()
        ids = {name: row.id for name, row in lines.items()}
        assert purge(session=s, settings=d.settings, now=now)["conflicts"] == 1
    with Session(engine) as s:
        kept = set(s.exec(select(SyncConflict.id)).all())
    assert kept == {ids["lately"], ids["never"]}
