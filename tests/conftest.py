"""Shared fixtures: every database test runs on SQLite, and again on PostgreSQL when
`STEWARD_TEST_POSTGRES_URL` points at a server (the test creates and drops its own database)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlmodel import Session

from api import migrate
from api.app import create_app
from api.db import create_database, drop_database, make_engine
from api.notices.sms import LoggingSender
from api.settings import Settings
from tests.utils.db import wipe
from tests.utils.imports import import_lazy_modules
from tests.utils.routes import share_route_analysis

POSTGRES_URL = os.environ.get("STEWARD_TEST_POSTGRES_URL", "")
BACKENDS = ["sqlite", "postgres"] if POSTGRES_URL else ["sqlite"]
TEST_SECRET = "test-secret-key-that-is-long-enough-for-hs256"

share_route_analysis()  # each test's app would analyse the same routes again (tests/utils/routes.py)
import_lazy_modules()  # no assertion rewriting of anyio's modules in a request's thread (tests/utils/imports.py)


def postgres_admin_url() -> str:
    """The server URL from the environment, with the psycopg 3 driver."""
    return Settings(database_url=POSTGRES_URL).resolved_database_url


def create_postgres_database() -> str:
    """Create an empty, uniquely named database; returns its URL."""
    return create_database(postgres_admin_url(), "steward_test")


def drop_postgres_database(url: str) -> None:
    drop_database(postgres_admin_url(), str(make_url(url).database))


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty database of each backend, for the whole session."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'steward.db'}"
        return
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


def make_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: a fixed secret, the given database and data directory."""
    return Settings(database_url=database_url, data_dir=data_dir, secret_key=TEST_SECRET, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def migrated_engine(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The session's database, migrated to head once."""
    engine = make_engine(make_settings(database_url, tmp_path_factory.mktemp("data")))
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(migrated_engine: Engine) -> Iterator[Engine]:
    """A migrated database that starts empty for every test."""
    wipe(migrated_engine)
    yield migrated_engine
    wipe(migrated_engine)


@pytest.fixture
def backend(engine: Engine) -> str:
    """`sqlite` or `postgresql`."""
    return engine.dialect.name


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as s:
        yield s


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path)


@pytest.fixture
def sms() -> LoggingSender:
    return LoggingSender()


@pytest.fixture
def client(settings: Settings, engine: Engine, sms: LoggingSender) -> Iterator[TestClient]:
    app = create_app(settings, engine=engine, sms_sender=sms)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
