"""Fixtures of the API tests: one app per database, and the two-grid world most scope tests start from."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from api.app import create_app
from api.notices.sms import LoggingSender
from api.settings import Settings
from tests.conftest import make_settings
from tests.utils.factories import World, make_world


@pytest.fixture(scope="session")
def shared_app(migrated_engine: Engine, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """One app per database for the whole session (an app's first requests cost more than later
    ones). Tests that need a pristine app (metrics, other settings) build their own."""
    return create_app(make_settings(database_url, tmp_path_factory.mktemp("app")), engine=migrated_engine,
                      sms_sender=LoggingSender())


@pytest.fixture
def client(shared_app: FastAPI, engine: Engine, settings: Settings, sms: LoggingSender) -> Iterator[TestClient]:
    """The shared app, with this test's settings and SMS sender (requests read both from `app.state`)."""
    shared_app.state.settings = settings
    shared_app.state.sms_sender = sms
    with TestClient(shared_app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def world(session: Session, settings: Settings) -> World:
    """A station feeding building A (steward A's grid) and building B (steward B's), plus the office."""
    return make_world(session, settings)
