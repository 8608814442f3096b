"""`steward transcribe`: the JSON contract, readable output, bad files; and `steward bench speech`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import speech.audio
from api.cli import app
from api.settings import get_settings
from speech.cli import transcript_json
from speech.engines import Segment
from speech.pipeline import Transcript
from tests.speech.conftest import FIXTURES, silence, write_wav
from tests.speech.ct2_writer import tiny_whisper, write_model_bin

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


def test_redact_masks_a_number_split_between_segments_in_both() -> None:
    """Regression: --redact masked each segment alone, so a number Whisper split between two segments was
    masked in the text and readable from the segments."""
    transcript = Transcript(engine="faster-whisper", model="whisper-base", language="zh", duration=6.0, segments=[
        Segment(start=0, end=3, text="请回电138", avg_logprob=-0.2, no_speech_prob=0.01),
        Segment(start=3, end=6, text="0013 8000谢谢", avg_logprob=-0.2, no_speech_prob=0.01)])
    shown = transcript_json("call.wav", transcript, redact=True)
    assert shown["text"] == "请回电138**** 8000谢谢"
    assert [s["text"] for s in shown["segments"]] == ["请回电138", "**** 8000谢谢"]


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


def test_an_unknown_language_is_refused_before_any_file(runner: CliRunner, tmp_path: Path) -> None:
    """Regression: a traceback from inside the first decode, and no JSON line for any file."""
    result = runner.invoke(app, ["transcribe", "--json", "--language", "klingon", str(FIXTURES / "leak_report.wav"),
                                 str(tmp_path / "missing.wav")])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "unknown language 'klingon'" in line


def test_an_unexpected_error_on_one_file_still_transcribes_the_others(runner: CliRunner, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: only `AudioDecodeError` was caught per file; anything else ended the run with a traceback."""
    decode = speech.audio.decode_audio
    odd = tmp_path / "odd.wav"

    def decode_or_fail(source: Path, **options: float) -> object:
        if source == odd:
            raise RuntimeError("the decoder fell over")
        return decode(source, **options)

    monkeypatch.setattr(speech.audio, "decode_audio", decode_or_fail)
    clip, missing = FIXTURES / "leak_report.wav", tmp_path / "missing.wav"
    result = runner.invoke(app, ["transcribe", "--json", str(odd), str(missing), str(clip)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    failed, gone, done = [json.loads(line) for line in result.stdout.splitlines()]
    assert failed == {"file": str(odd), "error": f"{odd}: RuntimeError: the decoder fell over"}
    assert gone == {"file": str(missing), "error": f"{missing}: file not found"}
    assert done["file"] == str(clip) and "3号楼2单元501" in done["text"]


def _set(tmp_path: Path, transcripts: str) -> Path:
    directory = tmp_path / "set"
    directory.mkdir()
    (directory / "leak_report.wav").write_bytes((FIXTURES / "leak_report.wav").read_bytes())
    (directory / "transcripts.json").write_text(transcripts, "utf-8")
    return directory


@pytest.mark.parametrize("transcripts", ['["leak_report"]', '{"leak_report": 5}', "null", "{not json",
                                         '{"leak_report": ["供暖"]}'])
def test_bench_speech_refuses_a_set_whose_references_are_not_texts(runner: CliRunner, tmp_path: Path,
                                                                   transcripts: str) -> None:
    """Regression: a TypeError traceback (null), or a failed run per configuration (a list, a number)."""
    result = runner.invoke(app, ["bench", "speech", "--set", str(_set(tmp_path, transcripts)),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    (line,) = result.stderr.splitlines()
    assert line.startswith("--set: ") and "transcripts.json" in line
    assert not (tmp_path / "out").exists()


def test_bench_speech_reports_a_bad_setting_in_one_line(runner: CliRunner, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): `STEWARD_PORT=abc steward bench speech ...` ended in a ValidationError traceback."""
    monkeypatch.setenv("STEWARD_PORT", "abc")
    get_settings.cache_clear()
    result = runner.invoke(app, ["bench", "speech", "--set", str(FIXTURES), "--config", "fw-int8-plain",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert result.stderr.startswith("Configuration error: STEWARD_PORT"), result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["afile", "afile/results"])
def test_bench_speech_refuses_an_out_that_is_no_directory_before_running(runner: CliRunner, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          out: str) -> None:
    """Regression: --out pointing at a regular file failed only after the whole benchmark had run."""
    import speech.bench

    monkeypatch.setattr(speech.bench, "run_bench", lambda *a, **kw: pytest.fail("the benchmark ran"))
    (tmp_path / "afile").write_text("")
    result = runner.invoke(app, ["bench", "speech", "--set", str(_set(tmp_path, '{"leak_report": "供暖"}')),
                                 "--out", str(tmp_path / out)])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"--out {tmp_path / out}")


@pytest.mark.parametrize("kind", ["parent is a file", "server refuses"])
def test_the_worker_answers_a_database_it_cannot_use_in_one_line(runner: CliRunner, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Regression: a database path under a file was a FileExistsError traceback, and a PostgreSQL server that
    refuses was a traceback after procrastinate's pool had waited 30 s."""
    if kind == "parent is a file":
        (tmp_path / "afile").write_text("")
        url, cause = f"sqlite:///{tmp_path / 'afile' / 'steward.db'}", "cannot create the directory"
    else:
        url, cause = "postgresql://steward:hunter2-secret@127.0.0.1:1/steward", "Connection refused"
    monkeypatch.setenv("STEWARD_DATABASE_URL", url)
    get_settings.cache_clear()
    result = runner.invoke(app, ["worker"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("Cannot use the database ") and cause in line and "hunter2-secret" not in line


def test_the_speedup_pairs_the_service_default_with_openai_whisper_at_the_same_beam() -> None:
    """Regression: with two faster-whisper configurations in one run (int8 and float32), the speed-up was
    taken against whichever came last, and printed as the service's."""
    from speech.bench import speedups

    def run(engine: str, compute_type: str, beam: int, rtf: float) -> dict[str, object]:
        return {"engine": engine, "compute_type": compute_type, "beam_size": beam, "glossary": True, "rtf": rtf}

    results = [run("faster-whisper", "int8", 5, 0.15), run("faster-whisper", "float32", 5, 0.18),
               run("openai-whisper", "float32", 5, 0.54), run("faster-whisper", "int8", 1, 0.12),
               {"name": "broken", "error": "the benchmark process died"}]
    assert speedups(results) == {"speedup_faster_over_openai": 3.6, "speedup_faster_fp32_over_openai": 3.0}
    assert speedups([*results, run("openai-whisper", "float32", 1, 0.36)])["speedup_faster_over_openai_beam1"] == 3.0


@pytest.mark.parametrize("content", [b"", b"ID3 not a checkpoint" * 50, b"junk"])  # junk: struct.error
def test_a_file_that_is_not_an_openai_checkpoint_is_a_clear_error(runner: CliRunner, tmp_path: Path,
                                                                   content: bytes) -> None:
    """Regression: an empty file ended in click's bare "Aborted.", another file in a torch traceback."""
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(content)
    result = runner.invoke(app, ["transcribe", "--engine", "openai-whisper", "--model", str(checkpoint),
                                 str(FIXTURES / "leak_report.wav")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Cannot transcribe: {checkpoint} is not an openai-whisper checkpoint")


def test_a_recording_longer_than_the_limit_fails_alone(runner: CliRunner, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEWARD_SPEECH_MAX_DURATION_S", "5")
    get_settings.cache_clear()
    long, short = write_wav(tmp_path / "long.wav", silence(6)), write_wav(tmp_path / "short.wav", silence(3))
    result = runner.invoke(app, ["transcribe", "--json", str(long), str(short)])
    assert result.exit_code == 1, result.output
    refused, done = [json.loads(line) for line in result.stdout.splitlines()]
    assert "longer than the 5 s accepted (STEWARD_SPEECH_MAX_DURATION_S)" in refused["error"]
    assert done["duration"] == 3.0


def test_an_error_line_on_a_terminal_is_not_glued_to_the_progress_bar(speech_data_dir: Path, tmp_path: Path) -> None:
    """Regression: on a terminal, a bad file's error line went to stderr beside the live bar on stdout and
    came out as `━━━ 0% -:--:--error: ...` on one line."""
    import os
    import pty
    import re
    import subprocess
    import sys

    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 100)
    quiet = tmp_path / "quiet.wav"
    write_wav(quiet, silence(1.0))
    master, slave = pty.openpty()
    env = os.environ | {"STEWARD_DATA_DIR": str(speech_data_dir), "STEWARD_WHISPER_THREADS": "1"}
    done = subprocess.Popen([Path(sys.executable).with_name("steward"), "transcribe", str(quiet), str(garbage),
                             str(quiet)], stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the other end closed
            break
        if not data:
            break
        chunks.append(data)
    assert done.wait(timeout=120) == 1
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    errors = [line for line in screen.replace("\r", "\n").split("\n") if "garbage.wav" in line]
    assert errors and all(line.lstrip().startswith("error:") for line in errors), errors


def _ct2_dir(path: Path, *files: str) -> Path:
    path.mkdir()
    write_model_bin(path / "model.bin", tiny_whisper())
    for name in files:
        (path / name).write_text("{}")
    return path


def test_a_model_dir_without_tokenizer_is_refused_before_loading(runner: CliRunner, tmp_path: Path) -> None:
    """Regression: ~25 s of retries towards huggingface.co for a tokenizer, then a traceback (exit 1)."""
    model = _ct2_dir(tmp_path / "ct2", "config.json", "vocabulary.json")
    result = runner.invoke(app, ["transcribe", "--model", str(model), str(FIXTURES / "leak_report.wav")])
    assert result.exit_code == 2, (result.exit_code, repr(result.exception))
    assert result.stderr.startswith(f"Cannot transcribe: {model} is not a complete faster-whisper model directory: "
                                    "no tokenizer.json in it")
    assert len(result.stderr.strip().splitlines()) == 1


def test_openai_whisper_without_torch_is_one_line(runner: CliRunner, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: without the `openai` extra, a ModuleNotFoundError traceback (exit 1)."""
    model = _ct2_dir(tmp_path / "ct2")
    monkeypatch.setitem(sys.modules, "torch", None)
    result = runner.invoke(app, ["transcribe", "--engine", "openai-whisper", "--model", str(model),
                                 str(FIXTURES / "leak_report.wav")])
    assert result.exit_code == 2, (result.exit_code, repr(result.exception))
    assert result.stderr.startswith("Cannot transcribe: the openai-whisper engine needs the `openai` extra")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_data_directory_that_cannot_hold_the_conversion_is_one_line(runner: CliRunner, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the openai-whisper conversion into a data directory that is a file: a traceback (exit 1)."""
    model = _ct2_dir(tmp_path / "ct2")
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path / "afile"))
    get_settings.cache_clear()
    result = runner.invoke(app, ["transcribe", "--engine", "openai-whisper", "--model", str(model),
                                 str(FIXTURES / "leak_report.wav")])
    assert result.exit_code == 2, (result.exit_code, repr(result.exception))
    assert result.stderr.startswith(f"Cannot transcribe: cannot convert {model} into the openai-whisper checkpoint")


def test_a_model_whose_tokenizer_does_not_parse_is_one_line(runner: CliRunner, speech_data_dir: Path,
                                                            tmp_path: Path) -> None:
    """Regression: a model directory cloned without git-lfs (tokenizer.json a pointer file) made the tokenizer
    library raise a bare Exception: a 68-line traceback, exit 1, and no line for any file."""
    from speech.model_store import ensure_bundled_model

    bundled = ensure_bundled_model(speech_data_dir)
    model = tmp_path / "lfs-clone"
    model.mkdir()
    for item in bundled.iterdir():
        (model / item.name).symlink_to(item)
    (model / "tokenizer.json").unlink()
    (model / "tokenizer.json").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64
                                          + "\nsize 2480466\n")
    result = runner.invoke(app, ["transcribe", "--json", "--model", str(model), str(FIXTURES / "leak_report.wav")])
    assert result.exit_code == 2, (result.exit_code, repr(result.exception))
    assert result.stdout == ""
    # Named before loading (check_model parses the model's JSON files), not as the tokenizer library's error.
    assert result.stderr.startswith(f"Cannot transcribe: {model / 'tokenizer.json'} is a Git LFS pointer, not "
                                    "the file"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_file_name_that_is_not_utf8_is_shown_escaped_and_the_others_still_run(runner: CliRunner,
                                                                                tmp_path: Path) -> None:
    """Regression: a recording named in GBK (from a Windows share) came back from the OS with lone surrogates;
    printing its line raised UnicodeEncodeError on a strict UTF-8 stdout, and every later file lost its line."""
    gbk = tmp_path / os.fsdecode("录音".encode("gbk") + b".wav")  # c2 bc is UTF-8 for ¼; d2 f4 is not UTF-8
    write_wav(gbk, silence(1))
    missing = tmp_path / os.fsdecode(b"\xb6\xaa.wav")
    result = runner.invoke(app, ["transcribe", "--json", str(gbk), str(missing), str(FIXTURES / "leak_report.wav")])
    assert result.exit_code == 1, (result.exit_code, repr(result.exception))
    lines = [json.loads(line) for line in result.stdout.encode("utf-8").decode("utf-8", "strict").splitlines()]
    assert [line["file"] for line in lines] == [f"{tmp_path}/\u00bc\\xd2\\xf4.wav", f"{tmp_path}/\\xb6\\xaa.wav",
                                                str(FIXTURES / "leak_report.wav")]
    assert lines[0]["text"] == "" and "\\xb6\\xaa.wav" in lines[1]["error"] and lines[2]["text"]


def test_an_unreadable_file_is_its_own_error_line(runner: CliRunner, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: Typer refused the whole run (exit 2, no lines) when one path was unreadable; now it is that
    file's error line and the others are transcribed. (The suite runs as root, who reads anything: the
    permission check and the read are made to fail as they do for a service account.)"""
    locked = write_wav(tmp_path / "locked.wav", silence(1))
    access, decode = os.access, speech.audio.decode_audio

    def no_access(path: object, mode: int, **kwargs: object) -> bool:
        return False if Path(str(path)) == locked else access(path, mode, **kwargs)  # type: ignore[arg-type]

    def denied(source: Path, **options: float) -> object:
        if Path(source) == locked:
            raise PermissionError(13, "Permission denied", str(source))
        return decode(source, **options)

    monkeypatch.setattr(os, "access", no_access)
    monkeypatch.setattr(speech.audio, "decode_audio", denied)
    result = runner.invoke(app, ["transcribe", "--json", str(locked), str(FIXTURES / "leak_report.wav")])
    assert result.exit_code == 1, (result.exit_code, result.output)
    unreadable, done = [json.loads(line) for line in result.stdout.splitlines()]
    assert unreadable["file"] == str(locked) and "Permission denied" in unreadable["error"]
    assert done["file"] == str(FIXTURES / "leak_report.wav") and done["text"]
