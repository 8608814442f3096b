"""A decoded video frame as a JPEG (FFmpeg's MJPEG encoder; no imaging library needed)."""

from __future__ import annotations

import fractions

import av

QUALITY = 4  # MJPEG qscale: 2 (best) .. 31


def encode_jpeg(frame: av.VideoFrame) -> bytes:
    """The frame as a baseline JPEG (CPU-bound: call it from a thread)."""
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = frame.width, frame.height
    codec.pix_fmt = "yuvj420p"
    codec.time_base = fractions.Fraction(1, 1)
    codec.options = {"qmin": str(QUALITY), "qmax": str(QUALITY)}
    image = frame.reformat(format="yuvj420p")
    image.pts = 0
    packets = list(codec.encode(image)) + list(codec.encode(None))
    return b"".join(bytes(p) for p in packets)
