"""Voice activity detection (Silero, shipped in the faster-whisper wheel) shared by both engines, so that
silence never reaches the decoder and both engines see exactly the same audio."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from speech.audio import SAMPLE_RATE


@dataclass
class SpeechGroup:
    """Consecutive speech chunks joined into one array, and the map back to original times."""

    audio: np.ndarray
    timestamps: Any  # faster_whisper.vad.SpeechTimestampsMap

    def original_time(self, t: float, *, is_end: bool = False) -> float:
        """A time in `audio` as a time in the original recording."""
        return float(self.timestamps.get_original_time(t, is_end=is_end))


def speech_groups(audio: np.ndarray, *, max_group_s: float = float("inf"), min_silence_ms: int = 2000,
                  max_chunk_s: float = float("inf")) -> Iterator[SpeechGroup]:
    """The speech in `audio`, in groups of at most `max_group_s` seconds (nothing for silence); a chunk of
    speech longer than that is a group of its own. A pause of `min_silence_ms` ends a chunk (2 s: Silero's
    default); a chunk longer than `max_chunk_s` is cut at its last short pause before that."""
    from faster_whisper.vad import SpeechTimestampsMap, VadOptions, get_speech_timestamps

    options = VadOptions(min_silence_duration_ms=min_silence_ms, max_speech_duration_s=max_chunk_s)
    chunks = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
    group: list[dict[str, int]] = []
    length = 0
    limit = max_group_s * SAMPLE_RATE
    for chunk in chunks:
        size = chunk["end"] - chunk["start"]
        if group and length + size > limit:
            yield _group(audio, group, SpeechTimestampsMap)
            group, length = [], 0
        group.append(chunk)
        length += size
    if group:
        yield _group(audio, group, SpeechTimestampsMap)


def _group(audio: np.ndarray, chunks: list[dict[str, int]], ts_map: Any) -> SpeechGroup:
    joined = np.concatenate([audio[c["start"]:c["end"]] for c in chunks]).astype(np.float32, copy=False)
    return SpeechGroup(joined, ts_map(chunks, SAMPLE_RATE))
