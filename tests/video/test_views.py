"""The rooms API without media: who may open, see, close and join a room, tokens, limits, bad SDP."""

from __future__ import annotations

import asyncio
import errno
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from api.app import create_app
from api.db import utcnow
from api.security import create_access_token
from api.settings import Settings
from api.work_orders.models import Status
from tests.conftest import TEST_SECRET
from tests.utils.asserts import assert_error, count_rows, reread
from tests.utils.factories import World, make_work_order
from tests.video.conftest import eventually, run
from video.clients import Participant
from video.models import CloseReason, RoomState, VideoRoom
from video.service import recordings_dir
from video.tokens import JOIN_TYPE

ROOMS = "/api/v1/video/rooms"


def token_of(join_url: str) -> str:
    return join_url.rsplit("/join/", 1)[1]


def bearer(world: World, user: object) -> str:
    return world.headers(user)["Authorization"].split()[1]  # type: ignore[arg-type]


def test_create_room_gives_a_join_link_and_sms_and_reuses_the_open_room(live, world, order, session: Session):
    async def scenario() -> None:
        async with live(video_public_url="https://steward.example.cn/") as app:
            r = await app.http.post(ROOMS, json={"work_order_id": str(order.id)},
                                    headers=world.headers(world.steward_a))
            assert r.status_code == 201, r.text
            body = r.json()
            assert body["join_url"].startswith("https://steward.example.cn/join/")
            assert body["join_url"] in body["sms_text"] and "摄像头" in body["sms_text"]
            claims = jwt.decode(token_of(body["join_url"]), TEST_SECRET, algorithms=["HS256"])
            assert claims["typ"] == JOIN_TYPE and claims["sub"] == body["room_id"] and claims["role"] == "resident"
            assert 29 * 60 <= claims["exp"] - claims["iat"] <= 30 * 60
            assert body["ice_servers"] == []
            # the supervisor asking again gets the same open room, with a fresh link
            again = await app.http.post(ROOMS, json={"work_order_id": str(order.id)},
                                        headers=world.headers(world.supervisor))
            assert again.status_code == 200 and again.json()["room_id"] == body["room_id"]
            assert len(app.rooms.rooms) == 1
    run(scenario())
    room = reread(session, VideoRoom, session.exec(select(VideoRoom.id)).one())
    assert room.created_by_id == world.steward_a.id and room.worker == "test-worker"


def test_rooms_follow_work_order_scope(live, world, order, session: Session):
    closed = make_work_order(session, world.household_a, status=Status.closed, assignee=world.steward_a)

    async def scenario() -> None:
        async with live() as app:
            r = await app.http.post(ROOMS, json={"work_order_id": str(order.id)},
                                    headers=world.headers(world.steward_b))
            assert_error(r, 404, "not_found")
            r = await app.http.post(ROOMS, json={"work_order_id": str(closed.id)},
                                    headers=world.headers(world.steward_a))
            assert_error(r, 409, "work_order_closed")
            r = await app.http.post(ROOMS, json={"work_order_id": str(order.id)})
            assert_error(r, 401, "not_authenticated")
            room_id = (await app.http.post(ROOMS, json={"work_order_id": str(order.id)},
                                           headers=world.headers(world.steward_a))).json()["room_id"]
            assert_error(await app.http.get(f"{ROOMS}/{room_id}", headers=world.headers(world.steward_b)),
                         404, "not_found")
            assert_error(await app.http.post(f"{ROOMS}/{room_id}/close", headers=world.headers(world.steward_b)),
                         404, "not_found")
            r = await app.http.get(f"{ROOMS}/{room_id}", headers=world.headers(world.supervisor))
            assert r.status_code == 200 and r.json()["participants"] == [] and r.json()["state"] == "open"
    run(scenario())
    assert count_rows(session, VideoRoom) == 1


def test_join_token_misuse_is_refused(live, world, order, session: Session):
    other_order = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)

    async def scenario() -> None:
        async with live() as app:
            h = world.headers(world.steward_a)
            room = (await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)).json()
            other = (await app.http.post(ROOMS, json={"work_order_id": str(other_order.id)}, headers=h)).json()
            token = token_of(room["join_url"])
            now = utcnow()
            expired = jwt.encode({"sub": room["room_id"], "typ": JOIN_TYPE, "role": "resident",
                                  "iat": now - timedelta(hours=1), "exp": now - timedelta(minutes=1)},
                                 TEST_SECRET, algorithm="HS256")
            forged = jwt.encode({"sub": room["room_id"], "typ": JOIN_TYPE, "role": "resident",
                                 "exp": now + timedelta(minutes=10)}, "another-secret-that-is-long-enough-0123456789",
                                algorithm="HS256")
            offer = {"sdp": "v=0\r\n", "type": "offer"}

            async def connect(room_id: str, tok: str | None, **extra: object):
                headers = {"Authorization": f"Bearer {tok}"} if tok else {}
                return await app.http.post(f"{ROOMS}/{room_id}/connect", json=offer | extra, headers=headers)

            assert_error(await connect(room["room_id"], expired), 401, "join_link_expired")
            assert_error(await connect(room["room_id"], forged), 401, "invalid_token")
            assert_error(await connect(room["room_id"], "not-a-jwt"), 401, "invalid_token")
            assert_error(await connect(room["room_id"], None), 401, "not_authenticated")
            assert_error(await connect(other["room_id"], token), 403, "wrong_room")
            assert_error(await connect(room["room_id"], token, role="steward"), 403, "role_not_allowed")
            assert_error(await connect(room["room_id"], bearer(world, world.steward_a), role="resident"),
                         403, "role_not_allowed")
            assert_error(await connect(room["room_id"], bearer(world, world.steward_a), role="supervisor"),
                         403, "role_not_allowed")
            assert_error(await connect(room["room_id"], bearer(world, world.steward_b)), 404, "not_found")
            # an access token whose user was deleted / a token of the wrong kind
            ghost, _ = create_access_token(settings=world.settings, user_id=uuid.uuid4(), role="steward")
            assert_error(await connect(room["room_id"], ghost), 401, "inactive_user")
            # the resident page's check says the same things
            info = await app.http.get(f"/api/v1/video/join/{token}")
            assert info.status_code == 200 and info.json()["room_id"] == room["room_id"]
            assert_error(await app.http.get(f"/api/v1/video/join/{expired}"), 401, "join_link_expired")
            assert_error(await app.http.get(f"/api/v1/video/join/{forged}"), 401, "invalid_token")
            # Regression: links last 30 minutes, calls up to 60; the page in a call asks every 3 s, and at the
            # link's expiry it hung up on a call still open. In a call (`in_call`) the expiry does not matter:
            # the room's state is the answer, without ICE servers; connecting again still needs a valid link.
            going = await app.http.get(f"/api/v1/video/join/{expired}", params={"in_call": "1"})
            assert going.status_code == 200 and going.json()["state"] == "open", going.text
            assert going.json()["ice_servers"] == []
            assert_error(await app.http.get(f"/api/v1/video/join/{forged}", params={"in_call": "1"}), 401,
                         "invalid_token")
            await app.http.post(f"{ROOMS}/{room['room_id']}/close", headers=h)
            assert_error(await app.http.get(f"/api/v1/video/join/{token}"), 409, "room_closed")
            assert_error(await app.http.get(f"/api/v1/video/join/{expired}", params={"in_call": "1"}), 409,
                         "room_closed")
            assert_error(await connect(room["room_id"], token), 409, "room_closed")
            assert all(not r.participants for r in app.rooms.rooms.values())
    run(scenario())


BAD_OFFERS = {
    "garbage": "this is not SDP",
    "no media": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
    "no fingerprint": ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
                       "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n"
                       "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=rtpmap:96 VP8/90000\r\n"),
}


def _broken_in_one_line(lines: list[str]) -> dict[str, list[str]]:
    def replaced(prefix: str, by: str) -> list[str]:
        at = next(i for i, line in enumerate(lines) if line.startswith(prefix))
        return [*lines[:at], by, *lines[at + 1:]]

    return {"empty c=": replaced("c=", "c="), "empty candidate": replaced("a=candidate:", "a=candidate:"),
            "empty m=": replaced("m=audio", "m="),
            "fmtp without its rtpmap": [line for line in lines if "rtx/90000" not in line],
            "audio m-line missing": [line for line in lines if not line.startswith("m=audio")]}


def test_a_resident_in_a_call_past_the_links_expiry_can_still_hang_up(live, world, order):
    """Regression: calls may outlast their link (30 against 60 minutes), but hanging up (`leave`) checked the
    link's expiry: 401, and the steward's room kept showing the resident. Joining again is still refused."""
    async def scenario() -> None:
        async with live(video_join_token_minutes=0.03) as app:  # 1.8 s
            room = (await app.http.post(ROOMS, json={"work_order_id": str(order.id)},
                                        headers=world.headers(world.steward_a))).json()
            token = token_of(room["join_url"])
            resident = Participant(role="resident", video=True, audio=True)
            try:
                assert (await resident.join(app.http, room["room_id"], token)).status_code == 200
                await asyncio.sleep(2.5)
                relay_room = app.rooms.get(uuid.UUID(room["room_id"]))
                assert relay_room is not None and len(relay_room.participants) == 1
                r = await app.http.post(f"{ROOMS}/{room['room_id']}/leave",
                                        params={"participant_id": str(resident.participant_id)},
                                        headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 204, r.text
                assert not relay_room.participants
                again = await app.http.post(f"{ROOMS}/{room['room_id']}/connect",
                                            json={"sdp": "v=0\r\n", "type": "offer"},
                                            headers={"Authorization": f"Bearer {token}"})
                assert_error(again, 401, "join_link_expired")
            finally:
                await resident.close()
    run(scenario())


def test_malformed_sdp_is_a_400_and_leaves_no_participant(live, world, order):
    async def scenario() -> None:
        async with live() as app:
            h = world.headers(world.steward_a)
            room = (await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)).json()
            token = token_of(room["join_url"])
            for name, sdp in BAD_OFFERS.items():
                r = await app.http.post(f"{ROOMS}/{room['room_id']}/connect", json={"sdp": sdp, "type": "offer"},
                                        headers={"Authorization": f"Bearer {token}"})
                detail = assert_error(r, 400, "invalid_sdp")
                assert "SDP" in detail["message"], name
            # a well-formed offer whose codecs the relay cannot take is refused the same way
            client = Participant(role="resident", video=True)
            await client.pc.setLocalDescription(await client.pc.createOffer())
            sdp = client.pc.localDescription.sdp.replace("VP8/90000", "XYZ9/90000").replace("H264/90000", "XYZ8/90000")
            r = await app.http.post(f"{ROOMS}/{room['room_id']}/connect", json={"sdp": sdp, "type": "offer"},
                                    headers={"Authorization": f"Bearer {token}"})
            assert_error(r, 400, "invalid_sdp")
            await client.close()
            # a real offer broken in one line: aiortc asserts, or fails deep inside createAnswer (these were 500s)
            client = Participant(role="resident", video=True, audio=True)
            await client.pc.setLocalDescription(await client.pc.createOffer())
            lines = client.pc.localDescription.sdp.split("\r\n")
            await client.close()
            for name, broken in _broken_in_one_line(lines).items():
                r = await app.http.post(f"{ROOMS}/{room['room_id']}/connect",
                                        json={"sdp": "\r\n".join(broken), "type": "offer"},
                                        headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 400 and r.json()["detail"]["code"] == "invalid_sdp", (name, r.text)
            r = await app.http.post(f"{ROOMS}/{room['room_id']}/connect", json={"sdp": "", "type": "offer"},
                                    headers={"Authorization": f"Bearer {token}"})
            assert_error(r, 422, "validation_error")
            relay_room = app.rooms.get(uuid.UUID(room["room_id"]))
            assert relay_room is not None and relay_room.participants == {}
            assert all(slot.source is None for slot in relay_room.slots.values())
            assert (await app.http.get(f"{ROOMS}/{room['room_id']}", headers=h)).json()["participants"] == []
    run(scenario())


def test_room_and_participant_limits(live, world, order, session: Session):
    second = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)

    async def scenario() -> None:
        async with live(video_max_rooms=1, video_max_participants=2) as app:
            h = world.headers(world.steward_a)
            room = (await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)).json()
            r = await app.http.post(ROOMS, json={"work_order_id": str(second.id)}, headers=h)
            assert_error(r, 429, "too_many_rooms")
            assert r.headers["retry-after"] == "60"
            resident = Participant(role="resident", video=True, audio=True)
            steward = Participant(role="steward", audio=True)
            watcher = Participant(role="supervisor", receive_audio=2, receive_video=2)
            assert (await resident.join(app.http, room["room_id"], token_of(room["join_url"]))).status_code == 200
            assert (await steward.join(app.http, room["room_id"], bearer(world, world.steward_a))).status_code == 200
            r = await watcher.join(app.http, room["room_id"], bearer(world, world.supervisor))
            assert_error(r, 409, "room_full")
            # a second steward may not barge in; the same steward rejoining replaces its old connection
            other = Participant(role="steward", audio=True)
            r = await other.join(app.http, room["room_id"], bearer(world, world.supervisor))
            assert_error(r, 409, "steward_present")
            relay_room = app.rooms.get(uuid.UUID(room["room_id"]))
            assert relay_room is not None and len(relay_room.participants) == 2
            for client in (resident, steward, watcher, other):
                await client.close()
    run(scenario())
    # the refused room left nothing open behind it
    open_rooms = session.exec(select(VideoRoom).where(VideoRoom.state == RoomState.open)).all()
    assert [r.work_order_id for r in open_rooms] in ([], [order.id])
    assert all(r.work_order_id != second.id or r.state == RoomState.closed
               for r in session.exec(select(VideoRoom)).all())


def test_rooms_left_open_by_a_dead_process_are_closed_at_start(live, world, order, session: Session):
    now = utcnow()
    other_order = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)
    mine = VideoRoom(work_order_id=order.id, worker="test-worker", expires_at=now + timedelta(hours=1))
    theirs = VideoRoom(work_order_id=other_order.id, worker="other-worker", expires_at=now + timedelta(hours=1))
    session.add(mine)
    session.add(theirs)
    session.commit()

    async def scenario() -> None:
        async with live():
            pass
    run(scenario())
    assert reread(session, VideoRoom, mine.id).close_reason == CloseReason.lost
    assert reread(session, VideoRoom, theirs.id).state == RoomState.open


def test_a_worker_renamed_at_its_address_closes_the_rooms_left_there(live, world, order, session: Session):
    """Regression: a relay worker restarted at the same STEWARD_VIDEO_WORKER_URL under a new name (the default
    `<hostname>:<port>` of a recreated container) redirected every request for its old open rooms to itself,
    and the work order could get no new call until they expired. Rooms at its URL are its own lost rooms."""
    url = "http://relay-1.test:8000"
    now = utcnow()
    other_order = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)
    renamed = VideoRoom(work_order_id=order.id, worker="old-host:8000", worker_url=url,
                        expires_at=now + timedelta(hours=1))
    elsewhere = VideoRoom(work_order_id=other_order.id, worker="relay-2:8000", worker_url="http://relay-2.test:8000",
                          expires_at=now + timedelta(hours=1))
    session.add_all([renamed, elsewhere])
    session.commit()

    async def scenario() -> None:
        async with live(video_worker_id="new-host:8000", video_worker_url=url + "/") as app:
            h = world.headers(world.steward_a)
            r = await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)
            assert r.status_code == 201 and r.json()["room_id"] != str(renamed.id), r.text
    run(scenario())
    assert reread(session, VideoRoom, renamed.id).close_reason == CloseReason.lost
    assert reread(session, VideoRoom, elsewhere.id).state == RoomState.open


def test_a_worker_renamed_at_its_address_saves_the_recordings_it_kept(live, world, order, session: Session):
    """Regression (review): a recording kept after a failed save was retried only by a worker of the room's
    exact name; restarted at the same STEWARD_VIDEO_WORKER_URL under a new name (a recreated container), the
    worker skipped its own kept recordings every minute, silently, and the call never became a note. Those at
    its URL are its own now; another worker's are still left to that worker."""
    from video import service
    from video.recording import Recording

    url = "http://relay-1.test:8000"
    kept = world.settings.data_dir / "video-recordings"
    kept.mkdir(parents=True)
    other_order = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)
    rooms = {name: VideoRoom(work_order_id=o.id, created_by_id=world.steward_a.id, worker=name, worker_url=u,
                             state=RoomState.closed, close_reason=CloseReason.closed, closed_at=utcnow(),
                             expires_at=utcnow() + timedelta(hours=1))
             for name, u, o in (("old-host:8000", url, order), ("relay-2:8000", "http://relay-2.test:8000",
                                                                 other_order))}
    session.add_all(rooms.values())
    session.commit()
    for room in rooms.values():
        path = kept / f"{room.id}.ogg"
        path.write_bytes(b"OggS kept audio")
        service._keep(Recording(path, utcnow(), 2.0), room.id, CloseReason.closed)
    renamed, elsewhere = rooms["old-host:8000"], rooms["relay-2:8000"]

    async def scenario() -> None:
        async with live(video_worker_id="new-host:8000", video_worker_url=url + "/"):
            await eventually(lambda: not (kept / f"{renamed.id}.json").exists(), timeout=20)
    run(scenario())
    assert reread(session, VideoRoom, renamed.id).recording_note_id is not None
    assert sorted(p.name for p in kept.iterdir()) == sorted([f"{elsewhere.id}.json", f"{elsewhere.id}.ogg"])
    assert reread(session, VideoRoom, elsewhere.id).recording_note_id is None


def test_the_recordings_of_calls_cut_off_by_a_dead_process_are_saved_or_removed_at_start(
        live, world, order, session: Session):
    """Regression (review): a relay killed mid-call (SIGKILL, out of memory) left its calls' recordings in
    video-recordings/ for ever: the next start closed the rooms as `lost`, but the forward mode's packet file
    and the transcode mode's note being written have no `.json`, so nothing saved or removed them. Now what
    decodes becomes the call's note, and a file with nothing to save (a kill before the muxer flushed: empty)
    is removed; another worker's call is left alone."""
    import time

    from api.notes.models import Note, NoteKind
    from tests.video.test_recording import opus_packets, tone_frame
    from video.aiortc_hooks import EncodedFrame
    from video.recording import CallRecorder, PacketRecorder

    kept = world.settings.data_dir / "video-recordings"
    kept.mkdir(parents=True)
    rooms = {}
    for name in ("forward", "transcode", "empty", "elsewhere"):
        o = order if name == "forward" else make_work_order(session, world.household_a, status=Status.assigned,
                                                            assignee=world.steward_a)
        rooms[name] = VideoRoom(work_order_id=o.id, created_by_id=world.steward_a.id, expires_at=utcnow() + timedelta(
            hours=1), worker="relay-2:8000" if name == "elsewhere" else "test-worker")
    session.add_all(rooms.values())
    session.commit()
    # Two calls' recorders, cut off after 1.5 s of a tone (their files as a killed process leaves them).
    packets = PacketRecorder(kept / f"{rooms['forward'].id}.ogg", keep_packets=True)
    (_, side), mixed = packets.taps(), CallRecorder(kept / f"{rooms['transcode'].id}.ogg")
    tap = mixed.tap()
    assert side is not None
    start = time.monotonic()
    for n, packet in enumerate(opus_packets(440, 1.5)):
        time.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
        side(EncodedFrame("audio/opus", packet, n * 960))
        tap(tone_frame(440, n * 960))
    assert packets.stop() is not None and mixed.stop() is not None
    (kept / f"{rooms['forward'].id}.ogg").unlink()  # killed before the mix-down: the packet file only
    for path in (kept / f"{rooms['forward'].id}.webm", kept / f"{rooms['transcode'].id}.ogg"):
        path.write_bytes(path.read_bytes()[:-300])  # torn off mid-write
    for name in ("empty", "elsewhere"):
        (kept / f"{rooms[name].id}.webm").touch()

    async def scenario() -> None:
        async with live():
            await eventually(lambda: sorted(p.name for p in kept.iterdir()) == [f"{rooms['elsewhere'].id}.webm"],
                             timeout=20, describe=lambda: sorted(p.name for p in kept.iterdir()))
    run(scenario())
    for name in ("forward", "transcode"):
        room = reread(session, VideoRoom, rooms[name].id)
        assert room.close_reason == CloseReason.lost and room.recording_note_id is not None, name
        note = reread(session, Note, room.recording_note_id)
        assert note.kind == NoteKind.call_recording and 0.5 < note.duration_s < 2.0, (name, note.duration_s)
    empty = reread(session, VideoRoom, rooms["empty"].id)
    assert empty.close_reason == CloseReason.lost and empty.recording_note_id is None
    assert reread(session, VideoRoom, rooms["elsewhere"].id).state == RoomState.open


def test_shutdown_closes_open_rooms(live, world, order, session: Session):
    async def scenario() -> str:
        async with live() as app:
            r = await app.http.post(ROOMS, json={"work_order_id": str(order.id)},
                                    headers=world.headers(world.steward_a))
            return str(r.json()["room_id"])
    room_id = run(scenario())
    room = reread(session, VideoRoom, room_id)
    assert room.state == RoomState.closed and room.close_reason == CloseReason.shutdown


def test_pages(live, world, order):
    async def scenario() -> None:
        async with live() as app:
            room = (await app.http.post(ROOMS, json={"work_order_id": str(order.id)},
                                        headers=world.headers(world.steward_a))).json()
            page = await app.http.get(f"/join/{token_of(room['join_url'])}")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
            script = (await app.http.get("/video/static/join.js")).text  # the page's own script file
            for text in ("开始视频", "/video/static/video.js", "/video/static/join.js", "重新连接"):
                assert text in page.text, text
            for text in ("在浏览器打开", "链接已过期", "没有允许使用摄像头"):
                assert text in script, text
            for path in (f"/video/room/{room['room_id']}", "/video"):
                r = await app.http.get(path)
                assert r.status_code == 200 and "video.js" in r.text, path
            js = await app.http.get("/video/static/video.js")
            assert js.status_code == 200 and "getUserMedia" in js.text and "javascript" in js.headers["content-type"]
            assert_error(await app.http.get("/video/static/..%2Fservice.py"), 404, "not_found")
            # A mangled room link loads the page, which shows the API's answer for that id.
            assert (await app.http.get("/video/room/not-a-uuid")).status_code == 200
            assert_error(await app.http.get("/api/v1/video/rooms/not-a-uuid",
                                            headers=world.headers(world.steward_a)), 422, "validation_error")
    run(scenario())


def test_a_room_closes_after_its_maximum_duration(live, world, order, session: Session):
    async def scenario() -> str:
        async with live(video_room_max_minutes=0.02) as app:  # 1.2 s
            room_id = (await app.http.post(ROOMS, json={"work_order_id": str(order.id)},
                                           headers=world.headers(world.steward_a))).json()["room_id"]
            loop_deadline = asyncio.get_running_loop().time() + 5
            while app.rooms.get(uuid.UUID(room_id)) is not None:
                assert asyncio.get_running_loop().time() < loop_deadline, "the room outlived its maximum"
                await asyncio.sleep(0.1)
            return str(room_id)
    room = reread(session, VideoRoom, run(scenario()))
    assert room.state == RoomState.closed and room.close_reason == CloseReason.max_duration


def test_openapi_documents_the_bodies_of_every_200(video_settings: Settings, engine: Engine) -> None:
    """Regression: re-opening a room answers 200 with the room, and a snapshot's image is a JPEG; the document
    called the first bodiless and left the second's type out, so clients and the fuzzer could not check them."""
    spec = create_app(video_settings, engine=engine).openapi()
    reopened = spec["paths"]["/api/v1/video/rooms"]["post"]["responses"]["200"]
    assert reopened["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/RoomCreated"}
    image = spec["paths"]["/api/v1/video/snapshots/{id}/image"]["get"]["responses"]["200"]
    assert "image/jpeg" in image["content"]


def test_a_room_its_relay_abandoned_neither_blocks_the_order_nor_stays_open(live, world, order, engine):
    """Regression: a room pinned to a relay name that never came back (a recreated container's new host
    name) was reused for ever: its join link expired, and even the supervisor's close answered room_elsewhere.
    A room open well past its end is closed as lost, and the order gets a new one."""
    async def scenario() -> None:
        h = world.headers(world.steward_a)
        async with live(video_worker_id="3f2a9c1d7e4b:8000") as old:
            stale = (await old.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)).json()
        with Session(engine) as s:  # killed, not shut down: the row still open, and long past its end
            row = s.get(VideoRoom, uuid.UUID(stale["room_id"]))
            assert row is not None
            row.state, row.close_reason, row.closed_at = RoomState.open, None, None
            row.expires_at = utcnow() - timedelta(hours=5)
            s.add(row)
            s.commit()
        async with live(video_worker_id="9b8e7d6c5a4f:8000") as new:
            seen = await new.http.get(f"{ROOMS}/{stale['room_id']}", headers=world.headers(world.supervisor))
            assert (seen.json()["state"], seen.json()["close_reason"]) == ("closed", "lost"), seen.text
            r = await new.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)
            assert r.status_code == 201 and r.json()["room_id"] != stale["room_id"], r.text
            resident = Participant(role="resident", video=True, audio=True)
            joined = await resident.join(new.http, r.json()["room_id"], token_of(r.json()["join_url"]))
            await resident.close()
            assert joined.status_code == 200, joined.text
            closed = await new.http.post(f"{ROOMS}/{r.json()['room_id']}/close", headers=h)
            assert closed.status_code == 200 and closed.json()["state"] == "closed"
    run(scenario())


def test_a_fresh_link_gives_an_empty_room_its_idle_time_again(live, world, order):
    """Regression: a link re-sent for a room nobody had joined died with the room's idle clock, which ran from
    the room's creation: the resident opening it soon after was told the call had ended."""
    async def scenario() -> None:
        async with live(video_room_idle_close_s=4) as app:  # margins of 1-1.5 s for a loaded machine
            h = world.headers(world.steward_a)
            first = await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)
            await asyncio.sleep(3)
            again = await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)
            assert again.status_code == 200 and again.json()["room_id"] == first.json()["room_id"]
            await asyncio.sleep(2.5)  # 5.5 s after the room opened, 2.5 s after the link
            info = await app.http.get(f"/api/v1/video/join/{token_of(again.json()['join_url'])}")
            assert info.status_code == 200, info.text
            assert app.rooms.get(uuid.UUID(first.json()["room_id"])) is not None
    run(scenario())


def test_a_closed_work_orders_call_is_refused_and_ends(live, world, order, session: Session):
    """Regression: a cancelled work order's call stayed open and joinable (the order was checked only when
    the call was opened)."""
    async def scenario() -> str:
        async with live() as app:
            r = await app.http.post(ROOMS, json={"work_order_id": str(order.id)},
                                    headers=world.headers(world.steward_a))
            room_id, token = r.json()["room_id"], token_of(r.json()["join_url"])
            r = await app.http.post(f"/api/v1/work-orders/{order.id}/transitions", json={"status": "cancelled"},
                                    headers=world.headers(world.supervisor))
            assert r.status_code == 200, r.text
            offer = {"sdp": "v=0", "type": "offer"}  # refused before the offer is looked at
            for credential in (token, bearer(world, world.steward_a)):
                joined = await app.http.post(f"{ROOMS}/{room_id}/connect", json=offer,
                                             headers={"Authorization": f"Bearer {credential}"})
                assert_error(joined, 409, "work_order_closed")
            assert_error(await app.http.get(f"/api/v1/video/join/{token}"), 409, "work_order_closed")
            deadline = asyncio.get_running_loop().time() + 6
            while app.rooms.get(uuid.UUID(room_id)) is not None:  # the access check ends the call
                assert asyncio.get_running_loop().time() < deadline, "the call outlived its work order"
                await asyncio.sleep(0.1)
            return str(room_id)
    room = reread(session, VideoRoom, run(scenario()))
    assert room.state == RoomState.closed and room.close_reason == CloseReason.closed


def test_a_room_refused_for_capacity_leaves_no_row(live, world, order, session: Session):
    """Regression: a 429 `too_many_rooms` came after the new room's row was committed, and left it behind
    (closed) in the work order's history."""
    second = make_work_order(session, world.household_a, status=Status.assigned, assignee=world.steward_a)

    async def scenario() -> None:
        async with live(video_max_rooms=1) as app:
            h = world.headers(world.steward_a)
            assert (await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)).status_code == 201
            assert_error(await app.http.post(ROOMS, json={"work_order_id": str(second.id)}, headers=h), 429,
                         "too_many_rooms")
            # the order's open room is answered again however full the relay is
            assert (await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)).status_code == 200
    run(scenario())
    assert session.exec(select(VideoRoom).where(VideoRoom.work_order_id == second.id)).all() == []


def test_the_relay_statistics_are_for_the_office(live, world) -> None:
    """Regression (review): a steward asking for the relay's statistics got 403 `forbidden`, where every other
    office-only route (and docs/security.md) answers a wrong role 403 `role_required`."""
    async def scenario() -> None:
        async with live() as app:
            assert_error(await app.http.get("/api/v1/video/relay", headers=world.headers(world.steward_a)),
                         403, "role_required")
            r = await app.http.get("/api/v1/video/relay", headers=world.headers(world.supervisor))
            assert r.status_code == 200 and r.json()["rooms"] == 0, r.text
    run(scenario())


def test_a_call_that_cannot_be_recorded_is_refused_and_leaves_nothing_hosted(live, world, order, session: Session,
                                                                             video_settings: Settings):
    """Regression (review): when the recordings directory could not be made, `POST /rooms` answered 500 and the
    room stayed hosted and open: the next `POST /rooms` answered 200 with it, and the call ran unrecorded."""
    blocked = recordings_dir(video_settings.model_copy(update={"video_record_audio": True}))
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_bytes(b"not a directory")

    async def scenario() -> None:
        async with live(video_record_audio=True) as app:
            h = world.headers(world.steward_a)
            for _ in range(2):
                r = await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)
                assert_error(r, 503, "recording_unavailable")
                assert app.rooms.rooms == {}
            blocked.unlink()
            r = await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)
            assert r.status_code == 201, r.text
            assert list(app.rooms.rooms) == [uuid.UUID(r.json()["room_id"])]
            assert app.rooms.rooms[uuid.UUID(r.json()["room_id"])].recorder is not None
    run(scenario())
    rows = session.exec(select(VideoRoom).where(VideoRoom.work_order_id == order.id)).all()
    assert len(rows) == 3 and {row.state for row in rows} == {RoomState.closed}  # the refused two, then shutdown


def test_a_recordings_directory_that_cannot_be_written_is_refused_too(live, world, order, video_settings: Settings,
                                                                     monkeypatch: pytest.MonkeyPatch):
    """Regression (review): a recordings directory that is there but cannot be written (a read-only mount)
    passed the check, which only made it: `POST /rooms` answered 201 and the call ran unrecorded (the recorder
    opens its file at the first sound, and its failure was only logged)."""
    directory = recordings_dir(video_settings.model_copy(update={"video_record_audio": True}))
    directory.mkdir(parents=True)
    real = os.open

    def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        # root (these tests) writes into a chmod 0o500 directory all the same: refuse it here, as a read-only mount
        if directory in (Path(os.fspath(path)), Path(os.fspath(path)).parent) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real(path, flags, *args, **kwargs)

    async def scenario() -> None:
        async with live(video_record_audio=True) as app:
            h = world.headers(world.steward_a)
            monkeypatch.setattr(os, "open", read_only)
            r = await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)
            assert_error(r, 503, "recording_unavailable")
            assert "Read-only file system" in r.json()["detail"]["message"] and app.rooms.rooms == {}
            monkeypatch.undo()
            r = await app.http.post(ROOMS, json={"work_order_id": str(order.id)}, headers=h)
            assert r.status_code == 201, r.text
            assert list(directory.iterdir()) == []  # the check leaves no file behind
    run(scenario())
