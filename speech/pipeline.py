"""From audio to a finished transcript: engine, Simplified characters, punctuation, glossary correction."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from api.settings import Settings
from speech.engines import DecodeOptions, Segment, Transcriber, TranscriptionInfo, load_transcriber
from speech.glossary import Glossary, corrector_for, load_glossary
from speech.model_store import resolve_model
from speech.numbers import normalize_numbers
from speech.text import to_simplified, zh_punctuation


def postprocess(text: str, *, language: str, glossary: Glossary | None) -> str:
    """Clean one segment's text: Simplified characters, full-width punctuation, glossary terms."""
    text = text.strip()
    if language.startswith("zh"):
        text = normalize_numbers(zh_punctuation(to_simplified(text)))
        if glossary is not None:
            text = corrector_for(glossary).correct(text)
    return text


def segment_separator(language: str) -> str:
    """What goes between two segments' texts in a transcript's text (nothing between Chinese segments)."""
    return "" if language.startswith("zh") else " "


def join_segments(texts: list[str], language: str) -> str:
    """A transcript's text from its segments' texts (empty ones left out)."""
    return segment_separator(language).join(t for t in texts if t)


@dataclass
class Transcript:
    """A finished transcription of one recording."""

    engine: str
    model: str
    language: str
    duration: float
    segments: list[Segment] = field(default_factory=list)

    @property
    def text(self) -> str:
        return join_segments([s.text for s in self.segments], self.language)


class Pipeline:
    """A loaded engine plus the decoding options and post-processing the service uses.

    One model is shared by the threads of a process; decoding is serialised by a lock because a
    model instance decodes one stream at a time well (each uses every core it is given).
    """

    def __init__(self, transcriber: Transcriber, *, language: str, beam_size: int, glossary: Glossary | None) -> None:
        self.transcriber = transcriber
        self.language = language
        self.glossary = glossary
        self.options = DecodeOptions(language=language or None, beam_size=beam_size,
                                     hotwords=(glossary.prompt or None) if glossary else None)
        self.lock = threading.Lock()

    @property
    def engine(self) -> str:
        return self.transcriber.engine

    @property
    def model(self) -> str:
        return self.transcriber.model_name

    def stream(self, audio: np.ndarray) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """Finished segments of `audio`, decoded as they are consumed (hold `lock` while consuming)."""
        segments, info = self.transcriber.transcribe(audio, self.options)
        language = info.language or self.language

        def finished() -> Iterator[Segment]:
            for s in segments:
                text = postprocess(s.text, language=language, glossary=self.glossary)
                if text:
                    yield Segment(start=s.start, end=s.end, text=text, avg_logprob=s.avg_logprob,
                                  no_speech_prob=s.no_speech_prob, words=s.words)

        return finished(), info

    def run(self, audio: np.ndarray) -> Transcript:
        """The whole transcript of `audio`."""
        with self.lock:
            segments, info = self.stream(audio)
            return Transcript(engine=self.engine, model=self.model, language=info.language or self.language,
                              duration=round(info.duration, 3), segments=list(segments))

    def close(self) -> None:
        self.transcriber.close()


def check_language(language: str) -> str:
    """The language, if Whisper knows the code ("" lets Whisper detect it); otherwise a ValueError that lists
    the codes. Without this, an unknown code fails only inside the first decode, once per recording."""
    # faster-whisper's list; the vendored openai-whisper knows the same 100 codes (and importing it costs torch).
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    if language and language not in _LANGUAGE_CODES:
        raise ValueError(f"unknown language {language!r}: give a Whisper language code such as zh, yue or en "
                         f"(known: {', '.join(sorted(_LANGUAGE_CODES))})")
    return language


def build_pipeline(settings: Settings, *, engine: str | None = None, model: str | None = None,
                   language: str | None = None, compute_type: str | None = None, beam_size: int | None = None,
                   use_glossary: bool = True) -> Pipeline:
    """A pipeline from the settings, any argument overriding its setting (loads the model: seconds)."""
    language = check_language(settings.speech_language if language is None else language)  # before the slow load
    ref = resolve_model(engine=engine or settings.whisper_engine, model=settings.whisper_model if model is None
                        else model, data_dir=settings.data_dir)
    transcriber = load_transcriber(ref, device=settings.whisper_device,
                                   compute_type=compute_type or settings.whisper_compute_type,
                                   threads=settings.whisper_threads)
    glossary = load_glossary(settings.speech_glossary) if use_glossary else None
    return Pipeline(transcriber, language=language,
                    beam_size=beam_size or settings.whisper_beam_size, glossary=glossary)


_shared: dict[tuple[object, ...], Pipeline] = {}
_shared_lock = threading.Lock()


def shared_pipeline(settings: Settings) -> Pipeline:
    """One pipeline per process and configuration: workers load the model once and reuse it."""
    key = (settings.whisper_engine, settings.whisper_model, settings.whisper_device, settings.whisper_compute_type,
           settings.whisper_beam_size, settings.whisper_threads, settings.speech_language, settings.speech_glossary,
           settings.data_dir)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = build_pipeline(settings)
        return _shared[key]
