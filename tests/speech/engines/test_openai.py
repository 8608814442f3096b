"""The openai-whisper reference engine, on the checkpoint converted from the bundled model."""

from __future__ import annotations

import numpy as np

from speech.pipeline import Pipeline
from speech.text import cer
from tests.speech.conftest import REFERENCES, silence


def test_both_engines_give_the_same_text(faster_pipeline: Pipeline, openai_pipeline: Pipeline,
                                         valve_audio: np.ndarray, leak_audio: np.ndarray) -> None:
    assert openai_pipeline.engine == "openai-whisper"
    for clip, audio in (("valve_bleeding", valve_audio), ("leak_report", leak_audio)):
        fast, reference = faster_pipeline.run(audio).text, openai_pipeline.run(audio).text
        assert cer(reference, fast) <= 0.1, (clip, fast, reference)
        assert cer(REFERENCES[clip], reference) < 0.3


def test_silence_gives_no_text(openai_pipeline: Pipeline) -> None:
    transcript = openai_pipeline.run(silence(20))
    assert transcript.segments == []
    assert transcript.text == ""
