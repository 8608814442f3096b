"""Calls closed, joined and opened at the same moment (regressions found by a review): every answer in the one
error shape, one close with its recording, one resident, no connection left in a closed room."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from tests.utils.asserts import assert_error
from tests.video.conftest import run
from tests.video.test_relay import ROOMS, in_call, joined, open_room
from video.clients import Participant
from video.models import CloseReason


def test_two_closes_at_once_both_answer_the_closed_call(live, world, order) -> None:
    """The second close returned at once, while the first was still saving the recording: it answered the call
    as open, with no recording."""
    async def scenario() -> None:
        async with live() as app:
            room_id, _token, resident, steward = await in_call(app, world, order)
            await asyncio.sleep(1.0)
            answers = await asyncio.gather(*(app.http.post(f"{ROOMS}/{room_id}/close", headers=world.headers(who))
                                             for who in (world.steward_a, world.supervisor)))
            for client in (resident, steward):
                await client.close()
            bodies = [r.json() for r in answers]
            assert [r.status_code for r in answers] == [200, 200]
            assert [b["state"] for b in bodies] == ["closed", "closed"]
            assert bodies[0]["recording_note_id"] is not None
            assert bodies[0]["recording_note_id"] == bodies[1]["recording_note_id"]
    run(scenario())


def test_a_snapshot_awaiting_a_picture_when_the_call_ends_is_a_clear_409(live, world, order) -> None:
    """The waiting snapshot was cancelled by the close, and CancelledError passed every error handler: a bare
    500 in plain text."""
    async def scenario() -> None:
        async with live() as app:
            room_id, token = await open_room(app, world, order)
            resident = await joined(Participant(role="resident", video=True, audio=True, fps=1), app, room_id,
                                    token)
            headers = world.headers(world.steward_a)
            snapshot = asyncio.ensure_future(app.http.post(f"{ROOMS}/{room_id}/snapshot", headers=headers))
            await asyncio.sleep(0.05)
            closed = await app.http.post(f"{ROOMS}/{room_id}/close", headers=headers)
            assert closed.status_code == 200, closed.text
            answer = await snapshot
            await resident.close()
            if answer.status_code != 201:  # the picture came first: a snapshot taken just before the end is fine
                assert_error(answer, 409, "room_closed")
    run(scenario())


def test_two_rejoins_at_once_leave_one_resident(live, world, order) -> None:
    """Both rejoins passed the check while the resident they replaced was being closed, and both went in."""
    async def scenario() -> None:
        async with live() as app:
            room_id, token = await open_room(app, world, order)
            first = await joined(Participant(role="resident", video=True, audio=True), app, room_id, token)
            again = [Participant(role="resident", video=True, audio=True) for _ in range(2)]
            answers = await asyncio.gather(*(c.join(app.http, room_id, token) for c in again))
            room = app.rooms.get(uuid.UUID(room_id))
            roles = [p.role.value for p in room.participants.values()]
            for client in (first, *again):
                await client.close()
            assert [r.status_code for r in answers] == [200, 200]
            assert roles == ["resident"]
    run(scenario())


def test_a_rejoin_while_the_call_closes_is_refused_and_leaves_nothing(live, world, order) -> None:
    """The call closed while a rejoin was closing the resident it replaced; the newcomer then went into the
    closed room (gone from the relay), its connection never closed, and the client was told 200."""
    async def scenario() -> None:
        async with live() as app:
            room_id, token = await open_room(app, world, order)
            first = await joined(Participant(role="resident", video=True, audio=True), app, room_id, token)
            room = app.rooms.get(uuid.UUID(room_id))
            old = next(iter(room.participants.values()))
            close_pc = old.pc.close

            async def slow_close() -> None:  # as a real peer connection's close can be
                await asyncio.sleep(0.3)
                await close_pc()

            old.pc.close = slow_close  # type: ignore[method-assign]
            newcomer = Participant(role="resident", video=True, audio=True)
            joining = asyncio.ensure_future(newcomer.join(app.http, room_id, token))
            while not old.closed:
                await asyncio.sleep(0.005)
            closed = await app.http.post(f"{ROOMS}/{room_id}/close", headers=world.headers(world.steward_a))
            answer = await joining
            left = list(room.participants.values())
            for client in (first, newcomer):
                await client.close()
            assert closed.status_code == 200 and closed.json()["state"] == "closed"
            assert left == []
            if answer.status_code != 200:
                assert_error(answer, 409, "room_closed")
    run(scenario())


def test_opening_a_call_while_the_last_one_is_being_saved_does_not_lose_it(live, world, order, monkeypatch) -> None:
    """A new call asked for while the last one's recording was still being saved found that row open and not
    relayed, and closed it as `lost`. Now it waits for that close and opens a new call."""
    from video import recording

    async def scenario() -> None:
        async with live() as app:
            room_id, token = await open_room(app, world, order)
            resident = await joined(Participant(role="resident", video=True, audio=True), app, room_id, token)
            await asyncio.sleep(0.5)
            stop = recording.PacketRecorder.stop

            def slow_stop(self: recording.PacketRecorder) -> object:  # a long call's mix-down
                import time
                time.sleep(1.0)
                return stop(self)

            monkeypatch.setattr(recording.PacketRecorder, "stop", slow_stop)
            headers = world.headers(world.steward_a)
            closing = asyncio.ensure_future(app.http.post(f"{ROOMS}/{room_id}/close", headers=headers))
            await asyncio.sleep(0.2)
            reopened = await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=headers)
            closed = await closing
            await resident.close()
            assert closed.status_code == 200 and closed.json()["close_reason"] == CloseReason.closed.value
            assert reopened.status_code == 201, reopened.text
            assert reopened.json()["room_id"] != room_id
    run(scenario())


def test_the_reaper_does_not_wait_for_a_long_recording_to_be_saved() -> None:
    """The reaper awaited each close, recording included: while a long call was mixed down, no other room was
    closed and no vanished participant dropped. Two rooms due at once now close side by side."""
    import time
    from datetime import timedelta

    from api.db import utcnow
    from video.relay import Room, RoomManager

    saved: list[uuid.UUID] = []

    async def slow_save(room: Room) -> None:  # a long call's mix-down
        await asyncio.sleep(0.5)
        saved.append(room.id)

    async def scenario() -> None:
        manager = RoomManager(max_rooms=4, idle_close_s=60, on_close=slow_save)
        rooms = [manager.add(Room(id=uuid.uuid4(), work_order_id=uuid.uuid4(), expires_at=utcnow() - timedelta(
            seconds=1), max_participants=4, connect_timeout_s=5, ice_servers=[])) for _ in range(2)]
        started = time.monotonic()
        await manager.reap_once()
        assert time.monotonic() - started < 0.3
        await manager.reap_once()  # again while they close: no second close
        await manager.aclose()
        assert time.monotonic() - started < 0.9  # side by side, not one after the other
        assert sorted(saved) == sorted(r.id for r in rooms)
        assert all(r.closed and r.close_reason == CloseReason.max_duration for r in rooms)
        assert manager.rooms == {}
    run(scenario())


def test_a_room_whose_close_fails_still_ends_and_frees_its_place() -> None:
    """A failure inside a room's close was re-raised to every later close (a 500 each), and the room kept its
    place among the relay's rooms until a restart."""
    from datetime import timedelta

    from api.db import utcnow
    from video.relay import Room, RoomManager

    saved: list[uuid.UUID] = []

    async def save(room: Room) -> None:
        saved.append(room.id)

    async def scenario() -> None:
        manager = RoomManager(max_rooms=1, idle_close_s=60, on_close=save)
        room = manager.add(Room(id=uuid.uuid4(), work_order_id=uuid.uuid4(), expires_at=utcnow() + timedelta(
            minutes=5), max_participants=4, connect_timeout_s=5, ice_servers=[]))

        async def broken() -> None:
            raise RuntimeError("a slot would not close")

        room._close = broken  # type: ignore[method-assign]
        assert await manager.close(room.id, CloseReason.closed) is room
        assert saved == [room.id] and manager.rooms == {}
        manager.reserve()  # its place is free again
        assert await manager.close(room.id, CloseReason.closed) is None
    run(scenario())


def test_opening_a_call_while_the_last_one_hangs_up_gives_a_new_call(live, world, order, monkeypatch) -> None:
    """Regression: a closing room stays among the relay's rooms until its peers hung up, and a call asked for
    then was answered with it: 200, a fresh link to a call that was ending."""
    async def scenario() -> None:
        async with live() as app:
            room_id, _token = await open_room(app, world, order)
            room = app.rooms.get(uuid.UUID(room_id))
            hang_up = room._close

            async def slow_hang_up() -> None:  # hanging up real peers takes a moment
                await asyncio.sleep(0.3)
                await hang_up()

            monkeypatch.setattr(room, "_close", slow_hang_up)
            headers = world.headers(world.steward_a)
            closing = asyncio.ensure_future(app.http.post(f"{ROOMS}/{room_id}/close", headers=headers))
            while not room.closed:
                await asyncio.sleep(0.005)
            again = await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=headers)
            assert (await closing).status_code == 200
            assert again.status_code == 201 and again.json()["room_id"] != room_id, again.text
            assert app.rooms.get(uuid.UUID(again.json()["room_id"])) is not None
    run(scenario())


def test_saving_one_calls_recording_holds_up_no_other_orders_call(live, world, order, session, monkeypatch) -> None:
    """Regression: a call asked for while its order's last call was being saved waited for that save holding
    the lock every opening takes, so calls about every other work order waited for one call's mix-down."""
    import time

    from api.work_orders.models import Status
    from tests.utils.factories import make_work_order
    from video import recording

    other = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)

    async def scenario() -> None:
        async with live() as app:
            room_id, _token = await open_room(app, world, order)
            stop = recording.PacketRecorder.stop

            def slow_stop(self: recording.PacketRecorder) -> object:  # a long call's mix-down
                time.sleep(1.5)
                return stop(self)

            monkeypatch.setattr(recording.PacketRecorder, "stop", slow_stop)
            headers = world.headers(world.steward_a)
            closing = asyncio.ensure_future(app.http.post(f"{ROOMS}/{room_id}/close", headers=headers))
            await asyncio.sleep(0.2)
            reopening = asyncio.ensure_future(app.http.post(ROOMS, json={"work_order_id": str(order.id)},
                                                            headers=headers))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            r = await app.http.post(ROOMS, json={"work_order_id": str(other.id)}, headers=headers)
            waited = time.monotonic() - started
            assert (await closing).status_code == 200
            reopened = await reopening
            assert r.status_code == 201 and waited < 0.8, (r.status_code, waited)
            assert reopened.status_code == 201 and reopened.json()["room_id"] != room_id, reopened.text
    run(scenario())


def test_a_call_being_saved_reads_closed_to_everyone(live, world, order, monkeypatch) -> None:
    """Regression: while a closing call's recording was saved, GET /rooms/{id} said `open` (no reason) and the
    resident page's GET /join said the call was still on."""
    import time

    from video import recording

    async def scenario() -> None:
        async with live() as app:
            room_id, token = await open_room(app, world, order)
            stop = recording.PacketRecorder.stop

            def slow_stop(self: recording.PacketRecorder) -> object:  # a long call's mix-down
                time.sleep(1.0)
                return stop(self)

            monkeypatch.setattr(recording.PacketRecorder, "stop", slow_stop)
            headers = world.headers(world.steward_a)
            closing = asyncio.ensure_future(app.http.post(f"{ROOMS}/{room_id}/close", headers=headers))
            while app.rooms.ending(uuid.UUID(room_id)) is None:
                await asyncio.sleep(0.005)
            during = await app.http.get(f"{ROOMS}/{room_id}", headers=headers)
            join = await app.http.get(f"/api/v1/video/join/{token}", params={"in_call": 1})
            assert not closing.done()  # both asked while the recording was being saved
            assert during.status_code == 200, during.text
            assert (during.json()["state"], during.json()["close_reason"]) == ("closed", "closed")
            assert during.json()["participants"] == []
            assert_error(join, 409, "room_closed")
            closed = await closing
            after = await app.http.get(f"{ROOMS}/{room_id}", headers=headers)
            assert (after.json()["state"], after.json()["close_reason"]) == ("closed", "closed")
            assert after.json()["closed_at"] is not None and after.json() == closed.json()
            assert app.rooms.ending(uuid.UUID(room_id)) is None
    run(scenario())


def test_shutdown_closes_the_rooms_side_by_side() -> None:
    """Regression: shutdown closed the rooms one after another, so N calls' recordings took N mix-downs,
    past the container's stop timeout (the last calls' audio was killed with the process)."""
    import time
    from datetime import timedelta

    from api.db import utcnow
    from video.relay import Room, RoomManager

    saved: list[uuid.UUID] = []

    async def slow_save(room: Room) -> None:
        await asyncio.sleep(0.5)
        saved.append(room.id)

    async def scenario() -> None:
        manager = RoomManager(max_rooms=4, idle_close_s=60, on_close=slow_save)
        rooms = [manager.add(Room(id=uuid.uuid4(), work_order_id=uuid.uuid4(), expires_at=utcnow() + timedelta(
            minutes=5), max_participants=4, connect_timeout_s=5, ice_servers=[])) for _ in range(3)]
        started = time.monotonic()
        await manager.aclose()
        assert time.monotonic() - started < 0.9  # 1.5 s one after another
        assert sorted(saved) == sorted(r.id for r in rooms) and manager.rooms == {}
        assert all(r.close_reason == CloseReason.shutdown for r in rooms)
    run(scenario())


def test_requests_waiting_for_a_close_leave_it_a_connection(video_settings, engine, world, order,
                                                            monkeypatch) -> None:
    """Regression (review): POST /rooms and POST /close waited for a call's close holding their session, each
    with a pooled connection idle in transaction and a session slot. With as many of them as the pool has
    connections, the close (which saves on a connection of its own) found none and failed after the pool's
    30 s timeout: the close answered `open`, the call was later closed as `lost`, and every other request
    waited for a slot meanwhile. Now they wait holding neither."""
    import threading

    import httpx

    from api.app import create_app
    from api.db import make_engine
    from api.notices.sms import LoggingSender
    from video import recording, service

    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's pool never makes a request wait for a connection")
    settings = video_settings.model_copy(update={"db_pool_size": 1})  # 1 + 1 overflow: two connections, two slots
    small = make_engine(settings)
    saving, asked = threading.Event(), threading.Event()
    stop, create_room = recording.PacketRecorder.stop, service.create_room

    def held_stop(self: recording.PacketRecorder) -> object:  # a long call's mix-down, until the test lets go
        saving.wait(60)
        return stop(self)

    def noted_create_room(**kwargs: object) -> object:
        try:
            return create_room(**kwargs)  # type: ignore[arg-type]
        finally:
            asked.set()

    async def scenario() -> None:
        app = create_app(settings, engine=small, sms_sender=LoggingSender())
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        async with app.router.lifespan_context(app), client as http:
            headers = world.headers(world.steward_a)
            room_id = (await http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=headers)
                       ).json()["room_id"]
            monkeypatch.setattr(recording.PacketRecorder, "stop", held_stop)
            monkeypatch.setattr(service, "create_room", noted_create_room)
            try:
                closing = asyncio.ensure_future(http.post(f"{ROOMS}/{room_id}/close", headers=headers))
                while app.state.video_rooms.closing(uuid.UUID(room_id)) is None:
                    await asyncio.sleep(0.01)
                reopening = asyncio.ensure_future(http.post(ROOMS, json={"work_order_id": str(order.id)},
                                                            headers=headers))
                while not asked.is_set():  # it found the call closing, and waits for that close
                    await asyncio.sleep(0.01)
                # Both wait for the close: an unrelated request still gets a slot (it waited for ever before).
                other = await asyncio.wait_for(http.get("/api/v1/work-orders", headers=headers), 20)
                assert other.status_code == 200, other.text
            finally:
                saving.set()
            closed, reopened = await closing, await reopening
            assert closed.status_code == 200, closed.text
            assert (closed.json()["state"], closed.json()["close_reason"]) == ("closed", "closed")
            assert reopened.status_code == 201 and reopened.json()["room_id"] != room_id, reopened.text

    try:
        run(scenario(), timeout=120)
    finally:
        small.dispose()


@pytest.mark.parametrize("route", ["connect", "snapshot", "leave"])
def test_requests_awaiting_the_relay_leave_the_pool_to_others(video_settings, engine, world, order, monkeypatch,
                                                              route) -> None:
    """Regression (review): POST /connect (its peer connection set up, ICE candidates gathered) and POST
    /snapshot (a picture awaited up to 5 s) held their request session while they awaited the relay, each with
    a session slot and a pooled connection idle in transaction. With as many of them as the pool has
    connections, every other request of the process waited for a slot, and a call's close (which saves on a
    connection of its own) failed after the pool's timeout. Now they await the relay holding neither. The same
    for POST /leave, which held its session while the participant's peer connection closed."""
    import httpx

    from api.app import create_app
    from api.db import make_engine
    from api.notices.sms import LoggingSender
    from video.relay import Room, RoomManager
    from video.tracks import SourceSlot

    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's pool never makes a request wait for a connection")
    settings = video_settings.model_copy(update={"db_pool_size": 1})  # 1 + 1 overflow: two connections, two slots
    small = make_engine(settings)
    arrived: list[None] = []
    both, release = asyncio.Event(), asyncio.Event()  # the routes run on the test's loop (ASGI transport)
    connect, fresh_frame = Room.connect, SourceSlot.fresh_frame

    async def held(original: Any, *args: Any, **kwargs: Any) -> Any:  # the relay's work, until the test lets go
        arrived.append(None)
        if len(arrived) == 2:
            both.set()
        await release.wait()
        return await original(*args, **kwargs)

    async def scenario() -> None:
        app = create_app(settings, engine=small, sms_sender=LoggingSender())
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        async with app.router.lifespan_context(app), client as http:
            headers = world.headers(world.steward_a)
            room_id = (await http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=headers)
                       ).json()["room_id"]
            monkeypatch.setattr(Room, "connect", lambda *a, **k: held(connect, *a, **k))
            monkeypatch.setattr(SourceSlot, "fresh_frame", lambda *a, **k: held(fresh_frame, *a, **k))
            left: list[uuid.UUID] = []
            if route == "leave":  # each caller has a seat in the live room; hanging up awaits their peer connection
                seats = {uuid.uuid4(): who for who in (world.steward_a, world.supervisor)}

                async def remove(participant: Any) -> None:
                    await held(lambda: asyncio.sleep(0))
                    left.append(participant.id)

                live = SimpleNamespace(participants={pid: SimpleNamespace(id=pid, user_id=who.id)
                                                     for pid, who in seats.items()}, remove=remove)
                monkeypatch.setattr(RoomManager, "get", lambda self, id: live if str(id) == room_id else None)

            def ask(who: Any) -> asyncio.Future[httpx.Response]:
                if route == "leave":
                    pid = next(p for p, w in seats.items() if w is who)
                    return asyncio.ensure_future(http.post(f"{ROOMS}/{room_id}/leave", headers=world.headers(who),
                                                           params={"participant_id": str(pid)}))
                if route == "connect":  # an offer the relay refuses once it looks at it
                    return asyncio.ensure_future(http.post(f"{ROOMS}/{room_id}/connect", headers=world.headers(who),
                                                           json={"sdp": "v=0", "type": "offer"}))
                return asyncio.ensure_future(http.post(f"{ROOMS}/{room_id}/snapshot", headers=world.headers(who)))

            waiting = [ask(world.steward_a), ask(world.supervisor)]
            try:
                await asyncio.wait_for(both.wait(), 20)
                # Both await the relay: an unrelated request still gets a slot (it waited for ever before).
                other = await asyncio.wait_for(http.get("/api/v1/work-orders", headers=headers), 20)
                assert other.status_code == 200, other.text
            finally:
                release.set()
            for answer in await asyncio.gather(*waiting):  # answered as before
                if route == "leave":
                    assert answer.status_code == 204, answer.text
                elif route == "connect":
                    assert_error(answer, 400, "invalid_sdp")
                else:  # no resident in the call
                    assert_error(answer, 409, "no_video")
            if route == "leave":
                assert sorted(left) == sorted(seats)

    try:
        run(scenario(), timeout=120)
    finally:
        small.dispose()
