"""A decoded video frame as a JPEG (FFmpeg's MJPEG encoder; no imaging library needed)."""

from __future__ import annotations

import fractions
import threading

import av
from av.video.reformatter import VideoReformatter

QUALITY = 4  # MJPEG qscale: 2 (best) .. 31

# One encoding at a time, with a scaler of its own, and the last frame's JPEG kept: two snapshots within a
# moment get the same decoded frame (`SourceSlot.fresh_frame`), and `VideoFrame.reformat` uses the frame's one
# cached scaler without the GIL: two threads on one frame crashed the process (SIGSEGV) or hung a thread.
_lock = threading.Lock()
_last: tuple[av.VideoFrame, bytes] | None = None


def encode_jpeg(frame: av.VideoFrame) -> bytes:
    """The frame as a baseline JPEG (CPU-bound: call it from a thread; safe from several at once)."""
    global _last
    with _lock:
        if _last is not None and _last[0] is frame:
            return _last[1]
        codec = av.CodecContext.create("mjpeg", "w")
        codec.width, codec.height = frame.width, frame.height
        codec.pix_fmt = "yuvj420p"
        codec.time_base = fractions.Fraction(1, 1)
        codec.options = {"qmin": str(QUALITY), "qmax": str(QUALITY)}
        image = VideoReformatter().reformat(frame, format="yuvj420p")
        image.pts = 0
        packets = list(codec.encode(image)) + list(codec.encode(None))
        jpeg = b"".join(bytes(p) for p in packets)
        _last = (frame, jpeg)
        return jpeg
