"""Recordings: the blobs of offline sync's store (`sync/blobs`, a directory or an S3 bucket), by sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from api.settings import Settings
from sync.blobs.service import make_blobs


def audio_stored(settings: Settings, sha256s: Iterable[str]) -> set[str]:
    """Which of these blobs are complete in the store (one store, and one S3 client, for all)."""
    wanted = set(sha256s)
    if not wanted:  # the worker asks on every poll; usually nothing waits for audio
        return set()
    store = make_blobs(settings).store
    return {sha256 for sha256 in wanted if store.exists(sha256) is not None}


@contextmanager
def audio_file(settings: Settings, sha256: str) -> Iterator[Path | None]:
    """A file holding the recording while the block runs (a temporary download with the S3 store); None when
    it has not been uploaded."""
    blobs = make_blobs(settings)
    with blobs.store.local_file(sha256, blobs.staging / "tmp") as path:
        yield path


def store_audio(settings: Settings, data: bytes) -> str:
    """Store `data` as a blob (idempotent, atomic); its sha256."""
    return add_audio(settings, data)[0]


def add_audio(settings: Settings, data: bytes) -> tuple[str, bool]:
    """Store `data` as a blob (idempotent, atomic); its sha256, and whether this call added it (False when
    the store already held those bytes), so that a caller whose record is then refused can take it back."""
    digest = hashlib.sha256(data).hexdigest()
    blobs = make_blobs(settings)
    store = blobs.store
    if store.exists(digest) is not None:
        return digest, False
    fd, tmp = tempfile.mkstemp(dir=blobs.staging / "tmp", prefix="call-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        store.store(digest, Path(tmp))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest, True


def remove_audio(settings: Settings, sha256: str) -> None:
    """Delete a blob (missing is fine): one that `add_audio` added for a record that was not kept."""
    make_blobs(settings).store.delete(sha256)


def probe_duration(source: Path | BinaryIO) -> float:
    """The container's duration in seconds, or 0 when it cannot tell (the job will say why)."""
    import av

    try:
        with av.open(str(source) if isinstance(source, Path) else source, "r",
                     metadata_errors="ignore") as container:
            return max(0.0, float(container.duration or 0) / 1_000_000)
    except (av.error.FFmpegError, OSError, ValueError):
        return 0.0
