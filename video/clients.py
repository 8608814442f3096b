"""aiortc participants driven from Python, for the benchmark and the tests: synthetic camera frames that
carry a timestamp in their pixels, a tone for a microphone, and receivers that count what arrives.

A stamp is 32 blocks of 16x16 luma pixels along the top edge, white for 1 and black for 0: a white
then a black marker block, then the sender's `time.monotonic()` in milliseconds (mod 2^30). It survives
VP8 at any bitrate the relay uses, so latency through the relay is measured per frame when sender and
receiver share a clock.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from video import aiortc_hooks
from video.aiortc_hooks import EncodedFrame, EncodedTap
from video.forwarding import black_vp8_keyframe, is_keyframe, packet

STAMP_BITS = 32
STAMP_BLOCK = 16
STAMP_MASK = (1 << 30) - 1
MARKER = 0b10 << 30


def now_ms() -> int:
    return int(time.monotonic() * 1000) & STAMP_MASK


def age_ms(stamp: int) -> int:
    """Milliseconds since a stamp was written (same process or machine clock)."""
    return (now_ms() - stamp) & STAMP_MASK


def read_stamp(frame: av.VideoFrame) -> int | None:
    """The stamp written by `StampedVideoTrack`, or None if the frame carries none."""
    if frame.width < STAMP_BITS * STAMP_BLOCK or frame.height < STAMP_BLOCK:
        return None
    if frame.format.name in ("yuv420p", "yuvj420p"):  # read the luma plane in place: no conversion
        plane = frame.planes[0]
        rows = np.frombuffer(memoryview(plane), np.uint8, count=plane.line_size * STAMP_BLOCK).reshape(STAMP_BLOCK, -1)
        luma = (rows[:, : STAMP_BITS * STAMP_BLOCK].astype(np.float32) - 16) * (255 / 219)
    else:
        luma = frame.to_ndarray(format="gray")[:STAMP_BLOCK, : STAMP_BITS * STAMP_BLOCK].astype(np.float32)
    centers = luma[4:12].reshape(8, STAMP_BITS, STAMP_BLOCK)[:, :, 4:12].mean(axis=(0, 2))
    if np.any((centers > 90) & (centers < 165)):  # neither black nor white: not a stamp
        return None
    value = 0
    for bit in centers > 128:
        value = (value << 1) | int(bit)
    if value & ~STAMP_MASK != MARKER:
        return None
    return value & STAMP_MASK


class StampedVideoTrack(MediaStreamTrack):
    """A camera stand-in: a moving textured picture at a steady frame rate, each frame stamped."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 480, fps: float = 24) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        rng = np.random.default_rng(7)
        gradient = np.linspace(40, 200, width, dtype=np.float32)[None, :].repeat(height, 0)
        self._texture = np.clip(gradient + rng.normal(0, 12, (height, width)), 0, 255).astype(np.uint8)
        self._chroma = np.full((height // 2, width), 128, dtype=np.uint8)
        self._start: float | None = None
        self._count = 0
        self.frames_sent = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._count / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return self.picture()

    def picture(self) -> av.VideoFrame:
        """The next frame, stamped now."""
        luma = np.roll(self._texture, self._count * 4, axis=1)
        box = (self._count * 6) % (self.width - 80)
        luma[200:280, box:box + 80] = 235
        stamp = MARKER | now_ms()
        bits = [(stamp >> (STAMP_BITS - 1 - i)) & 1 for i in range(STAMP_BITS)]
        row = np.repeat(np.array(bits, dtype=np.uint8) * 219 + 16, STAMP_BLOCK)
        luma[:STAMP_BLOCK, : STAMP_BITS * STAMP_BLOCK] = row[None, :]
        frame = av.VideoFrame.from_ndarray(np.concatenate([luma, self._chroma]), format="yuv420p")
        frame.pts, frame.time_base = round(self._count * 90_000 / self.fps), fractions.Fraction(1, 90_000)
        self._count += 1
        self.frames_sent += 1
        return frame


def encode_loop(seconds: float = 10, fps: float = 24, width: int = 640, height: int = 480) -> list[bytes]:
    """`seconds` of `StampedVideoTrack`'s picture as VP8 frames (the first a keyframe), for `LoopVideoTrack`."""
    from video.encoding import SharedVp8Encoder

    source, encoder = StampedVideoTrack(width, height, fps), SharedVp8Encoder()
    frames = []
    for _ in range(round(seconds * fps)):
        frames.append(b"".join(bytes(p) for p in encoder.encode(source.picture())))
    assert is_keyframe("video/vp8", frames[0])
    return frames


class LoopVideoTrack(MediaStreamTrack):
    """A camera stand-in that costs its sender no encoding: VP8 frames encoded once (`encode_loop`), sent
    in a loop at `fps`. A keyframe request restarts the loop at its keyframe. Its stamps are old: no latency."""

    kind = "video"

    def __init__(self, frames: list[bytes], fps: float = 24) -> None:
        super().__init__()
        self.frames, self.fps = frames, fps
        self._start: float | None = None
        self._count = 0
        self._index = 0

    def restart(self) -> None:
        self._index = 0

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._count / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        data = self.frames[self._index]
        out = packet(data, round(self._count * 90_000 / self.fps), fractions.Fraction(1, 90_000), self._index == 0)
        self._index = (self._index + 1) % len(self.frames)
        self._count += 1
        return out


class ToneAudioTrack(MediaStreamTrack):
    """A microphone stand-in: a steady tone, 20 ms frames of 48 kHz stereo."""

    kind = "audio"

    def __init__(self, hz: float = 440.0, amplitude: float = 0.3) -> None:
        super().__init__()
        self.hz, self.amplitude = hz, amplitude
        self._start: float | None = None
        self._samples = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._samples / 48_000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (self._samples + np.arange(960)) / 48_000
        mono = (np.sin(2 * math.pi * self.hz * t) * self.amplitude * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, self._samples, fractions.Fraction(1, 48_000)
        self._samples += 960
        return frame


@dataclass
class Received:
    """What arrived on one received track."""

    kind: str
    frames: int = 0
    first_at: float | None = None
    last_at: float | None = None
    stamped: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    peak: int = 0  # audio: largest absolute sample seen
    last_frame: Any = None
    sizes: set[tuple[int, int]] = field(default_factory=set)
    times: list[float] = field(default_factory=list)

    def fps(self, since: float | None = None) -> float:
        """Frames per second over the frames that arrived after `since` (default: all)."""
        times = [t for t in self.times if since is None or t >= since]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])


@dataclass
class Encoded:
    """The complete encoded frames one receiver reassembled (before any decoding)."""

    kind: str
    tap: EncodedTap
    decode: bool = True
    frames: int = 0
    keyframes: int = 0
    placeholders: int = 0  # the relay's black VP8 placeholder keyframes
    mimes: set[str] = field(default_factory=set)
    first_real_is_keyframe: bool | None = None  # the first frame that is not a placeholder
    times: list[float] = field(default_factory=list)

    def on_frame(self, frame: EncodedFrame) -> bool:
        self.frames += 1
        self.times.append(time.monotonic())
        self.mimes.add(frame.mime)
        key = is_keyframe(frame.mime, frame.data)
        self.keyframes += key
        if frame.mime == "video/vp8" and frame.data == black_vp8_keyframe():
            self.placeholders += 1
        elif self.first_real_is_keyframe is None:
            self.first_real_is_keyframe = key
        return self.decode


class Participant:
    """One aiortc client of a room: sends the given tracks, asks for `receive` tracks of each kind.

    `decode=False` counts received frames without decoding them (the benchmark's many subscribers);
    `video_codec` (e.g. "video/H264") restricts what its video m-lines offer."""

    def __init__(self, *, role: str, video: bool = False, audio: bool = False, receive_audio: int = 1,
                 receive_video: int = 1, fps: float = 24, decode_stamps: bool = True,
                 on_video: Callable[[av.VideoFrame], None] | None = None, decode: bool = True,
                 video_codec: str | None = None, video_loop: list[bytes] | None = None) -> None:
        self.role = role
        self.on_video = on_video
        # max-bundle: see video.relay.rtc_configuration (aiortc's balanced policy loses a 2nd m-line per kind)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.video: StampedVideoTrack | LoopVideoTrack | None = None
        if video:
            self.video = LoopVideoTrack(video_loop, fps) if video_loop else StampedVideoTrack(fps=fps)
        self.audio = ToneAudioTrack() if audio else None
        self.decode_stamps = decode_stamps
        self.received: list[Received] = []
        self.participant_id: uuid.UUID | None = None
        self._tasks: list[asyncio.Task[None]] = []
        for kind, track, want in (("audio", self.audio, receive_audio), ("video", self.video, receive_video)):
            for i in range(max(want, 1 if track else 0)):
                source = track if i == 0 and track is not None else None
                direction = ("sendrecv" if i < want else "sendonly") if source else "recvonly"
                transceiver = self.pc.addTransceiver(source or kind, direction=direction)
                if kind == "video" and video_codec is not None:
                    caps = RTCRtpSender.getCapabilities("video")
                    transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType == video_codec])
        self.pc.on("track", self._on_track)
        # encoded frames per receiving transceiver, and keyframe requests (PLI/FIR) per sent track
        self.encoded: list[Encoded] = []
        self.keyframe_requests = 0
        if aiortc_hooks.compatible():
            for transceiver in self.pc.getTransceivers():
                if transceiver.direction in ("sendrecv", "recvonly"):
                    tap = aiortc_hooks.tap_receiver(transceiver.receiver)
                    encoded = Encoded(kind=transceiver.kind, tap=tap, decode=decode)
                    tap.set_handler(encoded.on_frame)
                    self.encoded.append(encoded)
                if transceiver.sender.track is not None:
                    self._count_keyframe_requests(transceiver.sender)

    def _count_keyframe_requests(self, sender: RTCRtpSender) -> None:
        def requested() -> None:
            self.keyframe_requests += 1
            own()  # the sender still makes its next frame a keyframe
            if isinstance(self.video, LoopVideoTrack):
                self.video.restart()

        own = aiortc_hooks.redirect_keyframe_requests(sender, requested)

    def _on_track(self, track: MediaStreamTrack) -> None:
        received = Received(kind=track.kind)
        self.received.append(received)
        self._tasks.append(asyncio.ensure_future(self._consume(track, received)))

    async def _consume(self, track: MediaStreamTrack, received: Received) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            received.frames += 1
            received.first_at = received.first_at or now
            received.last_at = now
            received.times.append(now)
            received.last_frame = frame
            if isinstance(frame, av.VideoFrame):
                received.sizes.add((frame.width, frame.height))
                if self.on_video is not None:
                    self.on_video(frame)
                if self.decode_stamps:
                    stamp = read_stamp(frame)
                    if stamp is not None:
                        received.stamped += 1
                        received.latencies_ms.append(float(age_ms(stamp)))
            elif isinstance(frame, av.AudioFrame):
                received.peak = max(received.peak, int(np.abs(frame.to_ndarray()).max()))

    def tracks(self, kind: str) -> list[Received]:
        return [r for r in self.received if r.kind == kind]

    def encoded_tracks(self, kind: str) -> list[Encoded]:
        return [e for e in self.encoded if e.kind == kind]

    async def join(self, http: httpx.AsyncClient, room_id: uuid.UUID | str, token: str) -> httpx.Response:
        """Offer, post it to the connect route, apply the answer; the HTTP response (errors included)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        r = await http.post(f"/api/v1/video/rooms/{room_id}/connect",
                            json={"sdp": self.pc.localDescription.sdp, "type": "offer", "role": self.role},
                            headers={"Authorization": f"Bearer {token}"})
        if r.status_code == 200:
            body = r.json()
            self.participant_id = uuid.UUID(body["participant_id"])
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
        return r

    async def connected(self, timeout: float = 10) -> None:
        """Wait until the peer connection is up."""
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if time.monotonic() > deadline or self.pc.connectionState in ("failed", "closed"):
                raise TimeoutError(f"{self.role} not connected: {self.pc.connectionState}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
