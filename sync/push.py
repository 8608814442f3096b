"""The push: a batch of mutations from one device, applied exactly once, each in its own savepoint."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, StatementError
from sqlmodel import Session, select

from api import access
from api.db import utcnow
from api.errors import Conflict, PayloadTooLarge
from api.settings import Settings
from api.users.models import User
from sync import cursor as cursors
from sync import mutations
from sync.cursor import InvalidCursor
from sync.models import Mutation, PushRequest, SyncClient, SyncConflict
from sync.pull import new_snapshot
from sync.registry import BY_NAME, SyncTable, record, wire_value
from sync.rules import ConflictEntry, Rejected, shown
from sync.tracking import SIDE_EFFECTS, TARGETS, UNTARGETED, WRITER, allocate_seq, database_id, insert_ignore

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    """A Python value as the JSON the conflict log stores (the same text the pull sends). A device's values
    for a row deleted on the server are logged unchecked: a lone surrogate among them (`"\\ud800"` is valid
    JSON) is kept as the text `\\ud800`, as the push's answer writes it. Stored as it came, it broke every
    page of GET /sync/conflicts that held the line (500: no UTF-8 for it)."""
    if isinstance(value, dict):
        return {_encodable(k): _encodable(wire_value(v)) for k, v in value.items()}
    return _encodable(wire_value(value))


def _encodable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    return value


def _client(session: Session, client_id: uuid.UUID, user: User) -> SyncClient:
    """The client row, created on first use and locked for this push; bound to one user."""
    now = utcnow()
    table = SyncClient.__table__  # type: ignore[attr-defined]
    insert_ignore(session.connection(), table, {"client_id": client_id, "user_id": user.id, "last_mutation_id": 0,
                                                "created_at": now, "updated_at": now})
    client = session.exec(select(SyncClient).where(SyncClient.client_id == client_id).with_for_update()).one()
    if client.user_id != user.id:
        raise Conflict("This client_id belongs to another user; a device makes a new client_id for each user "
                       "who signs in on it.", code="client_id_in_use")
    return client


def _current(ctx: mutations.Context, spec: SyncTable, id: uuid.UUID) -> dict[str, Any] | None:
    row = ctx.get(spec, id)
    if row is None or not ctx.visible(spec, row):
        return None
    return record(spec, row)


def _log(session: Session, ctx: mutations.Context, m: Mutation, spec: SyncTable, id: uuid.UUID,
         server_version: int | None, entries: list[ConflictEntry]) -> None:
    for entry in entries:
        session.add(SyncConflict(user_id=ctx.user.id, client_id=ctx.client_id, mutation_id=m.mutation_id,
                                 table_name=spec.name, row_id=id, field=entry.field, kind=entry.kind,
                                 base_version=m.base_version, server_version=server_version,
                                 server_value=_jsonable(entry.server_value),
                                 device_value=_jsonable(entry.device_value), winner=entry.winner))


def _result(m: Mutation, status: str, *, version: int | None = None, reason: str | None = None,
            message: str | None = None, record: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"mutation_id": m.mutation_id, "status": status, "version": version, "reason": reason,
            "message": message, "record": record}


def _rejected(m: Mutation, reason: str, message: str) -> dict[str, Any]:
    return _result(m, "rejected", reason=reason, message=message)


class _Unsafe(Exception):
    """A mutation was refused after it had changed something, or failed: the batch must be redone with
    savepoints."""


@dataclass
class _Pending:
    """A result whose `record` and `version` are filled in once the batch is flushed."""

    result: dict[str, Any]
    spec: SyncTable | None = None
    row: Any | None = None


def _row_after(row: Any) -> Any | None:
    if row is None or isinstance(row, mutations.StagedRow):
        return row
    state = inspect(row)
    return None if state.deleted or state.was_deleted or state.detached else row


def _run(session: Session, ctx: mutations.Context, m: Mutation, *, savepoint: bool) -> _Pending:
    """Apply one mutation; with `savepoint`, in its own savepoint, flushed at once."""
    spec = BY_NAME.get(m.table)
    if spec is None:
        return _Pending(_rejected(m, "unknown_table", f"Unknown table {shown(m.table)}; tables: {', '.join(BY_NAME)}."))
    row_id = _uuid_or_none(m.id)
    if row_id is None:
        return _Pending(_rejected(m, "invalid_id", f"{shown(m.id)} is not a UUID."))
    before = ctx.get(spec, row_id)
    if not savepoint and _written(session, before):
        # Written by an earlier mutation of the batch: flushed first, as the savepoint path flushes after each
        # mutation, so the row's version steps once per mutation on both paths. Flushed once at the end, a
        # third update of one row from base, base+1, base+2 was refused (`invalid_base_version`) on the fast
        # path and applied on the other, and the device dropped its last edit.
        session.flush()
    server_version = before.version if before is not None else None
    targets: set[tuple[str, uuid.UUID]] = session.info.setdefault(TARGETS, set())
    if savepoint:
        targets.clear()
    targets.add((spec.name, row_id))
    # What the row held before: a rule that refuses after changing it makes the fast path unsafe.
    guard = (len(session.new), dict(vars(before)) if before is not None else None)
    nested = session.begin_nested() if savepoint else None
    try:
        outcome = mutations.apply(ctx, spec, m.op, row_id, m.base_version, m.fields)
        _log(session, ctx, m, spec, row_id, server_version, outcome.conflicts)
        if nested is not None:
            session.flush()
            nested.commit()
    except Rejected as exc:
        if nested is not None:
            nested.rollback()
        elif guard != (len(session.new), dict(vars(before)) if before is not None else None):
            raise _Unsafe(m.mutation_id) from exc
        _log(session, ctx, m, spec, row_id, server_version, exc.conflicts)
        return _Pending(_result(m, "rejected", reason=exc.code, message=exc.message), spec, ctx.get(spec, row_id))
    except (IntegrityError, StatementError, DBAPIError) as exc:
        if nested is None or isinstance(exc, OperationalError):
            # A deadlock, a serialization failure or a lost connection is no fault of this mutation: refused
            # for good, it left the device's change undone (a note delete racing a transcript correction). The
            # whole push answers 503 instead, nothing of it committed, and the device sends it again.
            raise
        nested.rollback()
        detail = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
        return _Pending(_result(m, "rejected", reason="constraint",
                                message=f"The database refused the change: {detail}"),
                        spec, ctx.get(spec, row_id))
    except Exception as exc:
        # A bug in a rule must not fail the whole request: the device would resend the same batch forever
        # and its queue would never move. Only this mutation is refused; the stack goes to the log.
        if nested is None:
            raise _Unsafe(m.mutation_id) from exc
        nested.rollback()
        log.exception("push: mutation %s (%s %s %s) of client %s failed", m.mutation_id, m.op, spec.name, row_id,
                      ctx.client_id)
        return _Pending(_result(m, "rejected", reason="server_error",
                                message="The server failed to apply this change; it was not applied and has been "
                                        "reported."),
                        spec, ctx.get(spec, row_id))
    if outcome.row is None:
        ctx.deleted(spec, row_id)
    else:
        ctx.created(spec, outcome.row)
    return _Pending(_result(m, outcome.status, reason=outcome.reason, message=outcome.message), spec, outcome.row)


def _written(session: Session, row: Any | None) -> bool:
    """Whether the batch has changed the ORM row and not flushed it yet (created, or changed in memory)."""
    if row is None or isinstance(row, mutations.StagedRow):
        return False
    state = inspect(row)
    return bool(state.pending or (state.persistent and session.is_modified(row, include_collections=False)))


def _apply(session: Session, ctx: mutations.Context, body: PushRequest, last: int, *, savepoints: bool
           ) -> list[_Pending]:
    out = []
    for m in body.mutations:
        if m.mutation_id > last:
            out.append(_run(session, ctx, m, savepoint=savepoints))
            continue
        spec = BY_NAME.get(m.table)
        row_id = _uuid_or_none(m.id)
        row = ctx.get(spec, row_id) if spec is not None and row_id is not None else None
        out.append(_Pending(_result(m, "duplicate"), spec, row))
    return out


def _uuid_or_none(value: str) -> uuid.UUID | None:
    if not value.isascii():  # `uuid.UUID` reads other scripts' digits too: the row would get another id
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _context(session: Session, settings: Settings, user: User, body: PushRequest, last: int, *, bulk: bool
             ) -> mutations.Context:
    ctx = mutations.Context(session=session, settings=settings, user=user, client_id=body.client_id)
    # Each id parsed once; a malformed one names no row (`_run` rejects its mutation as invalid_id).
    parsed = [(m, _uuid_or_none(m.id)) for m in body.mutations]
    targets = [(m.table, i, m.fields if m.mutation_id > last else {}) for m, i in parsed if i is not None]
    if bulk:
        named = Counter((t, i) for t, i, _ in targets)
        ctx.bulk = {(m.table, i) for m, i in parsed
                    if i is not None and m.mutation_id > last and m.op == "upsert" and m.table in BY_NAME
                    and BY_NAME[m.table].append_only and named[(m.table, i)] == 1}
    wanted, links = mutations.wanted_rows(targets)
    ctx.prefetch({t: ids for t, ids in wanted.items() if t in BY_NAME},
                 {t: ids for t, ids in links.items() if t in BY_NAME})
    return ctx


def push(*, session: Session, settings: Settings, user: User, body: PushRequest) -> dict[str, Any]:
    """Apply a device's batch in one transaction; returns the push response.

    Fast path: every mutation is checked and applied in memory and the batch is flushed once. If the
    database refuses the flush (a constraint no check foresaw) or a mutation fails, the batch is rolled
    back and applied again with a savepoint per mutation, so only the guilty mutation is rejected.
    """
    if len(body.mutations) > settings.sync_push_max_mutations:
        raise PayloadTooLarge(f"A push holds at most {settings.sync_push_max_mutations} mutations; split the "
                              "queue into several pushes.")
    try:
        state = cursors.decode(body.cursor, settings.secret_key) if body.cursor else None
        damaged = False
    except InvalidCursor:  # the mutations still apply; the cursor goes back as it came (below)
        state, damaged = None, True
    office = access.is_office(user)
    seq = allocate_seq(session)  # the change-sequence lock first: pushes run one after the other
    client = _client(session, body.client_id, user)
    last = client.last_mutation_id
    session.info[WRITER] = body.client_id
    try:
        batch = session.begin_nested()
        try:
            ctx = _context(session, settings, user, body, last, bulk=True)
            pending = _apply(session, ctx, body, last, savepoints=False)
            # The session's rows first: a new reading may name a visit created in the same batch (a steward's
            # visit and the readings taken during it), and its foreign key needs the visit written. The other
            # way round, that batch, the commonest of a field day, went down the savepoint path every time.
            session.flush()
            ctx.insert_staged(seq)
            batch.commit()
        except Exception:  # a refused flush, or a mutation that failed: find it with a savepoint per mutation
            batch.rollback()
            for key in (TARGETS, UNTARGETED, SIDE_EFFECTS):
                session.info.pop(key, None)
            ctx = _context(session, settings, user, body, last, bulk=False)
            pending = _apply(session, ctx, body, last, savepoints=True)
        results = []
        for p in pending:
            row = _row_after(p.row)
            visible = row is not None and p.spec is not None and ctx.visible(p.spec, row)
            rec = record(p.spec, row) if visible and p.spec is not None else None
            results.append(p.result | {"record": rec, "version": rec["version"] if rec else None})
        fresh = [m.mutation_id for m in body.mutations if m.mutation_id > last]
        if fresh:
            client.last_mutation_id = fresh[-1]
        client.updated_at = utcnow()
        session.add(client)
        session.commit()
    finally:
        for key in (WRITER, TARGETS, UNTARGETED, SIDE_EFFECTS):
            session.info.pop(key, None)
    # A cursor of another user or role (a shared handheld, a steward made supervisor) goes back as it came:
    # the next pull sees the mismatch and answers `reset: true`, so the device drops what it may no longer
    # hold. A fresh snapshot here would have looked like any first page, and the old rows would have stayed.
    # A damaged one too: the next pull answers `invalid_cursor`, and the device starts again without one.
    if damaged:
        cursor = body.cursor
    else:
        if state is None:  # a device that never pulled: its first pull is a snapshot
            state = new_snapshot(user, office, seq, database_id(session))
        cursor = cursors.encode(state.with_(client_id=body.client_id), settings.secret_key)
    return {"last_mutation_id": client.last_mutation_id, "cursor": cursor, "results": results}
