"""Authorization matrix: every route of the app x every kind of caller, with the status each one gets.

The table (`ROWS`) is the specification; `docs/security.md` prints it (`python -m tests.api.test_authz_matrix`
rewrites that section, and a test fails when the two differ). A route without a row fails
`test_every_route_has_a_row`, which prints a row to start from.

Callers (columns), acting on rows of steward A's grid:
  admin, supervisor; `steward` = steward A (the grid's steward, assignee of the work order);
  `other` = steward B (another grid); `resident` = the video join token of the work order's room sent as a
  bearer token; `expired` = an expired access token of the admin; `none` = no token.

How to add a route: append `Row(METHOD, PATH, "s s s s s s s")` with the seven statuses in column order,
and, where the route needs them, `ids` (path placeholder -> fixture attribute), a `json`/`query`/`form`/
`content`/`headers`/`files` builder taking the fixture (`Fx`), or a `call` for anything else (WebSocket).
A request that changes data may make the next caller see another state, so after any 2xx to a method other
than GET/HEAD the fixture is rebuilt from scratch before the next caller.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from api.app import create_app
from api.db import utcnow
from api.notes.models import Note
from api.notices.sms import LoggingSender
from api.settings import Settings
from api.work_orders.models import Status, WorkOrder
from speech.storage import store_audio
from tests.api.proactive.helpers import SEASON, calendar_body, later_season
from tests.conftest import make_settings
from tests.speech.service_helpers import make_transcript
from tests.utils.db import wipe
from tests.utils.factories import (
    PASSWORD,
    World,
    make_note,
    make_notice,
    make_reading,
    make_visit,
    make_work_order,
    make_world,
)
from video.blobs import put_blob
from video.models import VideoSnapshot

ROLES = ("admin", "supervisor", "steward", "other", "resident", "expired", "none")
DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
DOC_START, DOC_END = "<!-- authz-matrix:start -->", "<!-- authz-matrix:end -->"
API = "/api/v1"
ALL_200 = "200 200 200 200 200 200 200"
FIELD_TEST_WAV = Path(__file__).resolve().parents[1] / "fixtures" / "speech" / "valve_bleeding.wav"


@dataclass
class Fx:
    """The rows every request acts on: steward A's grid, with one of everything in it."""

    world: World
    order: WorkOrder
    visit: Any
    reading: Any
    note: Note
    notice: Any
    transcript: Any
    room_id: uuid.UUID
    join_token: str
    snapshot: VideoSnapshot
    blob_sha256: str
    offer_sdp: str
    new_blob: bytes = field(default_factory=lambda: uuid.uuid4().bytes * 4)
    static_asset: str = "video.js"
    console_asset: str = "console.js"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.world, name)

    @property
    def new_blob_sha256(self) -> str:
        return hashlib.sha256(self.new_blob).hexdigest()


Builder = Callable[[Fx], Any]


@dataclass(frozen=True)
class Row:
    """One route, the status each caller gets, and how to build a request that is valid apart from who sends it."""

    method: str
    path: str
    expect: str
    ids: dict[str, str] = field(default_factory=dict)
    json: Builder | None = None
    query: Builder | None = None
    form: Builder | None = None
    files: Builder | None = None
    content: Builder | None = None
    headers: Builder | None = None
    call: Callable[[TestClient, Fx, dict[str, str]], int] | None = None
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def statuses(self) -> dict[str, int]:
        codes = self.expect.split()
        assert len(codes) == len(ROLES), f"{self.key}: give {len(ROLES)} statuses ({', '.join(ROLES)})"
        return dict(zip(ROLES, (int(c) for c in codes), strict=True))

    def url(self, fx: Fx) -> str:
        values = {}
        for placeholder, attribute in self.ids.items():
            value = getattr(fx, attribute)
            values[placeholder] = getattr(value, "id", value)
        return self.path.format(**values)


def _now(minutes: float = 0) -> str:
    return (utcnow() + timedelta(minutes=minutes)).isoformat()


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _call_metadata(fx: Fx) -> dict[str, str]:
    meta = {"caller_phone": "13800138000", "started_at": _now(-5), "agent": "agent-01",
            "household_id": str(fx.household_a.id)}
    return {"metadata": json.dumps(meta)}


def _calendar(client: TestClient, fx: Fx) -> str:
    """PUT the station's calendar of the coming season as the admin (idempotent); its URL."""
    url = f"{API}/proactive/stations/{fx.station.id}/calendars/{SEASON}"
    assert client.put(url, json=calendar_body(), headers=fx.headers(fx.admin)).status_code == 200
    return url


def _campaign_id(client: TestClient, fx: Fx) -> str:
    """The fixture station's water-filling campaign, created by the admin on first use."""
    _calendar(client, fx)
    admin = fx.headers(fx.admin)
    found = client.get(f"{API}/proactive/campaigns", params={"station_id": str(fx.station.id)}, headers=admin)
    if found.json()["count"]:
        return str(found.json()["data"][0]["id"])
    r = client.post(f"{API}/proactive/campaigns", json={"station_id": str(fx.station.id), "season": SEASON,
                                                        "kind": "water_fill"}, headers=admin)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _proactive_order_id(client: TestClient, fx: Fx) -> str:
    """A riser cluster in steward A's building (three leaking homes on unit 7), opened by an evaluation."""
    admin = fx.headers(fx.admin)
    mine = [o for o in client.get(f"{API}/proactive/orders", params={"kind": "riser", "limit": 500},
                                  headers=admin).json()["data"] if o["building_id"] == str(fx.building_a.id)]
    if mine:
        return str(mine[0]["id"])
    for room in ("701", "702", "703"):
        home = client.post(f"{API}/households", json={"building_id": str(fx.building_a.id), "unit": "7",
                                                      "room": room, "area_m2": 70}, headers=admin).json()
        client.post(f"{API}/work-orders", json={"household_id": home["id"], "category": "leak"}, headers=admin)
    assert client.post(f"{API}/proactive/run", headers=admin).status_code == 200
    return _proactive_order_id(client, fx)


def _with_campaign(method: str, suffix: str = "") -> Callable[[TestClient, Fx, dict[str, str]], Any]:
    def call(client: TestClient, fx: Fx, headers: dict[str, str]) -> Any:
        return client.request(method, f"{API}/proactive/campaigns/{_campaign_id(client, fx)}{suffix}",
                              headers=headers)

    return call


def _create_campaign(client: TestClient, fx: Fx, headers: dict[str, str]) -> Any:
    _calendar(client, fx)
    return client.post(f"{API}/proactive/campaigns", json={"station_id": str(fx.station.id), "season": SEASON,
                                                           "kind": "pressure_test"}, headers=headers)


def _put_calendar(client: TestClient, fx: Fx, headers: dict[str, str]) -> Any:
    season, body = later_season()
    return client.put(f"{API}/proactive/stations/{fx.station.id}/calendars/{season}", json=body, headers=headers)


def _get_proactive_order(client: TestClient, fx: Fx, headers: dict[str, str]) -> Any:
    return client.get(f"{API}/proactive/orders/{_proactive_order_id(client, fx)}", headers=headers)


ID = {"id": "order"}
R = Row
# Columns: admin supervisor steward other resident expired none
ROWS: list[Row] = [
    # --- documentation, operations and pages: public ---
    R("GET", "/openapi.json", ALL_200),
    R("GET", "/docs", ALL_200),
    R("GET", "/docs/oauth2-redirect", ALL_200),
    R("GET", "/redoc", ALL_200),
    R("GET", "/healthz", ALL_200),
    R("GET", "/metrics", ALL_200),
    R("GET", "/video", ALL_200),
    R("GET", "/video/room/{id}", ALL_200, ids={"id": "room_id"}),
    R("GET", "/video/static/{name}", ALL_200, ids={"name": "static_asset"}),
    R("GET", "/join/{token}", ALL_200, ids={"token": "join_token"}, note="the page; the token is checked by the API"),
    # --- sign-in and the current user ---
    R("POST", f"{API}/auth/token", ALL_200,
      form=lambda f: {"username": f.steward_a.username, "password": PASSWORD},
      note="public: the form's credentials decide, not the caller's token"),
    R("GET", f"{API}/auth/me", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/auth/me/grid", "200 200 200 200 401 401 401"),
    # --- users and grids: admin only ---
    R("POST", f"{API}/users", "201 403 403 403 401 401 401",
      json=lambda f: {"username": _unique("user"), "password": "long-enough-pw", "role": "steward"}),
    R("GET", f"{API}/users", "200 403 403 403 401 401 401"),
    R("GET", f"{API}/users/{{id}}", "200 403 403 403 401 401 401", ids={"id": "steward_a"}),
    R("PATCH", f"{API}/users/{{id}}", "200 403 403 403 401 401 401", ids={"id": "steward_a"},
      json=lambda f: {"full_name": "王师傅"}),
    R("GET", f"{API}/users/{{id}}/grid", "200 403 403 403 401 401 401", ids={"id": "steward_a"}),
    R("PUT", f"{API}/users/{{id}}/grid", "200 403 403 403 401 401 401", ids={"id": "steward_a"},
      json=lambda f: {"building_ids": [str(f.building_a.id)]}),
    # --- network: read in scope, write by the office ---
    R("POST", f"{API}/stations", "201 201 403 403 401 401 401",
      json=lambda f: {"code": _unique("HS-"), "name": "新换热站"}),
    R("GET", f"{API}/stations", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/stations/{{id}}", "200 200 200 200 401 401 401", ids={"id": "station"}),
    R("PATCH", f"{API}/stations/{{id}}", "200 200 403 403 401 401 401", ids={"id": "station"},
      json=lambda f: {"address": "经十路 1 号"}),
    R("POST", f"{API}/buildings", "201 201 403 403 401 401 401",
      json=lambda f: {"station_id": str(f.station.id), "community": _unique("小区"), "number": "1"}),
    R("GET", f"{API}/buildings", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/buildings/{{id}}", "200 200 200 404 401 401 401", ids={"id": "building_a"}),
    R("PATCH", f"{API}/buildings/{{id}}", "200 200 403 403 401 401 401", ids={"id": "building_a"},
      json=lambda f: {"floors": 6}),
    R("POST", f"{API}/households", "201 201 403 403 401 401 401",
      json=lambda f: {"building_id": str(f.building_a.id), "unit": "2", "room": _unique("")[:6], "area_m2": 80}),
    R("GET", f"{API}/households", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/households/{{id}}", "200 200 200 404 401 401 401", ids={"id": "household_a"}),
    R("PATCH", f"{API}/households/{{id}}", "200 200 403 403 401 401 401", ids={"id": "household_a"},
      json=lambda f: {"sensitive": True}),
    # --- work orders ---
    R("POST", f"{API}/work-orders", "201 201 201 404 401 401 401",
      json=lambda f: {"household_id": str(f.household_a.id), "category": "not_warm", "source": "visit"},
      note="stewards open visit/video orders in their grid only, without an SLA of their own"),
    R("GET", f"{API}/work-orders", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/work-orders/{{id}}", "200 200 200 404 401 401 401", ids=ID),
    R("PATCH", f"{API}/work-orders/{{id}}", "200 200 403 403 401 401 401", ids=ID,
      json=lambda f: {"description": "暖气片不热"}),
    R("POST", f"{API}/work-orders/{{id}}/assign", "200 200 403 403 401 401 401", ids=ID,
      json=lambda f: {"assignee_id": str(f.steward_a.id)}),
    R("POST", f"{API}/work-orders/{{id}}/transitions", "200 200 200 404 401 401 401", ids=ID,
      json=lambda f: {"status": "in_progress"}, note="stewards move only orders assigned to them"),
    R("GET", f"{API}/work-orders/{{id}}/events", "200 200 200 404 401 401 401", ids=ID),
    # --- field work ---
    R("POST", f"{API}/visits", "403 403 201 404 401 401 401",
      json=lambda f: {"household_id": str(f.household_a.id), "arrived_at": _now(-10)},
      note="visits are recorded by the steward who made them"),
    R("GET", f"{API}/visits", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/visits/{{id}}", "200 200 200 404 401 401 401", ids={"id": "visit"}),
    R("PATCH", f"{API}/visits/{{id}}", "200 200 200 404 401 401 401", ids={"id": "visit"},
      json=lambda f: {"actions": "放气"}),
    R("POST", f"{API}/readings", "201 201 201 404 401 401 401",
      json=lambda f: {"household_id": str(f.household_a.id), "taken_at": _now(-1), "temp_c": 17.5}),
    R("GET", f"{API}/readings", "200 200 200 200 401 401 401"),
    R("POST", f"{API}/notes", "201 201 201 404 401 401 401",
      json=lambda f: {"household_id": str(f.household_a.id), "audio_sha256": "a" * 64, "duration_s": 3,
                      "recorded_at": _now(-1)}),
    R("GET", f"{API}/notes", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/notes/{{id}}", "200 200 200 404 401 401 401", ids={"id": "note"}),
    # --- notices: the office's; stewards read the ones for their grid ---
    R("POST", f"{API}/notices", "201 201 403 403 401 401 401",
      json=lambda f: {"target": "building", "building_id": str(f.building_a.id),
                      "water_fill_start": _now(60 * 24), "water_fill_end": _now(60 * 30)}),
    R("GET", f"{API}/notices", "200 200 403 403 401 401 401"),
    R("GET", f"{API}/notices/{{id}}", "200 200 200 404 401 401 401", ids={"id": "notice"}),
    R("GET", f"{API}/notices/{{id}}/messages", "200 200 403 403 401 401 401", ids={"id": "notice"}),
    R("POST", f"{API}/notices/{{id}}/send", "200 200 403 403 401 401 401", ids={"id": "notice"}),
    R("GET", f"{API}/notices/{{id}}/deliveries", "200 200 403 403 401 401 401", ids={"id": "notice"}),
    # --- offline sync and blobs ---
    R("GET", f"{API}/sync/pull", "200 200 200 200 401 401 401", query=lambda f: {"schema_version": "1"}),
    R("POST", f"{API}/sync/push", "200 200 200 200 401 401 401",
      json=lambda f: {"schema_version": 1, "client_id": str(uuid.uuid4()), "mutations": []}),
    R("GET", f"{API}/sync/conflicts", "200 200 403 403 401 401 401"),
    R("POST", f"{API}/sync/conflicts/{{id}}/review", "404 404 403 403 401 401 401", ids={"id": "order"},
      json=lambda f: {"reviewed": True}, note="no conflict in the fixture: the office gets 404"),
    R("PUT", f"{API}/blobs/{{sha256}}", "201 201 201 201 401 401 401", ids={"sha256": "new_blob_sha256"},
      content=lambda f: f.new_blob, note="content-addressed: any signed-in user may upload"),
    R("PATCH", f"{API}/blobs/{{sha256}}", "201 201 201 201 401 401 401", ids={"sha256": "new_blob_sha256"},
      content=lambda f: f.new_blob,
      headers=lambda f: {"Upload-Offset": "0", "Upload-Length": str(len(f.new_blob))}),
    R("HEAD", f"{API}/blobs/{{sha256}}", "200 200 200 200 401 401 401", ids={"sha256": "blob_sha256"}),
    R("GET", f"{API}/blobs/{{sha256}}", "200 200 200 200 401 401 401", ids={"sha256": "blob_sha256"},
      note="knowing the sha256 is the capability (hashes reach devices only through rows in scope)"),
    # --- speech: calls in, transcripts out ---
    R("POST", f"{API}/calls", "202 202 403 403 401 401 401", form=_call_metadata,
      files=lambda f: {"audio": ("call.wav", FIELD_TEST_WAV.read_bytes(), "audio/wav")}),
    R("GET", f"{API}/transcripts", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/transcripts/{{id}}", "200 200 200 404 401 401 401", ids={"id": "transcript"}),
    R("GET", f"{API}/transcripts/{{id}}/audio", "200 200 200 404 401 401 401", ids={"id": "transcript"}),
    R("HEAD", f"{API}/transcripts/{{id}}/audio", "200 200 200 404 401 401 401", ids={"id": "transcript"}),
    R("PATCH", f"{API}/transcripts/{{id}}", "200 200 403 403 401 401 401", ids={"id": "transcript"},
      json=lambda f: {"segments": [{"index": 0, "text": "排气阀漏水"}]}),
    R("GET", f"{API}/transcripts/{{id}}/revisions", "200 200 200 404 401 401 401", ids={"id": "transcript"}),
    R("POST", f"{API}/transcripts/{{id}}/approve", "200 200 403 403 401 401 401", ids={"id": "transcript"}),
    R("POST", f"{API}/transcripts/{{id}}/retry", "409 409 403 403 401 401 401", ids={"id": "transcript"},
      note="the fixture's transcript is not failed: the office gets 409"),
    # --- video ---
    R("POST", f"{API}/video/rooms", "200 200 200 404 401 401 401", json=lambda f: {"work_order_id": str(f.order.id)},
      note="200: the order's open room is returned with a fresh link"),
    R("GET", f"{API}/video/rooms/{{id}}", "200 200 200 404 401 401 401", ids={"id": "room_id"}),
    R("POST", f"{API}/video/rooms/{{id}}/close", "200 200 200 404 401 401 401", ids={"id": "room_id"}),
    R("POST", f"{API}/video/rooms/{{id}}/connect", "200 200 200 404 200 401 401", ids={"id": "room_id"},
      json=lambda f: {"sdp": f.offer_sdp, "type": "offer"}, note="the resident joins with the link's token"),
    R("POST", f"{API}/video/rooms/{{id}}/leave", "204 204 204 404 204 401 401", ids={"id": "room_id"},
      query=lambda f: {"participant_id": str(uuid.uuid4())}),
    R("POST", f"{API}/video/rooms/{{id}}/snapshot", "409 409 409 404 401 401 401", ids={"id": "room_id"},
      note="409 `no_video`: admitted, but no resident camera in this test"),
    R("GET", f"{API}/video/snapshots", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/video/snapshots/{{id}}/image", "200 200 200 404 401 401 401", ids={"id": "snapshot"}),
    R("GET", f"{API}/video/join/{{token}}", ALL_200, ids={"token": "join_token"},
      note="the join token in the path is the credential"),
    R("GET", f"{API}/video/relay", "200 200 403 403 401 401 401", note="the relay's statistics: the office only"),
    # --- supervisor console: the page is public, its data follows the API's scope; the dashboard is the office's ---
    R("GET", "/console", ALL_200),
    R("GET", "/console/", ALL_200),
    R("GET", "/console/static/{name}", ALL_200, ids={"name": "console_asset"}),
    R("GET", f"{API}/console/me", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/console/transcripts", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/console/transcripts/{{id}}/quality", "200 200 200 404 401 401 401", ids={"id": "transcript"}),
    R("GET", f"{API}/console/work-orders/{{id}}/timeline", "200 200 200 404 401 401 401", ids={"id": "order"}),
    R("GET", f"{API}/console/dashboard", "200 200 403 403 401 401 401"),
    # --- proactive service: the office plans and sends; stewards read their station's campaigns ---
    R("PUT", f"{API}/proactive/stations/{{station_id}}/calendars/{{season}}", "200 200 403 403 401 401 401",
      call=_put_calendar),
    R("GET", f"{API}/proactive/calendars", "200 200 200 200 401 401 401"),
    R("POST", f"{API}/proactive/campaigns", "201 201 403 403 401 401 401", call=_create_campaign),
    R("GET", f"{API}/proactive/campaigns", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/proactive/campaigns/{{id}}", "200 200 200 200 401 401 401", call=_with_campaign("GET"),
      note="both stewards' buildings are fed by the campaign's station"),
    R("GET", f"{API}/proactive/campaigns/{{id}}/preview", "200 200 403 403 401 401 401",
      call=_with_campaign("GET", "/preview")),
    R("POST", f"{API}/proactive/campaigns/{{id}}/send", "200 200 403 403 401 401 401",
      call=_with_campaign("POST", "/send")),
    R("GET", f"{API}/proactive/campaigns/{{id}}/deliveries", "200 200 200 200 401 401 401",
      call=_with_campaign("GET", "/deliveries"), note="stewards see their own households' deliveries"),
    R("POST", f"{API}/proactive/run", "200 200 403 403 401 401 401"),
    R("GET", f"{API}/proactive/orders", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/proactive/orders/{{id}}", "200 200 200 404 401 401 401", call=_get_proactive_order),
    R("GET", f"{API}/proactive/sla/breaches", "200 200 200 200 401 401 401"),
    R("GET", f"{API}/proactive/summary", "200 200 200 200 401 401 401"),
]


def route_keys(app: FastAPI) -> set[str]:
    """`METHOD path` of every route the app serves (HEAD beside GET is implicit; WebSockets are `WS`)."""
    keys = set()
    for route in iter_route_contexts(app.routes):
        path = route.path
        if path is None:
            continue
        methods = set(route.methods or {"WS"})
        if "GET" in methods:
            methods.discard("HEAD")
        keys.update(f"{method} {path}" for method in methods)
    return keys


def markdown() -> str:
    """The matrix as the markdown table printed in docs/security.md."""
    head = "| route | " + " | ".join(ROLES) + " | note |\n|---|" + "---:|" * len(ROLES) + "---|\n"
    lines = []
    for row in ROWS:
        statuses = row.statuses()
        lines.append(f"| `{row.key}` | " + " | ".join(str(statuses[r]) for r in ROLES) + f" | {row.note} |")
    return head + "\n".join(lines) + "\n"


def write_docs() -> None:
    """Rewrite the matrix section of docs/security.md from the table."""
    text = DOC.read_text()
    start, end = text.index(DOC_START) + len(DOC_START), text.index(DOC_END)
    DOC.write_text(text[:start] + "\n" + markdown() + text[end:])


# ---- the fixture -----------------------------------------------------------------------------------------


def _offer_sdp() -> str:
    """A real WebRTC offer (audio and video, host candidates), as a browser would send."""
    from aiortc import RTCPeerConnection

    async def make() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="sendrecv")
        pc.addTransceiver("video", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


@pytest.fixture(scope="module")
def offer_sdp() -> str:
    return _offer_sdp()


@pytest.fixture(scope="module")
def matrix_app(migrated_engine: Engine, database_url: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[FastAPI]:
    settings = make_settings(database_url, tmp_path_factory.mktemp("matrix"), speech_queue="off",
                             video_ice_servers="", video_worker_id="matrix", video_max_rooms=64)
    yield create_app(settings, engine=migrated_engine, sms_sender=LoggingSender())
    wipe(migrated_engine)  # the worlds pile up without a wipe per test; leave the database empty


def build_fx(engine: Engine, client: TestClient, settings: Settings, offer_sdp: str) -> Fx:
    """A new two-grid world with one of every kind of row in steward A's grid (names and ids are unique, so
    worlds built earlier in the database change nothing, and no test waits for a wipe)."""
    with Session(engine, expire_on_commit=False) as session:
        world = make_world(session, settings)
        order = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)
        visit = make_visit(session, world.household_a, world.steward_a, work_order_id=order.id)
        reading = make_reading(session, world.household_a, world.steward_a)
        note = make_note(session, world.steward_a, household_id=world.household_a.id)
        notice = make_notice(session, world.building_a)
        audio = FIELD_TEST_WAV.read_bytes()
        sha256 = store_audio(settings, audio)
        transcript = make_transcript(session, world.steward_a, "暖气不热", "排气阀漏水", kind="call_recording",
                                     household_id=world.household_a.id, work_order_id=order.id)
        call_note = session.get(Note, transcript.id)
        assert call_note is not None
        call_note.audio_sha256 = sha256
        session.commit()
    r = client.post(f"{API}/video/rooms", json={"work_order_id": str(order.id)}, headers=world.headers(world.steward_a))
    assert r.status_code == 201, r.text
    room_id = uuid.UUID(r.json()["room_id"])
    join_token = r.json()["join_url"].rsplit("/", 1)[1]
    with Session(engine, expire_on_commit=False) as session:
        jpeg = b"\xff\xd8\xff\xe0" + uuid.uuid4().bytes + b"\xff\xd9"
        snapshot = VideoSnapshot(room_id=room_id, work_order_id=order.id, sha256=put_blob(settings, jpeg), width=1,
                                 height=1, size_bytes=len(jpeg), taken_by_id=world.steward_a.id)
        session.add(snapshot)
        session.commit()
    return Fx(world=world, order=order, visit=visit, reading=reading, note=note, notice=notice,
              transcript=transcript, room_id=room_id, join_token=join_token, snapshot=snapshot, blob_sha256=sha256,
              offer_sdp=offer_sdp)


def caller_headers(fx: Fx, role: str) -> dict[str, str]:
    """The Authorization header each column sends."""
    w = fx.world
    users = {"admin": w.admin, "supervisor": w.supervisor, "steward": w.steward_a, "other": w.steward_b}
    if role in users:
        return w.headers(users[role])
    if role == "resident":
        return {"Authorization": f"Bearer {fx.join_token}"}
    if role == "expired":
        past = utcnow() - timedelta(hours=13)
        claims = {"sub": str(w.admin.id), "role": "admin", "iat": past, "exp": past + timedelta(hours=12),
                  "typ": "access"}
        token = jwt.encode(claims, w.settings.secret_key, algorithm=w.settings.jwt_algorithm)
        return {"Authorization": f"Bearer {token}"}
    assert role == "none"
    return {}


def send(client: TestClient, row: Row, fx: Fx, headers: dict[str, str]) -> Any:
    """Make the row's request as the caller; the response."""
    if row.call is not None:
        return row.call(client, fx, headers)
    extra = row.headers(fx) if row.headers else {}
    kwargs: dict[str, Any] = {"headers": headers | extra}
    for name in ("json", "content", "files"):
        builder = getattr(row, name)
        if builder is not None:
            kwargs[name] = builder(fx)
    if row.query is not None:
        kwargs["params"] = row.query(fx)
    if row.form is not None:
        kwargs["data"] = row.form(fx)
    return client.request(row.method, row.url(fx), **kwargs)


def run_row(client: TestClient, row: Row, fresh: Callable[[], Fx]) -> dict[str, int]:
    """The status every caller gets for this row (a fresh fixture after any write that went through)."""
    fx = fresh()
    got = {}
    for role in ROLES:
        r = send(client, row, fx, caller_headers(fx, role))
        got[role] = r if isinstance(r, int) else r.status_code
        if (not isinstance(r, int) and r.status_code >= 400 and row.method != "HEAD"
                and r.headers.get("content-type") == "application/json"):
            detail = r.json().get("detail")
            assert isinstance(detail, dict) and {"code", "message"} <= set(detail), (row.key, role, r.text)
        if 200 <= got[role] < 300 and row.method not in ("GET", "HEAD"):
            fx = fresh()
    return got


# ---- the tests -------------------------------------------------------------------------------------------


@pytest.fixture
def matrix_client(matrix_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(matrix_app, raise_server_exceptions=False) as client:
        yield client


def test_every_route_has_a_row(matrix_app: FastAPI) -> None:
    served, listed = route_keys(matrix_app), {row.key for row in ROWS}
    assert len(listed) == len(ROWS), "two rows for the same route"
    missing = sorted(served - listed)
    template = "\n".join(f'    R("{k.split()[0]}", "{k.split()[1]}", "??? ??? ??? ??? ??? ??? ???"),' for k in missing)
    assert not missing, (f"{len(missing)} route(s) have no row in tests/api/test_authz_matrix.py ROWS; add one each "
                         f"with the status per caller ({', '.join(ROLES)}), then run `python -m "
                         f"tests.api.test_authz_matrix` to refresh docs/security.md:\n{template}")
    assert not listed - served, f"rows for routes the app no longer serves: {sorted(listed - served)}"


def test_docs_print_the_matrix() -> None:
    text = DOC.read_text()
    assert DOC_START in text and DOC_END in text, f"docs/security.md lost its {DOC_START} markers"
    printed = text[text.index(DOC_START) + len(DOC_START):text.index(DOC_END)].strip()
    assert printed == markdown().strip(), "docs/security.md is stale: run `python -m tests.api.test_authz_matrix`"


@pytest.mark.parametrize("row", ROWS, ids=[row.key for row in ROWS])
def test_matrix(row: Row, matrix_client: TestClient, matrix_app: FastAPI, migrated_engine: Engine,
                offer_sdp: str) -> None:
    settings: Settings = matrix_app.state.settings
    got = run_row(matrix_client, row, lambda: build_fx(migrated_engine, matrix_client, settings, offer_sdp))
    expected = row.statuses()
    wrong = {role: f"expected {expected[role]}, got {got[role]}" for role in ROLES if got[role] != expected[role]}
    assert not wrong, f"{row.key}: {wrong}\n  as a row: \"{' '.join(str(got[r]) for r in ROLES)}\""


if __name__ == "__main__":
    write_docs()
    print(f"wrote the authorization matrix ({len(ROWS)} routes x {len(ROLES)} callers) into {DOC}")
