"""The default engine: faster-whisper on CTranslate2 (int8 on CPU)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from speech.audio import SAMPLE_RATE
from speech.engines.base import DecodeOptions, Segment, TranscriptionInfo, Word
from speech.engines.decoding import decode_groups
from speech.model_store import FASTER_WHISPER, check_model
from speech.vad import speech_groups


def stay_offline() -> None:
    """Forbid the Hugging Face hub to this process. faster-whisper reaches for it when a model directory lacks
    tokenizer.json (check_model refuses such a directory first); with the hub offline, anything that still tries
    fails at once instead of retrying for half a minute, or downloading on a machine that has a connection. The
    variable is read when huggingface_hub is imported; the constant, in case it already is."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True


class FasterWhisperTranscriber:
    """A CTranslate2 Whisper model loaded from a local directory (never from a hub)."""

    engine = "faster-whisper"

    def __init__(self, model_dir: Path, *, model_name: str, device: str = "cpu", compute_type: str = "int8",
                 threads: int = 1) -> None:
        stay_offline()
        check_model(engine=FASTER_WHISPER, model=str(model_dir))  # all files there: nothing to fetch
        from faster_whisper import WhisperModel

        self.model_name = model_name
        self._model: Any = WhisperModel(str(model_dir), device=device, compute_type=compute_type,
                                        cpu_threads=threads, local_files_only=True)

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> tuple[Iterator[Segment], TranscriptionInfo]:
        if self._model is None:
            raise RuntimeError("this transcriber is closed")
        groups = list(speech_groups(audio))
        if options.language is None and groups:  # detected now, so that info (and the clean-up) knows it
            options = replace(options, language=self._detect_language(groups[0].audio))
        info = TranscriptionInfo(language=options.language or "", duration=len(audio) / SAMPLE_RATE,
                                 duration_after_vad=sum(len(g.audio) for g in groups) / SAMPLE_RATE)
        return decode_groups(groups, lambda speech: self._decode(speech, options)), info

    def _detect_language(self, speech: np.ndarray) -> str:
        """The language of the first 30 s of speech, as Whisper detects it (and then decodes every group in)."""
        if not self._model.model.is_multilingual:
            return "en"
        language, _probability, _ = self._model.detect_language(audio=speech)
        return str(language)

    def _decode(self, audio: np.ndarray, options: DecodeOptions) -> Iterator[Segment]:
        """Segments of speech `audio`, times in it."""
        segments, _ = self._model.transcribe(
            audio, language=options.language, beam_size=options.beam_size, best_of=options.beam_size,
            temperature=list(options.temperatures), hotwords=options.hotwords,
            word_timestamps=options.word_timestamps, vad_filter=False)
        for s in segments:
            words = tuple(Word(w.start, w.end, w.word, w.probability) for w in s.words) if s.words else None
            yield Segment(start=s.start, end=s.end, text=s.text, avg_logprob=s.avg_logprob,
                          no_speech_prob=s.no_speech_prob, words=words)

    def close(self) -> None:
        self._model = None
