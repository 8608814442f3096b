"""Snapshots and call recordings in offline sync's content-addressed blob store (`sync.blobs`), so that
handhelds download them like any other blob and transcription finds the recordings."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from api.settings import Settings
from sync.blobs.service import make_blobs


def put_blob(settings: Settings, data: bytes) -> str:
    """Store `data` (idempotent; the store takes a complete, verified file); its sha256."""
    digest = hashlib.sha256(data).hexdigest()
    blobs = make_blobs(settings)
    if blobs.store.exists(digest) is not None:
        return digest
    fd, tmp = tempfile.mkstemp(dir=blobs.staging / "tmp", prefix="video-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        blobs.store.store(digest, Path(tmp))
    finally:
        Path(tmp).unlink(missing_ok=True)
    return digest


def read_blob(settings: Settings, sha256: str) -> bytes | None:
    """A stored blob's bytes (snapshots are small), or None if it is not stored."""
    store = make_blobs(settings).store
    size = store.exists(sha256)
    if size is None:
        return None
    return b"".join(store.open_range(sha256, 0, size - 1)) if size else b""
