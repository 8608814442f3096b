"""The call's audio, both sides mixed to 16 kHz mono Ogg/Opus, encoded in a thread of its own.

The event loop only puts each 20 ms frame into a queue: the encoded Opus packet as it arrived when the
relay forwards (the recorder decodes it), or a copy of the decoded frame when it transcodes; decoding,
resampling, mixing and encoding happen in the recorder's thread. Each side's frames are laid on a common
timeline by arrival time: contiguous while they flow, with silence where a side was absent or silent.
Mixed audio older than two seconds is final and is encoded at once, so memory stays bounded however long
the call lasts.
"""

from __future__ import annotations

import fractions
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import av
import numpy as np

from api.db import utcnow
from video.aiortc_hooks import EncodedFrame
from video.tracks import EncodedTapFn, Frame, Tap

log = logging.getLogger(__name__)

RATE = 16_000
BLOCK = RATE  # mixing block: one second
SETTLE_BLOCKS = 2  # blocks older than this are final
GAP = RATE // 4  # a side that arrives more than 250 ms late has paused: leave silence, do not shift
BITRATE = 24_000


@dataclass(frozen=True)
class Recording:
    path: Path
    started_at: datetime
    duration_s: float


class _Side:
    def __init__(self) -> None:
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        self.next_pos: int | None = None
        self._decoder: av.AudioCodecContext | None = None

    def decode(self, data: bytes) -> list[av.AudioFrame]:
        """An Opus packet as decoded frames (48 kHz stereo s16, as aiortc's decoder gives them)."""
        if self._decoder is None:
            self._decoder = av.CodecContext.create("libopus", "r")
            self._decoder.format, self._decoder.layout, self._decoder.sample_rate = "s16", "stereo", 48_000
        try:
            return list(self._decoder.decode(av.Packet(data)))
        except av.FFmpegError:
            return []


class CallRecorder:
    """Records every tapped track into one file. `stop()` (blocking: call it from a thread) finishes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started_at = utcnow()
        self._t0 = time.monotonic()
        self._queue: queue.SimpleQueue[tuple[int, float, np.ndarray | bytes, int, str] | None] = queue.SimpleQueue()
        self._sides: list[_Side] = []
        self._blocks: dict[int, np.ndarray] = {}
        self._written = 0  # samples encoded so far
        self._end = 0  # furthest sample any side reached
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"recorder-{path.stem}", daemon=True)
        self._thread.start()

    def tap(self) -> Tap:
        """A new side of the call: give the returned function every decoded frame of that side."""
        side = len(self._sides)
        self._sides.append(_Side())

        def put(frame: Frame) -> None:
            if isinstance(frame, av.AudioFrame) and not self._stopped:
                self._queue.put((side, time.monotonic() - self._t0, frame.to_ndarray(), frame.sample_rate,
                                 frame.layout.name))

        return put

    def taps(self) -> tuple[Tap, EncodedTapFn]:
        """A new side of the call: a tap for its decoded frames and one for its encoded Opus packets (the
        slot calls one or the other)."""
        put = self.tap()
        side = len(self._sides) - 1

        def put_encoded(frame: EncodedFrame) -> None:
            if frame.mime == "audio/opus" and not self._stopped:
                self._queue.put((side, time.monotonic() - self._t0, frame.data, 48_000, "opus"))

        return put, put_encoded

    def stop(self) -> Recording | None:
        """Finish the file; None when nothing was heard (or recording failed: logged)."""
        if not self._stopped:
            self._stopped = True
            self._queue.put(None)
        self._thread.join()
        if self._error is not None or self._written == 0:
            self.path.unlink(missing_ok=True)
            return None
        return Recording(self.path, self.started_at, self._written / RATE)

    def _run(self) -> None:
        try:
            with av.open(str(self.path), "w", format="ogg") as container:
                stream = container.add_stream("libopus", rate=RATE, layout="mono")
                stream.bit_rate = BITRATE
                while True:
                    item = self._queue.get()
                    if item is None:
                        break
                    side, t, data, rate, layout = item
                    if isinstance(data, bytes):  # an Opus packet
                        for frame in self._sides[side].decode(data):
                            self._place(side, t, frame.to_ndarray(), frame.sample_rate, frame.layout.name)
                    else:
                        self._place(side, t, data, rate, layout)
                    self._flush(container, stream, final=False)
                self._flush(container, stream, final=True)
                for packet in stream.encode(None):
                    container.mux(packet)
        except Exception as exc:
            log.exception("recording %s failed", self.path)
            self._error = exc

    def _place(self, side_index: int, t: float, data: np.ndarray, sample_rate: int, layout: str) -> None:
        side = self._sides[side_index]
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout=layout)
        frame.sample_rate = sample_rate
        parts = [f.to_ndarray().reshape(-1) for f in side.resampler.resample(frame)]
        if not parts:
            return
        samples = np.concatenate(parts)
        arrived = int(t * RATE) - len(samples)
        if side.next_pos is None or abs(arrived - side.next_pos) > GAP:
            side.next_pos = max(arrived, 0)
        pos = max(side.next_pos, self._written)
        side.next_pos = pos + len(samples)
        self._end = max(self._end, side.next_pos)
        offset = 0
        while offset < len(samples):
            block, start = divmod(pos + offset, BLOCK)
            n = min(BLOCK - start, len(samples) - offset)
            buf = self._blocks.setdefault(block, np.zeros(BLOCK, dtype=np.int32))
            buf[start:start + n] += samples[offset:offset + n]
            offset += n

    def _flush(self, container: av.container.OutputContainer, stream: av.audio.stream.AudioStream,
               *, final: bool) -> None:
        now_block = int((time.monotonic() - self._t0) * RATE) // BLOCK
        last = (self._end - 1) // BLOCK if final else now_block - SETTLE_BLOCKS
        first = self._written // BLOCK
        for block in range(first, last + 1):
            buf = self._blocks.pop(block, None)
            mixed = np.zeros(BLOCK, dtype=np.int16) if buf is None else np.clip(buf, -32768, 32767).astype(np.int16)
            if final and block == last:
                mixed = mixed[: self._end - block * BLOCK]
            frame = av.AudioFrame.from_ndarray(mixed.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts, frame.time_base = self._written, fractions.Fraction(1, RATE)
            for packet in stream.encode(frame):
                container.mux(packet)
            self._written += len(mixed)
