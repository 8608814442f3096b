"""The conflict log as supervisors read it."""

from __future__ import annotations

import uuid

from sqlmodel import Session, col, select

from api import access
from api.deps import Page
from sync.models import SyncConflict


def list_conflicts(*, session: Session, page: Page, table: str | None = None, row_id: uuid.UUID | None = None,
                   user_id: uuid.UUID | None = None, client_id: uuid.UUID | None = None
                   ) -> tuple[list[SyncConflict], int]:
    """Conflict lines, newest first, optionally for one table, row, user or device."""
    stmt = select(SyncConflict)
    if table:
        stmt = stmt.where(SyncConflict.table_name == table)
    if row_id:
        stmt = stmt.where(SyncConflict.row_id == row_id)
    if user_id:
        stmt = stmt.where(SyncConflict.user_id == user_id)
    if client_id:
        stmt = stmt.where(SyncConflict.client_id == client_id)
    return access.paged(session, stmt, page, col(SyncConflict.created_at).desc(), col(SyncConflict.id))
