"""The console's views in Chromium on the small two-grid world (no speech model): a view still loading
when the next one starts, a save that lost the race to another user's, and the dashboard's polling
recovering. Playwright holds or fails the page's requests to make each timing happen on purpose."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, Route, sync_playwright
from sqlalchemy import Engine
from sqlmodel import Session

from api.app import create_app
from api.notices.sms import LoggingSender
from api.settings import Settings
from api.work_orders.models import Category, Status, WorkOrderEvent
from speech.models import TranscriptState
from tests.speech.service_helpers import make_transcript
from tests.utils.browser import CHROMIUM, CHROMIUM_ARGS, free_port, require_chromium, serve_in_thread
from tests.utils.factories import World, make_work_order, make_world

require_chromium()

pytestmark = pytest.mark.slow

# A few bytes standing in for a recording: the page only turns the response into a blob: URL.
FAKE_AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt "


@pytest.fixture
def world(session: Session, settings: Settings) -> World:
    return make_world(session, settings)


@pytest.fixture
def server(settings: Settings, engine: Engine) -> Iterator[str]:
    port = free_port()
    app = create_app(settings.model_copy(update={"port": port, "console_refresh_s": 1}), engine=engine,
                     sms_sender=LoggingSender())
    with serve_in_thread(app, port, name="uvicorn-console-views") as url:
        yield url


@pytest.fixture
def page(server: str, world: World) -> Iterator[Page]:
    """The console signed in as the supervisor (the token put where the sign-in form puts it)."""
    token = world.headers(world.supervisor)["Authorization"].split()[1]
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(locale="zh-CN")
            context.add_init_script(f"sessionStorage.setItem('heat_token', {json.dumps(token)})")
            pg = context.new_page()
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(f"{server}/console")
            pg.locator("#nav").wait_for(state="visible")
            yield pg
        finally:
            browser.close()
    assert errors == []


def wait_js(page: Page, expr: str, timeout: float = 10) -> None:
    """Poll an expression from Python: the console's CSP (no 'unsafe-eval') refuses wait_for_function."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => !!({expr})"):
        assert time.monotonic() < deadline, expr
        time.sleep(0.1)


def hold(page: Page, pattern: str) -> list[Route]:
    """Requests matching `pattern` wait, unanswered, in the returned list until the test answers them."""
    held: list[Route] = []
    page.route(pattern, lambda route: held.append(route))
    return held


def segment_texts(page: Page) -> list[str]:
    return page.locator("#t-segments .text").all_text_contents()


def test_a_transcript_still_loading_does_not_overwrite_the_next_one(page: Page, server: str, session: Session,
                                                                     world: World) -> None:
    a = make_transcript(session, world.steward_a, "甲的第一段", "甲的第二段", categories=("noise",))
    b = make_transcript(session, world.steward_a, "乙的第一段", categories=("billing",))
    page.route(f"**/api/v1/transcripts/{b.id}/audio",
               lambda route: route.fulfill(status=200, body=FAKE_AUDIO, content_type="audio/wav"))
    a_audio = hold(page, f"**/api/v1/transcripts/{a.id}/audio")  # A's recording is slow to download
    page.evaluate(f"location.hash = '#/t/{a.id}'")
    deadline = time.monotonic() + 10
    while not a_audio:  # A has its transcript and waits for its audio
        assert time.monotonic() < deadline
        page.wait_for_timeout(50)
    page.evaluate(f"location.hash = '#/t/{b.id}'")
    wait_js(page, "document.querySelectorAll('#t-revisions li').length > 0 && "
                  "document.getElementById('t-audio').src.startsWith('blob:')")
    assert segment_texts(page) == ["乙的第一段"]

    # A's audio arrives now: A's view was superseded and must leave B's alone
    with page.expect_response(f"**/api/v1/transcripts/{a.id}/audio"):
        a_audio[0].fulfill(status=200, body=FAKE_AUDIO, content_type="audio/wav")
    page.wait_for_timeout(1000)
    assert segment_texts(page) == ["乙的第一段"]
    assert page.evaluate("window.__console.transcript.id") == str(b.id)
    # one blob: URL, B's, on the player: none was made for A (it would never be released)
    assert page.evaluate("window.__console.urls") == [page.evaluate("document.getElementById('t-audio').src")]

    page.get_by_role("button", name="审核通过").click()
    wait_js(page, "document.getElementById('message').textContent === '已审核通过。'")
    office = world.headers(world.admin)
    assert httpx.get(f"{server}/api/v1/transcripts/{b.id}", headers=office).json()["status"] == "approved"
    assert httpx.get(f"{server}/api/v1/transcripts/{a.id}", headers=office).json()["status"] == \
        TranscriptState.transcribed


def test_a_timeline_still_loading_does_not_overwrite_the_next_one(page: Page, session: Session,
                                                                   world: World) -> None:
    first = make_work_order(session, world.household_a, category=Category.leak, status=Status.assigned,
                            assignee=world.steward_a)
    second = make_work_order(session, world.household_b, category=Category.valve, status=Status.assigned,
                             assignee=world.steward_b)
    held = hold(page, f"**/api/v1/console/work-orders/{first.id}/timeline")
    page.evaluate(f"location.hash = '#/wo/{first.id}'")
    deadline = time.monotonic() + 10
    while not held:
        assert time.monotonic() < deadline
        page.wait_for_timeout(50)
    page.evaluate(f"location.hash = '#/wo/{second.id}'")
    wait_js(page, "document.getElementById('wo-title').textContent.includes('阀门')")
    with page.expect_response(f"**/api/v1/console/work-orders/{first.id}/timeline"):
        held[0].continue_()
    page.wait_for_timeout(1000)
    assert page.text_content("#wo-title") == "工单时间线 · 阀门 · 已派单"
    assert str(second.id) in (page.text_content("#wo-meta") or "")
    assert page.evaluate("window.__console.timeline.work_order.id") == str(second.id)


def test_a_save_that_lost_to_another_edit_reloads_the_transcript(page: Page, server: str, session: Session,
                                                                  world: World) -> None:
    t = make_transcript(session, world.steward_a, "第一段", "第二段")
    page.evaluate(f"location.hash = '#/t/{t.id}'")
    page.locator("#t-segments li .edit").first.wait_for()
    other = httpx.patch(f"{server}/api/v1/transcripts/{t.id}", headers=world.headers(world.admin),
                        json={"segments": [{"index": 0, "text": "别人改的"}], "base_revision": 0})
    assert other.status_code == 200
    page.locator("#t-segments li").nth(1).get_by_role("button", name="修改").click()
    page.get_by_role("textbox", name="第 2 段的文字").fill("我的修改")  # the input is labelled
    page.get_by_role("button", name="保存").click()
    # the page says so and shows the other edit at its revision; the message stays on screen
    wait_js(page, "window.__console.transcript.revision === 1")
    assert segment_texts(page) == ["别人改的", "第二段"]
    message = page.locator("#message")
    assert message.is_visible() and "别人刚修改过" in message.inner_text()
    assert page.locator("#t-revisions").inner_text().count("第 1 版") == 1
    # so the second try saves
    page.locator("#t-segments li").nth(1).get_by_role("button", name="修改").click()
    page.get_by_role("textbox", name="第 2 段的文字").fill("我的修改")
    page.get_by_role("button", name="保存").click()
    wait_js(page, "window.__console.transcript.revision === 2")
    # The page re-renders the segments after it takes the new revision: a CI run on busy cores read them in
    # between (the old text); wait for the rendering, then check it.
    wait_js(page, "[...document.querySelectorAll('#t-segments .text')].map(e => e.textContent).join('|')"
                  " === '别人改的|我的修改'")
    assert message.inner_text() == "已保存修改。"
    assert segment_texts(page) == ["别人改的", "我的修改"]
    saved = httpx.get(f"{server}/api/v1/transcripts/{t.id}", headers=world.headers(world.admin)).json()
    assert [s["text"] for s in saved["segments"]] == ["别人改的", "我的修改"]


def test_the_dashboard_error_goes_once_polling_recovers(page: Page) -> None:
    page.evaluate("location.hash = '#/dashboard'")
    page.locator("#dash-cards .stat").first.wait_for()
    page.context.set_offline(True)
    wait_js(page, "document.getElementById('message').textContent.startsWith('看板刷新失败')")
    assert page.locator("#message").is_visible()
    page.context.set_offline(False)
    updates = page.evaluate("window.__console.dashboardUpdates")
    wait_js(page, f"window.__console.dashboardUpdates > {updates}")
    assert page.locator("#message").is_hidden(), page.text_content("#message")


def test_an_approval_of_text_corrected_meanwhile_shows_that_text_first(page: Page, server: str, session: Session,
                                                                       world: World) -> None:
    """Regression: approving sent no revision, so text another supervisor had corrected since it was shown
    was approved unseen; now the page reloads it with a Chinese message, and the next click approves."""
    t = make_transcript(session, world.steward_a, "第一段", "第二段")
    page.evaluate(f"location.hash = '#/t/{t.id}'")
    page.locator("#approve").wait_for()
    other = httpx.patch(f"{server}/api/v1/transcripts/{t.id}", headers=world.headers(world.admin),
                        json={"segments": [{"index": 0, "text": "别人改的"}], "base_revision": 0})
    assert other.status_code == 200
    page.locator("#approve").click()
    wait_js(page, "window.__console.transcript.revision === 1")
    assert segment_texts(page) == ["别人改的", "第二段"]
    assert "别人刚修改过" in page.locator("#message").inner_text()
    unapproved = httpx.get(f"{server}/api/v1/transcripts/{t.id}", headers=world.headers(world.admin)).json()
    assert unapproved["status"] == "transcribed"
    page.locator("#approve").click()
    wait_js(page, "window.__console.transcript.status === 'approved'")


def test_an_orders_edits_read_in_chinese_on_its_timeline(page: Page, server: str, session: Session,
                                                         world: World) -> None:
    """Regression (review): an edit's line had no title (the raw kind `updated`) and its note listed the
    English field names; a change pushed from a handheld read "offline sync"."""
    order = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)
    r = httpx.patch(f"{server}/api/v1/work-orders/{order.id}", json={"priority": "urgent", "description": "楼上漏水"},
                    headers=world.headers(world.supervisor))
    assert r.status_code == 200, r.text
    session.add(WorkOrderEvent(work_order_id=order.id, actor_id=world.steward_a.id, kind="updated",
                               note="offline sync; category"))  # what a handheld's edit writes
    session.add(WorkOrderEvent(work_order_id=order.id, actor_id=world.steward_a.id, kind="status",
                               from_status=Status.assigned, to_status=Status.in_progress, note="offline sync"))
    session.commit()
    page.evaluate(f"location.hash = '#/wo/{order.id}'")
    wait_js(page, "document.querySelectorAll('#wo-items li.status').length === 1")
    edits = page.locator("#wo-items li.updated")
    assert edits.locator(".title").all_text_contents() == [f"工单信息修改 · {world.supervisor.username}",
                                                         f"工单信息修改 · {world.steward_a.username}"]
    assert edits.locator("p").all_text_contents() == ["修改了描述、优先级、时限", "离线同步：修改了类别"]
    assert page.locator("#wo-items li.status p").all_text_contents() == ["离线同步"]
