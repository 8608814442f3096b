"""What a pushed mutation may write (sync/rules.py), where it differs from a plain field check."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from tests.sync.conftest import District
from tests.sync.device import Device


def _note(**links: str) -> dict[str, Any]:
    return {"audio_sha256": "b" * 64, "duration_s": 2.0, "recorded_at": datetime.now(UTC).isoformat(), **links}


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
