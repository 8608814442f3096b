"""The conflict log as supervisors read it, and their "reviewed" marks."""

from __future__ import annotations

import uuid

from sqlmodel import Session, col, select

from api import access
from api.db import utcnow
from api.deps import Page
from api.errors import NotFound
from api.users.models import User
from sync.models import SyncConflict


def list_conflicts(*, session: Session, page: Page, table: str | None = None, row_id: uuid.UUID | None = None,
                   user_id: uuid.UUID | None = None, client_id: uuid.UUID | None = None,
                   kind: str | None = None, winner: str | None = None, reviewed: bool | None = None
                   ) -> tuple[list[SyncConflict], int]:
    """Conflict lines, newest first, optionally for one table, row, user or device, kind, winner, or
    reviewed state."""
    stmt = select(SyncConflict)
    if table:
        stmt = stmt.where(SyncConflict.table_name == table)
    if row_id:
        stmt = stmt.where(SyncConflict.row_id == row_id)
    if user_id:
        stmt = stmt.where(SyncConflict.user_id == user_id)
    if client_id:
        stmt = stmt.where(SyncConflict.client_id == client_id)
    if kind:
        stmt = stmt.where(SyncConflict.kind == kind)
    if winner:
        stmt = stmt.where(SyncConflict.winner == winner)
    if reviewed is not None:
        reviewed_at = col(SyncConflict.reviewed_at)
        stmt = stmt.where(reviewed_at.is_not(None) if reviewed else reviewed_at.is_(None))
    return access.paged(session, stmt, page, col(SyncConflict.created_at).desc(), col(SyncConflict.id))


def review_conflict(*, session: Session, user: User, id: uuid.UUID, reviewed: bool) -> SyncConflict:
    """Set or clear the reviewed mark of one conflict line (idempotent: a second mark keeps the first)."""
    row = session.get(SyncConflict, id)
    if row is None:
        raise NotFound(f"No sync conflict with id {id}.")
    if not reviewed:
        row.reviewed_at = row.reviewed_by_id = None
    elif row.reviewed_at is None:
        row.reviewed_at, row.reviewed_by_id = utcnow(), user.id
    session.add(row)
    session.commit()
    session.refresh(row)
    return row
