"""`steward transcribe`: the JSON contract, readable output, bad files; and `steward bench speech`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app
from api.settings import get_settings
from speech.cli import transcript_json
from speech.engines import Segment
from speech.pipeline import Transcript
from tests.speech.conftest import FIXTURES, silence, write_wav

CONTRACT = {"file", "engine", "model", "language", "duration", "text", "segments"}


@pytest.fixture
def runner(speech_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("STEWARD_DATA_DIR", str(speech_data_dir))
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_json_lines_one_per_file_and_exit_1_for_a_bad_file(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "broken.m4a"
    bad.write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"\x13" * 500)
    quiet = write_wav(tmp_path / "quiet.wav", silence(3))
    clip = FIXTURES / "leak_report.wav"
    result = runner.invoke(app, ["transcribe", "--json", str(clip), str(bad), str(quiet)])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(clip), str(bad), str(quiet)]
    first, error, empty = lines
    assert set(first) == CONTRACT
    assert (first["engine"], first["model"], first["language"]) == ("faster-whisper", "whisper-base", "zh")
    assert first["duration"] == 7.2 and "3号楼2单元501" in first["text"]
    assert first["segments"] and set(first["segments"][0]) == {"start", "end", "text"}
    assert set(error) == {"file", "error"} and "cannot decode audio" in error["error"]
    assert empty["text"] == "" and empty["segments"] == []


def test_readable_output(runner: CliRunner) -> None:
    clip = FIXTURES / "valve_bleeding.wav"
    result = runner.invoke(app, ["transcribe", str(clip)])
    assert result.exit_code == 0, result.output
    header, *segments = result.stdout.strip().splitlines()
    assert header == f"== {clip} (7.8 s, faster-whisper, whisper-base)"
    assert segments and segments[0].startswith("[00:00.00 -> ")
    assert "排气阀" in result.stdout


def test_a_missing_model_is_a_clear_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["transcribe", "--model", "/nonexistent/model", str(FIXTURES / "leak_report.wav")])
    assert result.exit_code == 2
    assert "not a faster-whisper model directory" in result.stderr


def test_redact_masks_numbers_in_text_and_segments() -> None:
    transcript = Transcript(engine="faster-whisper", model="whisper-base", language="zh", duration=3.0, segments=[
        Segment(start=0, end=3, text="请回电13800138000。", avg_logprob=-0.2, no_speech_prob=0.01)])
    shown = transcript_json("call.wav", transcript, redact=True)
    assert shown["text"] == "请回电138****8000。"
    assert shown["segments"] == [{"start": 0, "end": 3, "text": "请回电138****8000。"}]
    assert transcript_json("call.wav", transcript, redact=False)["text"] == "请回电13800138000。"


def test_bench_speech_scores_a_set_and_writes_results(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "speech", "--set", str(FIXTURES), "--config", "fw-int8-glossary-beam1",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| fw-int8-glossary-beam1 | faster-whisper int8 beam 1 |" in result.stdout
    (path,) = tmp_path.glob("speech-*.json")
    summary = json.loads(path.read_text("utf-8"))
    (run,) = summary["results"]
    assert [c["id"] for c in run["clips"]] == ["leak_report", "valve_bleeding"]
    assert 0 < run["cer_num"] <= run["cer"] < 0.4
    assert 0 < run["rtf"] < 2
    assert run["peak_rss_mb"] > 100  # the child process's own peak, model included
    assert run["unscored"] == []
