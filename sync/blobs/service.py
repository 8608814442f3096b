"""Blob uploads: hash while writing, enforce the size limit, resume partial uploads at an offset.

A request's bytes go to a temporary file first, with no lock held while the network delivers them; the
upload's lock is taken only to append that file at its offset. So a chunk stalled on a dead link blocks
nobody (the device's retry at the same offset goes ahead, and the stalled one is dropped when it ends, its
offset gone; a stalled first chunk too, the upload having moved on), a chunk refused for overrunning the
declared length leaves the upload as it was, and the bytes of a chunk whose sender vanished mid-way are
kept (HEAD shows them; the device resumes after them).

Partial uploads stay on local disk (`<blob root>/partial/`) whatever the store: chunks from a weak link
are small and uneven, and a blob reaches the store only once complete and verified. With the S3 store this
is not just tidiness: S3 multipart parts must be at least 5 MiB (all but the last), so a handheld's 64 KB
chunks cannot map onto parts, and an object under a hash key must never hold unverified bytes. The
verified file is uploaded once (`upload_file`, multipart when large).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import anyio
from starlette.requests import ClientDisconnect

from api.errors import BadRequest, Conflict, DomainError, NotFound, PayloadTooLarge
from api.settings import Settings
from sync.blobs.storage import BlobStore, LocalBlobStore, S3BlobStore

SHA256 = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger(__name__)


class HashMismatch(BadRequest):
    code = "hash_mismatch"


class OffsetMismatch(Conflict):
    code = "offset_mismatch"


class RangeNotSatisfiable(DomainError):
    status_code, code = 416, "range_not_satisfiable"


class ClientGone(DomainError):
    """The sender vanished mid-body (a weak link): nobody reads the answer; 499 keeps it out of the 5xx."""

    status_code, code = 499, "client_disconnected"

    def __init__(self) -> None:
        super().__init__("The connection closed before the whole body arrived.")


@dataclass
class Blobs:
    """The blob store plus the staging area for uploads in progress."""

    store: BlobStore
    staging: Path
    max_bytes: int
    partial_ttl_s: float = 7 * 24 * 3600
    # Called with the hash, in a worker thread, each time an upload completes a blob (speech queues the voice
    # notes that waited for it). A failing listener is logged; the upload has succeeded anyway.
    listeners: list[Callable[[str], object]] = field(default_factory=list)
    _expired_at: float = field(default=0.0, init=False, repr=False)  # monotonic time of the last sweep

    def __post_init__(self) -> None:
        (self.staging / "partial").mkdir(parents=True, exist_ok=True)
        (self.staging / "tmp").mkdir(parents=True, exist_ok=True)

    async def completed(self, sha256: str) -> None:
        """Tell the listeners that this upload completed the blob."""
        for listener in self.listeners:
            try:
                await anyio.to_thread.run_sync(listener, sha256)
            except Exception:
                log.exception("a listener of blob %s failed", sha256)

    def expire_partials(self, now: float | None = None) -> int:
        """Delete uploads untouched for `partial_ttl_s` (a device that gave up, a phone that was replaced),
        and temporary files as old (a process killed mid-request); the number of uploads deleted. An
        upload being appended to right now is skipped."""
        cutoff = (time.time() if now is None else now) - self.partial_ttl_s
        removed = 0
        for path in (self.staging / "tmp").iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
        # By upload, not by data file: a process killed between storing the blob and removing the upload
        # left its .length and .lock without data, and nothing ever deleted them.
        for data in {path.with_suffix("") for path in (self.staging / "partial").iterdir()}:
            try:
                files = [p for p in (data, data.with_suffix(".length")) if p.exists()] or [data.with_suffix(".lock")]
                if max(p.stat().st_mtime for p in files) >= cutoff:
                    continue
                with _locked(data):
                    _remove_partial(data)
                removed += 1
            except (FileNotFoundError, ValueError, Conflict):
                continue
        return removed

    def _maybe_expire(self) -> None:
        """A sweep at most once an hour per process, when an upload starts (no timer thread needed)."""
        if time.monotonic() - self._expired_at < 3600 and self._expired_at:
            return
        self._expired_at = time.monotonic()
        try:
            removed = self.expire_partials()
        except OSError:
            log.exception("expiring abandoned uploads failed")
            return
        if removed:
            log.info("deleted %d abandoned uploads", removed)

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
        if await anyio.to_thread.run_sync(self.store.claim, sha256) is not None:
            self._discard_partial(sha256)  # one a chunk being appended kept when the blob was stored
            return False
        if declared is not None and declared > self.max_bytes:
            raise self._too_large()
        tmp = self._tmp()
        digest = hashlib.sha256()
        try:
            _, gone = await _receive(body, tmp, self.max_bytes, self._too_large, digest)
            if gone:
                raise ClientGone()
            if digest.hexdigest() != sha256:
                raise HashMismatch(f"The body hashes to {digest.hexdigest()}, not {sha256}; nothing was stored.")
            await anyio.to_thread.run_sync(self.store.store, sha256, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        self._discard_partial(sha256)  # a resumable upload of the same bytes is moot now
        return True

    def _tmp(self) -> Path:
        return self.staging / "tmp" / uuid.uuid4().hex

    def _discard_partial(self, sha256: str) -> None:
        data, length_file = self._partial(sha256)
        if not data.exists() and not length_file.exists():
            return
        try:
            with _locked(data):
                _remove_partial(data)
        except Conflict:  # a chunk is being appended right now: the next PUT or PATCH of this hash removes it
            pass

    async def append(self, sha256: str, offset: int, length: int | None, body: AsyncIterator[bytes]
                     ) -> tuple[int, str]:
        """Append a chunk at `offset`; returns the new offset and `partial`, `completed` (by this chunk)
        or `stored` (the blob was already complete)."""
        complete = await anyio.to_thread.run_sync(self.store.claim, sha256)
        if complete is not None:
            self._discard_partial(sha256)  # a PUT stored the blob while a chunk of this upload was appended
            return complete, "stored"
        data, length_file = self._partial(sha256)
        if offset == 0:
            await anyio.to_thread.run_sync(self._maybe_expire)  # a directory walk: not on the event loop
            if length is None:
                raise BadRequest("Start a resumable upload with an Upload-Length header (total bytes).",
                                 code="length_required")
            if length > self.max_bytes:
                raise self._too_large()
            total = length
        else:
            total = _at(self.partial(sha256), offset)[1]  # refused before the body is read
            if length is not None and length != total:
                raise Conflict(f"This upload was started with Upload-Length {total}, not {length}.",
                               code="length_mismatch", headers={"Upload-Offset": str(offset)})

        def exceeded() -> DomainError:
            return BadRequest(f"More bytes than the declared Upload-Length {total}; this chunk was not kept.",
                              code="length_exceeded")

        before = self.partial(sha256)
        tmp = self._tmp()
        try:
            received, gone = await _receive(body, tmp, total - offset, exceeded)
            with _locked(data):
                stored = await anyio.to_thread.run_sync(self.store.exists, sha256)
                if stored is not None:  # completed by another request meanwhile: the upload is moot
                    _remove_partial(data)
                    if gone:
                        raise ClientGone()
                    return stored, "stored"
                state = self.partial(sha256)
                # A sender that vanished while other requests moved the upload on: its bytes are dropped.
                if gone and state != (before if offset == 0 else (offset, total)):
                    raise ClientGone()
                if offset == 0:  # (re)start: whatever was there before is replaced, unless it moved on since
                    if state != before:  # a late first chunk (its retry went ahead): it would rewind the upload
                        current = _resume_at(state, total)
                        raise OffsetMismatch(f"The upload moved on to byte {current} while this first chunk "
                                             "arrived; continue from there.", headers={"Upload-Offset": str(current)})
                    os.replace(tmp, data)
                    length_file.write_text(str(total))
                else:
                    _at(state, offset, total)
                    await anyio.to_thread.run_sync(_append_file, data, tmp)
                received += offset
                if gone:
                    raise ClientGone()
                if received < total:
                    return received, "partial"
                actual = await anyio.to_thread.run_sync(_sha256_of, data)
                if actual != sha256:
                    _remove_partial(data)
                    raise HashMismatch(f"The uploaded bytes hash to {actual}, not {sha256}; the upload was "
                                       "discarded, start again at offset 0.")
                await anyio.to_thread.run_sync(self.store.store, sha256, data)
                _remove_partial(data)
                return received, "completed"
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, sha256: str, range_header: str | None, *, if_range: str | None = None,
             body: bool = True) -> BlobRead:
        """A complete blob, honouring a single byte range unless an `If-Range` validator does not match the
        blob's entity tag (`etag`); `body=False` (a HEAD) opens nothing and its chunks are empty."""
        size = self.store.exists(sha256)
        if size is None:
            raise NotFound(f"No blob {sha256} (or its upload is not complete).")
        if if_range is not None and if_range.strip() != etag(sha256):
            # RFC 9110 13.1.5: another tag, a weak one (If-Range compares strongly) or a date (blobs have no
            # Last-Modified) means the client's partial copy is not of these bytes: the whole blob, 200.
            range_header = None
        parsed = parse_range(range_header, size)
        start, end = parsed if parsed is not None else (0, size - 1)
        chunks = self.store.open_range(sha256, start, end) if body else iter(())
        return BlobRead(sha256, size, start, end, parsed is not None, chunks)


def etag(sha256: str) -> str:
    """A blob's entity tag: its hash, quoted (strong: the bytes of a hash never change)."""
    return f'"{sha256}"'


class BlobRead(NamedTuple):
    sha256: str
    size: int
    start: int
    end: int
    ranged: bool  # a satisfiable byte range was asked for: the answer is 206
    chunks: Iterator[bytes]

    @property
    def status_code(self) -> int:
        """206 for any range, even one covering the whole blob (players' `bytes=0-` expects it), else 200."""
        return 206 if self.ranged else 200

    def headers(self) -> dict[str, str]:
        headers = {"Content-Length": str(self.end - self.start + 1), "Accept-Ranges": "bytes",
                   "ETag": etag(self.sha256)}
        if self.ranged:
            headers["Content-Range"] = f"bytes {self.start}-{self.end}/{self.size}"
        return headers


_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)  # range units are case-insensitive (RFC 9110 14.1)


def _position(digits: str) -> int | None:
    """A byte position of a Range header; one of more than 18 digits is past any blob (Python refuses to
    parse numbers of over 4,300 digits, and there is no need to)."""
    if not digits:
        return None
    digits = digits.lstrip("0") or "0"  # `1*DIGIT` (RFC 9110 14.1.1): zeros in front are still the number
    return int(digits) if len(digits) <= 18 else 10 ** 18


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range as (start, end); None to send everything (no header, several ranges, or a
    header that is not a byte range, which RFC 9110 says to ignore); 416 when unsatisfiable."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.groups() == ("", ""):
        return None
    first, last = (_position(g) for g in match.groups())
    if first is None:  # the last N bytes; N = 0 selects nothing
        assert last is not None
        suffix = last
        start, end = (max(size - suffix, 0), size - 1) if suffix > 0 else (size, size - 1)
    else:
        start = first
        end = last if last is not None else size - 1
    if start >= size or start > end or size == 0:
        raise RangeNotSatisfiable(f"The blob has {size} bytes.", headers={"Content-Range": f"bytes */{size}"})
    return start, min(end, size - 1)


def _at(state: tuple[int, int] | None, offset: int, total: int | None = None) -> tuple[int, int]:
    """The upload's (received, total) if it stands at `offset` (and was declared `total` long); 409 with
    where it stands otherwise."""
    if state is None or state[0] != offset or (total is not None and state[1] != total):
        current = _resume_at(state, total)
        raise OffsetMismatch(f"The upload is at byte {current}, not {offset}; continue from there.",
                             headers={"Upload-Offset": str(current)})
    return state


def _resume_at(state: tuple[int, int] | None, total: int | None) -> int:
    """Where a device continues: the upload's offset, or 0 when there is none (or it has another length)."""
    return state[0] if state and (total is None or state[1] == total) else 0


async def _receive(body: AsyncIterator[bytes], path: Path, limit: int, too_much: Callable[[], DomainError],
                   digest: hashlib._Hash | None = None) -> tuple[int, bool]:
    """Write the body to `path` (flushed to disk); (bytes, whether the sender vanished before the end).
    More than `limit` bytes: `too_much()` is raised."""
    size, gone = 0, False
    with path.open("wb") as f:
        try:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise too_much()
                if digest is not None:
                    digest.update(chunk)
                f.write(chunk)
        except ClientDisconnect:
            gone = True
        await anyio.to_thread.run_sync(_flush, f)
    return size, gone


def _remove_partial(data: Path) -> None:
    """An upload's files, its lock file too (called holding the lock: a request that opens the lock file
    after this makes a new one, takes it, and finds the blob stored or the upload gone)."""
    for suffix in ("", ".length", ".lock"):
        data.with_suffix(suffix).unlink(missing_ok=True)


def _append_file(data: Path, chunk: Path) -> None:
    with data.open("ab") as out, chunk.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            out.write(block)
        _flush(out)


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
    return Blobs(store=make_store(settings), staging=blob_root(settings), max_bytes=settings.blob_max_bytes,
                 partial_ttl_s=settings.blob_partial_ttl_hours * 3600)
