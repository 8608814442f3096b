"""The resident page in a real browser: Debian's Chromium driven by Playwright, with its fake camera and
microphone, joins from the join URL; an aiortc steward decodes what it sends."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from api.app import create_app
from api.db import utcnow
from api.notes.models import Note
from api.notices.sms import LoggingSender
from api.settings import Settings
from api.work_orders.models import Status, WorkOrder
from speech.audio import decode_audio
from tests.conftest import TEST_SECRET
from tests.utils.browser import CHROMIUM, free_port, require_chromium, serve_in_thread
from tests.utils.browser import CHROMIUM_ARGS as BROWSER_ARGS
from tests.utils.factories import World
from tests.video.conftest import run
from video.blobs import read_blob
from video.clients import Participant
from video.models import VideoRoom
from video.tokens import JOIN_TYPE

CHROMIUM_ARGS = [*BROWSER_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]

require_chromium()

pytestmark = pytest.mark.slow



@pytest.fixture
def server(request: pytest.FixtureRequest, video_settings: Settings, engine: Engine) -> Iterator[str]:
    """The app served by uvicorn on a free port in a thread (its relay on the server's own loop); the relay
    mode is the test's parameter (default forward)."""
    port = free_port()
    mode = getattr(request, "param", "forward")
    settings = video_settings.model_copy(update={"port": port, "video_relay_mode": mode})
    app = create_app(settings, engine=engine, sms_sender=LoggingSender())
    with serve_in_thread(app, port, name="uvicorn-video") as url:
        yield url


async def assert_relay_mode(http: httpx.AsyncClient, world: World, mode: str) -> None:
    """The resident's camera went through the relay as the mode says: forwarded without decoding, or
    decoded and encoded again."""
    stats = (await http.get("/api/v1/video/relay", headers=world.headers(world.supervisor))).json()
    assert stats["modes"] == [mode], stats
    slot, = (s for slots in stats["slots"].values() for s in slots if s["slot"] == "resident-video")
    if mode == "forward":
        assert slot["forwarded"] >= 30 and slot["shared_encoded"] == 0, slot
    else:
        assert slot["forwarded"] == 0 and slot["decoded"] >= 30, slot


def token_of(world: World, user: Any) -> str:
    return world.headers(user)["Authorization"].split()[1]


async def signed_in_page(browser: Any, token: str) -> Any:
    """A tab signed in the way the lobby and the console sign in: the access token in sessionStorage."""
    context = await browser.new_context()
    await context.add_init_script(f"sessionStorage.setItem('heat_token', {json.dumps(token)})")
    return await context.new_page()


async def heat_state(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate("({status: window.__heat.status, error: window.__heat.error})")
    return state


async def wait_status(page: Any, *statuses: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = await heat_state(page)
        if state["status"] in statuses:
            return state
        assert time.monotonic() < deadline, f"page stayed {state}, expected {statuses}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("server", ["forward", "transcode"], indirect=True)
def test_resident_page_in_chromium_reaches_an_aiortc_steward(server: str, world: World, order: Any, engine: Engine,
                                                             tmp_path: Path, request: pytest.FixtureRequest) -> None:
    mode = request.node.callspec.params["server"]

    from playwright.async_api import async_playwright

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server, timeout=20) as http, async_playwright() as pw:
            h = world.headers(world.steward_a)
            room = (await http.post("/api/v1/video/rooms", json={"work_order_id": str(order.id)}, headers=h)).json()
            join_url = room["join_url"]
            assert join_url.startswith(server + "/join/")
            camera_frames = [0]

            def count_camera(frame: Any) -> None:
                # the fake camera draws a moving picture; the relay's placeholders are flat black
                if float(np.std(frame.to_ndarray(format="gray"))) > 2:
                    camera_frames[0] += 1

            steward = Participant(role="steward", audio=True, on_video=count_camera)
            joined_at = time.monotonic()  # the steward's tone is recorded from here on
            r = await steward.join(http, room["room_id"], h["Authorization"].split()[1])
            assert r.status_code == 200, r.text
            await steward.connected()

            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = await (await browser.new_context(viewport={"width": 390, "height": 844})).new_page()
                logs: list[str] = []
                page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
                await page.goto(join_url)
                await page.get_by_role("button", name="开始视频").click()
                await wait_status(page, "connected")
                video, = steward.tracks("video")
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    stats = await page.evaluate("HeatVideo.mediaStats(window.__heat.pc)")
                    camera = camera_frames[0]
                    if stats["framesEncoded"] >= 30 and camera >= 30:
                        break
                    await asyncio.sleep(0.25)
                assert stats["framesEncoded"] >= 30, (stats, logs)
                assert "video/VP8" in stats["codecs"]
                assert camera >= 30, f"steward decoded {video.frames} frames, {camera} from the camera; {logs}"
                assert steward.tracks("audio")[0].frames > 0
                assert stats["audioPacketsReceived"] > 0  # the steward's tone reached the page
                assert "已接通" in await page.locator("#message").inner_text()
                await assert_relay_mode(http, world, mode)
                await page.screenshot(path=str(tmp_path / "resident-page.png"))
                assert (tmp_path / "resident-page.png").stat().st_size > 1000
                # The call's audio becomes the note that is transcribed; in forward mode it is muxed from the
                # browser's own Opus packets during the call and mixed down on close.
                talked = time.monotonic() - joined_at
                closed = (await http.post(f"/api/v1/video/rooms/{room['room_id']}/close", headers=h)).json()
                assert closed["recording_note_id"], closed
                with Session(engine) as session:
                    note = session.get(Note, uuid.UUID(closed["recording_note_id"]))
                    assert note is not None and note.audio_sha256
                    blob = read_blob(world.settings, note.audio_sha256)
                assert blob is not None
                audio = decode_audio(blob)  # as the speech worker reads it
                assert 1.5 <= note.duration_s <= talked + 1
                assert len(audio) / 16_000 == pytest.approx(note.duration_s, abs=0.3)
                assert float(np.abs(audio).max()) > 0.05  # sound, not silence
                # both sides: the steward's 440 Hz tone throughout, and the page's fake microphone, which beeps
                # twice a second (100 ms windows whose energy is mostly away from 440 Hz)
                freqs = np.fft.rfftfreq(1600, 1 / 16_000)
                spectra = [np.abs(np.fft.rfft(audio[i:i + 1600])) for i in range(0, len(audio) - 1600, 1600)]
                away = (freqs < 380) | (freqs > 500)
                beeps = sum(1 for x in spectra if x.sum() > 0 and x[away].sum() > 0.4 * x.sum())
                assert beeps >= 2, beeps
            finally:
                await browser.close()
                await steward.close()

    run(scenario(), timeout=90)


def test_resident_page_explains_refusals_in_chinese(server: str, world: World, order: Any, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server, timeout=20) as http, async_playwright() as pw:
            room = (await http.post("/api/v1/video/rooms", json={"work_order_id": str(order.id)},
                                    headers=world.headers(world.steward_a))).json()
            join_url = room["join_url"]
            now = utcnow()
            expired = jwt.encode({"sub": room["room_id"], "typ": JOIN_TYPE, "role": "resident",
                                  "iat": now - timedelta(hours=1), "exp": now - timedelta(minutes=1)},
                                 TEST_SECRET, algorithm="HS256")
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                async def page_for(url: str, script: str | None = None, user_agent: str | None = None) -> Any:
                    context = await browser.new_context(user_agent=user_agent) if user_agent else \
                        await browser.new_context()
                    page = await context.new_page()
                    if script:
                        await page.add_init_script(script)
                    await page.goto(url)
                    return page

                page = await page_for(f"{server}/join/{expired}")
                assert (await wait_status(page, "error"))["error"] == "join_link_expired"
                assert "链接已过期" in await page.locator("#message").inner_text()

                page = await page_for(f"{server}/join/forged.{expired}")
                await wait_status(page, "error")
                assert "链接无效" in await page.locator("#message").inner_text()

                no_camera = "Object.defineProperty(navigator, 'mediaDevices', {value: undefined});"
                wechat = ("Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/116.0 "
                          "Mobile Safari/537.36 MicroMessenger/8.0.47")
                page = await page_for(join_url, no_camera, wechat)
                assert (await wait_status(page, "unsupported"))["error"] == "wechat"
                assert "在浏览器打开" in await page.locator("#message").inner_text()
                page = await page_for(join_url, no_camera)
                assert (await wait_status(page, "unsupported"))["error"] == "no_webrtc"
                assert "手机自带浏览器" in await page.locator("#message").inner_text()

                denied = ("navigator.mediaDevices.getUserMedia = () => "
                          "Promise.reject(new DOMException('denied', 'NotAllowedError'));")
                page = await page_for(join_url, denied)
                await page.get_by_role("button", name="开始视频").click()
                assert (await wait_status(page, "denied"))["error"] == "permission_denied"
                assert "没有允许使用摄像头" in await page.locator("#message").inner_text()
                assert await page.get_by_role("button", name="开始视频").is_visible()  # can retry
                await page.screenshot(path=str(tmp_path / "permission-denied.png"))

                await http.post(f"/api/v1/video/rooms/{room['room_id']}/close",
                                headers=world.headers(world.steward_a))
                page = await page_for(join_url)
                assert (await wait_status(page, "error"))["error"] == "room_closed"
                assert "已经结束" in await page.locator("#message").inner_text()
            finally:
                await browser.close()

    run(scenario(), timeout=90)


@pytest.mark.parametrize("server", ["forward", "transcode"], indirect=True)
def test_steward_page_and_supervisor_watch_view_in_chromium(server: str, world: World, order: Any,
                                                            request: pytest.FixtureRequest) -> None:
    """An aiortc resident publishes; the steward page (with the fake microphone) and the supervisor's
    watch-only view decode it in Chromium (in forward mode: the resident's own VP8 frames); the steward's
    snapshot button stores a picture."""
    mode = request.node.callspec.params["server"]
    from playwright.async_api import async_playwright

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server, timeout=20) as http, async_playwright() as pw:
            h = world.headers(world.steward_a)
            room = (await http.post("/api/v1/video/rooms", json={"work_order_id": str(order.id)}, headers=h)).json()
            resident = Participant(role="resident", video=True, audio=True)
            r = await resident.join(http, room["room_id"], room["join_url"].rsplit("/join/", 1)[1])
            assert r.status_code == 200, r.text
            await resident.connected()
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                pages = {}
                views = (("steward", world.steward_a, ""), ("supervisor", world.supervisor, "?watch=1"))
                for who, user, query in views:
                    page = await signed_in_page(browser, token_of(world, user))
                    await page.goto(f"{server}/video/room/{room['room_id']}{query}")
                    await page.get_by_role("button", name="加入通话").click()
                    await wait_status(page, "connected")
                    pages[who] = page
                deadline = time.monotonic() + 15
                while True:
                    stats = {who: await page.evaluate("HeatVideo.mediaStats(window.__heat.pc)")
                             for who, page in pages.items()}
                    if all(s["framesDecoded"] >= 30 and s["audioPacketsReceived"] > 0 for s in stats.values()):
                        break
                    assert time.monotonic() < deadline, stats
                    await asyncio.sleep(0.25)
                await assert_relay_mode(http, world, mode)
                assert stats["steward"]["framesEncoded"] == 0  # the steward page sends its voice only
                assert stats["supervisor"]["framesEncoded"] == 0
                # the resident hears the steward page's (fake) microphone, not the supervisor
                assert resident.tracks("audio")[0].peak > 0
                await pages["steward"].get_by_role("button", name="截图留证").click()
                await pages["steward"].get_by_text("已截图留证").wait_for(timeout=10_000)
                listed = await http.get(f"/api/v1/video/snapshots?room_id={room['room_id']}", headers=h)
                assert listed.json()["count"] == 1
                assert not await pages["supervisor"].get_by_role("button", name="截图留证").is_visible()
            finally:
                await browser.close()
                await resident.close()

    run(scenario(), timeout=90)


def test_the_room_page_takes_no_token_from_its_link(server: str, world: World, order: Any) -> None:
    """A link to /video/room/<id>#token=<someone's token> must not sign the tab in as that someone (login
    CSRF): the page keeps the tab's own sign-in, or asks for one."""
    from playwright.async_api import async_playwright

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server, timeout=20) as http, async_playwright() as pw:
            mine = token_of(world, world.steward_a)
            room = (await http.post("/api/v1/video/rooms", json={"work_order_id": str(order.id)},
                                    headers={"Authorization": f"Bearer {mine}"})).json()
            link = f"{server}/video/room/{room['room_id']}#token={token_of(world, world.steward_b)}"
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                console: list[str] = []
                page = await signed_in_page(browser, mine)
                page.on("console", lambda m: console.append(m.text))
                await page.goto(link)
                await page.get_by_role("button", name="加入通话").wait_for()  # steward A's own room, as A
                assert await page.evaluate("sessionStorage.getItem('heat_token')") == mine
                assert not [m for m in console if "Content Security Policy" in m], console  # scripts run under the CSP

                page = await (await browser.new_context()).new_page()  # a tab signed in as nobody
                await page.goto(link)
                await page.locator("#login").wait_for()
                assert "请先登录" in await page.locator("#message").inner_text()
                assert await page.evaluate("sessionStorage.getItem('heat_token')") is None
            finally:
                await browser.close()

    run(scenario(), timeout=60)


def test_the_lobby_opens_a_call_with_its_scripts_under_the_csp(server: str, world: World, order: Any) -> None:
    """The lobby's own script file (no inline script is allowed) lists the steward's orders and opens a call,
    which lands on the room page with the SMS to send."""
    from playwright.async_api import async_playwright

    async def scenario() -> None:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = await signed_in_page(browser, token_of(world, world.steward_a))
                console: list[str] = []
                page.on("console", lambda m: console.append(m.text))
                await page.goto(f"{server}/video")
                first = page.locator("#orders button").first
                assert (await first.inner_text()).startswith("不热 · "), await first.inner_text()  # not `not_warm`
                await first.click()
                await page.get_by_role("button", name="加入通话").wait_for()
                assert f"工单 {order.id}" in await page.locator("#info").inner_text()
                assert "join/" in await page.locator("#sms").inner_text()
                assert not [m for m in console if "Content Security Policy" in m], console
            finally:
                await browser.close()

    run(scenario(), timeout=60)


SAYS = "text => document.getElementById('message').textContent.includes(text)"


def test_the_lobby_does_not_call_a_lockout_a_wrong_password(server: str, world: World, video_settings: Settings
                                                             ) -> None:
    """Regression (review): every refused sign-in said 用户名或密码错误, also the 429 of a locked account for the
    right password (the steward kept retrying through a lock they could not see) and a server error."""
    from playwright.async_api import async_playwright

    from tests.utils.factories import PASSWORD

    async def scenario() -> None:
        async with async_playwright() as pw, httpx.AsyncClient(base_url=server, timeout=20) as http:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = await (await browser.new_context()).new_page()
                await page.goto(f"{server}/video")
                await page.locator("#login input[name=username]").fill(world.steward_a.username)
                await page.locator("#login input[name=password]").fill("wrong-password")
                await page.locator("#login button").click()
                await page.wait_for_function(SAYS, arg="用户名或密码错误")
                for _ in range(video_settings.login_max_failures):
                    await http.post("/api/v1/auth/token", data={"username": world.steward_a.username,
                                                                "password": "wrong-password"})
                await page.locator("#login input[name=password]").fill(PASSWORD)  # right, but locked
                await page.locator("#login button").click()
                await page.wait_for_function(SAYS, arg="尝试次数过多")
            finally:
                await browser.close()

    run(scenario(), timeout=60)


PHONE: dict[str, Any] = {"viewport": {"width": 360, "height": 740}, "locale": "zh-CN"}
LATIN_WORD = re.compile(r"[A-Za-z]{3,}")  # a server's or the browser's English on the resident's page
RESIDENT_STATE = """() => ({msg: document.getElementById('message').textContent, status: window.__heat.status,
  error: window.__heat.error, buttons: [...document.querySelectorAll('button')].filter(b => !b.hidden)
  .map(b => b.textContent)})"""


async def resident_state(page: Any, *statuses: str, timeout: float = 10) -> dict[str, Any]:
    """The page's message, status and visible buttons once its status is one of `statuses`."""
    await wait_status(page, *statuses, timeout=timeout)
    state: dict[str, Any] = await page.evaluate(RESIDENT_STATE)
    return state


async def start_resident(page: Any, join_url: str) -> None:
    await page.goto(join_url)
    await page.get_by_role("button", name="开始视频").click()
    await wait_status(page, "connected")


@asynccontextmanager
async def phone(server: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """An HTTP client for the steward's side and a phone-sized zh-CN browser context for the resident (the
    browser is closed on the way out)."""
    from playwright.async_api import async_playwright

    async with httpx.AsyncClient(base_url=server, timeout=20) as http, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield http, await browser.new_context(**PHONE)
        finally:
            await browser.close()


async def open_room(http: httpx.AsyncClient, world: World, order: Any) -> dict[str, Any]:
    """The steward opens the order's call: its room id and the resident's join link."""
    room: dict[str, Any] = (await http.post("/api/v1/video/rooms", json={"work_order_id": str(order.id)},
                                            headers=world.headers(world.steward_a))).json()
    return room


def test_resident_page_offers_a_retry_when_the_call_is_full(server: str, world: World, order: Any) -> None:
    """Regression (review): 409 `room_full` said 请稍后再试 and offered no button to try with."""
    full = json.dumps({"detail": {"code": "room_full", "message": "The call is full."}})

    async def scenario() -> None:
        async with phone(server) as (http, context):
            room = await open_room(http, world, order)
            page = await context.new_page()
            connect = "**/rooms/*/connect"
            await page.route(connect, lambda r: r.fulfill(status=409, content_type="application/json", body=full))
            await page.goto(room["join_url"])
            await page.get_by_role("button", name="开始视频").click()
            state = await resident_state(page, "error")
            assert state["error"] == "room_full" and "稍后再试" in state["msg"], state
            assert state["buttons"] == ["重试"], state
            await page.unroute(connect)
            await page.get_by_role("button", name="重试").click()
            await wait_status(page, "connected")

    run(scenario(), timeout=60)


def test_resident_page_maps_server_errors_to_chinese(server: str, world: World, order: Any, engine: Engine) -> None:
    """Regression: an error code the page does not know showed the server's English message ("无法加入视频通话：
    The database is unavailable…", or one naming STEWARD_VIDEO_WORKER_URL): a 5xx says the service is busy
    and offers 「重试」, which works once the server is back; any other unknown code says to ask the steward."""
    busy = json.dumps({"detail": {"code": "database_unavailable",
                                  "message": "The database is unavailable for a moment; retry shortly."}})

    async def scenario() -> None:
        async with phone(server) as (http, context):
            room = await open_room(http, world, order)
            page = await context.new_page()
            join = "**/api/v1/video/join/**"
            await page.route(join, lambda r: r.fulfill(status=503, content_type="application/json", body=busy))
            await page.goto(room["join_url"])
            state = await resident_state(page, "retry")
            assert "服务暂时繁忙" in state["msg"] and not LATIN_WORD.search(state["msg"]), state
            assert state["buttons"] == ["重试"], state
            await page.unroute(join)
            await page.get_by_role("button", name="重试").click()
            await wait_status(page, "ready")

            connect = "**/rooms/*/connect"
            await page.route(connect, lambda r: r.fulfill(status=503, content_type="application/json", body=busy))
            await page.get_by_role("button", name="开始视频").click()
            state = await resident_state(page, "retry")
            assert "服务暂时繁忙" in state["msg"] and not LATIN_WORD.search(state["msg"]), state
            assert state["buttons"] == ["重试"], state
            await page.unroute(connect)

            with Session(engine) as session:  # hosted by a worker without STEWARD_VIDEO_WORKER_URL
                row = session.get(VideoRoom, uuid.UUID(room["room_id"]))
                assert row is not None
                row.worker, row.worker_url = "w2", ""
                session.add(row)
                session.commit()
            await page.get_by_role("button", name="重试").click()
            state = await resident_state(page, "error")
            assert state["error"] == "room_elsewhere", state
            assert state["msg"] == "无法加入视频通话，请联系管家重新发送链接。", state
            assert state["buttons"] == [], state

    run(scenario(), timeout=60)


def test_resident_page_explains_a_camera_failure_in_chinese(server: str, world: World, order: Any) -> None:
    """Regression: a camera failure other than the known ones showed Chrome's English ("无法打开摄像头：Timeout
    starting video source"): a fixed Chinese text, and 「开始视频」 to try again."""

    async def scenario() -> None:
        async with phone(server) as (http, context):
            room = await open_room(http, world, order)
            page = await context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            # Chrome's own rejection when the camera does not start in time (Android: a busy or slow camera)
            await page.add_init_script("navigator.mediaDevices.getUserMedia = () => Promise.reject("
                                       "new DOMException('Timeout starting video source', 'AbortError'));")
            await page.goto(room["join_url"])
            await page.get_by_role("button", name="开始视频").click()
            state = await resident_state(page, "error")
            assert state["error"] == "camera_error" and "无法打开摄像头" in state["msg"], state
            assert not LATIN_WORD.search(state["msg"]), state
            assert state["buttons"] == ["开始视频"], state
            assert any("AbortError" in m for m in console), console  # the details go to the console

    run(scenario(), timeout=60)


def test_resident_page_offers_a_retry_when_the_network_is_lost(server: str, world: World, order: Any) -> None:
    """Regression: the network lost while the link opened left a dead end (an error and no button): the page
    says to check the network, and 「重试」 checks the link again."""

    async def scenario() -> None:
        async with phone(server) as (http, context):
            room = await open_room(http, world, order)
            page = await context.new_page()
            join = "**/api/v1/video/join/**"
            await page.route(join, lambda r: r.abort("internetdisconnected"))
            await page.goto(room["join_url"])
            state = await resident_state(page, "retry")
            assert state["msg"] == "网络连接失败，请检查网络后点击「重试」。", state
            assert state["buttons"] == ["重试"], state
            await page.unroute(join)
            await page.get_by_role("button", name="重试").click()
            state = await resident_state(page, "ready")
            assert state["buttons"] == ["开始视频"], state

    run(scenario(), timeout=60)


def test_resident_page_says_the_call_ended(server: str, world: World, order: Any, engine: Engine) -> None:
    """Regression: when the steward ended the call (or the work order closed) the page kept saying 已接通 for
    ~14 s, then told the resident to check their network: it polls its link during the call and says the call
    ended within a few seconds."""

    async def scenario() -> None:
        async with phone(server) as (http, context):
            h = world.headers(world.steward_a)
            room = await open_room(http, world, order)
            page = await context.new_page()
            await start_resident(page, room["join_url"])
            assert (await http.post(f"/api/v1/video/rooms/{room['room_id']}/close", headers=h)).status_code == 200
            state = await resident_state(page, "error", timeout=8)
            assert state["error"] == "room_closed" and "已经结束" in state["msg"], state
            assert "检查网络" not in state["msg"] and state["buttons"] == [], state
            assert await page.evaluate("window.__heat.pc === null && window.__heat.stream === null")

            room = await open_room(http, world, order)
            page = await context.new_page()
            await start_resident(page, room["join_url"])
            with Session(engine) as session:
                row = session.get(WorkOrder, order.id)
                assert row is not None
                row.status = Status.closed
                session.add(row)
                session.commit()
            state = await resident_state(page, "error", timeout=8)
            assert state["error"] == "work_order_closed" and "工单已经结束" in state["msg"], state

    run(scenario(), timeout=60)


def test_steward_page_ends_when_the_call_is_closed_elsewhere(server: str, world: World, order: Any) -> None:
    """Regression: closed by a supervisor (or its order, or its time), the call stayed 已接通 on the steward's
    page and then offered to reconnect, which failed in English; and its own close always said a recording was
    saved. The page now checks the room while joined, and says a recording was saved only when one was."""
    from playwright.async_api import async_playwright

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server, timeout=20) as http, async_playwright() as pw:
            room = await open_room(http, world, order)
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = await signed_in_page(browser, token_of(world, world.steward_a))
                await page.goto(f"{server}/video/room/{room['room_id']}")
                await page.get_by_role("button", name="加入通话").click()
                await wait_status(page, "connected")
                r = await http.post(f"/api/v1/video/rooms/{room['room_id']}/close",
                                    headers=world.headers(world.supervisor))
                assert r.status_code == 200, r.text
                await page.get_by_text("本次通话已结束").wait_for(timeout=10_000)
                assert not await page.get_by_role("button", name="加入通话").is_visible()
                message = await page.locator("#message").inner_text()
                assert ("录音已保存" in message) == (r.json()["recording_note_id"] is not None), message
            finally:
                await browser.close()
    run(scenario(), timeout=90)


def test_resident_page_with_a_mangled_link_says_the_link_is_invalid(server: str, world: World, order: Any) -> None:
    """Regression: a broken % escape in the link threw in join.js before anything ran: 正在检查链接… for ever."""
    async def scenario() -> None:
        async with phone(server) as (http, context):
            room = await open_room(http, world, order)
            page = await context.new_page()
            await page.goto(room["join_url"] + "%E0")
            await page.get_by_text("链接无效").wait_for(timeout=10_000)
    run(scenario(), timeout=60)
