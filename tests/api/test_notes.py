"""Voice notes and call recordings: metadata, links and who sees them."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlmodel import Session

from api.notes.models import Note
from api.work_orders.models import Status
from tests.utils.asserts import assert_error, count_rows, db_state, reread
from tests.utils.factories import World, make_household, make_note, make_visit, make_work_order, random_id

API = "/api/v1/notes"
SHA = "0123456789abcdef" * 4


def _body(**kw: object) -> dict[str, object]:
    return {"audio_sha256": SHA, "duration_s": 42.0, "recorded_at": "2025-12-01T09:00:00Z"} | kw


def test_a_note_belongs_to_its_recorder_and_starts_untranscribed(client: TestClient, session: Session,
                                                                 world: World) -> None:
    order = make_work_order(session, world.household_a, status=Status.in_progress, assignee=world.steward_a)
    visit = make_visit(session, world.household_a, world.steward_a, work_order_id=order.id)
    body = _body(household_id=str(world.household_a.id), work_order_id=str(order.id), visit_id=str(visit.id))
    # fields the server writes are refused, each named (they used to be dropped without a word)
    forged = body | {"transcript_status": "done", "transcript_text": "伪造的转写", "owner_id": str(world.steward_b.id)}
    refused = client.post(API, json=forged, headers=world.headers(world.steward_a))
    assert_error(refused, 422, "validation_error")
    assert all(name in refused.json()["detail"]["message"] for name in ("transcript_status", "transcript_text",
                                                                         "owner_id"))
    assert count_rows(session, Note) == 0
    r = client.post(API, json=body, headers=world.headers(world.steward_a))
    assert r.status_code == 201, r.text
    note = r.json()
    assert note["owner_id"] == str(world.steward_a.id) and note["kind"] == "voice_note"
    assert (note["transcript_status"], note["transcript_text"]) == ("none", None)
    row = reread(session, Note, note["id"])
    assert (row.owner_id, row.visit_id, row.transcript_text) == (world.steward_a.id, visit.id, None)


def test_a_client_cannot_post_a_call_recording(client: TestClient, session: Session, world: World) -> None:
    """Regression: a steward's note of kind call_recording was stored and transcribed as a resident's call: it
    could open a hotline draft order and counted towards the complaint clusters. Calls come from POST /calls
    (with their `calls` row) and video calls; the office may not post one here either."""
    for user in (world.steward_a, world.supervisor):
        r = client.post(API, json=_body(kind="call_recording", household_id=str(world.household_a.id)),
                        headers=world.headers(user))
        assert_error(r, 422, "validation_error")
        assert "POST /calls" in r.json()["detail"]["message"]
    assert count_rows(session, Note) == 0


def test_a_note_without_links_is_visible_to_its_owner_only(client: TestClient, session: Session,
                                                           world: World) -> None:
    r = client.post(API, json=_body(), headers=world.headers(world.steward_a))
    assert r.status_code == 201
    note_id = r.json()["id"]
    assert client.get(f"{API}/{note_id}", headers=world.headers(world.steward_a)).status_code == 200
    assert_error(client.get(f"{API}/{note_id}", headers=world.headers(world.steward_b)), 404, "not_found")
    assert client.get(f"{API}/{note_id}", headers=world.headers(world.supervisor)).status_code == 200


def test_stewards_see_notes_on_their_households_and_orders(client: TestClient, session: Session,
                                                           world: World) -> None:
    on_household = make_note(session, world.steward_b, household_id=world.household_a.id)
    covering = make_work_order(session, world.household_b, status=Status.assigned, assignee=world.steward_a)
    on_order = make_note(session, world.steward_b, work_order_id=covering.id)
    hidden = make_note(session, world.steward_b, household_id=world.household_b.id)
    h = world.headers(world.steward_a)
    assert client.get(f"{API}/{on_household.id}", headers=h).status_code == 200
    assert client.get(f"{API}/{on_order.id}", headers=h).status_code == 200
    assert_error(client.get(f"{API}/{hidden.id}", headers=h), 404, "not_found")
    listed = client.get(API, headers=h).json()
    assert listed["count"] == 2
    assert {n["id"] for n in listed["data"]} == {str(on_household.id), str(on_order.id)}


def test_a_note_linked_through_an_order_or_a_visit_is_stored_with_its_household(
        client: TestClient, session: Session, world: World) -> None:
    """Regression: the household was worked out from the work order or the visit to check the links, and then
    not stored, so the note was missing from its household's list (and from the household's grid)."""
    order = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)
    visit = make_visit(session, world.household_a, world.steward_a)
    h = world.headers(world.steward_a)
    made = [client.post(API, json=_body(**link), headers=h) for link in
            ({"work_order_id": str(order.id)}, {"visit_id": str(visit.id)})]
    assert [r.status_code for r in made] == [201, 201]
    assert [r.json()["household_id"] for r in made] == [str(world.household_a.id)] * 2
    listed = client.get(API, params={"household_id": str(world.household_a.id)},
                        headers=world.headers(world.supervisor)).json()
    assert {n["id"] for n in listed["data"]} == {r.json()["id"] for r in made}


def test_note_links_must_agree(client: TestClient, session: Session, world: World) -> None:
    neighbour = make_household(session, world.building_a)
    order = make_work_order(session, neighbour, status=Status.assigned, assignee=world.steward_a)
    r = client.post(API, json=_body(household_id=str(world.household_a.id), work_order_id=str(order.id)),
                    headers=world.headers(world.steward_a))
    assert_error(r, 422, "household_mismatch")
    assert count_rows(session, Note) == 0


def test_a_visit_and_a_work_order_of_different_households_cannot_be_linked(
        client: TestClient, session: Session, world: World) -> None:
    """Regression: without `household_id` the visit and the work order were never compared."""
    visit = make_visit(session, world.household_a, world.steward_a)
    covering = make_work_order(session, world.household_b, status=Status.assigned, assignee=world.steward_a)
    body = _body(visit_id=str(visit.id), work_order_id=str(covering.id))
    before = db_state(session)
    for user in (world.supervisor, world.steward_a):  # the steward sees both: their visit, their order
        assert_error(client.post(API, json=body, headers=world.headers(user)), 422, "household_mismatch")
    assert db_state(session) == before
    same = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)
    r = client.post(API, json=_body(visit_id=str(visit.id), work_order_id=str(same.id)),
                    headers=world.headers(world.steward_a))
    assert r.status_code == 201, r.text


def test_a_missing_visit_is_404_not_a_conflict(client: TestClient, session: Session, world: World) -> None:
    """Regression: `visit_id` was not checked, so the foreign key failed and answered 409 `conflict`."""
    r = client.post(API, json=_body(visit_id=random_id()), headers=world.headers(world.supervisor))
    assert_error(r, 404, "not_found")
    assert count_rows(session, Note) == 0


def test_a_visit_outside_the_grid_cannot_be_linked(client: TestClient, session: Session, world: World) -> None:
    """Regression: any visit id could be linked, which also told a steward that a visit existed elsewhere."""
    visit_b = make_visit(session, world.household_b, world.steward_b)
    neighbour_visit = make_visit(session, make_household(session, world.building_a), world.steward_a)
    h = world.headers(world.steward_a)
    before = db_state(session)
    assert_error(client.post(API, json=_body(visit_id=str(visit_b.id)), headers=h), 404, "not_found")
    assert_error(client.post(API, json=_body(visit_id=str(neighbour_visit.id),
                                             household_id=str(world.household_a.id)), headers=h),
                 422, "household_mismatch")
    assert db_state(session) == before


def test_note_fields_are_validated(client: TestClient, session: Session, world: World) -> None:
    """`audio_sha256` is lowercase hex (regression: the pattern was silently ignored)."""
    for field, value in [("audio_sha256", "A" * 64), ("audio_sha256", "g" * 64), ("audio_sha256", "a" * 63),
                         ("audio_sha256", "not a hash"), ("duration_s", -1), ("duration_s", 6 * 3600 + 1),
                         ("recorded_at", "2025-12-01T09:00:00")]:
        r = client.post(API, json=_body(**{field: value}), headers=world.headers(world.steward_a))
        detail = assert_error(r, 422, "validation_error")
        assert field in detail["message"]
    assert count_rows(session, Note) == 0


def test_duplicate_note_id_is_409(client: TestClient, session: Session, world: World) -> None:
    note = make_note(session, world.steward_a)
    r = client.post(API, json=_body(id=str(note.id)), headers=world.headers(world.steward_a))
    assert_error(r, 409, "already_exists")
    assert count_rows(session, Note) == 1


def test_list_notes_filters(client: TestClient, session: Session, world: World) -> None:
    order = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)
    by_order = make_note(session, world.steward_a, work_order_id=order.id)
    by_household = make_note(session, world.steward_a, household_id=world.household_a.id)
    make_note(session, world.steward_a)
    h = world.headers(world.supervisor)
    r = client.get(API, params={"work_order_id": str(order.id)}, headers=h).json()
    assert r["count"] == 1 and r["data"][0]["id"] == str(by_order.id)
    r = client.get(API, params={"household_id": str(world.household_a.id)}, headers=h).json()
    assert r["count"] == 1 and r["data"][0]["id"] == str(by_household.id)
    assert client.get(API, headers=h).json()["count"] == 3


def test_a_note_dated_years_ahead_is_refused_like_a_reading(client: TestClient, session: Session,
                                                             world: World) -> None:
    """Regression: a handheld's clock set to 2099 put its note at the top of every newest-first list (notes,
    transcripts) for 70 years; visits and readings already refused such a time."""
    body = _body(household_id=str(world.household_a.id), recorded_at="2099-01-01T00:00:00Z")
    assert_error(client.post(API, json=body, headers=world.headers(world.steward_a)), 422, "validation_error")
    assert count_rows(session, Note) == 0


def test_a_covering_steward_notes_their_visit_naming_its_household_as_a_reading_may(
        client: TestClient, session: Session, world: World) -> None:
    """Regression: a note naming the household outside the grid beside the covered order or its visit was 404
    (REST) and out_of_scope (sync), though a reading with the same links was recorded."""
    order = make_work_order(session, world.household_b, status=Status.in_progress, assignee=world.steward_a)
    visit = make_visit(session, world.household_b, world.steward_a, work_order_id=order.id)
    h = world.headers(world.steward_a)
    reading = client.post("/api/v1/readings", json={"household_id": str(world.household_b.id),
                                                    "visit_id": str(visit.id), "temp_c": 16.5,
                                                    "taken_at": "2025-12-01T09:00:00Z"}, headers=h)
    assert reading.status_code == 201, reading.text
    for links in ({"household_id": str(world.household_b.id), "visit_id": str(visit.id)},
                  {"household_id": str(world.household_b.id), "work_order_id": str(order.id)}):
        r = client.post(API, json=_body(**links), headers=h)
        assert r.status_code == 201, (links, r.text)
        assert r.json()["household_id"] == str(world.household_b.id)
    before = db_state(session)  # the household alone is still checked, and must be the links' household
    assert_error(client.post(API, json=_body(household_id=str(world.household_b.id)), headers=h), 404, "not_found")
    assert_error(client.post(API, json=_body(household_id=str(world.household_a.id), visit_id=str(visit.id)),
                             headers=h), 422, "household_mismatch")
    assert db_state(session) == before
