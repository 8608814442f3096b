"""Visits and indoor temperature readings recorded in the field."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from api.db import utcnow
from api.fieldwork.models import Reading, Visit
from api.users.models import Role
from api.work_orders.models import Status
from tests.utils.asserts import assert_error, count_rows, db_state, reread, someone_waits_for_a_lock
from tests.utils.factories import (
    World,
    make_household,
    make_reading,
    make_user,
    make_visit,
    make_work_order,
    random_id,
)

API = "/api/v1"


# --- visits -------------------------------------------------------------------------------------------


def test_steward_records_a_visit_for_a_work_order(client: TestClient, session: Session, world: World) -> None:
    order = make_work_order(session, world.household_a, status=Status.in_progress, assignee=world.steward_a)
    body = {"household_id": str(world.household_a.id), "work_order_id": str(order.id),
            "arrived_at": "2025-12-01T09:00:00+08:00", "indoor_temp_c": 16.5, "actions": "排气"}
    r = client.post(f"{API}/visits", json=body, headers=world.headers(world.steward_a))
    assert r.status_code == 201, r.text
    visit = r.json()
    assert visit["steward_id"] == str(world.steward_a.id) and visit["version"] == 1
    row = reread(session, Visit, visit["id"])
    assert (row.work_order_id, row.indoor_temp_c) == (order.id, 16.5)
    assert row.arrived_at == datetime(2025, 12, 1, 1, 0, tzinfo=UTC)
    got = client.get(f"{API}/visits/{visit['id']}", headers=world.headers(world.steward_a)).json()
    assert got["arrived_at"] == "2025-12-01T01:00:00Z"


@pytest.mark.parametrize("role", [Role.supervisor, Role.admin])
def test_only_stewards_record_visits(client: TestClient, session: Session, world: World, role: Role) -> None:
    office = world.supervisor if role == Role.supervisor else world.admin
    r = client.post(f"{API}/visits", json={"household_id": str(world.household_a.id),
                                           "arrived_at": "2025-12-01T09:00:00Z"}, headers=world.headers(office))
    assert_error(r, 403, "role_required")
    assert count_rows(session, Visit) == 0


def test_visit_work_order_must_be_for_the_same_household(client: TestClient, session: Session,
                                                         world: World) -> None:
    neighbour = make_household(session, world.building_a)
    order = make_work_order(session, neighbour, status=Status.assigned, assignee=world.steward_a)
    r = client.post(f"{API}/visits", json={"household_id": str(world.household_a.id), "work_order_id": str(order.id),
                                           "arrived_at": "2025-12-01T09:00:00Z"},
                    headers=world.headers(world.steward_a))
    assert_error(r, 422, "household_mismatch")
    assert count_rows(session, Visit) == 0


def test_visit_for_a_missing_work_order_is_404(client: TestClient, session: Session, world: World) -> None:
    r = client.post(f"{API}/visits", json={"household_id": str(world.household_a.id), "work_order_id": random_id(),
                                           "arrived_at": "2025-12-01T09:00:00Z"},
                    headers=world.headers(world.steward_a))
    assert_error(r, 404, "not_found")
    assert count_rows(session, Visit) == 0


def test_a_visit_cannot_end_before_it_starts(client: TestClient, session: Session, world: World) -> None:
    h = world.headers(world.steward_a)
    body = {"household_id": str(world.household_a.id), "arrived_at": "2025-12-01T09:00:00Z",
            "left_at": "2025-12-01T08:59:59Z"}
    assert_error(client.post(f"{API}/visits", json=body, headers=h), 422, "invalid_interval")
    assert count_rows(session, Visit) == 0
    # The same instant written in another zone is not "before".
    same = body | {"left_at": "2025-12-01T17:00:00+08:00"}
    assert client.post(f"{API}/visits", json=same, headers=h).status_code == 201


def test_duplicate_visit_id_is_409(client: TestClient, session: Session, world: World) -> None:
    visit = make_visit(session, world.household_a, world.steward_a)
    r = client.post(f"{API}/visits", json={"id": str(visit.id), "household_id": str(world.household_a.id),
                                           "arrived_at": "2025-12-01T09:00:00Z"},
                    headers=world.headers(world.steward_a))
    assert_error(r, 409, "already_exists")
    assert count_rows(session, Visit) == 1


def test_the_steward_completes_their_visit(client: TestClient, session: Session, world: World) -> None:
    visit = make_visit(session, world.household_a, world.steward_a)
    left = (visit.arrived_at + timedelta(minutes=20)).isoformat()
    r = client.patch(f"{API}/visits/{visit.id}", json={"left_at": left, "result": "resolved", "indoor_temp_c": 20},
                     headers=world.headers(world.steward_a))
    assert r.status_code == 200, r.text
    assert (r.json()["result"], r.json()["version"]) == ("resolved", 2)
    row = reread(session, Visit, visit.id)
    assert row.left_at == visit.arrived_at + timedelta(minutes=20) and row.version == 2


def test_visit_updates_are_for_its_steward_or_the_office(client: TestClient, session: Session,
                                                         world: World) -> None:
    colleague = make_user(session, Role.steward, grid=[world.building_a])
    visit = make_visit(session, world.household_a, world.steward_a)
    assert_error(client.patch(f"{API}/visits/{visit.id}", json={"actions": "改"}, headers=world.headers(colleague)),
                 403, "not_owner")
    assert reread(session, Visit, visit.id).version == 1
    r = client.patch(f"{API}/visits/{visit.id}", json={"actions": "主管补记"}, headers=world.headers(world.supervisor))
    assert r.status_code == 200 and r.json()["actions"] == "主管补记"


def test_visit_update_keeps_the_interval_valid(client: TestClient, session: Session, world: World) -> None:
    visit = make_visit(session, world.household_a, world.steward_a)
    early = (visit.arrived_at - timedelta(seconds=1)).isoformat()
    r = client.patch(f"{API}/visits/{visit.id}", json={"left_at": early}, headers=world.headers(world.steward_a))
    assert_error(r, 422, "invalid_interval")
    assert reread(session, Visit, visit.id).left_at is None
    naive = client.patch(f"{API}/visits/{visit.id}", json={"left_at": "2025-12-01T10:00:00"},
                             headers=world.headers(world.steward_a))
    assert_error(naive, 422, "validation_error")


def test_null_actions_is_a_validation_error(client: TestClient, session: Session, world: World) -> None:
    """Regression: `{"actions": null}` reached the NOT NULL column and came back as a 409 `conflict`."""
    visit = make_visit(session, world.household_a, world.steward_a, actions="放水")
    r = client.patch(f"{API}/visits/{visit.id}", json={"actions": None}, headers=world.headers(world.steward_a))
    assert_error(r, 422, "validation_error")
    row = reread(session, Visit, visit.id)
    assert (row.actions, row.version) == ("放水", 1)
    # Nullable fields may still be cleared.
    r = client.patch(f"{API}/visits/{visit.id}", json={"result": None, "left_at": None},
                     headers=world.headers(world.steward_a))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("loose", [True, False, "21"])
def test_a_temperature_is_a_number_not_a_flag(client: TestClient, session: Session, world: World,
                                              loose: object) -> None:
    """Regression (review): a JSON `true` was stored as 1.0 °C (and `false` as 0.0), a reading that turned
    the household into a cold-home case."""
    h = world.headers(world.steward_a)
    reading = {"household_id": str(world.household_a.id), "taken_at": "2025-12-01T09:00:00Z", "temp_c": loose}
    assert_error(client.post(f"{API}/readings", json=reading, headers=h), 422, "validation_error")
    assert count_rows(session, Reading) == 0
    visit = {"household_id": str(world.household_a.id), "arrived_at": "2025-12-01T09:00:00Z",
             "indoor_temp_c": loose}
    assert_error(client.post(f"{API}/visits", json=visit, headers=h), 422, "validation_error")
    assert count_rows(session, Visit) == 0
    made = make_visit(session, world.household_a, world.steward_a)
    r = client.patch(f"{API}/visits/{made.id}", json={"indoor_temp_c": loose}, headers=h)
    assert_error(r, 422, "validation_error")
    assert reread(session, Visit, made.id).version == 1
    r = client.post(f"{API}/readings", json=reading | {"temp_c": 21}, headers=h)  # an integer is a number
    assert r.status_code == 201 and r.json()["temp_c"] == 21.0, r.text


def test_list_visits_filters_newest_first(client: TestClient, session: Session, world: World) -> None:
    now = utcnow()
    order = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)
    old = make_visit(session, world.household_a, world.steward_a, arrived_at=now - timedelta(days=2))
    new = make_visit(session, world.household_a, world.steward_a, arrived_at=now - timedelta(hours=1),
                     work_order_id=order.id)
    other = make_visit(session, world.household_b, world.steward_b, arrived_at=now)
    h = world.headers(world.supervisor)

    def ids(**params: object) -> list[str]:
        body = client.get(f"{API}/visits", params=params, headers=h).json()
        assert body["count"] == len(body["data"])
        return [v["id"] for v in body["data"]]

    assert ids() == [str(other.id), str(new.id), str(old.id)]
    assert ids(household_id=str(world.household_a.id)) == [str(new.id), str(old.id)]
    assert ids(work_order_id=str(order.id)) == [str(new.id)]
    assert ids(steward_id=str(world.steward_b.id)) == [str(other.id)]


# --- readings -----------------------------------------------------------------------------------------


def test_readings_are_appended_by_whoever_takes_them(client: TestClient, session: Session, world: World) -> None:
    visit = make_visit(session, world.household_a, world.steward_a)
    body = {"household_id": str(world.household_a.id), "visit_id": str(visit.id),
            "taken_at": "2025-12-01T09:10:00+08:00", "temp_c": 17.5, "room": "bedroom"}
    r = client.post(f"{API}/readings", json=body, headers=world.headers(world.steward_a))
    assert r.status_code == 201, r.text
    assert r.json()["taken_by_id"] == str(world.steward_a.id)
    assert reread(session, Reading, r.json()["id"]).taken_at == datetime(2025, 12, 1, 1, 10, tzinfo=UTC)
    office = client.post(f"{API}/readings", json=body | {"visit_id": None}, headers=world.headers(world.supervisor))
    assert office.status_code == 201 and office.json()["taken_by_id"] == str(world.supervisor.id)
    assert count_rows(session, Reading) == 2


def test_reading_checks_its_links(client: TestClient, session: Session, world: World) -> None:
    neighbour = make_household(session, world.building_a)
    visit = make_visit(session, neighbour, world.steward_a)
    visit_b = make_visit(session, world.household_b, world.steward_b)
    h = world.headers(world.steward_a)
    base = {"household_id": str(world.household_a.id), "taken_at": "2025-12-01T09:10:00Z", "temp_c": 17.5}
    before = db_state(session)
    assert_error(client.post(f"{API}/readings", json=base | {"visit_id": str(visit.id)}, headers=h), 422,
                 "household_mismatch")
    assert_error(client.post(f"{API}/readings", json=base | {"visit_id": str(visit_b.id)}, headers=h), 404,
                 "not_found")
    assert_error(client.post(f"{API}/readings", json=base | {"visit_id": random_id()}, headers=h), 404, "not_found")
    assert_error(client.post(f"{API}/readings", json=base | {"household_id": random_id()}, headers=h), 404,
                 "not_found")
    assert_error(client.post(f"{API}/readings", json=base | {"temp_c": 51}, headers=h), 422, "validation_error")
    assert db_state(session) == before


def test_duplicate_reading_id_is_409(client: TestClient, session: Session, world: World) -> None:
    reading = make_reading(session, world.household_a, world.steward_a)
    r = client.post(f"{API}/readings", json={"id": str(reading.id), "household_id": str(world.household_a.id),
                                             "taken_at": "2025-12-01T09:10:00Z", "temp_c": 22},
                    headers=world.headers(world.steward_a))
    assert_error(r, 409, "already_exists")
    assert reread(session, Reading, reading.id).temp_c == 19.5


def test_list_readings_newest_first(client: TestClient, session: Session, world: World) -> None:
    now = utcnow()
    older = make_reading(session, world.household_a, taken_at=now - timedelta(hours=3), temp_c=15)
    newer = make_reading(session, world.household_a, taken_at=now, temp_c=19)
    make_reading(session, world.household_b, taken_at=now)
    r = client.get(f"{API}/readings", params={"household_id": str(world.household_a.id)},
                   headers=world.headers(world.steward_a)).json()
    assert r["count"] == 2 and [x["id"] for x in r["data"]] == [str(newer.id), str(older.id)]


# --- covering an order outside the grid (regression) ---------------------------------------------------


def test_a_steward_covering_an_order_outside_their_grid_records_the_visit_and_reading(
        client: TestClient, session: Session, world: World) -> None:
    covering = make_work_order(session, world.household_b, status=Status.in_progress, assignee=world.steward_a)
    h = world.headers(world.steward_a)
    now = utcnow()
    r = client.post(f"{API}/visits", json={"household_id": str(world.household_b.id),
                                           "work_order_id": str(covering.id),
                                           "arrived_at": now.isoformat()}, headers=h)
    assert r.status_code == 201, r.text
    visit_id = r.json()["id"]
    assert client.get(f"{API}/visits/{visit_id}", headers=h).status_code == 200
    r = client.post(f"{API}/readings", json={"household_id": str(world.household_b.id), "visit_id": visit_id,
                                             "taken_at": now.isoformat(), "temp_c": 16.5}, headers=h)
    assert r.status_code == 201, r.text
    readings = client.get(f"{API}/readings", headers=h).json()
    assert [x["id"] for x in readings["data"]] == [r.json()["id"]]
    # Without the order the household stays out of reach, and other stewards' visits there stay hidden.
    r = client.post(f"{API}/visits", json={"household_id": str(world.household_b.id),
                                           "arrived_at": now.isoformat()}, headers=h)
    assert_error(r, 404, "not_found")
    other = make_visit(session, world.household_b, world.steward_b)
    assert_error(client.get(f"{API}/visits/{other.id}", headers=h), 404, "not_found")


def test_after_the_order_goes_to_another_steward_its_visit_takes_no_new_readings_or_notes(
        client: TestClient, session: Session, world: World) -> None:
    """Regression: a steward who had covered an order outside their grid could go on adding readings (with any
    time) and notes to that household through their old visit after the office gave the order to someone
    else. They still read and complete the visit itself."""
    covering = make_work_order(session, world.household_b, status=Status.in_progress, assignee=world.steward_a)
    h, now = world.headers(world.steward_a), utcnow()
    r = client.post(f"{API}/visits", json={"household_id": str(world.household_b.id),
                                           "work_order_id": str(covering.id), "arrived_at": now.isoformat()},
                    headers=h)
    assert r.status_code == 201, r.text
    visit_id = r.json()["id"]
    reading = {"household_id": str(world.household_b.id), "visit_id": visit_id, "taken_at": now.isoformat(),
               "temp_c": 16.5}
    note = {"visit_id": visit_id, "audio_sha256": "a" * 64, "duration_s": 3.0, "recorded_at": now.isoformat()}
    assert client.post(f"{API}/readings", json=reading, headers=h).status_code == 201
    assert client.post(f"{API}/notes", json=note, headers=h).status_code == 201
    moved = client.post(f"/api/v1/work-orders/{covering.id}/assign", json={"assignee_id": str(world.steward_b.id)},
                        headers=world.headers(world.supervisor))
    assert moved.status_code == 200, moved.text
    before = count_rows(session, Reading)
    assert_error(client.post(f"{API}/readings", json=reading, headers=h), 404, "not_found")
    assert_error(client.post(f"{API}/notes", json=note | {"audio_sha256": "b" * 64}, headers=h), 404, "not_found")
    assert count_rows(session, Reading) == before
    assert client.get(f"{API}/visits/{visit_id}", headers=h).status_code == 200
    done = client.patch(f"{API}/visits/{visit_id}", json={"left_at": utcnow().isoformat()}, headers=h)
    assert done.status_code == 200, done.text
    # Stewards of the household's grid attach to any visit there.
    assert client.post(f"{API}/readings", json=reading, headers=world.headers(world.steward_b)).status_code == 201


def test_timestamps_answer_in_utc_on_create_as_on_read(client: TestClient, world: World) -> None:
    h = world.headers(world.steward_a)
    r = client.post(f"{API}/visits", json={"household_id": str(world.household_a.id),
                                           "arrived_at": "2026-12-01T09:30:00+08:00"}, headers=h)
    assert r.status_code == 201, r.text
    created = r.json()["arrived_at"]
    assert created in ("2026-12-01T01:30:00Z", "2026-12-01T01:30:00+00:00")
    assert client.get(f"{API}/visits/{r.json()['id']}", headers=h).json()["arrived_at"] == created


def test_ids_outside_the_grid_cannot_be_probed(client: TestClient, session: Session, world: World) -> None:
    """Regression: the taken-id check ran before the scope check, so naming an id of another grid's row (with
    that grid's household) answered 409 already_exists where an unknown id answered 404."""
    theirs_reading = make_reading(session, world.household_b, world.steward_b)
    theirs_visit = make_visit(session, world.household_b, world.steward_b)
    theirs_order = make_work_order(session, world.household_b)
    h = world.headers(world.steward_a)
    now = utcnow().isoformat()
    for url, body, taken in (
            ("/api/v1/readings", {"household_id": str(world.household_b.id), "taken_at": now, "temp_c": 18},
             theirs_reading.id),
            ("/api/v1/visits", {"household_id": str(world.household_b.id), "arrived_at": now}, theirs_visit.id),
            ("/api/v1/work_orders", {"household_id": str(world.household_b.id), "category": "leak",
                                     "source": "visit", "description": "漏水"}, theirs_order.id)):
        existing = client.post(url, headers=h, json=body | {"id": str(taken)})
        unknown = client.post(url, headers=h, json=body | {"id": random_id()})
        assert existing.status_code == unknown.status_code == 404, (url, existing.json(), unknown.json())
        assert existing.json()["detail"]["code"] == unknown.json()["detail"]["code"]


def test_times_from_a_reset_clock_are_refused(client: TestClient, session: Session, world: World) -> None:
    """Regression: a reading or visit dated 1970-01-01 (a handheld whose clock battery ran flat) was stored;
    the earliest accepted field time is 2001-01-01."""
    h = world.headers(world.steward_a)
    hh = str(world.household_a.id)
    for when in ("1970-01-01T00:00:07+00:00", "2000-12-31T23:59:59+00:00", "2001-01-01T07:59:00+08:00"):
        for path, body in (("readings", {"household_id": hh, "taken_at": when, "temp_c": 18}),
                           ("visits", {"household_id": hh, "arrived_at": when, "indoor_temp_c": 18})):
            r = client.post(f"{API}/{path}", json=body, headers=h)
            assert_error(r, 422, "validation_error")
            assert r.json()["detail"]["errors"][0]["type"] == "invalid_time", r.json()
            assert "clock" in r.json()["detail"]["errors"][0]["msg"], r.json()
    assert count_rows(session, Visit) == 0 and count_rows(session, Reading) == 0
    r = client.post(f"{API}/readings", json={"household_id": hh, "taken_at": "2001-01-01T00:00:00+00:00",
                                             "temp_c": 18}, headers=h)
    assert r.status_code == 201, r.json()


def test_times_far_in_the_future_are_refused(client: TestClient, session: Session, world: World) -> None:
    """Regression: a reading or visit dated a year ahead was stored, and headed the newest-first lists (the
    console's chart) for a year. A day ahead is tolerated: handheld clocks and time zones go wrong."""
    h = world.headers(world.steward_a)
    hh = str(world.household_a.id)
    ahead = (utcnow() + timedelta(days=365)).isoformat()
    just_over = (utcnow() + timedelta(days=1, minutes=5)).isoformat()
    for when in (ahead, just_over):
        for path, body in (("readings", {"household_id": hh, "taken_at": when, "temp_c": 18}),
                           ("visits", {"household_id": hh, "arrived_at": when, "indoor_temp_c": 18})):
            r = client.post(f"{API}/{path}", json=body, headers=h)
            assert_error(r, 422, "validation_error")
            assert r.json()["detail"]["errors"][0]["type"] == "invalid_time", r.json()
    now = utcnow()
    r = client.post(f"{API}/visits", json={"household_id": hh, "arrived_at": now.isoformat(),
                                           "left_at": (now + timedelta(days=2)).isoformat()}, headers=h)
    assert_error(r, 422, "validation_error")
    assert count_rows(session, Visit) == 0 and count_rows(session, Reading) == 0
    # A clock some hours ahead (a handheld left on another zone) is accepted.
    skewed = (utcnow() + timedelta(hours=8)).isoformat()
    assert client.post(f"{API}/readings", json={"household_id": hh, "taken_at": skewed, "temp_c": 18},
                       headers=h).status_code == 201
    visit = make_visit(session, world.household_a, world.steward_a)
    r = client.patch(f"{API}/visits/{visit.id}", json={"left_at": ahead}, headers=h)
    assert_error(r, 422, "validation_error")
    assert reread(session, Visit, visit.id).left_at is None


def test_a_visit_lasts_at_most_a_day(client: TestClient, session: Session, world: World) -> None:
    """Regression: a visit of a month (a mistyped date) was stored as one."""
    h = world.headers(world.steward_a)
    arrived = utcnow() - timedelta(days=40)
    body = {"household_id": str(world.household_a.id), "arrived_at": arrived.isoformat()}
    r = client.post(f"{API}/visits", json=body | {"left_at": (arrived + timedelta(days=31)).isoformat()}, headers=h)
    assert_error(r, 422, "validation_error")
    assert r.json()["detail"]["errors"][0]["type"] == "invalid_interval"
    assert count_rows(session, Visit) == 0
    day = body | {"left_at": (arrived + timedelta(hours=24)).isoformat()}
    assert client.post(f"{API}/visits", json=day, headers=h).status_code == 201
    visit = make_visit(session, world.household_a, world.steward_a, arrived_at=arrived)
    r = client.patch(f"{API}/visits/{visit.id}", json={"left_at": (arrived + timedelta(hours=25)).isoformat()},
                     headers=h)
    assert_error(r, 422, "invalid_interval")
    assert "24 hours" in r.json()["detail"]["message"] and reread(session, Visit, visit.id).left_at is None


def test_sync_push_rejects_future_times_too(client: TestClient, session: Session, world: World) -> None:
    """The same validators hold for handhelds: a future reading or visit is `rejected`, nothing written."""
    hh = str(world.household_a.id)
    ahead = (utcnow() + timedelta(days=365)).isoformat()
    now = utcnow()
    creates = [("readings", {"household_id": hh, "taken_at": ahead, "temp_c": 18}),
               ("visits", {"household_id": hh, "arrived_at": ahead}),
               ("visits", {"household_id": hh, "arrived_at": now.isoformat(),
                           "left_at": (now + timedelta(hours=30)).isoformat()})]
    mutations = [{"mutation_id": n, "table": table, "op": "upsert", "id": str(uuid.uuid4()),
                  "base_version": None, "fields": fields}
                 for n, (table, fields) in enumerate(creates, start=1)]
    r = client.post(f"{API}/sync/push", json={"schema_version": 1, "client_id": str(uuid.uuid4()),
                                               "mutations": mutations}, headers=world.headers(world.steward_a))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["status"], x["reason"]) for x in results] == [("rejected", "invalid_value")] * 3, results
    assert "future" in results[0]["message"] and count_rows(session, Visit) == count_rows(session, Reading) == 0


def test_editing_a_visit_that_a_push_deletes_meanwhile_is_404_not_500(client: TestClient, session: Session,
                                                                       engine: Engine, world: World) -> None:
    """Regression: the PATCH read the visit, waited for the push's locks, and re-read a row that was gone:
    SQLAlchemy's `Could not refresh instance` was answered 500 with a traceback."""
    visit = make_visit(session, world.household_a, world.steward_a)
    deleted, done = threading.Event(), threading.Event()

    def push_deletes_the_visit() -> None:  # what a push's delete does: one transaction, the row deleted
        with Session(engine) as other:
            other.delete(other.get(Visit, visit.id))
            other.flush()  # takes the change sequence and the row (sync.tracking)
            deleted.set()
            if engine.dialect.name == "postgresql":
                someone_waits_for_a_lock(engine)
            else:
                time.sleep(0.5)
            other.commit()
        done.set()

    threading.Thread(target=push_deletes_the_visit, daemon=True).start()
    assert deleted.wait(10)
    r = client.patch(f"{API}/visits/{visit.id}", json={"actions": "排气"}, headers=world.headers(world.steward_a))
    assert done.wait(10)
    assert_error(r, 404, "not_found")


def test_rest_does_not_bring_back_a_row_deleted_through_sync(client: TestClient, session: Session,
                                                             world: World) -> None:
    """Regression: a push's create of a deleted id is refused (the tombstone), but POST /visits, /readings and
    /notes with that id made the row again, and handhelds that had dropped it got it back."""
    from api.notes.models import Note
    from tests.utils.factories import make_note, make_reading

    visit = make_visit(session, world.household_a, world.steward_a)
    reading = make_reading(session, world.household_a, world.steward_a)
    note = make_note(session, world.steward_a, household_id=world.household_a.id)
    ids = {"visits": visit.id, "readings": reading.id, "notes": note.id}
    for row in (visit, reading, note):
        session.delete(row)  # as a push's delete does: sync.tracking writes the tombstone
    session.commit()
    h = world.headers(world.steward_a)
    household = str(world.household_a.id)
    bodies = {"visits": {"household_id": household, "arrived_at": "2025-12-01T09:00:00Z"},
              "readings": {"household_id": household, "temp_c": 19.5, "taken_at": "2025-12-01T09:00:00Z"},
              "notes": {"household_id": household, "audio_sha256": "a" * 64, "duration_s": 42.0,
                        "recorded_at": "2025-12-01T09:00:00Z"}}
    for table, body in bodies.items():
        r = client.post(f"{API}/{table}", json=body | {"id": str(ids[table])}, headers=h)
        assert_error(r, 409, "deleted")
    assert (count_rows(session, Visit), count_rows(session, Reading), count_rows(session, Note)) == (0, 0, 0)


def test_a_reading_room_is_cleaned_and_one_of_spaces_refused(client: TestClient, session: Session,
                                                             world: World) -> None:
    """Regression: a room of spaces was stored as typed ("   "), unlike every other name."""
    h = world.headers(world.steward_a)
    body = {"household_id": str(world.household_a.id), "temp_c": 19.5, "taken_at": "2025-12-01T09:00:00Z"}
    assert_error(client.post(f"{API}/readings", json=body | {"room": "   "}, headers=h), 422, "validation_error")
    assert count_rows(session, Reading) == 0
    r = client.post(f"{API}/readings", json=body | {"room": " 主卧\u200b "}, headers=h)
    assert r.status_code == 201 and r.json()["room"] == "主卧", r.text


@pytest.mark.parametrize("table", ["readings", "visits", "notes"])
def test_a_record_for_an_order_reassigned_meanwhile_is_checked_after_it(
        client: TestClient, session: Session, engine: Engine, world: World, monkeypatch: pytest.MonkeyPatch,
        table: str) -> None:
    """Regression (review): REST creates checked scope first and took the change sequence only when writing; an
    order moved to another steward in between (the office's assign, committed) still got the first steward's
    reading, visit or note of a household outside their grid, which the same push would have rejected. Now the
    assign waits for the create (which then commits first) or the create sees the order gone."""
    from api.db import refuse_taken_id
    from api.fieldwork import service as fieldwork
    from api.notes import service as notes
    from api.notes.models import Note
    from api.users.models import User
    from api.work_orders import service as work_orders
    from api.work_orders.models import WorkOrder

    order = make_work_order(session, world.household_b, status=Status.in_progress, assignee=world.steward_a)
    visit = make_visit(session, world.household_b, world.steward_a, work_order_id=order.id)

    def office_reassigns() -> None:
        with Session(engine, expire_on_commit=False) as other:
            work_orders.assign(session=other, user=other.get(User, world.supervisor.id),  # type: ignore[arg-type]
                               order=other.get(WorkOrder, order.id), assignee_id=world.steward_b.id)  # type: ignore[arg-type]

    office = threading.Thread(target=office_reassigns)

    def checked_then_reassigned(*args: object, **kwargs: object) -> None:  # after the scope checks
        office.start()
        office.join(1.0)  # at once, unless this request holds the change sequence
        refuse_taken_id(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(notes if table == "notes" else fieldwork, "refuse_taken_id", checked_then_reassigned)
    now = utcnow().isoformat()
    body = {"readings": {"household_id": str(world.household_b.id), "visit_id": str(visit.id), "taken_at": now,
                         "temp_c": 16.5},
            "visits": {"household_id": str(world.household_b.id), "work_order_id": str(order.id), "arrived_at": now},
            "notes": {"work_order_id": str(order.id), "audio_sha256": "ab" * 32, "duration_s": 3.0,
                      "recorded_at": now}}[table]
    r = client.post(f"{API}/{table}", json=body, headers=world.headers(world.steward_a))
    office.join(10)
    moved = reread(session, WorkOrder, order.id)
    assert moved.assignee_id == world.steward_b.id
    assert r.status_code in (201, 404), r.text
    if r.status_code == 201:  # then it was written before the order left steward A
        model = {"readings": Reading, "visits": Visit, "notes": Note}[table]
        assert reread(session, model, uuid.UUID(r.json()["id"])).seq < moved.seq


def test_an_id_deleted_in_another_grid_is_answered_as_taken_not_deleted(client: TestClient, session: Session,
                                                                       world: World) -> None:
    """Regression (review): REST answered `deleted` for another grid's deleted visit, where a push answers
    `already_exists` on purpose: a steward could tell which ids of other grids had existed. Their own deleted
    row is still `deleted`."""
    theirs, mine = make_visit(session, world.household_b, world.steward_b), make_visit(session, world.household_a,
                                                                                       world.steward_a)
    for row in (theirs, mine):
        session.delete(row)
    session.commit()
    body = {"household_id": str(world.household_a.id), "arrived_at": utcnow().isoformat()}
    h = world.headers(world.steward_a)
    assert_error(client.post(f"{API}/visits", json=body | {"id": str(theirs.id)}, headers=h), 409, "already_exists")
    assert_error(client.post(f"{API}/visits", json=body | {"id": str(mine.id)}, headers=h), 409, "deleted")
