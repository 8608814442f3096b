"""Run Alembic migrations from inside the package (no alembic.ini needed at run time)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from api.db import sqlite_write_lock

MIGRATIONS = Path(__file__).with_name("migrations")
LOCK_TIMEOUT_S = 5  # PostgreSQL: the longest a migration waits for one table lock, ...
LOCK_TRIES = 3  # ... and how many times it tries
MIGRATION_LOCK = 0x5354_4557_4442  # the PostgreSQL advisory lock key of migrations ("STEWDB")
# A relative revision as Alembic reads one (its `_relative_destination`): `[branch@][start]+N` or `-N`
_RELATIVE = re.compile(r"(?:(?P<branch>.+?)@)?(?P<start>\w+)?(?P<steps>[+-]\d+)")


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations and this database."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to `revision` (the newest by default), in one transaction."""
    _migrate(engine, lambda config: command.upgrade(config, revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back down to `revision` ("base": nothing), in one transaction."""
    _migrate(engine, lambda config: command.downgrade(config, revision))


def _migrate(engine: Engine, run: Callable[[Config], None]) -> None:
    """`_migrate_once`, again after a short wait when PostgreSQL could not lock a table in time (see there)."""
    from sqlalchemy.exc import OperationalError

    for attempt in range(1, LOCK_TRIES + 1):
        try:
            _migrate_once(engine, run)
            return
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "55P03" or attempt == LOCK_TRIES:  # lock_not_available
                if getattr(exc.orig, "sqlstate", None) == "55P03":
                    raise RuntimeError(
                        f"Could not lock a table within {LOCK_TIMEOUT_S} s, {LOCK_TRIES} times: a long "
                        "transaction holds it (a report, a stuck session: see pg_stat_activity). End it, or "
                        "stop the service, and upgrade again; nothing was changed.") from exc
                raise
            time.sleep(2)


def _migrate_once(engine: Engine, run: Callable[[Config], None]) -> None:
    """Run Alembic on one connection, in one transaction. On SQLite, which alters a table by copying it and
    dropping the original, with foreign keys off around the transaction (they cannot change inside one) and
    checked before the commit: SQLite's own procedure for schema changes. With them on, dropping a table
    that other rows refer to failed ("FOREIGN KEY constraint failed" taking a database with data back below
    0002)."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                # Several API containers start together and each runs `steward db upgrade`: the second failed
                # on the first one's half-made tables (duplicate type alembic_version). It waits here for the
                # first one's commit instead, then finds the schema current. SQLite: its write lock, taken now
                # rather than at the first write (after both had read "no version").
                if not sqlite:
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                    # A table lock waited for without limit (behind a long transaction) queued every reader
                    # of that table behind it: sync pulls stalled for as long as the transaction lasted.
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")
                else:
                    sqlite_write_lock(conn)
                config.attributes["connection"] = conn
                run(config)
                if sqlite and (broken := conn.exec_driver_sql("PRAGMA foreign_key_check").first()) is not None:
                    raise RuntimeError(f"The migration left a row of {broken[0]} pointing at a missing row of "
                                       f"{broken[2]}; nothing was changed.")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_behind(current: str, target: str) -> bool:
    """Whether `target` names a revision older than `current` (an upgrade to it would change nothing); a
    relative one (`head-1`, `base+2`, `0012+3`, `+1`) as the revision it counts out to."""
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    resolved = _resolve_relative(script, current, target)
    if resolved is None:  # past the head, below base, on a branch: Alembic itself answers those
        return False
    try:
        wanted = script.get_revision(resolved)
    except CommandError:  # not one revision (unknown, ambiguous): Alembic itself answers those
        return False
    if wanted is None:  # "base": before every revision, so behind any database that has one
        return resolved == "base"
    if wanted.revision == current:
        return False
    return any(rev.revision == wanted.revision for rev in script.iterate_revisions(current, "base"))


def _resolve_relative(script: ScriptDirectory, current: str, target: str) -> str | None:
    """The revision a relative `target` names, counted along the (linear) history from its start (a revision,
    `head`, `base`, or `current` when it names none) as Alembic's upgrade counts it; "base" for the one before
    the first. A target that is not relative comes back as it is; None where the count leaves the history or
    the history branches."""
    from alembic.util import CommandError

    match = _RELATIVE.fullmatch(target.strip())
    if match is None:
        return target
    if match["branch"]:  # `branch@+1`: this history has no branch labels
        return None
    newest_first = list(script.walk_revisions())
    if any(rev.down_revision != (older.revision if older else None)
           for rev, older in zip(newest_first, [*newest_first[1:], None], strict=True)):
        return None  # branches or merges: no one line to count along
    history = ["base", *(rev.revision for rev in reversed(newest_first))]
    start = match["start"] or current
    try:
        found = None if start == "base" else script.get_revision(start)
    except CommandError:
        return None
    at = history.index(found.revision) if found is not None else 0
    at += int(match["steps"])
    return history[at] if 0 <= at < len(history) else None


def known_revision(revision: str) -> bool:
    """Whether this code has the migration `revision` (a database upgraded by a newer release has one it lacks)."""
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision(revision) is not None
    except CommandError:
        return False


def head_revision() -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
