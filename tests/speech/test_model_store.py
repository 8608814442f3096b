"""The bundled model: assembled once from the two data packages, verified by sha256, or replaced by a path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from speech import model_store
from speech.model_store import (
    BUNDLED_DIR,
    BUNDLED_SHA256,
    ModelError,
    check_model,
    ensure_bundled_model,
    resolve_model,
    sha256_file,
)


@pytest.fixture(scope="module")
def bundled(speech_data_dir: Path) -> Path:
    return ensure_bundled_model(speech_data_dir)


def test_the_bundled_model_is_assembled_with_the_pinned_hashes(bundled: Path, speech_data_dir: Path) -> None:
    assert bundled == speech_data_dir / "models" / BUNDLED_DIR
    for name, digest in BUNDLED_SHA256.items():
        assert sha256_file(bundled / name) == digest
    assert oct(bundled.stat().st_mode & 0o777) == "0o755"
    # Second call: nothing is rewritten.
    mtime = (bundled / "model.bin").stat().st_mtime_ns
    assert ensure_bundled_model(speech_data_dir) == bundled
    assert (bundled / "model.bin").stat().st_mtime_ns == mtime


def _linked_copy(bundled: Path, data_dir: Path) -> Path:
    """The bundled model under another data dir: the big file linked, the small ones copied."""
    target = data_dir / "models" / BUNDLED_DIR
    target.mkdir(parents=True)
    os.symlink(bundled / "model.bin", target / "model.bin")
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        (target / name).write_bytes((bundled / name).read_bytes())
    return target


def test_a_damaged_model_file_is_refused(bundled: Path, tmp_path: Path) -> None:
    target = _linked_copy(bundled, tmp_path)
    config = target / "config.json"
    config.write_bytes(config.read_bytes().replace(b"alignment_heads", b"alignment_HEADS"))
    with pytest.raises(ModelError, match=r"config\.json has sha256 \w+, expected \w+: the file is damaged"):
        ensure_bundled_model(tmp_path)


def test_a_missing_file_is_assembled_again(bundled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _linked_copy(bundled, tmp_path)
    (target / "tokenizer.json").unlink()
    joined: list[Path] = []
    real = model_store._assemble
    monkeypatch.setattr(model_store, "_assemble", lambda models, t: joined.append(t) or real(models, t))
    assert ensure_bundled_model(tmp_path) == target
    assert joined == [target]
    assert sha256_file(target / "tokenizer.json") == BUNDLED_SHA256["tokenizer.json"]
    assert not (target / "model.bin").is_symlink()


def test_a_model_path_replaces_the_bundled_model(bundled: Path, tmp_path: Path) -> None:
    ref = resolve_model(engine="faster-whisper", model=str(bundled), data_dir=tmp_path)
    assert (ref.path, ref.name) == (bundled, str(bundled))
    with pytest.raises(ModelError, match="not a faster-whisper model directory"):
        resolve_model(engine="faster-whisper", model=str(tmp_path), data_dir=tmp_path)
    with pytest.raises(ModelError, match=r"neither an openai-whisper \.pt checkpoint nor"):
        resolve_model(engine="openai-whisper", model=str(tmp_path / "missing.pt"), data_dir=tmp_path)
    with pytest.raises(ModelError, match="unknown engine"):
        resolve_model(engine="whisper.cpp", model="", data_dir=tmp_path)
    assert not (tmp_path / "models").exists()  # nothing assembled when a path is given


def test_a_model_path_is_checked_without_loading_it(bundled: Path, tmp_path: Path) -> None:
    """What `steward serve` checks before the first job (a folder without model.bin used to pass)."""
    check_model(engine="faster-whisper", model=str(bundled))
    check_model(engine="openai-whisper", model=str(bundled))  # a CTranslate2 folder, converted when loaded
    check_model(engine="faster-whisper", model="")  # the bundled model
    empty_dir, empty_pt = tmp_path / "empty", tmp_path / "empty.pt"
    empty_dir.mkdir()
    empty_pt.write_bytes(b"")
    with pytest.raises(ModelError, match="not a faster-whisper model directory"):
        check_model(engine="faster-whisper", model=str(empty_dir))
    with pytest.raises(ModelError, match="neither an openai-whisper"):
        check_model(engine="openai-whisper", model=str(empty_dir))
    with pytest.raises(ModelError, match=r"empty\.pt is not an openai-whisper checkpoint \(the file is empty\)"):
        check_model(engine="openai-whisper", model=str(empty_pt))
    assert not (tmp_path / "models").exists()


def test_a_data_directory_that_cannot_hold_the_model_is_one_line(tmp_path: Path) -> None:
    """Regression: `steward transcribe` with STEWARD_DATA_DIR naming a file was a NotADirectoryError
    traceback (exit 1); the model store turns it into a ModelError, which the CLI prints as one line."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(ModelError, match="cannot assemble the bundled model"):
        ensure_bundled_model(tmp_path / "afile")
