"""A batch answers the same on the push's fast path (every mutation applied in memory, one flush) as on its
savepoint path (a flush per mutation, taken when any mutation fails): regressions of a review, each run on
both paths (a reading of 13.0 degrees sends the batch down the savepoint path, `_fail_readings_at_13_degrees`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from api.work_orders.models import WorkOrder
from sync.models import SyncConflict
from tests.sync.conftest import District
from tests.sync.device import Device
from tests.sync.test_push import T0, _fail_readings_at_13_degrees, _statuses

PATHS = pytest.mark.parametrize("path", ["fast", "savepoints"])


def _failing_reading(district: District) -> dict[str, Any]:
    return {"table": "readings", "op": "upsert", "id": str(uuid.uuid4()), "base_version": None,
            "fields": {"household_id": str(district.h1a.id), "taken_at": T0, "temp_c": 13.0}}


def _path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "savepoints":
        _fail_readings_at_13_degrees(monkeypatch)


@PATHS
def test_an_office_edit_of_an_order_created_and_edited_in_one_push_applies(
        district: District, device: Callable[..., Device], engine: Engine, monkeypatch: pytest.MonkeyPatch,
        path: str) -> None:
    """The fast path inserts a row the batch creates at version 1 however often the batch writes it, and marked
    the device's later writes at version 2: another supervisor's edit from version 1 was then read as a
    conflict, and the office field (priority) it changed was thrown away."""
    _path(path, monkeypatch)
    a = device(district.supervisor, "office-a")
    a.pull()
    order = a.create("work_orders", household_id=str(district.h3a.id), category="leak", source="hotline",
                     description="water in the stairwell")
    a.update("work_orders", order, priority="high")  # not pushed yet: a full write of the new row
    if path == "savepoints":
        a._queue("readings", "upsert", str(uuid.uuid4()), _failing_reading(district)["fields"])
    a.push()
    b = device(district.admin, "office-b")
    b.pull()
    assert b.rows["work_orders"][order]["priority"] == "high"
    b.update("work_orders", order, priority="urgent")
    second = b.push()
    assert _statuses(second) == [("applied", None)]
    with Session(engine) as s:
        assert s.get(WorkOrder, uuid.UUID(order)).priority.value == "urgent"
        assert s.exec(select(SyncConflict)).all() == []


@PATHS
def test_a_visit_created_and_completed_offline_then_edited_by_the_office_is_no_conflict(
        district: District, device: Callable[..., Device], engine: Engine, monkeypatch: pytest.MonkeyPatch,
        path: str) -> None:
    _path(path, monkeypatch)
    phone = device(district.steward1, "phone")
    phone.pull()
    visit = phone.create("visits", household_id=str(district.h1a.id), arrived_at=T0)
    phone.update("visits", visit, actions="bled radiators", left_at="2026-12-01T08:40:00+00:00")
    if path == "savepoints":
        phone._queue("readings", "upsert", str(uuid.uuid4()), _failing_reading(district)["fields"])
    phone.push()
    office = device(district.supervisor, "office")
    office.pull()
    office.update("visits", visit, actions="bled radiators; valve replaced")
    assert _statuses(office.push()) == [("applied", None)]
    with Session(engine) as s:
        assert s.exec(select(SyncConflict)).all() == []


@PATHS
def test_two_full_writes_of_a_note_after_its_visits_delete_both_apply(
        district: District, device: Callable[..., Device], monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """The fast path marked the note's link, cleared by the visit's delete (the server's write), as the device's
    own change with its first write: the second full write from the device's copy (still naming the visit) was
    refused `read_only_field`, and the device's last edit was lost."""
    _path(path, monkeypatch)
    d = device(district.steward1)
    visit = d.create("visits", household_id=str(district.h1a.id), arrived_at=T0)
    note = d.create("notes", audio_sha256="c" * 64, duration_s=3.0, recorded_at=T0, visit_id=visit)
    d.push()
    record = d.rows["notes"][note]
    full = {k: v for k, v in record.items() if k not in ("id", "version")}
    batch = [{"table": "visits", "op": "delete", "id": visit, "base_version": 1, "fields": {}}]
    batch += [{"table": "notes", "op": "upsert", "id": note, "base_version": record["version"],
               "fields": full | {"duration_s": seconds}} for seconds in (4.0, 5.0)]
    if path == "savepoints":
        batch.append(_failing_reading(district))
    answer = d.send(d.push_body([m | {"mutation_id": 10 + n} for n, m in enumerate(batch)]))
    assert _statuses(answer)[:3] == [("applied", None), ("merged", None), ("merged", None)]
    assert answer["results"][2]["record"]["duration_s"] == 5.0 and answer["results"][2]["record"]["visit_id"] is None


@PATHS
def test_updates_of_a_row_with_increasing_base_versions_all_apply(
        district: District, device: Callable[..., Device], monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """The fast path compared the second update's base_version with the row's version before the batch's flush
    and refused it (`invalid_base_version`); the savepoint path, flushed after the first, applied it. Then a third
    from base+2 was refused on the fast path alone (its one flush stepped the version once), and the device's
    last edit was lost: the row's version now steps once per mutation on both paths."""
    _path(path, monkeypatch)
    d = device(district.steward1)
    d.pull()
    v = str(district.visit1.id)
    base = d.rows["visits"][v]["version"]
    batch = [{"table": "visits", "op": "update", "id": v, "base_version": base + k, "fields": {"actions": text}}
             for k, text in ((0, "a"), (1, "b"), (2, "c"), (4, "e"))]
    if path == "savepoints":
        batch.append(_failing_reading(district))
    answer = d.send(d.push_body([m | {"mutation_id": 1 + n} for n, m in enumerate(batch)]))
    assert _statuses(answer)[:4] == [("applied", None)] * 3 + [("rejected", "invalid_base_version")]
    assert answer["results"][2]["record"]["actions"] == "c"
    assert answer["results"][2]["record"]["version"] == base + 3


@PATHS
def test_a_row_created_then_updated_from_each_version_it_passes_through(
        district: District, device: Callable[..., Device], monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """A regression of the fast path, as above: created and updated from versions 1 and 2 in one batch, the
    second update was refused there and applied on the savepoint path."""
    _path(path, monkeypatch)
    d = device(district.steward1)
    d.pull()
    visit = str(uuid.uuid4())
    batch = [{"table": "visits", "op": "upsert", "id": visit, "base_version": None,
              "fields": {"household_id": str(district.h1a.id), "arrived_at": T0}},
             {"table": "visits", "op": "update", "id": visit, "base_version": 1, "fields": {"actions": "b"}},
             {"table": "visits", "op": "update", "id": visit, "base_version": 2, "fields": {"actions": "c"}}]
    if path == "savepoints":
        batch.append(_failing_reading(district))
    answer = d.send(d.push_body([m | {"mutation_id": 1 + n} for n, m in enumerate(batch)]))
    assert _statuses(answer)[:3] == [("applied", None)] * 3
    assert (answer["results"][2]["record"]["actions"], answer["results"][2]["record"]["version"]) == ("c", 3)
