"""Stations, buildings and households: create, read, update, list with filters and paging."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from api.network import service
from api.network.models import Building, Household, Station
from tests.utils.asserts import assert_error, count_rows, db_state, reread
from tests.utils.factories import World, make_building, make_household, make_station, random_id

API = "/api/v1"


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- stations -----------------------------------------------------------------------------------------


def test_station_create_read_update(client: TestClient, session: Session, world: World) -> None:
    h = world.headers(world.supervisor)
    r = client.post(f"{API}/stations", json={"code": "HS-LX-03", "name": "燕山换热站", "district": "历下区",
                                             "capacity_mw": 12.5}, headers=h)
    assert r.status_code == 201, r.text
    station = r.json()
    assert station["version"] == 1 and station["capacity_mw"] == 12.5
    assert client.get(f"{API}/stations/{station['id']}", headers=world.headers(world.steward_a)).json() == station
    r = client.patch(f"{API}/stations/{station['id']}", json={"name": "燕山一号站", "capacity_mw": None}, headers=h)
    assert r.status_code == 200, r.text
    updated = r.json()
    assert (updated["name"], updated["capacity_mw"], updated["version"]) == ("燕山一号站", None, 2)
    assert _ts(updated["updated_at"]) > _ts(station["updated_at"])
    row = reread(session, Station, station["id"])
    assert (row.name, row.version, row.code) == ("燕山一号站", 2, "HS-LX-03")


def test_a_patch_that_changes_nothing_keeps_the_version(client: TestClient, world: World) -> None:
    r = client.patch(f"{API}/stations/{world.station.id}", json={"name": world.station.name},
                     headers=world.headers(world.admin))
    assert r.status_code == 200 and r.json()["version"] == 1


def test_station_codes_are_unique(client: TestClient, session: Session, world: World) -> None:
    h = world.headers(world.supervisor)
    other = make_station(session, code="HS-OTHER")
    assert_error(client.post(f"{API}/stations", json={"code": world.station.code, "name": "x"}, headers=h),
                 409, "already_exists")
    assert count_rows(session, Station) == 2
    assert_error(client.patch(f"{API}/stations/{other.id}", json={"code": world.station.code}, headers=h),
                 409, "already_exists")
    assert reread(session, Station, other.id).code == "HS-OTHER"
    # Keeping one's own code is not a clash.
    assert client.patch(f"{API}/stations/{other.id}", json={"code": "HS-OTHER", "name": "新名"},
                        headers=h).status_code == 200


def test_list_stations_by_district_ordered_by_code(client: TestClient, session: Session, world: World) -> None:
    make_station(session, code="HS-B", district="市中区")
    make_station(session, code="HS-A", district="市中区")
    r = client.get(f"{API}/stations", params={"district": "市中区"}, headers=world.headers(world.steward_a))
    assert r.status_code == 200
    assert [s["code"] for s in r.json()["data"]] == ["HS-A", "HS-B"] and r.json()["count"] == 2


# --- buildings ----------------------------------------------------------------------------------------


def test_building_create_update_and_uniqueness(client: TestClient, session: Session, world: World) -> None:
    h = world.headers(world.supervisor)
    body = {"station_id": str(world.station.id), "community": "山大南路小区", "number": "7", "floors": 6}
    r = client.post(f"{API}/buildings", json=body, headers=h)
    assert r.status_code == 201, r.text
    building = r.json()
    assert_error(client.post(f"{API}/buildings", json=body, headers=h), 409, "already_exists")
    assert count_rows(session, Building) == 3
    second = make_station(session)
    r = client.patch(f"{API}/buildings/{building['id']}", json={"station_id": str(second.id), "floors": None},
                     headers=h)
    assert r.status_code == 200, r.text
    assert (r.json()["station_id"], r.json()["floors"], r.json()["version"]) == (str(second.id), None, 2)
    clash = {"community": world.building_a.community, "number": world.building_a.number}
    assert_error(client.patch(f"{API}/buildings/{building['id']}", json=clash, headers=h), 409, "already_exists")
    assert reread(session, Building, building["id"]).number == "7"


def test_building_needs_an_existing_station(client: TestClient, session: Session, world: World) -> None:
    h = world.headers(world.supervisor)
    body = {"station_id": random_id(), "community": "新小区", "number": "1"}
    assert_error(client.post(f"{API}/buildings", json=body, headers=h), 404, "not_found")
    assert count_rows(session, Building) == 2
    r = client.patch(f"{API}/buildings/{world.building_a.id}", json={"station_id": random_id()}, headers=h)
    assert_error(r, 404, "not_found")
    assert reread(session, Building, world.building_a.id).station_id == world.station.id


def test_list_buildings_filters(client: TestClient, session: Session, world: World) -> None:
    other_station = make_station(session)
    make_building(session, other_station, community=world.building_a.community)
    h = world.headers(world.supervisor)
    by_station = client.get(f"{API}/buildings", params={"station_id": str(world.station.id)}, headers=h).json()
    assert by_station["count"] == 2
    by_community = client.get(f"{API}/buildings", params={"community": world.building_a.community},
                              headers=h).json()
    assert by_community["count"] == 2
    assert {b["station_id"] for b in by_community["data"]} == {str(world.station.id), str(other_station.id)}
    both = client.get(f"{API}/buildings", params={"community": world.building_a.community,
                                                  "station_id": str(other_station.id)}, headers=h).json()
    assert both["count"] == 1


# --- households ---------------------------------------------------------------------------------------


def test_household_create_update(client: TestClient, session: Session, world: World) -> None:
    h = world.headers(world.supervisor)
    body = {"building_id": str(world.building_a.id), "unit": "2", "room": "301", "area_m2": 92.4,
            "resident_name": "张建华", "phone": "+86 138-0000-1111"}
    r = client.post(f"{API}/households", json=body, headers=h)
    assert r.status_code == 201, r.text
    hh = r.json()
    assert (hh["heating_status"], hh["sensitive"], hh["version"]) == ("normal", False, 1)
    r = client.patch(f"{API}/households/{hh['id']}", json={"heating_status": "suspended", "sensitive": True,
                                                          "phone": None}, headers=h)
    assert r.status_code == 200, r.text
    assert (r.json()["heating_status"], r.json()["sensitive"], r.json()["phone"]) == ("suspended", True, None)
    r = client.patch(f"{API}/households/{hh['id']}", json={"area_m2": 90}, headers=h)
    assert r.json()["version"] == 3
    row = reread(session, Household, hh["id"])
    assert (row.version, row.area_m2, row.sensitive) == (3, 90, True)


def test_household_room_is_unique_per_building(client: TestClient, session: Session, world: World) -> None:
    h = world.headers(world.supervisor)
    hh = world.household_a
    body = {"building_id": str(hh.building_id), "unit": hh.unit, "room": hh.room, "area_m2": 60}
    assert_error(client.post(f"{API}/households", json=body, headers=h), 409, "already_exists")
    # The same unit and room in another building is a different home.
    r = client.post(f"{API}/households", json=body | {"building_id": str(world.building_b.id)}, headers=h)
    assert r.status_code == 201, r.text
    assert count_rows(session, Household) == 3


def test_household_needs_an_existing_building(client: TestClient, session: Session, world: World) -> None:
    body = {"building_id": random_id(), "unit": "1", "room": "101", "area_m2": 60}
    assert_error(client.post(f"{API}/households", json=body, headers=world.headers(world.admin)), 404,
                 "not_found")
    assert count_rows(session, Household) == 2


@pytest.mark.parametrize(("path", "fields"), [
    ("stations", ["code", "name", "district", "address"]),
    ("buildings", ["station_id", "community", "number", "address"]),
    ("households", ["resident_name", "area_m2", "heating_status", "sensitive"]),
])
def test_null_for_a_required_column_is_a_validation_error(client: TestClient, session: Session, world: World,
                                                          path: str, fields: list[str]) -> None:
    """Regression: null reached the NOT NULL column and came back as a 409 `conflict` from the database."""
    row_id = {"stations": world.station.id, "buildings": world.building_a.id,
              "households": world.household_a.id}[path]
    before = db_state(session)
    for field in fields:
        r = client.patch(f"{API}/{path}/{row_id}", json={field: None}, headers=world.headers(world.supervisor))
        detail = assert_error(r, 422, "validation_error")
        assert field in detail["message"]
    assert db_state(session) == before


def test_list_households_filters(client: TestClient, session: Session, world: World) -> None:
    make_household(session, world.building_a, resident_name="赵国强", phone="13912345678", sensitive=True)
    make_household(session, world.building_a, resident_name="", phone=None, heating_status="suspended", room="502")
    h = world.headers(world.supervisor)

    def names(**params: object) -> list[str]:
        r = client.get(f"{API}/households", params=params, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["count"] == len(r.json()["data"])
        return sorted(x["resident_name"] for x in r.json()["data"])

    assert names(building_id=str(world.building_a.id)) == ["", "王秀英", "赵国强"]
    assert names(sensitive=True) == ["赵国强"]
    assert names(sensitive=False) == ["", "李桂兰", "王秀英"]
    assert names(heating_status="suspended") == [""]
    assert names(q="国强") == ["赵国强"]
    assert names(q="1391234") == ["赵国强"]
    assert names(q="502") == [""]
    assert_error(client.get(f"{API}/households", params={"heating_status": "off"}, headers=h), 422,
                 "validation_error")
    assert_error(client.get(f"{API}/households", params={"q": "x" * 51}, headers=h), 422, "validation_error")


def test_phone_numbers_must_look_like_phone_numbers(client: TestClient, session: Session, world: World) -> None:
    """Regression: `regex=` is ignored by SQLModel's Field, so any text was accepted as a phone number."""
    h = world.headers(world.supervisor)
    # "1----" and "1    " matched the pattern (regression): a number needs 7 digits.
    for phone in ("call me", "12", "1-2", "+", "13800000000; drop", "1----", "1    ", "+1 23-45"):
        body = {"building_id": str(world.building_a.id), "unit": "5", "room": "501", "area_m2": 60, "phone": phone}
        assert_error(client.post(f"{API}/households", json=body, headers=h), 422, "validation_error")
        assert_error(client.patch(f"{API}/households/{world.household_a.id}", json={"phone": phone}, headers=h),
                     422, "validation_error")
    assert count_rows(session, Household) == 2
    assert reread(session, Household, world.household_a.id).phone == "13800000001"


# --- paging -------------------------------------------------------------------------------------------


def test_paging_walks_the_whole_list(client: TestClient, session: Session, world: World) -> None:
    for room in ("601", "602", "603"):
        make_household(session, world.building_a, unit="1", room=room)
    h = world.headers(world.supervisor)
    seen: list[str] = []
    for offset in (0, 2, 4):
        r = client.get(f"{API}/households", params={"offset": offset, "limit": 2}, headers=h).json()
        assert r["count"] == 5
        seen += [x["id"] for x in r["data"]]
    assert len(seen) == 5 and len(set(seen)) == 5
    past = client.get(f"{API}/households", params={"offset": 100}, headers=h).json()
    assert past == {"data": [], "count": 5}


@pytest.mark.parametrize("path", ["/stations", "/buildings", "/households", "/work-orders", "/visits",
                                  "/readings", "/notes", "/notices", "/users"])
def test_paging_bounds_are_validated(client: TestClient, world: World, path: str) -> None:
    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"offset": 10_000_001}, {"limit": "ten"}):
        r = client.get(f"{API}{path}", params=params, headers=world.headers(world.admin))
        detail = assert_error(r, 422, "validation_error")
        assert detail["errors"][0]["loc"] == ["query", next(iter(params))]


def test_paging_accepts_its_limits(client: TestClient, world: World) -> None:
    r = client.get(f"{API}/households", params={"limit": 500, "offset": 10_000_000},
                   headers=world.headers(world.admin))
    assert r.status_code == 200 and r.json() == {"data": [], "count": 2}


# --- ids ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["stations", "buildings", "households"])
def test_client_chosen_ids_are_kept_and_unique(client: TestClient, session: Session, world: World,
                                               path: str) -> None:
    new_id = random_id()
    first, second = {
        "stations": ({"code": "HS-ID", "name": "站"}, {"code": "HS-ID2", "name": "站"}),
        "buildings": ({"station_id": str(world.station.id), "community": "小区", "number": "9"},
                      {"station_id": str(world.station.id), "community": "小区", "number": "10"}),
        "households": ({"building_id": str(world.building_a.id), "unit": "3", "room": "303", "area_m2": 50},
                       {"building_id": str(world.building_a.id), "unit": "3", "room": "304", "area_m2": 50}),
    }[path]
    h = world.headers(world.supervisor)
    r = client.post(f"{API}/{path}", json=first | {"id": new_id}, headers=h)
    assert r.status_code == 201 and r.json()["id"] == new_id
    before = db_state(session)
    assert_error(client.post(f"{API}/{path}", json=second | {"id": new_id}, headers=h), 409, "already_exists")
    assert db_state(session) == before


@pytest.mark.parametrize("path", ["stations", "buildings", "households"])
def test_missing_network_rows_are_404(client: TestClient, world: World, path: str) -> None:
    h = world.headers(world.supervisor)
    assert_error(client.get(f"{API}/{path}/{random_id()}", headers=h), 404, "not_found")
    assert_error(client.patch(f"{API}/{path}/{random_id()}", json={}, headers=h), 404, "not_found")


def test_household_search_is_literal_not_a_wildcard(client: TestClient, session: Session, world: World) -> None:
    h = world.headers(world.supervisor)
    assert client.get(f"{API}/households", params={"q": "%"}, headers=h).json()["count"] == 0
    assert client.get(f"{API}/households", params={"q": "_"}, headers=h).json()["count"] == 0
    assert client.get(f"{API}/households", params={"q": "秀英"}, headers=h).json()["count"] == 1


def test_addresses_typed_full_width_or_with_invisible_characters_are_the_same(client: TestClient,
                                                                                world: World) -> None:
    """Regression: "1 单元 501" typed with a Chinese IME's full-width digits, a trailing space or a zero-width
    space made three more households at one address (texted four times); a community of spaces passed."""
    h = world.headers(world.admin)
    body = {"building_id": str(world.building_a.id), "unit": "1", "room": "501", "area_m2": 80}
    assert client.post("/api/v1/households", json=body, headers=h).status_code == 201
    for extra in ({"unit": "１", "room": "５０１"}, {"room": "501 "}, {"room": "501\u200b"}, {"room": " 5０1"}):
        answer = client.post("/api/v1/households", json=body | extra, headers=h)
        assert answer.status_code == 409, (extra, answer.text)
    made = client.post("/api/v1/households", json=body | {"room": "５０２\u200b", "resident_name": " 王  伟 "},
                       headers=h)
    assert made.status_code == 201 and (made.json()["room"], made.json()["resident_name"]) == ("502", "王 伟")
    station = str(world.station.id)
    for blank in ({"community": "   ", "number": "1"}, {"community": "阳光小区", "number": "\u200b"}):
        answer = client.post("/api/v1/buildings", json={"station_id": station} | blank, headers=h)
        assert answer.status_code == 422, (blank, answer.text)
    assert client.post("/api/v1/stations", json={"code": " ", "name": "x"}, headers=h).status_code == 422
    building = client.post("/api/v1/buildings", json={"station_id": station, "community": "阳光小区",
                                                      "number": "１２"}, headers=h)
    assert building.status_code == 201 and building.json()["number"] == "12"
    again = client.patch(f"/api/v1/buildings/{building.json()['id']}", json={"number": " 12"}, headers=h)
    assert again.status_code == 200 and again.json()["number"] == "12"
    for typed in ("阳光小区", "阳光小区 ", "阳光小区\u200b"):  # the list's filter takes the name as typed too
        assert client.get("/api/v1/buildings", params={"community": typed}, headers=h).json()["count"] == 1, typed
    # Regression: the stations' district filter compared the value as typed.
    made = client.post("/api/v1/stations", json={"code": "HS-R1", "name": "x", "district": "历城区"}, headers=h)
    assert made.status_code == 201, made.text
    for typed in ("历城区", "历城区 ", "历城区\u200b", "　历城区"):
        listed = client.get("/api/v1/stations", params={"district": typed}, headers=h).json()["data"]
        assert [row["code"] for row in listed] == ["HS-R1"], typed


def test_household_search_ignores_case_and_width_on_both_databases(client: TestClient, session: Session,
                                                                    world: World) -> None:
    """Regression: `q=smith` found "Anna Smith" on SQLite (LIKE folds ASCII case) and nothing on PostgreSQL."""
    make_household(session, world.building_a, resident_name="Anna Smith", room="909")
    make_household(session, world.building_a, resident_name="Émile Ÿılmaz", room="910")
    for q in ("smith", "SMITH", "ｓｍｉｔｈ", "９０９", "émile", "ÉMILE", "ÿıl"):  # SQLite's lower() knew only ASCII
        answer = client.get("/api/v1/households", params={"q": q}, headers=world.headers(world.admin))
        assert answer.json()["count"] == 1, q


def test_the_office_corrects_a_mistyped_unit_or_room(client: TestClient, session: Session, world: World) -> None:
    """Regression: unit and room could not be changed at all, though migration 0014 asks the office to correct
    the room of a duplicate flat; now they can, still one household per building, unit and room."""
    h = world.headers(world.admin)
    other = make_household(session, world.building_a, unit="1", room="502")
    url = f"/api/v1/households/{world.household_a.id}"
    r = client.patch(url, json={"unit": "１ ", "room": "602"}, headers=h)
    assert r.status_code == 200, r.text
    assert (r.json()["unit"], r.json()["room"], r.json()["version"]) == ("1", "602", 2)
    before = db_state(session)
    assert_error(client.patch(url, json={"room": other.room}, headers=h), 409, "already_exists")
    assert_error(client.patch(url, json={"room": None}, headers=h), 422, "validation_error")
    assert_error(client.patch(url, json={"unit": " "}, headers=h), 422, "validation_error")
    assert db_state(session) == before
    assert_error(client.patch(url, json={"room": "603"}, headers=world.headers(world.steward_a)), 403, "role_required")


def test_an_address_reads_right_however_its_parts_were_stored() -> None:
    """Regression: the SMS address appended 号楼/单元/室 to what was stored: `3号楼` read `3号楼号楼`, and a
    legacy `３号楼 ` (stored before input was cleaned) `３号楼 号楼`."""
    from api.network.models import address_text

    building = Building(community="燕子山小区 ", number="３号楼 ")
    for unit, room in (("2", "501"), ("2单元", "501室"), ("２", "５０１ ")):
        assert address_text(building, Household(unit=unit, room=room)) == "燕子山小区3号楼2单元501室"
    assert address_text(Building(community="阳光花园", number="12"), Household(unit="1", room="1202")) == \
        "阳光花园12号楼1单元1202室"


def test_household_search_finds_a_phone_typed_with_separators_by_its_digits(client: TestClient, session: Session,
                                                                           world: World) -> None:
    """Regression: a phone stored as typed (`0531-8888-6666`, `138 1234 5678`) was not found by the caller ID
    the hotline has, digits only."""
    make_household(session, world.building_a, resident_name="赵国强", phone="0531-8888-6666")
    make_household(session, world.building_a, resident_name="钱秀兰", phone="138 1234 5678")
    office = world.headers(world.supervisor)
    found = {q: [h["resident_name"] for h in client.get("/api/v1/households", params={"q": q},
                                                        headers=office).json()["data"]]
             for q in ("053188886666", "13812345678", "8888-6666", "1234 5678", "88886666")}
    assert found == {"053188886666": ["赵国强"], "13812345678": ["钱秀兰"], "8888-6666": ["赵国强"],
                     "1234 5678": ["钱秀兰"], "88886666": ["赵国强"]}, found


def test_one_flat_typed_with_and_without_its_words_is_one_household(client: TestClient, session: Session,
                                                                    world: World) -> None:
    """Regression (review): 2/501 and 2单元/501室 read as one address in every SMS, but were accepted as two
    households, and a notice texted the flat twice."""
    office = world.headers(world.supervisor)
    building = make_building(session, world.station, number="9")
    base = {"building_id": str(building.id), "resident_name": "赵", "phone": "13800000055", "area_m2": 80}
    assert client.post(f"{API}/households", json=base | {"unit": "2", "room": "501"}, headers=office).status_code == 201
    before = db_state(session)
    # (review) a space before the word too: "2 单元" / "501 室" was stored as a second household of 2/501
    for unit, room in (("2单元", "501室"), ("2门", "501号"), ("2", "501户"), ("2单元", "501"), ("2 单元", "501 室"),
                       ("2", "501 号")):
        r = client.post(f"{API}/households", json=base | {"unit": unit, "room": room}, headers=office)
        assert_error(r, 409, "already_exists")
    assert db_state(session) == before
    other = client.post(f"{API}/households", json=base | {"unit": "2单元", "room": "502室"}, headers=office)
    assert other.status_code == 201, other.text
    moved = client.patch(f"{API}/households/{other.json()['id']}", json={"room": "501"}, headers=office)
    assert_error(moved, 409, "already_exists")
    assert_error(client.patch(f"{API}/households/{other.json()['id']}", json={"room": "501 室"}, headers=office),
                 409, "already_exists")
    same = client.patch(f"{API}/households/{other.json()['id']}", json={"room": "502"}, headers=office)
    assert same.status_code == 200 and same.json()["room"] == "502"  # its own flat, typed another way
    # a flat stored with the space (before this check) is found by its other spellings
    spaced = client.post(f"{API}/households", json=base | {"unit": "3 单元", "room": "601 室"}, headers=office)
    assert spaced.status_code == 201, spaced.text
    assert_error(client.post(f"{API}/households", json=base | {"unit": "3", "room": "601"}, headers=office),
                 409, "already_exists")


def test_one_building_typed_with_and_without_its_word_is_one_building(client: TestClient, session: Session,
                                                                     world: World) -> None:
    """Regression (review): 7, 7号楼 and ７栋 in one community were accepted as three buildings, each printed
    燕子山小区7号楼 (or 7栋) in every SMS and work order."""
    office = world.headers(world.supervisor)
    body = {"station_id": str(world.station.id), "community": "燕子山小区", "number": "7"}
    first = client.post(f"{API}/buildings", json=body, headers=office)
    assert first.status_code == 201, first.text
    before = db_state(session)
    for number in ("7号楼", "７栋", "7幢", "7座", "7楼", "7 号楼", "7 栋"):
        assert_error(client.post(f"{API}/buildings", json=body | {"number": number}, headers=office),
                     409, "already_exists")
    assert db_state(session) == before
    other = client.post(f"{API}/buildings", json=body | {"number": "8号楼"}, headers=office)
    assert other.status_code == 201, other.text
    assert_error(client.patch(f"{API}/buildings/{other.json()['id']}", json={"number": "7栋"}, headers=office),
                 409, "already_exists")
    same = client.patch(f"{API}/buildings/{other.json()['id']}", json={"number": "8"}, headers=office)
    assert same.status_code == 200 and same.json()["number"] == "8"  # its own number, typed another way
    elsewhere = client.post(f"{API}/buildings", json=body | {"community": "山大南路小区", "number": "7号楼"},
                            headers=office)
    assert elsewhere.status_code == 201, elsewhere.text  # another community's 7号楼


def test_a_room_is_found_however_its_word_was_typed(client: TestClient, session: Session, world: World) -> None:
    """Regression (review): a household stored as 601室 was found by `q=601室` only, not by `q=601` or `q=601号`,
    though the uniqueness check already read them as one flat."""
    office = world.headers(world.supervisor)
    building = make_building(session, world.station, community="千佛山小区")
    body = {"building_id": str(building.id), "unit": "2单元", "room": "601室", "resident_name": "钱", "area_m2": 80}
    created = client.post(f"{API}/households", json=body, headers=office)
    assert created.status_code == 201, created.text
    for q in ("601", "601室", "601号", "６０１", "601 室"):
        r = client.get(f"{API}/households", params={"q": q, "building_id": str(building.id)}, headers=office)
        assert r.status_code == 200 and [h["id"] for h in r.json()["data"]] == [created.json()["id"]], (q, r.text)
    r = client.get(f"{API}/households", params={"q": "60", "building_id": str(building.id)}, headers=office)
    assert r.json()["data"] == []


def test_two_spellings_of_one_flat_created_at_once_make_one_household(
        client: TestClient, session: Session, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): the spelling check is not a constraint, so a create checked while another one of
    the same flat (typed another way) was between its check and its commit passed too: two rows, one flat.
    Now the second waits for the first and is checked against it."""
    office = world.headers(world.supervisor)
    base = {"building_id": str(world.building_a.id), "resident_name": "钱", "phone": "13800000056", "area_m2": 70}
    checked, go_on = threading.Event(), threading.Event()
    check_unique = service._check_unique

    def slow_check(*args: Any, **kwargs: Any) -> None:
        check_unique(*args, **kwargs)
        if not checked.is_set():  # the first create, checked and not yet written
            checked.set()
            go_on.wait(10)

    monkeypatch.setattr(service, "_check_unique", slow_check)
    answers: dict[str, Any] = {}

    def create(unit: str, room: str) -> None:
        answers[unit] = client.post(f"{API}/households", json=base | {"unit": unit, "room": room}, headers=office)

    first = threading.Thread(target=create, args=("7", "701"))
    first.start()
    assert checked.wait(10)
    second = threading.Thread(target=create, args=("7单元", "701室"))
    second.start()
    second.join(1.0)  # it waits for the first (or, unguarded, gets through before the first writes)
    go_on.set()
    first.join(10)
    second.join(10)
    assert answers["7"].status_code == 201, answers["7"].text
    assert_error(answers["7单元"], 409, "already_exists")
    session.rollback()
    rooms = session.exec(select(Household.room).where(Household.building_id == world.building_a.id)).all()
    assert sorted(r for r in rooms if r.startswith("701")) == ["701"]


def test_a_household_stored_beside_its_twin_before_the_check_can_still_be_edited(
        client: TestClient, session: Session, world: World) -> None:
    """Regression (review): with two rows for one flat stored before the spelling check (2/501 and 2单元/501室),
    a PATCH that sent the whole form, its own unit and room unchanged, was 409."""
    make_household(session, world.building_a, unit="2", room="501")
    twin = make_household(session, world.building_a, unit="2单元", room="501室")
    r = client.patch(f"{API}/households/{twin.id}", json={"unit": "2单元", "room": "501室", "phone": "13900000001"},
                     headers=world.headers(world.supervisor))
    assert r.status_code == 200 and r.json()["phone"] == "13900000001", r.text


def test_two_spellings_of_one_building_created_at_once_make_one_building(
        client: TestClient, session: Session, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): as households were, two creates of one building typed two ways (9 and 9号楼), the
    second checked while the first was between its check and its commit, made two rows for one address."""
    office = world.headers(world.supervisor)
    checked, go_on = threading.Event(), threading.Event()
    check_unique = service._check_unique

    def slow_check(*args: Any, **kwargs: Any) -> None:
        check_unique(*args, **kwargs)
        if not checked.is_set():
            checked.set()
            go_on.wait(10)

    monkeypatch.setattr(service, "_check_unique", slow_check)
    answers: dict[str, Any] = {}

    def create(number: str) -> None:
        answers[number] = client.post(f"{API}/buildings", json={"station_id": str(world.station.id),
                                                                "community": "千佛山小区", "number": number},
                                      headers=office)

    first = threading.Thread(target=create, args=("9",))
    first.start()
    assert checked.wait(10)
    second = threading.Thread(target=create, args=("9号楼",))
    second.start()
    second.join(1.0)
    go_on.set()
    first.join(10)
    second.join(10)
    assert answers["9"].status_code == 201, answers["9"].text
    assert_error(answers["9号楼"], 409, "already_exists")
    session.rollback()
    assert session.exec(select(Building.number).where(Building.community == "千佛山小区")).all() == ["9"]


def test_a_building_stored_beside_its_twin_before_the_check_can_still_be_edited(
        client: TestClient, session: Session, world: World) -> None:
    """Regression (review): with 7 and 7号楼 of one community stored before the spelling check, any PATCH of
    the second (its address, its station) was 409, its own number unchanged. A real renumbering is checked."""
    seven = make_building(session, world.station, community="历山小区", number="7")
    twin = make_building(session, world.station, community="历山小区", number="7号楼")
    office = world.headers(world.supervisor)
    for building in (seven, twin):
        r = client.patch(f"{API}/buildings/{building.id}", json={"address": "历山路1号", "number": building.number},
                         headers=office)
        assert r.status_code == 200 and r.json()["address"] == "历山路1号", r.text
    other = make_building(session, world.station, community="历山小区", number="8")
    assert_error(client.patch(f"{API}/buildings/{other.id}", json={"number": "7栋"}, headers=office),
                 409, "already_exists")


@pytest.mark.parametrize(("path", "body"), [
    ("stations", {"code": "HS-X1", "name": "n", "capacity_mw": True}),
    ("buildings", {"community": "c", "number": "9", "floors": True}),
    ("buildings", {"community": "c", "number": "9", "units": "2"}),
    ("households", {"unit": "3", "room": "101", "area_m2": True}),
    ("households", {"unit": "3", "room": "101", "area_m2": "50"}),
    ("households", {"unit": "3", "room": "102", "area_m2": 50, "sensitive": "yes"}),
    ("households", {"unit": "3", "room": "102", "area_m2": 50, "sensitive": 1}),
])
def test_network_numbers_and_flags_are_typed(client: TestClient, session: Session, world: World, path: str,
                                            body: dict[str, Any]) -> None:
    """Regression (review): a JSON `true` was stored as 1.0 MW, 1 floor or 1.0 m² (the billing basis), and
    `"yes"` as a sensitive household (its SLA halved)."""
    links = {"buildings": {"station_id": str(world.station.id)},
             "households": {"building_id": str(world.building_a.id)}}.get(path, {})
    before = db_state(session)
    r = client.post(f"{API}/{path}", json=body | links, headers=world.headers(world.supervisor))
    assert_error(r, 422, "validation_error")
    assert db_state(session) == before


def test_a_household_edit_and_push_type_the_area_and_strip_the_phone(client: TestClient, session: Session,
                                                                    world: World) -> None:
    """Regression (review): `area_m2: true` edited the bill's basis to 1.0 m² over REST and in a push, and a
    phone with spaces after it was stored and texted as typed (one with a space before it was refused)."""
    h = world.headers(world.supervisor)
    area = reread(session, Household, world.household_a.id).area_m2
    assert_error(client.patch(f"{API}/households/{world.household_a.id}", json={"area_m2": True}, headers=h),
                 422, "validation_error")
    push = {"schema_version": 1, "client_id": str(random_id()), "mutations": [
        {"mutation_id": 1, "table": "households", "op": "update", "id": str(world.household_a.id),
         "base_version": 1, "fields": {"area_m2": True}}]}
    result = client.post(f"{API}/sync/push", json=push, headers=h).json()["results"][0]
    assert (result["status"], result["reason"]) == ("rejected", "invalid_value"), result
    assert reread(session, Household, world.household_a.id).area_m2 == area
    for typed in ("13800000009  ", " 13800000009\u200b"):
        r = client.patch(f"{API}/households/{world.household_b.id}", json={"phone": typed}, headers=h)
        assert r.status_code == 200 and r.json()["phone"] == "13800000009", r.text
