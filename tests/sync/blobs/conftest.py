"""Every blob API test runs against both stores: the local directory and an S3 bucket (moto, in process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.settings import Settings
from tests.conftest import make_settings
from tests.utils.s3 import S3_SETTINGS, mock_bucket


@pytest.fixture(params=["local", "s3"])
def blob_store(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "s3":
        with mock_bucket():
            yield "s3"
    else:
        yield "local"


@pytest.fixture
def settings(database_url: str, tmp_path: Path, blob_store: str) -> Settings:
    return make_settings(database_url, tmp_path, **(S3_SETTINGS if blob_store == "s3" else {}))
