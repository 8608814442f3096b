"""Rooms are pinned to the relay worker that created them; the others send clients there."""

from __future__ import annotations

import uuid

from tests.utils.asserts import assert_error
from tests.video.conftest import eventually, run
from video.clients import Participant

ROOMS = "/api/v1/video/rooms"


def test_requests_for_a_room_on_another_worker_are_redirected_there(live, world, order):
    async def scenario() -> None:
        async with live(video_worker_id="relay-a", video_worker_url="http://relay-a.test/") as a, \
                live(video_worker_id="relay-b", video_worker_url="http://relay-b.test") as b:
            h = world.headers(world.steward_a)
            created = (await a.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)).json()
            room_id = created["room_id"]
            assert created["relay_url"] == ""
            # the other worker knows the room (shared database) and points at its relay
            again = await b.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)
            assert again.status_code == 200 and again.json()["room_id"] == room_id
            assert again.json()["relay_url"] == "http://relay-a.test" and b.rooms.rooms == {}
            token = created["join_url"].rsplit("/join/", 1)[1]
            info = (await b.http.get(f"/api/v1/video/join/{token}")).json()
            assert info["relay_url"] == "http://relay-a.test"
            # during the call the page's checks go to the hosting worker: only it knows the call is ending
            r = await b.http.get(f"/api/v1/video/join/{token}", params={"in_call": 1})
            assert r.status_code == 307 and r.headers["location"] == f"http://relay-a.test/api/v1/video/join/{token}?in_call=1"

            resident = Participant(role="resident", video=True, audio=True)
            r = await resident.join(b.http, room_id, token)
            detail = assert_error(r, 307, "room_elsewhere")
            assert r.headers["location"] == f"http://relay-a.test{ROOMS}/{room_id}/connect"
            assert "relay-a.test" in detail["message"]
            for path in (f"{ROOMS}/{room_id}/snapshot", f"{ROOMS}/{room_id}/close"):
                r = await b.http.post(path, headers=h)
                assert r.status_code == 307 and r.headers["location"] == f"http://relay-a.test{path}"
            r = await b.http.get(f"{ROOMS}/{room_id}", headers=h)
            assert r.status_code == 307
            await resident.close()

            # following the redirect (as fetch does for a 307) joins on the room's worker
            resident = Participant(role="resident", video=True, audio=True)
            r = await resident.join(a.http, room_id, token)
            assert r.status_code == 200, r.text
            await resident.connected()
            assert len(a.rooms.rooms[uuid.UUID(room_id)].participants) == 1
            await resident.close()
    run(scenario())


def test_a_worker_without_url_refuses_instead_of_redirecting(live, world, order):
    async def scenario() -> None:
        async with live(video_worker_id="relay-a") as a, live(video_worker_id="relay-b") as b:
            h = world.headers(world.steward_a)
            room_id = (await a.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)).json()["room_id"]
            assert_error(await b.http.post(f"{ROOMS}/{room_id}/close", headers=h), 409, "room_elsewhere")
            assert (await a.http.post(f"{ROOMS}/{room_id}/close", headers=h)).json()["state"] == "closed"
            # once closed, any worker answers about it
            r = await b.http.get(f"{ROOMS}/{room_id}", headers=h)
            assert r.status_code == 200 and r.json()["state"] == "closed"
    run(scenario())


def test_the_processes_of_a_multi_worker_server_never_close_each_others_calls(live, world, order, engine):
    """Regression (multi-process review): `steward serve --workers 2` runs two processes on one port, under one
    relay name (`<hostname>:<port>`) that neither can be reached by. A call opened on one was taken by the
    other for its own: a second `POST /rooms` for the order that landed there closed the live call as lost and
    opened another, and a worker that uvicorn started again (after one died) closed every sibling's call at
    its start. Now such processes host no calls, and say why."""
    from sqlmodel import Session, select

    from video.models import VideoRoom

    same = {"video_worker_id": "", "serve_workers": 2}  # what every worker process of the server reads

    def hosted(app) -> set[uuid.UUID]:
        manager = app.app.state.video_rooms
        return set(manager.rooms) if manager is not None else set()

    async def scenario() -> None:
        h = world.headers(world.steward_a)
        async with live(**same) as a, live(**same) as b:
            first = await a.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)
            second = await b.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)
            async with live(**same):  # a worker started again by uvicorn after one died
                pass
            with Session(engine) as s:
                closed = {r.id for r in s.exec(select(VideoRoom).where(VideoRoom.state != "open")).all()}
            assert not (hosted(a) | hosted(b)) & closed, "a live call was closed by another process"
            for answer in (first, second):
                detail = assert_error(answer, 503, "relay_unavailable")
                assert "--workers" in detail["message"]
    run(scenario())


def test_a_closed_calls_record_is_answered_by_a_server_that_relays_no_calls(live, world, order):
    """Regression (review): a `--workers N` server (relay off) answered 503 `relay_unavailable` for
    GET /rooms/{id} and POST /rooms/{id}/close of a call closed long ago; any process answers a closed room."""
    async def scenario() -> None:
        h = world.headers(world.steward_a)
        async with live(video_worker_id="relay-a") as a:
            rid = (await a.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)).json()["room_id"]
            assert (await a.http.post(f"{ROOMS}/{rid}/close", headers=h)).json()["state"] == "closed"
        async with live(video_worker_id="", serve_workers=2) as multi:
            r = await multi.http.get(f"{ROOMS}/{rid}", headers=h)
            assert r.status_code == 200 and r.json()["state"] == "closed", r.text
            r = await multi.http.post(f"{ROOMS}/{rid}/close", headers=h)  # idempotent
            assert r.status_code == 200 and r.json()["close_reason"] == "closed", r.text
            assert_error(await multi.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h),
                         503, "relay_unavailable")  # a new call still needs a relay
    run(scenario())


def test_no_link_is_given_to_another_workers_call_past_its_end(live, world, order, engine):
    """Regression (review): POST /rooms answered the order's open room with a 'fresh' link while that room
    (hosted by another worker, still saving its time-limit close) was past its end: the SMS held a link
    expired on arrival. Now 409 `room_closing` with Retry-After, and nothing is written."""
    from datetime import timedelta

    from sqlmodel import Session, select

    from api.db import utcnow
    from video.models import VideoRoom

    now = utcnow()
    with Session(engine) as s:  # relay-b's 60-minute call hit its end 30 s ago; its mix-down is still running
        s.add(VideoRoom(work_order_id=order.id, worker="relay-b", worker_url="http://relay-b.test",
                        created_at=now - timedelta(minutes=60, seconds=30), expires_at=now - timedelta(seconds=30)))
        s.commit()

    async def scenario() -> None:
        async with live(video_worker_id="relay-a") as a:
            r = await a.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=world.headers(world.steward_a))
            assert_error(r, 409, "room_closing")
            assert r.headers["Retry-After"] == "30"
    run(scenario())
    with Session(engine) as s:
        rows = s.exec(select(VideoRoom).where(VideoRoom.work_order_id == order.id)).all()
        assert [(r.worker, r.state) for r in rows] == [("relay-b", "open")]


def test_a_call_being_closed_on_another_worker_gets_no_new_link(live, world, order, engine, monkeypatch):
    """Regression (review): the row of a closed call stayed open while its relay mixed the recording down (~36 s
    for an hour-long call): POST /rooms on another worker meanwhile answered 200 with that call and a fresh
    join link, dead on arrival (409 `room_closed`). The close is recorded first; the other worker opens a new
    call at once."""
    import asyncio
    import time

    from video import recording

    async def scenario() -> None:
        async with live(video_worker_id="relay-a", video_worker_url="http://relay-a.test") as a, \
                live(video_worker_id="relay-b", video_worker_url="http://relay-b.test") as b:
            h = world.headers(world.steward_a)
            room_id = (await a.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)).json()["room_id"]
            stop = recording.PacketRecorder.stop

            def slow_stop(self):  # a long call's mix-down
                time.sleep(1.5)
                return stop(self)

            monkeypatch.setattr(recording.PacketRecorder, "stop", slow_stop)
            closing = asyncio.ensure_future(a.http.post(f"{ROOMS}/{room_id}/close", headers=h))
            while a.rooms.ending(uuid.UUID(room_id)) is None:
                await asyncio.sleep(0.005)
            await eventually(lambda: _state(engine, room_id) == "closed", timeout=5)  # recorded before the mix-down
            assert not closing.done()  # still mixing down
            again = await b.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)
            assert (await closing).json()["state"] == "closed"
            assert again.status_code == 201, again.text
            assert again.json()["room_id"] != room_id
            token = again.json()["join_url"].rsplit("/join/", 1)[1]
            assert (await b.http.get(f"/api/v1/video/join/{token}")).status_code == 200
    run(scenario())


def _state(engine, room_id: str) -> str:
    from sqlmodel import Session

    from video.models import VideoRoom

    with Session(engine) as s:
        room = s.get(VideoRoom, uuid.UUID(room_id))
        return room.state.value if room else ""


def test_a_resident_in_a_call_abandoned_by_its_relay_is_told_it_ended(live, world, order, engine, video_settings):
    """Regression (review): `GET /join/{token}?in_call=1` did not close an abandoned room (its relay gone, past
    its end by more than five minutes) as every other request about a room does: the resident page was sent
    (307) to the dead relay again and again instead of hearing that the call ended."""
    from datetime import timedelta

    from sqlmodel import Session

    from api.db import utcnow
    from video.models import VideoRoom
    from video.tokens import create_join_token

    now = utcnow()
    with Session(engine) as s:
        room = VideoRoom(work_order_id=order.id, worker="relay-gone", worker_url="http://relay-gone.test",
                         created_at=now - timedelta(minutes=70), expires_at=now - timedelta(minutes=10))
        s.add(room)
        s.commit()
        token, _ = create_join_token(settings=video_settings, room_id=room.id,
                                     room_expires_at=now + timedelta(minutes=1))  # a link from its start

    async def scenario() -> None:
        async with live(video_worker_id="relay-a") as a:
            r = await a.http.get(f"/api/v1/video/join/{token}", params={"in_call": 1})
            assert_error(r, 409, "room_closed")
            room_state = await a.http.get(f"{ROOMS}/{room.id}", headers=world.headers(world.steward_a))
            assert room_state.json()["close_reason"] == "lost", room_state.text
    run(scenario())
