"""Scope changes: a grid edit, a (re)assignment or a station change brings upserts and deletes."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlmodel import Session

from api.notices.models import Notice, NoticeTarget
from tests.sync.conftest import District, server_rows
from tests.sync.device import Device


def _changed(page: dict) -> dict[str, tuple[set[str], set[str]]]:
    return {t: ({r["id"] for r in c["upserts"]}, set(c["deletes"])) for t, c in page["changes"].items()
            if c["upserts"] or c["deletes"]}


def test_grid_reassignment_moves_the_rows_between_stewards(client: TestClient, district: District,
                                                           device: Callable[..., Device]) -> None:
    d = district
    admin = d.headers(d.admin)
    one, two = device(d.steward1, "one"), device(d.steward2, "two")
    one.pull()
    two.pull()
    emptied = client.put(f"/api/v1/users/{d.steward1.id}/grid", json={"building_ids": []}, headers=admin)
    assert emptied.status_code == 200
    assert client.put(f"/api/v1/users/{d.steward2.id}/grid", json={"building_ids": [str(d.b1.id), str(d.b2.id)]},
                      headers=admin).status_code == 200
    page = one.pull_page()
    gone = _changed(page)
    assert gone["buildings"] == (set(), {str(d.b1.id)})
    assert gone["households"] == (set(), {str(d.h1a.id), str(d.h1b.id)})
    assert gone["notices"] == (set(), {str(d.notice1.id)})
    # still visible (the REST scope): the order assigned to steward1, and what steward1 made or took
    assert not {"work_orders", "notes", "visits", "readings"} & set(gone)
    assert set(one.rows["work_orders"]) == {str(d.wo1.id)} and set(one.rows["notes"]) == {str(d.note1.id)}
    assert set(one.rows["visits"]) == {str(d.visit1.id)} and set(one.rows["readings"]) == {str(d.reading1.id)}
    got = _changed(two.pull_page())
    assert got["buildings"] == ({str(d.b1.id)}, set())
    assert got["households"] == ({str(d.h1a.id), str(d.h1b.id)}, set())
    assert got["work_orders"] == ({str(d.wo1.id)}, set())
    for dev, user in ((one, d.steward1), (two, d.steward2)):
        dev.pull()
        assert dev.rows == server_rows(client, d.headers(user))


def test_a_scope_change_pages_like_everything_else(client: TestClient, district: District,
                                                   device: Callable[..., Device]) -> None:
    d = district
    two = device(d.steward2)
    two.pull()
    client.put(f"/api/v1/users/{d.steward2.id}/grid", json={"building_ids": [str(d.b1.id), str(d.b3.id)]},
               headers=d.headers(d.admin))
    assert two.pull(limit=1) > 5
    assert two.rows == server_rows(client, d.headers(d.steward2))
    assert str(d.b2.id) not in two.rows["buildings"] and str(d.notice2.id) in two.rows["notices"]


def test_an_assignment_outside_the_grid_brings_the_order_and_its_notes(client: TestClient, district: District,
                                                                       device: Callable[..., Device]) -> None:
    d = district
    office = d.headers(d.supervisor)
    note = client.post("/api/v1/notes", json={"work_order_id": str(d.wo3.id), "audio_sha256": "b" * 64,
                                              "duration_s": 4, "recorded_at": "2026-12-01T08:00:00+00:00"},
                       headers=office)
    assert note.status_code == 201, note.text
    one, two = device(d.steward1, "one"), device(d.steward2, "two")
    one.pull()
    two.pull()
    assert str(d.wo3.id) not in one.rows["work_orders"]
    assigned = client.post(f"/api/v1/work-orders/{d.wo3.id}/assign", json={"assignee_id": str(d.steward1.id)},
                           headers=office)
    assert assigned.status_code == 200, assigned.text
    got = _changed(one.pull_page())
    assert got["work_orders"] == ({str(d.wo3.id)}, set())
    assert got["notes"] == ({note.json()["id"]}, set())
    # reassigned to steward2: steward1 loses the order and its note, steward2 gains them
    client.post(f"/api/v1/work-orders/{d.wo3.id}/assign", json={"assignee_id": str(d.steward2.id)}, headers=office)
    lost = _changed(one.pull_page())
    assert lost["work_orders"] == (set(), {str(d.wo3.id)})
    assert lost["notes"] == (set(), {note.json()["id"]})
    gained = _changed(two.pull_page())
    assert gained["work_orders"] == ({str(d.wo3.id)}, set()) and gained["notes"] == ({note.json()["id"]}, set())
    for dev, user in ((one, d.steward1), (two, d.steward2)):
        assert dev.rows == server_rows(client, d.headers(user))


def test_a_building_moving_to_another_station_changes_the_station_notices(
        client: TestClient, district: District, device: Callable[..., Device], session: Session) -> None:
    d = district
    old_station_notice = Notice(target=NoticeTarget.station, station_id=d.station.id,
                                water_fill_start=d.notice1.water_fill_start, water_fill_end=d.notice1.water_fill_end,
                                service_phone="96133")
    session.add(old_station_notice)
    session.commit()
    one = device(d.steward1)
    one.pull()
    assert str(old_station_notice.id) in one.rows["notices"] and str(d.notice2.id) not in one.rows["notices"]
    moved = client.patch(f"/api/v1/buildings/{d.b1.id}", json={"station_id": str(d.station2.id)},
                         headers=d.headers(d.supervisor))
    assert moved.status_code == 200, moved.text
    got = _changed(one.pull_page())
    assert got["notices"] == ({str(d.notice2.id)}, {str(old_station_notice.id)})
    assert got["buildings"] == ({str(d.b1.id)}, set())
    assert one.rows == server_rows(client, d.headers(d.steward1))


def test_deletes_just_before_a_grid_change_still_reach_the_steward(client: TestClient, district: District,
                                                                   device: Callable[..., Device]) -> None:
    d = district
    one, office = device(d.steward1, "one"), device(d.supervisor, "office")
    one.pull()
    office.pull()
    office.delete("readings", str(d.reading1.id))
    office.push()
    client.put(f"/api/v1/users/{d.steward1.id}/grid", json={"building_ids": [str(d.b1.id), str(d.b2.id)]},
               headers=d.headers(d.admin))
    one.pull()
    assert one.rows == server_rows(client, d.headers(d.steward1))


def test_a_delete_after_a_grid_change_reaches_the_steward_across_pages(client: TestClient, district: District,
                                                                       device: Callable[..., Device]) -> None:
    """Regression (review): a building left the grid, a change the steward still sees followed, then the
    office deleted a reading of that building. Pulled one record a page, the page after the still-visible
    change routed the tombstone by scope changes after its own position, past the grid change: the device
    kept the deleted reading for good."""
    d = district
    office = device(d.supervisor, "office")
    office.pull()
    rid = office.create("readings", household_id=str(d.h1a.id), taken_at="2026-12-01T08:00:00+00:00", temp_c=15.0)
    office.push()
    one = device(d.steward1, "one")
    one.pull()
    assert rid in one.rows["readings"]
    assert client.put(f"/api/v1/users/{d.steward1.id}/grid", json={"building_ids": []},
                      headers=d.headers(d.admin)).status_code == 200
    assert client.patch(f"/api/v1/work-orders/{d.wo1.id}", json={"description": "radiator cold"},
                        headers=d.headers(d.supervisor)).status_code == 200  # steward1's own order: still seen
    office.delete("readings", rid)
    assert office.push()["results"][0]["status"] == "applied"
    one.pull(limit=1)
    assert rid not in one.rows["readings"]
    assert one.rows == server_rows(client, d.headers(d.steward1))


def test_a_note_deleted_after_its_order_was_reassigned_leaves_the_device_across_pages(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    """Regression (review): the same for a note on an order reassigned away from the steward."""
    d = district
    sup = d.headers(d.supervisor)
    office = device(d.supervisor, "office")
    office.pull()
    assert client.post(f"/api/v1/work-orders/{d.wo3.id}/assign", json={"assignee_id": str(d.steward1.id)},
                       headers=sup).status_code == 200
    nid = office.create("notes", work_order_id=str(d.wo3.id), audio_sha256="c" * 64, duration_s=4,
                        recorded_at="2026-12-01T08:00:00+00:00")
    office.push()
    one = device(d.steward1, "one")
    one.pull()
    assert nid in one.rows["notes"]
    assert client.post(f"/api/v1/work-orders/{d.wo3.id}/assign", json={"assignee_id": str(d.steward2.id)},
                       headers=sup).status_code == 200
    assert client.patch(f"/api/v1/work-orders/{d.wo1.id}", json={"description": "radiator cold"},
                        headers=sup).status_code == 200
    office.pull()
    office.delete("notes", nid)
    assert office.push()["results"][0]["status"] == "applied"
    one.pull(limit=1)
    assert nid not in one.rows["notes"]
    assert one.rows == server_rows(client, d.headers(d.steward1))


def test_a_steward_covering_an_order_outside_the_grid_records_its_visit(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    d = district
    client.post(f"/api/v1/work-orders/{d.wo3.id}/assign", json={"assignee_id": str(d.steward1.id)},
                headers=d.headers(d.supervisor))
    one = device(d.steward1)
    one.pull()
    outside = str(d.h3a.id)  # steward2's... nobody's grid: reached only through the covered order
    visit = one.create("visits", household_id=outside, work_order_id=str(d.wo3.id),
                       arrived_at="2026-12-01T08:00:00+00:00")
    reading = one.create("readings", household_id=outside, taken_at="2026-12-01T08:10:00+00:00", temp_c=15.5,
                         visit_id=visit)
    one.create("readings", household_id=outside, taken_at="2026-12-01T08:10:00+00:00", temp_c=15.5)
    one.create("visits", household_id=outside, arrived_at="2026-12-01T08:00:00+00:00")
    answer = one.push()
    assert [(r["status"], r["reason"]) for r in answer["results"]] == [
        ("applied", None), ("applied", None), ("rejected", "out_of_scope"), ("rejected", "out_of_scope")]
    one.pull()
    assert visit in one.rows["visits"] and reading in one.rows["readings"]
    assert one.rows == server_rows(client, d.headers(d.steward1))
    # a first sync pages the grid's rows and the steward's own rows outside it together
    for limit in (1, 2, 3):
        fresh = device(d.steward1, f"fresh{limit}")
        fresh.pull(limit=limit)
        assert fresh.rows == one.rows
    # the order moves on to steward2: steward1 keeps the visit and reading they made
    client.post(f"/api/v1/work-orders/{d.wo3.id}/assign", json={"assignee_id": str(d.steward2.id)},
                headers=d.headers(d.supervisor))
    one.pull()
    assert str(d.wo3.id) not in one.rows["work_orders"]
    assert visit in one.rows["visits"] and reading in one.rows["readings"]
    assert one.rows == server_rows(client, d.headers(d.steward1))


def _differs(dev: Device, truth: dict[str, dict[str, object]]) -> dict[str, tuple[list[str], list[str]]]:
    return {t: (sorted(set(dev.rows[t]) - set(truth[t])), sorted(set(truth[t]) - set(dev.rows[t])))
            for t in truth if set(dev.rows[t]) != set(truth[t])}


def test_a_grid_change_during_a_first_sync_is_applied_before_it_ends(client: TestClient, district: District,
                                                                     device: Callable[..., Device]) -> None:
    """Regression: a pull that started in the snapshot reached the delta without the scope event that came
    meanwhile, and said has_more false with b1 still on the device and b2 missing."""
    d = district
    one = device(d.steward1, "one")
    page = one.pull_page(limit=3)  # stations, then buildings: b1 delivered
    assert page["has_more"] and str(d.b1.id) in one.rows["buildings"]
    r = client.put(f"/api/v1/users/{d.steward1.id}/grid", json={"building_ids": [str(d.b2.id)]},
                   headers=d.headers(d.admin))
    assert r.status_code == 200, r.text
    one.pull()  # until has_more is false
    assert _differs(one, server_rows(client, d.headers(d.steward1))) == {}


def test_a_grid_change_during_a_scope_phase_is_applied_before_it_ends(client: TestClient, district: District,
                                                                      device: Callable[..., Device]) -> None:
    d = district
    one = device(d.steward1, "one")
    one.pull()
    admin = d.headers(d.admin)
    client.put(f"/api/v1/users/{d.steward1.id}/grid", json={"building_ids": [str(d.b1.id), str(d.b3.id)]},
               headers=admin)
    assert one.pull_page(limit=1)["has_more"]  # inside the scope phase of that change
    client.put(f"/api/v1/users/{d.steward1.id}/grid", json={"building_ids": [str(d.b2.id)]}, headers=admin)
    one.pull()
    assert _differs(one, server_rows(client, d.headers(d.steward1))) == {}


def test_a_push_with_the_cursor_of_another_role_or_user_leads_to_a_reset(client: TestClient, district: District,
                                                                         device: Callable[..., Device]) -> None:
    """Regression: the push answered a plain snapshot cursor, so the pull after it was no reset and the
    device kept the district (a supervisor made steward) or the previous steward's grid (a shared handheld)."""
    d = district
    admin = d.headers(d.admin)
    dev = device(d.supervisor, "sup")
    dev.pull()
    assert str(d.h2a.id) in dev.rows["households"]
    assert client.patch(f"/api/v1/users/{d.supervisor.id}", json={"role": "steward"}, headers=admin).status_code == 200
    r = client.put(f"/api/v1/users/{d.supervisor.id}/grid", json={"building_ids": [str(d.b1.id)]}, headers=admin)
    assert r.status_code == 200, r.text
    dev.push()  # the device's cycle: push its (empty) queue with its stored cursor, then pull
    dev.pull()
    assert dev.resets == 1 and dev.rows == server_rows(client, d.headers(d.supervisor))

    shared = device(d.steward1, "shared")
    shared.pull()
    shared.headers = d.headers(d.steward2)  # steward2 signs in on steward1's handheld, a new install id
    shared.client_id = str(uuid.uuid4())
    shared.push()
    shared.pull()
    assert shared.resets == 1 and shared.rows == server_rows(client, d.headers(d.steward2))


def test_a_station_notice_goes_when_its_building_leaves_the_grid_and_then_its_station(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    """Regression (found by a randomized run): a building left a steward's grid, then moved to another
    station before the steward's next pull. The pull found the old station's notices through the building's
    current station, so no delete came, and the old station's water-fill notice stayed on the device."""
    d = district
    admin, office = d.headers(d.admin), d.headers(d.supervisor)

    def grid(*buildings: object) -> None:
        r = client.put(f"/api/v1/users/{d.steward1.id}/grid", headers=admin,
                       json={"building_ids": [str(b.id) for b in buildings]})  # type: ignore[attr-defined]
        assert r.status_code == 200, r.text

    grid(d.b1, d.b3)  # b3 is on station2: its notice2 becomes visible
    one = device(d.steward1, "one")
    one.pull()
    assert str(d.notice2.id) in one.rows["notices"]
    grid(d.b1)
    moved = client.patch(f"/api/v1/buildings/{d.b3.id}", json={"station_id": str(d.station.id)}, headers=office)
    assert moved.status_code == 200, moved.text
    one.pull()
    truth = server_rows(client, d.headers(d.steward1))
    assert str(d.notice2.id) not in truth["notices"]
    assert sorted(one.rows["notices"]) == sorted(truth["notices"])
