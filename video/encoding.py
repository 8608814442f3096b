"""One VP8 encoding of a published video for all its subscribers.

aiortc re-encodes a relayed track once per subscriber; its senders also accept encoded packets
(`encoder.pack`), so a slot encodes each frame once and every VP8 subscriber forwards the same packets.
The cost: one bitrate for all subscribers (no per-subscriber REMB adaptation), and keyframes are shared
(a subscriber's keyframe request makes everyone's next frame a keyframe).
"""

from __future__ import annotations

import fractions

import av

BITRATE = 800_000
KEYFRAME_INTERVAL = 240  # frames (10 s at 24 fps): a safety net besides keyframe requests
VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)


class SharedVp8Encoder:
    """A libvpx encoder configured as aiortc's (realtime, CBR). `encode` is CPU-bound: call it from a thread."""

    def __init__(self, bitrate: int = BITRATE) -> None:
        self.bitrate = bitrate
        self.frames = 0
        self._codec: av.VideoCodecContext | None = None
        self._keyframe = False

    def request_keyframe(self) -> None:
        self._keyframe = True

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.time_base = VIDEO_TIME_BASE  # frames arrive on the slot's 90 kHz clock: no rebasing
        codec.bit_rate = self.bitrate
        codec.gop_size = KEYFRAME_INTERVAL
        codec.qmin, codec.qmax = 2, 56
        codec.thread_count = 1  # libvpx with 2 threads took 25x longer per frame on the 2-core machine
        codec.options = {"bufsize": str(self.bitrate), "cpu-used": "-6", "deadline": "realtime",
                         "lag-in-frames": "0", "minrate": str(self.bitrate), "maxrate": str(self.bitrate),
                         "noise-sensitivity": "4", "overshoot-pct": "15", "partitions": "0",
                         "static-thresh": "1", "undershoot-pct": "100"}
        return codec

    def encode(self, frame: av.VideoFrame) -> list[av.Packet]:
        """The packets of one frame (a new size starts a new stream with a keyframe)."""
        if self._codec is None or (self._codec.width, self._codec.height) != (frame.width, frame.height):
            self._codec = self._open(frame.width, frame.height)
        keyframe, self._keyframe = self._keyframe, False
        frame.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        packets = list(self._codec.encode(frame))
        for packet in packets:
            packet.time_base = VIDEO_TIME_BASE
        self.frames += 1
        return packets
