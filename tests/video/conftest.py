"""Fixtures of the video tests: an app whose relay runs on the test's event loop (httpx's ASGI
transport: real routes, real aiortc peer connections on the machine's non-loopback address), the usual
two-grid world, and a work order to call about."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlmodel import Session

from api.app import create_app
from api.notices.sms import LoggingSender
from api.settings import Settings
from api.work_orders.models import Status, WorkOrder
from tests.conftest import make_settings
from tests.utils.factories import World, make_work_order, make_world
from video.relay import RoomManager

T = TypeVar("T")

# Tight timers so reaping and idle closing are observable within a test.
VIDEO_TEST_SETTINGS: dict[str, Any] = {
    "speech_queue": "off",  # recordings are queued, not transcribed, here (speech has its own tests)
    "video_ice_servers": "",  # host candidates only: no 5 s STUN gathering
    "video_room_idle_close_s": 30,
    "video_connect_timeout_s": 10,
    "video_worker_id": "test-worker",
}


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """Run a scenario on a fresh event loop, failing (not hanging) past `timeout`."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def video_settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path, **VIDEO_TEST_SETTINGS)


@pytest.fixture
def world(session: Session, video_settings: Settings) -> World:
    return make_world(session, video_settings)


@pytest.fixture
def order(session: Session, world: World) -> WorkOrder:
    """An in-progress work order in steward A's grid, assigned to them."""
    return make_work_order(session, world.household_a, status=Status.in_progress, assignee=world.steward_a)


@dataclass
class Live:
    """An app with its lifespan running, and an HTTP client talking to it in-process."""

    app: FastAPI
    http: httpx.AsyncClient

    @property
    def rooms(self) -> RoomManager:
        manager: RoomManager = self.app.state.video_rooms
        return manager


LiveFactory = Callable[..., Any]


@pytest.fixture
def live(video_settings: Settings, engine: Engine) -> Callable[..., Any]:
    """`async with live(**setting_overrides) as app:` runs the app (lifespan included) on this loop."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Live]:
        settings = video_settings.model_copy(update=overrides)
        app = create_app(settings, engine=engine, sms_sender=LoggingSender())
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://steward.test") as http:
                yield Live(app=app, http=http)

    return start


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 10, step: float = 0.05,
                     describe: Callable[[], object] | None = None) -> None:
    """Wait until `check()` is true; fail with a clear message (and `describe()`) past the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {check}"
                                 + (f"; {describe()}" if describe else ""))
        await asyncio.sleep(step)
