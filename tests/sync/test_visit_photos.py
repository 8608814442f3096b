"""Visits name their photos and the resident's signature by blob hash, through sync and REST alike."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient

from api.fieldwork.models import MAX_PHOTOS
from tests.sync.conftest import District
from tests.sync.device import Device

ARRIVED = "2026-11-30T08:00:00+00:00"


def _sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def test_photos_travel_to_the_other_devices(client: TestClient, district: District) -> None:
    d = district
    phone = Device(http=client, headers=d.headers(d.steward1), name="phone")
    office = Device(http=client, headers=d.headers(d.supervisor), name="office")
    phone.pull()
    office.pull()
    visit = phone.create("visits", household_id=str(d.h1a.id), arrived_at=ARRIVED, photos=[_sha(1), _sha(2)],
                         signature_sha256=_sha(3))
    result = phone.push()["results"][0]
    assert result["status"] == "applied", result
    office.pull()
    row = office.rows["visits"][visit]
    assert (row["photos"], row["signature_sha256"]) == ([_sha(1), _sha(2)], _sha(3))
    phone.update("visits", visit, photos=[_sha(2)], signature_sha256=None)
    assert phone.push()["results"][0]["status"] == "applied"
    office.pull()
    row = office.rows["visits"][visit]
    assert (row["photos"], row["signature_sha256"]) == ([_sha(2)], None)
    rest = client.get(f"/api/v1/visits/{visit}", headers=d.headers(d.supervisor)).json()
    assert (rest["photos"], rest["signature_sha256"]) == ([_sha(2)], None)


def test_a_visit_without_photos_has_an_empty_list(client: TestClient, district: District) -> None:
    d = district
    phone = Device(http=client, headers=d.headers(d.steward1), name="phone")
    phone.pull()
    assert phone.rows["visits"][str(d.visit1.id)]["photos"] == []
    made = client.post("/api/v1/visits", json={"household_id": str(d.h1a.id), "arrived_at": ARRIVED},
                       headers=d.headers(d.steward1))
    assert made.status_code == 201, made.text
    assert (made.json()["photos"], made.json()["signature_sha256"]) == ([], None)


def test_bad_photo_lists_are_refused_and_nothing_is_written(client: TestClient, district: District) -> None:
    d = district
    headers = d.headers(d.steward1)
    phone = Device(http=client, headers=headers, name="phone")
    phone.pull()
    for photos in (["A" * 64], ["not-a-hash"], [_sha(1), _sha(1)], [_sha(n) for n in range(MAX_PHOTOS + 1)],
                   "abc", [1]):
        phone.queue.clear()
        phone.create("visits", household_id=str(d.h1a.id), arrived_at=ARRIVED, photos=photos)
        result = phone.push()["results"][0]
        assert (result["status"], result["reason"]) == ("rejected", "invalid_value"), (photos, result)
        answer = client.post("/api/v1/visits", json={"household_id": str(d.h1a.id), "arrived_at": ARRIVED,
                                                     "photos": photos}, headers=headers)
        assert answer.status_code == 422 and "detail" in answer.json(), (photos, answer.text)
    answer = client.patch(f"/api/v1/visits/{d.visit1.id}", json={"photos": None}, headers=headers)
    assert answer.status_code == 422, answer.text
    answer = client.patch(f"/api/v1/visits/{d.visit1.id}", json={"signature_sha256": "x" * 64}, headers=headers)
    assert answer.status_code == 422, answer.text
    listed = client.get("/api/v1/visits", headers=d.headers(d.supervisor)).json()
    assert listed["count"] == 1 and listed["data"][0]["photos"] == []



def test_an_office_edit_overlapping_a_push_keeps_both_and_the_next_stale_edit_conflicts(
        client: TestClient, district: District) -> None:
    """Regression: PATCH /visits wrote from the copy it read before a push committed: two states of the row
    were both version 2, the push's field record was lost, and the device's next photo edit replaced the
    office's photos without a conflict."""
    from sqlmodel import Session

    from api.fieldwork import service
    from api.fieldwork.models import Visit, VisitUpdate

    d = district
    visit_id = str(d.visit1.id)
    phone = Device(http=client, headers=d.headers(d.steward1), name="phone")
    phone.pull()
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine, expire_on_commit=False) as rest:  # the office's request has read the row ...
        office = rest.merge(d.supervisor)
        visit = service.get_visit(session=rest, user=office, id=d.visit1.id)
        phone.update("visits", visit_id, actions="bled radiators; replaced valve")  # ... a push commits ...
        assert phone.push()["results"][0]["record"]["version"] == 2
        service.update_visit(session=rest, user=office, visit=visit, data=VisitUpdate(photos=[_sha(1)]))
    with Session(engine) as session:
        row = session.get(Visit, d.visit1.id)
        assert row is not None
        assert (row.version, set(row.field_versions or {})) == (3, {"actions", "photos"})
        assert row.actions == "bled radiators; replaced valve"
    phone.update("visits", visit_id, photos=[_sha(2)])
    assert phone.push()["results"][0]["status"] == "conflict"
