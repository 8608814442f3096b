"""The call's audio, both sides mixed to 16 kHz mono Ogg/Opus: the `call_recording` note that is transcribed.

Two recorders, one per relay mode, each with a thread of its own:

- `PacketRecorder` (forward mode) decodes nothing during the call. The event loop appends each side's Opus
  packets, as they arrived, to a list that the thread muxes every half second into a WebM file (one Opus
  stream per side, packets copied as they are: no decoding, no encoding), written out as it goes: a process
  killed mid-call leaves all of it but the last second or so, for `recover()`. A packet's time is its RTP
  timestamp (the sender's sample clock, which runs on through pauses) anchored to its arrival, and anchored
  afresh when the two drift apart by more than `GAP` (a new publisher, a stall). `stop()` mixes that file
  down into the note: the same decoding, mixing and encoding the live recorder does, done once after the
  call instead of 50 times a second per side while it runs.
- `CallRecorder` (transcode mode, where the relay decodes anyway) gets a copy of each decoded 20 ms frame,
  stamped with its arrival on the event loop, and mixes and encodes as the call goes (by those stamps, so a
  thread that falls behind places every frame all the same), straight into the note, which is written out page
  by page: a process killed mid-call leaves all of it but the last two and a half seconds or so, for `recover()`.

Either way each side is laid on a common timeline, contiguous while it flows, with silence where a side
was absent or silent; mixed audio two seconds old is final and is encoded at once, so memory stays bounded
however long the call lasts.
"""

from __future__ import annotations

import fractions
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
OPUS_RATE = 48_000  # RTP clock and sample rate of Opus
OPUS_FRAME = 960  # 20 ms, what browsers and aiortc send
MUX_INTERVAL_S = 0.5  # how often the packet recorder's thread wakes to mux what arrived
SYNC_INTERVAL_S = 2.0  # the least time between two fsyncs of a recording's file (each may cost milliseconds of disk)
# What a killed process leaves of the packet file is what libavformat wrote out. By default that is little: the
# WebM muxer holds a cluster (5 s) until the next packet is past it, the interleaver holds one side's packets
# while the other sends none (up to 10 s), and the file protocol writes in blocks of 256 KiB (half a minute of
# a call). With these, the file trails what was muxed by a second at most; see docs/video.md. PyAV does not say
# when the muxer ignores one of them (container_options): the test that kills a recording process does.
PACKET_MUXER_OPTIONS = {
    "cluster_time_limit": "500",  # ms: a cluster is closed, and can be written, every half second of audio
    "max_interleave_delta": "500000",  # µs: a side that sends nothing holds the other back no longer than that
    "flush_packets": "1",  # write out what the muxer has closed at once, not in 256 KiB blocks
}
# The same for the note the transcode mode writes as the call goes: the Ogg muxer holds the open page (1 s by
# default) and the last page it closed, and the file protocol writes in blocks of 256 KiB (about a minute of the
# note). With these, the file trails what was encoded by a second at most; the mixer holds 1-2 s more before
# encoding (SETTLE_BLOCKS). The test that kills a transcode-mode recording process checks that FFmpeg takes them.
NOTE_MUXER_OPTIONS = {
    "page_duration": "500000",  # µs: a page is closed, and can be written, every half second of the note
    "flush_packets": "1",
}
OPUS_TIME_BASE = fractions.Fraction(1, OPUS_RATE)


@dataclass(frozen=True)
class Recording:
    path: Path
    started_at: datetime
    duration_s: float


class NoteNotWritten(OSError):
    """Writing a mixed-down note failed (a full disk): the recording it was mixed from is not to blame, and is
    kept for another try (`recover`). Told apart from a recording that does not decode, which holds nothing."""


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError in the block is one writing the note `path`: raised as `NoteNotWritten`."""
    try:
        yield
    except NoteNotWritten:
        raise
    except OSError as exc:
        raise NoteNotWritten(exc.errno, exc.strerror or str(exc), str(path)) from exc


class _Mixer:
    """Sides laid on one 16 kHz timeline, mixed, and encoded into an Ogg/Opus container block by block."""

    def __init__(self, container: av.container.OutputContainer) -> None:
        self._container = container
        self._stream = container.add_stream("libopus", rate=RATE, layout="mono")
        self._stream.bit_rate = BITRATE
        self._resamplers: dict[int, av.AudioResampler] = {}
        self._next_pos: dict[int, int] = {}
        self._blocks: dict[int, np.ndarray] = {}
        self.written = 0  # samples encoded so far
        self._end = 0  # furthest sample any side reached

    def place(self, side: int, t: float, frame: av.AudioFrame) -> None:
        """Lay `frame` (which ended `t` seconds into the call) on side `side`'s part of the timeline."""
        resampler = self._resamplers.setdefault(side, av.AudioResampler(format="s16", layout="mono", rate=RATE))
        parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        if not parts:
            return
        samples = np.concatenate(parts)
        arrived = int(t * RATE) - len(samples)
        next_pos = self._next_pos.get(side)
        if next_pos is None or abs(arrived - next_pos) > GAP:
            next_pos = max(arrived, 0)
        pos = max(next_pos, self.written)
        self._next_pos[side] = pos + len(samples)
        self._end = max(self._end, pos + len(samples))
        offset = 0
        while offset < len(samples):
            block, start = divmod(pos + offset, BLOCK)
            n = min(BLOCK - start, len(samples) - offset)
            buf = self._blocks.setdefault(block, np.zeros(BLOCK, dtype=np.int32))
            buf[start:start + n] += samples[offset:offset + n]
            offset += n

    def flush(self, now_s: float | None) -> None:
        """Encode every block that is final `now_s` seconds into the call; None: everything (the end)."""
        final = now_s is None
        last = (self._end - 1) // BLOCK if now_s is None else int(now_s * RATE) // BLOCK - SETTLE_BLOCKS
        for block in range(self.written // BLOCK, last + 1):
            buf = self._blocks.pop(block, None)
            mixed = np.zeros(BLOCK, dtype=np.int16) if buf is None else np.clip(buf, -32768, 32767).astype(np.int16)
            if final and block == last:
                mixed = mixed[: self._end - block * BLOCK]
            frame = av.AudioFrame.from_ndarray(mixed.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts, frame.time_base = self.written, fractions.Fraction(1, RATE)
            self._container.mux(self._stream.encode(frame))
            self.written += len(mixed)
        if final:
            self._container.mux(self._stream.encode(None))


class _Clock:
    """A recording's time line: it starts at the call's first sound (on the event loop), not when the room was
    opened. An SMS link may be opened minutes later, and that wait was leading silence in the note, in its
    duration and in what was transcribed."""

    def __init__(self) -> None:
        self.started_at = utcnow()
        self._t0: float | None = None

    def since(self) -> float:
        """Seconds since the first sound (0 for the first)."""
        now = time.monotonic()
        if self._t0 is None:
            self._t0, self.started_at = now, utcnow()
        return now - self._t0


class _Syncer:
    """Has the kernel put on the disk what a recorder's muxer wrote out to its file, at most every `SYNC_INTERVAL_S`,
    so that a power cut loses little more of the call than a killed process does (what is only in the page cache
    could wait ~30 s for the kernel's writeback). A failure is logged and ends the syncing, not the recording."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._syncing = True  # until an fsync fails
        self._synced_at = -SYNC_INTERVAL_S  # time.monotonic() of the last fsync

    def sync(self) -> None:
        """fsync the file, unless the last fsync was less than `SYNC_INTERVAL_S` ago (or one failed)."""
        if not self._syncing or time.monotonic() - self._synced_at < SYNC_INTERVAL_S:
            return
        self._synced_at = time.monotonic()
        try:
            with self.path.open("rb") as file:
                os.fsync(file.fileno())
        except OSError as exc:
            log.warning("recording %s: fsync failed (%s); a power cut may lose more than the last seconds",
                        self.path, exc)
            self._syncing = False


class CallRecorder:
    """Records decoded frames (transcode mode). `stop()` (blocking: call it from a thread) finishes the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._clock = _Clock()
        self._queue: queue.SimpleQueue[tuple[int, float, np.ndarray, int, str] | None] = queue.SimpleQueue()
        self._sides = 0
        self.encoded = 0  # samples of the note encoded so far (on disk, but for the muxer's last page or two)
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"recorder-{path.stem}", daemon=True)
        self._thread.start()

    def tap(self) -> Tap:
        """A new side of the call: give the returned function every decoded frame of that side."""
        side = self._sides
        self._sides += 1

        def put(frame: Frame) -> None:
            if isinstance(frame, av.AudioFrame) and not self._stopped and self._error is None:
                self._queue.put((side, self._clock.since(), frame.to_ndarray(), frame.sample_rate,
                                 frame.layout.name))

        return put

    def taps(self) -> tuple[Tap | None, EncodedTapFn | None]:
        """A new side of the call: (decoded frames, encoded frames) taps, as `SourceSlot.add_tap` takes them."""
        return self.tap(), None

    def stop(self) -> Recording | None:
        """Finish the file; None when nothing was heard (or recording failed: logged). After a failure mid-call
        the note holds what was encoded before it: that part is kept (`recover`), not thrown away."""
        if not self._stopped:
            self._stopped = True
            self._queue.put(None)
        self._thread.join()
        if self._error is not None and self.encoded and self.path.exists():
            try:
                recovered = recover(self.path, self.path)
            except NoteNotWritten as exc:
                # The note stays, without a `.json`, for the next start (`video.service.left_by_a_crash`): a disk
                # still full at the close deleted it, with everything recorded before the failure.
                log.error("recording %s failed mid-call and cannot be mixed down (%s); it stays for the next start",
                          self.path, exc)
                return None
            if recovered is not None:
                log.warning("recording %s failed mid-call; the %.1f s before it are kept", self.path,
                            recovered.duration_s)
                return Recording(self.path, self._clock.started_at, recovered.duration_s)
        return _finished(self.path, self._clock.started_at, self.encoded, self._error)

    def _run(self) -> None:
        syncer = _Syncer(self.path)
        try:
            with av.open(str(self.path), "w", format="ogg", container_options=NOTE_MUXER_OPTIONS) as container:
                mixer = _Mixer(container)
                while (item := self._queue.get()) is not None:
                    side, t, data, rate, layout = item
                    frame = av.AudioFrame.from_ndarray(data, format="s16", layout=layout)
                    frame.sample_rate = rate
                    mixer.place(side, t, frame)
                    # by when the frame came, not by the clock now: a thread behind would encode seconds still queued
                    mixer.flush(t)
                    if mixer.written > self.encoded:
                        self.encoded = mixer.written
                        syncer.sync()
                mixer.flush(None)
                self.encoded = mixer.written
        except Exception as exc:
            log.exception("recording %s failed", self.path)
            self._error = exc


class _Side:
    """One side's Opus stream in the packet recorder's WebM file, and its timestamps."""

    def __init__(self) -> None:
        self.stream: av.audio.stream.AudioStream | None = None
        self.anchor: tuple[int, int] | None = None  # (RTP timestamp, pts) that timestamps count from
        self.last_pts = -1


class PacketRecorder:
    """Records the Opus packets as they came (forward mode): muxed during the call, mixed down by `stop()`
    (blocking: call it from a thread). The WebM file sits next to the note's path and is removed once mixed
    down, unless `keep_packets`."""

    def __init__(self, path: Path, *, keep_packets: bool = False) -> None:
        self.path = path
        self.packets_path = path.with_suffix(".webm")
        self.keep_packets = keep_packets
        self._clock = _Clock()
        self.muxed = 0  # packets written to the WebM file
        self.mixdown_cpu_s = 0.0  # what `stop()` spent decoding, mixing and encoding
        self._pending: deque[tuple[int, float, int, bytes]] = deque()  # appended on the loop, taken by the thread
        self._sides: list[_Side] = []
        self._container: av.container.OutputContainer | None = None  # the WebM file, once packets came
        self._wake = threading.Event()
        self._syncer = _Syncer(self.packets_path)
        self._written = 0
        self._error: BaseException | None = None
        self._stopped = False
        self._result: Recording | None = None
        self._thread = threading.Thread(target=self._run, name=f"recorder-{path.stem}", daemon=True)
        self._thread.start()

    def taps(self) -> tuple[Tap | None, EncodedTapFn | None]:
        """A new side of the call: (decoded frames, encoded frames) taps, as `SourceSlot.add_tap` takes them.
        Only encoded Opus is recorded: rooms negotiate Opus only, so a forwarding slot never decodes for us."""
        side = len(self._sides)
        self._sides.append(_Side())

        def put(frame: EncodedFrame) -> None:
            if frame.mime == "audio/opus" and not self._stopped and self._error is None:  # else nobody takes it
                self._pending.append((side, self._clock.since(), frame.timestamp, frame.data))

        return None, put

    def stop(self) -> Recording | None:
        """Finish the WebM file and mix it down into the note; None when nothing was heard, or when recording
        failed (logged). A failure keeps what was recorded: after a mux error mid-call, the packets muxed before
        it are mixed down now; when the mix-down itself fails (a full disk), the WebM file stays, and the next
        start saves it into the room's note as it saves a crashed process's (`video.service.left_by_a_crash`)."""
        if not self._stopped:
            self._stopped = True
            self._wake.set()
            self._thread.join()
            self._result = self._save()
        self._thread.join()
        return self._result

    def _save(self) -> Recording | None:
        if not self.muxed:  # nothing heard (or a failure before the first packet: nothing to keep)
            self._drop_packets()
            return _finished(self.path, self._clock.started_at, 0, self._error)
        started = time.thread_time()
        try:
            if self._error is None:
                self._written = mix_down(self.packets_path, self.path)
            else:  # the muxer failed mid-call: what it wrote before
                recovered = recover(self.packets_path, self.path)
                self._written = int(recovered.duration_s * RATE) if recovered is not None else 0
                self._error = None if recovered is not None else self._error
                if recovered is not None:
                    log.warning("recording %s failed mid-call; the %.1f s before it are kept", self.packets_path,
                                recovered.duration_s)
        except Exception as exc:
            log.exception("mixing down %s failed; its packets stay for the next start", self.packets_path)
            self._error = exc
            self.path.unlink(missing_ok=True)
            return None
        finally:
            self.mixdown_cpu_s = time.thread_time() - started
        self._drop_packets()
        return _finished(self.path, self._clock.started_at, self._written, self._error)

    def _drop_packets(self) -> None:
        if not self.keep_packets:
            self.packets_path.unlink(missing_ok=True)

    def _run(self) -> None:
        try:
            while not self._stopped:
                self._wake.wait(MUX_INTERVAL_S)
                self._mux_pending()
            self._mux_pending()  # what came in since the last round
        except Exception as exc:
            log.exception("recording %s failed", self.packets_path)
            self._error = exc
        finally:
            if self._container is not None:
                self._container.close()

    def _open(self) -> av.container.OutputContainer:
        """The WebM file, with an Opus stream for every side known now (the libopus context is opened, never
        fed: it only writes the stream's OpusHead)."""
        container = av.open(str(self.packets_path), "w", format="webm", container_options=PACKET_MUXER_OPTIONS)
        for side in self._sides:
            side.stream = container.add_stream("libopus", rate=OPUS_RATE, layout="stereo")
            side.stream.time_base = OPUS_TIME_BASE
        return container

    def _mux_pending(self) -> None:
        """Mux what arrived (the file opens with the first packets)."""
        if self._pending and self._container is None:
            self._container = self._open()
        container = self._container
        muxed = self.muxed
        while self._pending and container is not None:
            index, t, timestamp, data = self._pending.popleft()
            side = self._sides[index]
            if side.stream is None:  # a side added after the file started: not expected, rooms add both first
                continue
            arrived = int(t * OPUS_RATE) - OPUS_FRAME  # it arrived complete: it began about a frame earlier
            anchor = side.anchor
            if anchor is None or abs(anchor[1] + timestamp - anchor[0] - arrived) > GAP * OPUS_RATE // RATE:
                anchor = side.anchor = (timestamp, max(arrived, side.last_pts + 1))
            pts = anchor[1] + timestamp - anchor[0]
            if pts <= side.last_pts:  # repeated or out of order: the jitter buffer should not let one through
                continue
            side.last_pts = pts
            packet = av.Packet(data)
            packet.pts = packet.dts = pts
            packet.time_base, packet.stream = OPUS_TIME_BASE, side.stream
            container.mux(packet)
            self.muxed += 1
        if self.muxed > muxed:
            self._syncer.sync()


def mix_down(packets_path: Path, path: Path) -> int:
    """Mix the Opus streams of a packet recording into one 16 kHz mono Ogg/Opus file; the samples written.
    Failing to write `path` raises `NoteNotWritten`; anything else raised is the packet file's (it does not open or
    decode)."""
    with av.open(str(packets_path)) as source:
        with _writing(path):
            out = av.open(str(path), "w", format="ogg")
        try:
            mixer = _Mixer(out)
            streams = list(source.streams.audio)
            sides = {stream.index: side for side, stream in enumerate(streams)}
            for packet in source.demux(*streams):
                try:
                    frames = packet.decode()
                except av.FFmpegError:  # a damaged packet: leave its 20 ms silent
                    continue
                for frame in frames:
                    if not isinstance(frame, av.AudioFrame) or frame.pts is None or frame.time_base is None:
                        continue
                    end = float(frame.pts * frame.time_base) + frame.samples / frame.sample_rate
                    mixer.place(sides[packet.stream_index], end, frame)
                    with _writing(path):
                        mixer.flush(end)
            with _writing(path):
                mixer.flush(None)
        finally:
            with _writing(path):
                out.close()  # writes the trailer: on a disk still full, that fails too
        return mixer.written


def recover(source: Path, path: Path) -> Recording | None:
    """The audio of a recording cut off mid-call by a dead process (a packet file, or a note being written),
    mixed down into the note's file `path` as at a close; None when none of it decodes (the muxer had not
    flushed it to disk yet). Its start is reckoned back from the file's last write. When the note cannot be
    written (a full disk) it raises `NoteNotWritten`, leaving no part-written file: `source` may hold all of the
    call and is to be kept for another try. That failure answered None, and every caller deleted `source`."""
    mixing = path.with_suffix(".mixing")  # `source` may be `path` itself
    try:
        written = mix_down(source, mixing)
        ended = datetime.fromtimestamp(source.stat().st_mtime, UTC)
        if written:
            with _writing(path):
                mixing.replace(path)
    except NoteNotWritten:
        mixing.unlink(missing_ok=True)
        raise
    except Exception as exc:  # a cut-off file fails in many ways (no header, a torn page): it holds nothing usable
        log.info("the left-over recording %s does not decode: %s", source, exc)
        written = 0
    if not written:
        mixing.unlink(missing_ok=True)
        return None
    duration_s = written / RATE
    return Recording(path, ended - timedelta(seconds=duration_s), duration_s)


def _finished(path: Path, started_at: datetime, written: int, error: BaseException | None) -> Recording | None:
    if error is not None or written == 0:
        path.unlink(missing_ok=True)
        return None
    return Recording(path, started_at, written / RATE)


Recorder = CallRecorder | PacketRecorder
