"""The bundled model: assembled once from the two data packages, verified by sha256, or replaced by a path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from speech import model_store
from speech.model_store import (
    BUNDLED_DIR,
    BUNDLED_SHA256,
    OPENAI_CHECKPOINT,
    ModelError,
    check_model,
    ensure_bundled_model,
    ensure_openai_checkpoint,
    resolve_model,
    sha256_file,
)
from tests.speech.ct2_writer import tiny_whisper, write_model_bin


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


def _ct2_dir(path: Path, *, seed: int, files: tuple[str, ...] = ()) -> Path:
    """A tiny CTranslate2 Whisper folder (random weights `seed`), with empty `files` beside model.bin."""
    path.mkdir(parents=True)
    write_model_bin(path / "model.bin", tiny_whisper(seed=seed))
    for name in files:
        (path / name).write_text("{}")
    return path


@pytest.mark.parametrize("missing", ["tokenizer.json", "config.json", "vocabulary.json"])
def test_a_faster_whisper_dir_without_tokenizer_or_config_is_refused(tmp_path: Path, missing: str) -> None:
    """Regression: a folder with model.bin but no tokenizer.json passed, and faster-whisper then went to the
    Hugging Face hub for openai/whisper-tiny's tokenizer (offline: ~25 s of retries, then a traceback); one
    without its vocabulary passed, and CTranslate2 refused it at the first job."""
    present = tuple(name for name in ("config.json", "tokenizer.json", "vocabulary.json") if name != missing)
    model = _ct2_dir(tmp_path / "ct2", seed=0, files=present)
    with pytest.raises(ModelError, match=rf"not a complete faster-whisper model directory: no {missing} in it.*"
                                         r"ct2-transformers-converter .*--copy_files tokenizer\.json"):
        check_model(engine="faster-whisper", model=str(model))
    check_model(engine="openai-whisper", model=str(model))  # converted from model.bin alone: no tokenizer needed


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json", "preprocessor_config.json"])
def test_a_model_json_file_that_does_not_parse_is_refused_at_start(tmp_path: Path, name: str) -> None:
    """Regression (review): a Git LFS pointer checked out in place of tokenizer.json (a clone without `git lfs
    pull`) passed the start check; `steward serve` started and every job then failed in the worker."""
    model = _ct2_dir(tmp_path / "ct2", seed=0, files=("config.json", "tokenizer.json", "vocabulary.json"))
    (model / name).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 2203239\n")
    with pytest.raises(ModelError, match=rf"{name} is a Git LFS pointer, not the file: run `git lfs pull`"):
        check_model(engine="faster-whisper", model=str(model))
    (model / name).write_text('{"vocab_size": 51865,')  # a copy cut short
    with pytest.raises(ModelError, match=rf"{name} is not valid JSON \(.*\); copy it again"):
        check_model(engine="faster-whisper", model=str(model))


def test_an_older_conversion_with_vocabulary_txt_passes(tmp_path: Path) -> None:
    """ct2-transformers-converter before CTranslate2 3.x wrote vocabulary.txt; CTranslate2 still loads it."""
    model = _ct2_dir(tmp_path / "ct2", seed=0, files=("config.json", "tokenizer.json"))
    vocabulary = model / "vocabulary.txt"
    vocabulary.write_text("!\n\"\n<|endoftext|>\n<|startoftranscript|>\n<|zh|>\n", "utf-8")
    check_model(engine="faster-whisper", model=str(model))
    # Regression (review): an empty one (or a Git LFS pointer) passed, and every file then failed at its job.
    for content, why in ((b"", "holds no Whisper vocabulary"),
                         (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "Git LFS pointer")):
        vocabulary.write_bytes(content)
        with pytest.raises(ModelError, match=why):
            check_model(engine="faster-whisper", model=str(model))


def test_a_faster_whisper_transcriber_is_never_built_on_an_incomplete_dir(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine checks too (it may be given a folder that was never checked) and keeps the hub offline."""
    from huggingface_hub import constants

    from speech.engines.faster import FasterWhisperTranscriber

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    model = _ct2_dir(tmp_path / "ct2", seed=0, files=("config.json",))
    with pytest.raises(ModelError, match=r"no tokenizer\.json"):
        FasterWhisperTranscriber(model, model_name="incomplete")
    assert constants.is_offline_mode() and os.environ["HF_HUB_OFFLINE"] == "1"


def test_each_model_dir_gets_its_own_conversion(tmp_path: Path) -> None:
    """Regression: the conversion was cached as <data>/models/<folder name>-openai.pt and reused on the name
    alone: a second folder of the same name, one named whisper-base (the bundled model's checkpoint) or a
    model.bin replaced in place all got the first folder's weights, silently."""
    torch = pytest.importorskip("torch")
    data = tmp_path / "data"

    def converted_weights(folder: Path) -> np.ndarray:
        ref = resolve_model(engine="openai-whisper", model=str(folder), data_dir=data)
        assert ref.name == str(folder)
        state = torch.load(ref.path, weights_only=True)["model_state_dict"]
        return state["decoder.token_embedding.weight"].numpy()

    def weights(seed: int) -> np.ndarray:
        return tiny_whisper(seed=seed)["decoder/embeddings/weight"]

    first = _ct2_dir(tmp_path / "site-a" / "whisper-small", seed=1)
    second = _ct2_dir(tmp_path / "site-b" / "whisper-small", seed=2)
    like_bundled = _ct2_dir(tmp_path / "site-c" / "whisper-base", seed=3)
    np.testing.assert_array_equal(converted_weights(first), weights(1))
    np.testing.assert_array_equal(converted_weights(second), weights(2))
    np.testing.assert_array_equal(converted_weights(like_bundled), weights(3))
    assert not (data / "models" / OPENAI_CHECKPOINT).exists()
    np.testing.assert_array_equal(converted_weights(first), weights(1))  # still its own, not converted again

    write_model_bin(first / "model.bin", tiny_whisper(seed=4))  # the operator replaces the model in place
    os.utime(first / "model.bin", ns=(1, 1))  # (another mtime even on a coarse clock)
    np.testing.assert_array_equal(converted_weights(first), weights(4))
    checkpoints = sorted(p.name for p in (data / "models").glob("*-openai.pt"))
    assert len(checkpoints) == 3, checkpoints  # the first folder's earlier conversion was removed
    assert len(list((data / "models").glob("*-openai.pt.sha256"))) == 3


def test_a_data_directory_that_cannot_hold_the_conversion_is_one_line(tmp_path: Path) -> None:
    """Regression: an OSError while converting for openai-whisper (data directory a file, read-only, full)
    escaped as a traceback (`steward transcribe`: exit code 1) instead of a ModelError."""
    model = _ct2_dir(tmp_path / "ct2", seed=0)
    (tmp_path / "afile").write_text("")
    with pytest.raises(ModelError, match=r"cannot convert .*ct2 into the openai-whisper checkpoint"):
        ensure_openai_checkpoint(model, tmp_path / "afile" / "models" / "ct2-openai.pt")
    with pytest.raises(ModelError, match="cannot convert"):
        resolve_model(engine="openai-whisper", model=str(model), data_dir=tmp_path / "afile")


def test_conversion_without_torch_says_to_install_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: without the `openai` extra the conversion ended in a bare ModuleNotFoundError."""
    model = _ct2_dir(tmp_path / "ct2", seed=0)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ModelError, match=r"needs the `openai` extra: pip install 'heat-steward\[openai\]'"):
        resolve_model(engine="openai-whisper", model=str(model), data_dir=tmp_path / "data")


def test_an_assembly_killed_midway_leaves_no_partial_model_behind(tmp_path: Path) -> None:
    """A process killed while it joins the model (a pod stopped during its first start) left
    models/.assemble-*/model.bin (144 MB) behind; the next start assembled again beside it, forever."""
    import subprocess

    crash = ("import os, shutil, sys; from pathlib import Path; from speech import model_store; "
             "shutil.copyfile = lambda *a, **k: os._exit(137); "  # SIGKILL right after model.bin is joined
             "model_store.ensure_bundled_model(Path(sys.argv[1]))")
    assert subprocess.run([sys.executable, "-c", crash, str(tmp_path)], cwd=Path(__file__).parents[2]).returncode == 137
    assert list((tmp_path / "models").glob(".assemble-*"))  # what the kill left
    ensure_bundled_model(tmp_path)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".lock", BUNDLED_DIR]


def test_a_conversion_killed_midway_leaves_no_partial_checkpoint_behind(tmp_path: Path) -> None:
    """The openai-whisper conversion killed after torch.save (as large as the model) left
    models/.<name>.<pid>.tmp behind for good; every interrupted start added one."""
    import subprocess

    pytest.importorskip("torch")
    model = _ct2_dir(tmp_path / "ct2", seed=0)
    target = tmp_path / "models" / "ct2-openai.pt"
    crash = ("import os, sys; from pathlib import Path; from speech import model_store; "
             "model_store.sha256_file = lambda p: os._exit(137); "  # SIGKILL right after the checkpoint is written
             "model_store.ensure_openai_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]))")
    assert subprocess.run([sys.executable, "-c", crash, str(model), str(target)],
                          cwd=Path(__file__).parents[2]).returncode == 137
    assert list(target.parent.glob(".*.tmp"))  # what the kill left
    ensure_openai_checkpoint(model, target)
    assert sorted(p.name for p in target.parent.iterdir()) == [".lock", "ct2-openai.pt", "ct2-openai.pt.sha256"]
