"""The aiortc internals the forwarding relay uses (video/aiortc_hooks.py). If one of these fails after an
aiortc upgrade, forwarding is broken: fix the hooks (or pin aiortc back) before anything else."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import re
import tomllib
import uuid
from pathlib import Path

import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from tests.video.conftest import eventually, run
from video import aiortc_hooks
from video.aiortc_hooks import EncodedFrame
from video.clients import StampedVideoTrack
from video.forwarding import black_vp8_keyframe, is_keyframe, packet
from video.models import CloseReason

ROOT = Path(__file__).resolve().parents[2]


def test_the_internals_are_there_and_the_pin_matches():
    assert aiortc_hooks.problems() == []
    aiortc_hooks.check()
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    aiortc, = (r for r in requirements if re.match(r"aiortc\b", r))
    assert aiortc.replace(" ", "") == "aiortc" + ",".join(aiortc_hooks.SUPPORTED), (
        "pyproject.toml's aiortc pin must be the range video/aiortc_hooks.py was checked against")


async def connect(sender: RTCPeerConnection, receiver: RTCPeerConnection, before_answer=None) -> None:
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    if before_answer is not None:
        before_answer()
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)


def test_a_tapped_receiver_shows_encoded_frames_decodes_on_demand_and_asks_for_keyframes():
    async def scenario() -> None:
        publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        subscriber = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        camera = StampedVideoTrack(width=640, height=480, fps=24)
        sender = publisher.addTrack(camera)
        pli = [0]

        def requested() -> None:
            pli[0] += 1
            own()

        own = aiortc_hooks.redirect_keyframe_requests(sender, requested)
        frames: list[EncodedFrame] = []
        decode = [False]
        tracks: list[MediaStreamTrack] = []
        subscriber.on("track", tracks.append)

        def tap_it() -> None:
            receiver = subscriber.getTransceivers()[0].receiver
            tap = aiortc_hooks.tap_receiver(receiver)
            tap.set_handler(lambda f: frames.append(f) or decode[0])
            taps.append(tap)

        taps: list[aiortc_hooks.EncodedTap] = []
        await connect(publisher, subscriber, tap_it)
        track, = tracks
        decoded: list[av.VideoFrame] = []

        async def read() -> None:
            while True:
                try:
                    decoded.append(await track.recv())
                except MediaStreamError:
                    return

        reader = asyncio.ensure_future(read())
        try:
            await eventually(lambda: len(frames) >= 24, timeout=10)
            assert decoded == []  # the decoder thread got nothing
            assert {f.mime for f in frames} == {"video/vp8"}
            assert is_keyframe("video/vp8", frames[0].data) and frames[0].timestamp == 0
            steps = {b.timestamp - a.timestamp for a, b in itertools.pairwise(frames)}
            assert steps <= {3749, 3750, 3751}  # 90 kHz at 24 fps, counted from the first frame
            assert not any(is_keyframe("video/vp8", f.data) for f in frames[1:])
            # a keyframe request reaches the publisher's sender, whose next frame is a keyframe
            seen = len(frames)
            assert await taps[0].request_keyframe() == 1
            await eventually(lambda: pli[0] == 1, timeout=3)
            await eventually(lambda: any(is_keyframe("video/vp8", f.data) for f in frames[seen:]), timeout=3)
            decode[0] = True
            await eventually(lambda: len(decoded) >= 5, timeout=5)
            assert (decoded[-1].width, decoded[-1].height) == (640, 480)
        finally:
            await publisher.close()
            await subscriber.close()
            await asyncio.wait_for(reader, 5)
    run(scenario())


class PacketTrack(MediaStreamTrack):
    """Sends pre-encoded packets: the black VP8 keyframe, 10 per second."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def recv(self) -> av.Packet:
        await asyncio.sleep(0.1)
        self.count += 1
        return packet(black_vp8_keyframe(), self.count * 9000, fractions.Fraction(1, 90_000), True)


def test_a_sender_packs_encoded_packets_without_encoding():
    async def scenario() -> None:
        publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        subscriber = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        publisher.addTrack(PacketTrack())
        tracks: list[MediaStreamTrack] = []
        subscriber.on("track", tracks.append)
        await connect(publisher, subscriber)
        try:
            track, = tracks
            frame = await asyncio.wait_for(track.recv(), 10)
            assert isinstance(frame, av.VideoFrame) and (frame.width, frame.height) == (160, 120)
            second = await asyncio.wait_for(track.recv(), 5)
            assert second.pts - frame.pts == 9000  # the packets' own timestamps
        finally:
            await publisher.close()
            await subscriber.close()
    run(scenario())


def test_the_check_fails_loudly_when_aiortc_changes(monkeypatch):
    from aiortc import RTCRtpSender

    async def changed(self, packet):  # an upgrade that handles PLI differently
        self._force_keyframe = True

    monkeypatch.setattr(RTCRtpSender, "_handle_rtcp_packet", changed)
    monkeypatch.setattr(aiortc_hooks.importlib.metadata, "version", lambda name: "1.17.0")
    found = aiortc_hooks.problems()
    assert any("_send_keyframe" in p for p in found) and any("1.17.0" in p for p in found)
    try:
        aiortc_hooks.check()
    except aiortc_hooks.IncompatibleAiortc as exc:
        assert "STEWARD_VIDEO_RELAY_MODE=transcode" in str(exc)
    else:
        raise AssertionError("check() passed an incompatible aiortc")


def test_without_the_internals_a_room_transcodes(monkeypatch):
    from datetime import timedelta

    from api.db import utcnow
    from video.relay import Room

    monkeypatch.setattr(aiortc_hooks, "compatible", lambda: False)

    async def scenario() -> None:
        room = Room(id=uuid.uuid4(), work_order_id=uuid.uuid4(), expires_at=utcnow() + timedelta(minutes=5),
                    max_participants=4, connect_timeout_s=5, ice_servers=[])
        assert not room.forward and not room.shared_encoding
        assert not any(slot.forward for slot in room.slots.values())
        await room.close(CloseReason.closed)
    run(scenario())
