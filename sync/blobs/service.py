"""Blob uploads: hash while writing, enforce the size limit, resume partial uploads at an offset.

Partial uploads stay on local disk (`<blob root>/partial/`) whatever the store: chunks from a weak link
are small and uneven, and a blob reaches the store only once complete and verified. With the S3 store this
is not just tidiness: S3 multipart parts must be at least 5 MiB (all but the last), so a handheld's 64 KB
chunks cannot map onto parts, and an object under a hash key must never hold unverified bytes. The
verified file is uploaded once (`upload_file`, multipart when large).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from api.errors import BadRequest, Conflict, DomainError, NotFound, PayloadTooLarge
from api.settings import Settings
from sync.blobs.storage import BlobStore, LocalBlobStore, S3BlobStore

SHA256 = re.compile(r"^[0-9a-f]{64}$")


class HashMismatch(BadRequest):
    code = "hash_mismatch"


class OffsetMismatch(Conflict):
    code = "offset_mismatch"


class RangeNotSatisfiable(DomainError):
    status_code, code = 416, "range_not_satisfiable"


@dataclass
class Blobs:
    """The blob store plus the staging area for uploads in progress."""

    store: BlobStore
    staging: Path
    max_bytes: int

    def __post_init__(self) -> None:
        (self.staging / "partial").mkdir(parents=True, exist_ok=True)
        (self.staging / "tmp").mkdir(parents=True, exist_ok=True)

    def _partial(self, sha256: str) -> tuple[Path, Path]:
        base = self.staging / "partial" / sha256
        return base, base.with_suffix(".length")

    def partial(self, sha256: str) -> tuple[int, int] | None:
        """(bytes received, declared length) of an upload in progress."""
        data, length = self._partial(sha256)
        try:
            return data.stat().st_size, int(length.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"A blob may hold at most {self.max_bytes} bytes.")

    async def put(self, sha256: str, body: AsyncIterator[bytes], declared: int | None) -> bool:
        """Store a whole blob; True if it is new. Verifies the hash before keeping anything."""
        if await anyio.to_thread.run_sync(self.store.exists, sha256) is not None:
            return False
        if declared is not None and declared > self.max_bytes:
            raise self._too_large()
        tmp = self.staging / "tmp" / uuid.uuid4().hex
        digest = hashlib.sha256()
        size = 0
        try:
            with tmp.open("wb") as f:
                async for chunk in body:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise self._too_large()
                    digest.update(chunk)
                    f.write(chunk)
                await anyio.to_thread.run_sync(_flush, f)
            if digest.hexdigest() != sha256:
                raise HashMismatch(f"The body hashes to {digest.hexdigest()}, not {sha256}; nothing was stored.")
            await anyio.to_thread.run_sync(self.store.store, sha256, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    async def append(self, sha256: str, offset: int, length: int | None, body: AsyncIterator[bytes]
                     ) -> tuple[int, str]:
        """Append a chunk at `offset`; returns the new offset and `partial`, `completed` (by this chunk)
        or `stored` (the blob was already complete)."""
        complete = await anyio.to_thread.run_sync(self.store.exists, sha256)
        if complete is not None:
            return complete, "stored"
        data, length_file = self._partial(sha256)
        with _locked(data):
            state = self.partial(sha256)
            if offset == 0:
                if length is None:
                    raise BadRequest("Start a resumable upload with an Upload-Length header (total bytes).",
                                     code="length_required")
                if length > self.max_bytes:
                    raise self._too_large()
                data.write_bytes(b"")
                length_file.write_text(str(length))
                state = (0, length)
            elif state is None or state[0] != offset:
                current = state[0] if state else 0
                raise OffsetMismatch(f"The upload is at byte {current}, not {offset}; continue from there.",
                                     headers={"Upload-Offset": str(current)})
            received, total = state
            with data.open("ab") as f:
                async for chunk in body:
                    received += len(chunk)
                    if received > total:
                        raise BadRequest(f"More bytes than the declared Upload-Length {total}.",
                                         code="length_exceeded")
                    f.write(chunk)
                await anyio.to_thread.run_sync(_flush, f)
            if received < total:
                return received, "partial"
            actual = await anyio.to_thread.run_sync(_sha256_of, data)
            if actual != sha256:
                data.unlink(missing_ok=True)
                length_file.unlink(missing_ok=True)
                raise HashMismatch(f"The uploaded bytes hash to {actual}, not {sha256}; the upload was "
                                   "discarded, start again at offset 0.")
            await anyio.to_thread.run_sync(self.store.store, sha256, data)
            data.unlink(missing_ok=True)
            length_file.unlink(missing_ok=True)
            return received, "completed"

    def read(self, sha256: str, range_header: str | None) -> tuple[int, int, int, Iterator[bytes]]:
        """(size, start, end, chunks) of a complete blob, honouring a single byte range."""
        size = self.store.exists(sha256)
        if size is None:
            raise NotFound(f"No blob {sha256} (or its upload is not complete).")
        start, end = 0, size - 1
        parsed = parse_range(range_header, size)
        if parsed is not None:
            start, end = parsed
        return size, start, end, self.store.open_range(sha256, start, end)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range as (start, end); None to send everything; 416 when unsatisfiable."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                raise ValueError(last)
            start, end = max(size - suffix, 0), size - 1
        else:
            start = int(first)
            end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or start > end or size == 0:
        raise RangeNotSatisfiable(f"The blob has {size} bytes.", headers={"Content-Range": f"bytes */{size}"})
    return start, min(end, size - 1)


def _flush(f: object) -> None:
    f.flush()  # type: ignore[attr-defined]
    os.fsync(f.fileno())  # type: ignore[attr-defined]


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer per upload at a time, across processes; a second one is told to retry."""
    lock = path.with_suffix(".lock")
    with lock.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Conflict("Another request is uploading this blob; retry in a moment.",
                           code="upload_in_progress") from exc
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_store(settings: Settings) -> BlobStore:
    """The store STEWARD_BLOB_STORE names: a local directory (default) or an S3-compatible bucket."""
    if settings.blob_store == "s3":
        return S3BlobStore(bucket=settings.s3_bucket, prefix=settings.s3_prefix,
                           endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
    return LocalBlobStore(blob_root(settings))


def blob_root(settings: Settings) -> Path:
    """The local blob directory: the store itself by default, staging for partial uploads with S3."""
    return settings.blob_dir or settings.data_dir / "blobs"


def make_blobs(settings: Settings) -> Blobs:
    """The blob service for these settings (local directory by default)."""
    return Blobs(store=make_store(settings), staging=blob_root(settings), max_bytes=settings.blob_max_bytes)
