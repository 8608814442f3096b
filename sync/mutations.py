"""Applying one pushed mutation: lookups in the caller's scope, per-field conflict detection, ownership.

`apply` changes ORM objects (and raises `Rejected`); the push (sync/push.py) wraps each call in a
savepoint, flushes it, logs conflicts and answers the device.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from types import SimpleNamespace
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import ARRAY, ColumnElement, Uuid, any_, bindparam, case, insert, literal
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from api import access
from api.db import BOOKKEEPING_FIELDS
from api.settings import Settings
from api.users.models import Role, User
from sync import tracking
from sync.models import Tombstone
from sync.pull import caller, tombstone_route
from sync.registry import BY_NAME, SyncTable, spec_of
from sync.rules import ConflictEntry, Rejected, only, rules_for, shown, validate

REFERENCES = {"household_id": "households", "work_order_id": "work_orders", "visit_id": "visits"}
_CHUNK = 500


@dataclass
class Outcome:
    status: str  # applied | merged | conflict
    row: Any | None  # the row after the mutation; None when it does not exist
    reason: str | None = None
    message: str | None = None
    conflicts: list[ConflictEntry] = field(default_factory=list)


class StagedRow(SimpleNamespace):
    """A new row of the bulk path: its column values as attributes (what `record` reads)."""


@cache
def _default_plan(model: Any) -> tuple[dict[str, Any], tuple[tuple[str, Callable[[], Any]], ...]]:
    """A model's plain defaults, and its default factories (called per row)."""
    plain, factories = {}, []
    for name, info in model.model_fields.items():
        if info.default_factory is not None:
            factories.append((name, info.default_factory))
        elif not info.is_required():
            plain[name] = info.default
    return plain, tuple(factories)


def _defaults(model: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Every field's default not in `given` (factories called), as the model's constructor fills them."""
    plain, factories = _default_plan(model)
    out = dict(plain)
    for name, factory in factories:
        if name not in given:
            out[name] = factory()
    return out


class Context:
    """The caller and what the push has learnt about rows: existence and visibility, fetched in bulk."""

    def __init__(self, *, session: Session, settings: Settings, user: User, client_id: uuid.UUID) -> None:
        self.session = session
        self.settings = settings
        self.user = user
        self.client_id = client_id
        self.office = access.is_office(user)
        self._visible: dict[tuple[str, uuid.UUID], bool] = {}
        self._missing: set[tuple[str, uuid.UUID]] = set()
        # Strong references: the session's identity map is weak, and a prefetched row that was
        # garbage-collected would be loaded again, one query per mutation.
        self._rows: dict[tuple[str, uuid.UUID], Any] = {}
        # Deleted rows the batch names: those whose delete the caller's devices receive (rows they could see),
        # and those of other grids (answered as rows that never existed: an id of another grid stays unknown).
        self._tombstones: set[tuple[str, uuid.UUID]] | None = None
        self._foreign: set[tuple[str, uuid.UUID]] = set()
        # New rows of append-only tables that no other mutation of the batch names: checked like any
        # create, then held as plain values (`StagedRow`) and written with one INSERT per table by
        # `insert_staged`, not as ORM objects one by one (readings are most of a field day's pushes).
        self.bulk: set[tuple[str, uuid.UUID]] = set()
        self.staged: list[tuple[SyncTable, StagedRow]] = []

    def prefetch(self, wanted: dict[str, set[uuid.UUID]], links: dict[str, set[uuid.UUID]] | None = None) -> None:
        """Load the rows a batch names, and their tombstones, with a few IN queries: the rows it writes
        (`wanted`) as ORM objects, the rows only its links name (`links`, e.g. the household of a new
        reading) as plain read-only rows: the rules only read them, and a batch of readings names
        hundreds of households."""
        self._tombstones = set()
        links = links or {}
        for name in dict.fromkeys([*wanted, *links]):
            spec = BY_NAME[name]
            targets = wanted.get(name, set())
            self._load(spec, list(targets), orm=True)
            self._load(spec, list(links.get(name, set()) - targets), orm=False)

    def _load(self, spec: SyncTable, ids: list[uuid.UUID], *, orm: bool) -> None:
        """Rows by id, each with whether the caller may see it: one query per chunk, the visibility clause
        answered as a column of the same rows (a second query for it cost 2.5 ms a table per push)."""
        name = spec.name
        stmt = _load_statement(name, self.user.role, self.office, orm, self.dialect)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            params = {"caller_id": self.user.id, "ids": chunk}
            if orm:
                pairs: Sequence[Any] = self.session.exec(stmt, params=params).all()
                rows: list[Any] = [row for row, _ in pairs]
                visible = {row.id for row, ok in pairs if ok}
            else:  # the row's columns and the visibility flag; rules read the columns by name
                rows = list(self.session.connection().execute(stmt, params))
                visible = {row.id for row in rows if row.sync_visible}
            found = {row.id for row in rows}
            self._rows |= {(name, row.id): row for row in rows}
            self._missing |= {(name, i) for i in chunk if i not in found}
            if orm:  # only a row the batch writes can meet its own tombstone (`tombstone`)
                assert self._tombstones is not None
                for i, routed in self._gone(name, chunk).items():
                    (self._tombstones if routed else self._foreign).add((name, i))
            for i in found:
                self._visible[(name, i)] = i in visible

    def stage(self, spec: SyncTable, values: dict[str, Any]) -> StagedRow:
        """A new row for `insert_staged`, with the model's defaults for the fields not given."""
        row = StagedRow(**(_defaults(spec.model, values) | values))
        self.staged.append((spec, row))
        return row

    def insert_staged(self, seq: int) -> None:
        """Write the staged rows, stamped as the flush hook stamps new rows (sequence, writing device)."""
        by_table: dict[str, list[dict[str, Any]]] = {}
        for spec, row in self.staged:
            row.seq, row.origin_client_id = seq, self.client_id
            by_table.setdefault(spec.name, []).append({c.name: getattr(row, c.name) for c in spec.table.columns})
        for name, rows in by_table.items():
            self.session.connection().execute(insert(BY_NAME[name].table), rows)
        self.staged.clear()

    @property
    def dialect(self) -> str:
        return self.session.get_bind().dialect.name

    def get(self, spec: SyncTable, id: uuid.UUID) -> Any | None:
        key = (spec.name, id)
        if key in self._missing:
            return None
        row = self._rows.get(key)
        if row is None:
            row = self.session.get(spec.model, id)
            if row is not None:
                self._rows[key] = row
        return row

    def visible(self, spec: SyncTable, row: Any) -> bool:
        key = (spec.name, row.id)
        if key not in self._visible:
            stmt = select(spec.model.id).where(spec.model.id == row.id, spec.visible(self.user))
            self._visible[key] = self.office or self.session.exec(stmt).first() is not None
        return self._visible[key]

    def created(self, spec: SyncTable, row: Any) -> None:
        key = (spec.name, row.id)
        self._missing.discard(key)
        self._visible[key] = True
        self._rows[key] = row

    def deleted(self, spec: SyncTable, id: uuid.UUID) -> None:
        key = (spec.name, id)
        self._missing.add(key)
        self._visible.pop(key, None)
        self._rows.pop(key, None)
        if self._tombstones is not None:
            self._tombstones.add(key)

    def _gone(self, name: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, bool]:
        """The tombstones of these ids: each with whether its delete is routed to the caller's devices."""
        stmt = _gone_statement(name, self.user.role, self.office, self.dialect)
        rows = self.session.connection().execute(stmt, {"caller_id": self.user.id, "ids": ids})
        return {row.row_id: bool(row.routed) for row in rows}

    def tombstone(self, spec: SyncTable, id: uuid.UUID) -> bool | None:
        """Whether the row was deleted: True when the caller could see it (its delete reaches their devices),
        False when it was another grid's row, None when it was not deleted."""
        key = (spec.name, id)
        if self._tombstones is not None and (key in self._tombstones or key in self._foreign or key in self._missing):
            return True if key in self._tombstones else False if key in self._foreign else None
        return self._gone(spec.name, [id]).get(id)


def _among(column: Any, dialect: str) -> ColumnElement[bool]:
    """`column IN :ids`; on PostgreSQL as `= ANY(:ids)`, one array parameter (the driver does not parse and
    cache a statement with hundreds of placeholders on every push)."""
    if dialect == "postgresql":
        return col(column) == any_(bindparam("ids", type_=ARRAY(Uuid())))
    return col(column).in_(bindparam("ids", expanding=True))


# A push's lookups, built once per shape with the caller's id and the ids as bind parameters (`caller_id`,
# `ids`). Built for every table of every push, the visibility clauses cost SQLAlchemy more to construct and to
# key for its compiled cache than the database took to answer them (as the pull's delta, `pull.caller`).
@cache
def _load_statement(name: str, role: Role, office: bool, orm: bool, dialect: str) -> Any:
    """Rows of table `name` by id, with whether the caller may see each (`sync_visible`). Else SQLite may
    answer the visibility from its own indexes (the whole grid) rather than test the rows' values: behind a
    CASE it is only a value."""
    spec = BY_NAME[name]
    may_see = literal(True) if office else case((spec.visible(caller(role)), literal(True)), else_=literal(False))
    if orm:
        return select(spec.model, may_see.label("sync_visible")).where(_among(spec.model.id, dialect))
    return core_select(spec.table, may_see.label("sync_visible")).where(_among(spec.table.c.id, dialect))


@cache
def _gone_statement(name: str, role: Role, office: bool, dialect: str) -> Any:
    """The tombstones of table `name` by row id, with whether each delete is routed to the caller (`routed`)."""
    tomb = Tombstone.__table__.c  # type: ignore[attr-defined]
    routed = literal(True) if office else case((tombstone_route(caller(role)), literal(True)), else_=literal(False))
    return core_select(tomb.row_id, routed.label("routed")).where(tomb.table_name == name,
                                                                  _among(tomb.row_id, dialect))


def wanted_rows(mutations: Iterable[tuple[str, uuid.UUID, dict[str, Any]]]
                ) -> tuple[dict[str, set[uuid.UUID]], dict[str, set[uuid.UUID]]]:
    """The ids a batch refers to, by table: its targets, and the links in its fields."""
    targets: dict[str, set[uuid.UUID]] = {}
    links: dict[str, set[uuid.UUID]] = {}
    for table, id, fields in mutations:
        targets.setdefault(table, set()).add(id)
        for name, target in REFERENCES.items():
            value = fields.get(name)
            if isinstance(value, str):
                try:
                    links.setdefault(target, set()).add(uuid.UUID(value))
                except ValueError:
                    continue
    return targets, links


def same(a: Any, b: Any) -> bool:
    """Equal values (enums equal their text, timestamps compare as instants)."""
    try:
        return bool(a == b)
    except TypeError:
        return False


def changed_since(spec: SyncTable, row: Any, base: int, client_id: uuid.UUID) -> set[str]:
    """Fields another writer changed after version `base`, also those an earlier mutation of this push changed
    and the flush has not versioned yet (recorded at the row's next version: `_mark_own`, `tracking.side_effect`)."""
    versions: dict[str, list[Any]] = row.field_versions or {}
    if row.version > base and not any(v[0] > base for v in versions.values()):
        # The row moved on without a recorded field (written before sync existed): assume all changed.
        return set(spec.column_names) - {"id", "version", "created_at", "updated_at"}
    me = str(client_id)
    return {name for name, (version, writer) in versions.items() if version > base and writer != me}


def server_set(row: Any) -> set[str]:
    """Fields the server set otherwise than the device sent them when a push created the row (`_server_set`)."""
    versions: dict[str, list[Any]] = row.field_versions or {}
    return {name for name, (version, writer) in versions.items() if version == 1 and writer is None}


def _server_set(spec: SyncTable, row: Any, fields: dict[str, Any]) -> None:
    """Record, as the server's writes at the row's first version, the fields of a row a push creates that the
    server set otherwise than the device sent them, or than the model's default when it sent none (a cold
    sensitive home's order raised to `high`, its SLA, its assignee). Until the device has the server's record,
    its copy holds its own values: a full write from that copy must not read them as edits (`_differences`)."""
    versions = dict(row.field_versions or {})
    names, plain, factories = _device_columns(spec)
    for name in names:  # a push creates hundreds of rows: no default is made that is not compared
        if name in fields:
            expected = _parse_one(spec, name, fields[name])
        else:
            expected = factories[name]() if name in factories else plain.get(name)
        if not same(expected, getattr(row, name)):
            versions[name] = [row.version, None]
    if versions:
        row.field_versions = versions


@cache
def _device_columns(spec: SyncTable) -> tuple[tuple[str, ...], dict[str, Any], dict[str, Callable[[], Any]]]:
    """The columns a device may send when it creates a row of `spec`, with the model's plain defaults and its
    default factories."""
    plain, factories = _default_plan(spec.model)
    return tuple(sorted(rules_for(spec).device_fields & set(spec.column_names))), plain, dict(factories)


MAX_VERSION = 2**31 - 1  # row versions are 32-bit columns: a larger base_version is none the row had (and
# PostgreSQL could not write it in the conflict log: a `deleted` conflict became `rejected` / `constraint`)


def apply(ctx: Context, spec: SyncTable, op: str, id: uuid.UUID, base_version: int | None,
          fields: dict[str, Any]) -> Outcome:
    """Apply one mutation to the session (not flushed); raises `Rejected`."""
    if base_version is not None and not 1 <= base_version <= MAX_VERSION:
        raise Rejected("invalid_base_version", f"base_version must be a version the row had (1 to {MAX_VERSION}); "
                                               f"got {base_version}.")
    if op == "delete":
        return _delete(ctx, spec, id, base_version)
    if op not in ("upsert", "update"):
        raise Rejected("unknown_op", f"Unknown op {shown(op)}; use upsert, update or delete.")
    rules = rules_for(spec)
    if rules.create is None and rules.writable is None:
        raise Rejected("read_only_table", f"{spec.name} are read-only for devices.")
    row = ctx.get(spec, id)
    if row is None:
        # Deleted on the server: its tombstone says so, or after the retention window purged the tombstone, a
        # full write from a version the device had (a row it never had comes with no base_version). Without
        # the second test, a device back after 30 days offline re-created a row the office had deleted.
        gone = ctx.tombstone(spec, id)
        if gone is False:
            # Another grid's deleted row: answered as for its live rows (below), so that no answer or conflict
            # line tells a steward which ids of other grids existed.
            if op == "upsert":
                raise Rejected("already_exists", f"The id {id} is taken by a row outside your scope.")
            raise Rejected("not_found", f"No {spec.name} row with id {id}.")
        if gone or (op == "upsert" and base_version is not None and base_version >= 1):
            return Outcome("conflict", None, "deleted", f"This {spec.name} row was deleted on the server; deletes "
                           "win over updates.", [ConflictEntry(None, "deleted", None, fields, "server")])
        if op == "update":
            raise Rejected("not_found", f"No {spec.name} row with id {id}.")
        if rules.create is None:
            raise Rejected("read_only_table", f"{spec.name} rows are not created from devices.")
        if (spec.name, id) in ctx.bulk and rules.create_values is not None:
            staged = ctx.stage(spec, rules.create_values(ctx, id, fields))
            _server_set(spec, staged, fields)  # as the ORM path below: a re-send from the device's copy drops them
            return Outcome("applied", staged)
        created = rules.create(ctx, id, fields)
        _server_set(spec, created, fields)
        ctx.session.add(created)
        return Outcome("applied", created)
    if not ctx.visible(spec, row):
        if op == "upsert":
            raise Rejected("already_exists", f"The id {id} is taken by a row outside your scope.")
        # As for an id that does not exist: `out_of_scope` here told a steward which ids of other grids exist.
        raise Rejected("not_found", f"No {spec.name} row with id {id}.")
    if op == "update" and base_version is None:
        raise Rejected("base_version_required", "An update needs the base_version it was edited from.")
    if op == "upsert":
        never_had = base_version is None  # the device holds its own copy, never the server's
        base_version = base_version or 1
        fields = _differences(ctx, spec, row, fields, base_version, never_had=never_had)
    assert base_version is not None
    if base_version > (version := int(row.version)):
        raise Rejected("invalid_base_version", f"base_version {base_version} is newer than the server's "
                                               f"version {version}.")
    return _update(ctx, spec, row, base_version, fields)


def _differences(ctx: Context, spec: SyncTable, row: Any, fields: dict[str, Any], base: int, *,
                 never_had: bool = False) -> dict[str, Any]:
    """For a full write of an existing row: the fields whose values differ from the server's, less the device's
    stale copy of fields it may not write that someone else changed since `base` (the office raised an order's
    priority after the steward's copy: refused `read_only_field`, the steward's status change was lost), or,
    when the device `never_had` the server's copy (no base_version), that the server set at creation."""
    rules = rules_for(spec)
    if rules.create is None:
        raise Rejected("read_only_table", f"{spec.name} rows are not written in full from devices.")
    known = set(spec.column_names)
    # The device's copy of the server's columns (it re-sends its stored record with its edit): the timestamps
    # and, say, a transcript status that moved on since; refused, the whole edit was lost. The record the
    # answer carries shows them as stored.
    fields = {name: value for name, value in fields.items() if name not in known or name in rules.device_fields}
    only(fields, known - {"id"}, f"in {spec.name}")
    out = {}
    for name, value in fields.items():
        parsed = _parse_one(spec, name, value)
        if not same(parsed, getattr(row, name)):
            out[name] = value
    if out and base <= row.version:
        # An append-only row's fields are none of them writable: its stale copy of a field the server wrote
        # (the link a visit's delete cleared) is dropped likewise, so an unchanged re-send is harmless.
        allowed = rules.writable(ctx, row) if rules.writable is not None else frozenset()
        others = changed_since(spec, row, base, ctx.client_id)
        if never_had:
            others |= server_set(row)
        if stale := {name for name in out if name not in allowed} & others:
            out = {name: value for name, value in out.items() if name not in stale}
    if out and spec.append_only:
        raise Rejected("append_only", f"{spec.name} are append-only: record a new one instead of changing it.")
    return out


def _parse_one(spec: SyncTable, name: str, value: Any) -> Any:
    """A JSON value as the column's Python type (for comparisons), via the table model's validation."""
    try:
        return _adapter(spec.model, name).validate_python(value)
    except ValueError:
        return value


@cache
def _adapter(model: Any, name: str) -> TypeAdapter[Any]:
    # Built once per field: building one costs 30-50 us, and a push records what the server set on each of the
    # ~400 readings of a batch (`_server_set`), several fields each.
    return TypeAdapter(model.model_fields[name].annotation)


def _update(ctx: Context, spec: SyncTable, row: Any, base: int, fields: dict[str, Any]) -> Outcome:
    rules = rules_for(spec)
    if not fields:
        return Outcome("applied", row)
    if spec.append_only:
        raise Rejected("append_only", f"{spec.name} are append-only: record a new one instead of changing it.")
    assert rules.writable is not None and rules.update_model is not None and rules.apply is not None
    allowed = rules.writable(ctx, row)
    only(fields, allowed, f"in {spec.name} by {ctx.user.role.value}s")
    values = validate(rules.update_model, fields).model_dump(exclude_unset=True)
    foreign = changed_since(spec, row, base, ctx.client_id)
    effective: dict[str, Any] = {}
    pinned: dict[str, Any] = {}
    conflicts = []
    for name, value in values.items():
        current = getattr(row, name)
        if same(value, current):
            if name in rules.pinned:  # named with the server's value: still said (REST reads it the same way)
                pinned[name] = value
            continue
        if name in foreign:
            winner = "server" if name in spec.office_fields else "device"
            conflicts.append(ConflictEntry(name, "field", current, value, winner))
            if winner == "device":
                effective[name] = value
            elif name in rules.pinned:  # the server's value stays, and is still named: a priority or category
                pinned[name] = current  # changed in the same mutation must not move the SLA it kept
        else:
            effective[name] = value
    try:
        if effective:
            rules.apply(ctx, row, pinned | effective)
            ctx.session.add(row)
            _mark_own(ctx, row)
    except Rejected as exc:
        for entry in conflicts:  # the device's value did not apply after all
            entry.winner = "server"
            entry.kind = exc.code if entry.field in effective else entry.kind
        exc.conflicts = conflicts
        raise
    if conflicts:
        lost = [c.field for c in conflicts if c.winner == "server"]
        message = (f"Changed on the server too: {', '.join(str(c.field) for c in conflicts)}"
                   + (f"; the server kept {', '.join(str(f) for f in lost)}." if lost else "; your values won."))
        return Outcome("conflict", row, "field_conflict", message, conflicts)
    if foreign:
        return Outcome("merged", row)
    return Outcome("applied", row)


def _mark_own(ctx: Context, row: Any) -> None:
    """Record this device as the writer of the fields just changed, before the flush does it for good,
    so a later mutation of the same batch does not conflict with the device's own edit; at the version the
    flush gives the row (a row this batch creates is inserted at its first version, however often the batch
    writes it: marked at the next, a row made and edited offline claimed a version it never had, and the next
    edit from its real version by anyone else was a conflict, an office field's lost). Not the fields another
    mutation changed as a side effect (a deleted visit's link cleared on its notes): the flush records those as
    the server's, and marked here the device's, a later full write from the device's copy was refused."""
    changed = tracking.changed_fields(row)
    spec = spec_of(row)
    side = ctx.session.info.get(tracking.SIDE_EFFECTS, {}).get((spec.name, row.id), set()) if spec else set()
    changed = [name for name in changed if name not in side]
    if changed:
        at = row.version if sa_inspect(row).pending else row.version + 1
        versions = dict(row.field_versions or {})
        for name in changed:
            versions[name] = [at, str(ctx.client_id)]
        row.field_versions = versions


def _delete(ctx: Context, spec: SyncTable, id: uuid.UUID, base_version: int | None) -> Outcome:
    rules = rules_for(spec)
    row = ctx.get(spec, id)
    if row is None or not ctx.visible(spec, row):
        # Already gone (the device wanted exactly this), or never the caller's to see: answered alike, so that
        # a delete does not tell a steward which ids of other grids exist; nothing is deleted.
        return Outcome("applied", None)
    if rules.may_delete is None:
        raise Rejected("read_only_table" if rules.writable is None and rules.create is None else "forbidden",
                       rules.not_deletable)
    rules.may_delete(ctx, row)
    if base_version is not None and base_version > (version := int(row.version)):
        # As for an update: a version the row never had (a device whose copy is ahead of a restored database).
        # Applied, the delete lost the server's row with no line in the conflict log to put it back from.
        raise Rejected("invalid_base_version", f"base_version {base_version} is newer than the server's "
                                               f"version {version}.")
    conflicts = []
    if base_version is not None and not spec.append_only:
        foreign = changed_since(spec, row, base_version, ctx.client_id)
        if foreign:
            # The whole row as the server had it, not only the fields changed since the device's version: the
            # line is what is left of the row (a supervisor can put it back), and the blob sweep keeps the photos
            # and signature it names until the line is reviewed (they were deleted at the first sweep).
            kept = {c.key for c in sa_inspect(row).mapper.column_attrs} - BOOKKEEPING_FIELDS
            server = {name: getattr(row, name) for name in sorted(kept | foreign)}
            conflicts.append(ConflictEntry(None, "delete_wins", server, "deleted", "device"))
    if sa_inspect(row).pending:  # created earlier in this batch: write it first, then delete it as any row
        ctx.session.flush()
    if rules.before_delete is not None:
        rules.before_delete(ctx, row)
    ctx.session.delete(row)
    if conflicts:
        return Outcome("conflict", None, "delete_wins", "The row changed on the server since your version; "
                       "deletes win over updates, it is deleted.", conflicts)
    return Outcome("applied", None)


__all__ = ["Context", "Outcome", "Rejected", "apply", "changed_since", "validate", "wanted_rows"]
