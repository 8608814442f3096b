"""Where verified blobs live. The service verifies hashes and sizes; a store only keeps bytes by hash.

`LocalBlobStore` is the default (a directory under STEWARD_DATA_DIR). An S3-compatible store fits the
same four methods (docs/sync-protocol.md, "Blobs").
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

CHUNK = 256 * 1024


class BlobStore(ABC):
    """Complete, verified blobs by SHA-256."""

    @abstractmethod
    def exists(self, sha256: str) -> int | None:
        """The blob's size in bytes, or None if it is not stored."""

    @abstractmethod
    def store(self, sha256: str, path: Path) -> None:
        """Take a verified file (the store may move it away)."""

    @abstractmethod
    def open_range(self, sha256: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes start..end (inclusive), in chunks."""

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Forget a blob (missing is fine)."""


class LocalBlobStore(BlobStore):
    """Files at <root>/<ab>/<cd>/<sha256>, written by atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> int | None:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def store(self, sha256: str, path: Path) -> None:
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)

    def open_range(self, sha256: str, start: int, end: int) -> Iterator[bytes]:
        with self.path(sha256).open("rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)
