"""Tombstone retention: purge deletes and scope events older than the window, remember how far; and delete the
conflict lines a supervisor reviewed longer ago than theirs.

A cursor whose position is below the highest purged sequence number may have missed a delete, so the
pull answers it with a reset (docs/sync-protocol.md, "Tombstones").
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, func, select, update
from sqlmodel import Session

from api.db import utcnow
from api.settings import Settings
from sync.models import ScopeEvent, SyncConflict, SyncState, Tombstone
from sync.tracking import PURGED_SEQ, insert_ignore


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


def purge(*, session: Session, settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """Delete tombstones and scope events older than the retention window, and conflict lines reviewed before
    theirs (a line nobody reviewed is kept: it is a supervisor's to-do, and may keep a lost photo's blob);
    commits."""
    now = now or utcnow()
    cutoff = now - timedelta(days=settings.sync_tombstone_retention_days)
    tombs, events, state, conflicts = _table(Tombstone), _table(ScopeEvent), _table(SyncState), _table(SyncConflict)
    conn = session.connection()
    newest = max(conn.execute(select(func.max(tombs.c.seq)).where(tombs.c.deleted_at < cutoff)).scalar() or 0,
                 conn.execute(select(func.max(events.c.seq)).where(events.c.created_at < cutoff)).scalar() or 0)
    removed_tombs = conn.execute(delete(tombs).where(tombs.c.deleted_at < cutoff)).rowcount
    removed_events = conn.execute(delete(events).where(events.c.created_at < cutoff)).rowcount
    reviewed_before = now - timedelta(days=settings.sync_conflict_retention_days)
    removed_conflicts = conn.execute(delete(conflicts).where(conflicts.c.reviewed_at < reviewed_before)).rowcount
    insert_ignore(conn, state, {"name": PURGED_SEQ, "value": 0, "updated_at": now})
    conn.execute(update(state).where(state.c.name == PURGED_SEQ)
                 .values(value=func.greatest(state.c.value, newest) if conn.dialect.name == "postgresql"
                         else func.max(state.c.value, newest), updated_at=now))
    session.commit()
    return {"tombstones": removed_tombs, "scope_events": removed_events, "conflicts": removed_conflicts,
            "purged_seq": int(newest)}


def purge_due(settings: Settings, last: datetime | None, now: datetime | None = None) -> bool:
    """Whether the last purge (None: never) is older than the purge interval."""
    due = (now or utcnow()) - timedelta(minutes=settings.sync_purge_interval_minutes)
    return last is None or last < due


def maybe_purge(*, session: Session, settings: Settings, now: datetime | None = None) -> bool:
    """Purge if the last purge is older than the purge interval; one caller wins the claim."""
    now = now or utcnow()
    state = _table(SyncState)
    conn = session.connection()
    due = now - timedelta(minutes=settings.sync_purge_interval_minutes)
    # Read first: most pulls find nothing to do, and must not take a write lock to learn it.
    last = conn.execute(select(state.c.updated_at).where(state.c.name == PURGED_SEQ)).scalar()
    if last is not None and last >= due:
        return False
    claimed = conn.execute(update(state).where(state.c.name == PURGED_SEQ, state.c.updated_at < due)
                           .values(updated_at=now).returning(state.c.name)).first()
    if claimed is None and last is not None:  # another pull claimed it first
        session.rollback()
        return False
    purge(session=session, settings=settings, now=now)
    return True
