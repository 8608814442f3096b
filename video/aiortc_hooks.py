"""Every use of aiortc's internals, in one place. `check()` (run by tests/video/test_aiortc_hooks.py, and once
per process before forwarding) fails loudly when an aiortc upgrade changes any of it; pyproject.toml pins
aiortc to `SUPPORTED` for that reason.

What the forwarding relay relies on:

1. Encoded frames out of a receiver. `RTCRtpReceiver._handle_rtp_packet` reassembles a complete encoded
   frame in its jitter buffer and puts `(codec, JitterFrame)` into `self.__decoder_queue`, the
   `queue.Queue` its decoder thread reads (`receive()` starts that thread with the queue). Replacing the
   queue before `receive()` runs shows us every encoded frame on the event loop (payload descriptors
   stripped, RTP timestamp counted from the stream's first frame) and lets us choose which ones the decoder
   thread gets.
2. Keyframe requests to a publisher: `RTCRtpReceiver._send_rtcp_pli(media_ssrc)`, for each active source
   that is not a retransmission (RTX) stream (`__rtx_ssrc`).
3. Keyframe requests from a subscriber: `RTCRtpSender._handle_rtcp_packet` calls `self._send_keyframe()`
   on PLI and FIR; an attribute on the sender instance redirects it.
4. Sending encoded frames: a track's `recv()` may return an `av.Packet`, which the sender packetizes with
   its encoder's `pack()` instead of encoding (`_next_encoded_frame`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterFrame

log = logging.getLogger(__name__)

SUPPORTED = (">=1.16", "<1.17")  # keep pyproject.toml's aiortc requirement equal to this (a test checks)
_SUPPORTED_RANGE = ((1, 16), (1, 17))


class IncompatibleAiortc(RuntimeError):
    """The installed aiortc no longer has the internals the forwarding relay uses."""


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One complete encoded frame as a receiver reassembled it."""

    mime: str  # lower case, e.g. "video/vp8", "audio/opus"
    data: bytes
    timestamp: int  # codec clock (90 kHz video, 48 kHz Opus), counted from the stream's first frame


OnFrame = Callable[[EncodedFrame], bool]  # returns whether the receiver's decoder gets the frame too


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def problems() -> list[str]:
    """What differs from the aiortc internals this module relies on (empty: all present)."""
    found: list[str] = []
    version = importlib.metadata.version("aiortc")
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if not (_SUPPORTED_RANGE[0] <= parts < _SUPPORTED_RANGE[1]):
        found.append(f"aiortc {version} is outside the supported range {','.join(SUPPORTED)}")
    handle = _source(RTCRtpReceiver._handle_rtp_packet)
    if "self.__decoder_queue.put((codec, encoded_frame))" not in handle:
        found.append("RTCRtpReceiver._handle_rtp_packet no longer puts (codec, encoded_frame) into __decoder_queue")
    receive = _source(RTCRtpReceiver.receive)
    if "self.__decoder_queue" not in receive or "decoder_worker" not in receive:
        found.append("RTCRtpReceiver.receive no longer starts its decoder thread on __decoder_queue")
    init = _source(RTCRtpReceiver.__init__)
    for name in ("self.__decoder_queue: queue.Queue", "self.__decoder_thread", "self.__started", "self.__rtx_ssrc"):
        if name not in init:
            found.append(f"RTCRtpReceiver.__init__ no longer sets {name.split(':')[0]}")
    if "media_ssrc" not in str(inspect.signature(RTCRtpReceiver._send_rtcp_pli)):
        found.append("RTCRtpReceiver._send_rtcp_pli(media_ssrc) is gone")
    if "self._send_keyframe()" not in _source(RTCRtpSender._handle_rtcp_packet):
        found.append("RTCRtpSender._handle_rtcp_packet no longer calls self._send_keyframe() on PLI/FIR")
    if "self.__encoder.pack(data)" not in _source(RTCRtpSender._next_encoded_frame):
        found.append("RTCRtpSender no longer packs pre-encoded av.Packets (encoder.pack)")
    for encoder in (Vp8Encoder, OpusEncoder):
        if not callable(getattr(encoder, "pack", None)):
            found.append(f"{encoder.__name__}.pack is gone")
    frame = JitterFrame(data=b"x", timestamp=1)
    if (frame.data, frame.timestamp) != (b"x", 1):
        found.append("JitterFrame no longer has data and timestamp")
    return found


def check() -> None:
    """Raise `IncompatibleAiortc` listing every internal that changed."""
    found = problems()
    if found:
        raise IncompatibleAiortc("the forwarding relay cannot hook this aiortc: " + "; ".join(found)
                                 + ". Set STEWARD_VIDEO_RELAY_MODE=transcode, or update video/aiortc_hooks.py.")


@functools.cache
def compatible() -> bool:
    """Whether forwarding can work with the installed aiortc (logged once when not)."""
    try:
        check()
    except IncompatibleAiortc as exc:
        log.error("%s", exc)
        return False
    return True


class _TapQueue(queue.Queue[Any]):
    """The receiver's decoder queue: shows each encoded frame to a handler, which decides if it is decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.on_frame: OnFrame | None = None

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        on_frame = self.on_frame
        if item is not None and on_frame is not None:
            codec, frame = item
            try:
                decode = on_frame(EncodedFrame(codec.mimeType.lower(), frame.data, frame.timestamp))
            except Exception:  # a broken handler must not stop the receiver
                log.exception("encoded frame handler failed")
                decode = True
            if not decode:
                return
        super().put(item, block, timeout)


class EncodedTap:
    """The encoded frames of one `RTCRtpReceiver`, and keyframe requests to its sender."""

    def __init__(self, receiver: RTCRtpReceiver, q: _TapQueue) -> None:
        self.receiver = receiver
        self._queue = q

    def set_handler(self, on_frame: OnFrame | None) -> None:
        """Call `on_frame` for every complete encoded frame (on the event loop); None decodes every frame."""
        self._queue.on_frame = on_frame

    async def request_keyframe(self) -> int:
        """Send a picture loss indication (PLI) to the publisher; the number of streams asked."""
        rtx = set(getattr(self.receiver, "_RTCRtpReceiver__rtx_ssrc", {}))
        ssrcs = [s.source for s in self.receiver.getSynchronizationSources() if s.source not in rtx]
        for ssrc in ssrcs:
            await self.receiver._send_rtcp_pli(ssrc)
        return len(ssrcs)


def tap_receiver(receiver: RTCRtpReceiver) -> EncodedTap:
    """Tap a receiver's encoded frames; it must not have started receiving (call it after
    `setRemoteDescription`, before the connection is up). Until a handler is set, every frame is decoded."""
    if getattr(receiver, "_RTCRtpReceiver__started", True) or getattr(receiver, "_RTCRtpReceiver__decoder_thread",
                                                                     None) is not None:
        raise IncompatibleAiortc("tap_receiver() needs a receiver that has not started receiving")
    q = _TapQueue()
    receiver._RTCRtpReceiver__decoder_queue = q  # type: ignore[attr-defined]
    return EncodedTap(receiver, q)


def redirect_keyframe_requests(sender: RTCRtpSender, callback: Callable[[], None]) -> Callable[[], None]:
    """Make the subscriber's PLI/FIR call `callback` instead of forcing the sender's own next keyframe; the
    sender's own keyframe function, for frames it still encodes itself."""
    own: Callable[[], None] = sender._send_keyframe
    sender._send_keyframe = callback  # type: ignore[method-assign]
    return own
