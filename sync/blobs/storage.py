"""Where verified blobs live. The service verifies hashes and sizes; a store only keeps bytes by hash.

`LocalBlobStore` is the default (a directory under STEWARD_DATA_DIR); `S3BlobStore` keeps them in an
S3-compatible bucket (STEWARD_BLOB_STORE=s3; docs/sync-protocol.md, "Blobs").
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.errors import NotFound

log = logging.getLogger(__name__)
CHUNK = 256 * 1024
# A blob a device asks for again (HEAD, or an upload of bytes already stored) has its stored time renewed
# when older than this: the sweep's grace period then counts from the device's new claim on it.
CLAIM_RENEW_S = 3600


class BlobStore(ABC):
    """Complete, verified blobs by SHA-256."""

    @abstractmethod
    def exists(self, sha256: str) -> int | None:
        """The blob's size in bytes, or None if it is not stored."""

    @abstractmethod
    def claim(self, sha256: str) -> int | None:
        """`exists`, for a device that is about to name the blob in a row it may push days later: renews its
        stored time (if older than `CLAIM_RENEW_S`). A blob stored a month ago whose row never came, uploaded
        again today, was swept tonight from under the row still queued on the handheld."""

    @abstractmethod
    def store(self, sha256: str, path: Path) -> None:
        """Take a verified file (the store may move it away)."""

    @abstractmethod
    def open_range(self, sha256: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes start..end (inclusive), in chunks."""

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Forget a blob (missing is fine)."""

    @abstractmethod
    def listing(self) -> Iterator[tuple[str, int, datetime]]:
        """Every stored blob: (sha256, size, when it was stored), in no particular order."""

    @contextmanager
    def local_file(self, sha256: str, scratch: Path) -> Iterator[Path | None]:
        """A file holding the blob while the block runs (a copy under `scratch`, removed afterwards, unless
        the store is a directory), for readers that need a path (PyAV); None when it is not stored."""
        size = self.exists(sha256)
        if size is None:
            yield None
            return
        scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=scratch, prefix="read-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self.open_range(sha256, 0, size - 1):
                    f.write(chunk)
            yield Path(name)
        finally:
            Path(name).unlink(missing_ok=True)


def _subfolders(folder: Path) -> list[Path]:
    """The two-character folders of the blob tree in `folder` (a PermissionError reaches the caller)."""
    try:
        return [Path(e.path) for e in os.scandir(folder) if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:  # removed meanwhile
        return []


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

    def claim(self, sha256: str) -> int | None:
        path = self.path(sha256)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        if stat.st_mtime < time.time() - CLAIM_RENEW_S:
            try:
                os.utime(path)
            except OSError as exc:  # a store mounted read-only: the blob is there all the same
                log.warning("cannot renew the stored time of blob %s: %s", sha256, exc)
        return stat.st_size

    def store(self, sha256: str, path: Path) -> None:
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)

    def open_range(self, sha256: str, start: int, end: int) -> Iterator[bytes]:
        # Opened here, not on first iteration (as the S3 store asks here): a blob deleted since its size was
        # read (the sweep, a refused call's take-back) is a 404, not an answer broken after its status line.
        # Once open, the file reads to the end even if it is unlinked meanwhile.
        try:
            f = self.path(sha256).open("rb")
        except FileNotFoundError as exc:
            raise NotFound(f"No blob {sha256}.") from exc
        return self._chunks(f, start, end)

    @staticmethod
    def _chunks(f: Any, start: int, end: int) -> Iterator[bytes]:
        with f:
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

    def listing(self) -> Iterator[tuple[str, int, datetime]]:
        """Every stored blob. A folder that cannot be read raises (`glob` skipped it: a sweep of a folder the
        user may not read reported nothing stored, and succeeded); a store never written to has none."""
        if not self.root.exists():
            return
        for first in _subfolders(self.root):
            for second in _subfolders(first):
                try:
                    entries = list(os.scandir(second))
                except FileNotFoundError:  # removed meanwhile
                    continue
                for entry in entries:
                    if len(entry.name) != 64 or entry.name[:2] != first.name:  # staging, locks, strays
                        continue
                    try:
                        stat = entry.stat()
                    except FileNotFoundError:  # deleted meanwhile
                        continue
                    yield entry.name, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC)

    @contextmanager
    def local_file(self, sha256: str, scratch: Path) -> Iterator[Path | None]:
        path = self.path(sha256)
        yield path if path.is_file() else None


class S3BlobStore(BlobStore):
    """Objects at `<prefix><sha256>` in an S3-compatible bucket; credentials from boto3's standard chain.

    The service only hands over files it has already verified, so an object under a hash key always holds
    those bytes: a PUT (single or multipart) becomes visible only once complete. `upload_file` switches to a
    multipart upload for large files; resumable uploads are staged on local disk, not as multipart parts (see
    `sync.blobs.service`).
    """

    def __init__(self, *, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, client: Any = None) -> None:
        import boto3

        self.bucket, self.prefix = bucket, prefix
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None)

    def key(self, sha256: str) -> str:
        return f"{self.prefix}{sha256}"

    def exists(self, sha256: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return int(head["ContentLength"])

    def claim(self, sha256: str) -> int | None:
        from botocore.exceptions import ClientError

        key = self.key(sha256)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        if head["LastModified"].timestamp() < time.time() - CLAIM_RENEW_S:  # a copy onto itself renews it
            try:
                self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                                        MetadataDirective="REPLACE", ContentType="application/octet-stream")
            except ClientError as exc:  # credentials that may read but not write: the blob is there all the same
                log.warning("cannot renew the stored time of blob %s: %s", sha256, exc)
        return int(head["ContentLength"])

    def store(self, sha256: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self.key(sha256),
                                ExtraArgs={"ContentType": "application/octet-stream"})

    def open_range(self, sha256: str, start: int, end: int) -> Iterator[bytes]:
        # The request is made here, not on first iteration: a missing object fails before a response starts.
        if end < start:
            return iter(())
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256),
                                          Range=f"bytes={start}-{end}")["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise NotFound(f"No blob {sha256}.") from exc
            raise
        return _stream(body)

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))

    def listing(self) -> Iterator[tuple[str, int, datetime]]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", ()):
                name = item["Key"][len(self.prefix):]
                if len(name) == 64 and "/" not in name:
                    yield name, int(item["Size"]), item["LastModified"]

    @contextmanager
    def local_file(self, sha256: str, scratch: Path) -> Iterator[Path | None]:
        if self.exists(sha256) is None:
            yield None
            return
        scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=scratch, prefix="read-")
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self.key(sha256), name)  # parallel ranged GETs when large
            yield Path(name)
        finally:
            Path(name).unlink(missing_ok=True)


def bucket_problem(settings: Any) -> str | None:
    """Why the configured bucket cannot be used now (unreachable endpoint, no credentials, no such bucket,
    access refused), checked once with short timeouts; None if it can."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None,
                              region_name=settings.s3_region or None,
                              config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}))
        client.head_bucket(Bucket=settings.s3_bucket)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        return f"cannot use bucket {settings.s3_bucket!r}: {error.get('Code')} {error.get('Message') or ''}".strip()
    except (BotoCoreError, ValueError) as exc:
        return f"cannot reach bucket {settings.s3_bucket!r}: {exc}"
    return None


def _missing(exc: Exception) -> bool:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code")) in {"404", "NoSuchKey", "NotFound"}


def _stream(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()
