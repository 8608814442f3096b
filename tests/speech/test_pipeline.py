"""The whole pipeline on real recordings: Simplified text, glossary terms, digits, no text for silence."""

from __future__ import annotations

import numpy as np
import pytest

from api.settings import Settings
from speech.glossary import categorize
from speech.pipeline import Pipeline, build_pipeline, check_language, join_segments, postprocess
from speech.text import cer
from tests.speech.conftest import REFERENCES, silence


def test_a_known_sentence_with_the_glossary(faster_pipeline: Pipeline, valve_audio: np.ndarray) -> None:
    transcript = faster_pipeline.run(valve_audio)
    assert (transcript.engine, transcript.model, transcript.language) == ("faster-whisper", "whisper-base", "zh")
    assert transcript.duration == 7.838
    assert cer(REFERENCES["valve_bleeding"], transcript.text) < 0.25
    assert "进水阀" in transcript.text and "排气阀" in transcript.text  # the glossary terms come out right
    assert categorize(transcript.text, faster_pipeline.glossary) == ["air_lock", "valve"]  # type: ignore[arg-type]
    assert all(0 <= s.start < s.end <= transcript.duration + 0.5 for s in transcript.segments)


def test_an_address_comes_out_in_digits(faster_pipeline: Pipeline,
                                                               leak_audio: np.ndarray) -> None:
    transcript = faster_pipeline.run(leak_audio)
    assert "3号楼2单元501" in transcript.text
    assert cer(REFERENCES["leak_report"], transcript.text, numbers=True) < 0.2
    assert "，" in transcript.text and "," not in transcript.text


def test_silence_gives_an_empty_transcript(faster_pipeline: Pipeline) -> None:
    transcript = faster_pipeline.run(silence(30))
    assert transcript.segments == []
    assert transcript.text == ""
    assert transcript.duration == 30.0


def test_postprocess_without_a_glossary_keeps_homophones() -> None:
    assert postprocess(" 先關上淨水髮, 再打開 ", language="zh", glossary=None) == "先关上净水发，再打开"
    assert postprocess(" Open the valve ", language="en", glossary=None) == "Open the valve"
    assert join_segments(["您好，", "", "暖气不热。"], "zh") == "您好，暖气不热。"
    assert join_segments(["Hello.", "It is cold."], "en") == "Hello. It is cold."


def test_an_unknown_language_is_refused_before_the_model_loads(speech_settings: Settings) -> None:
    """Regression: `klingon` failed inside every decode, after the model had loaded."""
    assert [check_language(code) for code in ("zh", "yue", "en", "")] == ["zh", "yue", "en", ""]
    with pytest.raises(ValueError, match=r"unknown language 'klingon'.*known: .*\bzh\b"):
        check_language("klingon")
    # The language is checked first: the model that does not exist is never reached.
    with pytest.raises(ValueError, match="unknown language 'Chinese'"):
        build_pipeline(speech_settings, model="/nonexistent/model", language="Chinese")
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        build_pipeline(speech_settings.model_copy(update={"speech_language": "klingon"}), model="/nonexistent/model")
