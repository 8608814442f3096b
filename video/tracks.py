"""Media plumbing of a room: one source slot per published track, proxy tracks for its subscribers.

A `SourceSlot` (say, the resident's camera) is the only reader of whichever received track currently
publishes into it, so every received track is drained whether or not anyone watches. It fans frames out
to `ProxyTrack`s (`video.proxy`), which are what the peer connections send. A proxy exists from the moment its
subscriber connects: before a publisher arrives (and after it leaves) it sends placeholder frames (black
video at a low rate, silence), and when one arrives it switches to it with continuous timestamps. That
is how participants join in any order without renegotiation: the browser only ever sees one track.

Two relay modes. `transcode`: the slot decodes its publisher and each subscriber gets decoded frames (or
the slot's one shared VP8 encoding). `forward` (the default): the slot taps the publisher's receiver for
complete encoded frames (`video.aiortc_hooks`) and hands them to its subscribers' senders as `av.Packet`s,
rebased onto the slot's clock, without decoding; a subscriber starts on a keyframe, and its picture-loss
reports and its joining ask the publisher for one (rate-limited). The slot decodes only while something
needs pictures or samples (a snapshot, a subscriber on another codec; not the recorder, which takes the
Opus packets), and then once for all of them, starting at a keyframe.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from video.aiortc_hooks import EncodedFrame, EncodedTap
from video.encoding import SharedVp8Encoder
from video.forwarding import FORWARDABLE, KeyframeRequests, is_keyframe, packet

if TYPE_CHECKING:
    from video.proxy import ProxyTrack

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
FRESH_S = 0.5  # a decoded picture this recent serves a snapshot as is
RAW_LEASE_S = 5.0  # forward mode: after a snapshot, keep decoding this long (stewards take several)
STALE_S = 10.0  # a snapshot whose fresh picture does not come takes an older one only this recent
ARRIVALS = 256  # frames whose arrival time is kept for the relay latency

Frame = av.VideoFrame | av.AudioFrame
Tap = Callable[[Frame], None]
EncodedTapFn = Callable[[EncodedFrame], None]


class SourceSlot:
    """One published track of one role in a room; the publisher may change, subscribers stay."""

    def __init__(self, name: str, kind: str, *, forward: bool = False) -> None:
        self.name, self.kind, self.forward = name, kind, forward
        self.clock = VIDEO_CLOCK if kind == "video" else AUDIO_RATE
        self.time_base = fractions.Fraction(1, self.clock)
        self.source: MediaStreamTrack | None = None
        self.source_codec: str | None = None  # of the publisher's encoded frames, once one arrived
        self.latest: Frame | None = None  # the newest decoded frame (snapshots)
        self.latest_at = 0.0
        self.frames_in = 0  # decoded
        self.encoded_in = 0
        self.frames_forwarded = 0
        self.latencies_ms: deque[float] = deque(maxlen=4096)  # encoded frame complete -> handed to a sender
        self._tap: EncodedTap | None = None
        self._keyframes: KeyframeRequests | None = None
        self._offset: int | None = None  # publisher timestamp -> slot clock
        self._last_pts = -1
        self._decoding = False
        self._raw_until = 0.0
        self._waiters: list[asyncio.Future[Frame | None]] = []
        self._arrived_ts: dict[int, float] = {}  # publisher timestamp -> arrival (frames that get decoded)
        self._arrived: dict[int, float] = {}  # slot pts -> arrival
        self._task: asyncio.Task[None] | None = None
        self._proxies: set[ProxyTrack] = set()
        self._taps: list[Tap] = []
        self._encoded_taps: list[EncodedTapFn] = []
        self._t0 = time.monotonic()
        # The shared VP8 encoding for forwarding subscribers: the newest frame waits in a one-frame
        # mailbox, so a slow encoder skips frames instead of building latency.
        self.encoder = SharedVp8Encoder()
        self._encode_task: asyncio.Task[None] | None = None
        self._encode_next: av.VideoFrame | None = None
        self._encode_ready = asyncio.Event()

    def attach(self, track: MediaStreamTrack, tap: EncodedTap | None = None) -> None:
        """Make `track` this slot's publisher (replacing any other) and start draining it; `tap` gives its
        receiver's encoded frames (needed to forward; in transcode mode it times the relay)."""
        self.detach()
        self.source = track
        self.latest, self.source_codec, self._offset, self._decoding = None, None, None, False
        if tap is not None:
            self._tap, self._keyframes = tap, KeyframeRequests(tap.request_keyframe)
            tap.set_handler(self._on_encoded)
        if self.forward:
            # Another publisher's stream (a rejoin replaces the old one at once, no placeholder between): each
            # subscriber starts it at its keyframe and asks for one. It was sent the new stream's delta frames,
            # decoded against the old stream's pictures, until a keyframe happened to come.
            for proxy in self._proxies:
                proxy.restart_stream()
        self._task = asyncio.create_task(self._pump(track), name=f"pump-{self.name}")
        self._signal()

    def detach(self, track: MediaStreamTrack | None = None) -> None:
        """Stop reading the publisher (only if it is still `track`, when given)."""
        if (self.source is None and self._tap is None) or (track is not None and track is not self.source):
            return
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._tap is not None:
            self._tap.set_handler(_drop)  # nobody reads the old track any more: let nothing pile up for it
            self._tap = None
        if self._keyframes is not None:
            self._keyframes.close()
            self._keyframes = None
        self.source, self.latest = None, None  # a publisher's last picture is no snapshot once it left
        self._signal()

    def subscribe(self) -> ProxyTrack:
        """A new track that sends this slot's media to one subscriber."""
        from video.proxy import ProxyTrack  # the proxy module builds on this one

        proxy = ProxyTrack(self)
        self._proxies.add(proxy)
        return proxy

    def unsubscribe(self, proxy: ProxyTrack) -> None:
        self._proxies.discard(proxy)

    def add_tap(self, tap: Tap | None, encoded: EncodedTapFn | None = None) -> None:
        """Call `tap(frame)` for every decoded frame (on the event loop: keep it cheap). With `encoded`, a
        forwarding slot calls that instead with each encoded frame of the forwarded codec, and need not
        decode for it; with `encoded` alone, it never decodes for this tap (forward mode's recorder)."""
        if tap is not None:
            self._taps.append(tap)
        if encoded is not None:
            self._encoded_taps.append(encoded)

    def remove_tap(self, tap: Tap) -> None:
        if tap in self._taps:
            self._taps.remove(tap)

    def request_keyframe(self) -> None:
        """A subscriber needs a keyframe: from the publisher when forwarding it, else from the shared encoder."""
        if self.forward and self._keyframes is not None and self.source_codec in (None, FORWARDABLE[self.kind]):
            self._keyframes.request()
        else:
            self.encoder.request_keyframe()

    @property
    def keyframe_requests(self) -> tuple[int, int]:
        """(asked, sent to the publisher) for the current publisher."""
        return (self._keyframes.asked, self._keyframes.sent) if self._keyframes is not None else (0, 0)

    def _forwardable(self) -> bool:
        return self.source_codec == FORWARDABLE[self.kind]

    def _on_encoded(self, frame: EncodedFrame) -> bool:
        """Each complete encoded frame of the publisher (on the event loop); returns whether to decode it."""
        now = time.monotonic()
        self.encoded_in += 1
        if frame.mime != self.source_codec:
            self.source_codec = frame.mime
            self._signal()
        if not self.forward:
            _remember(self._arrived_ts, frame.timestamp, now)
            return True
        forwardable = self._forwardable()
        key = is_keyframe(frame.mime, frame.data)
        if forwardable:
            for tap in self._encoded_taps:
                try:
                    tap(frame)
                except Exception:  # a broken recorder must not stop the call
                    log.exception("encoded tap of %s failed; removing it", self.name)
                    self._encoded_taps.remove(tap)
                    break
            pts = self._rebase(frame.timestamp)
            consumers = [p for p in self._proxies if p.forwarding]
            if consumers:
                out = packet(frame.data, pts, self.time_base, key)
                _remember(self._arrived, pts, now)
                for proxy in consumers:
                    proxy.push_packets([out])
                self.frames_forwarded += 1
        else:
            _remember(self._arrived_ts, frame.timestamp, now)
        if not self._needs_raw(forwardable):
            self._decoding = False
            return False
        if self.kind == "video" and not self._decoding:
            if not key:  # a decoder must start at a keyframe
                if self._keyframes is not None:
                    self._keyframes.request()
                return False
            self._decoding = True
        return True

    def _needs_raw(self, forwardable: bool) -> bool:
        """Whether anything needs decoded frames: the recorder, a snapshot, a subscriber on another codec, or
        the shared encoder (VP8 subscribers of a publisher that sends another codec)."""
        if self._waiters or time.monotonic() < self._raw_until:
            return True
        if self._taps and not (forwardable and len(self._encoded_taps) == len(self._taps)):
            return True
        return any(p.settled and (not p.forwarding or not forwardable) for p in self._proxies)

    def _rebase(self, timestamp: int) -> int:
        """The publisher's timestamp on the slot's clock: continuous across publishers and placeholders."""
        if self._offset is None or timestamp + self._offset < self._last_pts - self.clock:
            step = 1 if self.kind == "video" else AUDIO_SAMPLES
            floor = max([self._last_pts, *(p.last_pts for p in self._proxies)]) + step
            self._offset = max(self.stamp(), floor) - timestamp
        pts = timestamp + self._offset
        self._last_pts = max(self._last_pts, pts)
        return pts

    def delivered(self, pts: int) -> None:
        """A packet went to a subscriber's sender: time it since its frame arrived (video)."""
        arrived = self._arrived.get(pts)
        if arrived is not None and self.kind == "video":
            self.latencies_ms.append((time.monotonic() - arrived) * 1000)

    async def fresh_frame(self, timeout: float = 5.0) -> Frame | None:
        """A picture decoded now or very recently (snapshots). In forward mode decoding starts (at a
        keyframe asked for now) and goes on for a few seconds; if none comes in time, the newest older frame
        if it is under STALE_S old, else None (a picture from an earlier snapshot, minutes old, would be
        stored as the resident's latest). None without a publisher: a snapshot after the resident hung up
        stored the last picture from before."""
        if self.source is None:
            return None
        if self.latest is not None and time.monotonic() - self.latest_at < FRESH_S:
            return self.latest
        self._raw_until = time.monotonic() + RAW_LEASE_S
        waiter: asyncio.Future[Frame | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self.forward and self._keyframes is not None:
            self._keyframes.request()
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:  # None if the publisher left meanwhile, or the newest picture is old
            return self.latest if time.monotonic() - self.latest_at < STALE_S else None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

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
        """Now on this slot's clock: one clock for every publisher, so timestamps never jump back."""
        return int((time.monotonic() - self._t0) * self.clock)

    async def close(self) -> None:
        """Stop the pump and the encoder, end every proxy (idempotent)."""
        task, encode_task = self._task, self._encode_task
        self.detach()
        self._encode_task = None
        if encode_task is not None:
            encode_task.cancel()
        await asyncio.gather(*(t for t in (task, encode_task) if t is not None), return_exceptions=True)
        for waiter in self._waiters:  # a snapshot awaiting a picture gets none (cancelling it reached the client
            if not waiter.done():  # as a bare 500: CancelledError passes every error handler)
                waiter.set_result(None)
        for proxy in list(self._proxies):
            proxy.stop()
        self._taps.clear()
        self._encoded_taps.clear()

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
                self.latest, self.latest_at = frame, time.monotonic()
                if isinstance(frame, av.VideoFrame):
                    # One clock per slot, whoever publishes, so timestamps never jump back. Each subscriber
                    # gets its own frame over shared pixels: encoders write into the frames they encode
                    # (PyAV rebases pts to the codec's time base, aiortc sets pict_type for keyframes).
                    arrived = self._arrived_ts.pop(frame.pts, None) if frame.pts is not None else None
                    pts = max(self.stamp(), self._last_pts + 1)
                    self._last_pts = pts
                    frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
                    if arrived is not None:
                        _remember(self._arrived, pts, arrived)
                    own = [p for p in self._proxies if not p.forwarding]
                    shared = (any(p.forwarding for p in self._proxies)
                              and not (self.forward and self._forwardable()))
                    if own or shared:
                        pixels = _pixels(frame)
                        for proxy in own:
                            proxy.push(_own_frame(pixels, pts))
                        if shared:
                            self._encode_soon(_own_frame(pixels, pts))
                else:
                    for proxy in self._proxies:
                        if not proxy.forwarding:
                            proxy.push(frame)
                for waiter in self._waiters:
                    if not waiter.done():
                        waiter.set_result(frame)
                # taps that also take encoded frames got this one already, before it was decoded
                encoded_taps = self.forward and self._forwardable() and self._encoded_taps
                for tap in [] if encoded_taps else self._taps:
                    try:
                        tap(frame)
                    except Exception:  # a broken recorder must not stop the call
                        log.exception("tap of %s failed; removing it", self.name)
                        self._taps.remove(tap)
                        break
        finally:
            if self.source is track:  # the publisher's track ended by itself (an RTCP BYE): let its receiver go
                self._task = None  # this task ends here: nothing to cancel
                self.detach(track)


def _drop(frame: EncodedFrame) -> bool:
    return False


def _remember(times: dict[int, float], key: int, at: float) -> None:
    times[key] = at
    if len(times) > ARRIVALS:
        del times[next(iter(times))]


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


async def drain(track: MediaStreamTrack) -> None:
    """Read and drop every frame of a received track nobody subscribes to (memory grows otherwise)."""
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
