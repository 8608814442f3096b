"""Bad input of every kind gets the one error shape and the right status, never a 500 or a half-written row."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session
from starlette.requests import ClientDisconnect

from api import migrate
from api.app import create_app
from api.errors import install_error_handlers
from api.fieldwork.models import Visit
from api.fieldwork.views import router as fieldwork_router
from api.network.models import Station
from api.network.views import router as network_router
from api.notes.views import router as notes_router
from api.notices.models import Notice
from api.notices.views import router as notices_router
from api.security import create_access_token
from api.users.models import User
from api.users.views import router as users_router
from api.work_orders.models import Status, WorkOrder
from api.work_orders.views import router as work_orders_router
from tests.conftest import make_settings
from tests.utils.asserts import assert_error, count_rows, db_state
from tests.utils.factories import World, make_visit, make_work_order, random_id

API = "/api/v1"

# A route of each shape that takes a JSON body, with who may call it.
BODY_ROUTES = [("POST", "/stations", "supervisor"), ("POST", "/work-orders", "supervisor"),
               ("POST", "/visits", "steward_a"), ("POST", "/notes", "steward_a"),
               ("POST", "/notices", "supervisor"), ("POST", "/users", "admin")]


@pytest.mark.parametrize(("method", "path", "who"), BODY_ROUTES)
def test_malformed_json_is_400_malformed_json(client: TestClient, session: Session, world: World, method: str,
                                              path: str, who: str) -> None:
    before = db_state(session)
    headers = world.headers(getattr(world, who)) | {"content-type": "application/json"}
    for raw in (b'{"code": "HS-1", "name": ', b"{'code': 'x'}", b'{"a": 1} trailing', b"{"):
        r = client.request(method, f"{API}{path}", content=raw, headers=headers)
        assert_error(r, 400, "malformed_json")
    assert db_state(session) == before


def test_a_body_that_is_not_utf8_is_malformed_json(client: TestClient, session: Session, world: World) -> None:
    """Regression: FastAPI's generic "error parsing the body" came out as 400 `bad_request`."""
    headers = world.headers(world.supervisor) | {"content-type": "application/json"}
    for raw in ('{"code": "HS-1", "name": "王秀英"}'.encode("gbk"), b"\xff\xfe{", b'{"code": "\xc3"}'):
        assert_error(client.post(f"{API}/stations", content=raw, headers=headers), 400, "malformed_json")
    assert count_rows(session, Station) == 1


@pytest.mark.parametrize(("method", "path", "who"), [*BODY_ROUTES, ("POST", "/sync/push", "steward_a")])
def test_a_body_nested_too_deeply_is_malformed_json(client: TestClient, session: Session, world: World,
                                                    method: str, path: str, who: str) -> None:
    """Regression (review): the JSON parser's RecursionError came out as 400 `bad_request`."""
    before = db_state(session)
    headers = world.headers(getattr(world, who)) | {"content-type": "application/json"}
    for raw in (b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        assert_error(client.request(method, f"{API}{path}", content=raw, headers=headers), 400, "malformed_json")
    assert db_state(session) == before


@pytest.mark.parametrize(("method", "path", "who"), BODY_ROUTES)
def test_a_json_body_sent_as_another_type_is_415(client: TestClient, session: Session, world: World, method: str,
                                                 path: str, who: str) -> None:
    """Regression (review): README lists 415 `unsupported_media_type`, but a JSON body sent as text/plain, as a
    form or with no type answered 422 "Input should be a valid dictionary"."""
    before = db_state(session)
    headers = world.headers(getattr(world, who))
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        sent = headers | ({"content-type": content_type} if content_type else {})
        r = client.request(method, f"{API}{path}", content=b'{"code": "HS-9", "name": "x"}', headers=sent)
        assert_error(r, 415, "unsupported_media_type")
    assert db_state(session) == before


def test_a_body_that_is_json_but_not_an_object_is_422(client: TestClient, world: World) -> None:
    for raw in (b"[]", b'"station"', b"42", b"null"):
        r = client.post(f"{API}/stations", content=raw, headers=world.headers(world.supervisor)
                        | {"content-type": "application/json"})
        assert_error(r, 422, "validation_error")


# Per route: who calls it, then (body, the field that is wrong). "B" and "H" stand for a building and a
# household id.
BAD_BODIES: dict[str, tuple[str, list[tuple[dict[str, Any], str]]]] = {
    "/stations": ("supervisor", [
        ({"code": "HS", "name": "站", "capacity_mw": "big"}, "capacity_mw"),
        ({"code": 12, "name": "站"}, "code"),
        ({"name": "站"}, "code"),
    ]),
    "/households": ("supervisor", [
        ({"building_id": "not-a-uuid", "unit": "1", "room": "1", "area_m2": 50}, "building_id"),
        ({"building_id": "B", "unit": "1", "room": "1", "area_m2": -5}, "area_m2"),
        ({"building_id": "B", "unit": "1", "room": "1", "area_m2": 50, "heating_status": "off"}, "heating_status"),
        ({"building_id": "B", "unit": "1", "room": "1", "area_m2": 50, "sensitive": "maybe"}, "sensitive"),
    ]),
    "/work-orders": ("supervisor", [
        ({"household_id": "H", "category": "freezing"}, "category"),
        ({"household_id": "H", "category": "leak", "priority": "asap"}, "priority"),
        ({"household_id": "H", "category": "leak", "sla_due_at": "2030-01-01T08:00:00"}, "sla_due_at"),
    ]),
    "/visits": ("steward_a", [
        ({"household_id": "H", "arrived_at": "2025-12-01T08:00:00"}, "arrived_at"),
        ({"household_id": "H", "arrived_at": "yesterday"}, "arrived_at"),
        ({"household_id": "H", "arrived_at": 1764576000}, "arrived_at"),  # a Unix time has no zone
        ({"household_id": "H", "arrived_at": "2025-12-01T08:00:00Z", "indoor_temp_c": 80}, "indoor_temp_c"),
    ]),
    "/readings": ("steward_a", [
        ({"household_id": "H", "taken_at": "2025-12-01T08:00:00", "temp_c": 18}, "taken_at"),
        ({"household_id": "H", "taken_at": "2025-12-01T08:00:00Z", "temp_c": "warm"}, "temp_c"),
        ({"household_id": "H", "taken_at": "1764576000", "temp_c": 18}, "taken_at"),
    ]),
    "/notes": ("steward_a", [
        ({"audio_sha256": "a" * 64, "duration_s": 3, "recorded_at": "2025-12-01T08:00:00Z", "kind": "video"},
         "kind"),
    ]),
    "/notices": ("supervisor", [
        ({"target": "building", "building_id": "B", "water_fill_start": "2025-11-01T00:00:00",
          "water_fill_end": "2025-11-01T08:00:00Z"}, "water_fill_start"),
        # Regression (review): a Unix time (seconds, or milliseconds past 2e10) was taken as UTC.
        ({"target": "building", "building_id": "B", "water_fill_start": "2030-11-01T00:00:00Z",
          "water_fill_end": 1.9e9}, "water_fill_end"),
    ]),
    "/users": ("admin", [
        ({"username": "newuser", "password": "short", "role": "steward"}, "password"),
        ({"username": "newuser", "password": "long-enough-pw", "role": "mayor"}, "role"),
        ({"username": "newuser", "password": "long-enough-pw", "role": "steward", "grid": ["x"]}, "grid"),
    ]),
}


@pytest.mark.parametrize("path", list(BAD_BODIES))
def test_wrong_types_unknown_enums_and_naive_datetimes_are_422(client: TestClient, session: Session,
                                                               world: World, path: str) -> None:
    who, cases = BAD_BODIES[path]
    ids = {"B": str(world.building_a.id), "H": str(world.household_a.id)}
    before = db_state(session)
    for raw, bad_field in cases:
        body = {k: ids.get(v, v) if isinstance(v, str) else v for k, v in raw.items()}
        r = client.post(f"{API}{path}", json=body, headers=world.headers(getattr(world, who)))
        detail = assert_error(r, 422, "validation_error")
        assert any(e["loc"][:2] == ["body", bad_field] for e in detail["errors"]), detail
        assert bad_field in detail["message"]
    assert db_state(session) == before


def test_ids_of_missing_rows_are_404(client: TestClient, world: World) -> None:
    for path in ("/stations", "/buildings", "/households", "/work-orders", "/visits", "/notes", "/notices",
                 "/users"):
        assert_error(client.get(f"{API}{path}/{random_id()}", headers=world.headers(world.admin)), 404,
                     "not_found")


def test_malformed_ids_in_the_path_are_422(client: TestClient, world: World) -> None:
    detail = assert_error(client.get(f"{API}/households/42", headers=world.headers(world.admin)), 422,
                          "validation_error")
    assert detail["errors"][0]["loc"] == ["path", "id"]


def test_unknown_routes_and_methods_use_the_error_shape(client: TestClient, session: Session,
                                                       world: World) -> None:
    assert_error(client.get(f"{API}/boilers", headers=world.headers(world.admin)), 404, "not_found")
    assert_error(client.delete(f"{API}/stations/{world.station.id}", headers=world.headers(world.admin)), 405,
                 "method_not_allowed")
    assert count_rows(session, Station) == 1


def test_401_carries_the_bearer_challenge(client: TestClient) -> None:
    r = client.get(f"{API}/households", headers={"Authorization": "Bearer not-a-jwt"})
    assert_error(r, 401, "invalid_token")
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("path", "who", "body"), [
    ("/stations", "supervisor", {"code": "HS-\u0000", "name": "站"}),
    ("/work-orders", "supervisor", {"household_id": "H", "category": "leak", "description": "漏水\u0000"}),
    ("/visits", "steward_a", {"household_id": "H", "arrived_at": "2025-12-01T08:00:00Z", "actions": "\u0000"}),
])
def test_nul_characters_never_cause_a_500(client: TestClient, session: Session, world: World, backend: str,
                                          path: str, who: str, body: dict[str, Any]) -> None:
    """Regression: PostgreSQL cannot store NUL in text; the DataError used to surface as a 500. And SQLite
    stored it, so one backend held rows the other refused: both answer 422 now, and nothing is written."""
    body = {k: str(world.household_a.id) if v == "H" else v for k, v in body.items()}
    before = db_state(session)
    r = client.post(f"{API}{path}", json=body, headers=world.headers(getattr(world, who)))
    assert_error(r, 422, "validation_error")
    assert db_state(session) == before


def test_nul_characters_in_a_search_never_cause_a_500(client: TestClient, world: World, backend: str) -> None:
    r = client.get(f"{API}/households", params={"q": "王\u0000"}, headers=world.headers(world.supervisor))
    assert_error(r, 422, "validation_error")


@pytest.mark.parametrize("when", ["9999-12-31T23:00:00-14:00", "0001-01-01T00:30:00+01:00"])
def test_timestamps_beyond_the_utc_range_are_422(client: TestClient, session: Session, world: World,
                                                 when: str) -> None:
    """Regression: an aware timestamp that overflows when converted to UTC used to be a 500."""
    before = db_state(session)
    r = client.post(f"{API}/visits", json={"household_id": str(world.household_a.id), "arrived_at": when},
                    headers=world.headers(world.steward_a))
    assert_error(r, 422, "validation_error")
    r = client.post(f"{API}/work-orders", json={"household_id": str(world.household_a.id), "category": "leak",
                                                "sla_due_at": when}, headers=world.headers(world.supervisor))
    assert_error(r, 422, "validation_error")
    assert db_state(session) == before


# --- nothing half-written ----------------------------------------------------------------------------


def test_failed_creates_leave_no_rows(client: TestClient, session: Session, world: World) -> None:
    order = make_work_order(session, world.household_b, status=Status.assigned, assignee=world.steward_b)
    visit = make_visit(session, world.household_a, world.steward_a)
    office, steward = world.headers(world.supervisor), world.headers(world.steward_a)
    before = db_state(session)
    failures = [
        (client.post(f"{API}/work-orders", json={"household_id": str(world.household_a.id), "category": "leak",
                                                 "assignee_id": str(world.supervisor.id)}, headers=office),
         422, "invalid_assignee"),
        (client.post(f"{API}/visits", json={"household_id": str(world.household_a.id), "work_order_id": str(order.id),
                                            "arrived_at": "2025-12-01T08:00:00Z"}, headers=steward),
         404, "not_found"),
        (client.post(f"{API}/readings", json={"household_id": str(world.household_b.id), "visit_id": str(visit.id),
                                              "taken_at": "2025-12-01T08:00:00Z", "temp_c": 17},
                     headers=office), 422, "household_mismatch"),
        (client.post(f"{API}/users", json={"username": "withgrid", "password": "long-enough-pw", "role": "steward",
                                           "grid": [str(world.building_a.id), random_id()]},
                     headers=world.headers(world.admin)), 404, "not_found"),
        (client.post(f"{API}/notices", json={"target": "station", "station_id": random_id(),
                                             "water_fill_start": "2025-11-01T00:00:00Z",
                                             "water_fill_end": "2025-11-01T08:00:00Z"}, headers=office),
         404, "not_found"),
        (client.post(f"{API}/stations", json={"code": world.station.code, "name": "重复"}, headers=office),
         409, "already_exists"),
    ]
    for r, status, code in failures:
        assert_error(r, status, code)
    assert db_state(session) == before
    assert count_rows(session, WorkOrder) == 1 and count_rows(session, Visit) == 1
    assert count_rows(session, User) == 4 and count_rows(session, Notice) == 0 and count_rows(session, Station) == 1


JUNK_BODIES: list[Any] = [[], {"id": "x", "household_id": None, "status": 7, "building_ids": "all"}, "\u0000",
                          {"arrived_at": "9999-12-31T23:59:59-23:59", "temp_c": 1e308, "assignee_id": random_id()}]


DOMAIN_ROUTES = sorted((f"{API}{route.path}", method.lower())
                       for router in (users_router, network_router, work_orders_router, fieldwork_router,
                                      notes_router, notices_router)
                       for route in router.routes if isinstance(route, APIRoute)
                       for method in route.methods)


def test_no_route_answers_500_to_junk(client: TestClient, session: Session, world: World) -> None:
    """Every route of the domain API, with missing, malformed and foreign ids and junk bodies, as each role:
    always a deliberate answer in the error shape, never a 500."""
    order = make_work_order(session, world.household_b, status=Status.assigned, assignee=world.steward_b)
    requests = [(method, template.replace("{id}", path_id), body, user)
                for template, method in DOMAIN_ROUTES
                for path_id in ((random_id(), "x", str(order.id)) if "{id}" in template else ("",))
                for body in (JUNK_BODIES if method in ("post", "put", "patch") else [None])
                for user in (world.admin, world.steward_a)]
    assert len(requests) > 200
    for method, url, body, user in requests:
        r = client.request(method.upper(), url, json=body, headers=world.headers(user))
        assert r.status_code < 500, (method, url, body, r.text)
        if r.status_code >= 400:
            detail = r.json()["detail"]
            assert isinstance(detail["code"], str) and isinstance(detail["message"], str), r.text


def test_openapi_documents_the_one_error_shape(client: TestClient) -> None:
    """Regression (found by the fuzz tests): OpenAPI documented FastAPI's 422 body `{"detail": [...]}`,
    which this service never answers; every operation now documents its 4xx as `{"detail": {code, message}}`."""
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["detail"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            refused = operation["responses"].get("4XX")
            assert refused is not None, f"{method.upper()} {path} documents no 4XX"
            assert refused["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}


def test_a_sender_that_vanishes_mid_body_is_a_499_logged_as_info(caplog: pytest.LogCaptureFixture) -> None:
    """A weak link dropping during an upload is the field's normal, not a server error (a 5xx pages someone)."""
    app = FastAPI()
    install_error_handlers(app)

    @app.put("/upload")
    def upload() -> None:
        raise ClientDisconnect()

    with caplog.at_level(logging.INFO, logger="api.errors"), TestClient(app) as client:
        r = client.put("/upload", content=b"x")
    assert_error(r, 499, "client_disconnected")
    assert "client disconnected during PUT /upload" in caplog.text
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


def test_a_database_that_went_away_is_a_503_to_retry(caplog: pytest.LogCaptureFixture) -> None:
    """A PostgreSQL restart or failover drops pooled connections mid-request: a 503 with Retry-After tells
    handhelds to retry (nothing was committed), where a 500 paged someone for the database's restart."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/gone")
    def gone() -> None:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    @app.get("/dropped")
    def dropped() -> None:
        raise DBAPIError("SELECT 1", {}, Exception("connection reset"), connection_invalidated=True)

    @app.get("/busy")  # every pooled connection held past the pool's timeout (a review found it a 500)
    def busy() -> None:
        raise PoolTimeout("QueuePool limit of size 1 overflow 0 reached, connection timed out, timeout 1.00")

    with caplog.at_level(logging.INFO, logger="api.errors"), TestClient(app) as client:
        for path in ("/gone", "/dropped", "/busy"):
            r = client.get(path)
            assert_error(r, 503, "database_unavailable")
            assert r.headers["retry-after"] == "5"
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


def test_a_request_that_finds_no_free_connection_is_a_503(tmp_path: Path) -> None:
    """A background job holds the pool's only connection past the pool's timeout: the request's checkout
    times out (sqlalchemy's TimeoutError, which is no StatementError), and used to answer 500."""
    settings = make_settings(f"sqlite:///{tmp_path / 's.db'}", tmp_path)
    engine = create_engine(settings.resolved_database_url, pool_size=1, max_overflow=0, pool_timeout=1,
                           connect_args={"check_same_thread": False})
    migrate.upgrade(engine)
    held = engine.connect()  # a background job's connection
    try:
        with TestClient(create_app(settings, engine=engine), raise_server_exceptions=False) as client:
            token = create_access_token(settings=settings, user_id=uuid.uuid4(), role="admin")[0]
            r = client.get("/api/v1/stations", headers={"Authorization": f"Bearer {token}"})
    finally:
        held.close()
        engine.dispose()
    assert_error(r, 503, "database_unavailable")


def test_a_blob_store_that_fails_is_a_503_to_retry() -> None:
    """An S3-compatible store that is unreachable or refuses the credentials: nothing was written (uploads
    reach the store only once verified), so the device retries; it used to be a 500."""
    from botocore.exceptions import ClientError, EndpointConnectionError

    app = FastAPI()
    install_error_handlers(app)

    @app.put("/down")
    def down() -> None:
        raise EndpointConnectionError(endpoint_url="https://oss.example.cn/steward-blobs")

    @app.put("/refused")
    def refused() -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject")

    with TestClient(app) as client:
        for path in ("/down", "/refused"):
            r = client.put(path)
            assert_error(r, 503, "storage_unavailable")
            assert r.headers["retry-after"] == "30"
