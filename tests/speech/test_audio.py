"""Decoding recordings: samples as faster-whisper reads them, and a cap on how long a recording may be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import speech.audio
from api.settings import Settings, get_settings
from speech.audio import SAMPLE_RATE, AudioDecodeError, decode_audio
from tests.speech.conftest import write_wav


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _pcm(path: Path) -> np.ndarray:
    """The wav's own 16-bit samples, scaled as Whisper expects."""
    import wave

    with wave.open(str(path)) as f:
        return np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float32) / 32768.0


def test_samples_are_the_files_pcm_as_float32(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "tone.wav", _tone(2))
    samples = decode_audio(path, max_duration_s=60)
    assert samples.dtype == np.float32
    assert np.array_equal(samples, _pcm(path))
    assert np.array_equal(decode_audio(path.read_bytes(), max_duration_s=60), samples)


def test_a_recording_longer_than_the_limit_is_refused(tmp_path: Path) -> None:
    """Regression: a 7 MB, 3-hour AMR upload decoded to a 2.2 GB peak."""
    path = write_wav(tmp_path / "long.wav", _tone(3))
    with pytest.raises(AudioDecodeError, match=r"long\.wav: the recording is 3 s long, longer than the 2 s "
                                               r"accepted \(STEWARD_SPEECH_MAX_DURATION_S\)"):
        decode_audio(path, max_duration_s=2)
    assert decode_audio(path, max_duration_s=3).size == 3 * SAMPLE_RATE


def test_without_a_declared_duration_decoding_stops_at_the_limit(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_wav(tmp_path / "long.wav", _tone(3))
    monkeypatch.setattr(speech.audio, "_declared_seconds", lambda container, stream: None)
    with pytest.raises(AudioDecodeError, match="longer than the 2 s accepted"):
        decode_audio(path, max_duration_s=2)


def test_a_header_that_understates_the_length_still_gives_every_sample(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_wav(tmp_path / "tone.wav", _tone(4))
    monkeypatch.setattr(speech.audio, "_declared_seconds", lambda container, stream: 0.1)  # the buffer grows
    assert np.array_equal(decode_audio(path, max_duration_s=60), _pcm(path))


def test_the_limit_defaults_to_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_wav(tmp_path / "long.wav", _tone(3))
    monkeypatch.setenv("STEWARD_SPEECH_MAX_DURATION_S", "2")
    get_settings.cache_clear()
    try:
        with pytest.raises(AudioDecodeError, match="longer than the 2 s accepted"):
            decode_audio(path)
    finally:
        get_settings.cache_clear()
    assert Settings.model_fields["speech_max_duration_s"].default == 4 * 3600


def test_a_file_without_audio_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not audio")
    with pytest.raises(AudioDecodeError, match="cannot decode audio"):
        decode_audio(path, max_duration_s=60)


def _encode(fmt: str, codec: str, seconds: float, rate: int = 8000) -> bytes:
    """A tone of `seconds` as a telephone-rate recording in `fmt`."""
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        t = np.arange(int(rate * seconds)) / rate
        pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()


def test_a_damaged_stretch_is_skipped_not_the_whole_call(caplog: pytest.LogCaptureFixture) -> None:
    """A recorder's dropout (500 zeroed bytes mid-file) failed the whole call as undecodable."""
    data = _encode("mp3", "libmp3lame", 20.0)
    middle = len(data) // 2
    with caplog.at_level("WARNING", logger="speech.audio"):
        audio = decode_audio(data[:middle] + bytes(500) + data[middle + 500:], max_duration_s=3600)
    assert 10 * SAMPLE_RATE < audio.size <= 20.5 * SAMPLE_RATE
    assert "damaged audio packet" in caplog.text


def test_an_amr_recording_cut_mid_frame_keeps_what_it_holds() -> None:
    data = _encode("amr", "libopencore_amrnb", 20.0)
    audio = decode_audio(data[:len(data) // 2 + 3], max_duration_s=3600)
    assert 9 * SAMPLE_RATE < audio.size < 11 * SAMPLE_RATE


def test_a_file_of_which_nothing_decodes_is_still_refused_with_the_reason() -> None:
    with pytest.raises(AudioDecodeError, match="cannot decode audio"):
        decode_audio(b"RIFF" + bytes(100), max_duration_s=100)


def test_a_recording_whose_format_changes_midway_is_decoded_whole() -> None:
    """Two mp3 recordings joined end to end (a recorder that appends, `cat a.mp3 b.mp3`): the second part has
    another sample rate. Players and ffmpeg play both parts; it must not be refused as corrupt."""
    data = _encode("mp3", "libmp3lame", 2.0, rate=8000) + _encode("mp3", "libmp3lame", 2.0, rate=16000)
    audio = decode_audio(data, max_duration_s=3600)
    assert 3.8 * SAMPLE_RATE < audio.size < 4.5 * SAMPLE_RATE


def test_a_file_that_cannot_be_opened_now_is_not_called_corrupt(tmp_path: Path) -> None:
    """Out of file descriptors (a busy worker), EACCES, EIO on a network blob store: the recording is fine and a
    retry would read it. AudioDecodeError makes the worker fail the job for good as "undecodable audio"."""
    import os
    import resource

    path = write_wav(tmp_path / "tone.wav", _tone(1))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        with pytest.raises(OSError) as caught:
            decode_audio(path, max_duration_s=60)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not isinstance(caught.value, AudioDecodeError), caught.value
