"""What every engine returns: a lazy stream of segments plus information about the audio."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """A stretch of speech; times are seconds in the original audio (silence removed by VAD included)."""

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True)
class TranscriptionInfo:
    language: str
    duration: float
    duration_after_vad: float


@dataclass(frozen=True)
class DecodeOptions:
    """Decoder settings shared by both engines, so that they can be compared like for like."""

    language: str | None = "zh"
    beam_size: int = 5
    hotwords: str | None = None
    word_timestamps: bool = False
    temperatures: tuple[float, ...] = field(default=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0))


class Transcriber(Protocol):
    """A loaded model. `transcribe` returns at once; decoding happens as the segments are consumed."""

    engine: str
    model_name: str

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """Segments of 16 kHz mono float32 `audio`, in order, and information about it."""
        ...

    def close(self) -> None:
        """Free the model; idempotent."""
        ...
