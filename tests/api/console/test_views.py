"""The console's page handlers and JSON on both backends: the page and its headers, who is signed in, the
review queue (pending first, filters, search, scope, masking), segment confidence, the work-order
timeline, the dashboard's figures (with the proactive panel) and the conflicts' reviewed mark."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from api.console import service as console_service
from api.console.views import CSP
from api.db import utcnow
from api.notes.models import NoteKind
from api.notices.sms import LoggingSender
from api.proactive import service as proactive
from api.proactive.models import ProactiveKind, ProactiveOrder
from api.settings import Settings
from api.users.models import User
from api.work_orders.models import OPEN_STATUSES, Category, Source, Status, WorkOrder, WorkOrderEvent
from speech.models import Call, Transcript, TranscriptState
from sync.models import SyncConflict
from tests.api.proactive.helpers import create_campaign, make_calendar
from tests.speech.service_helpers import make_transcript
from tests.utils.asserts import assert_error
from tests.utils.factories import World, make_household, make_reading, make_visit, make_work_order
from video.models import RoomState, VideoRoom, VideoSnapshot

API = "/api/v1/console"


def _call(session: Session, owner: User, phone: str, *texts: str, **kw: Any) -> Transcript:
    transcript = make_transcript(session, owner, *texts, kind=NoteKind.call_recording, **kw)
    session.add(Call(id=transcript.id, caller_phone=phone, agent="agent-07", started_at=utcnow()))
    session.commit()
    return transcript


# --- page ---------------------------------------------------------------------------------------------------


def test_the_page_and_its_assets_are_served_with_strict_headers(client: TestClient) -> None:
    for path in ("/console", "/console/"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "督办台" in r.text and "/console/static/console.js" in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"
    js = client.get("/console/static/console.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in js.text  # server values are written with textContent only
    assert client.get("/console/static/console.css").headers["content-type"].startswith("text/css")
    assert_error(client.get("/console/static/index.html"), 404, "not_found")
    assert_error(client.get("/console/static/..%2Fviews.py"), 404, "not_found")


def _js_map(js: str, name: str) -> set[str]:
    """The keys of one of console.js's label maps (`name: { key: "…", … }`)."""
    body = re.search(rf"\b{name}: {{([^}}]*)}}", js)
    assert body is not None, name
    return set(re.findall(r"(\w+):", body.group(1)))


def test_the_conflict_log_names_every_table_and_kind_in_chinese(client: TestClient) -> None:
    """A conflict line of a reading (a re-sent reading the office deleted) showed as `readings`, and a device
    value refused by a rule (`forbidden`, `invalid_value`...) by its English code: every table a push writes
    and every kind the push logs has its Chinese name."""
    from pathlib import Path

    import sync.rules
    from sync.registry import BY_NAME

    js = client.get("/console/static/console.js").text
    written = {name for name, spec in BY_NAME.items()
               if sync.rules.rules_for(spec).create is not None or sync.rules.rules_for(spec).writable is not None}
    assert {"readings", "work_orders", "visits", "notes"} <= written <= _js_map(js, "table")
    rules = Path(sync.rules.__file__).read_text()
    kinds = {"field", "deleted", "delete_wins"} | set(re.findall(r'Rejected\("(\w+)"', rules))
    assert kinds <= _js_map(js, "conflict_kind")


def test_head_of_the_page_answers_like_get_without_a_body(client: TestClient) -> None:
    """Uptime checkers and proxies probe pages with HEAD; it used to answer 405."""
    for path in ("/console", "/console/", "/console/static/console.js"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers["content-length"] == str(len(got.content)), path
    assert client.head("/console").headers["content-security-policy"] == CSP
    assert client.head("/console/static/nothing.js").status_code == 404


def test_me_says_who_may_review_and_see_numbers(client: TestClient, world: World, settings: Settings) -> None:
    office = client.get(f"{API}/me", headers=world.headers(world.supervisor)).json()
    assert office["user"]["id"] == str(world.supervisor.id)
    assert (office["can_review"], office["view_pii"], office["refresh_s"]) == (True, True, settings.console_refresh_s)
    assert office["timezone"] == settings.timezone  # the zone the pages show times in, as the date filters
    people = {p["id"]: p["role"] for p in office["people"]}
    assert people[str(world.steward_a.id)] == "steward" and people[str(world.admin.id)] == "admin"
    steward = client.get(f"{API}/me", headers=world.headers(world.steward_a)).json()
    assert (steward["can_review"], steward["view_pii"]) == (False, False)
    # a steward is told the names of the office and their own, not those of other stewards
    assert {p["id"] for p in steward["people"]} == {str(u.id) for u in (world.steward_a, world.supervisor, world.admin)}
    assert_error(client.get(f"{API}/me"), 401, "not_authenticated")


# --- queue --------------------------------------------------------------------------------------------------


def test_the_queue_puts_pending_review_first_and_filters(client: TestClient, session: Session, world: World) -> None:
    now = utcnow()
    approved = make_transcript(session, world.steward_a, "暖气不热，", "请派人看看。", status=TranscriptState.approved,
                               categories=("not_warm",), household_id=world.household_a.id, recorded_at=now)
    pending_old = make_transcript(session, world.steward_a, "三号楼暖气漏水了，", "请尽快维修。", categories=("leak",),
                                  household_id=world.household_a.id, recorded_at=now - timedelta(days=2))
    pending_new = _call(session, world.supervisor, "13912345678", "关上进水阀再排气。", categories=("valve",),
                        household_id=world.household_b.id, recorded_at=now - timedelta(hours=1))
    failed = make_transcript(session, world.steward_b, status=TranscriptState.failed, household_id=world.household_b.id,
                             recorded_at=now - timedelta(minutes=5))
    h = world.headers(world.supervisor)

    def ids(**params: Any) -> list[str]:
        r = client.get(f"{API}/transcripts", params=params, headers=h)
        assert r.status_code == 200, r.text
        return [t["id"] for t in r.json()["data"]]

    page = client.get(f"{API}/transcripts", headers=h).json()
    # waiting for review first (newest first), then the rest (newest first)
    assert [t["id"] for t in page["data"]] == [str(x.id) for x in (pending_new, pending_old, approved, failed)]
    assert (page["count"], page["pending"]) == (4, 2)
    assert page["data"][0]["caller_phone"] == "13912345678"  # supervisors have view_pii
    assert ids(status="approved") == [str(approved.id)]
    assert ids(category="leak") == [str(pending_old.id)]
    assert ids(steward_id=str(world.steward_b.id)) == [str(failed.id)]
    assert ids(q="漏水") == [str(pending_old.id)]  # two characters: substring scan
    assert ids(q="进水阀") == [str(pending_new.id)]  # three or more: the trigram index
    today = now.astimezone(ZoneInfo("Asia/Shanghai")).date()  # the API's dates are local days
    assert set(ids(date_from=str(today - timedelta(days=1)))) == {str(pending_new.id), str(approved.id), str(failed.id)}
    assert ids(date_to=str(today - timedelta(days=3))) == []
    assert ids(limit=1, offset=1) == [str(pending_old.id)]
    assert ids(q="不存在的词") == []
    assert_error(client.get(f"{API}/transcripts", params={"status": "done"}, headers=h), 422, "validation_error")
    assert_error(client.get(f"{API}/transcripts", params={"q": "漏" * 201}, headers=h), 422, "invalid_query")
    # the API's filters, not a copy of them (these were a 500, a wildcard, and no hit for the office)
    assert len(ids(date_to="9999-12-31")) == 4 and len(ids(date_from="0001-01-01")) == 4
    for category in ("%", "l__k", "LEAK"):  # a category name, not a pattern (and the same on both databases)
        assert_error(client.get(f"{API}/transcripts", params={"category": category}, headers=h), 422,
                     "invalid_category")

    # a steward sees their grid's recordings, numbers masked
    steward = client.get(f"{API}/transcripts", headers=world.headers(world.steward_b)).json()
    assert [t["id"] for t in steward["data"]] == [str(pending_new.id), str(failed.id)]
    assert steward["data"][0]["caller_phone"] == "139****5678" and steward["data"][0]["redacted"] is True


def test_the_queue_finds_a_number_for_the_office_and_not_by_its_hidden_digits_for_a_steward(
        client: TestClient, session: Session, world: World) -> None:
    said = make_transcript(session, world.steward_a, "请回电13912345678。", household_id=world.household_a.id)

    def found(user: User, q: str) -> list[str]:
        r = client.get(f"{API}/transcripts", params={"q": q}, headers=world.headers(user))
        assert r.status_code == 200, r.text
        return [t["id"] for t in r.json()["data"]]

    assert found(world.supervisor, "13912345678") == [str(said.id)]  # the office reads numbers whole
    assert found(world.steward_a, "请回电") == [str(said.id)]
    assert found(world.steward_a, "回电1391") == []  # masked for the steward: hidden digits find nothing
    assert found(world.steward_a, "回电139") == [str(said.id)]  # what they can read, they can find


def test_quality_flags_low_confidence_segments(client: TestClient, session: Session, world: World,
                                               settings: Settings) -> None:
    transcript = make_transcript(session, world.steward_a, "一", "二", "三", "四", household_id=world.household_a.id)
    figures = [(-0.2, 0.01), (settings.console_low_logprob - 0.1, 0.01),
               (-0.2, settings.console_high_no_speech + 0.1)]
    segments = transcript.segments
    transcript.segments = [s | {"avg_logprob": lp, "no_speech_prob": ns}
                           for s, (lp, ns) in zip(segments[:3], figures, strict=True)] + [segments[3]]
    session.add(transcript)
    session.commit()
    r = client.get(f"{API}/transcripts/{transcript.id}/quality", headers=world.headers(world.supervisor))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["low"] for s in body["segments"]] == [False, True, True, False]
    assert body["segments"][3]["avg_logprob"] is None  # no figures (an old row): never flagged
    assert body["low_logprob"] == settings.console_low_logprob
    assert client.get(f"{API}/transcripts/{transcript.id}/quality",
                      headers=world.headers(world.steward_a)).status_code == 200
    assert_error(client.get(f"{API}/transcripts/{transcript.id}/quality", headers=world.headers(world.steward_b)),
                 404, "not_found")
    assert_error(client.get(f"{API}/transcripts/{uuid.uuid4()}/quality", headers=world.headers(world.supervisor)),
                 404, "not_found")


def test_revisions_are_masked_without_view_pii(client: TestClient, session: Session, world: World) -> None:
    transcript = make_transcript(session, world.steward_a, "回电号码一三九。", household_id=world.household_a.id)
    h = world.headers(world.supervisor)
    r = client.patch(f"/api/v1/transcripts/{transcript.id}",
                     json={"segments": [{"index": 0, "text": "回电13912345678。"}]}, headers=h)
    assert r.status_code == 200, r.text
    office = client.get(f"/api/v1/transcripts/{transcript.id}/revisions", headers=h).json()
    assert office[0]["changes"][0]["after"] == "回电13912345678。"
    steward = client.get(f"/api/v1/transcripts/{transcript.id}/revisions",
                         headers=world.headers(world.steward_a)).json()
    assert steward[0]["changes"][0] == {"index": 0, "before": "回电号码一三九。", "after": "回电139****5678。"}


# --- timeline -----------------------------------------------------------------------------------------------


def test_the_timeline_gathers_every_domain_in_time_order(client: TestClient, session: Session, world: World) -> None:
    now = utcnow()
    h = world.headers(world.supervisor)
    r = client.post("/api/v1/work-orders", json={"household_id": str(world.household_a.id), "category": "not_warm",
                                                  "caller_phone": "13912345678", "description": "来电：暖气不热"},
                    headers=h)
    assert r.status_code == 201, r.text
    order = session.get(WorkOrder, uuid.UUID(r.json()["id"]))
    assert order is not None
    assert client.post(f"/api/v1/work-orders/{order.id}/assign", json={"assignee_id": str(world.steward_a.id)},
                       headers=h).status_code == 200
    r = client.post(f"/api/v1/work-orders/{order.id}/transitions", json={"status": "in_progress"},
                    headers=world.headers(world.steward_a))
    assert r.status_code == 200, r.text
    visit = make_visit(session, world.household_a, world.steward_a, work_order_id=order.id, indoor_temp_c=16.5,
                       arrived_at=now + timedelta(minutes=10), actions="排气后仍不热")
    make_reading(session, world.household_a, world.steward_a, taken_at=now + timedelta(minutes=11), temp_c=16.5,
                 visit_id=visit.id)
    make_reading(session, world.household_a, world.steward_a, taken_at=now + timedelta(hours=5), temp_c=19.0)
    make_reading(session, world.household_a, world.steward_a, taken_at=now - timedelta(days=10), temp_c=12.0)
    call = _call(session, world.supervisor, "13912345678", "暖气不热，", "回电13800138000。",
                 household_id=world.household_a.id, work_order_id=order.id, recorded_at=now - timedelta(minutes=30))
    note = make_transcript(session, world.steward_a, "阀门已经打开。", household_id=world.household_a.id,
                           work_order_id=order.id, recorded_at=now + timedelta(minutes=20))
    room = VideoRoom(work_order_id=order.id, created_by_id=world.steward_a.id, worker="w1",
                     created_at=now + timedelta(minutes=30), expires_at=now + timedelta(minutes=90),
                     state=RoomState.closed, closed_at=now + timedelta(minutes=40))
    session.add(room)
    session.flush()
    shot = VideoSnapshot(room_id=room.id, work_order_id=order.id, sha256="a" * 64, width=640, height=480,
                         size_bytes=1234, taken_by_id=world.steward_a.id, taken_at=now + timedelta(minutes=35))
    session.add(shot)
    other = make_work_order(session, world.household_a)
    make_transcript(session, world.steward_a, "别的工单。", household_id=world.household_a.id, work_order_id=other.id)
    session.commit()

    r = client.get(f"{API}/work-orders/{order.id}/timeline", headers=h)
    assert r.status_code == 200, r.text
    tl = r.json()
    kinds = [i["kind"] for i in tl["items"]]
    assert kinds == ["call", "created", "assigned", "status", "visit", "note", "video"], kinds
    ats = [i["at"] for i in tl["items"]]
    assert ats == sorted(ats)
    by_kind = {i["kind"]: i for i in tl["items"]}
    assert by_kind["status"]["data"]["to_status"] == "in_progress"
    assert by_kind["visit"]["data"]["indoor_temp_c"] == 16.5 and by_kind["visit"]["actor_id"] == str(world.steward_a.id)
    assert by_kind["call"]["data"]["transcript_id"] == str(call.id)
    assert by_kind["call"]["data"]["caller_phone"] == "13912345678"
    assert by_kind["call"]["data"]["text"] == "暖气不热，回电13800138000。"
    assert by_kind["note"]["data"]["transcript_id"] == str(note.id)
    assert [s["id"] for s in by_kind["video"]["data"]["snapshots"]] == [str(shot.id)]
    assert [p["temp_c"] for p in tl["readings"]] == [16.5, 19.0]  # the one 10 days before is out of the window
    assert tl["work_order"]["caller_phone"] == "13912345678" and tl["household"]["phone"] == "13800000001"
    assert tl["household"]["community"] == world.building_a.community
    from api.network.models import address_text  # written once by the server: 3号楼 is not 3号楼号楼

    assert tl["household"]["address"] == address_text(world.building_a, world.household_a)
    assert tl["household"]["address"].startswith(world.building_a.community)

    masked = client.get(f"{API}/work-orders/{order.id}/timeline", headers=world.headers(world.steward_a)).json()
    masked_call = next(i for i in masked["items"] if i["kind"] == "call")
    assert masked_call["data"]["caller_phone"] == "139****5678" and masked_call["data"]["redacted"] is True
    assert masked_call["data"]["text"] == "暖气不热，回电138****8000。"
    assert masked["work_order"]["caller_phone"] == "139****5678" and masked["household"]["phone"] == "138****0001"
    assert_error(client.get(f"{API}/work-orders/{order.id}/timeline", headers=world.headers(world.steward_b)),
                 404, "not_found")
    assert_error(client.get(f"{API}/work-orders/not-a-uuid/timeline", headers=h), 422, "validation_error")


def test_the_timeline_masks_a_local_household_number_for_a_steward(client: TestClient, session: Session,
                                                                    world: World) -> None:
    """Regression: a household's number without a mobile's or an area code's shape (`88886666`) reached a
    steward whole: the field went through the text masking, not the masking of one number by its shape."""
    world.household_a.phone = "88886666"
    session.add(world.household_a)
    session.commit()
    order = make_work_order(session, world.household_a)
    url = f"{API}/work-orders/{order.id}/timeline"
    assert client.get(url, headers=world.headers(world.steward_a)).json()["household"]["phone"] == "****6666"
    assert client.get(url, headers=world.headers(world.supervisor)).json()["household"]["phone"] == "88886666"


def test_the_timeline_of_a_covered_order_keeps_the_household_outside_the_grid(client: TestClient, session: Session,
                                                                             world: World) -> None:
    """Regression: the timeline read the household without scope, so a steward covering an order outside the
    grid read its resident's name, address and phone there, while GET /households/{id} answered 404 and sync
    sent no household."""
    covering = make_work_order(session, world.household_b, status=Status.assigned, assignee=world.steward_a)
    h = world.headers(world.steward_a)
    assert client.get(f"/api/v1/households/{world.household_b.id}", headers=h).status_code == 404
    r = client.get(f"{API}/work-orders/{covering.id}/timeline", headers=h)
    assert r.status_code == 200, r.text
    assert "李桂兰" not in r.text and r.json()["household"]["id"] is None
    assert r.json()["work_order"]["id"] == str(covering.id)
    office = client.get(f"{API}/work-orders/{covering.id}/timeline", headers=world.headers(world.supervisor))
    assert office.json()["household"]["resident_name"] == "李桂兰"


def test_the_chart_of_a_finished_order_ends_a_day_after_it_ended(client: TestClient, session: Session,
                                                                 world: World) -> None:
    """Regression (review): the chart ran until a day after `closed_at`, which only a close sets: a resolved
    order (the office may never close it) or a cancelled one charted every reading until today, and the cap
    of points, oldest first, could leave out the days after the order."""
    now = utcnow()
    make_reading(session, world.household_a, taken_at=now - timedelta(days=60, hours=1))  # around the orders
    make_reading(session, world.household_a, taken_at=now - timedelta(days=1))  # two months later
    resolved = make_work_order(session, world.household_a, status=Status.resolved, created_at=now - timedelta(days=61),
                               resolved_at=now - timedelta(days=60, hours=12), sla_due_at=now - timedelta(days=60))
    cancelled = make_work_order(session, world.household_a, status=Status.cancelled,
                                created_at=now - timedelta(days=60), sla_due_at=now - timedelta(days=59))
    session.add(WorkOrderEvent(work_order_id=cancelled.id, kind="status", from_status=Status.new,
                               to_status=Status.cancelled, at=now - timedelta(days=59, hours=20)))
    # an older row with no status line: when it last changed
    unlogged = make_work_order(session, world.household_a, status=Status.cancelled,
                               created_at=now - timedelta(days=60), updated_at=now - timedelta(days=59),
                               sla_due_at=now - timedelta(days=59))
    session.commit()
    h = world.headers(world.supervisor)
    for order in (resolved, cancelled, unlogged):
        tl = client.get(f"{API}/work-orders/{order.id}/timeline", headers=h).json()
        assert len(tl["readings"]) == 1, order.status  # the one two months later is out of the chart


def test_an_open_orders_chart_past_its_cap_keeps_the_newest_readings(client: TestClient, session: Session,
                                                                     world: World, monkeypatch: Any) -> None:
    """Regression (review): past the cap of points the chart kept the oldest readings of the window, so an open
    order's chart stopped at the day it filled up and never showed today's temperature."""
    monkeypatch.setattr(console_service, "READINGS_MAX", 3)
    now = utcnow()
    order = make_work_order(session, world.household_a, status=Status.in_progress, assignee=world.steward_a,
                            created_at=now - timedelta(days=2))
    for hours in (60, 40, 30, 20, 2):
        make_reading(session, world.household_a, taken_at=now - timedelta(hours=hours), temp_c=float(hours))
    tl = client.get(f"{API}/work-orders/{order.id}/timeline", headers=world.headers(world.supervisor)).json()
    assert [p["temp_c"] for p in tl["readings"]] == [30.0, 20.0, 2.0]  # the newest three, charted oldest first


# --- dashboard ----------------------------------------------------------------------------------------------


def test_the_dashboard_counts_open_work_breaches_queue_and_rooms(client: TestClient, session: Session,
                                                                 world: World) -> None:
    now = utcnow()
    make_work_order(session, world.household_a, category=Category.leak, sla_due_at=now - timedelta(hours=1))
    make_work_order(session, world.household_b, category=Category.not_warm, status=Status.assigned,
                    assignee=world.steward_b, source=Source.proactive)
    make_work_order(session, world.household_b, category=Category.not_warm, status=Status.in_progress,
                    assignee=world.steward_b)
    make_work_order(session, world.household_a, category=Category.leak, status=Status.closed,
                    sla_due_at=now - timedelta(days=2))  # closed: neither open nor breached
    live = make_work_order(session, world.household_a, status=Status.in_progress, assignee=world.steward_a)
    session.add(VideoRoom(work_order_id=live.id, worker="w1", expires_at=now + timedelta(minutes=30)))
    session.add(VideoRoom(work_order_id=live.id, worker="w1", expires_at=now, state=RoomState.closed))
    make_transcript(session, world.steward_a, "待审核。")
    make_transcript(session, world.steward_a, "已审核。", status=TranscriptState.approved)
    old = make_transcript(session, world.steward_a, "昨天的。", status=TranscriptState.transcribed)
    old.transcribed_at = now - timedelta(hours=3)
    session.add(old)
    make_transcript(session, world.steward_a, status=TranscriptState.queued)
    session.commit()

    r = client.get(f"{API}/dashboard", headers=world.headers(world.supervisor))
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["open_total"] == 4
    assert {c["key"]: c["count"] for c in d["open_by_category"]} == {"not_warm": 3, "leak": 1}
    assert d["open_by_station"] == [{"key": str(world.station.id), "label": world.station.name, "count": 4}]
    assert {c["key"]: c["count"] for c in d["open_by_source"]} == {"hotline": 3, "proactive": 1}
    assert d["proactive_open"] == 1
    assert d["sla_breached"] == 1 and d["breaches"][0]["category"] == "leak"
    assert d["breaches"][0]["station"] == world.station.name
    assert {c["key"]: c["count"] for c in d["transcripts_by_status"]} == {"transcribed": 2, "approved": 1, "queued": 1}
    assert d["pending_review"] == 2
    # make_transcript stamps transcribed_at now (the queued one too); one was moved three hours back
    assert (d["transcribed_last_hour"], d["transcribed_last_day"]) == (3, 4)
    assert d["approved_last_day"] == 0  # make_transcript does not stamp approved_at
    assert [room["work_order_id"] for room in d["active_rooms"]] == [str(live.id)]
    assert_error(client.get(f"{API}/dashboard", headers=world.headers(world.steward_a)), 403, "role_required")


def test_the_dashboards_figures_are_of_one_moment_under_a_concurrent_write(
        engine: Any, session: Session, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): each figure was its own statement, each seeing what was committed before it ran: an
    order created by another request meanwhile was in the counts by category and not in the total. The
    dashboard reads one snapshot."""
    make_work_order(session, world.household_a, category=Category.leak)
    real, done = console_service._counts, []

    def counts_after_a_concurrent_create(s: Session, column: Any, where: Any) -> Any:
        if not done:  # another request commits an open order between two of the dashboard's statements
            done.append(1)
            with Session(engine) as other:
                make_work_order(other, world.household_b, category=Category.not_warm)
        return real(s, column, where)

    monkeypatch.setattr(console_service, "_counts", counts_after_a_concurrent_create)
    with Session(engine) as s:
        figures = console_service.dashboard(session=s, user=s.get(User, world.supervisor.id))
    assert done
    assert figures.open_total == sum(c.count for c in figures.open_by_category) == 1
    assert sum(c.count for c in figures.open_by_station) == sum(c.count for c in figures.open_by_source) == 1
    with Session(engine) as s:  # the next poll sees it
        assert console_service.dashboard(session=s, user=s.get(User, world.supervisor.id)).open_total == 2


def test_the_dashboard_lists_live_calls_newest_first_and_no_abandoned_room(client: TestClient, session: Session,
                                                                          world: World) -> None:
    """Regression (review): the dashboard listed every room `open` in the database, oldest first, 20 at most.
    A room whose relay died stays `open` until a request about it closes it, so twenty of them, days old,
    filled the list and the call in progress was not shown."""
    now = utcnow()
    for i in range(20):  # their relay died three days ago; nobody asked about them since
        order = make_work_order(session, world.household_a)
        session.add(VideoRoom(work_order_id=order.id, worker="gone:8000", created_at=now - timedelta(days=3, minutes=i),
                              expires_at=now - timedelta(days=3) + timedelta(minutes=30)))
    rooms = []
    for minutes in (30, 2):  # the older one ended a minute ago: within the grace its relay has to close it
        order = make_work_order(session, world.household_b)
        rooms.append(VideoRoom(work_order_id=order.id, worker="here:8000", created_at=now - timedelta(minutes=minutes),
                               expires_at=now - timedelta(minutes=minutes - 29)))
    session.add_all(rooms)
    session.commit()
    d = client.get(f"{API}/dashboard", headers=world.headers(world.supervisor)).json()
    assert [r["id"] for r in d["active_rooms"]] == [str(rooms[1].id), str(rooms[0].id)]


def test_the_timeline_closes_a_call_its_relay_abandoned(client: TestClient, session: Session, world: World) -> None:
    """Regression (review): a video call whose relay died days ago showed on the timeline as `open` (in
    progress), as the database still had it; it is closed as `lost`, as any request about the room does."""
    now = utcnow()
    order = make_work_order(session, world.household_a)
    room = VideoRoom(work_order_id=order.id, worker="gone:8000", created_at=now - timedelta(days=3),
                     expires_at=now - timedelta(days=3) + timedelta(minutes=30))
    session.add(room)
    session.commit()
    tl = client.get(f"{API}/work-orders/{order.id}/timeline", headers=world.headers(world.supervisor)).json()
    [item] = [i for i in tl["items"] if i["kind"] == "video"]
    assert (item["data"]["state"], item["data"]["close_reason"]) == ("closed", "lost")
    assert item["data"]["closed_at"] is not None
    session.refresh(room)
    assert room.state == RoomState.closed


# --- conflicts ----------------------------------------------------------------------------------------------


@pytest.fixture
def conflicts(session: Session, world: World) -> list[SyncConflict]:
    now = utcnow()
    rows = [SyncConflict(created_at=now - timedelta(minutes=i), user_id=world.steward_a.id, client_id=uuid.uuid4(),
                         mutation_id=i + 1, table_name="work_orders", row_id=uuid.uuid4(), field="status",
                         kind="field", server_value="in_progress", device_value="waiting_resident",
                         winner="device" if i % 2 == 0 else "server") for i in range(3)]
    session.add_all(rows)
    session.commit()
    return rows


def test_conflicts_get_a_reviewed_mark_and_filter_on_it(client: TestClient, world: World,
                                                        conflicts: list[SyncConflict]) -> None:
    h = world.headers(world.supervisor)

    def listed(**params: Any) -> list[str]:
        r = client.get("/api/v1/sync/conflicts", params=params, headers=h)
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()["data"]]

    first = str(conflicts[0].id)
    assert listed(reviewed="false") == [str(c.id) for c in conflicts]
    r = client.post(f"/api/v1/sync/conflicts/{first}/review", json={"reviewed": True}, headers=h)
    assert r.status_code == 200, r.text
    marked = r.json()
    assert marked["reviewed_by_id"] == str(world.supervisor.id) and marked["reviewed_at"]
    assert (marked["server_value"], marked["device_value"], marked["winner"]) == ("in_progress", "waiting_resident",
                                                                                  "device")
    again = client.post(f"/api/v1/sync/conflicts/{first}/review", json={}, headers=world.headers(world.admin)).json()
    assert (again["reviewed_at"], again["reviewed_by_id"]) == (marked["reviewed_at"], marked["reviewed_by_id"])
    assert listed(reviewed="true") == [first]
    assert listed(reviewed="false") == [str(c.id) for c in conflicts[1:]]
    assert listed(winner="server") == [str(conflicts[1].id)]
    assert listed(kind="delete_wins") == []
    cleared = client.post(f"/api/v1/sync/conflicts/{first}/review", json={"reviewed": False}, headers=h).json()
    assert cleared["reviewed_at"] is None and cleared["reviewed_by_id"] is None
    assert listed(reviewed="true") == []

    assert_error(client.post(f"/api/v1/sync/conflicts/{first}/review", json={"reviewed": True},
                             headers=world.headers(world.steward_a)), 403, "role_required")
    assert_error(client.post(f"/api/v1/sync/conflicts/{uuid.uuid4()}/review", json={"reviewed": True}, headers=h),
                 404, "not_found")
    assert_error(client.post(f"/api/v1/sync/conflicts/{first}/review", json={"reviewed": "maybe"}, headers=h),
                 422, "validation_error")
    # Regression (review): a lax bool read "no", "off" and 0 as false, clearing a supervisor's mark.
    client.post(f"/api/v1/sync/conflicts/{first}/review", json={"reviewed": True}, headers=h)
    for lax in (0, 1, "yes", "no", "false", "off"):
        assert_error(client.post(f"/api/v1/sync/conflicts/{first}/review", json={"reviewed": lax}, headers=h),
                     422, "validation_error")
    assert listed(reviewed="true") == [first]
    assert_error(client.get("/api/v1/sync/conflicts", params={"winner": "nobody"}, headers=h), 422,
                 "validation_error")


def test_the_dashboard_shows_the_proactive_service(client: TestClient, session: Session, world: World,
                                                    settings: Settings) -> None:
    """未诉先办 on the dashboard: a riser and a building cluster and a sensitive-household revisit opened by
    the proactive service itself, its SLA figures and a sent campaign, as the proactive API counts them."""
    now = utcnow()
    riser = [make_household(session, world.building_a, unit="2", room=f"20{i}") for i in range(1, 4)]
    complaints = [make_work_order(session, riser[0], category=Category.not_warm),
                  make_work_order(session, riser[0], category=Category.air_lock),  # the same home again
                  make_work_order(session, riser[1], category=Category.not_warm),
                  make_work_order(session, riser[2], category=Category.leak)]
    # two more homes of the building complain: five households, the building's threshold
    wider = [make_work_order(session, world.household_a, category=Category.noise),
             make_work_order(session, make_household(session, world.building_a, unit="4"), category=Category.not_warm)]
    sensitive = make_household(session, world.building_b, unit="3", room="302", sensitive=True)
    make_calendar(session, world.station)  # in season: sensitive households are due a revisit
    make_work_order(session, world.household_a, category=Category.billing,  # not a complaint
                    sla_due_at=now + timedelta(hours=1))  # due soon
    make_work_order(session, world.household_b, category=Category.billing, sla_due_at=now - timedelta(hours=1))  # late
    make_work_order(session, world.household_b, category=Category.billing, status=Status.resolved,
                    resolved_at=now - timedelta(hours=1), sla_due_at=now - timedelta(hours=3))  # resolved late
    report = proactive.run(session=session, settings=settings, sender=LoggingSender())
    assert (report.clusters_opened, report.revisits_opened) == (2, 1)
    cluster = session.exec(select(ProactiveOrder).where(ProactiveOrder.kind == ProactiveKind.riser)).one()
    building = session.exec(select(ProactiveOrder).where(ProactiveOrder.kind == ProactiveKind.building)).one()
    revisit = session.exec(select(ProactiveOrder).where(ProactiveOrder.kind == ProactiveKind.revisit)).one()
    assert revisit.household_id == sensitive.id
    campaign = create_campaign(client, world)
    h = world.headers(world.supervisor)
    assert client.post(f"/api/v1/proactive/campaigns/{campaign['id']}/send", headers=h).status_code == 200

    r = client.get(f"{API}/dashboard", headers=h)
    assert r.status_code == 200, r.text
    d = r.json()
    panel = d["proactive"]
    wide, line = panel["clusters"]  # the widest group first
    assert (wide["id"], wide["work_order_id"]) == (str(building.id), str(building.work_order_id))
    assert (wide["kind"], wide["place"]) == ("building", f"燕子山小区{world.building_a.number}号楼")
    assert wide["members"] == len(complaints) + len(wider)
    assert line["id"] == str(cluster.id) and line["work_order_id"] == str(cluster.work_order_id)
    assert (line["kind"], line["priority"], line["status"]) == ("riser", "urgent", "assigned")  # a leak among them
    assert line["place"] == f"燕子山小区{world.building_a.number}号楼2单元立管"
    assert line["station"] == world.station.name
    assert line["members"] == len(complaints) == line["signal_count"]
    [visit] = panel["revisits"]
    assert (visit["id"], visit["work_order_id"]) == (str(revisit.id), str(revisit.work_order_id))
    assert visit["place"] == f"文化东路小区{world.building_b.number}号楼3单元302室" and visit["members"] == 0
    assert d["proactive_open"] == 3

    # the summary is the proactive service's own, for this user; the SLA figures agree with the orders
    summary = panel["summary"]
    api_summary = client.get("/api/v1/proactive/summary", headers=h).json()
    assert {k: v for k, v in summary.items() if k != "generated_at"} == \
        {k: v for k, v in api_summary.items() if k != "generated_at"}
    assert summary["clusters_open"] == {"riser": 1, "building": 1, "station": 0} and summary["revisits_open"] == 1
    session.expire_all()
    orders = session.exec(select(WorkOrder)).all()
    is_open = [o for o in orders if o.status in OPEN_STATUSES]
    now = datetime.fromisoformat(summary["generated_at"])
    assert summary["sla_open_overdue"] == sum(o.sla_due_at < now for o in is_open) == d["sla_breached"] == 1
    assert summary["sla_due_within_2h"] == sum(now <= o.sla_due_at < now + timedelta(hours=2) for o in is_open) >= 2
    assert summary["sla_resolved_late"] == 1
    sent = client.get(f"/api/v1/proactive/campaigns/{campaign['id']}", headers=h).json()
    assert summary["campaigns"] == {"draft": 0, "sending": 0, "completed": 1}
    assert summary["deliveries"] == {"queued": 0, "sent": sent["sent_count"], "failed": sent["failed_count"],
                                     "skipped": sent["skipped_count"]}
    assert sent["sent_count"] == 7  # every household of the station: the world's two and the five added here

    # a closed cluster order leaves the panel once the service releases its group
    order = session.get(WorkOrder, cluster.work_order_id)
    assert order is not None
    order.status = Status.closed
    session.add(order)
    session.commit()
    assert proactive.run(session=session, settings=settings, sender=LoggingSender()).closed == 1
    panel = client.get(f"{API}/dashboard", headers=h).json()["proactive"]
    assert [c["id"] for c in panel["clusters"]] == [str(building.id)]
    assert [v["id"] for v in panel["revisits"]] == [str(revisit.id)]
    assert panel["summary"]["clusters_open"] == {"riser": 0, "building": 1, "station": 0}


def test_the_dashboard_names_a_revisit_as_its_order_does(client: TestClient, session: Session, world: World,
                                                        settings: Settings) -> None:
    """Regression: a building typed "3号楼" and a unit "2单元" read "3号楼号楼2单元单元501室室" on the dashboard's
    panel (the orders' own texts had been fixed)."""
    from tests.utils.factories import make_building

    make_calendar(session, world.station)
    building = make_building(session, world.station, community="燕子山小区", number="3号楼")
    make_household(session, building, unit="2单元", room="501室", sensitive=True)
    session.commit()
    proactive.run(session=session, settings=settings, sender=LoggingSender())
    panel = client.get(f"{API}/dashboard", headers=world.headers(world.supervisor)).json()["proactive"]
    assert "燕子山小区3号楼2单元501室" in [line["place"] for line in panel["revisits"]], panel["revisits"]


def test_the_timeline_of_a_proactive_order_starts_with_its_creation(client: TestClient, session: Session,
                                                                     world: World) -> None:
    """Regression: `created` and `assigned` of a proactive order share an instant, and the timeline sorted
    them by (time, kind): assigned came first."""
    for i in range(1, 4):
        make_work_order(session, make_household(session, world.building_a, unit="2", room=f"20{i}"),
                        category=Category.not_warm)
    assert client.post("/api/v1/proactive/run", headers=world.headers(world.supervisor)).json()["clusters_opened"] == 1
    session.expire_all()
    order = session.exec(select(WorkOrder).where(WorkOrder.source == Source.proactive)).one()
    timeline = client.get(f"{API}/work-orders/{order.id}/timeline", headers=world.headers(world.supervisor)).json()
    assert [i["kind"] for i in timeline["items"]][:2] == ["created", "assigned"]
