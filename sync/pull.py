"""The pull feed: snapshot, scope changes and deltas, one bounded page at a time.

Reads go through Core selects (no ORM objects) and the page is serialised once with orjson by the view,
so the cost per record stays close to a plain indexed SELECT.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Uuid,
    and_,
    bindparam,
    case,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    tuple_,
)
from sqlmodel import Session, col
from sqlmodel import select as orm_select

from api import access
from api.network.models import Building
from api.settings import Settings
from api.users.models import Role, User
from api.work_orders.models import WorkOrder
from sync import cursor as cursors
from sync.cursor import DELTA, END_OF_SEQ, SCOPE, SNAPSHOT, Cursor
from sync.models import SCHEMA_VERSION, ScopeEvent, SyncState, Tombstone
from sync.registry import TABLES, ScopeKeys, SyncTable, Wire, wire
from sync.retention import maybe_purge, purge_due
from sync.tracking import DATABASE_ID, PURGED_SEQ, SEQ, database_id, read_counter

_DELETE = object()


@dataclass
class Page:
    """Items of one page, at most one per (table, id): a later item replaces an earlier one."""

    room: int
    items: list[dict[str, Any]] = field(default_factory=lambda: [{} for _ in TABLES])

    def add(self, table: int, row_id: str, value: Any) -> None:
        bucket = self.items[table]
        bucket.pop(row_id, None)  # keep stream order for the id's final position
        bucket[row_id] = value
        self.room -= 1

    def changes(self) -> dict[str, dict[str, list[Any]]]:
        out = {}
        for spec, bucket in zip(TABLES, self.items, strict=True):
            out[spec.name] = {"upserts": [v for v in bucket.values() if v is not _DELETE],
                              "deletes": [k for k, v in bucket.items() if v is _DELETE]}
        return out


@dataclass
class Feed:
    """What one pull request needs: the caller, the watermark and the cursor being advanced."""

    session: Session
    user: User
    office: bool
    head: int  # every change with seq <= head is committed; nothing above it is returned
    # per table, for a steward's row-by-row tables: its rows from the cursor's seq on, counted up to
    # ROW_BY_ROW_BELOW (None: not counted). A snapshot or a reset starts its delta at the head: nothing
    # after it, whatever the count.
    near: tuple[int | None, ...]
    dialect: str = "sqlite"
    newest: tuple[int | None, ...] = ()  # newest seq per table, then of the tombstones
    # Whether the page read tombstones or scope events, which a purge committing meanwhile may have taken.
    read_purgeable: bool = False


def new_snapshot(user: User, office: bool, head: int, database: int, client_id: uuid.UUID | None = None) -> Cursor:
    """A cursor at the start of a snapshot whose delta continues after `head`, for this database."""
    return Cursor(user_id=user.id, office=office, client_id=client_id, seq=head, table=END_OF_SEQ, row=None,
                  scope_seq=head, phase=SNAPSHOT, phase_table=0, phase_row=None, database=database)


def _at_snapshot_start(state: Cursor) -> bool:
    return (state.phase == SNAPSHOT and state.phase_table == 0 and state.phase_part == 0
            and state.phase_row is None and state.phase_key is None)


def _snapshot_step(feed: Feed, page: Page, state: Cursor,
                   *, scope: tuple[ScopeKeys, ScopeKeys] | None) -> tuple[Cursor, bool]:
    """Rows table by table: all visible ones (snapshot), or those related to scope keys (scope change):
    deletes for the ones no longer visible, upserts for the visible ones related to keys now in scope
    (rows still visible through another path were visible before and are not resent).
    Big tables page by (page key, id), the others by id; a steward's snapshot of a big table takes the
    grid's rows first, then their own rows outside it (part 1). Returns the new state and whether the
    phase is finished."""
    t, part, last, last_key = state.phase_table, state.phase_part, state.phase_row, state.phase_key
    while t < len(TABLES) and page.room > 0:
        spec = TABLES[t]
        shape = spec.wire(feed.dialect)
        split = scope is None and not feed.office and spec.in_grid is not None and spec.own is not None
        rows = _page_rows(feed, spec, shape, scope, part if split else None, last, last_key, page.room + 1)
        taken = rows[:page.room]
        records = [shape.record(row) for row in taken]
        if scope is None:
            for rec in records:
                page.add(t, rec["id"], rec)
        else:
            for row, rec in zip(taken, records, strict=True):
                page.add(t, rec["id"], rec if row[-1] else _DELETE)
        if len(rows) > len(taken):
            position = uuid.UUID(records[-1]["id"])
            keyed = spec.page_key is not None and part == 0
            page_key = _as_uuid(taken[-1][len(shape.names)]) if keyed else None
            return state.with_(phase_table=t, phase_part=part, phase_row=position, phase_key=page_key), False
        if split and part == 0:
            part, last, last_key = 1, None, None
            continue
        t, part, last, last_key = t + 1, 0, None, None
    if t < len(TABLES):
        return state.with_(phase_table=t, phase_part=part, phase_row=last, phase_key=last_key), False
    return state, True


def _page_rows(feed: Feed, spec: SyncTable, shape: Wire, scope: tuple[ScopeKeys, ScopeKeys] | None,
               part: int | None, last: uuid.UUID | None, last_key: uuid.UUID | None, want: int) -> list[Any]:
    """The next `want` rows of one table after (last_key, last), in page order. `part` splits a steward's
    snapshot: 0 the grid's rows, 1 their own rows outside the grid; None: every visible row."""
    ident = spec.table.c.id
    key = spec.table.c[spec.page_key] if spec.page_key else None
    columns = list(shape.columns)
    if key is not None and part != 1:  # as text: only the page's last key is ever parsed
        columns.append(wire(key, feed.dialect)[0].label("_page_key"))
    visible = spec.visible(feed.user)

    def bounded(stmt: Any) -> Any:
        if key is None:
            stmt = stmt.where(ident > last) if last is not None else stmt
            return stmt.order_by(ident).limit(want)
        if last is not None and last_key is not None:
            stmt = stmt.where(tuple_(key, ident) > tuple_(literal(last_key, key.type), literal(last, ident.type)))
        return stmt.order_by(key, ident).limit(want)

    if scope is not None:
        changed, now_in_scope = scope
        # Visibility clauses can be NULL (`NULL IN (...)` for a missing link): CASE makes it false.
        flag = case((visible, literal(True)), else_=literal(False))
        stmt = select(*columns, flag).where(spec.related(changed),
                                            or_(flag == literal(False), spec.related(now_in_scope)))
        return _rows(feed, bounded(stmt))
    grid_walk = (feed.dialect == "postgresql" and not feed.office and key is not None
                 and spec.grid_keys is not None and part != 1)
    if grid_walk:
        return _rows(feed, _grid_page(feed, spec, columns, last, last_key, want))
    grid_only = part == 0 or (part is None and not feed.office and spec.in_grid is None)  # visible = key in grid
    if grid_only and key is not None and spec.grid_keys is not None and last_key is not None:
        # Only the grid's keys from this page's start on: given the whole list, SQLite walks (and probes)
        # every key before the page again on every page, so a snapshot's pages grew slower as it went
        # (readings at 200,000 households: 6.7 ms for the first page, 17.7 ms for the 65th, 2.9 ms bounded).
        keys = spec.grid_keys(feed.user)
        keys = keys.where(keys.selected_columns[0] >= literal(last_key, key.type))
        return _rows(feed, bounded(select(*columns).where(key.in_(keys))))
    if part is None:
        return _rows(feed, bounded(select(*columns).where(visible)))
    assert spec.in_grid is not None and spec.own is not None
    in_grid = spec.in_grid(feed.user)
    if part == 0:
        return _rows(feed, bounded(select(*columns).where(in_grid)))
    # The steward's own rows outside the grid are few: select them first (OFFSET 0 keeps PostgreSQL from
    # merging the subquery and walking the whole id index in order to find them), then page them by id.
    inner = select(*columns, ident.label("_i")).where(spec.own(feed.user), not_(in_grid)).offset(0).subquery()
    own = select(*[inner.c[c.name] for c in columns])
    if last is not None:
        own = own.where(inner.c._i > literal(last, ident.type))
    return _rows(feed, own.order_by(inner.c._i).limit(want))


def _grid_page(feed: Feed, spec: SyncTable, columns: list[Any], last: uuid.UUID | None,
               last_key: uuid.UUID | None, want: int) -> Any:
    """The grid's next rows in (key, id) order, PostgreSQL: the grid's keys from the bound in order, and
    for each key its rows through the (key, id) index (a LATERAL join, so each page reads about `want`
    rows). The plain `key IN (grid) ORDER BY key, id` lets the planner walk the whole table's index in
    order instead, fetching every row of the district between two of the grid's keys from the heap:
    seconds per page at 200,000 households."""
    assert spec.page_key is not None and spec.grid_keys is not None
    ident, key = spec.table.c.id, spec.table.c[spec.page_key]
    grid = spec.grid_keys(feed.user).subquery()
    k = grid.c[0]
    keys = select(k.label("k"))
    if last_key is not None:
        keys = keys.where(k >= literal(last_key, key.type))
    walk = keys.order_by(k).subquery("grid_walk")
    rows = select(*columns, ident.label("_i")).where(key == walk.c.k)
    if last is not None and last_key is not None:
        rows = rows.where(tuple_(key, ident) > tuple_(literal(last_key, key.type), literal(last, ident.type)))
    page = rows.order_by(ident).limit(want).lateral("grid_rows")
    return (select(*[page.c[c.name] for c in columns]).select_from(walk.join(page, true()))
            .order_by(walk.c.k, page.c._i).limit(want))


def _rows(feed: Feed, stmt: Any) -> list[Any]:
    """Rows of a Core select, through the session's connection (no ORM result processing)."""
    return list(feed.session.connection().execute(stmt).all())


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _columns(model: Any) -> Any:
    return model.__table__.c


def _scope_keys_after(user_id: Any, kind: str, after: Any, upto: int | None = None) -> Any:
    ev = _columns(ScopeEvent)
    stmt = select(ev.key_id).where(ev.user_id == user_id, ev.kind == kind, ev.seq > after)
    return stmt.where(ev.seq <= upto) if upto is not None else stmt


def tombstone_route(user: Any) -> ColumnElement[bool]:
    """Tombstones a user must receive: rows they could see when deleted, or around a scope change the
    retention window still remembers. Not only the scope changes after the delta position: a page that
    ended between a building leaving the grid and the delete of one of its rows moved the position past the
    change, and the device kept the deleted row for good (the scope phase cannot name a row that is gone).
    The cost is a delete now and then for an id the device no longer holds, which it ignores."""
    if access.is_office(user):
        return true()
    grid = access.grid_buildings(user)
    tomb = _columns(Tombstone)
    return or_(
        tomb.table_name == "stations",
        tomb.building_id.in_(grid),
        tomb.building_id.in_(_scope_keys_after(user.id, "building", 0)),
        and_(tomb.table_name.in_(("notices", "notice_campaigns")),
             tomb.station_id.in_(orm_select(Building.station_id).where(col(Building.id).in_(grid)))),
        tomb.station_id.in_(_scope_keys_after(user.id, "station", 0)),
        tomb.user_id == user.id,
        tomb.work_order_id.in_(orm_select(WorkOrder.id).where(WorkOrder.assignee_id == user.id)),
        tomb.work_order_id.in_(_scope_keys_after(user.id, "work_order", 0)),
    )


def _may_have_items(newest: int | None, state: Cursor, t: int) -> bool:
    """Whether table t (whose highest seq is `newest`) can hold anything after the position."""
    if newest is None or newest < state.seq:
        return False
    return not (newest == state.seq and t < state.table)


# A steward's delta tests the visibility of the rows after the position one by one (index probes of each
# row's household) when a table has fewer rows than this there; from this many on, against the grid's
# household set built once (~1 ms for 5,000 households, then a hash probe per row).
ROW_BY_ROW_BELOW = 128


def _row_by_row(spec: SyncTable) -> bool:
    """Whether a steward's visibility of the table is `household in grid OR own`, testable row by row."""
    return spec.page_key == "household_id" and spec.in_grid is not None and spec.own is not None


_COUNTED = tuple(t for t, spec in enumerate(TABLES) if _row_by_row(spec))  # the tables a steward's delta counts


@dataclass(frozen=True)
class _Caller:
    """Who pulls or pushes, as the visibility clauses read them (`id`, `role`), with the id a bind parameter
    (`caller_id`): the delta's statements, and a push's lookups, are then built once per shape and reused for
    every caller of that role."""

    id: Any
    role: Role


_CALLER_ID = bindparam("caller_id", type_=Uuid())


@functools.cache
def caller(role: Role) -> Any:
    """The stand-in user of `role` whose id is the bind parameter `caller_id`."""
    return _Caller(id=_CALLER_ID, role=role)


def _position_kind(state: Cursor, t: int) -> int:
    """Which `_position_clause` table t needs: 0 after the seq, 1 after (seq, row), 2 from the seq on."""
    if t < state.table:
        return 0
    return 1 if t == state.table and state.row is not None else 2


def _position_clause(kind: int, seq_col: Any, id_col: Any) -> ColumnElement[bool]:
    seq, row = bindparam("delta_seq", type_=seq_col.type), bindparam("delta_row", type_=id_col.type)
    if kind == 0:
        return seq_col > seq
    if kind == 1:
        return or_(seq_col > seq, and_(seq_col == seq, id_col > row))
    return seq_col >= seq


def _not_mine_clause(column: Any, mine: bool) -> ColumnElement[bool]:
    return or_(column.is_(None), column != bindparam("delta_client", type_=column.type)) if mine else true()


@functools.cache
def _delta_statement(t: int, dialect: str, role: Role, row_by_row: bool, position: int, mine: bool) -> Any:
    """The select of table t's changes after a delta position, for callers of `role`, built once per shape with
    bind parameters (the values `_delta_step` passes). Built anew for every table of every pull, the statements cost
    SQLAlchemy more to construct and to key for its compiled cache than the database took to answer them."""
    spec = TABLES[t]
    c = spec.table.c
    user = caller(role)
    if row_by_row:
        assert spec.own is not None
        visible = or_(access.household_row_clause(user, c.household_id), spec.own(user))
    else:
        visible = spec.visible(user)
    if dialect == "sqlite":
        # Without statistics SQLite would start from the grid's (large) index range; the few changes
        # after the position are the cheap side. Behind a CASE, the visibility test is only a filter.
        visible = case((visible, literal(True)), else_=literal(False)) == literal(True)
    return (select(c.seq, *spec.wire(dialect).columns)
            .where(c.seq <= bindparam("delta_head", type_=c.seq.type), _position_clause(position, c.seq, c.id),
                   visible, _not_mine_clause(c.origin_client_id, mine))
            .order_by(c.seq, c.id).limit(bindparam("delta_want", type_=Integer)))


@functools.cache
def _tombstone_statement(t: int, dialect: str, role: Role, position: int, mine: bool) -> Any:
    """The select of table t's tombstones after a delta position (as `_delta_statement`)."""
    tomb = _columns(Tombstone)
    row_id, _ = wire(tomb.row_id, dialect)
    route = tombstone_route(caller(role))
    return (select(tomb.seq, row_id)
            .where(tomb.table_name == TABLES[t].name, tomb.seq <= bindparam("delta_head", type_=tomb.seq.type),
                   _position_clause(position, tomb.seq, tomb.row_id), route,
                   _not_mine_clause(tomb.origin_client_id, mine))
            .order_by(tomb.seq, tomb.row_id).limit(bindparam("delta_want", type_=Integer)))


def _delta_step(feed: Feed, page: Page, state: Cursor) -> tuple[Cursor, bool]:
    """Upserts and deletes after the position, up to the head, in (seq, table, id) order. Tables whose
    newest change is older than the position are not queried (a quiet grid costs no query)."""
    if state.seq >= feed.head and (state.seq > feed.head or state.table >= END_OF_SEQ):
        return state, True
    want = page.room + 1
    mine = state.client_id is not None
    params = {"caller_id": feed.user.id, "delta_head": feed.head, "delta_seq": state.seq, "delta_row": state.row,
              "delta_client": state.client_id, "delta_want": want}
    role = feed.user.role
    items: list[tuple[int, int, str, Any]] = []
    connection = feed.session.connection()
    for t, spec in enumerate(TABLES):
        if not _may_have_items(feed.newest[t], state, t):
            continue
        near = feed.near[t]
        row_by_row = near is not None and near < ROW_BY_ROW_BELOW
        stmt = _delta_statement(t, feed.dialect, role, row_by_row, _position_kind(state, t), mine)
        shape = spec.wire(feed.dialect)
        for row in connection.execute(stmt, params):
            rec = shape.record(row, 1)
            items.append((row[0], t, rec["id"], rec))
    if feed.newest[-1] is not None and feed.newest[-1] >= state.seq:
        feed.read_purgeable = True
        _, finish = wire(_columns(Tombstone).row_id, feed.dialect)
        for t in range(len(TABLES)):
            stmt = _tombstone_statement(t, feed.dialect, role, _position_kind(state, t), mine)
            for seq, deleted in connection.execute(stmt, params):
                items.append((seq, t, finish(deleted) if finish else deleted, _DELETE))
    items.sort(key=lambda item: (item[0], item[1], item[2]))
    taken = items[:page.room]
    for _, t, row_id, value in taken:
        page.add(t, row_id, value)
    if len(items) > len(taken):
        last = taken[-1]
        return state.with_(seq=last[0], table=last[1], row=uuid.UUID(last[2])), False
    return state.with_(seq=feed.head, table=END_OF_SEQ, row=None), True


@dataclass(frozen=True)
class Head:
    """What a pull reads first, in one statement (one snapshot): the watermark, the purge position, when
    the last purge ran, the database's identity, the newest scope event of the caller not applied yet, and
    the newest seq of each table and of the tombstones (all index lookups); and for a steward's delta, how
    many rows the tables whose visibility can be tested row by row hold from the cursor's seq on (bounded
    index scans)."""

    seq: int
    purged: int
    purged_at: datetime | None
    database: int | None  # None: not made yet
    newest_scope_event: int | None
    newest: tuple[int | None, ...]
    near: tuple[int | None, ...]


@functools.cache
def _head_statement(counting: bool) -> Any:
    """The statement `_head` runs, built once per shape with bind parameters. Built anew for each pull, its ~20
    scalar subqueries cost SQLAlchemy 1.0-1.5 ms to construct and to key for its compiled cache, against
    15 us for SQLite to answer them (docs/sync-benchmarks.md, 2026-12-03)."""
    st, ev, tomb = _columns(SyncState), _columns(ScopeEvent), _columns(Tombstone)
    user_id = bindparam("head_user", type_=ev.user_id.type)
    scope_after = bindparam("head_scope_after", type_=ev.seq.type)

    def value(name: str) -> Any:
        return select(st.value).where(st.name == name).scalar_subquery()

    newest_event = (select(func.max(ev.seq))
                    .where(ev.user_id == user_id, ev.seq > scope_after, ev.seq <= func.coalesce(value(SEQ), 0))
                    .scalar_subquery())
    purged_at = select(st.updated_at).where(st.name == PURGED_SEQ).scalar_subquery()
    newest = [select(func.max(spec.table.c.seq)).scalar_subquery() for spec in TABLES]
    newest.append(select(func.max(tomb.seq)).scalar_subquery())
    near = []
    if counting:
        near_after = bindparam("head_near_after", type_=tomb.seq.type)
        near = [select(func.count()).select_from(
                    select(TABLES[t].table.c.id).where(TABLES[t].table.c.seq >= near_after)
                    .limit(ROW_BY_ROW_BELOW).subquery()).scalar_subquery() for t in _COUNTED]
    return select(value(SEQ), value(PURGED_SEQ), purged_at, newest_event, *newest, *near, value(DATABASE_ID))


def _head(session: Session, user: User, scope_after: int, near_after: int | None = None) -> Head:
    counting = near_after is not None
    params: dict[str, Any] = {"head_user": user.id, "head_scope_after": scope_after}
    if counting:
        params["head_near_after"] = near_after
    row = session.connection().execute(_head_statement(counting), params).one()
    counts = dict(zip(_COUNTED, row[5 + len(TABLES):-1], strict=True)) if counting else {}
    stamp = row[2]
    if isinstance(stamp, str):  # a scalar subquery loses the column type on SQLite: the stored text
        stamp = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
    return Head(int(row[0] or 0), int(row[1] or 0), stamp, int(row[-1]) if row[-1] is not None else None,
                int(row[3]) if row[3] is not None else None,
                tuple(int(v) if v is not None else None for v in row[4:5 + len(TABLES)]),
                tuple(int(counts[t]) if t in counts else None for t in range(len(TABLES))))


def _scope_keys(feed: Feed, state: Cursor) -> tuple[ScopeKeys, ScopeKeys]:
    """The keys of the scope events being applied, and those of them the user holds now."""
    user = feed.user
    changed = ScopeKeys(*(_scope_keys_after(user.id, kind, state.scope_seq, state.phase_seq)
                          for kind in ("building", "work_order", "station")))
    ev = _columns(ScopeEvent)
    grid = access.grid_buildings(user)
    held = ScopeKeys(
        buildings=changed.buildings.where(ev.key_id.in_(grid)),
        work_orders=changed.work_orders.where(
            ev.key_id.in_(orm_select(WorkOrder.id).where(WorkOrder.assignee_id == user.id))),
        stations=changed.stations.where(
            ev.key_id.in_(orm_select(Building.station_id).where(col(Building.id).in_(grid)))))
    return changed, held


def _purged_past(state: Cursor, purged: int) -> bool:
    """Whether tombstones the cursor has not read yet may be gone: those below the purge position, and the
    rest of the purged position's own seq when the cursor stopped inside it (a page boundary between rows of
    one seq)."""
    return state.seq < purged or (state.seq == purged and state.table < END_OF_SEQ)


def pull(*, session: Session, settings: Settings, user: User, cursor: str | None, limit: int) -> dict[str, Any]:
    """One page of changes for the caller after `cursor` (None: first sync)."""
    state = cursors.decode(cursor, settings.secret_key) if cursor is not None else None
    office = access.is_office(user)
    scope_after = state.scope_seq if state is not None and not office else 0
    near_after = state.seq if state is not None and not office and state.phase == DELTA else None
    head = _head(session, user, scope_after, near_after)
    if purge_due(settings, head.purged_at):
        session.commit()  # end the reads so far (autocommit in the service): the purge is one transaction
        if maybe_purge(session=session, settings=settings):
            head = _head(session, user, scope_after, near_after)
    database = head.database or database_id(session)  # made by the first pull or push of a database
    reset = False
    if state is None:
        state = new_snapshot(user, office, head.seq, database)
    elif (state.user_id != user.id or state.office != office or _purged_past(state, head.purged)
          or state.seq > head.seq or state.scope_seq > head.seq or state.database not in (0, database)):
        state, reset = new_snapshot(user, office, head.seq, database), True
    elif state.database == 0:  # an older cursor, now of this database
        state = state.with_(database=database)
    # The first page of every snapshot says reset: a device that pulls without a cursor (after
    # `invalid_cursor`), or with the snapshot cursor a push answers when it was sent none, may hold rows
    # the snapshot will not name again (deleted since, or of buildings that left its grid); told nothing,
    # it kept them for good. A new device holds nothing, so it costs nothing there.
    reset = reset or _at_snapshot_start(state)
    feed = Feed(session=session, user=user, office=office, head=head.seq, dialect=session.connection().dialect.name,
                newest=head.newest, near=head.near)
    # Scope events up to the newest one read above are applied in one scope phase before the delta (later
    # ones, above this pull's watermark, wait for the next pull); also when this pull starts inside a
    # snapshot or a scope phase and reaches the delta, else it would end with has_more false while a grid
    # change waited for the next pull.
    pending = head.newest_scope_event if not reset and not office else None
    page = Page(room=limit)
    start = state
    state, done = _fill(feed, page, state, pending)
    # The cursor was checked against the purge position read first; the tombstones and scope events were read
    # after it, each statement on its own snapshot. A purge that committed in between (another pull's) may
    # have taken some the cursor had not read: then this page lacks them, and only a reset is safe.
    if feed.read_purgeable and _purged_past(start, read_counter(session.connection(), PURGED_SEQ)):
        state, reset = new_snapshot(user, office, head.seq, database), True
        page = Page(room=limit)
        state, done = _fill(feed, page, state, None)
    return {"cursor": cursors.encode(state, settings.secret_key), "has_more": not done, "reset": reset,
            "schema_version": SCHEMA_VERSION, "changes": page.changes()}


def _fill(feed: Feed, page: Page, state: Cursor, pending: int | None) -> tuple[Cursor, bool]:
    """Fill the page from `state`: the snapshot or scope phase it is in, the scope events up to `pending`, then
    the delta. Returns the new state and whether the delta reached the head."""
    while page.room > 0:
        if state.phase == SNAPSHOT:
            state, finished = _snapshot_step(feed, page, state, scope=None)
            if finished:
                state = state.with_(phase=DELTA, phase_table=0, phase_part=0, phase_row=None, phase_key=None)
        elif state.phase == SCOPE:
            feed.read_purgeable = True
            state, finished = _snapshot_step(feed, page, state, scope=_scope_keys(feed, state))
            if finished:
                state = state.with_(phase=DELTA, scope_seq=state.phase_seq, phase_seq=0, phase_table=0,
                                    phase_part=0, phase_row=None, phase_key=None)
        else:
            if pending is not None and pending > state.scope_seq:
                state = state.with_(phase=SCOPE, phase_seq=pending, phase_table=0, phase_part=0, phase_row=None,
                                    phase_key=None)
                continue
            state, done = _delta_step(feed, page, state)
            if done:
                return state, True
    return state, False
