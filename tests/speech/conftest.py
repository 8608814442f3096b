"""Speech fixtures: the bundled model assembled once per test session, engines loaded once, real clips."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from api.settings import Settings
from speech.audio import SAMPLE_RATE, decode_audio
from speech.pipeline import Pipeline, build_pipeline

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
REFERENCES: dict[str, str] = json.loads((FIXTURES / "transcripts.json").read_text("utf-8"))


@pytest.fixture(scope="session")
def speech_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory whose models/ the session's engines share (assembled on first use)."""
    return tmp_path_factory.mktemp("speech-data")


@pytest.fixture(scope="session")
def speech_settings(speech_data_dir: Path) -> Settings:
    return Settings(data_dir=speech_data_dir, whisper_threads=0)


@pytest.fixture(scope="session")
def faster_pipeline(speech_settings: Settings) -> Iterator[Pipeline]:
    """faster-whisper int8 with the bundled glossary: the service default."""
    pipeline = build_pipeline(speech_settings)
    yield pipeline
    pipeline.close()


@pytest.fixture(scope="session")
def openai_pipeline(speech_settings: Settings) -> Iterator[Pipeline]:
    """The openai-whisper reference engine on the converted bundled model."""
    pipeline = build_pipeline(speech_settings, engine="openai-whisper")
    yield pipeline
    pipeline.close()


@pytest.fixture(scope="session")
def valve_audio() -> np.ndarray:
    return decode_audio(FIXTURES / "valve_bleeding.wav")


@pytest.fixture(scope="session")
def leak_audio() -> np.ndarray:
    return decode_audio(FIXTURES / "leak_report.wav")


def silence(seconds: float, *, noise: float = 0.001, seed: int = 0) -> np.ndarray:
    """Near-silence: faint white noise, as a quiet room on a phone line."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * noise).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """`audio` (float, mono) as a 16-bit PCM wav file."""
    import wave

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    return path
