"""Database engine, session and the column types every table shares (UUID ids, UTC timestamps)."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Engine, event, func, make_url
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DataError, DBAPIError, InvalidRequestError
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, create_engine

from api.settings import Settings

log = logging.getLogger(__name__)

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
    """A time-ordered UUIDv7 (RFC 9562): Unix milliseconds first, then a counter and random bits. Devices create
    ids offline with the same scheme (docs/sync-protocol.md); any UUID is accepted. Ids that grow with time
    insert at the end of a primary-key index: a push of 500 readings dirties a few index pages instead of
    one random page per row (README, push benchmark)."""
    return _uuid7()


_V7_FLAGS = (7 << 76) | (0b10 << 62)  # version 7, RFC variant
_v7_lock = threading.Lock()
_v7_last = (0, 0)  # (milliseconds, counter) of the last id


def _uuid7() -> uuid.UUID:
    """The method of Python 3.14's `uuid.uuid7` (RFC 9562 §6.2 method 1): 48 bits of milliseconds, a 42-bit
    counter that starts at a random value each millisecond and counts up within it, 32 random bits. Ids made
    one after the other sort in order; a burst borrows the next millisecond only when its counter runs out
    (the `uuid6` package borrows one for every id made in the same millisecond: 10,000 ids, 10 s ahead).
    Two details differ from 3.14's, both within the RFC: a counter that runs out starts the next millisecond
    at 0, and a clock that steps back keeps counting on the last millisecond."""
    global _v7_last
    tail = int.from_bytes(os.urandom(10))
    with _v7_lock:
        ms, counter = time.time_ns() // 1_000_000, (tail >> 32) & 0x1FF_FFFF_FFFF  # counter's top bit clear
        last_ms, last_counter = _v7_last
        if ms <= last_ms:
            ms, counter = last_ms, last_counter + 1
            if counter > 0x3FF_FFFF_FFFF:  # 42 bits used up: the next millisecond
                ms, counter = ms + 1, 0
        _v7_last = (ms, counter)
    value = (ms << 80) | ((counter >> 30) << 64) | ((counter & 0x3FFF_FFFF) << 32) | (tail & 0xFFFF_FFFF)
    return uuid.UUID(int=value | _V7_FLAGS)


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


# With the background checkpointer, the committing request checkpoints only past this many WAL pages (64 MB
# of 4 KB pages): a backstop, should the thread fall behind or an engine be used without it (tools, tests).
WAL_AUTOCHECKPOINT_BACKSTOP = 16384
# The background checkpointer starts the log again from its beginning once it holds this many pages (16 MB).
WAL_RESTART_FRAMES = 4096
WAL_RESTART_TRIES = 40


def _unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def folded(session: Session, column: Any) -> Any:
    """`column` for a search that ignores case: on SQLite lowered by Python (Unicode), as PostgreSQL's ILIKE
    compares; pair it with `.icontains(...)`, which lowers the query text too."""
    return func.unicode_lower(column) if session.get_bind().dialect.name == "sqlite" else column


def _sqlite_pragmas(wal_autocheckpoint: int | None, synchronous: str = "FULL") -> Any:
    def on_connect(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'NORMAL' if synchronous == 'NORMAL' else 'FULL'}")
        cursor.execute("PRAGMA busy_timeout=5000")
        # SQLite's own lower() and LIKE fold ASCII letters only (`Émile` does not match `émile`): searches
        # that ignore case call this instead (`api.db.folded`)
        dbapi_connection.create_function("unicode_lower", 1, _unicode_lower, deterministic=True)
        if wal_autocheckpoint is not None:
            cursor.execute(f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint)}")
        cursor.close()

    return on_connect


def sqlite_file(engine: Engine) -> bool:
    """Whether the engine is a SQLite database in a file (the kind with a write-ahead log)."""
    return engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")


class WalCheckpointer:
    """A daemon thread that checkpoints a SQLite database every `interval_s` (PASSIVE: it never waits for,
    or blocks, a reader or a writer; what it cannot copy yet waits for the next tick), and starts a long log
    again from its beginning between two writes (`_restart`).

    SQLite otherwise checkpoints inside the commit that takes the log past 1000 pages: with sync pushes
    that write some 5 MB of log per 500 mutations (new rows land on random pages of the id index), that
    was nearly every push, 22-25 ms of a 110 ms batch. Off the request path, one checkpoint also copies a
    page written by several commits once. `close()` stops it (idempotent) after a last checkpoint.
    """

    def __init__(self, engine: Engine, *, interval_s: float) -> None:
        self.engine, self.interval_s = engine, interval_s
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sqlite-checkpointer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run_once(self) -> tuple[int, int, int] | None:
        """One PASSIVE checkpoint: (busy, frames in the log, frames checkpointed), or None if it failed
        (logged; the next tick tries again)."""
        try:
            with self.engine.connect() as conn:
                busy, frames, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
                if busy == 0 and copied == frames >= WAL_RESTART_FRAMES:
                    self._restart(conn)
        except Exception:
            log.exception("SQLite checkpoint failed")
            return None
        finally:
            self.runs += 1
        return int(busy), int(frames), int(copied)

    @staticmethod
    def _restart(conn: Any) -> None:
        """Start the log again from its beginning, without ever making anyone wait long.

        A writer restarts the log only when its transaction begins with every frame copied, which under a
        steady stream of writes rarely happens: each checkpoint finishes while the next write is under way.
        The log then only grew, and past the backstop below the committing request checkpointed it itself:
        90-140 ms added to about one push batch in ten. A RESTART checkpoint needs the write lock and no
        reader left on the log; with no busy wait it gives up at once when either is taken (copying what it
        can, like PASSIVE), so it is tried a few times, a few milliseconds apart, to fall between two writes.
        Each try leaves only what was committed since the last one to copy under the write lock."""
        waited = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
        conn.exec_driver_sql("PRAGMA busy_timeout=0")
        try:
            for _ in range(WAL_RESTART_TRIES):
                if conn.exec_driver_sql("PRAGMA wal_checkpoint(RESTART)").one()[0] == 0:
                    return
                time.sleep(0.005)
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={int(waited)}")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.run_once()

    def close(self, timeout: float = 30.0) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            self.run_once()


class DatabaseConfigError(ValueError):
    """The configured database cannot be used as configured (its directory cannot be created, say)."""


def _refuse_nul(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    """SQLite stores text with NUL characters, which PostgreSQL refuses (its driver raises `DataError`): refuse
    them here the same way, so that a value is stored on one backend exactly when it is on the other (422
    `validation_error` from the API, `rejected` in a sync push) instead of a row only SQLite holds."""
    rows = parameters if executemany else [parameters]
    for row in rows:
        for value in (row.values() if isinstance(row, dict) else row or ()):
            if isinstance(value, str) and "\x00" in value:
                raise DataError(statement, parameters, ValueError("text cannot hold NUL (0x00) characters"))


def make_engine(settings: Settings) -> Engine:
    """Create the engine for the configured database, creating the SQLite directory if needed."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        # The path as SQLAlchemy reads it from the URL (`%3F` is a `?` in a folder's name, `api.urls.sqlite_url`):
        # from the URL's text, a data directory named so was made as a stray `q%3Fx` folder.
        path = make_url(url).database or ""
        if path and path != ":memory:":
            from pathlib import Path

            directory = Path(path).parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a regular file in the way, a read-only or virtual file system
                raise DatabaseConfigError(f"cannot create the directory {directory}: {exc.strerror or exc}") from exc
        # hide_parameters: an error's text (logged, or kept as a job's failure reason) never carries the row's
        # values: a transcript's text and the numbers in it reached the log and stewards that way.
        engine = create_engine(url, connect_args={"check_same_thread": False}, hide_parameters=True)
        backstop = WAL_AUTOCHECKPOINT_BACKSTOP if settings.sqlite_checkpoint_interval_s > 0 else None
        event.listen(engine, "connect", _sqlite_pragmas(backstop, settings.sqlite_synchronous))
        event.listen(engine, "before_cursor_execute", _refuse_nul)
        return engine
    try:
        # Sessions in UTC whatever the server's TimeZone (initdb takes the host's, Asia/Shanghai on a Chinese
        # host): timestamps are read back as the UTC instants they are, and one near the end of year 9999
        # cannot come back as year 10000, which Python cannot hold.
        options = " ".join(filter(None, [str(make_url(url).query.get("options") or ""), "-c timezone=UTC"]))
        return create_engine(url, pool_size=settings.db_pool_size, max_overflow=settings.db_pool_size,
                             pool_pre_ping=True, hide_parameters=True, connect_args={"options": options})
    except ValueError as exc:  # a URL SQLAlchemy cannot take apart (a port `54x2`): a traceback in every command
        raise DatabaseConfigError(f"the URL cannot be read: {exc}") from exc


def create_database(admin_url: str, prefix: str) -> str:
    """Create an empty PostgreSQL database with a unique name (tests, `steward bench`); returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str, *, tries: int = 50, wait_s: float = 0.2) -> None:
    """Drop a database made by `create_database`, ending sessions a test left open.

    `WITH (FORCE)` must signal every other process in the database, and a role that is neither superuser nor in
    `pg_signal_backend` may not signal an autovacuum worker (it has no role): the drop failed with
    InsufficientPrivilege whenever autovacuum was visiting the fresh database. A plain DROP asks autovacuum to
    stop by itself; whichever way is refused is tried again until the process is gone."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            _drop(conn, name, tries, wait_s)
    finally:
        admin.dispose()


_INSUFFICIENT_PRIVILEGE, _OBJECT_IN_USE = "42501", "55006"


def _drop(conn: Any, name: str, tries: int, wait_s: float) -> None:
    statements = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'DROP DATABASE IF EXISTS "{name}"']
    for attempt in range(tries):
        statement = statements[attempt % 2]
        try:
            conn.exec_driver_sql(statement)
            return
        except DBAPIError as exc:
            state = getattr(exc.orig, "sqlstate", None)
            if state not in (_INSUFFICIENT_PRIVILEGE, _OBJECT_IN_USE) or attempt == tries - 1:
                raise
            log.info("dropping %s waits for another process (%s): %s", name, state, exc.orig)
            time.sleep(wait_s)


def session_scope(engine: Engine) -> Iterator[Session]:
    """Yield a session that rolls back whatever was not committed."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise


def write_turn(session: Session) -> None:
    """Take the change sequence now, as a sync push does before its checks (and, on SQLite, the write lock):
    a REST create's scope checks then see every push, grid change and reassignment committed before it, and
    none commits until it is done. Checked first and written after, a steward's reading for an order the
    office had just moved to another steward was stored, which the same push would have rejected."""
    from sync.tracking import allocate_seq  # sync's models import this module

    allocate_seq(session)


def lock_for_update(session: Session, obj: SQLModel) -> None:
    """Before a REST write of a synced row: take the change sequence, then the row (`lock_row`), the order a
    sync push takes them in. Locked in the other order, the two deadlocked on PostgreSQL; not locked at all,
    an edit made from the copy read before a push committed gave two states of the row one version number and
    lost the push's field record, so the device's next edit overwrote the office's without a conflict."""
    write_turn(session)
    lock_row(session, obj)


def refuse_taken_id(session: Session, model: Any, id: uuid.UUID | None, what: str, *, user: Any = None) -> None:
    """A create that names its id (a device's UUID) must not take one already used, nor one deleted: a row
    deleted through sync stays deleted (a handheld that still had it would otherwise see it come back), as a
    push's create of a deleted id is refused too. 409 `already_exists` / `deleted`. With `user`, a row deleted
    out of their sight (another grid's) is answered as a live one, as a push answers it: `deleted` told a
    steward which ids of other grids had existed."""
    if id is None:
        return
    from api.errors import Conflict
    from sync.models import Tombstone  # sync's models import this module

    taken = Conflict(f"A {what} with id {id} already exists.", code="already_exists")
    if session.get(model, id) is not None:
        raise taken
    if session.get(Tombstone, (model.__tablename__, id)) is not None:
        if user is not None and not _tombstone_reaches(session, user, model.__tablename__, id):
            raise taken
        raise Conflict(f"The {what} with id {id} was deleted; a new one needs a new id.", code="deleted")


def _tombstone_reaches(session: Session, user: Any, table: str, id: uuid.UUID) -> bool:
    """Whether the delete of this row is routed to the user's devices (they could see the row)."""
    from sqlmodel import select

    from sync.models import Tombstone
    from sync.pull import tombstone_route

    stmt = select(Tombstone.row_id).where(Tombstone.table_name == table, Tombstone.row_id == id,
                                          tombstone_route(user))
    return session.exec(stmt).first() is not None


def sqlite_write_lock(connection: Any) -> None:
    """On SQLite, take the database's write lock now (`BEGIN IMMEDIATE`, waiting up to the busy timeout) unless
    a transaction is open: its driver starts one only at the first write, so reads made before it could be
    stale by then. Nothing on other databases."""
    if connection.dialect.name == "sqlite":
        driver = connection.connection.driver_connection
        if driver is not None and not driver.in_transaction:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def lock_row(session: Session, obj: SQLModel) -> None:
    """Re-read `obj` so that no one else can change its row until this session ends: checks made next see
    what a concurrent request committed, and nothing commits in between. PostgreSQL: `SELECT ... FOR
    UPDATE`. SQLite has no row locks and ignores `FOR UPDATE` (its driver runs reads outside a transaction):
    the database's write lock is taken first (`BEGIN IMMEDIATE`, waiting up to the busy timeout), which
    orders this write after any other in flight."""
    sqlite_write_lock(session.connection())
    try:
        session.refresh(obj, with_for_update=True)
    except InvalidRequestError as gone:  # deleted meanwhile (a push's delete committed while this waited)
        from api.errors import NotFound

        raise NotFound(f"This {type(obj).__name__.lower()} was deleted meanwhile.") from gone


def one_snapshot(session: Session) -> None:
    """Run the session's next reads in one snapshot of the database, until the session ends: figures computed
    by several statements then agree with each other (the console's dashboard: an order committed between two
    of its statements was in the counts by category and not in the total). Ends the session's transaction (call
    it with nothing to write). PostgreSQL: REPEATABLE READ. SQLite: an explicit BEGIN (its driver starts no
    transaction for reads, so each statement saw the latest commit)."""
    session.rollback()
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        return
    connection = session.connection()
    driver = connection.connection.driver_connection
    if driver is not None and not driver.in_transaction:
        connection.exec_driver_sql("BEGIN")


def reads_without_transaction(session: Session) -> None:
    """Run the session's next statements each on its own, outside a transaction (autocommit).

    For read-only hot paths whose statements are written to be correct each on its own snapshot (the sync
    pull): on PostgreSQL a transaction costs two more round trips per request, `BEGIN` and the `ROLLBACK`
    when the connection goes back to the pool, and under READ COMMITTED it adds no consistency between
    statements. SQLite's driver starts no transaction for reads anyway. Call it first, before the session
    touches the database; `session.commit()` ends it, and the next statement opens a normal transaction
    on a connection whose isolation level the pool has reset.
    """
    session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})




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


__all__ = ["BOOKKEEPING_FIELDS", "DatabaseConfigError", "Field", "SQLModel", "Session", "UTCDateTime", "Versioned",
           "make_engine", "new_id", "ts_field", "utcnow"]
