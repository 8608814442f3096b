"""The console in a real browser: Debian's Chromium driven by Playwright (sync API) against the real app
served by uvicorn, on a demo district with a hotline call transcribed by the real Whisper pipeline.

A supervisor signs in, searches a word, opens the transcript, clicks a segment (the audio element seeks
and plays), corrects a word, approves, sees it leave the pending queue, follows the work order's timeline,
reads the live dashboard (with the proactive order the case's complaints opened) and marks a sync conflict
reviewed; a steward sees the caller's number masked.
Screenshots go to tests/artifacts/console/ (ignored by git)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from api.app import create_app
from api.db import utcnow
from api.demo import generate
from api.network.models import Household
from api.notices.sms import LoggingSender
from api.settings import Settings
from api.users.models import GridBuilding, User
from speech.audio import SAMPLE_RATE, decode_audio
from sync.models import SyncConflict
from tests.speech.conftest import FIXTURES, write_wav
from tests.speech.service_helpers import bundled_model_dir, clear_procrastinate, post_call, wait_until_done
from tests.utils.browser import CHROMIUM, CHROMIUM_ARGS, free_port, require_chromium, serve_in_thread
from tests.utils.factories import make_reading, make_visit
from video.blobs import put_blob
from video.models import CloseReason, RoomState, VideoRoom, VideoSnapshot
from video.snapshot import encode_jpeg

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "console"
PASSWORD = "steward-demo"
CALLER = "13912345678"
MISHEARD = [("落水", "漏水"), ("放弃", "放气"), ("紧快", "尽快"), ("501式", "501室")]

require_chromium()

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def call_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 33 s hotline call made of the two speech fixtures, twice: long enough for Whisper to cut it into
    several segments, so that a click on a later one has somewhere to seek to."""
    leak, valve = decode_audio(FIXTURES / "leak_report.wav"), decode_audio(FIXTURES / "valve_bleeding.wav")
    gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
    return write_wav(tmp_path_factory.mktemp("call") / "call.wav", np.concatenate([leak, gap, valve, gap, leak, gap,
                                                                                   valve]))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return bundled_model_dir(tmp_path_factory.mktemp("console-speech"))


@pytest.fixture
def console_settings(settings: Settings, model_dir: str, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"whisper_model": model_dir, "blob_dir": tmp_path / "blobs",
                                       "console_refresh_s": 1, "speech_retry_backoff_s": 0.2})


@pytest.fixture
def server(console_settings: Settings, engine: Engine) -> Iterator[str]:
    """A demo district, then the app served by uvicorn on a free port in a thread."""
    clear_procrastinate(engine)
    generate(engine, households=300, stewards=2, password=PASSWORD, seed=7)
    port = free_port()
    app = create_app(console_settings.model_copy(update={"port": port}), engine=engine, sms_sender=LoggingSender())
    with serve_in_thread(app, port, name="uvicorn-console") as url:
        yield url


def login(http: httpx.Client, username: str) -> dict[str, str]:
    r = http.post("/api/v1/auth/token", data={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
def case(server: str, engine: Engine, console_settings: Settings, call_wav: Path) -> Iterator[dict[str, Any]]:
    """A not-warm work order in steward01's grid with a transcribed hotline call, a visit, readings and a
    sync conflict on it."""
    with httpx.Client(base_url=server, timeout=30) as http, Session(engine, expire_on_commit=False) as session:
        office = login(http, "supervisor")
        steward = session.exec(select(User).where(User.username == "steward01")).one()
        household = session.exec(select(Household).where(col(Household.building_id).in_(
            select(GridBuilding.building_id).where(GridBuilding.user_id == steward.id)))
            .order_by(col(Household.id))).first()
        assert household is not None
        r = http.post("/api/v1/work-orders", headers=office, json={
            "household_id": str(household.id), "category": "leak", "caller_phone": CALLER,
            "description": "居民来电：暖气漏水", "assignee_id": str(steward.id)})
        assert r.status_code == 201, r.text
        order_id = r.json()["id"]
        r = post_call(http, office, call_wav.read_bytes(), caller_phone=CALLER, household_id=str(household.id),  # type: ignore[arg-type]
                      work_order_id=order_id)
        assert r.status_code == 202, r.text
        transcript_id = r.json()["id"]
        now = utcnow()
        visit = make_visit(session, household, steward, work_order_id=uuid.UUID(order_id), indoor_temp_c=16.5,
                           arrived_at=now + timedelta(minutes=5), actions="更换了漏水的阀门")
        for hours, temp in ((0.1, 16.5), (3, 18.5), (6, 20.0)):
            make_reading(session, household, steward, taken_at=now + timedelta(hours=hours), temp_c=temp,
                         visit_id=visit.id if hours < 1 else None)
        # a video call on the order with one snapshot of the resident's radiator (a real JPEG in the blob store)
        room = VideoRoom(work_order_id=uuid.UUID(order_id), created_by_id=steward.id, worker="w1",
                         created_at=now + timedelta(minutes=2), expires_at=now + timedelta(minutes=60),
                         state=RoomState.closed, closed_at=now + timedelta(minutes=4), close_reason=CloseReason.closed)
        session.add(room)
        session.flush()
        picture = np.zeros((240, 320, 3), dtype=np.uint8)
        picture[:, :, 0] = np.linspace(40, 220, 320, dtype=np.uint8)  # a red gradient, like a warm radiator
        jpeg = encode_jpeg(av.VideoFrame.from_ndarray(picture, format="rgb24"))
        session.add(VideoSnapshot(room_id=room.id, work_order_id=room.work_order_id,
                                  sha256=put_blob(console_settings, jpeg), width=320, height=240,
                                  size_bytes=len(jpeg), taken_by_id=steward.id, taken_at=now + timedelta(minutes=3)))
        conflict = SyncConflict(user_id=steward.id, client_id=uuid.uuid4(), mutation_id=7, table_name="work_orders",
                                row_id=uuid.UUID(order_id), field="status", kind="field",
                                server_value="assigned", device_value="in_progress", winner="device")
        session.add(conflict)
        session.commit()
        # two neighbours on the same unit riser complain too: three households, so the proactive service
        # opens one riser order (未诉先办) that the dashboard lists
        neighbours = session.exec(select(Household).where(
            Household.building_id == household.building_id, Household.unit == household.unit,
            Household.id != household.id).order_by(col(Household.id)).limit(2)).all()
        assert len(neighbours) == 2
        complaints = [order_id]
        for neighbour, category in zip(neighbours, ("not_warm", "air_lock"), strict=True):
            r = http.post("/api/v1/work-orders", headers=office, json={
                "household_id": str(neighbour.id), "category": category, "description": "居民来电：暖气不热"})
            assert r.status_code == 201, r.text
            complaints.append(r.json()["id"])
        r = http.post("/api/v1/proactive/run", headers=office)
        # the demo's recent complaints may make the building or the station a cluster too
        assert r.status_code == 200 and r.json()["clusters_opened"] >= 1, r.text
        opened = http.get("/api/v1/proactive/orders", params={"open": True}, headers=office).json()["data"]
        [proactive] = [p for p in opened if p["kind"] == "riser" and set(complaints) <= set(p["member_work_order_ids"])]
        wait_until_done(engine, console_settings, [uuid.UUID(transcript_id)], timeout=240)
        detail = http.get(f"/api/v1/transcripts/{transcript_id}", headers=office).json()
        assert detail["status"] == "transcribed", detail
        yield {"http": http, "office": office, "order_id": order_id, "transcript_id": transcript_id,
               "conflict_id": str(conflict.id), "detail": detail, "proactive": proactive,
               "steward_name": steward.full_name or steward.username}


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5000
    return path


def sign_in(page: Any, server: str, username: str) -> None:
    page.goto(f"{server}/console")
    page.locator("#login input[name=username]").fill(username)
    page.locator("#login input[name=password]").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    page.locator("#nav").wait_for(state="visible")


def test_supervisor_reviews_a_call_and_a_steward_sees_numbers_masked(server: str, case: dict[str, Any],
                                                                      backend: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    http, office, tid = case["http"], case["office"], case["transcript_id"]
    segments = case["detail"]["segments"]
    assert len(segments) >= 2, segments  # the fixture is cut into several segments
    # A three-character word (the search goes through the trigram index): a glossary term the call says twice,
    # else three characters of what Whisper heard. What it hears depends on the CPU (CTranslate2's kernels
    # differ by instruction set), and on one CI machine a 30 s window came back as one garbled sentence (a
    # window decoded again by sampling): recognition is the speech tests' business (tests/speech), not the
    # console's.
    word = next((w for w in ("进水阀", "排气阀") if any(w in s["text"] for s in segments)), None)
    if word is None:
        word = next(m.group()[:3] for s in segments if (m := re.search(r"[\u4e00-\u9fff]{3,}", s["text"])))
    # what Whisper base typically mishears in this call, and the fix; else a word of the search
    fixes = [(wrong, right) for wrong, right in MISHEARD if any(wrong in s["text"] for s in segments)]
    wrong, right = fixes[0] if fixes else (word, f"{word}门")
    hit = next(s for s in segments if wrong in s["text"])
    later = segments[-1]
    assert later["start"] > 5
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN").new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            sign_in(page, server, "supervisor")
            expect(page.locator("#who")).to_contain_text("客服主管")

            # search a word: the hit is highlighted in the queue
            page.locator("#queue-filters input[name=q]").fill(word)
            page.get_by_role("button", name="搜索").click()
            row = page.locator(f'#queue-rows tr[data-id="{tid}"]')
            expect(row.locator("mark")).to_have_text(word)
            expect(page.locator("#queue-summary")).to_contain_text("待审核 1 条")
            shot(page, f"queue-{backend}")

            # open it: segments, low-confidence marks as the API says, audio loaded from a blob
            row.locator("a").click()
            items = page.locator("#t-segments li.segment")
            expect(items).to_have_count(len(segments))
            quality = http.get(f"/api/v1/console/transcripts/{tid}/quality", headers=office).json()["segments"]
            for q in quality:
                classes = items.nth(q["index"]).get_attribute("class") or ""
                assert ("low" in classes.split()) == q["low"], (q, classes)
            page.wait_for_function("() => document.getElementById('t-audio').readyState >= 1")
            assert page.evaluate("document.getElementById('t-audio').currentTime") == 0

            # a click on a segment plays the recording from its start
            items.nth(len(segments) - 1).locator(".text").click()
            page.wait_for_function(f"() => document.getElementById('t-audio').currentTime >= {later['start']}")
            page.wait_for_function(f"() => document.getElementById('t-audio').currentTime > {later['start']} + 0.3",
                                   timeout=10_000)  # and it plays on
            page.evaluate("document.getElementById('t-audio').pause()")

            # correct a word Whisper got wrong
            after = hit["text"].replace(wrong, right, 1)
            target = items.nth(hit["index"])
            target.get_by_role("button", name="修改").click()
            target.locator("input.segment-input").fill(after)
            target.get_by_role("button", name="保存").click()
            expect(page.locator("#message")).to_have_text("已保存修改。")
            expect(page.locator("#t-revisions")).to_contain_text("第 1 版")
            expect(page.locator("#t-revisions ins").first).to_have_text(after)
            expect(items.nth(hit["index"]).locator(".text")).to_have_text(after)
            shot(page, f"transcript-{backend}")
            detail = http.get(f"/api/v1/transcripts/{tid}", headers=office).json()
            assert detail["segments"][hit["index"]]["text"] == after and detail["revision"] == 1

            # approve: it leaves the pending queue
            page.get_by_role("button", name="审核通过").click()
            expect(page.locator("#message")).to_have_text("已审核通过。")
            expect(page.get_by_role("button", name="审核通过")).to_have_count(0)
            expect(page.get_by_role("button", name="修改")).to_have_count(0)
            assert http.get(f"/api/v1/transcripts/{tid}", headers=office).json()["status"] == "approved"
            page.locator("#back-to-queue").click()
            page.locator("#queue-filters select[name=status]").select_option("transcribed")
            page.get_by_role("button", name="搜索").click()
            expect(page.locator("#queue-summary")).to_contain_text("共 0 条，其中待审核 0 条")
            expect(page.locator(f'#queue-rows tr[data-id="{tid}"]')).to_have_count(0)
            page.locator("#queue-filters select[name=status]").select_option("approved")
            page.get_by_role("button", name="搜索").click()
            expect(page.locator(f'#queue-rows tr[data-id="{tid}"]')).to_contain_text("已审核")

            # the work order's timeline: call with its transcript, visit, readings chart, status changes
            page.goto(f"{server}/console#/t/{tid}")
            page.locator("#t-meta a").click()
            expect(page.locator("#wo-items li.call")).to_contain_text(CALLER)
            expect(page.locator("#wo-items li.call .transcript-text")).to_contain_text(after)
            expect(page.locator("#wo-items li.visit")).to_contain_text("室温 16.5℃")
            expect(page.locator("#wo-items li.assigned")).to_contain_text("派单给 " + case["steward_name"])
            timeline = http.get(f"/api/v1/console/work-orders/{case['order_id']}/timeline", headers=office).json()
            expect(page.locator("#wo-chart svg circle")).to_have_count(len(timeline["readings"]))
            assert len(timeline["readings"]) >= 3
            expect(page.locator("#wo-chart svg polyline")).to_have_count(1)
            snapshot = page.locator("#wo-items li.video .snapshots img")
            expect(snapshot).to_have_count(1)
            expect(snapshot).to_have_attribute("src", re.compile(r"^blob:"))
            page.wait_for_function("() => { const i = document.querySelector('#wo-items li.video img'); "
                                   "return i && i.complete && i.naturalWidth === 320; }")
            kinds = page.locator("#wo-items li.item").evaluate_all("els => els.map(e => e.classList[1])")
            assert kinds == [i["kind"] for i in timeline["items"]]
            shot(page, f"timeline-{backend}")

            # the dashboard, refreshed by polling
            page.get_by_role("link", name="实时看板").click()
            figures = http.get("/api/v1/console/dashboard", headers=office).json()
            expect(page.locator('[data-key="open_total"] .value')).to_have_text(str(figures["open_total"]))
            expect(page.locator('[data-key="pending_review"] .value')).to_have_text("0")
            assert figures["open_total"] > 1 and figures["transcribed_last_hour"] == 1
            page.wait_for_function("() => window.__console.dashboardUpdates >= 3", timeout=15_000)

            # 未诉先办: the riser order the proactive service opened for the case, with its complaints
            proactive = case["proactive"]
            summary = figures["proactive"]["summary"]
            cluster = page.locator(f'#dash-clusters li[data-id="{proactive["id"]}"]')
            expect(cluster).to_contain_text("单元立管")
            members = len(proactive["member_work_order_ids"]) + len(proactive["member_transcript_ids"])
            expect(cluster).to_contain_text(f"{members} 起投诉")
            expect(page.locator('[data-key="proactive_clusters_open"] .value')).to_have_text(
                str(sum(summary["clusters_open"].values())))
            expect(page.locator('[data-key="proactive_sla_overdue"] .value')).to_have_text(
                str(summary["sla_open_overdue"]))
            expect(page.locator("#dash-revisits li[data-id]")).to_have_count(len(figures["proactive"]["revisits"]))
            shot(page, f"dashboard-{backend}")
            cluster.locator("a").click()  # to the proactive order's timeline
            expect(page.locator("#wo-meta")).to_contain_text(proactive["work_order_id"])
            expect(page.locator("#wo-meta")).to_contain_text("主动服务")

            # the conflict log: both values, the winner, the device; the reviewed mark is stored
            page.get_by_role("link", name="同步冲突").click()
            line = page.locator(f'#conflict-rows tr[data-id="{case["conflict_id"]}"]')
            expect(line).to_contain_text("in_progress")
            expect(line).to_contain_text("assigned")
            expect(line).to_contain_text("设备")
            # the order by its id's last 8 digits: the first 8 of a UUIDv7 are the same for a whole minute
            expect(line.locator(f'a[href="#/wo/{case["order_id"]}"]')).to_have_text(f"工单 {case['order_id'][-8:]}")
            line.locator("input[type=checkbox]").check()
            expect(line).to_contain_text("客服主管")
            marked = http.get("/api/v1/sync/conflicts", params={"reviewed": "true"}, headers=office).json()
            assert [c["id"] for c in marked["data"]] == [case["conflict_id"]]

            # a steward: read-only, numbers masked, no office pages
            page = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN").new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            sign_in(page, server, "steward01")
            expect(page.get_by_role("link", name="实时看板")).to_be_hidden()
            page.goto(f"{server}/console#/t/{tid}")
            masked = CALLER[:3] + "****" + CALLER[-4:]
            expect(page.locator("#t-meta .phone")).to_have_text(masked)
            expect(page.locator("#t-meta")).to_contain_text("已脱敏")
            expect(page.locator("#t-segments li.segment")).to_have_count(len(segments))
            expect(page.get_by_role("button", name="修改")).to_have_count(0)
            assert CALLER not in page.content()
            shot(page, f"steward-transcript-{backend}")
            page.goto(f"{server}/console#/wo/{case['order_id']}")
            expect(page.locator("#wo-items li.call .phone")).to_have_text(masked)
            assert CALLER not in page.content()
            page.goto(f"{server}/console#/dashboard")
            expect(page.locator("#message")).to_contain_text("没有此项权限")
        finally:
            browser.close()
    assert errors == []


def test_a_server_error_at_sign_in_is_not_called_a_wrong_password(server: str) -> None:
    """Regression (review): a 503 (the database away) or a disabled account said 用户名或密码错误."""
    from playwright.sync_api import expect, sync_playwright

    answers = {"status": 503, "json": {"detail": {"code": "database_unavailable", "message": "x"}}}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context().new_page()
            page.route("**/api/v1/auth/token", lambda route: route.fulfill(**answers))
            page.goto(f"{server}/console")
            page.locator("#login input[name=username]").fill("supervisor")
            page.locator("#login input[name=password]").fill("any-password")
            page.get_by_role("button", name="登录").click()
            expect(page.locator("#message")).to_contain_text("服务暂时不可用")
            answers.update(status=401, json={"detail": {"code": "inactive_user", "message": "x"}})
            page.get_by_role("button", name="登录").click()
            expect(page.locator("#message")).to_contain_text("账号已停用")
        finally:
            browser.close()


def test_a_wrong_password_and_an_expired_session_bring_back_the_sign_in_form(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context().new_page()
            page.goto(f"{server}/console")
            expect(page.locator("#login")).to_be_visible()
            page.locator("#login input[name=username]").fill("supervisor")
            page.locator("#login input[name=password]").fill("wrong-password")
            page.get_by_role("button", name="登录").click()
            expect(page.locator("#message")).to_contain_text("用户名或密码错误")
            page.evaluate("sessionStorage.setItem('heat_token', 'forged.token.value')")
            page.goto(f"{server}/console#/queue")
            page.reload()
            expect(page.locator("#login")).to_be_visible()
            expect(page.locator("#message")).to_contain_text("请重新登录")
            assert page.evaluate("sessionStorage.getItem('heat_token')") is None
        finally:
            browser.close()

