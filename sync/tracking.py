"""Change tracking for sync, run on every flush of every session (hooked in `api.db`).

Each transaction that writes a syncable row takes one number from the change sequence
(`UPDATE sync_state SET value = value + 1 ... RETURNING value`). The counter row stays locked until the
transaction ends, so numbers are committed in the order they are handed out and a pull that read the
counter never misses a change that commits later (docs/sync-protocol.md, "Change sequence").

The same hook keeps each row's `field_versions` and `origin_client_id`, writes a tombstone for every
delete and a scope event whenever a user's visibility may change (grid, assignee, a building's station).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Table, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session, col
from sqlmodel import select as orm_select

from api.db import BOOKKEEPING_FIELDS, new_id, utcnow
from api.network.models import Building
from api.users.models import GridBuilding
from api.work_orders.models import WorkOrder
from sync import registry
from sync.models import ScopeEvent, SyncState, Tombstone

SEQ = "seq"
PURGED_SEQ = "purged_seq"
# A random number made once per database and put in every cursor: a cursor issued by another database (a
# staging copy sharing the secret key), or by this one before a backup was restored over it (`steward db
# restored` makes a new one), is answered with a reset instead of being read as a position here.
DATABASE_ID = "database_id"
# session.info keys. The push sets WRITER (its client id) and TARGETS (the rows its current mutation
# writes, whose exact state the device receives in the response).
WRITER = "sync.writer"
TARGETS = "sync.targets"
UNTARGETED = "sync.untargeted"  # rows a push changed as a side effect: never marked as the device's own
SIDE_EFFECTS = "sync.side_effects"  # (table, id) -> the fields of such a row the side effect wrote
_ALLOCATION = "sync.allocation"


@dataclass
class _Allocation:
    """The sequence number of the open transaction, and the session transactions it belongs to."""

    seq: int
    txn: SessionTransaction
    history: list[SessionTransaction] = field(default_factory=list)


def _state_table() -> Table:
    table: Table = SyncState.__table__  # type: ignore[attr-defined]
    return table


def insert_ignore(conn: Connection, table: Table, values: dict[str, Any]) -> None:
    """Insert a row unless its primary key exists (SQLite and PostgreSQL)."""
    stmt = (pg_insert(table) if conn.dialect.name == "postgresql" else sqlite_insert(table)).values(**values)
    conn.execute(stmt.on_conflict_do_nothing())


def read_counter(conn: Connection, name: str) -> int:
    """The committed value of a sync counter (0 if it does not exist yet)."""
    table = _state_table()
    value = conn.execute(select(table.c.value).where(table.c.name == name)).scalar()
    return int(value or 0)


def database_id(session: Session) -> int:
    """This database's identity, made on first use and committed at once (on the session's own connection:
    taking a second one from the pool could wait forever for a request that holds one)."""
    table = _state_table()
    read = select(table.c.value).where(table.c.name == DATABASE_ID)
    value = session.connection().execute(read).scalar()
    if value is None:
        insert_ignore(session.connection(), table, {"name": DATABASE_ID, "value": secrets.randbits(62) + 1,
                                                    "updated_at": utcnow()})
        session.commit()
        value = session.connection().execute(read).scalar_one()
    return int(value)


def new_database_id(engine: Engine) -> int:
    """Give the database a new identity (after restoring a backup): every handheld's next pull is a reset."""
    value = secrets.randbits(62) + 1
    with engine.begin() as conn:
        table = _state_table()
        insert_ignore(conn, table, {"name": DATABASE_ID, "value": value, "updated_at": utcnow()})
        conn.execute(update(table).where(table.c.name == DATABASE_ID).values(value=value, updated_at=utcnow()))
    return value


def allocate_seq(session: Session) -> int:
    """The change sequence number of the session's transaction, taking the next one on first use.

    Callers that use savepoints call this before the first one, so the number (and the lock) belong to
    the outer transaction; the hook below also copes with a number taken inside a savepoint.
    """
    allocation: _Allocation | None = session.info.get(_ALLOCATION)
    if allocation is not None:
        return allocation.seq
    conn = session.connection()
    table = _state_table()
    stmt = (update(table).where(table.c.name == SEQ).values(value=table.c.value + 1)
            .returning(table.c.value))
    seq = conn.execute(stmt).scalar()
    if seq is None:  # a fresh (or wiped) database: create the counter, then take from it
        insert_ignore(conn, table, {"name": SEQ, "value": 0, "updated_at": utcnow()})
        seq = conn.execute(stmt).scalar_one()
    txn = session.get_nested_transaction() or session.get_transaction()
    assert txn is not None
    session.info[_ALLOCATION] = _Allocation(int(seq), txn, [txn])
    return int(seq)


def _on_transaction_end(session: Session, txn: SessionTransaction) -> None:
    allocation: _Allocation | None = session.info.get(_ALLOCATION)
    if allocation is None or allocation.txn is not txn:
        return
    if txn.parent is None:
        session.info.pop(_ALLOCATION, None)
    else:  # a released savepoint hands its changes (and the counter lock) to its parent
        allocation.txn = txn.parent
        allocation.history.append(txn.parent)


def _on_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    allocation: _Allocation | None = session.info.get(_ALLOCATION)
    if allocation is not None and any(t is previous for t in allocation.history):
        # The increment was rolled back with the savepoint (and its lock released): take a new number.
        session.info.pop(_ALLOCATION, None)


def install(session_class: Any) -> None:
    """Listen to the transaction events that keep the allocation honest."""
    from sqlalchemy import event

    if not event.contains(session_class, "after_transaction_end", _on_transaction_end):
        event.listen(session_class, "after_transaction_end", _on_transaction_end)
        event.listen(session_class, "after_soft_rollback", _on_soft_rollback)


install(Session)


def changed_fields(obj: Any) -> list[str]:
    """The data fields whose value this flush changes (bookkeeping columns excluded)."""
    from sqlalchemy import inspect

    state = inspect(obj)
    columns = state.mapper.column_attrs
    out = []
    # Only attributes set since the last flush have a history (they are the keys of committed_state).
    for key in list(state.committed_state):
        if key in BOOKKEEPING_FIELDS or key not in columns:
            continue
        history = state.attrs[key].history
        if not history.added:
            continue
        if history.deleted and history.deleted[0] == history.added[0]:
            continue
        out.append(key)
    return out


def side_effect(session: Session, table: str, row: Any, *names: str) -> None:
    """Note that a push changed these fields of a row as a side effect of another row's mutation: the server's
    writes, not the device's (`field_versions`), and the row is not marked as the device's own (`origin`)."""
    session.info.setdefault(UNTARGETED, set()).add((table, row.id))
    session.info.setdefault(SIDE_EFFECTS, {}).setdefault((table, row.id), set()).update(names)
    # Recorded now, as the flush will (at the version it gives the row): the fast path of a push flushes the
    # batch once, and a later mutation of the same row must see these fields as changed by someone else.
    from sqlalchemy import inspect

    at = row.version if inspect(row).pending else row.version + 1  # a row this batch creates is inserted at it
    versions = dict(row.field_versions or {})
    for name in names:
        versions[name] = [at, None]
    row.field_versions = versions


def _old_value(obj: Any, key: str) -> Any:
    from sqlalchemy import inspect

    history = inspect(obj).attrs[key].history
    if history.deleted:
        return history.deleted[0]
    return history.unchanged[0] if history.unchanged else None


def before_flush(session: Session) -> None:
    """Stamp written rows with the transaction's sequence number; log deletes and scope changes."""
    new = [o for o in session.new if registry.spec_of(o) is not None]
    dirty = [o for o in session.dirty
             if registry.spec_of(o) is not None and session.is_modified(o, include_collections=False)]
    deleted = [o for o in session.deleted if registry.spec_of(o) is not None]
    grid = [o for o in session.new if isinstance(o, GridBuilding)] + [
        o for o in session.deleted if isinstance(o, GridBuilding)]
    if not (new or dirty or deleted or grid):
        return
    seq = allocate_seq(session)
    writer: uuid.UUID | None = session.info.get(WRITER)
    targets: set[tuple[str, uuid.UUID]] = session.info.get(TARGETS, set())
    untargeted: set[tuple[str, uuid.UUID]] = session.info.get(UNTARGETED, set())
    side_effects: dict[tuple[str, uuid.UUID], set[str]] = session.info.get(SIDE_EFFECTS, {})

    def origin(spec: registry.SyncTable, obj: Any) -> uuid.UUID | None:
        key = (spec.name, obj.id)
        return writer if writer is not None and key in targets and key not in untargeted else None

    def written_by(spec: registry.SyncTable, obj: Any, name: str) -> str | None:
        # As `origin`, field by field: a field written as a side effect, or any field of a row the push did not
        # target, is the server's write (the device is not sent it: its copy still holds the old value).
        key = (spec.name, obj.id)
        mine = writer is not None and key in targets and name not in side_effects.get(key, ())
        return str(writer) if mine else None

    for obj in new:
        spec = registry.spec_of(obj)
        assert spec is not None
        obj.seq = seq
        obj.origin_client_id = origin(spec, obj)
    for obj in dirty:
        spec = registry.spec_of(obj)
        assert spec is not None
        changed = changed_fields(obj)
        if changed:
            versions = dict(obj.field_versions or {})
            for name in changed:
                versions[name] = [obj.version, written_by(spec, obj, name)]
            obj.field_versions = versions  # a new dict: JSON columns do not see in-place changes
        obj.seq = seq
        obj.origin_client_id = origin(spec, obj)
        if isinstance(obj, WorkOrder) and "assignee_id" in changed:
            _assignee_events(session, seq, obj.id, _old_value(obj, "assignee_id"), obj.assignee_id)
        if isinstance(obj, Building) and "station_id" in changed:
            _station_events(session, seq, obj.id, _old_value(obj, "station_id"), obj.station_id)
    for obj in deleted:
        spec = registry.spec_of(obj)
        assert spec is not None
        write_tombstone(session, seq, spec, obj, origin(spec, obj))
    stations = _stations_of(session, {link.building_id for link in grid})
    for link in grid:
        session.add(ScopeEvent(seq=seq, user_id=link.user_id, kind="building", key_id=link.building_id))
        if (station_id := stations.get(link.building_id)) is not None:
            session.add(ScopeEvent(seq=seq, user_id=link.user_id, kind="station", key_id=station_id))


def _stations_of(session: Session, building_ids: set[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """The station of each building now. A grid change is also a `station` event of the building's station
    at that moment: the station's notices and campaigns are found again through it even when the building
    moves to another station before the steward's next pull (found through the building's current station,
    a notice of the old one stayed on the device for ever)."""
    if not building_ids:
        return {}
    rows = session.connection().execute(
        orm_select(Building.id, Building.station_id).where(col(Building.id).in_(building_ids))).all()
    return {building_id: station_id for building_id, station_id in rows}


def write_tombstone(session: Session, seq: int, spec: registry.SyncTable, obj: Any,
                    origin: uuid.UUID | None) -> None:
    """Record the delete of one row (replacing an older tombstone of a re-created id)."""
    table: Table = Tombstone.__table__  # type: ignore[attr-defined]
    conn = session.connection()
    conn.execute(table.delete().where(table.c.table_name == spec.name, table.c.row_id == obj.id))
    keys = registry.route_keys(session, spec, obj)
    conn.execute(insert(table).values(table_name=spec.name, row_id=obj.id, seq=seq, deleted_at=utcnow(),
                                      origin_client_id=origin, **keys))


def _assignee_events(session: Session, seq: int, order_id: uuid.UUID, old: uuid.UUID | None,
                     new: uuid.UUID | None) -> None:
    for user_id in {old, new} - {None}:
        assert user_id is not None
        session.add(ScopeEvent(seq=seq, user_id=user_id, kind="work_order", key_id=order_id))


def _station_events(session: Session, seq: int, building_id: uuid.UUID, old: uuid.UUID | None,
                    new: uuid.UUID | None) -> None:
    users = session.connection().execute(
        orm_select(GridBuilding.user_id).where(GridBuilding.building_id == building_id)).scalars()
    for user_id in users:
        for station_id in {old, new} - {None}:
            assert station_id is not None
            session.add(ScopeEvent(seq=seq, user_id=user_id, kind="station", key_id=station_id))


class UntrackedWrite(RuntimeError):
    """A bulk UPDATE of a synced table would change rows without telling the devices."""


def before_bulk_write(state: Any) -> None:
    """Log bulk DELETEs run through a session (grids, synced rows); refuse bulk UPDATEs of synced rows."""
    mapper = state.bind_mapper
    if mapper is None:
        return
    model = mapper.class_
    spec = registry.BY_MODEL.get(model)
    if model is not GridBuilding and spec is None:
        return
    if state.is_update:
        if spec is not None:
            raise UntrackedWrite(f"bulk UPDATE of {spec.name} bypasses sync tracking; load the rows and change "
                                 "them through the session instead")
        return
    session: Session = state.session
    where = state.statement.whereclause
    if model is GridBuilding:
        stmt = orm_select(GridBuilding.user_id, GridBuilding.building_id)
        links = session.execute(stmt.where(where) if where is not None else stmt).all()
        if not links:
            return
        seq = allocate_seq(session)
        events: Table = ScopeEvent.__table__  # type: ignore[attr-defined]
        now = utcnow()
        stations = _stations_of(session, {b for _, b in links})
        session.connection().execute(insert(events), [
            {"id": new_id(), "seq": seq, "user_id": u, "kind": kind, "key_id": key, "created_at": now}
            for u, b in links
            for kind, key in (("building", b), ("station", stations.get(b))) if key is not None])
        return
    assert spec is not None
    stmt_rows = select(model)
    rows = session.execute(stmt_rows.where(where) if where is not None else stmt_rows).scalars().all()
    if not rows:
        return
    seq = allocate_seq(session)
    for obj in rows:
        write_tombstone(session, seq, spec, obj, None)
