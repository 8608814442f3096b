"""Assertions shared by the API tests: the one error shape, and reading rows back from the database."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

import httpx
from sqlalchemy import Engine, func
from sqlmodel import Session, SQLModel, select

from api.tables import metadata

T = TypeVar("T", bound=SQLModel)


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is `status` with exactly `{"detail": {"code", "message", ...}}` and this code."""
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"detail"}, body
    detail = body["detail"]
    assert isinstance(detail, dict), body
    assert detail.get("code") == code, body
    assert isinstance(detail.get("message"), str) and detail["message"], body
    return detail


def count_rows(session: Session, model: type[SQLModel]) -> int:
    """How many rows the table holds now, as committed by the app."""
    session.rollback()  # end any snapshot so the count sees the app's commits
    return int(session.exec(select(func.count()).select_from(model)).one())


def reread(session: Session, model: type[T], id: uuid.UUID | str) -> T:
    """The row as committed now, not as cached in the test's session."""
    session.rollback()
    session.expire_all()
    row = session.get(model, uuid.UUID(str(id)))
    assert row is not None, f"{model.__name__} {id} is gone"
    return row


def db_state(session: Session) -> dict[str, tuple[int, int]]:
    """Row count and sum of versions of every table: equal snapshots mean nothing was written."""
    session.rollback()
    state = {}
    for table in metadata.sorted_tables:
        versions = func.coalesce(func.sum(table.c.version), 0) if "version" in table.c else func.count() * 0
        count, total = session.execute(select(func.count(), versions).select_from(table)).one()
        state[table.name] = (int(count), int(total))
    return state


def someone_waits_for_a_lock(engine: Engine, timeout: float = 10.0) -> bool:
    """Poll PostgreSQL until a backend of this database waits on a lock."""
    import time

    from sqlalchemy import text

    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        while time.monotonic() < deadline:
            if conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND wait_event_type = 'Lock'")).scalar_one():
                return True
            time.sleep(0.01)
    return False
