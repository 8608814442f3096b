"""Who sees what: a steward's grid, the assignee exception, the office's whole district.

Rows outside a caller's scope answer 404 with the same shape as rows that do not exist, so ids
do not leak; routes a role may not use at all answer 403 `role_required`.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from api.users.models import Role
from api.work_orders.models import Status
from tests.utils.asserts import assert_error, db_state
from tests.utils.factories import (
    World,
    make_household,
    make_note,
    make_notice,
    make_reading,
    make_station,
    make_user,
    make_visit,
    make_work_order,
    random_id,
)

API = "/api/v1"


def _row_in_grid_b(session: Session, w: World, kind: str) -> str:
    """The id of a `kind` row that belongs to steward B's grid only."""
    if kind == "household":
        return str(w.household_b.id)
    if kind == "building":
        return str(w.building_b.id)
    if kind == "work-order":
        return str(make_work_order(session, w.household_b, status=Status.assigned, assignee=w.steward_b).id)
    if kind == "visit":
        return str(make_visit(session, w.household_b, w.steward_b).id)
    if kind == "note":
        return str(make_note(session, w.steward_b, household_id=w.household_b.id).id)
    raise AssertionError(kind)


PATHS = {"household": "households", "building": "buildings", "work-order": "work-orders", "visit": "visits",
         "note": "notes"}


@pytest.mark.parametrize("kind", list(PATHS))
def test_steward_gets_404_for_another_grids_row(client: TestClient, session: Session, world: World,
                                                kind: str) -> None:
    row_id = _row_in_grid_b(session, world, kind)
    r = client.get(f"{API}/{PATHS[kind]}/{row_id}", headers=world.headers(world.steward_a))
    hidden = assert_error(r, 404, "not_found")
    # Indistinguishable from an id that does not exist at all.
    missing = assert_error(client.get(f"{API}/{PATHS[kind]}/{random_id()}", headers=world.headers(world.steward_a)),
                           404, "not_found")
    assert set(hidden) == set(missing)
    assert client.get(f"{API}/{PATHS[kind]}/{row_id}", headers=world.headers(world.steward_b)).status_code == 200


@pytest.mark.parametrize("kind", list(PATHS))
def test_office_sees_every_grid(client: TestClient, session: Session, world: World, kind: str) -> None:
    row_id = _row_in_grid_b(session, world, kind)
    for office in (world.supervisor, world.admin):
        r = client.get(f"{API}/{PATHS[kind]}/{row_id}", headers=world.headers(office))
        assert r.status_code == 200, r.text
        assert r.json()["id"] == row_id


def test_steward_cannot_read_or_add_readings_outside_the_grid(client: TestClient, session: Session,
                                                              world: World) -> None:
    make_reading(session, world.household_b, world.steward_b)
    make_reading(session, world.household_a, world.steward_a)
    h = world.headers(world.steward_a)
    r = client.get(f"{API}/readings", params={"household_id": str(world.household_b.id)}, headers=h)
    assert r.status_code == 200 and r.json() == {"data": [], "count": 0}
    body = {"household_id": str(world.household_b.id), "taken_at": "2025-12-01T08:00:00Z", "temp_c": 15.0}
    assert_error(client.post(f"{API}/readings", json=body, headers=h), 404, "not_found")


def test_steward_sees_work_orders_assigned_to_them_outside_the_grid(client: TestClient, session: Session,
                                                                    world: World) -> None:
    covering = make_work_order(session, world.household_b, status=Status.assigned, assignee=world.steward_a)
    h = world.headers(world.steward_a)
    assert client.get(f"{API}/work-orders/{covering.id}", headers=h).status_code == 200
    assert client.get(f"{API}/work-orders/{covering.id}/events", headers=h).status_code == 200
    listed = client.get(f"{API}/work-orders", headers=h).json()
    assert [o["id"] for o in listed["data"]] == [str(covering.id)] and listed["count"] == 1
    r = client.post(f"{API}/work-orders/{covering.id}/transitions", json={"status": "in_progress"}, headers=h)
    assert r.status_code == 200 and r.json()["status"] == "in_progress"
    # The household itself stays outside the grid.
    assert_error(client.get(f"{API}/households/{world.household_b.id}", headers=h), 404, "not_found")


def test_steward_cannot_write_through_another_grid(client: TestClient, session: Session, world: World) -> None:
    order_b = make_work_order(session, world.household_b, status=Status.assigned, assignee=world.steward_b)
    visit_b = make_visit(session, world.household_b, world.steward_b)
    h = world.headers(world.steward_a)
    before = db_state(session)
    attempts = [
        client.post(f"{API}/work-orders/{order_b.id}/transitions", json={"status": "in_progress"}, headers=h),
        client.patch(f"{API}/visits/{visit_b.id}", json={"actions": "x"}, headers=h),
        client.post(f"{API}/work-orders", json={"household_id": str(world.household_b.id), "category": "leak",
                                                "source": "visit"}, headers=h),
        client.post(f"{API}/visits", json={"household_id": str(world.household_b.id),
                                           "arrived_at": "2025-12-01T08:00:00Z"}, headers=h),
        client.post(f"{API}/notes", json={"household_id": str(world.household_b.id), "audio_sha256": "a" * 64,
                                          "duration_s": 3, "recorded_at": "2025-12-01T08:00:00Z"}, headers=h),
    ]
    for r in attempts:
        assert_error(r, 404, "not_found")
    assert db_state(session) == before


def _office_routes(w: World, session: Session) -> list[tuple[str, str, dict[str, Any] | None]]:
    order = make_work_order(session, w.household_a, status=Status.assigned, assignee=w.steward_a)
    notice = make_notice(session, w.building_a)
    return [
        ("POST", "/stations", {"code": "HS-NEW", "name": "新站"}),
        ("PATCH", f"/stations/{w.station.id}", {"name": "改名"}),
        ("POST", "/buildings", {"station_id": str(w.station.id), "community": "新小区", "number": "1"}),
        ("PATCH", f"/buildings/{w.building_a.id}", {"address": "经十路1号"}),
        ("POST", "/households", {"building_id": str(w.building_a.id), "unit": "9", "room": "901", "area_m2": 80}),
        ("PATCH", f"/households/{w.household_a.id}", {"sensitive": True}),
        ("PATCH", f"/work-orders/{order.id}", {"priority": "urgent"}),
        ("POST", f"/work-orders/{order.id}/assign", {"assignee_id": str(w.steward_a.id)}),
        ("POST", "/notices", {"target": "building", "building_id": str(w.building_a.id),
                              "water_fill_start": "2025-11-01T00:00:00Z", "water_fill_end": "2025-11-01T08:00:00Z"}),
        ("GET", "/notices", None),
        ("GET", f"/notices/{notice.id}/messages", None),
        ("POST", f"/notices/{notice.id}/send", None),
        ("POST", "/users", {"username": "another", "password": "long-enough-pw", "role": "steward"}),
        ("GET", "/users", None),
        ("GET", f"/users/{w.steward_a.id}", None),
        ("PATCH", f"/users/{w.steward_a.id}", {"full_name": "改名"}),
        ("GET", f"/users/{w.steward_a.id}/grid", None),
        ("PUT", f"/users/{w.steward_a.id}/grid", {"building_ids": []}),
    ]


def test_office_routes_answer_403_role_required_to_stewards(client: TestClient, session: Session,
                                                            world: World) -> None:
    routes = _office_routes(world, session)
    before = db_state(session)
    for method, path, body in routes:
        r = client.request(method, f"{API}{path}", json=body, headers=world.headers(world.steward_a))
        assert_error(r, 403, "role_required")
    assert db_state(session) == before


def test_admin_routes_answer_403_to_supervisors(client: TestClient, session: Session, world: World) -> None:
    admin_only = [route for route in _office_routes(world, session) if route[1].startswith("/users")]
    before = db_state(session)
    for method, path, body in admin_only:
        r = client.request(method, f"{API}{path}", json=body, headers=world.headers(world.supervisor))
        assert_error(r, 403, "role_required")
    assert db_state(session) == before


@pytest.fixture
def crowded(session: Session, world: World) -> World:
    """Two households per grid, each with an order, a visit, a reading and a note; one order in B's grid is
    assigned to steward A."""
    extra_a = make_household(session, world.building_a)
    extra_b = make_household(session, world.building_b)
    for hh, steward in ((world.household_a, world.steward_a), (extra_a, world.steward_a),
                        (world.household_b, world.steward_b), (extra_b, world.steward_b)):
        make_work_order(session, hh, status=Status.assigned, assignee=steward)
        make_visit(session, hh, steward)
        make_reading(session, hh, steward)
        make_note(session, steward, household_id=hh.id)
    make_work_order(session, extra_b, status=Status.assigned, assignee=world.steward_a)
    return world


# (path, what each steward counts, what the office counts)
LISTS = [("/buildings", 1, 2), ("/households", 2, 4), ("/work-orders", 3, 5), ("/visits", 2, 4),
         ("/readings", 2, 4), ("/notes", 2, 4)]


@pytest.mark.parametrize(("path", "steward_count", "office_count"), LISTS)
def test_lists_return_only_rows_in_scope(client: TestClient, session: Session, crowded: World, path: str,
                                         steward_count: int, office_count: int) -> None:
    w = crowded
    for steward in (w.steward_a, w.steward_b):
        mine = client.get(f"{API}{path}", headers=w.headers(steward)).json()
        assert mine["count"] == steward_count and len(mine["data"]) == steward_count
    for office in (w.supervisor, w.admin):
        every = client.get(f"{API}{path}", headers=w.headers(office)).json()
        assert every["count"] == office_count and len(every["data"]) == office_count
    newcomer = make_user(session, Role.steward)
    assert client.get(f"{API}{path}", headers=w.headers(newcomer)).json() == {"data": [], "count": 0}


def test_stations_are_public_to_every_signed_in_user(client: TestClient, session: Session, world: World) -> None:
    newcomer = make_user(session, Role.steward)
    r = client.get(f"{API}/stations", headers=world.headers(newcomer))
    assert r.status_code == 200 and r.json()["count"] == 1
    assert client.get(f"{API}/stations/{world.station.id}", headers=world.headers(newcomer)).status_code == 200
    assert_error(client.get(f"{API}/stations"), 401, "not_authenticated")


def test_list_filters_cannot_widen_the_scope(client: TestClient, crowded: World) -> None:
    w = crowded
    h = w.headers(w.steward_a)
    for path, params in [("/households", {"building_id": str(w.building_b.id)}),
                         ("/visits", {"household_id": str(w.household_b.id)}),
                         ("/visits", {"steward_id": str(w.steward_b.id)}),
                         ("/notes", {"household_id": str(w.household_b.id)}),
                         ("/work-orders", {"assignee_id": str(w.steward_b.id)}),
                         ("/buildings", {"station_id": str(w.station.id), "community": w.building_b.community})]:
        r = client.get(f"{API}{path}", params=params, headers=h)
        assert r.status_code == 200 and r.json() == {"data": [], "count": 0}, (path, r.text)


def test_notices_are_visible_to_stewards_of_the_building_or_station(client: TestClient, session: Session,
                                                                    world: World) -> None:
    notice_a = make_notice(session, world.building_a)
    notice_b = make_notice(session, world.building_b)
    by_station = make_notice(session, station=world.station)
    other_station = make_notice(session, station=make_station(session))
    h = world.headers(world.steward_a)
    assert client.get(f"{API}/notices/{notice_a.id}", headers=h).status_code == 200
    assert client.get(f"{API}/notices/{by_station.id}", headers=h).status_code == 200
    assert_error(client.get(f"{API}/notices/{notice_b.id}", headers=h), 404, "not_found")
    assert_error(client.get(f"{API}/notices/{other_station.id}", headers=h), 404, "not_found")
    for office in (world.supervisor, world.admin):
        assert client.get(f"{API}/notices/{notice_b.id}", headers=world.headers(office)).status_code == 200


def test_a_new_grid_building_opens_its_rows_at_once(client: TestClient, session: Session, world: World) -> None:
    stranger = make_user(session, Role.steward, grid=[])
    h = world.headers(stranger)
    assert_error(client.get(f"{API}/households/{world.household_a.id}", headers=h), 404, "not_found")
    r = client.put(f"{API}/users/{stranger.id}/grid", json={"building_ids": [str(world.building_a.id)]},
                   headers=world.headers(world.admin))
    assert r.status_code == 200, r.text
    assert client.get(f"{API}/households/{world.household_a.id}", headers=h).status_code == 200
