"""Speech engines behind one `Transcriber` interface; `load_transcriber` picks and loads one."""

from __future__ import annotations

import importlib.util
import os

from speech.engines.base import DecodeOptions, Segment, Transcriber, TranscriptionInfo, Word
from speech.model_store import FASTER_WHISPER, OPENAI_EXTRA, OPENAI_WHISPER, ModelRef

# What each engine imports beyond the base install (the vendored openai-whisper's imports: the `openai` extra).
_ENGINE_MODULES = {FASTER_WHISPER: ("faster_whisper", "ctranslate2"),
                   OPENAI_WHISPER: ("torch", "tiktoken", "numba", "tqdm")}


def engine_available(engine: str) -> str | None:
    """None when `engine`'s packages are installed, else the one-line problem (what to install), without
    importing them (importing torch costs seconds): for a start-up check."""
    if engine not in _ENGINE_MODULES:
        return f"unknown engine {engine!r}; use one of: {', '.join(_ENGINE_MODULES)}"
    missing = [name for name in _ENGINE_MODULES[engine] if not _installed(name)]
    if not missing:
        return None
    if engine == OPENAI_WHISPER:
        return f"{OPENAI_EXTRA} ({', '.join(missing)} not installed)"
    return f"the faster-whisper engine needs {', '.join(missing)}: reinstall heat-steward (`pip install -e .`)"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return False


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
            raise RuntimeError(f"{OPENAI_EXTRA} ({exc})") from exc
        # (torch itself is imported by the constructor, which turns its ImportError into the same message)
        return OpenAIWhisperTranscriber(ref.path, model_name=ref.name, device=device, threads=cpu_threads(threads))
    raise ValueError(f"unknown engine {ref.engine!r}")


__all__ = ["DecodeOptions", "Segment", "Transcriber", "TranscriptionInfo", "Word", "cpu_threads",
           "engine_available", "load_transcriber"]
