"""The faster-whisper engine on real audio: the stream is lazy, VAD keeps silence out, times are original."""

from __future__ import annotations

import inspect

import numpy as np

from speech.engines import DecodeOptions
from speech.pipeline import Pipeline
from speech.text import cer, to_simplified
from tests.speech.conftest import REFERENCES, silence


def test_a_known_sentence_comes_out_close_without_any_help(faster_pipeline: Pipeline,
                                                           valve_audio: np.ndarray) -> None:
    plain = DecodeOptions(language="zh", beam_size=5)
    segments, info = faster_pipeline.transcriber.transcribe(valve_audio, plain)
    assert inspect.isgenerator(segments)  # nothing decoded yet: segments come as they are consumed
    assert info.language == "zh"
    assert abs(info.duration - len(valve_audio) / 16000) < 1e-6
    text = "".join(s.text for s in segments)
    assert cer(REFERENCES["valve_bleeding"], to_simplified(text)) < 0.35


def test_silence_gives_no_text(faster_pipeline: Pipeline) -> None:
    segments, info = faster_pipeline.transcriber.transcribe(silence(20), faster_pipeline.options)
    assert list(segments) == []
    assert info.duration == 20.0
    assert info.duration_after_vad == 0.0


def test_times_are_those_of_the_original_recording(faster_pipeline: Pipeline, valve_audio: np.ndarray) -> None:
    audio = np.concatenate([silence(6), valve_audio, silence(4, seed=1)])
    segments, info = faster_pipeline.transcriber.transcribe(audio, faster_pipeline.options)
    found = list(segments)
    assert found
    assert info.duration_after_vad < info.duration - 8
    assert 5.0 <= found[0].start <= 6.5  # speech starts after six seconds of silence
    assert found[-1].end <= 6 + len(valve_audio) / 16000 + 0.6
    assert all(s.start < s.end for s in found)


def test_a_detected_language_is_reported_and_cleaned_up(faster_pipeline: Pipeline, leak_audio: np.ndarray) -> None:
    """Regression: with STEWARD_SPEECH_LANGUAGE="" (Whisper detects it) the engine reported language "", so the
    pipeline skipped the Chinese clean-up (numbers, punctuation, glossary) and stored the transcript with ""."""
    segments, info = faster_pipeline.transcriber.transcribe(leak_audio, DecodeOptions(language=None))
    assert info.language == "zh"  # known before the first segment is decoded
    assert inspect.isgenerator(segments)
    detecting = Pipeline(faster_pipeline.transcriber, language="", beam_size=5, glossary=faster_pipeline.glossary)
    transcript = detecting.run(leak_audio)
    assert transcript.language == "zh"
    assert "3号楼2单元501室" in transcript.text, transcript.text
