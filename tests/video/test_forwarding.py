"""Forward mode with real aiortc peer connections: the publisher's encoded frames reach subscribers without
decoding, a joining subscriber starts on a keyframe the publisher was asked for, subscribers' picture-loss
reports reach the publisher (rate-limited), and one shared decoded branch serves what cannot be forwarded:
a subscriber or publisher on another codec, snapshots, the recorder."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

import pytest
from aiortc.mediastreams import MediaStreamError

from tests.video.conftest import eventually, run
from tests.video.test_relay import ROOMS, bearer, in_call, joined, open_room, real_frames
from video import tracks
from video.clients import Participant
from video.forwarding import KEYFRAME_REQUEST_INTERVAL_S
from video.models import Role
from video.relay import Room


def relay(app: object, room_id: str) -> Room:
    room: Room | None = app.rooms.get(uuid.UUID(room_id))  # type: ignore[attr-defined]
    assert room is not None
    return room


def test_a_late_subscriber_starts_on_a_keyframe_the_publisher_was_asked_for(live, world, order):
    async def scenario() -> None:
        async with live() as app:  # forward is the default
            room_id, token = await open_room(app, world, order)
            resident = await joined(Participant(role="resident", video=True, audio=True), app, room_id, token)
            room = relay(app, room_id)
            assert room.forward
            await asyncio.sleep(1.5)  # aiortc's publisher sends one keyframe at start, then only on request
            asked_before = resident.keyframe_requests
            steward = await joined(Participant(role="steward", audio=True), app, room_id,
                                   bearer(world, world.steward_a))
            video, = steward.tracks("video")
            encoded, = steward.encoded_tracks("video")
            await eventually(lambda: real_frames(video) >= 24, timeout=10,
                             describe=lambda: (encoded.frames, encoded.keyframes, room.stats()))
            assert resident.keyframe_requests > asked_before  # the join asked the publisher (a PLI)
            assert encoded.first_real_is_keyframe is True and encoded.mimes == {"video/vp8"}
            slot = room.slot(Role.resident, "video")
            assert slot.source_codec == "video/vp8" and slot.frames_forwarded >= 24
            assert slot.frames_in == 0 and slot.encoder.frames == 0  # nothing decoded, nothing encoded
            since = time.monotonic() - 1.5
            assert video.fps(since) >= 5 and encoded.frames >= real_frames(video)  # flowing; speed: the bench
            # The first frames of a late join may wait for its keyframe's retransmitted packets on a busy machine
            # (1.07 s seen once in CI), and a frame whose packet was lost waits for its retransmission (one at
            # 2.0 s among ~95 ms ones in a later CI run). A relay that held frames back would delay most of them.
            late = [ms for ms in video.latencies_ms[3:] if ms >= 1000]
            assert len(late) <= len(video.latencies_ms) // 20, sorted(video.latencies_ms)
            # A relay holding frames back (buffering, a blocked loop) would push the median past a second; the
            # number itself is the bench's (it measured ~95 ms here, and 240-360 ms on a core shared with other
            # work, where a bound of 200 ms failed a correct relay: a review).
            assert statistics.median(video.latencies_ms) < 1000
            audio, = steward.tracks("audio")
            assert audio.peak > 3000  # the resident's tone, forwarded as Opus packets
            audio_slot = room.slot(Role.resident, "audio")
            assert audio_slot.frames_forwarded >= 50
            assert audio_slot.frames_in == 0  # the recorder muxes the Opus packets as they came
            stats = (await app.http.get("/api/v1/video/relay", headers=world.headers(world.supervisor))).json()
            assert stats["modes"] == ["forward"] and stats["latency_ms"]["count"] > 0
            assert 0 <= stats["latency_ms"]["p50"] < 1000  # the relay's own hop; its speed is the bench's
            forbidden = await app.http.get("/api/v1/video/relay", headers=world.headers(world.steward_a))
            assert forbidden.status_code == 403
            for client in (resident, steward):
                await client.close()
    run(scenario())


def test_picture_loss_reports_reach_the_publisher_rate_limited(live, world, order):
    async def scenario() -> None:
        async with live() as app:
            room_id, _token, resident, steward = await in_call(app, world, order)
            video, = steward.tracks("video")
            await eventually(lambda: real_frames(video) >= 24, timeout=10)
            encoded, = steward.encoded_tracks("video")
            slot = relay(app, room_id).slot(Role.resident, "video")
            await asyncio.sleep(KEYFRAME_REQUEST_INTERVAL_S * 2)  # any join request has gone out
            published, asked = resident.keyframe_requests, slot.keyframe_requests[0]
            keyframes = encoded.keyframes
            for _ in range(10):  # a burst of PLIs from the subscriber
                await encoded.tap.request_keyframe()
                await asyncio.sleep(0.01)
            await eventually(lambda: slot.keyframe_requests[0] >= asked + 10, timeout=3)
            await asyncio.sleep(KEYFRAME_REQUEST_INTERVAL_S * 2)
            # all ten reached the relay; the publisher heard one now and one at the end of the window
            assert 1 <= resident.keyframe_requests - published <= 2, (resident.keyframe_requests, published)
            await eventually(lambda: encoded.keyframes > keyframes, timeout=3)  # and it sent a keyframe
            for client in (resident, steward):
                await client.close()
    run(scenario())


def test_a_subscriber_on_another_codec_gets_the_decoded_branch(live, world, order):
    """An H.264-only steward gets frames decoded once and encoded for it; the VP8 supervisor still gets
    the publisher's own packets."""
    async def scenario() -> None:
        async with live() as app:
            room_id, token = await open_room(app, world, order)
            resident = await joined(Participant(role="resident", video=True, audio=True), app, room_id, token)
            steward = await joined(Participant(role="steward", audio=True, video_codec="video/H264"), app,
                                   room_id, bearer(world, world.steward_a))
            watcher = await joined(Participant(role="supervisor"), app, room_id, bearer(world, world.supervisor))
            h264, = steward.tracks("video")
            vp8, = watcher.tracks("video")
            await eventually(lambda: real_frames(h264) >= 24 and real_frames(vp8) >= 24, timeout=15)
            assert steward.encoded_tracks("video")[0].mimes == {"video/h264"}
            assert watcher.encoded_tracks("video")[0].mimes == {"video/vp8"}
            slot = relay(app, room_id).slot(Role.resident, "video")
            proxies = {p.forwarding for q in relay(app, room_id).participants.values() for p in q.proxies
                       if p.kind == "video"}
            assert proxies == {True, False}
            assert slot.frames_in >= 24 and slot.frames_forwarded >= 24 and slot.encoder.frames == 0
            for client in (resident, steward, watcher):
                await client.close()
    run(scenario())


def test_a_publisher_on_another_codec_is_decoded_and_encoded_once(live, world, order):
    """The resident sends H.264: the VP8 subscribers share one decode and one VP8 encoding."""
    async def scenario() -> None:
        async with live() as app:
            room_id, token = await open_room(app, world, order)
            resident = await joined(Participant(role="resident", video=True, audio=True, video_codec="video/H264"),
                                    app, room_id, token)
            steward = await joined(Participant(role="steward", audio=True), app, room_id,
                                   bearer(world, world.steward_a))
            watcher = await joined(Participant(role="supervisor"), app, room_id, bearer(world, world.supervisor))
            a, = steward.tracks("video")
            b, = watcher.tracks("video")
            slot = relay(app, room_id).slot(Role.resident, "video")
            await eventually(lambda: real_frames(a) >= 24 and real_frames(b) >= 24, timeout=15,
                             describe=lambda: (a.frames, a.stamped, b.frames, slot.source_codec, slot.encoded_in,
                                               slot.frames_in, slot.encoder.frames))
            assert slot.source_codec == "video/h264" and slot.frames_forwarded == 0
            assert 0 < slot.encoder.frames <= slot.frames_in
            assert steward.encoded_tracks("video")[0].mimes == {"video/vp8"}
            for client in (resident, steward, watcher):
                await client.close()
    run(scenario())


def test_snapshots_decode_on_demand_and_no_recorder_means_no_decoding(live, world, order,
                                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tracks, "RAW_LEASE_S", 0.5)

    async def scenario() -> None:
        async with live(video_record_audio=False) as app:
            room_id, _token, resident, steward = await in_call(app, world, order)
            video, = steward.tracks("video")
            await eventually(lambda: real_frames(video) >= 24, timeout=10)
            room = relay(app, room_id)
            slot, audio = room.slot(Role.resident, "video"), room.slot(Role.resident, "audio")
            assert slot.frames_in == 0 and audio.frames_in == 0 and audio.frames_forwarded > 0
            r = await app.http.post(f"{ROOMS}/{room_id}/snapshot", headers=world.headers(world.steward_a))
            assert r.status_code == 201, r.text
            assert (r.json()["width"], r.json()["height"]) == (640, 480)
            assert slot.frames_in >= 1
            await asyncio.sleep(1.5)  # the lease ran out: decoding stops again
            decoded = slot.frames_in
            await asyncio.sleep(1)
            assert slot.frames_in == decoded and real_frames(video) >= 48
            for client in (resident, steward):
                await client.close()
    run(scenario())


def test_a_snapshot_whose_picture_does_not_come_never_takes_an_old_one() -> None:
    """Regression (review): when no keyframe came within the wait, the snapshot stored the picture decoded for
    an earlier snapshot, however old, as the resident's latest. Only a recent one stands in now."""
    async def scenario() -> None:
        slot = tracks.SourceSlot("resident-video", "video", forward=True)
        slot.source = object()  # type: ignore[assignment]  # a publisher that sends no keyframe
        old = object()
        slot.latest, slot.latest_at = old, time.monotonic() - 60  # type: ignore[assignment]
        assert await slot.fresh_frame(timeout=0.05) is None
        slot.latest_at = time.monotonic() - 2
        assert await slot.fresh_frame(timeout=0.05) is old
    run(scenario())


def test_tracks_nobody_subscribes_to_are_dropped_undecoded(live, world, order):
    """Regression (review): a track that feeds no slot (a supervisor's camera and microphone, a resident's extra
    cameras) was decoded frame by frame to be thrown away, undoing forward mode's saving for whoever sends one."""
    async def scenario() -> None:
        async with live() as app:
            room_id, _token, resident, steward = await in_call(app, world, order)
            watcher = await joined(Participant(role="supervisor", video=True, audio=True), app, room_id,
                                   bearer(world, world.supervisor))
            room = relay(app, room_id)
            server_side, = (p for p in room.participants.values() if p.role == Role.supervisor)
            await eventually(lambda: server_side.ignored_frames >= 48, timeout=15,
                             describe=lambda: server_side.ignored_frames)
            assert all(p.ignored_frames == 0 for p in room.participants.values() if p is not server_side)
            for client in (resident, steward, watcher):
                await client.close()
    run(scenario())


def test_a_publisher_track_that_ends_by_itself_lets_its_receiver_go() -> None:
    """Regression (review): when the publisher's track ended on its own (an RTCP BYE), the pump cleared the
    source, and the later `detach(track)` returned early: the slot kept its tap and keyframe requests to the
    dead receiver until the next publisher or the room's close."""
    class Ended:
        kind = "video"

        async def recv(self) -> None:
            raise MediaStreamError

    class Tap:
        handler: object = None

        def set_handler(self, handler: object) -> None:
            self.handler = handler

        async def request_keyframe(self) -> int:
            return 1

    async def scenario() -> None:
        slot = tracks.SourceSlot("resident-video", "video", forward=True)
        tap, track = Tap(), Ended()
        slot.attach(track, tap)  # type: ignore[arg-type]
        assert tap.handler is not None and slot._tap is tap
        await eventually(lambda: slot.source is None)
        assert slot._tap is None and slot._keyframes is None
        assert tap.handler is tracks._drop  # nothing piles up for the ended track
        slot.detach(track)  # type: ignore[arg-type]  # the participant's own detach later: harmless
    run(scenario())


def test_a_rejoining_publishers_stream_starts_at_its_keyframe_for_each_subscriber() -> None:
    """Regression (review): a rejoin (newest wins) replaced the publisher at once, with no placeholder between,
    and a subscriber was sent the new stream's delta frames, decoded against the old stream's pictures, with
    no keyframe asked of the new publisher (whose first one was lost on the way). It waits for the new stream's
    keyframe, asking for one, as after a leave and a join."""
    from video.aiortc_hooks import EncodedFrame
    from video.forwarding import black_vp8_keyframe

    key = black_vp8_keyframe() + b"\x00"  # the publisher's, told apart from a placeholder
    delta = b"\x01" + key[1:]  # VP8: the first bit clear is a keyframe

    class Idle:
        kind = "video"

        async def recv(self) -> None:
            await asyncio.sleep(3600)

    class Tap:
        def __init__(self) -> None:
            self.handler: object = None
            self.asked = 0

        def set_handler(self, handler: object) -> None:
            self.handler = handler

        async def request_keyframe(self) -> int:
            self.asked += 1
            return 1

        def send(self, data: bytes, ts: int) -> None:
            self.handler(EncodedFrame("video/vp8", data, ts))  # type: ignore[operator]

    class Sender:
        def _send_keyframe(self) -> None:
            pass

    async def scenario() -> tuple[list[bool], int]:
        slot = tracks.SourceSlot("resident-video", "video", forward=True)
        proxy = slot.subscribe()
        proxy.forward(Sender(), packets_only=True)
        proxy.settled = True
        old = Tap()
        slot.attach(Idle(), old)  # type: ignore[arg-type]
        got: list[tuple[bool, bytes]] = []

        async def subscriber() -> None:
            while True:
                sent = await proxy.recv()
                got.append((sent.is_keyframe, bytes(sent)))  # type: ignore[union-attr]

        reader = asyncio.ensure_future(subscriber())
        ts = 0
        old.send(key, ts)
        for _ in range(6):
            await asyncio.sleep(0.04)
            ts += 3600
            old.send(delta, ts)
        await asyncio.sleep(0.05)
        before = len(got)
        new = Tap()
        slot.attach(Idle(), new)  # type: ignore[arg-type]  # the rejoin: Room.connect publishes the newcomer
        ts = 0
        for _ in range(20):  # its first keyframe was lost; it sends one once asked
            await asyncio.sleep(0.04)
            ts += 3600
            new.send(key if new.asked else delta, ts)
        await asyncio.sleep(0.1)
        reader.cancel()
        return [is_key for is_key, data in got[before:] if data in (key, delta)], new.asked

    forwarded, asked = asyncio.run(scenario())
    assert asked >= 1 and forwarded and forwarded[0] is True, (forwarded, asked)
