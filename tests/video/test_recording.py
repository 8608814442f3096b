"""The call recorders: two sides on one timeline, silence where a side paused, off the event loop; in forward
mode the Opus packets are muxed as they came (no decoding during the call) and mixed down when it ends."""

from __future__ import annotations

import errno
import hashlib
import logging
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from api.db import utcnow
from tests.conftest import make_settings
from tests.utils.s3 import PREFIX, S3_SETTINGS, bucket_keys, mock_bucket
from video.aiortc_hooks import EncodedFrame
from video.blobs import put_blob, read_blob
from video.recording import CallRecorder, PacketRecorder, recover

ROOT = Path(__file__).resolve().parents[2]

# A forward-mode call in a process of its own: each side's 20 ms packets, read from stdin, are fed as fast as
# the recorder takes them (their arrival times made up to match); once all are muxed it says so and waits to be
# killed.
CALL_TO_KILL = """
import pickle, sys, time
from pathlib import Path
from video.aiortc_hooks import EncodedFrame
from video.recording import PacketRecorder

sides = pickle.load(sys.stdin.buffer)
recorder = PacketRecorder(Path(sys.argv[1]))
now = 0.0
recorder._clock.since = lambda: now
taps = [recorder.taps()[1] for _ in sides]
for n in range(max(map(len, sides))):
    now = (n + 1) * 0.02
    for tap, packets in zip(taps, sides):
        if n < len(packets):
            tap(EncodedFrame("audio/opus", packets[n], n * 960))
deadline = time.monotonic() + 30
while recorder.muxed < sum(map(len, sides)) and time.monotonic() < deadline:
    time.sleep(0.01)
print("muxed", recorder.muxed, flush=True)
time.sleep(60)
"""

# The same for a transcode-mode call: each side's decoded 20 ms frames (a tone each; the steward's stops after
# argv[2] seconds) are given to the recorder, their arrival times made up; once the mixer has encoded all it
# will before the call goes on (the last block 2 s old, SETTLE_BLOCKS), the process says so and waits to be killed.
TRANSCODED_CALL_TO_KILL = """
import sys, time
from pathlib import Path
import av, numpy as np
from video.recording import CallRecorder

def tone_frame(hz, start):  # as the module's (importing the test module would cost the child seconds)
    t = (start + np.arange(960)) / 48_000
    mono = (np.sin(2 * np.pi * hz * t) * 0.3 * 32767).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2)[None, :], format="s16", layout="stereo")
    frame.sample_rate = 48_000
    return frame

recorder = CallRecorder(Path(sys.argv[1]))
seconds, steward_stops = 10.0, float(sys.argv[2])
now = 0.0
recorder._clock.since = lambda: now
resident, steward = recorder.tap(), recorder.tap()
for n in range(round(seconds * 50)):
    now = (n + 1) * 0.02
    resident(tone_frame(440, n * 960))
    if now <= steward_stops:
        steward(tone_frame(660, n * 960))
deadline = time.monotonic() + 30
while recorder.encoded < 9 * 16_000 and time.monotonic() < deadline:
    time.sleep(0.01)
print("encoded", recorder.encoded, flush=True)
time.sleep(60)
"""


def tone_frame(hz: float, start: int) -> av.AudioFrame:
    t = (start + np.arange(960)) / 48_000
    mono = (np.sin(2 * np.pi * hz * t) * 0.3 * 32767).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2)[None, :], format="s16", layout="stereo")
    frame.sample_rate = 48_000
    return frame


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16_000)
        parts = [f.to_ndarray().reshape(-1) for frame in container.decode(audio=0) for f in resampler.resample(frame)]
    return np.concatenate(parts).astype(np.float64)


def opus_packets(hz: float, seconds: float) -> list[bytes]:
    """A tone as 20 ms Opus packets, as a browser sends them."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format, encoder.bit_rate = 48_000, "stereo", "s16", 32_000
    packets: list[bytes] = []
    for n in range(round(seconds * 50)):
        frame = tone_frame(hz, n * 960)
        frame.pts = n * 960
        packets += [bytes(p) for p in encoder.encode(frame)]
    return packets


def assert_pause_between_tones(audio: np.ndarray) -> None:
    rms = [float(np.sqrt(np.mean(audio[i:i + 1600] ** 2))) for i in range(0, len(audio) - 1600, 1600)]
    assert min(rms[1:9]) > 3000  # the first second carries the tone
    assert max(rms[11:15]) < 300  # the pause is silence, not shifted audio
    assert min(rms[17:19]) > 3000


def paced_call(resident: Any, steward: Any) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """The test call, in real time, one 20 ms tick at a time: 1.0 s of the resident's side, then 0.6 s of
    nothing, then 0.4 s of both. Yields the tick number (from 1) and the sides that speak in it."""
    start = time.monotonic()
    n = 0
    for seconds, sides in ((1.0, (resident,)), (0.6, ()), (0.4, (resident, steward))):
        for _ in range(round(seconds * 50)):
            n += 1
            delay = start + n * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield n, sides


def test_two_sides_with_a_pause_are_mixed_on_one_timeline(tmp_path: Path):
    recorder = CallRecorder(tmp_path / "call.ogg")
    resident, steward = recorder.tap(), recorder.tap()
    for n, sides in paced_call(resident, steward):
        for i, side in enumerate(sides):
            side(tone_frame(440 if side is resident else 660, n * 960 + i))
    recording = recorder.stop()
    assert recording is not None and recording.path.is_file()
    assert 1.9 <= recording.duration_s <= 2.2
    assert_pause_between_tones(decode(recording.path))
    assert recorder.stop() == recording  # stopping twice is harmless


def test_forward_mode_muxes_opus_packets_as_they_came_and_mixes_down_at_the_end(tmp_path: Path):
    """The packet recorder never decodes during the call: each side's packets go into a WebM file as they
    arrived, timed by their RTP timestamps (which run on through the resident's pause, as a browser's do);
    that file plays (two Opus streams, the right length, every packet decodes), and `stop()` mixes it down
    into the same 16 kHz note the live recorder writes."""
    recorder = PacketRecorder(tmp_path / "call.ogg", keep_packets=True)
    (_, resident), (_, steward) = recorder.taps(), recorder.taps()
    assert resident is not None and steward is not None
    tones = {resident: opus_packets(440, 1.4), steward: opus_packets(660, 0.4)}
    sent = {resident: 0, steward: 0}
    for n, sides in paced_call(resident, steward):
        for side in sides:
            # the resident's clock starts at 0 and keeps running; the steward's starts anywhere
            timestamp = n * 960 if side is resident else 123_456 + sent[side] * 960
            side(EncodedFrame("audio/opus", tones[side][sent[side]], timestamp))
            sent[side] += 1
        if n == 10:  # not decoded: only muxed, and only every half second, in the recorder's thread
            assert recorder.muxed == 0
    recording = recorder.stop()
    assert recording is not None and recorder.muxed == sum(sent.values()) == 90
    assert recorder.mixdown_cpu_s > 0
    packets = tmp_path / "call.webm"
    with av.open(str(packets)) as container:
        streams = container.streams.audio
        assert [s.codec_context.name for s in streams] == ["opus", "opus"] and not container.streams.video
        assert container.duration is not None and 1.9 <= container.duration / 1_000_000 <= 2.1
        samples = [0, 0]
        for packet in container.demux(*streams):
            for frame in packet.decode():
                assert frame.sample_rate == 48_000
                samples[streams.index(packet.stream)] += frame.samples
    assert samples[0] / 48_000 == pytest.approx(1.4, abs=0.03)  # pre-skip: the decoder drops 312 samples
    assert samples[1] / 48_000 == pytest.approx(0.4, abs=0.03)
    assert 1.9 <= recording.duration_s <= 2.2
    assert_pause_between_tones(decode(recording.path))
    assert recorder.stop() == recording  # stopping twice is harmless


def test_a_process_killed_mid_call_leaves_all_but_the_last_two_seconds_of_its_packets(tmp_path: Path):
    """Regression: what a relay killed mid-call (SIGKILL, out of memory) leaves of a forward-mode call is what
    libavformat had written out, and it held the open WebM cluster (5 s), a side's packets while the other side
    sent none (up to 10 s) and the file's writes in 256 KiB blocks (half a minute of a call): a call killed
    within its first half minute left an empty file, and a longer one lost up to its last half minute. Now the
    file trails what was muxed by a second at most, and `recover` finds all of the call but its last seconds."""
    resident, steward = opus_packets(440, 10), opus_packets(660, 6)  # the steward went quiet 4 s before the end
    child = subprocess.Popen([sys.executable, "-c", CALL_TO_KILL, str(tmp_path / "call.ogg")], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        child.stdin.write(pickle.dumps([resident, steward]))
        child.stdin.close()
        assert child.stdout.readline().split() == [b"muxed", b"800"]
    finally:
        child.send_signal(signal.SIGKILL)  # nothing is closed or flushed
        child.wait()
        child.stdout.close()
    recording = recover(tmp_path / "call.webm", tmp_path / "call.ogg")
    assert recording is not None and recording.duration_s >= 8.0, recording
    audio = decode(recording.path)
    assert float(np.sqrt(np.mean(audio[-16_000:] ** 2))) > 3000  # the resident's tone, to the end


def test_a_process_killed_mid_call_leaves_all_but_the_last_seconds_of_its_transcoded_note(tmp_path: Path):
    """Regression: the transcode mode writes the note as the call goes, and what a relay killed mid-call left of it
    was what libavformat had written out: the Ogg muxer held the open page (1 s) and the last one it closed, and
    the file's writes went out in blocks of 256 KiB (about a minute of the note). A call killed within its first
    minute left an empty file, a longer one lost up to its last minute. Now the file trails what was encoded by
    ~0.5 s, and the mixer holds 1-2 s before encoding: `recover` finds all but ~2.5 s at most. Killed as the mixer
    has encoded its 9th second, 8.49 s of 10 come back; 8.0 s with the muxer's default 1 s pages and nothing
    without flush_packets (so this checks that FFmpeg takes both options), nothing before."""
    path = tmp_path / "call.ogg"
    child = subprocess.Popen([sys.executable, "-c", TRANSCODED_CALL_TO_KILL, str(path), "6"], cwd=ROOT,
                             stdout=subprocess.PIPE)  # the steward went quiet 4 s before the end
    assert child.stdout is not None
    try:
        assert child.stdout.readline().split() == [b"encoded", b"144000"]
    finally:
        child.send_signal(signal.SIGKILL)  # nothing is closed or flushed
        child.wait()
        child.stdout.close()
    recording = recover(path, path)
    assert recording is not None and recording.duration_s >= 8.25, recording
    audio = decode(recording.path)
    assert float(np.sqrt(np.mean(audio[-16_000:] ** 2))) > 3000  # the resident's tone, to the end


def test_a_file_system_that_refuses_fsync_costs_the_syncing_not_the_recording(tmp_path: Path, monkeypatch,
                                                                              caplog: pytest.LogCaptureFixture):
    """The packet file is fsynced after muxing rounds (a power cut then loses little more than a kill); where the
    file system refuses, that is logged once and the call is recorded all the same."""
    synced: list[int] = []

    def refuse(fd: int) -> None:
        synced.append(fd)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr("video.recording.os.fsync", refuse)
    caplog.set_level(logging.WARNING, logger="video.recording")
    recorder = PacketRecorder(tmp_path / "call.ogg")
    _, side = recorder.taps()
    assert side is not None
    for n, data in enumerate(opus_packets(440, 1.0)):
        side(EncodedFrame("audio/opus", data, n * 960))
        if n in (24, 49):  # half a second, twice: let a muxing round take each half
            deadline = time.monotonic() + 5
            while recorder.muxed <= n and time.monotonic() < deadline:
                time.sleep(0.02)
    recording = recorder.stop()
    assert recording is not None and recording.path.is_file() and recorder.muxed == 50
    assert len(synced) == 1 and [r.levelname for r in caplog.records] == ["WARNING"]  # then it stopped trying


def test_the_packet_file_is_fsynced_at_most_every_sync_interval(tmp_path: Path, monkeypatch):
    """One fsync per muxing round was 1,200 per 10 minutes of every call: the disk's flushes (the database's
    among them) queued behind many rooms' recordings. Rounds closer together than `SYNC_INTERVAL_S` share one."""
    import os

    from video import recording

    synced: list[float] = []
    real = os.fsync

    def count(fd: int) -> None:
        synced.append(time.monotonic())
        real(fd)

    monkeypatch.setattr("video.recording.os.fsync", count)
    monkeypatch.setattr(recording, "SYNC_INTERVAL_S", 60.0)
    recorder = PacketRecorder(tmp_path / "call.ogg")
    _, side = recorder.taps()
    assert side is not None
    for n, data in enumerate(opus_packets(440, 1.5)):
        side(EncodedFrame("audio/opus", data, n * 960))
        if n in (24, 49, 74):  # three muxing rounds, each with packets
            deadline = time.monotonic() + 5
            while recorder.muxed <= n and time.monotonic() < deadline:
                time.sleep(0.02)
    assert recorder.muxed >= 75
    recording_ = recorder.stop()
    assert recording_ is not None and recording_.duration_s > 1.0
    assert len(synced) == 1  # the first round synced; the next ones were within the interval


def test_the_transcoded_note_is_fsynced_at_most_every_sync_interval(tmp_path: Path, monkeypatch):
    """The note the transcode mode writes as the call goes is fsynced like the packet file (a power cut then loses
    little more than a kill), by the same rule: at most every `SYNC_INTERVAL_S`, not after each encoded second."""
    import os

    from video import recording

    synced: list[int] = []  # the inode of each file fsynced
    real = os.fsync

    def count(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr("video.recording.os.fsync", count)
    monkeypatch.setattr(recording, "SYNC_INTERVAL_S", 60.0)
    recorder = CallRecorder(tmp_path / "call.ogg")
    now = 0.0
    monkeypatch.setattr(recorder._clock, "since", lambda: now)
    side = recorder.tap()
    for n in range(5 * 50):
        now = (n + 1) * 0.02
        side(tone_frame(440, n * 960))
        if n % 25 == 24:
            deadline = time.monotonic() + 5
            while not recorder._queue.empty() and time.monotonic() < deadline:
                time.sleep(0.002)
    deadline = time.monotonic() + 5
    while recorder.encoded < 4 * 16_000 and time.monotonic() < deadline:  # 4 s encoded, in three flushes
        time.sleep(0.01)
    assert recorder.encoded == 4 * 16_000
    assert synced == [(tmp_path / "call.ogg").stat().st_ino]  # the first encoded second synced; the next ones not
    recording_ = recorder.stop()
    assert recording_ is not None and recording_.duration_s == 5.0


def test_forward_mode_keeps_a_call_shorter_than_one_muxing_round(tmp_path: Path):
    recorder = PacketRecorder(tmp_path / "short.ogg")
    _, side = recorder.taps()
    assert side is not None
    for n, data in enumerate(opus_packets(440, 0.2)):
        side(EncodedFrame("audio/opus", data, n * 960))
    recording = recorder.stop()  # at once: before the thread's first round
    assert recording is not None and recorder.muxed == 10 and 0.1 <= recording.duration_s <= 0.3
    assert not (tmp_path / "short.webm").exists()  # mixed down, then removed


@pytest.mark.parametrize("mode", ["forward", "transcode"])
def test_the_note_starts_at_the_first_sound_not_when_the_room_opened(tmp_path: Path, mode: str):
    """Regression: the time line started when the room was hosted, so the wait for the resident to open the
    SMS link became leading silence in the note, its duration and what was transcribed."""
    before = utcnow()
    if mode == "forward":
        recorder: PacketRecorder | CallRecorder = PacketRecorder(tmp_path / "late.ogg")
        _, encoded = recorder.taps()
        assert encoded is not None
        time.sleep(1.0)  # the room is open, nobody has joined yet
        for n, data in enumerate(opus_packets(440, 0.4)):
            encoded(EncodedFrame("audio/opus", data, 5000 + n * 960))
            time.sleep(0.02)
    else:
        recorder = CallRecorder(tmp_path / "late.ogg")
        decoded = recorder.tap()
        time.sleep(1.0)
        for n in range(20):
            decoded(tone_frame(440, n * 960))
            time.sleep(0.02)
    recording = recorder.stop()
    assert recording is not None and 0.3 <= recording.duration_s <= 0.6
    assert (recording.started_at - before).total_seconds() >= 0.9  # when the first sound came


def test_forward_mode_without_packets_leaves_no_files(tmp_path: Path):
    recorder = PacketRecorder(tmp_path / "silent.ogg")
    recorder.taps()
    assert recorder.stop() is None and list(tmp_path.iterdir()) == []


def test_a_call_nobody_spoke_in_leaves_no_recording(tmp_path: Path):
    recorder = CallRecorder(tmp_path / "silent.ogg")
    recorder.tap()
    assert recorder.stop() is None and not (tmp_path / "silent.ogg").exists()


def test_a_recording_and_a_snapshot_go_to_the_s3_store(tmp_path: Path):
    """The relay's blob helpers (save_recording, save_snapshot) with STEWARD_BLOB_STORE=s3: the bytes land in
    the bucket under their hash, nothing stays in the local staging directory, and they read back whole."""
    recorder = CallRecorder(tmp_path / "call.ogg")
    side = recorder.tap()
    for n in range(25):
        side(tone_frame(440, n * 960))
    recording = recorder.stop()
    assert recording is not None
    data = recording.path.read_bytes()
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
    settings = make_settings("sqlite://", tmp_path / "data", **S3_SETTINGS)
    with mock_bucket() as s3:
        shas = [put_blob(settings, data), put_blob(settings, jpeg)]
        assert shas == [hashlib.sha256(data).hexdigest(), hashlib.sha256(jpeg).hexdigest()]
        assert sorted(bucket_keys(s3)) == sorted(PREFIX + sha for sha in shas)
        assert put_blob(settings, data) == shas[0]  # idempotent
        assert read_blob(settings, shas[0]) == data and read_blob(settings, shas[1]) == jpeg
        assert read_blob(settings, "0" * 64) is None
    assert [p for p in (tmp_path / "data" / "blobs").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("backlog_at", ["mid-call", "stop"])
def test_a_recorder_thread_that_falls_behind_still_places_every_frame_when_it_arrived(tmp_path: Path, monkeypatch,
                                                                                      backlog_at: str):
    """Regression: the transcode-mode recorder's thread flushed the mixer by the clock when it took a frame from its
    queue, not by the frame's arrival: a thread more than ~1 s behind (a loaded, CPU-starved relay) encoded seconds
    whose frames were still queued, leaving holes, then piled those frames on top of one another after them. Here
    the thread stalls 3 s (from 1 s into a 6 s call, in which the resident speaks throughout and the steward from
    2 s to 3 s) while frames keep arriving; then it catches up mid-call, or only once `stop()` waits for it."""
    from video import recording

    gate = threading.Event()
    place = recording._Mixer.place

    def stall(self: Any, side: int, t: float, frame: av.AudioFrame) -> None:
        if t > 1.0:
            gate.wait(10)
        place(self, side, t, frame)

    monkeypatch.setattr(recording._Mixer, "place", stall)
    recorder = CallRecorder(tmp_path / "call.ogg")
    now = 0.0
    monkeypatch.setattr(recorder._clock, "since", lambda: now)
    resident, steward = recorder.tap(), recorder.tap()
    for n in range(6 * 50):
        now = (n + 1) * 0.02
        resident(tone_frame(440, n * 960))
        if 2.0 < now <= 3.0 + 1e-9:
            steward(tone_frame(660, n * 960))
        if n == 49:  # 1 s: the thread has taken all that came so far (and stalls on the next frame)
            deadline = time.monotonic() + 5
            while not recorder._queue.empty() and time.monotonic() < deadline:
                time.sleep(0.002)
        if n == 199 and backlog_at == "mid-call":  # 4 s: the thread is 3 s behind
            gate.set()
    if backlog_at == "stop":
        threading.Timer(0.3, gate.set).start()  # after `stop()` has queued its end behind 5 s of frames
    recording_ = recorder.stop()
    assert recording_ is not None and recording_.duration_s == pytest.approx(6.0, abs=0.02)
    audio = decode(recording_.path)
    rms = [float(np.sqrt(np.mean(audio[i:i + 1600] ** 2))) for i in range(0, len(audio) - 1600, 1600)]
    assert len(rms) >= 59 and min(rms[1:59]) > 5000  # the resident's tone, no hole
    assert min(rms[20:30]) > 8500  # both tones, 2 s to 3 s
    assert max(rms[1:20] + rms[30:59]) < 8000  # the resident's alone: nothing piled up, nothing shifted


def _speak(sides: tuple[Any, ...], seconds: float, start: int = 0) -> int:
    """Both sides' Opus packets for `seconds`, in real time; the next tick."""
    tones = opus_packets(440, seconds)
    began = time.monotonic()
    for n in range(len(tones)):
        delay = began + n * 0.02 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for side in sides:
            side(EncodedFrame("audio/opus", tones[n], (start + n) * 960))
    return start + len(tones)


def _record_then_fill_the_disk(recorder: PacketRecorder) -> None:
    """One second of both sides muxed, then a muxing round that fails on a full disk while 0.6 s more arrive."""
    sides = tuple(put for _, put in (recorder.taps(), recorder.taps()))
    tick = _speak(sides, 1.0)
    deadline = time.monotonic() + 5
    while recorder.muxed < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert recorder.muxed == 100

    def full_disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    recorder._mux_pending = full_disk  # type: ignore[method-assign]
    _speak(sides, 0.6, tick)
    time.sleep(0.6)  # a muxing round fails


def test_a_muxer_failure_mid_call_keeps_what_was_recorded_before_it(tmp_path: Path):
    """Regression (review): one failed write mid-call (a full disk for a moment) stopped the recorder, and
    `stop()` deleted the packet file with everything recorded before the failure."""
    recorder = PacketRecorder(tmp_path / "call.ogg")
    _record_then_fill_the_disk(recorder)
    recording = recorder.stop()
    assert recording is not None and 0.9 <= recording.duration_s <= 1.1, recording
    assert decode(recording.path).size > 0
    assert not (tmp_path / "call.webm").exists()


def test_a_failed_mix_down_keeps_the_packets_for_the_next_start(tmp_path: Path, monkeypatch):
    """Regression (review): when writing the note failed at the close (a full disk), the packet file was deleted
    too; now it stays, without the `.json` of a kept recording, where the next start finds and saves it
    (`video.service.left_by_a_crash`)."""
    from video import recording as module
    from video.service import left_by_a_crash, recordings_dir

    settings = make_settings(f"sqlite:///{tmp_path / 'steward.db'}", tmp_path)
    room = "0b4a3f1e-8a43-4c55-9d3c-3f6c2b1d0e11"
    note = recordings_dir(settings) / f"{room}.ogg"
    note.parent.mkdir(parents=True)
    real = module.mix_down

    def full_disk(source: Path, path: Path) -> int:
        path.write_bytes(b"half a page")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "mix_down", full_disk)
    recorder = PacketRecorder(note)
    _speak(tuple(put for _, put in (recorder.taps(), recorder.taps())), 0.6)
    assert recorder.stop() is None
    assert note.with_suffix(".webm").is_file() and not note.exists()  # no half-written note
    assert [str(r) for r in left_by_a_crash(settings)] == [room]
    monkeypatch.setattr(module, "mix_down", real)
    recovered = recover(note.with_suffix(".webm"), note)
    assert recovered is not None and 0.5 <= recovered.duration_s <= 0.7


def test_a_transcoding_recorder_failure_mid_call_keeps_the_note_up_to_it(tmp_path: Path):
    """Regression (review): a failure in the live recorder's thread deleted the note it had been writing."""
    recorder = CallRecorder(tmp_path / "call.ogg")
    now = 0.0
    recorder._clock.since = lambda: now  # type: ignore[method-assign]
    resident = recorder.tap()
    for n in range(250):  # 5 s, their arrival times made up (the mixer holds 1-2 s before encoding)
        now = (n + 1) * 0.02
        resident(tone_frame(440, n * 960))
    deadline = time.monotonic() + 10
    while recorder.encoded < 3 * 16_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert recorder.encoded >= 3 * 16_000
    recorder._queue.put((0, now, np.zeros((1, 1920), np.int16), 48_000, "no such layout"))
    recording = recorder.stop()
    assert recording is not None and 2.9 <= recording.duration_s <= 5.1, recording
    assert float(np.sqrt(np.mean(decode(recording.path)[16_000:32_000] ** 2))) > 3000


def notes_cannot_be_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, as on a full disk: each time a mixer writes out a note's final blocks, a write fails after
    them (ENOSPC), a note being mixed down included (`recover`)."""
    from video import recording as module

    real = module._Mixer.flush

    def full_disk(mixer: Any, now_s: float | None) -> None:
        real(mixer, now_s)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module._Mixer, "flush", full_disk)


def test_a_disk_still_full_at_the_close_keeps_the_packets_for_the_next_start(tmp_path: Path, monkeypatch):
    """Regression (review): a disk that filled mid-call and was still full at the close deleted the packet file
    with everything recorded before: `recover` answered a note it could not write as one with nothing that
    decodes. Now the packet file stays, without a `.json`, for the next start; no part-written note is left."""
    from video.service import left_by_a_crash, recordings_dir

    settings = make_settings(f"sqlite:///{tmp_path / 'steward.db'}", tmp_path)
    room = "0b4a3f1e-8a43-4c55-9d3c-3f6c2b1d0e11"
    note = recordings_dir(settings) / f"{room}.ogg"
    note.parent.mkdir(parents=True)
    recorder = PacketRecorder(note)
    _record_then_fill_the_disk(recorder)
    notes_cannot_be_written(monkeypatch)  # still full at the close
    assert recorder.stop() is None
    assert sorted(p.name for p in note.parent.iterdir()) == [f"{room}.webm"]
    assert [str(r) for r in left_by_a_crash(settings)] == [room]
    monkeypatch.undo()  # space again: the next start
    recovered = recover(note.with_suffix(".webm"), note)
    assert recovered is not None and 0.9 <= recovered.duration_s <= 1.1, recovered


def test_a_disk_still_full_at_the_close_keeps_the_transcoded_note_for_the_next_start(tmp_path: Path, monkeypatch):
    """Regression (review): the same in transcode mode: `stop()` deleted the note, and every second encoded into
    it before the disk filled. Now it stays, without a `.json`, for the next start (`left_by_a_crash`)."""
    from video.service import left_by_a_crash, recordings_dir

    settings = make_settings(f"sqlite:///{tmp_path / 'steward.db'}", tmp_path)
    room = "0b4a3f1e-8a43-4c55-9d3c-3f6c2b1d0e12"
    note = recordings_dir(settings) / f"{room}.ogg"
    note.parent.mkdir(parents=True)
    recorder = CallRecorder(note)
    now = 0.0
    recorder._clock.since = lambda: now  # type: ignore[method-assign]
    resident = recorder.tap()
    for n in range(250):  # 5 s, their arrival times made up (the mixer holds 1-2 s before encoding)
        now = (n + 1) * 0.02
        resident(tone_frame(440, n * 960))
    deadline = time.monotonic() + 10
    while recorder.encoded < 3 * 16_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert recorder.encoded >= 3 * 16_000
    notes_cannot_be_written(monkeypatch)  # the disk fills up mid-call, and stays full
    for n in range(250, 300):
        now = (n + 1) * 0.02
        resident(tone_frame(440, n * 960))
    assert recorder.stop() is None
    assert recorder._error is not None
    assert sorted(p.name for p in note.parent.iterdir()) == [f"{room}.ogg"]
    assert [str(r) for r in left_by_a_crash(settings)] == [room]
    monkeypatch.undo()  # space again: the next start
    recovered = recover(note, note)
    assert recovered is not None and 2.9 <= recovered.duration_s <= 5.1, recovered
    assert float(np.sqrt(np.mean(decode(note)[16_000:32_000] ** 2))) > 3000
