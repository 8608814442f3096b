"""What a pushed mutation may write (sync/rules.py), where it differs from a plain field check."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session

from api.notes.models import NoteKind
from tests.sync.conftest import District
from tests.sync.device import Device
from tests.utils.factories import make_note


def _note(**links: str) -> dict[str, Any]:
    return {"audio_sha256": "b" * 64, "duration_s": 2.0, "recorded_at": datetime.now(UTC).isoformat(), **links}


def test_a_covering_steward_pushes_a_note_naming_the_household_beside_its_order(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    """Regression: a note naming the household outside the grid beside the order its steward covers was
    rejected out_of_scope (the household was checked alone); REST and readings take the same links."""
    d = district
    assert client.post(f"/api/v1/work-orders/{d.wo3.id}/assign", json={"assignee_id": str(d.steward1.id)},
                       headers=d.headers(d.supervisor)).status_code == 200
    phone = device(d.steward1, "phone")
    phone.pull()
    assert str(d.h3a.id) not in phone.rows["households"]  # outside the grid: only the order is theirs
    phone.create("notes", **_note(household_id=str(d.h3a.id), work_order_id=str(d.wo3.id)))
    phone.create("notes", **_note(household_id=str(d.h3a.id)))  # the household alone is still out of scope
    assert [(r["status"], r["reason"]) for r in phone.push()["results"]] == [("applied", None),
                                                                              ("rejected", "out_of_scope")]


def test_a_pushed_note_stores_the_household_its_links_name_as_rest_does(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    """Regression: sync's create checked the visit's (or work order's) household and dropped it; REST stores
    it. The note was then hidden from the grid's other stewards, from the building's next steward and from
    lists by household."""
    d = district
    phone = device(d.steward1, "phone")
    by_visit = phone.create("notes", **_note(visit_id=str(d.visit1.id)))
    by_order = phone.create("notes", **_note(work_order_id=str(d.wo1.id)))
    assert [r["status"] for r in phone.push()["results"]] == ["applied", "applied"]
    office = d.headers(d.supervisor)
    assert client.get(f"/api/v1/notes/{by_visit}", headers=office).json()["household_id"] == str(d.visit1.household_id)
    assert client.get(f"/api/v1/notes/{by_order}", headers=office).json()["household_id"] == str(d.wo1.household_id)
    listed = client.get("/api/v1/notes", params={"household_id": str(d.visit1.household_id)}, headers=office).json()
    assert by_visit in {n["id"] for n in listed["data"]}
    # the building's next steward sees it, over REST and through a pull
    assert client.put(f"/api/v1/users/{d.steward2.id}/grid", headers=d.headers(d.admin),
                      json={"building_ids": [str(d.b1.id), str(d.b2.id)]}).status_code == 200
    assert client.get(f"/api/v1/notes/{by_visit}", headers=d.headers(d.steward2)).status_code == 200
    other = device(d.steward2, "other")
    other.pull()
    assert by_visit in other.rows["notes"]


def test_pushed_edits_follow_the_rest_rules_for_dates(client: TestClient, district: District,
                                                      device: Callable[..., Device]) -> None:
    """As over REST: a visit edited to last longer than a day, and an SLA deadline moved before the order was
    created, are refused (each `rejected`, the rows unchanged); a closed order's assignment says it is final."""
    d = district
    phone, office = device(d.steward1, "phone"), device(d.supervisor, "office")
    phone.pull()
    office.pull()
    arrived = datetime.now(UTC) - timedelta(days=3)
    visit_id = phone.create("visits", household_id=str(d.h1a.id), arrived_at=arrived.isoformat())
    assert phone.push()["results"][0]["status"] == "applied"
    phone.pull()
    phone.update("visits", visit_id, left_at=(arrived + timedelta(hours=30)).isoformat())
    office.update("work_orders", str(d.wo1.id), sla_due_at=(datetime.now(UTC) - timedelta(days=400)).isoformat())
    visit, = phone.push()["results"]
    order, = office.push()["results"]
    assert (visit["status"], visit["reason"]) == ("rejected", "invalid_value") and "24 hours" in visit["message"]
    assert (order["status"], order["reason"]) == ("rejected", "invalid_value") and "sla_due_at" in order["message"]
    office_view = client.get(f"/api/v1/work-orders/{d.wo1.id}", headers=d.headers(d.supervisor)).json()
    before = office.rows["work_orders"][str(d.wo1.id)]["sla_due_at"]
    assert datetime.fromisoformat(office_view["sla_due_at"]) == datetime.fromisoformat(before)


def test_a_note_moved_years_ahead_is_rejected(district: District, device: Callable[..., Device]) -> None:
    """Regression: a push moving a voice note's `recorded_at` to 2099 was applied (REST refused it)."""
    d = district
    phone = device(d.steward1, "phone")
    phone.pull()
    phone.update("notes", str(d.note1.id), recorded_at="2099-01-01T00:00:00+00:00")
    result = phone.push()["results"][0]
    assert (result["status"], result["reason"]) == ("rejected", "invalid_value"), result
    assert "future" in result["message"]


def test_a_pushed_temperature_of_true_is_rejected(client: TestClient, district: District,
                                                 device: Callable[..., Device]) -> None:
    """Regression (review): a reading pushed with `temp_c: true` was applied as 1.0 °C, and one taken at a Unix
    time (a number) as that instant in UTC."""
    d = district
    phone = device(d.steward1, "phone")
    phone.pull()
    taken = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    phone.create("readings", household_id=str(d.h1a.id), taken_at=taken, temp_c=True)
    phone.create("visits", household_id=str(d.h1a.id), arrived_at=taken, indoor_temp_c=False)
    phone.create("readings", household_id=str(d.h1a.id), taken_at=int(datetime.now(UTC).timestamp()), temp_c=17.5)
    phone.create("readings", household_id=str(d.h1a.id), taken_at=taken, temp_c=18)
    results = phone.push()["results"]
    assert [(r["status"], r["reason"]) for r in results] == [("rejected", "invalid_value")] * 3 + [
        ("applied", None)], results  # a Unix time is no timestamp either: it names no zone
    listed = client.get("/api/v1/readings", params={"household_id": str(d.h1a.id)},
                        headers=d.headers(d.steward1)).json()
    temps = [r["temp_c"] for r in listed["data"]]
    assert 1.0 not in temps and 18.0 in temps, temps


def test_field_times_from_a_reset_clock_are_rejected(district: District, device: Callable[..., Device]) -> None:
    """Regression: a handheld whose clock battery ran flat restarts in 1970; its readings and visits were
    applied with that date (sinking to the end of every history). Each is `rejected` as an invalid value."""
    d = district
    phone = device(d.steward1, "phone")
    phone.pull()
    phone.create("readings", household_id=str(d.h1a.id), taken_at="1970-01-01T00:03:00+00:00", temp_c=19.5)
    phone.create("visits", household_id=str(d.h1a.id), arrived_at="2000-01-01T08:00:00+08:00")
    phone.update("notes", str(d.note1.id), recorded_at="1970-01-01T00:05:00+00:00")
    results = phone.push()["results"]
    assert [(r["status"], r["reason"]) for r in results] == [("rejected", "invalid_value")] * 3, results
    assert all("clock" in r["message"] for r in results), results


def test_a_note_time_before_year_one_in_utc_is_an_invalid_value(district: District,
                                                                 device: Callable[..., Device]) -> None:
    """Regression: a note update took any aware time, so one with no UTC equivalent failed at the database
    and came back as `constraint` ("date value out of range") after a slow retry; creation refused it."""
    d = district
    phone = device(d.steward1, "phone")
    phone.pull()
    phone.update("notes", str(d.note1.id), recorded_at="0001-01-01T00:30:00+05:00")
    result = phone.push()["results"][0]
    assert (result["status"], result["reason"]) == ("rejected", "invalid_value"), result


def test_a_reopen_through_sync_hands_an_order_of_a_steward_who_left_to_the_office(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    """As in REST: a resolved order reopened for a steward who was disabled since goes back to `new`,
    unassigned, with a `released` line, instead of in progress to someone who cannot work it."""
    from sqlmodel import Session, select

    from api.users.models import User
    from api.work_orders.models import Status, WorkOrderEvent
    from tests.utils.factories import make_work_order

    with Session(client.app.state.engine, expire_on_commit=False) as session:
        done = make_work_order(session, district.h1a, status=Status.resolved, assignee=district.steward1)
        steward = session.get(User, district.steward1.id)
        assert steward is not None
        steward.active = False
        session.add(steward)
        session.commit()
    office = device(district.supervisor, "office")
    [result] = office.send(office.push_body([{"mutation_id": 1, "table": "work_orders", "op": "update",
                                              "id": str(done.id), "base_version": done.version,
                                              "fields": {"status": "in_progress"}}]))["results"]
    assert result["status"] == "applied", result
    assert (result["record"]["status"], result["record"]["assignee_id"]) == ("new", None)
    with Session(client.app.state.engine) as session:
        released = session.exec(select(WorkOrderEvent).where(WorkOrderEvent.work_order_id == done.id,
                                                             WorkOrderEvent.kind == "released")).one()
    assert (released.assignee_id, released.to_status) == (district.steward1.id, Status.new)


def test_an_order_edit_through_sync_follows_the_rest_rules(client: TestClient, district: District,
                                                            device: Callable[..., Device]) -> None:
    """Regressions: (1) an office edit naming the order's current `sla_due_at` with a new category kept the
    deadline in REST and moved it through sync (the unchanged field was dropped before the rule saw it);
    (2) an edit that changed nothing (lowering a cold sensitive home's priority, raised back) logged an
    `updated` event through sync, none in REST."""
    from datetime import timedelta

    from sqlmodel import Session, select

    from api.db import utcnow
    from api.work_orders.models import Category, Priority, Status, WorkOrderEvent
    from tests.utils.factories import make_work_order

    with Session(client.app.state.engine, expire_on_commit=False) as session:  # type: ignore[attr-defined]
        due = (utcnow() + timedelta(hours=30)).replace(microsecond=0)
        pinned = make_work_order(session, district.h1a, status=Status.in_progress, assignee=district.steward1,
                                 category=Category.noise, sla_due_at=due)
        cold = make_work_order(session, district.h1b, status=Status.in_progress, assignee=district.steward1,
                               category=Category.not_warm, priority=Priority.high)  # h1b is sensitive
    office = device(district.supervisor, "office")
    edits = [(pinned, {"category": "leak", "sla_due_at": due.isoformat()}), (cold, {"priority": "low"})]
    answer = office.send(office.push_body([
        {"mutation_id": n + 1, "table": "work_orders", "op": "update", "id": str(order.id), "base_version": 1,
         "fields": fields} for n, (order, fields) in enumerate(edits)]))
    kept, unchanged = (r["record"] for r in answer["results"])
    assert (kept["category"], datetime.fromisoformat(kept["sla_due_at"])) == ("leak", due.replace(tzinfo=UTC))
    assert (unchanged["priority"], unchanged["version"]) == ("high", 1)
    with Session(client.app.state.engine) as session:  # type: ignore[attr-defined]
        events = session.exec(select(WorkOrderEvent.kind).where(WorkOrderEvent.work_order_id == cold.id)).all()
        edit = session.exec(select(WorkOrderEvent).where(WorkOrderEvent.work_order_id == pinned.id)).one()
    assert events == []
    # (3) as REST's, the edit's line names what changed (the console shows it): the kept deadline is not in it
    assert (edit.kind, edit.note.split("; ")[0]) == ("updated", "offline sync")
    assert "category" in edit.note.split("; ")[1].split(", ") and "sla_due_at" not in edit.note


def test_a_pushed_work_order_with_a_null_sla_is_created_with_the_rules_sla(client: TestClient,
                                                                          district: District) -> None:
    """Regression (review of the change that refused null in a work-order PATCH): the refusal was added to
    creates too, and a handheld's order sent with `"sla_due_at": null` (no override) was rejected, for good."""
    d = Device(http=client, headers=district.headers(district.steward1), name="phone")
    d.pull()
    d.create("work_orders", household_id=str(district.h1a.id), category="leak", source="visit",
             description="漏水", sla_due_at=None)
    result, = d.push()["results"]
    assert result["status"] == "applied", result
    assert result["record"]["sla_due_at"] is not None  # the rules' SLA


def test_a_device_writes_voice_notes_and_a_call_stays_a_call(
        client: TestClient, session: Session, district: District, device: Callable[..., Device]) -> None:
    """Regression: a steward pushed a note of kind call_recording, or turned a voice note into one; it was
    transcribed as a resident's call, could open a hotline draft order and counted towards the complaint
    clusters. Calls come from POST /calls and video calls only; an office device cannot turn one into a voice
    note either (it left the cluster counts)."""
    d = district
    phone = device(d.steward1, "phone")
    phone.create("notes", **_note(household_id=str(d.h1a.id), kind="call_recording"))
    voice = phone.create("notes", **_note(household_id=str(d.h1a.id)))
    results = phone.push()["results"]
    assert [(r["status"], r["reason"]) for r in results] == [("rejected", "invalid_value"), ("applied", None)]
    assert "POST /calls" in results[0]["message"]
    phone.update("notes", voice, kind="call_recording")
    assert [(r["status"], r["reason"]) for r in phone.push()["results"]] == [("rejected", "invalid_value")]
    call = make_note(session, d.supervisor, kind=NoteKind.call_recording, household_id=d.h1a.id)
    office = device(d.supervisor, "console")
    office.pull()
    office.update("notes", str(call.id), kind="voice_note")
    assert [(r["status"], r["reason"]) for r in office.push()["results"]] == [("rejected", "read_only_field")]

