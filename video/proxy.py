"""What a subscriber's peer connection sends: a `ProxyTrack` per m-line, fed by a `SourceSlot`.

A proxy sends its slot's current publisher (decoded frames its sender encodes, or packets: the publisher's
own in forward mode, the slot's shared encoding in transcode mode) or, while there is none, placeholders,
keeping its timestamps continuous across switches. See `video.tracks` for the modes.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from video import aiortc_hooks
from video.forwarding import OPUS_SILENCE, black_vp8_keyframe, packet
from video.tracks import (
    AUDIO_QUEUE,
    AUDIO_RATE,
    AUDIO_SAMPLES,
    KEYFRAME_RETRY_S,
    PACKET_QUEUE,
    PLACEHOLDER_FPS,
    PLACEHOLDER_SIZE,
    VIDEO_QUEUE,
    VIDEO_TIME_BASE,
    Frame,
    SourceSlot,
)


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
        # Forwarding: send packets (the publisher's, or the slot's shared encoding) instead of encoding
        # frames here. With `packets_only` (forward mode) placeholders are pre-encoded too: no encoder at all.
        self.settled = False  # its m-line's codec is known (until then it asks the slot for nothing)
        self.forwarding = False
        self.packets_only = False
        self._packets: deque[av.Packet] = deque()
        self._awaiting_keyframe = True
        self._keyframe_asked_at = 0.0
        self._sent_packets = False  # the last thing sent was the slot's packets (not placeholders)
        self._own_keyframe: Callable[[], None] | None = None

    @property
    def last_pts(self) -> int:
        return self._last_pts

    def forward(self, sender: Any, *, packets_only: bool = False) -> None:
        """Send the slot's packets through `sender` (an aiortc RTCRtpSender that negotiated the slot's
        forwarded codec: VP8, or Opus with `packets_only`).

        Keyframe requests (PLI/FIR) from the subscriber reach aiortc's `_send_keyframe`, which only affects
        frames the sender encodes itself; they are redirected here so that, while forwarding, they ask the
        publisher (forward mode) or the shared encoder (transcode mode)."""
        self.forwarding, self.packets_only = True, packets_only
        self._awaiting_keyframe = self.kind == "video"  # every Opus packet stands on its own
        self._own_keyframe = aiortc_hooks.redirect_keyframe_requests(sender, self._keyframe_requested)

    def restart_stream(self) -> None:
        """The slot's publisher changed: forwarded video starts again at the new stream's keyframe (asked for at
        once); what is queued of the old stream is dropped."""
        if self.forwarding and self.kind == "video":
            self._packets.clear()
            self._awaiting_keyframe, self._keyframe_asked_at = True, 0.0
        self._ready.set()

    def _keyframe_requested(self) -> None:
        if self._sent_packets and self._slot is not None:
            self._slot.request_keyframe()
        elif self._own_keyframe is not None and not self.packets_only:  # placeholders: each one is a keyframe
            self._own_keyframe()

    def push(self, frame: Frame) -> None:
        self._queue.append(frame)
        self._ready.set()

    def push_packets(self, packets: list[av.Packet]) -> None:
        if self.kind == "audio":
            if len(self._packets) >= AUDIO_QUEUE:  # fell behind: drop the oldest 20 ms
                self._packets.popleft()
        elif len(self._packets) >= PACKET_QUEUE:  # this subscriber fell behind: resume at a keyframe
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
            if self._slot is not None:
                self._slot.delivered(self._last_pts)
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
            if (self.forwarding and self.kind == "video" and slot.source is not None and self._awaiting_keyframe
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
                self._awaiting_keyframe, self._keyframe_asked_at = self.kind == "video", 0.0
                self._packets.clear()
                if self._own_keyframe is not None and not self.packets_only:
                    self._own_keyframe()
            interval = 1 / PLACEHOLDER_FPS if self.kind == "video" else AUDIO_SAMPLES / AUDIO_RATE
            self._next_placeholder = max(self._next_placeholder + interval, time.monotonic())
            self.placeholders_out += 1
            if self.packets_only:
                return self._placeholder_packet(self._slot)
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

    def _placeholder_packet(self, slot: SourceSlot) -> av.Packet:
        """Forward mode's placeholders, pre-encoded: a black VP8 keyframe, or 20 ms of Opus silence."""
        if self.kind == "video":
            pts = max(slot.stamp(), self._last_pts + 1)
            data = black_vp8_keyframe(*PLACEHOLDER_SIZE)
        else:  # 960 samples on from the last packet, unless that fell behind the clock (after a stall)
            pts = self._last_pts + AUDIO_SAMPLES
            if self._last_pts < 0 or slot.stamp() - pts > AUDIO_RATE // 10:
                pts = max(slot.stamp(), pts)
            data = OPUS_SILENCE
        self._last_pts = pts
        return packet(data, pts, slot.time_base, True)

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
