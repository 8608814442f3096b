"""The S3 blob store: what reaches the bucket, and when (moto's in-process S3; `blob_store` is `s3` here)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.settings import Settings
from sync.blobs.service import make_blobs
from sync.blobs.storage import S3BlobStore
from tests.sync.conftest import District
from tests.utils.s3 import BUCKET, PREFIX, REGION, S3_SETTINGS, bucket_keys

URL = "/api/v1/blobs/{}"


@pytest.fixture(params=["s3"])
def blob_store(request: pytest.FixtureRequest) -> Any:
    """Only the S3 store (overrides the conftest's pair); the bucket lives while the test runs."""
    from tests.utils.s3 import mock_bucket

    with mock_bucket():
        yield request.param


@pytest.fixture
def s3() -> Any:
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def headers(district: District) -> dict[str, str]:
    return district.headers(district.steward1)


def _staged(settings: Settings) -> list[Path]:
    return [p for p in (settings.data_dir / "blobs").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_the_app_uses_the_bucket(client: TestClient, headers: dict[str, str], settings: Settings, s3: Any) -> None:
    data = os.urandom(5000)
    sha = hashlib.sha256(data).hexdigest()
    assert isinstance(make_blobs(settings).store, S3BlobStore)
    assert client.put(URL.format(sha), content=data, headers=headers).status_code == 201
    assert bucket_keys(s3) == [PREFIX + sha]
    assert s3.get_object(Bucket=BUCKET, Key=PREFIX + sha)["Body"].read() == data
    assert _staged(settings) == []  # nothing left behind locally


def test_a_resumed_upload_reaches_the_bucket_only_once_complete(client: TestClient, headers: dict[str, str],
                                                                settings: Settings, s3: Any) -> None:
    data = os.urandom(200_000)
    sha = hashlib.sha256(data).hexdigest()
    first = client.patch(URL.format(sha), content=data[:50_000],
                         headers=headers | {"Upload-Offset": "0", "Upload-Length": str(len(data))})
    assert first.status_code == 204
    # the link drops: the partial upload is staged on local disk, the bucket holds nothing yet
    assert bucket_keys(s3) == []
    assert [p.name for p in _staged(settings)] and all("partial" in p.parts for p in _staged(settings))
    assert client.head(URL.format(sha), headers=headers).headers["upload-offset"] == "50000"
    for start in range(50_000, len(data), 50_000):
        last = client.patch(URL.format(sha), content=data[start:start + 50_000],
                            headers=headers | {"Upload-Offset": str(start)})
    assert last.status_code == 201
    assert bucket_keys(s3) == [PREFIX + sha]
    assert s3.get_object(Bucket=BUCKET, Key=PREFIX + sha)["Body"].read() == data
    assert _staged(settings) == []
    assert client.get(URL.format(sha), headers=headers).content == data


def test_failed_verification_leaves_nothing_under_the_hash(client: TestClient, headers: dict[str, str],
                                                           settings: Settings, s3: Any) -> None:
    data = os.urandom(100_000)
    sha = hashlib.sha256(data).hexdigest()
    wrong = data[:-1] + bytes([data[-1] ^ 1])
    assert client.put(URL.format(sha), content=wrong, headers=headers).json()["detail"]["code"] == "hash_mismatch"
    client.patch(URL.format(sha), content=wrong[:60_000],
                 headers=headers | {"Upload-Offset": "0", "Upload-Length": str(len(wrong))})
    last = client.patch(URL.format(sha), content=wrong[60_000:], headers=headers | {"Upload-Offset": "60000"})
    assert last.status_code == 400 and last.json()["detail"]["code"] == "hash_mismatch"
    assert bucket_keys(s3) == [] and _staged(settings) == []
    assert client.head(URL.format(sha), headers=headers).status_code == 404


def test_a_large_blob_goes_up_in_parts_and_ranges_come_back_from_the_bucket(
        client: TestClient, headers: dict[str, str], s3: Any) -> None:
    data = os.urandom(9 * 1024 * 1024)  # above boto3's 8 MiB multipart threshold
    sha = hashlib.sha256(data).hexdigest()
    assert client.put(URL.format(sha), content=data, headers=headers).status_code == 201
    assert "-" in s3.head_object(Bucket=BUCKET, Key=PREFIX + sha)["ETag"]  # a multipart object
    for header, (start, end) in {"bytes=0-0": (0, 0), "bytes=4000000-4999999": (4_000_000, 4_999_999),
                                 "bytes=-300": (len(data) - 300, len(data) - 1)}.items():
        got = client.get(URL.format(sha), headers=headers | {"Range": header})
        assert got.status_code == 206 and got.content == data[start:end + 1], header
        assert got.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"
    assert client.get(URL.format(sha), headers=headers).content == data
    stale = client.get(URL.format(sha), headers=headers | {"Range": "bytes=0-0", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == data  # If-Range of other bytes: all of them


def test_an_object_deleted_behind_the_service_is_a_404(client: TestClient, headers: dict[str, str], s3: Any) -> None:
    data = b"photo"
    sha = hashlib.sha256(data).hexdigest()
    client.put(URL.format(sha), content=data, headers=headers)
    s3.delete_object(Bucket=BUCKET, Key=PREFIX + sha)  # e.g. a bucket lifecycle rule
    missing = client.get(URL.format(sha), headers=headers)
    assert missing.status_code == 404 and missing.json()["detail"]["code"] == "not_found"
    assert client.put(URL.format(sha), content=data, headers=headers).status_code == 201


def test_an_empty_blob_round_trips(client: TestClient, headers: dict[str, str]) -> None:
    sha = hashlib.sha256(b"").hexdigest()
    assert client.put(URL.format(sha), content=b"", headers=headers).status_code == 201
    got = client.get(URL.format(sha), headers=headers)
    assert got.status_code == 200 and got.content == b""


def test_s3_without_a_bucket_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="STEWARD_BLOB_STORE=s3 needs STEWARD_S3_BUCKET"):
        Settings(data_dir=tmp_path, blob_store="s3")
    settings = Settings(data_dir=tmp_path, **S3_SETTINGS)
    assert (settings.s3_bucket, settings.s3_prefix) == (BUCKET, PREFIX)
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, blob_store="gcs")  # type: ignore[arg-type]
