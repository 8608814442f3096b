"""An in-process S3 bucket for the S3 blob store's tests: moto's `mock_aws` patches botocore, no network."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto import mock_aws

BUCKET, PREFIX, REGION = "steward-test-blobs", "blobs/", "us-east-1"
# What STEWARD_BLOB_STORE=s3 needs; credentials come from boto3's chain (moto sets fake ones).
S3_SETTINGS: dict[str, Any] = {"blob_store": "s3", "s3_bucket": BUCKET, "s3_prefix": PREFIX, "s3_region": REGION}


@contextmanager
def mock_bucket() -> Iterator[Any]:
    """A fresh, empty bucket for the duration of the block; yields a client on it."""
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client


def bucket_keys(client: Any) -> list[str]:
    """Every key in the test bucket."""
    return [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
