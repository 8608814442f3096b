"""Recordings on disk: the blobs of offline sync's store (`sync/blobs`), addressed by sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from api.settings import Settings
from sync.blobs.storage import LocalBlobStore


def _store(settings: Settings) -> LocalBlobStore:
    # The same root as sync's `make_blobs`: a recording uploaded by a handheld is found here.
    return LocalBlobStore(settings.blob_dir or settings.data_dir / "blobs")


def audio_path(settings: Settings, sha256: str) -> Path:
    """The file of the blob with this sha256 (it may not exist yet)."""
    return _store(settings).path(sha256)


def store_audio(settings: Settings, data: bytes) -> str:
    """Store `data` as a blob (idempotent, atomic); its sha256."""
    digest = hashlib.sha256(data).hexdigest()
    store = _store(settings)
    if store.exists(digest) is not None:
        return digest
    staging = store.root / "tmp"
    staging.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=staging, prefix="call-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        store.store(digest, Path(tmp))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest


def probe_duration(path: Path) -> float:
    """The container's duration in seconds, or 0 when it cannot tell (the job will say why)."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return max(0.0, float(container.duration or 0) / 1_000_000)
    except (av.error.FFmpegError, OSError, ValueError):
        return 0.0
