"""Speech engines behind one `Transcriber` interface; `load_transcriber` picks and loads one."""

from __future__ import annotations

import os

from speech.engines.base import DecodeOptions, Segment, Transcriber, TranscriptionInfo, Word
from speech.model_store import FASTER_WHISPER, OPENAI_WHISPER, ModelRef


def cpu_threads(requested: int) -> int:
    """`requested`, or every core this process may use when 0."""
    return requested or len(os.sched_getaffinity(0)) or 1


def load_transcriber(ref: ModelRef, *, device: str = "cpu", compute_type: str = "int8",
                     threads: int = 0) -> Transcriber:
    """Load the model `ref` for its engine (seconds: load once, reuse for every file)."""
    if ref.engine == FASTER_WHISPER:
        from speech.engines.faster import FasterWhisperTranscriber

        return FasterWhisperTranscriber(ref.path, model_name=ref.name, device=device, compute_type=compute_type,
                                        threads=cpu_threads(threads))
    if ref.engine == OPENAI_WHISPER:
        try:
            from speech.engines.openai import OpenAIWhisperTranscriber
        except ImportError as exc:
            raise RuntimeError("the openai-whisper engine needs the `openai` extra: "
                               "pip install 'heat-steward[openai]'") from exc
        return OpenAIWhisperTranscriber(ref.path, model_name=ref.name, device=device, threads=cpu_threads(threads))
    raise ValueError(f"unknown engine {ref.engine!r}")


__all__ = ["DecodeOptions", "Segment", "Transcriber", "TranscriptionInfo", "Word", "cpu_threads",
           "load_transcriber"]
