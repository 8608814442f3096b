"""The openai-whisper reference engine, on the checkpoint converted from the bundled model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from speech.engines.openai import OpenAIWhisperTranscriber
from speech.model_store import ModelError
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


@pytest.mark.parametrize("content", ["empty", "junk", "other dict"])
def test_a_file_that_is_not_a_checkpoint_is_a_model_error(tmp_path: Path, content: str) -> None:
    """Regression: an empty file raised EOFError (click's bare "Aborted."), others a torch traceback."""
    import torch

    path = tmp_path / "model.pt"
    if content == "other dict":
        torch.save({"dims": {"n_mels": 80}, "model_state_dict": {}}, path)  # not a Whisper's dimensions
    else:
        path.write_bytes(b"" if content == "empty" else b"ID3 not a checkpoint" * 50)
    with pytest.raises(ModelError, match=f"{path} is not an openai-whisper checkpoint"):
        OpenAIWhisperTranscriber(path, model_name="bad")
