"""The call recorder: two sides on one timeline, silence where a side paused, off the event loop."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import av
import numpy as np

from tests.conftest import make_settings
from tests.utils.s3 import PREFIX, S3_SETTINGS, bucket_keys, mock_bucket
from video.blobs import put_blob, read_blob
from video.recording import CallRecorder


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


def test_two_sides_with_a_pause_are_mixed_on_one_timeline(tmp_path: Path):
    recorder = CallRecorder(tmp_path / "call.ogg")
    resident, steward = recorder.tap(), recorder.tap()
    start = time.monotonic()
    n = 0
    # 1.0 s of the resident's tone, then 0.6 s of nothing, then 0.4 s of both
    for seconds, sides in ((1.0, (resident,)), (0.6, ()), (0.4, (resident, steward))):
        for _ in range(round(seconds * 50)):
            n += 1
            delay = start + n * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for i, side in enumerate(sides):
                side(tone_frame(440 if side is resident else 660, n * 960 + i))
    recording = recorder.stop()
    assert recording is not None and recording.path.is_file()
    assert 1.9 <= recording.duration_s <= 2.2
    audio = decode(recording.path)
    rms = [float(np.sqrt(np.mean(audio[i:i + 1600] ** 2))) for i in range(0, len(audio) - 1600, 1600)]
    assert min(rms[1:9]) > 3000  # the first second carries the tone
    assert max(rms[11:15]) < 300  # the pause is silence, not shifted audio
    assert min(rms[17:19]) > 3000
    assert recorder.stop() == recording  # stopping twice is harmless


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
