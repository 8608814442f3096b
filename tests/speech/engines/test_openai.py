"""The openai-whisper reference engine, on the checkpoint converted from the bundled model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from speech.engines import DecodeOptions, load_transcriber
from speech.engines.openai import OpenAIWhisperTranscriber
from speech.model_store import ModelError, ModelRef
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


def test_a_detected_language_is_reported(openai_pipeline: Pipeline, leak_audio: np.ndarray) -> None:
    """Regression: with STEWARD_SPEECH_LANGUAGE="" the engine reported language "" (Chinese clean-up skipped)."""
    _, info = openai_pipeline.transcriber.transcribe(leak_audio, DecodeOptions(language=None))
    assert info.language == "zh"  # known before the first segment is decoded
    detecting = Pipeline(openai_pipeline.transcriber, language="", beam_size=5, glossary=openai_pipeline.glossary)
    transcript = detecting.run(leak_audio)
    assert transcript.language == "zh"
    assert "3号楼2单元501室" in transcript.text, transcript.text


def test_without_torch_the_engine_says_to_install_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: torch was imported by the constructor, outside load_transcriber's try: a bare
    ModuleNotFoundError rather than "needs the `openai` extra"."""
    from speech.engines import engine_available  # the start-up check's helper

    checkpoint = tmp_path / "base.pt"
    checkpoint.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert engine_available("openai-whisper") is None
    assert engine_available("faster-whisper") is None
    monkeypatch.setitem(sys.modules, "torch", None)
    problem = engine_available("openai-whisper")
    assert problem is not None and "needs the `openai` extra" in problem and "torch not installed" in problem
    with pytest.raises(RuntimeError, match=r"needs the `openai` extra: pip install 'heat-steward\[openai\]'"):
        load_transcriber(ModelRef("openai-whisper", checkpoint, "base"))
