"""Media plumbing of a room: one source slot per published track, proxy tracks for its subscribers.

A `SourceSlot` (say, the resident's camera) is the only reader of whichever received track currently
publishes into it, so every received track is drained whether or not anyone watches. It fans frames out
to `ProxyTrack`s, which are what the peer connections send. A proxy exists from the moment its
subscriber connects: before a publisher arrives (and after it leaves) it sends placeholder frames (black
video at a low rate, silence), and when one arrives it switches to it with continuous timestamps. That
is how participants join in any order without renegotiation: the browser only ever sees one track.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from video.encoding import SharedVp8Encoder

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
AUDIO_RATE = 48_000
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
AUDIO_SAMPLES = 960  # 20 ms
PLACEHOLDER_FPS = 5
PLACEHOLDER_SIZE = (160, 120)  # small: a VP8 encoder at 640x480 holds ~13 MB, and most calls never leave it
VIDEO_QUEUE = 2  # frames; a subscriber whose encoder falls behind skips frames instead of lagging
AUDIO_QUEUE = 25  # 0.5 s
PACKET_QUEUE = 12  # encoded frames; beyond, the subscriber skips to the next keyframe
KEYFRAME_RETRY_S = 0.5

Frame = av.VideoFrame | av.AudioFrame
Tap = Callable[[Frame], None]


class SourceSlot:
    """One published track of one role in a room; the publisher may change, subscribers stay."""

    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.source: MediaStreamTrack | None = None
        self.latest: Frame | None = None  # the newest frame (snapshots)
        self.frames_in = 0
        self._task: asyncio.Task[None] | None = None
        self._proxies: set[ProxyTrack] = set()
        self._taps: list[Tap] = []
        self._t0 = time.monotonic()
        # The shared VP8 encoding for forwarding subscribers: the newest frame waits in a one-frame
        # mailbox, so a slow encoder skips frames instead of building latency.
        self.encoder = SharedVp8Encoder()
        self._encode_task: asyncio.Task[None] | None = None
        self._encode_next: av.VideoFrame | None = None
        self._encode_ready = asyncio.Event()

    def attach(self, track: MediaStreamTrack) -> None:
        """Make `track` this slot's publisher (replacing any other) and start draining it."""
        self.detach()
        self.source = track
        self.latest = None
        self._task = asyncio.create_task(self._pump(track), name=f"pump-{self.name}")
        self._signal()

    def detach(self, track: MediaStreamTrack | None = None) -> None:
        """Stop reading the publisher (only if it is still `track`, when given)."""
        if self.source is None or (track is not None and track is not self.source):
            return
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.source = None
        self._signal()

    def subscribe(self) -> ProxyTrack:
        """A new track that sends this slot's media to one subscriber."""
        proxy = ProxyTrack(self)
        self._proxies.add(proxy)
        return proxy

    def unsubscribe(self, proxy: ProxyTrack) -> None:
        self._proxies.discard(proxy)

    def add_tap(self, tap: Tap) -> None:
        """Call `tap(frame)` for every received frame (on the event loop: keep it cheap)."""
        self._taps.append(tap)

    def remove_tap(self, tap: Tap) -> None:
        if tap in self._taps:
            self._taps.remove(tap)

    def request_keyframe(self) -> None:
        self.encoder.request_keyframe()

    def _encode_soon(self, frame: av.VideoFrame) -> None:
        self._encode_next = frame
        self._encode_ready.set()
        if self._encode_task is None:
            self._encode_task = asyncio.create_task(self._encode_loop(), name=f"encode-{self.name}")

    async def _encode_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._encode_ready.wait()
            self._encode_ready.clear()
            frame, self._encode_next = self._encode_next, None
            if frame is None:
                continue
            try:
                packets = await loop.run_in_executor(None, self.encoder.encode, frame)
            except av.FFmpegError:
                log.exception("shared encoding of %s failed; starting a new stream", self.name)
                self.encoder = SharedVp8Encoder()
                continue
            for proxy in self._proxies:
                if proxy.forwarding:
                    proxy.push_packets(packets)

    def stamp(self) -> int:
        """Now on this slot's video clock: one clock for every publisher, so timestamps never jump back."""
        return int((time.monotonic() - self._t0) * VIDEO_CLOCK)

    async def close(self) -> None:
        """Stop the pump and the encoder, end every proxy (idempotent)."""
        task, encode_task = self._task, self._encode_task
        self.detach()
        self._encode_task = None
        if encode_task is not None:
            encode_task.cancel()
        await asyncio.gather(*(t for t in (task, encode_task) if t is not None), return_exceptions=True)
        for proxy in list(self._proxies):
            proxy.stop()
        self._taps.clear()

    def _signal(self) -> None:
        for proxy in self._proxies:
            proxy.wake()

    async def _pump(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                try:
                    received = await track.recv()
                except MediaStreamError:
                    break
                if not isinstance(received, av.VideoFrame | av.AudioFrame):
                    continue  # an encoded packet: only our own sources could send one
                frame: Frame = received
                self.frames_in += 1
                self.latest = frame
                if isinstance(frame, av.VideoFrame):
                    # One clock per slot, whoever publishes, so timestamps never jump back. Each subscriber
                    # gets its own frame over shared pixels: encoders write into the frames they encode
                    # (PyAV rebases pts to the codec's time base, aiortc sets pict_type for keyframes).
                    pts = self.stamp()
                    frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
                    if self._proxies:
                        pixels = _pixels(frame)
                        for proxy in self._proxies:
                            if not proxy.forwarding:
                                proxy.push(_own_frame(pixels, pts))
                        if any(proxy.forwarding for proxy in self._proxies):
                            self._encode_soon(_own_frame(pixels, pts))
                else:
                    for proxy in self._proxies:
                        proxy.push(frame)
                for tap in self._taps:
                    try:
                        tap(frame)
                    except Exception:  # a broken recorder must not stop the call
                        log.exception("tap of %s failed; removing it", self.name)
                        self._taps.remove(tap)
                        break
        finally:
            if self.source is track:
                self.source = None
                self._task = None
                self._signal()


def _pixels(frame: av.VideoFrame) -> np.ndarray:
    """The frame's picture as one yuv420p array (even dimensions), to share between subscribers."""
    width, height = frame.width // 2 * 2, frame.height // 2 * 2
    if frame.format.name != "yuv420p" or (width, height) != (frame.width, frame.height):
        frame = frame.reformat(width=width, height=height, format="yuv420p")
    return frame.to_ndarray()


def _own_frame(pixels: np.ndarray, pts: int) -> av.VideoFrame:
    """A frame of its own (timestamps, flags) over shared, read-only pixels: no copy."""
    frame = av.VideoFrame.from_numpy_buffer(pixels, format="yuv420p")
    frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
    return frame


class ProxyTrack(MediaStreamTrack):
    """What a subscriber's peer connection sends: the slot's current publisher, or placeholders."""

    def __init__(self, slot: SourceSlot) -> None:
        super().__init__()
        self.kind = slot.kind
        self._slot: SourceSlot | None = slot
        self._queue: deque[Frame] = deque(maxlen=VIDEO_QUEUE if slot.kind == "video" else AUDIO_QUEUE)
        self._ready = asyncio.Event()
        self._last_pts = -1
        self._audio_pts = 0
        self._next_placeholder = time.monotonic()
        self.frames_out = 0
        self.placeholders_out = 0
        # Forwarding (VP8 subscribers): send the slot's shared encoding instead of encoding frames here.
        self.forwarding = False
        self._packets: deque[av.Packet] = deque()
        self._awaiting_keyframe = True
        self._keyframe_asked_at = 0.0
        self._sent_packets = False  # the last thing sent was shared packets (not our own placeholders)
        self._own_keyframe: Callable[[], None] | None = None

    def forward(self, sender: Any) -> None:
        """Send the slot's shared encoding through `sender` (an aiortc RTCRtpSender that negotiated VP8).

        Keyframe requests (PLI/FIR) from the subscriber reach aiortc's `_send_keyframe`, which only affects
        frames the sender encodes itself; it is redirected here so that, while forwarding, they ask the
        shared encoder instead."""
        self.forwarding = True
        self._own_keyframe = sender._send_keyframe
        sender._send_keyframe = self._keyframe_requested

    def _keyframe_requested(self) -> None:
        if self._sent_packets and self._slot is not None:
            self._slot.request_keyframe()
        elif self._own_keyframe is not None:
            self._own_keyframe()

    def push(self, frame: Frame) -> None:
        self._queue.append(frame)
        self._ready.set()

    def push_packets(self, packets: list[av.Packet]) -> None:
        if len(self._packets) >= PACKET_QUEUE:  # this subscriber fell behind: resume at a keyframe
            self._packets.clear()
            self._awaiting_keyframe, self._keyframe_asked_at = True, 0.0
        self._packets.extend(packets)
        self._ready.set()

    def _next_packet(self) -> av.Packet | None:
        while self._packets:
            packet = self._packets.popleft()
            if (packet.pts or 0) <= self._last_pts:  # encoded from a frame older than our last placeholder
                continue
            if self._awaiting_keyframe:
                if not packet.is_keyframe:
                    continue
                self._awaiting_keyframe = False
            self._last_pts = packet.pts or 0
            self._sent_packets = True
            return packet
        return None

    def wake(self) -> None:
        self._ready.set()

    async def recv(self) -> Frame | av.Packet:
        while True:
            slot = self._slot
            if self.readyState != "live" or slot is None:
                raise MediaStreamError
            if self._packets:
                packet = self._next_packet()
                if packet is not None:
                    self.frames_out += 1
                    return packet
                continue
            if (self.forwarding and slot.source is not None and self._awaiting_keyframe
                    and time.monotonic() - self._keyframe_asked_at > KEYFRAME_RETRY_S):
                slot.request_keyframe()  # joining the shared stream: it must start at a keyframe
                self._keyframe_asked_at = time.monotonic()
            if self._queue:
                frame = self._queue.popleft()
                out = self._video(frame) if self.kind == "video" else self._audio(frame)
                if out is not None:
                    self.frames_out += 1
                    return out
                continue
            self._ready.clear()
            if slot.source is not None:
                await self._ready.wait()  # a frame, a change of publisher, or stop()
                continue
            # No publisher: placeholders, paced here since nothing else paces them.
            delay = self._next_placeholder - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._ready.wait(), delay)
                    continue
                except TimeoutError:
                    pass
            if self.readyState != "live" or self._slot is None or self._slot.source is not None:
                continue
            if self._sent_packets:
                # Back from the shared stream to our own encoder: its next frame must be a keyframe, and
                # the next shared packets must start at one.
                self._sent_packets = False
                self._awaiting_keyframe, self._keyframe_asked_at = True, 0.0
                self._packets.clear()
                if self._own_keyframe is not None:
                    self._own_keyframe()
            interval = 1 / PLACEHOLDER_FPS if self.kind == "video" else AUDIO_SAMPLES / AUDIO_RATE
            self._next_placeholder = max(self._next_placeholder + interval, time.monotonic())
            self.placeholders_out += 1
            return self._black(self._slot) if self.kind == "video" else self._silence()

    def _video(self, frame: Frame) -> Frame | None:
        pts = frame.pts or 0
        if pts <= self._last_pts:  # stamped before a placeholder we already sent: too late to show
            return None
        self._last_pts = pts
        return frame

    def _black(self, slot: SourceSlot) -> av.VideoFrame:
        width, height = PLACEHOLDER_SIZE
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane, value in zip(frame.planes, (16, 128, 128), strict=True):
            plane.update(bytes([value]) * plane.buffer_size)
        frame.pts = max(slot.stamp(), self._last_pts + 1)
        frame.time_base = VIDEO_TIME_BASE
        self._last_pts = frame.pts
        return frame

    def _audio(self, frame: Frame) -> av.AudioFrame | None:
        # Audio frames are small: copy each so this subscriber's timestamps are its own.
        assert isinstance(frame, av.AudioFrame)
        # Rooms negotiate Opus only, whose decoder gives s16 stereo 48 kHz; the subscriber's encoder
        # refuses a change of format midway, so anything else is dropped.
        if frame.format.name != "s16" or frame.layout.name != "stereo" or frame.sample_rate != AUDIO_RATE:
            return None
        out = av.AudioFrame.from_ndarray(frame.to_ndarray(), format="s16", layout="stereo")
        out.sample_rate = AUDIO_RATE
        return self._restamp(out)

    def _silence(self) -> av.AudioFrame:
        out = av.AudioFrame.from_ndarray(np.zeros((1, 2 * AUDIO_SAMPLES), dtype=np.int16), format="s16",
                                         layout="stereo")
        out.sample_rate = AUDIO_RATE
        return self._restamp(out)

    def _restamp(self, frame: av.AudioFrame) -> av.AudioFrame:
        frame.pts = self._audio_pts
        frame.time_base = fractions.Fraction(1, frame.sample_rate)
        self._audio_pts += frame.samples
        return frame

    def stop(self) -> None:
        super().stop()
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.unsubscribe(self)
        self._ready.set()


async def drain(track: MediaStreamTrack) -> None:
    """Read and drop every frame of a received track nobody subscribes to (memory grows otherwise)."""
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
