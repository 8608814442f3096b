"""Push: exactly once, per-mutation results, permissions, conflicts by field ownership, no echo."""

from __future__ import annotations

import dataclasses
import gzip
import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from api.fieldwork.models import Reading, Visit
from api.notes.models import Note, TranscriptStatus
from api.work_orders.models import Status, WorkOrder, WorkOrderEvent
from sync import push as push_module
from sync import rules
from sync.models import SyncConflict
from tests.sync.conftest import District, server_rows
from tests.sync.device import Device
from tests.utils.asserts import assert_error

T0 = "2026-12-01T08:00:00+00:00"


def _count(engine: Engine, model: type) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(model)).one()  # type: ignore[call-overload]


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _statuses(answer: dict) -> list[tuple[str, str | None]]:
    return [(r["status"], r["reason"]) for r in answer["results"]]


def test_a_push_applies_creates_and_updates_and_returns_the_rows(district: District, device: Callable[..., Device],
                                                                 engine: Engine) -> None:
    d = device(district.steward1)
    d.pull()
    visit = d.create("visits", household_id=str(district.h1a.id), arrived_at=T0, actions="checked valves")
    d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=17.5, visit_id=visit)
    d.update("work_orders", str(district.wo1.id), status="in_progress")
    answer = d.push()
    assert _statuses(answer) == [("applied", None)] * 3
    assert answer["last_mutation_id"] == 3
    created = answer["results"][0]["record"]
    assert created["steward_id"] == str(district.steward1.id) and created["version"] == 1
    order = answer["results"][2]["record"]
    assert order["status"] == "in_progress" and order["version"] == district.wo1.version + 1
    with Session(engine) as s:
        assert s.get(Visit, uuid.UUID(visit)) is not None
        events = s.exec(select(WorkOrderEvent).where(WorkOrderEvent.work_order_id == district.wo1.id,
                                                     WorkOrderEvent.kind == "status")).all()
        assert [(e.from_status, e.to_status) for e in events] == [(Status.assigned, Status.in_progress)]


def test_replaying_every_push_is_answered_duplicate_and_changes_nothing(
        client: TestClient, district: District, device: Callable[..., Device], engine: Engine) -> None:
    d = device(district.steward1)
    d.pull()
    for n in range(3):
        d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=18 + n)
        d.update("visits", str(district.visit1.id), actions=f"round {n}")
        d.push()
    before = server_rows(client, district.headers(district.supervisor))
    readings = _count(engine, Reading)
    for body in d.sent:
        answer = d.send(body)
        assert {r["status"] for r in answer["results"]} == {"duplicate"}
        assert answer["last_mutation_id"] == 6
        # the duplicate still tells the device what the row looks like now
        assert all(r["record"] is not None for r in answer["results"])
    assert _count(engine, Reading) == readings
    assert server_rows(client, district.headers(district.supervisor)) == before


def test_a_retry_after_a_lost_response_applies_the_rest_once(district: District, device: Callable[..., Device],
                                                            engine: Engine) -> None:
    d = device(district.steward1)
    first = d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=18)
    body = d.push_body()
    d.send(body)  # the answer is lost on the way back
    second = d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=19)
    answer = d.push()  # the queue still holds mutation 1, plus mutation 2
    assert [(r["mutation_id"], r["status"]) for r in answer["results"]] == [(1, "duplicate"), (2, "applied")]
    with Session(engine) as s:
        assert s.get(Reading, uuid.UUID(first)) is not None and s.get(Reading, uuid.UUID(second)) is not None
    assert _count(engine, Reading) == 3


def test_rejected_mutations_do_not_block_the_rest_of_the_batch(district: District, device: Callable[..., Device],
                                                              engine: Engine) -> None:
    d = device(district.steward1)
    d.pull()
    outside = str(district.h2a.id)  # steward2's household
    bad = [
        ("unknown_table", {"table": "meters", "op": "upsert", "id": str(uuid.uuid4()), "fields": {}}),
        ("unknown_op", {"table": "visits", "op": "merge", "id": str(uuid.uuid4()), "fields": {}}),
        ("invalid_id", {"table": "visits", "op": "upsert", "id": "not-a-uuid", "fields": {}}),
        # Regression: a length limit on these three failed the whole batch with 422 and stalled the queue.
        ("unknown_table", {"table": "t" * 200, "op": "upsert", "id": str(uuid.uuid4()), "fields": {}}),
        ("unknown_op", {"table": "visits", "op": "o" * 200, "id": str(uuid.uuid4()), "fields": {}}),
        ("invalid_id", {"table": "visits", "op": "upsert", "id": "i" * 200, "fields": {}}),
        ("invalid_id", {"table": "readings", "op": "upsert", "id": "not-a-uuid",  # the bulk path of new readings
                        "fields": {"household_id": str(district.h1a.id), "taken_at": T0, "temp_c": 18}}),
        ("read_only_table", {"table": "stations", "op": "update", "id": str(district.station.id), "base_version": 1,
                             "fields": {"name": "x"}}),
        ("out_of_scope", {"table": "visits", "op": "upsert", "id": str(uuid.uuid4()),
                          "fields": {"household_id": outside, "arrived_at": T0}}),
        ("invalid_value", {"table": "readings", "op": "upsert", "id": str(uuid.uuid4()),
                           "fields": {"household_id": str(district.h1a.id), "taken_at": T0, "temp_c": 99}}),
        ("read_only_field", {"table": "work_orders", "op": "update", "id": str(district.wo1.id),
                             "base_version": district.wo1.version, "fields": {"priority": "urgent"}}),
        ("invalid_transition", {"table": "work_orders", "op": "update", "id": str(district.wo1.id),
                                "base_version": district.wo1.version, "fields": {"status": "closed"}}),
        ("append_only", {"table": "readings", "op": "update", "id": str(district.reading1.id), "base_version": 1,
                         "fields": {"temp_c": 20}}),
        ("base_version_required", {"table": "visits", "op": "update", "id": str(district.visit1.id),
                                   "fields": {"actions": "x"}}),
        ("not_found", {"table": "visits", "op": "update", "id": str(uuid.uuid4()), "base_version": 1,
                       "fields": {"actions": "x"}}),
        ("forbidden", {"table": "households", "op": "update", "id": str(district.h1a.id), "base_version": 1,
                       "fields": {"phone": "13900000000"}}),
        ("forbidden", {"table": "work_orders", "op": "delete", "id": str(district.wo1.id)}),
    ]
    mutations = []
    for n, (_, m) in enumerate(bad):
        mutations.append({"mutation_id": 2 * n + 1, "base_version": None} | m)
        mutations.append({"mutation_id": 2 * n + 2, "table": "readings", "op": "upsert", "id": str(uuid.uuid4()),
                          "base_version": None,
                          "fields": {"household_id": str(district.h1a.id), "taken_at": T0, "temp_c": 18}})
    answer = d.send(d.push_body(mutations))
    got = answer["results"]
    assert [(r["status"], r["reason"]) for r in got[0::2]] == [("rejected", code) for code, _ in bad]
    assert all(r["message"] for r in got[0::2])
    assert {r["status"] for r in got[1::2]} == {"applied"}
    assert answer["last_mutation_id"] == 2 * len(bad)
    assert _count(engine, Reading) == 1 + len(bad)
    # rejected mutations are consumed: sending them again is a duplicate, never a blocked queue
    assert {r["status"] for r in d.send(d.push_body(mutations))["results"]} == {"duplicate"}


def test_a_rejected_edit_returns_the_server_row_so_the_device_can_undo_it(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    d = device(district.steward1)
    d.pull()
    d.update("work_orders", str(district.wo1.id), status="closed")  # office work: refused
    assert d.rows["work_orders"][str(district.wo1.id)]["status"] == "closed"  # optimistic
    answer = d.push()
    assert _statuses(answer) == [("rejected", "invalid_transition")]
    assert d.rows == server_rows(client, district.headers(district.steward1))


def test_a_database_error_rejects_only_its_own_mutation(district: District, device: Callable[..., Device],
                                                        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # Validation catches what it can; this makes one reading slip through with a household that does not
    # exist, so only the database's foreign key refuses it, inside that mutation's savepoint.
    create, create_values = rules.RULES["readings"].create, rules.RULES["readings"].create_values
    assert create is not None and create_values is not None

    def sloppy(ctx, id, fields):  # type: ignore[no-untyped-def]
        reading = create(ctx, id, fields)
        if fields["temp_c"] == 13.0:
            reading.household_id = uuid.uuid4()
        return reading

    def sloppy_values(ctx, id, fields):  # type: ignore[no-untyped-def]  (the bulk path of new readings)
        values = create_values(ctx, id, fields)
        return values | {"household_id": uuid.uuid4()} if fields["temp_c"] == 13.0 else values

    monkeypatch.setitem(rules.RULES, "readings", dataclasses.replace(rules.RULES["readings"], create=sloppy,
                                                                     create_values=sloppy_values))
    d = device(district.steward1)
    d.pull()
    for temp in (18.0, 13.0, 19.0):
        d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=temp)
    d.update("visits", str(district.visit1.id), actions="after the failure")
    answer = d.push()
    assert _statuses(answer) == [("applied", None), ("rejected", "constraint"), ("applied", None), ("applied", None)]
    assert answer["results"][1]["record"] is None
    assert _count(engine, Reading) == 3
    with Session(engine) as s:
        assert s.get(Visit, district.visit1.id).actions == "after the failure"  # type: ignore[union-attr]


def test_a_note_cannot_link_a_visit_and_a_work_order_of_different_households(
        district: District, device: Callable[..., Device], engine: Engine) -> None:
    """Regression: without `household_id` the visit and the work order were never compared (as in REST)."""
    office = device(district.supervisor)
    note = {"audio_sha256": "b" * 64, "duration_s": 2.0, "recorded_at": T0, "visit_id": str(district.visit1.id)}
    mismatch = office.create("notes", **note, work_order_id=str(district.wo2.id))  # visit1: h1a, wo2: h2a
    match = office.create("notes", **note, work_order_id=str(district.wo1.id))
    answer = office.push()
    assert _statuses(answer) == [("rejected", "invalid_value"), ("applied", None)]
    assert "household" in answer["results"][0]["message"]
    with Session(engine) as s:
        assert s.get(Note, uuid.UUID(mismatch)) is None and s.get(Note, uuid.UUID(match)) is not None


def test_a_link_to_an_unknown_visit_is_out_of_scope(district: District, device: Callable[..., Device]) -> None:
    d = device(district.steward1)
    m = {"mutation_id": 1, "table": "readings", "op": "upsert", "id": str(uuid.uuid4()), "base_version": None,
         "fields": {"household_id": str(district.h1a.id), "taken_at": T0, "temp_c": 18,
                    "visit_id": str(uuid.uuid4())}}
    answer = d.send(d.push_body([m]))
    assert _statuses(answer) == [("rejected", "out_of_scope")]


def test_mutation_ids_must_increase_within_a_push(client: TestClient, district: District) -> None:
    body = {"client_id": str(uuid.uuid4()), "schema_version": 1, "mutations": [
        {"mutation_id": 2, "table": "visits", "op": "delete", "id": str(uuid.uuid4())},
        {"mutation_id": 2, "table": "visits", "op": "delete", "id": str(uuid.uuid4())}]}
    response = client.post("/api/v1/sync/push", json=body, headers=district.headers(district.steward1))
    assert response.status_code == 422
    assert response.json()["detail"]["code"] == "validation_error"


@pytest.mark.parametrize("mutation_id", [True, "5", 5.0])
def test_a_mutation_id_that_is_not_a_json_integer_is_malformed(client: TestClient, district: District,
                                                               mutation_id: object) -> None:
    """Regression: `true` was read as 1 and "5" as 5, and exactly-once bookkeeping went by that number."""
    body = {"client_id": str(uuid.uuid4()), "schema_version": 1, "mutations": [
        {"mutation_id": mutation_id, "table": "readings", "op": "delete", "id": str(uuid.uuid4())}]}
    response = client.post("/api/v1/sync/push", json=body, headers=district.headers(district.steward1))
    assert response.status_code == 422, response.text
    assert response.json()["detail"]["code"] == "validation_error"


def test_an_unsupported_version_is_refused_before_anything_else(client: TestClient, district: District) -> None:
    headers = district.headers(district.steward1)
    for version in (2, 0, "abc", None):
        body = {"client_id": "not even a uuid", "schema_version": version, "mutations": "nonsense"}
        response = client.post("/api/v1/sync/push", json=body, headers=headers)
        assert response.status_code == 409, version
        assert response.json()["detail"]["code"] == "unsupported_version"
    # Regression: 1.5 passed the check as int(1.5) == 1, then failed the body's validation with a 422.
    for version in (1.5, True, "1.0"):
        body = {"client_id": str(uuid.uuid4()), "schema_version": version, "mutations": []}
        response = client.post("/api/v1/sync/push", json=body, headers=headers)
        assert response.status_code == 409, version
    # Regression: limit and cursor were validated by FastAPI first (422) whatever the version.
    # Regression: `str.isdigit` took ², then `int` refused it (500); 4,301 nines were a 500 too; and the
    # Arabic-Indic ١ was read as version 1.
    for version in ("\u00b2", "\u0661", "9" * 4301):
        body = {"client_id": str(uuid.uuid4()), "schema_version": version, "mutations": []}
        assert_error(client.post("/api/v1/sync/push", json=body, headers=headers), 409, "unsupported_version")
    for params in ({"schema_version": "2"}, {}, {"schema_version": "x", "limit": "99999"},
                   {"schema_version": "0", "limit": "abc"}, {"limit": "1.5", "cursor": "c" * 5000},
                   {"schema_version": "\u00b2"}, {"schema_version": "\u0661"}, {"schema_version": "9" * 4301}):
        response = client.get("/api/v1/sync/pull", params=params, headers=headers)
        assert response.status_code == 409, params
        assert response.json()["detail"]["code"] == "unsupported_version"
    # Regression: a query parameter this server does not know (a newer app's) was refused first, 422
    # `validation_error`, so the app never learnt that it speaks a newer version.
    newer = {"schema_version": "2", "tables": "visits"}
    assert_error(client.get("/api/v1/sync/pull", params=newer, headers=headers), 409, "unsupported_version")
    body = {"client_id": str(uuid.uuid4()), "schema_version": 2, "mutations": []}
    assert_error(client.post("/api/v1/sync/push", params={"compact": "1"}, json=body, headers=headers), 409,
                 "unsupported_version")
    # With the version it speaks, the unknown parameter is still named.
    known = {"schema_version": "1", "tables": "visits"}
    assert_error(client.get("/api/v1/sync/pull", params=known, headers=headers), 422, "validation_error")
    body["schema_version"] = 1
    assert_error(client.post("/api/v1/sync/push", params={"compact": "1"}, json=body, headers=headers), 422,
                 "validation_error")


@pytest.mark.parametrize(("params", "status", "code"), [
    ({"limit": "abc"}, 422, "validation_error"), ({"limit": "1.5"}, 422, "validation_error"),
    ({"limit": "0"}, 422, "validation_error"), ({"limit": "5001"}, 422, "validation_error"),
    ({"limit": "9" * 5000}, 422, "validation_error"), ({"limit": "-1"}, 422, "validation_error"),
    ({"limit": "\u2460"}, 422, "validation_error"), ({"limit": "\u0665"}, 422, "validation_error"),  # ① ٥
    ({"cursor": "c" * 5000}, 400, "invalid_cursor"), ({"cursor": "nonsense"}, 400, "invalid_cursor"),
])
def test_a_bad_limit_or_cursor_is_a_clear_error(client: TestClient, district: District, params: dict[str, str],
                                                status: int, code: str) -> None:
    response = client.get("/api/v1/sync/pull", params={"schema_version": "1", **params},
                          headers=district.headers(district.steward1))
    assert response.status_code == status, response.text
    assert response.json()["detail"]["code"] == code
    ok = client.get("/api/v1/sync/pull", params={"schema_version": "1", "limit": " 5 "},
                    headers=district.headers(district.steward1))
    assert ok.status_code == 200 and ok.json()["has_more"] is True


def test_sync_needs_a_signed_in_user(client: TestClient, district: District) -> None:
    assert client.get("/api/v1/sync/pull", params={"schema_version": 1}).status_code == 401
    body = {"client_id": str(uuid.uuid4()), "schema_version": 1, "mutations": []}
    assert client.post("/api/v1/sync/push", json=body).status_code == 401


def test_a_client_id_belongs_to_one_user(client: TestClient, district: District) -> None:
    body = {"client_id": str(uuid.uuid4()), "schema_version": 1, "mutations": []}
    assert client.post("/api/v1/sync/push", json=body, headers=district.headers(district.steward1)).status_code == 200
    response = client.post("/api/v1/sync/push", json=body, headers=district.headers(district.steward2))
    assert response.status_code == 409
    assert response.json()["detail"]["code"] == "client_id_in_use"


def test_a_push_larger_than_the_limit_is_refused(client: TestClient, district: District, engine: Engine,
                                                 settings) -> None:
    from api.app import create_app

    app = create_app(settings.model_copy(update={"sync_push_max_mutations": 2}), engine=engine)
    with TestClient(app) as small:
        mutations = [{"mutation_id": n, "table": "readings", "op": "delete", "id": str(uuid.uuid4())}
                     for n in range(1, 4)]
        body = {"client_id": str(uuid.uuid4()), "schema_version": 1, "mutations": mutations}
        response = small.post("/api/v1/sync/push", json=body, headers=district.headers(district.steward1))
        assert response.status_code == 413
        body["mutations"] = mutations[:2]
        response = small.post("/api/v1/sync/push", json=body, headers=district.headers(district.steward1))
        assert response.status_code == 200


def test_a_merge_applies_when_the_server_changed_other_fields(client: TestClient, district: District,
                                                              device: Callable[..., Device], engine: Engine) -> None:
    d = device(district.steward1)
    d.pull()
    office = client.patch(f"/api/v1/visits/{district.visit1.id}", json={"indoor_temp_c": 15.5},
                          headers=district.headers(district.supervisor))
    assert office.status_code == 200
    d.update("visits", str(district.visit1.id), actions="replaced the air vent")
    answer = d.push()
    assert _statuses(answer) == [("merged", None)]
    record = answer["results"][0]["record"]
    assert record["indoor_temp_c"] == 15.5 and record["actions"] == "replaced the air vent"
    assert _count(engine, SyncConflict) == 0


def test_field_ownership_decides_conflicts_and_both_values_are_logged(
        client: TestClient, district: District, device: Callable[..., Device], engine: Engine) -> None:
    office = device(district.supervisor, "office")
    field = device(district.steward1, "field")
    office.pull()
    field.pull()
    order = str(district.wo1.id)
    # The office and the steward both edit the order from the same version.
    office.update("work_orders", order, status="in_progress", priority="urgent")
    field.update("work_orders", order, status="waiting_resident")
    assert _statuses(office.push()) == [("applied", None)]
    # status is observed in the field: the device wins; but in_progress -> waiting_resident is legal
    answer = field.push()
    assert _statuses(answer) == [("conflict", "field_conflict")]
    assert answer["results"][0]["record"]["status"] == "waiting_resident"
    assert answer["results"][0]["record"]["priority"] == "urgent"  # untouched office field stays
    # now the office changes priority again, and a supervisor device edits it from the old version
    second = device(district.supervisor, "office2")
    second.pull()
    office.pull()
    office.update("work_orders", order, priority="low")
    second.update("work_orders", order, priority="high")
    office.push()
    answer = second.push()
    assert _statuses(answer) == [("conflict", "field_conflict")]
    assert answer["results"][0]["record"]["priority"] == "low"  # office-owned: the server value stays
    listed = client.get("/api/v1/sync/conflicts", params={"row_id": order},
                        headers=district.headers(district.supervisor)).json()
    assert listed["count"] == 2
    by_field = {(c["field"], c["winner"]): c for c in listed["data"]}
    status = by_field[("status", "device")]
    assert (status["server_value"], status["device_value"]) == ("in_progress", "waiting_resident")
    assert status["client_id"] == field.client_id and status["user_id"] == str(district.steward1.id)
    priority = by_field[("priority", "server")]
    assert (priority["server_value"], priority["device_value"]) == ("low", "high")
    # stewards cannot read the log
    assert client.get("/api/v1/sync/conflicts", headers=district.headers(district.steward1)).status_code == 403


def test_an_illegal_transition_after_a_conflict_is_rejected_and_logged(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    field = device(district.steward1)
    field.pull()
    cancelled = client.post(f"/api/v1/work-orders/{district.wo1.id}/transitions", json={"status": "cancelled"},
                            headers=district.headers(district.supervisor))
    assert cancelled.status_code == 200, cancelled.text
    field.update("work_orders", str(district.wo1.id), status="in_progress")
    answer = field.push()
    assert _statuses(answer) == [("rejected", "invalid_transition")]
    assert answer["results"][0]["record"]["status"] == "cancelled"
    log = client.get("/api/v1/sync/conflicts", headers=district.headers(district.supervisor)).json()["data"]
    assert [(c["field"], c["winner"], c["server_value"], c["device_value"]) for c in log] == [
        ("status", "server", "cancelled", "in_progress")]


def test_a_device_never_conflicts_with_its_own_queued_edits(district: District, device: Callable[..., Device],
                                                           engine: Engine) -> None:
    d = device(district.steward1)
    d.pull()
    order = str(district.wo1.id)
    d.update("work_orders", order, status="in_progress")
    d.update("work_orders", order, status="resolved")  # same base version as the first edit
    d.update("visits", str(district.visit1.id), actions="one")
    first = d.push()
    d.update("visits", str(district.visit1.id), actions="two")
    d.queue[-1]["base_version"] = 1  # edited offline from the old version, pushed later
    second = d.push()
    assert _statuses(first) == [("applied", None)] * 3
    assert _statuses(second) == [("applied", None)]
    assert _count(engine, SyncConflict) == 0


def test_deletes_win_over_updates_both_ways(client: TestClient, district: District,
                                            device: Callable[..., Device], engine: Engine) -> None:
    steward = device(district.steward1, "steward")
    office = device(district.supervisor, "office")
    steward.pull()
    office.pull()
    visit = str(district.visit1.id)
    # the office edits, the steward (its owner) deletes from the old version: the delete wins, logged
    office.update("visits", visit, actions="office note")
    office.push()
    steward.delete("visits", visit)
    answer = steward.push()
    assert _statuses(answer) == [("conflict", "delete_wins")]
    assert answer["results"][0]["record"] is None
    # the office's later edit of the deleted visit does not resurrect it
    office.update("visits", visit, actions="too late")
    answer = office.push()
    assert _statuses(answer) == [("conflict", "deleted")]
    assert answer["results"][0]["record"] is None
    with Session(engine) as s:
        assert s.get(Visit, district.visit1.id) is None
        kinds = sorted(c.kind for c in s.exec(select(SyncConflict)).all())
    assert kinds == ["delete_wins", "deleted"]
    # a delete of something already gone is simply applied
    steward.delete("visits", visit)
    assert _statuses(steward.push()) == [("applied", None)]


def test_deleting_a_visit_clears_its_links_and_devices_learn_it(
        client: TestClient, district: District, device: Callable[..., Device], engine: Engine) -> None:
    d = device(district.steward1)
    other = device(district.steward1, "tablet")
    visit = d.create("visits", household_id=str(district.h1a.id), arrived_at=T0)
    reading = d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=18, visit_id=visit)
    d.push()
    other.pull()
    assert other.rows["readings"][reading]["visit_id"] == visit
    d.delete("visits", visit)
    assert _statuses(d.push()) == [("applied", None)]
    d.pull()
    other.pull()
    assert visit not in other.rows["visits"]
    assert other.rows["readings"][reading]["visit_id"] is None
    assert d.rows["readings"][reading]["visit_id"] is None  # a server side effect reaches the author too
    assert d.rows == server_rows(client, district.headers(district.steward1))


def test_a_deleted_row_of_another_grid_is_answered_as_one_that_never_existed(
        client: TestClient, district: District, engine: Engine) -> None:
    """Regression (review): an update of another grid's deleted row was answered `conflict` / `deleted`, and a
    conflict line written under the steward's name, where an unknown id is `not_found`: the answer told which
    ids of other grids had existed."""
    def push(user: Any, mutations: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
        body = {"schema_version": 1, "client_id": str(uuid.uuid4()), "mutations": mutations}
        return _statuses(client.post("/api/v1/sync/push", json=body, headers=district.headers(user)).json())

    gone = str(uuid.uuid4())
    assert push(district.steward2, [
        {"mutation_id": 1, "table": "visits", "op": "upsert", "id": gone,
         "fields": {"household_id": str(district.h2a.id), "arrived_at": T0}},
        {"mutation_id": 2, "table": "visits", "op": "delete", "id": gone}]) == [("applied", None)] * 2
    update = {"table": "visits", "op": "update", "base_version": 1, "fields": {"actions": "x"}}
    never = str(uuid.uuid4())
    assert push(district.steward1, [{"mutation_id": 1, "id": gone, **update},
                                    {"mutation_id": 2, "id": never, **update}]) == [("rejected", "not_found")] * 2
    # As for a live row of another grid: the id is taken.
    create = {"table": "visits", "op": "upsert", "fields": {"household_id": str(district.h1a.id), "arrived_at": T0}}
    assert push(district.steward1, [{"mutation_id": 1, "id": gone, **create}]) == [("rejected", "already_exists")]
    assert _count(engine, SyncConflict) == 0
    # Whoever could see the row is still told it was deleted: its grid's steward, and the office.
    for user in (district.steward2, district.supervisor):
        assert push(user, [{"mutation_id": 1, "id": gone, **update}]) == [("conflict", "deleted")]


def test_a_link_a_visit_delete_cleared_is_the_servers_write_not_the_devices(
        client: TestClient, district: District, device: Callable[..., Device], engine: Engine) -> None:
    """Regression: the note whose visit a push deleted lost its link as a side effect, and field_versions named
    the pushing device as the link's writer. The device is not sent that note (it is pulled like any server
    write), so its stored record still holds the link; its next full write from that record carried the old
    link as if the device changed it: `read_only_field`, and the note's edit was lost."""
    d = device(district.steward1)
    visit = d.create("visits", household_id=str(district.h1a.id), arrived_at=T0)
    note = d.create("notes", audio_sha256="c" * 64, duration_s=3.0, recorded_at=T0, visit_id=visit)
    d.push()
    d.delete("visits", visit)
    assert _statuses(d.push()) == [("applied", None)]
    with Session(engine) as s:
        stored = s.get(Note, uuid.UUID(note))
        assert stored is not None and stored.visit_id is None
        assert stored.field_versions is not None and stored.field_versions["visit_id"] == [2, None]
        assert stored.origin_client_id is None
    record = d.rows["notes"][note]
    assert record["visit_id"] == visit  # the device has not pulled since
    full = {k: v for k, v in record.items() if k not in ("id", "version")} | {"duration_s": 4.0}
    answer = d.send(d.push_body([{"mutation_id": 10, "table": "notes", "op": "upsert", "id": note,
                                  "base_version": record["version"], "fields": full}]))
    assert _statuses(answer) == [("merged", None)]
    assert (answer["results"][0]["record"]["duration_s"], answer["results"][0]["record"]["visit_id"]) == (4.0, None)
    assert _count(engine, SyncConflict) == 0


def _fail_readings_at_13_degrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the readings' bulk rule for a reading of 13.0 degrees: a batch holding one goes down the savepoint
    path (a failing mutation makes the push retry the batch with a savepoint per mutation)."""
    create_values = rules.RULES["readings"].create_values
    assert create_values is not None

    def broken(ctx, id, fields):  # type: ignore[no-untyped-def]
        if fields["temp_c"] == 13.0:
            raise RuntimeError("a bug in a rule")
        return create_values(ctx, id, fields)

    monkeypatch.setitem(rules.RULES, "readings", dataclasses.replace(rules.RULES["readings"], create_values=broken))


@pytest.mark.parametrize("path", ["fast", "savepoints"])
@pytest.mark.parametrize("delete_first", [True, False])
def test_a_link_a_visit_delete_cleared_in_the_same_push_is_the_servers_write_too(
        client: TestClient, district: District, device: Callable[..., Device], engine: Engine,
        monkeypatch: pytest.MonkeyPatch, delete_first: bool, path: str) -> None:
    """Regression: as above, with the visit's delete and the full write of its note from the device's old copy in
    one batch. The fast path flushes the batch once, so the note's field_versions did not show the server's
    clear yet: the stale link read as the device's change, `read_only_field`, and the note's edit was lost. The
    other order (the note's write first) clears the link after the edit; both answer the note as stored."""
    if path == "savepoints":
        _fail_readings_at_13_degrees(monkeypatch)
    d = device(district.steward1)
    visit = d.create("visits", household_id=str(district.h1a.id), arrived_at=T0)
    note = d.create("notes", audio_sha256="c" * 64, duration_s=3.0, recorded_at=T0, visit_id=visit)
    d.push()
    record = d.rows["notes"][note]
    full = {k: v for k, v in record.items() if k not in ("id", "version")} | {"duration_s": 4.0}
    delete = {"table": "visits", "op": "delete", "id": visit, "base_version": 1, "fields": {}}
    write = {"table": "notes", "op": "upsert", "id": note, "base_version": record["version"], "fields": full}
    batch = [delete, write] if delete_first else [write, delete]
    if path == "savepoints":
        batch.append({"table": "readings", "op": "upsert", "id": str(uuid.uuid4()), "base_version": None,
                      "fields": {"household_id": str(district.h1a.id), "taken_at": T0, "temp_c": 13.0}})
    answer = d.send(d.push_body([m | {"mutation_id": 10 + n} for n, m in enumerate(batch)]))
    # Deleted first, the note's write is merged with the server's clear, as when the two come in separate pushes.
    expected = [("applied", None), ("merged", None)] if delete_first else [("applied", None), ("applied", None)]
    assert _statuses(answer)[:2] == expected
    written = next(r["record"] for r in answer["results"] if r["record"] is not None)
    assert (written["id"], written["duration_s"], written["visit_id"]) == (note, 4.0, None)
    assert _count(engine, SyncConflict) == 0
    with Session(engine) as s:
        stored = s.get(Note, uuid.UUID(note))
        assert stored is not None and (stored.duration_s, stored.visit_id) == (4.0, None)
        assert stored.field_versions is not None and stored.field_versions["visit_id"][1] is None
        assert stored.field_versions["duration_s"][1] == d.client_id
        assert written["version"] == stored.version
    d.rows["notes"][note] = written
    d.rows["visits"].pop(visit)
    d.pull()
    assert d.rows == server_rows(client, district.headers(district.steward1))


def test_what_the_server_derives_from_a_devices_own_edit_stays_the_devices(
        district: District, device: Callable[..., Device], engine: Engine) -> None:
    """The SLA a pushed priority moves is sent to the device in its record, as `origin` counts the row the
    device's: a deadline the device queued from the same base (the answer of the priority was lost) is its own
    later edit, not a conflict with the server that its SLA loses."""
    office = device(district.supervisor)
    office.pull()
    order = str(district.wo1.id)
    office.update("work_orders", order, priority="urgent")
    office.send(office.push_body())  # the answer is lost
    office.update("work_orders", order, sla_due_at="2030-06-01T00:00:00.000000+00:00")
    answer = office.push()
    assert _statuses(answer) == [("duplicate", None), ("applied", None)]
    assert _ts(answer["results"][1]["record"]["sla_due_at"]) == _ts("2030-06-01T00:00:00+00:00")
    assert _count(engine, SyncConflict) == 0


@pytest.mark.parametrize("visit_pushed_before", [True, False])
def test_a_reading_taken_in_a_visit_deleted_by_the_same_push_loses_the_link_everywhere(
        client: TestClient, district: District, device: Callable[..., Device], visit_pushed_before: bool) -> None:
    """Regression: new readings are written after every mutation ran, so the visit's delete did not clear
    them; the push answered the link the database then dropped, without a version or a change for pulls.
    Also: the reading as the device created it, re-sent without the answer (no base_version), was refused
    `append_only` for the link the server dropped; it is answered as stored."""
    d, other = device(district.steward1), device(district.steward1, "tablet")
    d.pull()
    other.pull()
    visit = d.create("visits", household_id=str(district.h1a.id), arrived_at=T0)
    if visit_pushed_before:
        d.push()
    reading = d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=17.0, visit_id=visit)
    as_created = {k: v for k, v in d.rows["readings"][reading].items() if k not in ("id", "version")}
    d.delete("visits", visit)
    answer = d.push()
    assert {r["status"] for r in answer["results"]} == {"applied"}
    pushed = next(r["record"] for r in answer["results"] if r["record"] and r["record"]["id"] == reading)
    assert pushed["visit_id"] is None
    truth = server_rows(client, district.headers(district.steward1))
    assert truth["readings"][reading]["visit_id"] is None and visit not in truth["visits"]
    resent = {"mutation_id": 50, "table": "readings", "op": "upsert", "id": reading, "base_version": None,
              "fields": as_created}
    again = d.send(d.push_body([resent]))["results"][0]
    assert (again["status"], again["reason"], again["record"]) == ("applied", None, truth["readings"][reading])
    d.pull()
    other.pull()
    assert d.rows == other.rows == truth


@pytest.mark.parametrize("base_version", [1, None])
@pytest.mark.parametrize("how", ["separate", "fast", "savepoints"])
def test_a_readings_full_write_from_before_a_visit_delete_cleared_its_link_is_harmless(
        district: District, device: Callable[..., Device], engine: Engine, monkeypatch: pytest.MonkeyPatch,
        how: str, base_version: int | None) -> None:
    """Regression: a visit's delete clears its readings' link as the server's write. A full write of such a
    reading from the device's old copy (re-sent after a lost answer), equal to what the device created but for
    that link, read the stale link as a change to an append-only row: `rejected` / `append_only`, in separate
    pushes and in one batch. The stale link is dropped as for notes and nothing is written; a change to the
    reading's own data is still `append_only`."""
    if how == "savepoints":
        _fail_readings_at_13_degrees(monkeypatch)
    d = device(district.steward1)
    visit = d.create("visits", household_id=str(district.h1a.id), arrived_at=T0)
    reading = d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=18.0, visit_id=visit)
    d.push()
    record = d.rows["readings"][reading]
    full = {k: v for k, v in record.items() if k not in ("id", "version")}
    delete = {"table": "visits", "op": "delete", "id": visit, "base_version": 1, "fields": {}}
    write = {"table": "readings", "op": "upsert", "id": reading, "base_version": base_version, "fields": full}
    changed = write | {"fields": full | {"temp_c": 25.0}}
    pushes = [[delete], [write, changed]] if how == "separate" else [[delete, write, changed]]
    if how == "savepoints":
        pushes[0].append({"table": "readings", "op": "upsert", "id": str(uuid.uuid4()), "base_version": None,
                          "fields": {"household_id": str(district.h1a.id), "taken_at": T0, "temp_c": 13.0}})
    results: list[dict[str, Any]] = []
    for n, batch in enumerate(pushes):
        answer = d.send(d.push_body([m | {"mutation_id": 10 * (n + 1) + i} for i, m in enumerate(batch)]))
        results += answer["results"]
    assert [(r["status"], r["reason"]) for r in results[:3]] == [
        ("applied", None), ("applied", None), ("rejected", "append_only")]
    for result in results[1:3]:  # both answer the reading as stored: the link cleared, the data as taken
        assert (result["record"]["visit_id"], result["record"]["temp_c"], result["version"]) == (None, 18.0, 2)
    assert _count(engine, SyncConflict) == 0
    with Session(engine) as s:
        stored = s.get(Reading, uuid.UUID(reading))
        assert stored is not None and (stored.visit_id, stored.temp_c, stored.version) == (None, 18.0, 2)
        assert stored.field_versions == {"visit_id": [2, None]}


def test_readings_are_append_only_and_never_conflict(client: TestClient, district: District,
                                                     device: Callable[..., Device], engine: Engine) -> None:
    d = device(district.steward1)
    d.pull()
    reading = d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=18.0)
    d.push()
    # a full write with the same values is a no-op; with other values it is refused
    same = d.rows["readings"][reading]
    fields = {k: same[k] for k in ("household_id", "taken_at", "temp_c", "room")}
    m = {"mutation_id": 10, "table": "readings", "op": "upsert", "id": reading, "base_version": 1, "fields": fields}
    assert _statuses(d.send(d.push_body([m]))) == [("applied", None)]
    m = {"mutation_id": 11, "table": "readings", "op": "upsert", "id": reading, "base_version": 1,
         "fields": fields | {"temp_c": 25.0}}
    assert _statuses(d.send(d.push_body([m]))) == [("rejected", "append_only")]
    m = {"mutation_id": 12, "table": "readings", "op": "delete", "id": reading, "base_version": 1}
    assert _statuses(d.send(d.push_body([m]))) == [("applied", None)]
    assert _count(engine, SyncConflict) == 0


def test_an_upsert_of_an_existing_row_writes_only_what_differs(client: TestClient, district: District,
                                                               device: Callable[..., Device]) -> None:
    d = device(district.steward1)
    visit = d.create("visits", household_id=str(district.h1a.id), arrived_at=T0, actions="first")
    d.push()
    full = {k: v for k, v in d.rows["visits"][visit].items()
            if k in ("household_id", "work_order_id", "arrived_at", "left_at", "indoor_temp_c", "actions", "result")}
    m = {"mutation_id": 5, "table": "visits", "op": "upsert", "id": visit, "base_version": 1,
         "fields": full | {"actions": "second"}}
    answer = d.send(d.push_body([m]))
    assert _statuses(answer) == [("applied", None)]
    assert answer["results"][0]["record"]["actions"] == "second"
    m = {"mutation_id": 6, "table": "visits", "op": "upsert", "id": visit, "base_version": 2,
         "fields": full | {"household_id": str(district.h1b.id)}}
    assert _statuses(d.send(d.push_body([m]))) == [("rejected", "read_only_field")]


def test_a_full_write_of_the_stored_record_applies_its_edit(district: District, session: Session,
                                                             device: Callable[..., Device]) -> None:
    """Regression: a device that re-sent its stored record with one edit was refused `read_only_field`
    (`created_at`, `updated_at`; for a note, a `transcript_status` that had moved on), and the record that
    came back replaced its row: the edit was lost."""
    d = device(district.steward1)
    visit = d.create("visits", household_id=str(district.h1a.id), arrived_at=T0, actions="first")
    note = d.create("notes", audio_sha256="b" * 64, duration_s=3.0, recorded_at=T0, visit_id=visit)
    d.push()
    stored = session.get(Note, uuid.UUID(note))
    assert stored is not None
    stored.transcript_status = TranscriptStatus.pending  # the audio came: queued since the device's copy
    session.add(stored)
    session.commit()
    mutations = []
    for n, (table, row_id, edit) in enumerate((("visits", visit, {"actions": "second"}),
                                               ("notes", note, {"duration_s": 4.0}))):
        record = d.rows[table][row_id]
        full = {k: v for k, v in record.items() if k not in ("id", "version")} | edit
        mutations.append({"mutation_id": 10 + n, "table": table, "op": "upsert", "id": row_id,
                          "base_version": record["version"], "fields": full})
    answer = d.send(d.push_body(mutations))
    assert _statuses(answer) == [("applied", None), ("merged", None)]  # the status moved on: merged
    visit_record, note_record = (r["record"] for r in answer["results"])
    assert visit_record["actions"] == "second"
    assert (note_record["duration_s"], note_record["transcript_status"]) == (4.0, "pending")


def test_a_full_write_with_a_stale_copy_of_office_fields_applies_the_stewards_edit(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    """Regression: the office raised an order's priority after the steward's copy; the steward's full write
    (status changed, the old priority and SLA with it) was refused `read_only_field`, and its status lost."""
    phone = device(district.steward1)
    phone.pull()
    order = str(district.wo1.id)
    record = dict(phone.rows["work_orders"][order])
    office = client.patch(f"/api/v1/work-orders/{order}", json={"priority": "urgent"},
                          headers=district.headers(district.supervisor))
    assert office.status_code == 200, office.text
    full = {k: v for k, v in record.items() if k not in ("id", "version")} | {"status": "in_progress"}
    answer = phone.send(phone.push_body([{"mutation_id": 1, "table": "work_orders", "op": "upsert", "id": order,
                                          "base_version": record["version"], "fields": full}]))
    result = answer["results"][0]
    assert result["status"] in ("applied", "merged"), result
    assert (result["record"]["status"], result["record"]["priority"]) == ("in_progress", "urgent")
    # a steward changing an office field nobody else touched is still refused
    record = result["record"]
    full = {k: v for k, v in record.items() if k not in ("id", "version")} | {"priority": "low"}
    answer = phone.send(phone.push_body([{"mutation_id": 2, "table": "work_orders", "op": "upsert", "id": order,
                                          "base_version": record["version"], "fields": full}]))
    assert _statuses(answer) == [("rejected", "read_only_field")]


def test_a_full_write_without_the_servers_creation_values_applies_the_stewards_edit(
        district: District, device: Callable[..., Device], engine: Engine) -> None:
    """Regression: the server sets fields of a row it creates (a cold sensitive home's order is raised to `high`);
    a device that wrote its row in full before it had the server's copy (queued in the same push, or after
    the create's answer was lost) still held its own value of that office field. Nothing recorded that the
    server set it, so the full write looked like a steward changing the priority: `read_only_field`, and the
    status change was lost."""
    d = device(district.steward1)
    household = str(district.h1b.id)  # sensitive
    order = d.create("work_orders", household_id=household, category="not_warm", priority="normal", source="visit")
    d.update("work_orders", order, status="in_progress")  # not pushed yet: a full write of the local copy
    answer = d.push()
    assert _statuses(answer) == [("applied", None), ("applied", None)]
    record = answer["results"][1]["record"]
    assert (record["status"], record["priority"]) == ("in_progress", "high")
    # The same after a lost answer: the create is pushed again with the full write queued behind it.
    lost = d.create("work_orders", household_id=household, category="not_warm", priority="normal", source="visit")
    d.send(d.push_body())
    d.update("work_orders", lost, status="in_progress")
    answer = d.push()
    assert _statuses(answer) == [("duplicate", None), ("applied", None)]
    assert (answer["results"][1]["record"]["status"], answer["results"][1]["record"]["priority"]) == (
        "in_progress", "high")
    # Moved on since by the office, the same: the full write applies and does not conflict.
    office = d.create("work_orders", household_id=household, category="not_warm", priority="normal", source="visit")
    d.send(d.push_body())
    with Session(engine) as s:
        row = s.get(WorkOrder, uuid.UUID(office))
        assert row is not None
        row.description = "the office's words"
        s.add(row)
        s.commit()
    d.update("work_orders", office, status="in_progress")
    answer = d.push()
    assert _statuses(answer)[1] in (("applied", None), ("merged", None))
    record = answer["results"][1]["record"]
    assert (record["status"], record["priority"], record["description"]) == ("in_progress", "high",
                                                                             "the office's words")
    # From the server's copy (a base_version), an office field the device changes is still refused.
    held = d.rows["work_orders"][lost]
    full = {k: v for k, v in held.items() if k not in ("id", "version")} | {"priority": "low"}
    answer = d.send(d.push_body([{"mutation_id": 99, "table": "work_orders", "op": "upsert", "id": lost,
                                  "base_version": held["version"], "fields": full}]))
    assert _statuses(answer) == [("rejected", "read_only_field")]
    assert _count(engine, SyncConflict) == 0


def test_one_base_version_out_of_range_rejects_that_mutation_only(district: District, session: Session,
                                                                   device: Callable[..., Device]) -> None:
    """Regression: `base_version: 0` (a client's "never synced") refused the whole batch with 422, and the
    device resent the same batch for ever."""
    d = device(district.steward1)
    reading = d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=18.0)
    bad = [{"mutation_id": 2 + n, "table": "visits", "op": op, "id": str(district.visit1.id), "base_version": v,
            "fields": {"actions": "x"} if op == "update" else {}}
           for n, (op, v) in enumerate((("update", 0), ("update", -3), ("delete", 2**63), ("update", 2**70),
                                        ("update", 2**31)))]  # past the 32-bit version column
    # Regression: on PostgreSQL an upsert of a missing row with base_version 3,000,000,000 failed writing its
    # `deleted` conflict line (a 32-bit column): `rejected` / `constraint`. No row ever had that version.
    bad.append({"mutation_id": 7, "table": "visits", "op": "upsert", "id": str(uuid.uuid4()),
                "base_version": 3_000_000_000, "fields": {"household_id": str(district.h1a.id), "arrived_at": T0}})
    # Regression: a delete from a version newer than the server's (a device ahead of a restored database) was
    # applied, with no line in the conflict log to put the row back from; an update from it was refused.
    assert district.visit1.version == 1
    bad.append({"mutation_id": 8, "table": "visits", "op": "delete", "id": str(district.visit1.id), "base_version": 5})
    answer = d.send(d.push_body(d.queue + bad))
    assert _statuses(answer) == [("applied", None)] + [("rejected", "invalid_base_version")] * 7
    assert session.get(Reading, uuid.UUID(reading)) is not None
    assert session.get(Visit, district.visit1.id) is not None


def test_an_sla_the_server_kept_in_a_conflict_is_not_moved_by_the_devices_priority(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    """Regression: when the office's SLA won a conflict, a priority change in the same mutation computed a new
    SLA that neither side had set, while the answer said the server kept it."""
    order = str(district.wo1.id)
    office = device(district.supervisor)
    office.pull()
    kept = "2030-06-01T00:00:00.000000+00:00"
    assert client.patch(f"/api/v1/work-orders/{order}", json={"sla_due_at": kept},
                        headers=district.headers(district.supervisor)).status_code == 200
    office.update("work_orders", order, priority="urgent", sla_due_at="2031-01-01T00:00:00.000000+00:00")
    result = office.push()["results"][0]
    assert (result["status"], result["reason"]) == ("conflict", "field_conflict")
    assert "the server kept sla_due_at" in result["message"]
    assert result["record"]["priority"] == "urgent" and _ts(result["record"]["sla_due_at"]) == _ts(kept)


def test_a_null_note_field_is_an_invalid_value_not_a_database_error(district: District,
                                                                    device: Callable[..., Device]) -> None:
    """Regression: null kind, duration or time of a note passed validation and the NOT NULL column refused
    it: `rejected` / `constraint` with the database's text."""
    phone = device(district.steward1)
    phone.pull()
    for name in ("kind", "duration_s", "recorded_at"):
        phone.update("notes", str(district.note1.id), **{name: None})
    answer = phone.push()
    assert _statuses(answer) == [("rejected", "invalid_value")] * 3


def test_an_upsert_with_an_id_taken_outside_the_scope_is_refused(district: District,
                                                                 device: Callable[..., Device]) -> None:
    d = device(district.steward1)
    m = {"mutation_id": 1, "table": "visits", "op": "upsert", "id": str(district.wo2.id), "base_version": None,
         "fields": {"household_id": str(district.h1a.id), "arrived_at": T0}}
    # the id exists in another table: not a clash; a visit of steward2 is
    d.send(d.push_body([m]))
    other = device(district.steward2)
    visit = other.create("visits", household_id=str(district.h2a.id), arrived_at=T0)
    other.push()
    m = {"mutation_id": 2, "table": "visits", "op": "upsert", "id": visit, "base_version": None,
         "fields": {"household_id": str(district.h1a.id), "arrived_at": T0}}
    assert _statuses(d.send(d.push_body([m]))) == [("rejected", "already_exists")]


def test_the_office_assigns_and_edits_work_orders_through_sync(client: TestClient, district: District,
                                                               device: Callable[..., Device], engine: Engine) -> None:
    office = device(district.supervisor)
    office.pull()
    order = str(district.wo3.id)  # new, unassigned
    office.update("work_orders", order, assignee_id=str(district.steward1.id), category="leak")
    answer = office.push()
    assert _statuses(answer) == [("applied", None)]
    record = answer["results"][0]["record"]
    assert record["status"] == "assigned" and record["assignee_id"] == str(district.steward1.id)
    office.update("work_orders", order, assignee_id=str(district.supervisor.id))
    assert _statuses(office.push()) == [("rejected", "invalid_value")]
    # a cold sensitive home is at least high priority, whatever the device wrote
    sensitive = office.create("work_orders", household_id=str(district.h1b.id), category="not_warm",
                              priority="low")
    record = office.push()["results"][0]["record"]
    assert record["id"] == sensitive and record["priority"] == "high" and record["status"] == "new"
    with Session(engine) as s:
        assert s.get(WorkOrder, uuid.UUID(sensitive)) is not None


def test_an_office_device_cannot_move_a_household_to_another_flat(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    """Unit and room are corrected over REST, where the flat is checked to be free; a push may not write them."""
    office = device(district.supervisor)
    office.pull()
    office.update("households", str(district.h1a.id), room="9999")
    assert _statuses(office.push()) == [("rejected", "read_only_field")]


def test_a_new_priority_or_category_moves_the_sla_as_the_rest_api_does(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    """Regression: a pushed priority or category change kept the old `sla_due_at`; a REST PATCH moves it."""
    office = device(district.supervisor)
    headers = district.headers(district.supervisor)
    twins = [client.post("/api/v1/work-orders", json={"household_id": str(district.h1b.id), "category": "leak"},
                         headers=headers).json() for _ in range(2)]
    office.pull()

    def due(order: dict) -> timedelta:
        return _ts(order["sla_due_at"]) - _ts(order["created_at"])

    assert due(twins[0]) == due(twins[1])
    before = due(twins[0])
    # the same edits on both twins: through REST, and through a push
    for edit in ({"priority": "urgent"}, {"category": "not_warm"}, {"priority": "low"}):
        rest = client.patch(f"/api/v1/work-orders/{twins[0]['id']}", json=edit, headers=headers)
        assert rest.status_code == 200, rest.text
        office.update("work_orders", twins[1]["id"], **edit)
        answer = office.push()
        assert _statuses(answer) == [("applied", None)]
        pushed = answer["results"][0]["record"]
        assert (pushed["priority"], pushed["category"]) == (rest.json()["priority"], rest.json()["category"])
        assert due(pushed) == due(rest.json()) != before, edit
        before = due(pushed)
    office.update("work_orders", twins[1]["id"], priority="urgent", sla_due_at="2031-01-01T00:00:00.000000+00:00")
    pushed = office.push()["results"][0]["record"]
    assert pushed["priority"] == "urgent" and _ts(pushed["sla_due_at"]) == _ts("2031-01-01T00:00:00+00:00")


def test_edits_are_checked_against_the_status_a_mutation_moves_the_order_to(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    """Regression: edits were checked against the status before the same mutation's status change, so a
    cancelled order took edits (REST refuses them) and a reopened one was refused them."""
    office = device(district.supervisor)
    office.pull()
    cancelled = str(district.wo3.id)  # new
    office.update("work_orders", cancelled, status="cancelled", priority="urgent", description="edited")
    answer = office.push()
    assert _statuses(answer) == [("rejected", "not_editable")]
    record = answer["results"][0]["record"]
    assert (record["status"], record["priority"], record["description"]) == ("new", "normal", "")
    resolved = client.post(f"/api/v1/work-orders/{district.wo2.id}/transitions", json={"status": "resolved"},
                           headers=district.headers(district.supervisor))
    assert resolved.status_code == 200, resolved.text
    office.pull()
    reopened = str(district.wo2.id)
    office.update("work_orders", reopened, description="still cold")  # a resolved order is not edited...
    office.update("work_orders", reopened, status="in_progress", description="still cold")  # ...a reopened one is
    answer = office.push()
    assert _statuses(answer) == [("rejected", "not_editable"), ("applied", None)]
    record = answer["results"][1]["record"]
    assert (record["status"], record["description"], record["resolved_at"]) == ("in_progress", "still cold", None)


def test_a_steward_opens_work_orders_from_the_field_only_for_themselves(
        district: District, device: Callable[..., Device]) -> None:
    d = device(district.steward1)
    ok = d.create("work_orders", household_id=str(district.h1a.id), category="leak", source="visit")
    d.create("work_orders", household_id=str(district.h1a.id), category="leak", source="hotline")
    d.create("work_orders", household_id=str(district.h1a.id), category="leak", source="visit",
             assignee_id=str(district.steward2.id))
    d.create("work_orders", household_id=str(district.h1a.id), category="leak", source="visit",
             sla_due_at="2099-01-01T00:00:00Z")  # the SLA is the office's
    d.create("work_orders", household_id=str(district.h1a.id), category="leak", source="visit",
             priority="low")  # Regression (review): `low` lengthened the SLA the rules give
    answer = d.push()
    assert _statuses(answer) == [("applied", None)] + [("rejected", "forbidden")] * 4
    record = answer["results"][0]["record"]
    assert record["id"] == ok and record["assignee_id"] == str(district.steward1.id)
    assert record["status"] == "assigned"


def test_the_push_cursor_skips_the_devices_own_writes(client: TestClient, district: District,
                                                      device: Callable[..., Device]) -> None:
    d = device(district.steward1)
    d.pull()
    for n in range(5):
        d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=15 + n)
    d.update("visits", str(district.visit1.id), actions="mine")
    d.push()
    # meanwhile the office changes something in the steward's scope
    client.patch(f"/api/v1/households/{district.h1b.id}", json={"resident_name": "张三"},
                 headers=district.headers(district.supervisor))
    page = d.pull_page()
    changes = {t: c for t, c in page["changes"].items() if c["upserts"] or c["deletes"]}
    assert list(changes) == ["households"]  # only the office's change: no echo of the 6 pushed rows
    assert [r["id"] for r in changes["households"]["upserts"]] == [str(district.h1b.id)]
    assert d.rows == server_rows(client, district.headers(district.steward1))
    # another device of the same steward does receive them
    other = device(district.steward1, "tablet")
    other.pull()
    assert other.rows == d.rows


def test_new_readings_written_in_bulk_carry_the_sequence_and_their_device(
        client: TestClient, district: District, device: Callable[..., Device], engine: Engine) -> None:
    author, neighbour = device(district.steward1, "author"), device(district.steward1, "neighbour")
    author.pull()
    neighbour.pull()
    made = [author.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=15 + n)
            for n in range(6)]
    gone = author.create("readings", household_id=str(district.h1b.id), taken_at=T0, temp_c=12.0)
    author.delete("readings", gone)  # named twice in the batch: through the session, not the bulk insert
    visit = author.create("visits", household_id=str(district.h1a.id), arrived_at=T0, actions="mistake")
    author.delete("visits", visit)  # a create and a delete in one batch (this was a 500 before)
    answer = author.push()
    assert [r["status"] for r in answer["results"]] == ["applied"] * 10
    assert [r["record"]["temp_c"] for r in answer["results"][:6]] == [15, 16, 17, 18, 19, 20]
    assert all(r["version"] == 1 for r in answer["results"][:6])
    with Session(engine) as s:
        rows = s.exec(select(Reading).where(Reading.id.in_([uuid.UUID(i) for i in made]))).all()  # type: ignore[attr-defined]
        assert len(rows) == 6 and s.get(Reading, uuid.UUID(gone)) is None
        assert {r.seq for r in rows} == {max(r.seq for r in rows)} and rows[0].seq > 0
        assert {str(r.origin_client_id) for r in rows} == {author.client_id}
        assert {r.taken_by_id for r in rows} == {district.steward1.id}
    page = author.pull_page()
    assert page["changes"]["readings"]["upserts"] == []  # no echo of its own writes
    neighbour.pull()
    assert set(made) <= set(neighbour.rows["readings"]) and gone not in neighbour.rows["readings"]
    assert visit not in neighbour.rows["visits"]
    assert neighbour.rows["readings"] == server_rows(client, district.headers(district.steward1))["readings"]


def test_a_new_visit_and_the_readings_taken_during_it_apply_in_one_pass(
        district: District, device: Callable[..., Device], engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: the bulk insert of new readings ran before the session's rows were flushed, so a reading
    # naming a visit of the same batch failed its foreign key and the whole batch was redone with a savepoint
    # per mutation (the answers were right, the change-sequence lock was held about three times as long).
    passes: list[bool] = []
    apply = push_module._apply

    def counted(*args: Any, savepoints: bool, **kwargs: Any) -> Any:
        passes.append(savepoints)
        return apply(*args, savepoints=savepoints, **kwargs)

    monkeypatch.setattr(push_module, "_apply", counted)
    d = device(district.steward1)
    d.pull()
    visit = d.create("visits", household_id=str(district.h1a.id), arrived_at=T0, actions="bled the radiator")
    made = [d.create("readings", household_id=str(district.h1a.id), visit_id=visit, taken_at=T0, temp_c=17 + n)
            for n in range(3)]
    answer = d.push()
    assert [r["status"] for r in answer["results"]] == ["applied"] * 4
    assert passes == [False]  # the fast path alone, no savepoint pass
    with Session(engine) as s:
        rows = s.exec(select(Reading).where(Reading.id.in_([uuid.UUID(i) for i in made]))).all()  # type: ignore[attr-defined]
        assert {str(r.visit_id) for r in rows} == {visit} and len(rows) == 3


def test_a_rule_that_refuses_after_changing_the_row_rejects_only_that_mutation(
        district: District, device: Callable[..., Device], engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fast path applies a batch without savepoints; a rule that changes a row and then refuses must
    # send the batch down the savepoint path, so the refused change does not stay behind.
    apply = rules.RULES["visits"].apply
    assert apply is not None

    def late_refusal(ctx, row, fields):  # type: ignore[no-untyped-def]
        apply(ctx, row, fields)
        if fields.get("actions") == "refused late":
            raise rules.Rejected("invalid_value", "refused after the change")

    monkeypatch.setitem(rules.RULES, "visits", dataclasses.replace(rules.RULES["visits"], apply=late_refusal))
    d = device(district.steward1)
    d.pull()
    d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=18.0)
    d.update("visits", str(district.visit1.id), actions="refused late")
    d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=19.0)
    answer = d.push()
    assert _statuses(answer) == [("applied", None), ("rejected", "invalid_value"), ("applied", None)]
    assert answer["results"][1]["record"]["actions"] == "bled radiators"
    assert _count(engine, Reading) == 3
    with Session(engine) as s:
        assert s.get(Visit, district.visit1.id).actions == "bled radiators"  # type: ignore[union-attr]


def test_a_null_work_order_status_is_rejected_and_the_queue_moves_on(
        district: District, device: Callable[..., Device], engine: Engine) -> None:
    """Regression: `Status(None)` raised before the null check, a 500 that failed the batch on every retry."""
    for user, order in ((district.steward1, district.wo1), (district.supervisor, district.wo3)):
        d = device(user)
        mutations = [
            {"mutation_id": 1, "table": "work_orders", "op": "update", "id": str(order.id),
             "base_version": order.version, "fields": {"status": None}},
            {"mutation_id": 2, "table": "readings", "op": "upsert", "id": str(uuid.uuid4()), "base_version": None,
             "fields": {"household_id": str(district.h1a.id), "taken_at": T0, "temp_c": 18}}]
        answer = d.send(d.push_body(mutations))
        assert _statuses(answer) == [("rejected", "invalid_value"), ("applied", None)]
        assert "status" in answer["results"][0]["message"]
        assert answer["results"][0]["record"]["status"] == order.status.value
        assert answer["last_mutation_id"] == 2
    assert _count(engine, Reading) == 3


def test_a_mutation_that_fails_unexpectedly_is_rejected_and_the_rest_of_the_batch_applies(
        district: District, device: Callable[..., Device], engine: Engine, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # A bug in a rule (here: made to raise) must cost only its own mutation, never the request: a failed
    # request is retried as it is, and the device's queue would be stuck behind it forever.
    apply = rules.RULES["visits"].apply
    create, create_values = rules.RULES["readings"].create, rules.RULES["readings"].create_values
    assert apply is not None and create is not None and create_values is not None

    def broken_apply(ctx, row, fields):  # type: ignore[no-untyped-def]
        if fields.get("actions") == "boom":
            raise RuntimeError("a bug in a rule")
        apply(ctx, row, fields)

    def broken(make):  # type: ignore[no-untyped-def]  (both paths of new readings: bulk and one by one)
        def create_or_fail(ctx, id, fields):  # type: ignore[no-untyped-def]
            if fields["temp_c"] == 13.0:
                raise RuntimeError("a bug in a rule")
            return make(ctx, id, fields)
        return create_or_fail

    monkeypatch.setitem(rules.RULES, "visits", dataclasses.replace(rules.RULES["visits"], apply=broken_apply))
    monkeypatch.setitem(rules.RULES, "readings", dataclasses.replace(
        rules.RULES["readings"], create=broken(create), create_values=broken(create_values)))
    d = device(district.steward1)
    d.pull()
    d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=18.0)
    d.update("visits", str(district.visit1.id), actions="boom")
    d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=13.0)
    d.update("work_orders", str(district.wo1.id), status="in_progress")
    d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=19.0)
    with caplog.at_level("ERROR", logger="sync.push"):
        answer = d.push()  # `send` checks the 200
    assert _statuses(answer) == [("applied", None), ("rejected", "server_error"), ("rejected", "server_error"),
                                 ("applied", None), ("applied", None)]
    assert all(r["message"] for r in answer["results"][1:3])
    assert answer["results"][1]["record"]["actions"] == "bled radiators" and answer["results"][2]["record"] is None
    assert answer["last_mutation_id"] == 5
    assert _count(engine, Reading) == 3
    with Session(engine) as s:
        assert s.get(Visit, district.visit1.id).actions == "bled radiators"  # type: ignore[union-attr]
        assert s.get(WorkOrder, district.wo1.id).status == Status.in_progress  # type: ignore[union-attr]
    failures = [r for r in caplog.records if r.name == "sync.push"]
    assert len(failures) == 2 and all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in failures)


def test_a_deadlock_fails_the_whole_push_for_a_resend_instead_of_rejecting_the_mutation(
        district: District, device: Callable[..., Device], engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a deadlock (or a serialization failure, a lost connection) while one mutation applied was
    answered `rejected` / `constraint`, so the device dropped a change that would apply when sent again. It
    is the database's moment, not the mutation's fault: 503 for the whole push, nothing of it kept."""
    from sqlalchemy.exc import OperationalError

    create, create_values = rules.RULES["readings"].create, rules.RULES["readings"].create_values
    assert create is not None and create_values is not None
    failing = [True]

    def deadlocked(make):  # type: ignore[no-untyped-def]  (both paths of new readings: bulk and one by one)
        def create_or_fail(ctx, id, fields):  # type: ignore[no-untyped-def]
            if failing[0] and fields["temp_c"] == 13.0:
                raise OperationalError("INSERT INTO readings ...", {}, Exception("deadlock detected"))
            return make(ctx, id, fields)
        return create_or_fail

    monkeypatch.setitem(rules.RULES, "readings", dataclasses.replace(
        rules.RULES["readings"], create=deadlocked(create), create_values=deadlocked(create_values)))
    d = device(district.steward1)
    d.pull()
    before = _count(engine, Reading)
    d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=18.0)
    d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=13.0)
    body = d.push_body()
    answer = d.http.post("/api/v1/sync/push", json=body, headers=d.headers)
    assert answer.status_code == 503 and answer.json()["detail"]["code"] == "database_unavailable", answer.text
    assert _count(engine, Reading) == before  # nothing of the push was kept, the first reading included
    failing[0] = False
    again = d.send(body)  # the device sends the same push again
    assert _statuses(again) == [("applied", None), ("applied", None)]
    assert _count(engine, Reading) == before + 2


_FIELD_NAMES = ("household_id", "visit_id", "work_order_id", "taken_at", "temp_c", "actions", "arrived_at",
                "left_at", "status", "room", "priority", "phone", "audio_sha256", "id", "version", "seq")


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("who", ["steward1", "supervisor"])
def test_any_batch_is_answered_per_mutation_and_never_fails_the_request(client: TestClient, district: District,
                                                                        who: str, data: st.DataObject) -> None:
    # Regression: a new reading whose id was not a UUID crashed the bulk path of readings with a 500.
    known = [str(district.h1a.id), str(district.h2a.id), str(district.visit1.id), str(district.wo1.id),
             str(district.reading1.id), str(district.note1.id)]
    ids = st.one_of(st.sampled_from(known), st.sampled_from([str(uuid.uuid4()) for _ in range(3)]),
                    st.sampled_from(["not-a-uuid", "", "0" * 32]))  # existing, new (repeated), malformed
    value = st.one_of(st.none(), st.integers(-5, 100), st.floats(-50, 150), st.text(max_size=6),
                      st.sampled_from([T0, "2026-13-01", "yesterday", *known]))
    mutation = st.fixed_dictionaries({
        "table": st.sampled_from(["readings", "readings", "visits", "notes", "work_orders", "households",
                                  "stations", "meters"]),
        "op": st.sampled_from(["upsert", "upsert", "update", "delete", "merge"]),
        "id": ids,
        "base_version": st.one_of(st.none(), st.integers(1, 5)),
        "fields": st.dictionaries(st.sampled_from(_FIELD_NAMES), value, max_size=5)})
    mutations = [m | {"mutation_id": n + 1} for n, m in enumerate(data.draw(st.lists(mutation, min_size=1,
                                                                                      max_size=8)))]
    body = {"client_id": str(uuid.uuid4()), "schema_version": 1, "mutations": mutations}
    response = client.post("/api/v1/sync/push", json=body, headers=district.headers(getattr(district, who)))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["mutation_id"] for r in results] == [m["mutation_id"] for m in mutations]
    for r in results:
        assert r["status"] in ("applied", "merged", "conflict", "rejected")
        if r["status"] == "rejected":
            assert r["reason"] and r["message"]  # a code the app can act on, and words for the steward
            assert r["reason"] != "server_error"  # the push's safety net must not hide a failing rule
        elif r["status"] in ("applied", "merged"):
            assert r["reason"] is None


def test_a_gzipped_push_applies_exactly_once(client: TestClient, district: District, engine: Engine) -> None:
    """A handheld may gzip its batch (Content-Encoding: gzip); a replay of the same bytes is a duplicate."""
    readings = [{"mutation_id": i, "table": "readings", "op": "upsert", "id": str(uuid.uuid4()), "base_version": None,
                 "fields": {"household_id": str(district.h1a.id), "taken_at": T0, "temp_c": 18 + i / 10}}
                for i in range(1, 51)]
    body = gzip.compress(json.dumps({"client_id": str(uuid.uuid4()), "schema_version": 1,
                                     "mutations": readings}).encode())
    headers = district.headers(district.steward1) | {"content-type": "application/json", "content-encoding": "gzip"}
    before = _count(engine, Reading)
    first = client.post("/api/v1/sync/push", content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert {r["status"] for r in first.json()["results"]} == {"applied"} and first.json()["last_mutation_id"] == 50
    again = client.post("/api/v1/sync/push", content=body, headers=headers)
    assert again.status_code == 200 and {r["status"] for r in again.json()["results"]} == {"duplicate"}
    assert _count(engine, Reading) == before + 50


def test_a_voice_note_pushed_before_its_audio_is_queued_by_the_upload(
        client: TestClient, district: District, device: Callable[..., Device], engine: Engine) -> None:
    """Recorded offline, the row goes up with a push and the audio after it: the upload that completes the
    audio queues the transcription (no wait for the workers' sweep), and the next pull says so."""
    import hashlib

    from speech import jobs

    audio = b"RIFF voice note bytes"
    sha = hashlib.sha256(audio).hexdigest()
    phone = device(district.steward1)
    phone.pull()
    note_id = phone.create("notes", audio_sha256=sha, duration_s=3.0, recorded_at=T0,
                           household_id=str(district.h1a.id))
    assert _statuses(phone.push()) == [("applied", None)]
    phone.pull()
    assert phone.rows["notes"][note_id]["transcript_status"] == "none"  # no audio on the server yet
    put = client.put(f"/api/v1/blobs/{sha}", content=audio, headers=district.headers(district.steward1))
    assert put.status_code == 201, put.text
    # Queued at once, and the app's embedded worker may already have tried these bytes (not audio): failed.
    # A pull returns changes up to the last seq below any write still in flight, and the worker may be
    # writing this note's status right now: the change comes with a later pull (seen once in a full run).
    for _ in range(50):
        phone.pull()
        if phone.rows["notes"][note_id]["transcript_status"] != "none":
            break
        time.sleep(0.1)
    assert phone.rows["notes"][note_id]["transcript_status"] in ("pending", "running", "failed")
    assert jobs.promote_waiting(engine, district.settings) == []  # nothing left for the sweep


def test_a_visit_for_an_order_given_to_another_steward_takes_no_new_readings_or_notes(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    """Regression (as in REST): a steward's old visit at a household outside their grid let them go on adding
    readings and notes there after the office gave the order to someone else."""
    office = district.headers(district.supervisor)
    assert client.post(f"/api/v1/work-orders/{district.wo3.id}/assign", json={"assignee_id": str(district.steward1.id)},
                       headers=office).status_code == 200
    d = device(district.steward1)
    d.pull()
    h3a = str(district.h3a.id)
    visit = d.create("visits", household_id=h3a, work_order_id=str(district.wo3.id), arrived_at=T0)
    d.create("readings", household_id=h3a, visit_id=visit, taken_at=T0, temp_c=16)
    assert _statuses(d.push()) == [("applied", None)] * 2
    assert client.post(f"/api/v1/work-orders/{district.wo3.id}/assign", json={"assignee_id": str(district.steward2.id)},
                       headers=office).status_code == 200
    d.create("readings", household_id=h3a, visit_id=visit, taken_at=T0, temp_c=17)
    d.create("notes", visit_id=visit, audio_sha256="c" * 64, duration_s=3.0, recorded_at=T0)
    assert _statuses(d.push()) == [("rejected", "out_of_scope")] * 2


def test_a_damaged_cursor_in_a_push_does_not_stop_its_mutations(client: TestClient, district: District) -> None:
    """Regression: the push read its cursor first and answered 400 for the whole batch, so a device whose
    stored cursor was damaged could not send its queue. The mutations apply; the cursor goes back as it came,
    and the next pull says `invalid_cursor` (pull without one)."""
    headers = district.headers(district.steward1)
    reading = {"mutation_id": 1, "table": "readings", "op": "upsert", "id": str(uuid.uuid4()),
               "fields": {"household_id": str(district.h1a.id), "taken_at": T0, "temp_c": 19}}
    body = {"client_id": str(uuid.uuid4()), "schema_version": 1, "cursor": "damaged", "mutations": [reading]}
    response = client.post("/api/v1/sync/push", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["applied"]
    assert response.json()["cursor"] == "damaged"
    pulled = client.get("/api/v1/sync/pull", params={"schema_version": 1, "cursor": "damaged"}, headers=headers)
    assert pulled.status_code == 400 and pulled.json()["detail"]["code"] == "invalid_cursor"


def test_a_field_name_the_answer_cannot_encode_is_no_500_after_the_commit(client: TestClient, district: District,
                                                                          session: Session) -> None:
    """Regression: a field name with a lone surrogate was quoted raw in its rejection; orjson refused to
    encode the answer after the batch had committed, so the device saw a 500 for a push that applied."""
    visit = {"household_id": str(district.h1a.id), "arrived_at": "2026-11-30T08:00:00Z"}
    good = {"mutation_id": 1, "table": "visits", "op": "upsert", "id": str(uuid.uuid4()), "fields": visit}
    bad = {"mutation_id": 2, "table": "visits", "op": "upsert", "id": str(uuid.uuid4()),
           "fields": visit | {"x\ud800": 1}}
    raw = json.dumps({"schema_version": 1, "client_id": str(uuid.uuid4()), "mutations": [good, bad]})
    response = client.post("/api/v1/sync/push", content=raw,
                           headers=district.headers(district.steward1) | {"content-type": "application/json"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["applied", "rejected"]
    assert results[1]["reason"] == "read_only_field" and "'x\\ud800'" in results[1]["message"]
    assert session.get(Visit, uuid.UUID(good["id"])) is not None  # type: ignore[arg-type]


def test_a_lone_surrogate_logged_for_a_deleted_row_leaves_the_conflict_list_readable(
        client: TestClient, district: District) -> None:
    """Regression: an update of a row deleted on the server logs the device's values unchecked; a lone
    surrogate among them was stored as it came, and every page of GET /sync/conflicts holding the line
    answered 500 from then on (on SQLite and PostgreSQL)."""
    headers = district.headers(district.steward1) | {"content-type": "application/json"}
    visit_id = str(uuid.uuid4())
    visit = {"household_id": str(district.h1a.id), "arrived_at": "2026-11-30T08:00:00Z"}
    mutations = [{"mutation_id": 1, "table": "visits", "op": "upsert", "id": visit_id, "fields": visit},
                 {"mutation_id": 2, "table": "visits", "op": "delete", "id": visit_id, "base_version": 1},
                 {"mutation_id": 3, "table": "visits", "op": "update", "id": visit_id, "base_version": 1,
                  "fields": {"actions": "x\ud800"}}]
    raw = json.dumps({"schema_version": 1, "client_id": str(uuid.uuid4()), "mutations": mutations})
    response = client.post("/api/v1/sync/push", content=raw, headers=headers)
    assert response.status_code == 200, response.text
    assert [(r["status"], r["reason"]) for r in response.json()["results"]] == [
        ("applied", None), ("applied", None), ("conflict", "deleted")]
    listed = client.get("/api/v1/sync/conflicts", params={"row_id": visit_id},
                        headers=district.headers(district.supervisor))
    assert listed.status_code == 200, listed.text
    [line] = listed.json()["data"]
    assert line["device_value"] == {"actions": "x\\ud800"}  # the escape as text, as the push's answer quotes it


def test_an_answer_orjson_refuses_is_still_sent() -> None:
    """The safety net: whatever string a rejection quotes, the answer to a committed push is sent."""
    from sync import views

    response = views._json({"message": "x\ud800"})
    assert json.loads(response.body) == {"message": "x\ud800"}


def test_another_grids_ids_answer_like_ids_that_do_not_exist(client: TestClient, district: District) -> None:
    """Regression: an update or delete of another grid's row answered `out_of_scope` where an unknown id
    answered `not_found` / `applied`: a steward could probe which ids exist, with no write at all."""
    d = district

    def push(op: str, table: str, row_id: str, **kw: Any) -> tuple[str, str | None]:
        body = {"client_id": str(uuid.uuid4()), "schema_version": 1,
                "mutations": [{"mutation_id": 1, "table": table, "op": op, "id": row_id, **kw}]}
        result = client.post("/api/v1/sync/push", json=body, headers=d.headers(d.steward2)).json()["results"][0]
        return result["status"], result.get("reason")

    for op, table, existing, kw in (("update", "visits", d.visit1.id, {"base_version": 1, "fields": {"actions": "x"}}),
                                    ("delete", "households", d.h1a.id, {})):
        assert push(op, table, str(existing), **kw) == push(op, table, str(uuid.uuid4()), **kw)
    assert client.get(f"/api/v1/households/{d.h1a.id}", headers=d.headers(d.supervisor)).status_code == 200


@pytest.mark.parametrize("how", ["fast", "savepoints"])
def test_a_readings_resent_create_with_a_room_the_server_cleaned_is_harmless_on_both_paths(
        district: District, device: Callable[..., Device], engine: Engine, monkeypatch: pytest.MonkeyPatch,
        how: str) -> None:
    """A reading's room is stored cleaned (`clean_label`: "  Kitchen " is "Kitchen"). A full write without a
    base_version from the device's own copy (its create re-sent after a lost answer) carries the room as typed:
    the server's value set at creation (`server_set`), dropped, as on the savepoint path."""
    if how == "savepoints":
        _fail_readings_at_13_degrees(monkeypatch)
    d = device(district.steward1)
    reading = str(uuid.uuid4())
    fields = {"household_id": str(district.h1a.id), "taken_at": T0, "temp_c": 18.0, "room": "  Kitchen "}
    batch = [{"table": "readings", "op": "upsert", "id": reading, "base_version": None, "fields": fields}]
    if how == "savepoints":
        batch.append({"table": "readings", "op": "upsert", "id": str(uuid.uuid4()), "base_version": None,
                      "fields": fields | {"temp_c": 13.0}})
    first = d.send(d.push_body([m | {"mutation_id": 1 + i} for i, m in enumerate(batch)]))
    assert first["results"][0]["status"] == "applied"
    assert first["results"][0]["record"]["room"] == "Kitchen"
    again = {"mutation_id": 10, "table": "readings", "op": "upsert", "id": reading, "base_version": None,
             "fields": fields}
    assert _statuses(d.send(d.push_body([again]))) == [("applied", None)]


@pytest.mark.parametrize("bad", [True, "20"])
def test_a_note_duration_is_a_number_over_rest_and_in_a_push(client: TestClient, district: District,
                                                             engine: Engine, bad: object) -> None:
    """Regression (review): a note's `duration_s` of `true` was stored as 1.0 s (and "20" as 20.0), over REST
    and in a push, as temperatures were."""
    d = district
    recorded = (datetime.now() - timedelta(hours=1)).astimezone().isoformat()
    note = {"household_id": str(d.h1a.id), "audio_sha256": "c" * 64, "duration_s": bad, "recorded_at": recorded}
    notes = _count(engine, Note)
    assert_error(client.post("/api/v1/notes", json=note, headers=d.headers(d.steward1)), 422, "validation_error")
    body = {"client_id": str(uuid.uuid4()), "schema_version": 1, "mutations": [
        {"mutation_id": 1, "table": "notes", "op": "upsert", "id": str(uuid.uuid4()), "fields": note},
        {"mutation_id": 2, "table": "notes", "op": "update", "id": str(d.note1.id), "base_version": 1,
         "fields": {"duration_s": bad}}]}
    results = client.post("/api/v1/sync/push", json=body, headers=d.headers(d.steward1)).json()["results"]
    assert [(r["status"], r["reason"]) for r in results] == [("rejected", "invalid_value")] * 2, results
    assert _count(engine, Note) == notes


def test_a_pushed_id_is_an_ascii_uuid_as_over_rest(client: TestClient, district: District, engine: Engine) -> None:
    """Regression (review): `uuid.UUID` reads other scripts' digits; a reading pushed with an id written in
    Arabic-Indic digits was applied under the ASCII id, a row the device does not hold (REST refuses it)."""
    d = district
    arabic = "".join(chr(0x660 + int(c)) if c.isdigit() else c for c in str(uuid.uuid4()))
    fields = {"household_id": str(d.h1a.id), "temp_c": 19.0,
              "taken_at": (datetime.now() - timedelta(hours=1)).astimezone().isoformat()}
    readings = _count(engine, Reading)
    assert_error(client.post("/api/v1/readings", json=fields | {"id": arabic}, headers=d.headers(d.steward1)),
                 422, "validation_error")
    body = {"client_id": str(uuid.uuid4()), "schema_version": 1, "mutations": [
        {"mutation_id": 1, "table": "readings", "op": "upsert", "id": arabic, "fields": fields}]}
    result, = client.post("/api/v1/sync/push", json=body, headers=d.headers(d.steward1)).json()["results"]
    assert (result["status"], result["reason"]) == ("rejected", "invalid_id"), result
    assert _count(engine, Reading) == readings
