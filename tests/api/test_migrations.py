"""Alembic migrations build the schema the models describe, on an empty SQLite and PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, insert, inspect, text

from api import migrate
from api.db import make_engine
from api.tables import metadata
from api.users.models import Role, User
from tests.conftest import BACKENDS, create_postgres_database, drop_postgres_database, make_settings


@pytest.fixture(params=BACKENDS)
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh' / 'steward.db'}"
        engine = make_engine(make_settings(url, tmp_path))
        yield engine
        engine.dispose()
        return
    url = create_postgres_database()
    engine = make_engine(make_settings(url, tmp_path))
    yield engine
    engine.dispose()
    drop_postgres_database(url)


def test_upgrade_creates_every_table_on_an_empty_database(empty_engine: Engine) -> None:
    assert migrate.current_revision(empty_engine) is None
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == migrate.head_revision()
    tables = set(inspect(empty_engine).get_table_names())
    assert set(metadata.tables) <= tables
    assert "alembic_version" in tables


# SQLite cannot reflect an expression index (users' lower(username)): compared on PostgreSQL only.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")
def test_migrations_match_the_models(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    with empty_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == [], f"models and migrations differ; write a migration: {diff}"


def test_upgrade_twice_is_a_no_op(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == migrate.head_revision()


def test_names_that_differ_only_in_case_stop_the_upgrade_that_makes_them_one(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine, "0010")
    with empty_engine.begin() as conn:
        for name in ("bob", "BOB", "alice"):
            conn.execute(insert(User.__table__).values(  # type: ignore[attr-defined]
                id=uuid.uuid4(), version=1, created_at=datetime.now(UTC), updated_at=datetime.now(UTC), seq=0,
                username=name, full_name="", phone="", role=Role.steward, password_hash="x", active=True))
    with pytest.raises(RuntimeError, match=r"differ only in case: bob \(2 users\)"):
        migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == "0010"  # nothing half-done
    with empty_engine.begin() as conn:
        conn.execute(text("UPDATE users SET username = 'bob2' WHERE username = 'BOB'"))
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == migrate.head_revision()
