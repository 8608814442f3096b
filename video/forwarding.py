"""Pieces of encoded forwarding: which codecs forward, keyframe detection, pre-encoded placeholders and the
rate limit on keyframe requests to a publisher.

In forward mode a subscriber never runs an encoder: it sends the publisher's encoded frames, and before a
publisher arrives (or after it left) pre-encoded placeholders: a black 160x120 VP8 keyframe at a low rate
(every one a keyframe, so a picture loss needs no answer) and Opus's 3-byte silence frame.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import logging
import time
from collections.abc import Awaitable, Callable

import av

log = logging.getLogger(__name__)

FORWARDABLE = {"video": "video/vp8", "audio": "audio/opus"}  # what a subscriber gets without decoding
KEYFRAME_REQUEST_INTERVAL_S = 0.5  # at most one PLI per publisher per interval; later ones wait for the next
OPUS_SILENCE = b"\xfc\xff\xfe"  # a 20 ms stereo CELT frame that decodes to silence (libopus's own DTX frame)


def is_keyframe(mime: str, data: bytes) -> bool:
    """Whether a decoder can start at this frame. VP8: the P bit of the frame tag is 0. H.264 (Annex B, as
    aiortc depayloads it): an IDR slice or a sequence parameter set. Audio: always."""
    if mime == "video/vp8":
        return bool(data) and data[0] & 1 == 0
    if mime == "video/h264":
        start = data.find(b"\x00\x00\x01")
        while start >= 0 and start + 3 < len(data):
            if data[start + 3] & 0x1F in (5, 7):
                return True
            start = data.find(b"\x00\x00\x01", start + 3)
        return False
    return True


@functools.cache
def black_vp8_keyframe(width: int = 160, height: int = 120) -> bytes:
    """A black VP8 keyframe (about 60 bytes)."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, 90_000)
    codec.bit_rate = 100_000
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, value in zip(frame.planes, (16, 128, 128), strict=True):
        plane.update(bytes([value]) * plane.buffer_size)
    frame.pts, frame.pict_type = 0, av.video.frame.PictureType.I
    data = b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])
    assert is_keyframe("video/vp8", data)
    return data


def packet(data: bytes, pts: int, time_base: fractions.Fraction, keyframe: bool) -> av.Packet:
    """An encoded frame as aiortc's senders take it (they call `encoder.pack` on it instead of encoding)."""
    out = av.Packet(data)
    out.pts, out.time_base, out.is_keyframe = pts, time_base, keyframe
    return out


class KeyframeRequests:
    """Keyframe requests to one publisher, at most one per `interval`: a request inside the window is sent
    when the window ends (once, however many came in), so none is lost and the publisher is not flooded."""

    def __init__(self, send: Callable[[], Awaitable[int]], interval: float = KEYFRAME_REQUEST_INTERVAL_S) -> None:
        self._send, self.interval = send, interval
        self._last = -interval
        self._pending: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.asked = 0  # requests made (subscribers' PLIs, joins, decoder starts)
        self.sent = 0  # requests sent to the publisher

    def request(self) -> None:
        self.asked += 1
        if self._pending is not None:
            return
        wait = self._last + self.interval - time.monotonic()
        if wait <= 0:
            self._fire()
        else:
            self._pending = asyncio.get_running_loop().call_later(wait, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._last = time.monotonic()
        self.sent += 1
        task = asyncio.ensure_future(self._send_quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_quietly(self) -> None:
        try:
            await self._send()
        except ConnectionError:
            pass
        except Exception:
            log.exception("keyframe request failed")

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        for task in self._tasks:
            task.cancel()
