"""The reference engine: openai-whisper on PyTorch (vendored, see speech/_vendor), fed numpy audio."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from speech.audio import SAMPLE_RATE
from speech.engines.base import DecodeOptions, Segment, TranscriptionInfo, Word
from speech.engines.decoding import decode_groups
from speech.model_store import OPENAI_EXTRA, ModelError
from speech.vad import speech_groups

# openai-whisper decodes 30 s windows; feeding it at most that much speech at a time makes the
# stream lazy (one group decoded per step) without changing what a window sees.
GROUP_SECONDS = 30.0


class OpenAIWhisperTranscriber:
    """An openai-whisper checkpoint (`{"dims", "model_state_dict"}`) loaded by path."""

    engine = "openai-whisper"

    def __init__(self, checkpoint: Path, *, model_name: str, device: str = "cpu", threads: int = 1) -> None:
        try:  # the `openai` extra (torch, tiktoken, numba, tqdm): without it, one line rather than a traceback
            import torch

            from speech._vendor import whisper
        except ImportError as exc:
            raise ModelError(f"{OPENAI_EXTRA} ({exc})") from exc

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(threads)
        self.model_name = model_name
        self._device = device
        self._torch: Any = torch
        self._whisper: Any = whisper
        try:
            self._model: Any = whisper.load_model(str(checkpoint), device=device)
        except torch.OutOfMemoryError:
            raise
        # What torch.load and the state-dict loader raise for an empty file, another pickle, a zip that is not
        # a checkpoint or a checkpoint of another shape; without this an empty file ended as click's "Aborted."
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError,
                RuntimeError, struct.error) as exc:  # struct.error: a file of a few bytes
            # torch's own message is no help here (it suggests weights_only=False, i.e. running the file's code)
            raise ModelError(f"{checkpoint} is not an openai-whisper checkpoint (a .pt file holding `dims` and "
                             f"`model_state_dict`; {type(exc).__name__} when loading it)") from exc

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> tuple[Iterator[Segment], TranscriptionInfo]:
        if self._model is None:
            raise RuntimeError("this transcriber is closed")
        groups = list(speech_groups(audio, max_group_s=GROUP_SECONDS))
        if options.language is None and groups:  # detected now, so that info (and the clean-up) knows it
            options = replace(options, language=self._detect_language(groups[0].audio))
        info = TranscriptionInfo(language=options.language or "", duration=len(audio) / SAMPLE_RATE,
                                 duration_after_vad=sum(len(g.audio) for g in groups) / SAMPLE_RATE)
        return decode_groups(groups, lambda speech: self._decode(speech, options)), info

    def _detect_language(self, speech: np.ndarray) -> str:
        """The language of the first 30 s of speech, detected as whisper.transcribe detects it; every group is
        then decoded in it (whisper.transcribe detects once per call, and here a call is one group)."""
        if not self._model.is_multilingual:
            return "en"
        whisper, torch = self._whisper, self._torch
        samples = whisper.audio.N_SAMPLES
        mel = whisper.log_mel_spectrogram(speech[:samples], self._model.dims.n_mels, padding=samples)
        window = whisper.pad_or_trim(mel, whisper.audio.N_FRAMES).to(self._model.device)
        _, probs = self._model.detect_language(window.to(torch.float32 if self._device == "cpu" else torch.float16))
        return str(max(probs, key=probs.get))

    def _decode(self, audio: np.ndarray, options: DecodeOptions) -> list[Segment]:
        """Segments of speech `audio`, times in it."""
        result = self._whisper.transcribe(
            self._model, audio, language=options.language, beam_size=options.beam_size,
            best_of=options.beam_size, temperature=options.temperatures, initial_prompt=options.hotwords,
            carry_initial_prompt=bool(options.hotwords), word_timestamps=options.word_timestamps,
            fp16=self._device != "cpu", verbose=None)
        return [Segment(start=s["start"], end=s["end"], text=s["text"], avg_logprob=s["avg_logprob"],
                        no_speech_prob=s["no_speech_prob"],
                        words=tuple(Word(w["start"], w["end"], w["word"], w["probability"]) for w in s["words"])
                        if s.get("words") else None)
                for s in result["segments"]]

    def close(self) -> None:
        self._model = None
