"""Database engine, session and the column types every table shares (UUID ids, UTC timestamps)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, create_engine

from api.settings import Settings

# Stable constraint names on SQLite and PostgreSQL, so migrations can refer to them.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    """A random UUID; clients may create ids offline with the same scheme."""
    return uuid.uuid4()


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite and PostgreSQL alike.

    SQLite has no time zones: values are stored as naive UTC and marked UTC again on the way out.
    Naive datetimes are refused on the way in, because guessing their zone is how clock bugs start.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC values")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def ts_field(*, nullable: bool = False, index: bool = False, default_now: bool = False) -> Any:
    """A UTC timestamp column for SQLModel tables."""
    kwargs: dict[str, Any] = {"sa_type": UTCDateTime, "nullable": nullable, "index": index}
    if default_now:
        kwargs["default_factory"] = utcnow
    elif nullable:
        kwargs["default"] = None
    return Field(**kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def make_engine(settings: Settings) -> Engine:
    """Create the engine for the configured database, creating the SQLite directory if needed."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=settings.db_pool_size, max_overflow=settings.db_pool_size,
                         pool_pre_ping=True)


def session_scope(engine: Engine) -> Iterator[Session]:
    """Yield a session that rolls back whatever was not committed."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise




class Versioned(SQLModel):
    """Columns of every syncable row: a client-creatable UUID id, a version bumped on each write,
    and UTC creation/update times. The version is bumped in one place, on flush (see below).

    The last three columns are offline-sync bookkeeping, written only by the flush hook of
    `sync.tracking` (see docs/sync-protocol.md): the change sequence of the last write, the version at
    which each field last changed (and by which device), and the device whose push wrote the row last.
    """

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    version: int = Field(default=1, ge=1)
    created_at: datetime = ts_field(default_now=True)
    updated_at: datetime = ts_field(default_now=True)
    seq: int = Field(default=0, sa_type=BigInteger, index=True, sa_column_kwargs={"server_default": "0"})
    field_versions: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    origin_client_id: uuid.UUID | None = Field(default=None)


# Columns that say how a row was written rather than what it holds.
BOOKKEEPING_FIELDS = frozenset({"version", "created_at", "updated_at", "seq", "field_versions", "origin_client_id"})


@event.listens_for(Session, "before_flush")
def _bump_versions(session: Session, _flush_context: Any, _instances: Any) -> None:
    now = utcnow()
    for obj in session.dirty:
        if isinstance(obj, Versioned) and session.is_modified(obj, include_collections=False):
            obj.version = (obj.version or 0) + 1
            obj.updated_at = now
    # Imported here, not at the top: sync's models import this module. Every session runs it, so no
    # write path can forget to record its changes for the devices.
    from sync import tracking

    tracking.before_flush(session)


@event.listens_for(Session, "do_orm_execute")
def _track_bulk_writes(state: Any) -> None:
    if state.is_delete or state.is_update:
        from sync import tracking

        tracking.before_bulk_write(state)


__all__ = ["BOOKKEEPING_FIELDS", "Field", "SQLModel", "Session", "UTCDateTime", "Versioned", "make_engine", "new_id",
           "ts_field", "utcnow"]
