"""The engine's SQLite settings and the background checkpointer of a served app."""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from api.app import create_app
from api.db import (
    WAL_AUTOCHECKPOINT_BACKSTOP,
    WalCheckpointer,
    _drop,
    create_database,
    drop_database,
    make_engine,
    new_id,
    sqlite_file,
)
from api.network.models import Station
from api.notices.sms import LoggingSender
from api.settings import Settings
from tests.utils.asserts import assert_error
from tests.utils.factories import World


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'steward.db'}", data_dir=tmp_path,
                    secret_key="k" * 32, proactive_interval_minutes=0, speech_queue="off", **overrides)


def _autocheckpoint(settings: Settings) -> int:
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())
    finally:
        engine.dispose()


def test_commits_leave_checkpoints_to_the_thread_unless_it_is_off(tmp_path: Path) -> None:
    assert _autocheckpoint(_settings(tmp_path)) == WAL_AUTOCHECKPOINT_BACKSTOP
    assert _autocheckpoint(_settings(tmp_path, sqlite_checkpoint_interval_s=0)) == 1000  # SQLite's own


def _write_rows(engine: Engine, rows: int, size: int) -> None:
    """A table `t` and `rows` commits of one row of about `size` bytes each: a log of that many pages or so."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    for n in range(rows):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": "x" * size + str(n)})


def test_a_checkpoint_copies_the_committed_log_into_the_database(tmp_path: Path) -> None:
    engine = make_engine(_settings(tmp_path))
    try:
        _write_rows(engine, 20, 2000)
        checkpointer = WalCheckpointer(engine, interval_s=60)
        busy, frames, copied = checkpointer.run_once() or (1, 0, -1)
        assert busy == 0 and frames > 20 and copied == frames  # nothing was reading: all of it
        assert checkpointer.run_once() == (0, frames, frames)  # nothing new since
        assert checkpointer.runs == 2
    finally:
        engine.dispose()
    # the rows are in the database file itself: readable with the log gone
    (tmp_path / "steward.db-wal").unlink(missing_ok=True)
    plain = create_engine(f"sqlite:///{tmp_path / 'steward.db'}")
    with plain.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 20
    plain.dispose()


def _log_frames(engine: Engine) -> int:
    """Frames in the write-ahead log (a PASSIVE checkpoint, which copies them and says how many there are)."""
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()[1])


def test_a_long_log_starts_again_from_its_beginning_between_two_writes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer restarts the log only if it begins with every frame copied. Under steady writes each
    checkpoint ends while the next write is under way, whose commit adds frames: the log only grew, until a
    commit paid for a checkpoint itself. The checkpointer now waits (never blocking anyone) for the moment
    between two writes, and the write after it starts the log again from its beginning."""
    import sqlite3
    import threading
    import time

    monkeypatch.setattr("api.db.WAL_RESTART_FRAMES", 30)
    monkeypatch.setattr("api.db.WAL_RESTART_TRIES", 200)  # up to a second for the writer below to commit
    engine = make_engine(_settings(tmp_path))
    try:
        _write_rows(engine, 40, 3000)
        writing = threading.Event()

        def write_under_way() -> None:  # another request's write, in progress while the checkpoint runs
            other = sqlite3.connect(tmp_path / "steward.db", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO t (v) VALUES (?)", ("y" * 3000,))
            writing.set()
            time.sleep(0.05)
            other.execute("COMMIT")
            other.close()

        writer = threading.Thread(target=write_under_way)
        writer.start()
        assert writing.wait(5)
        busy, frames, copied = WalCheckpointer(engine, interval_s=60).run_once() or (1, 0, -1)
        writer.join()
        assert busy == 0 and copied == frames > 30
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (v) VALUES ('next')"))
        assert _log_frames(engine) < 10  # the next write went to the log's beginning
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 42
    finally:
        engine.dispose()


def test_the_checkpointer_never_waits_for_a_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    monkeypatch.setattr("api.db.WAL_RESTART_FRAMES", 30)
    engine = make_engine(_settings(tmp_path))
    try:
        _write_rows(engine, 40, 3000)
        reader = sqlite3.connect(tmp_path / "steward.db", isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (40,)  # reading from the log
        busy, frames, copied = WalCheckpointer(engine, interval_s=60).run_once() or (1, 0, -1)
        assert busy == 0 and copied == frames > 30  # copied; the restart gave up rather than wait
        with engine.connect() as conn:  # and the engine's connections wait for locks as before
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 5000
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (40,)
        reader.execute("COMMIT")
        reader.close()
    finally:
        engine.dispose()


def test_a_failed_checkpoint_is_logged_and_the_thread_goes_on(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    broken = create_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'steward.db'}")
    checkpointer = WalCheckpointer(broken, interval_s=60)
    with caplog.at_level(logging.ERROR, logger="api.db"):
        assert checkpointer.run_once() is None
    assert checkpointer.runs == 1 and "SQLite checkpoint failed" in caplog.text
    broken.dispose()


def test_the_served_app_checkpoints_in_the_background_and_stops_on_shutdown(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, sqlite_checkpoint_interval_s=0.05), sms_sender=LoggingSender())
    with TestClient(app) as client:
        checkpointer = app.state.wal_checkpointer
        assert isinstance(checkpointer, WalCheckpointer) and sqlite_file(app.state.engine)
        assert client.get("/healthz").status_code == 200
        for _ in range(200):  # it ticks every 50 ms
            if checkpointer.runs >= 2:
                break
            checkpointer._stop.wait(0.05)
        assert checkpointer.runs >= 2
    assert not checkpointer._thread.is_alive()
    checkpointer.close()  # again: nothing happens
    assert not checkpointer._thread.is_alive()


def test_no_checkpointer_for_an_app_handed_an_engine_or_with_it_off(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    engine = make_engine(settings)
    try:
        with TestClient(create_app(settings, engine=engine, sms_sender=LoggingSender())) as client:
            assert client.app.state.wal_checkpointer is None  # type: ignore[attr-defined]
    finally:
        engine.dispose()
    off = create_app(_settings(tmp_path, sqlite_checkpoint_interval_s=0), sms_sender=LoggingSender())
    with TestClient(off):
        assert off.state.wal_checkpointer is None
    memory = create_app(Settings(database_url="sqlite://", data_dir=tmp_path, secret_key="k" * 32,
                                 proactive_interval_minutes=0, speech_queue="off"), sms_sender=LoggingSender())
    with TestClient(memory):
        assert memory.state.wal_checkpointer is None  # an in-memory database has no log


def test_new_ids_are_time_ordered_uuid7() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert all(type(i) is uuid.UUID and i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == len(ids)
    # made one after the other, they sort in the order they were made, as UUIDs and as the text in the database
    assert ids == sorted(ids) and [i.hex for i in ids] == sorted(i.hex for i in ids)
    # the first 48 bits are the Unix time in milliseconds: a burst counts within the millisecond, never ahead
    assert before <= ids[0].int >> 80 <= ids[-1].int >> 80 <= after


def test_new_ids_from_several_threads_are_unique_and_each_thread_s_in_order() -> None:
    def make() -> list[uuid.UUID]:
        return [new_id() for _ in range(5000)]

    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: make(), range(4)))
    assert all(ids == sorted(ids) for ids in made)
    assert len({i for ids in made for i in ids}) == 4 * 5000


def test_text_with_nul_is_refused_the_same_way_on_both_backends(client: TestClient, world: World,
                                                                session: Session) -> None:
    """Regression: PostgreSQL refuses NUL in text (422), SQLite stored it: one product, two behaviours, and a
    row only one backend could hold. SQLite's engine now refuses it as PostgreSQL's driver does."""
    r = client.patch(f"/api/v1/stations/{world.station.id}", json={"name": "a\x00b"},
                     headers=world.headers(world.admin))
    assert_error(r, 422, "validation_error")
    session.expire_all()
    assert "\x00" not in session.get(Station, world.station.id).name  # type: ignore[union-attr]
    visit = {"mutation_id": 1, "table": "visits", "op": "upsert", "id": str(uuid.uuid4()),
             "fields": {"household_id": str(world.household_a.id), "arrived_at": "2026-12-01T08:00:00Z",
                        "actions": "放气\x00"}}
    push = client.post("/api/v1/sync/push", headers=world.headers(world.steward_a),
                       json={"client_id": str(uuid.uuid4()), "schema_version": 1, "mutations": [visit]})
    assert push.status_code == 200 and push.json()["results"][0]["status"] == "rejected", push.text


def test_a_commit_on_sqlite_is_synced_to_disk_unless_told_otherwise(tmp_path: Path) -> None:
    """Regression: SQLite ran WAL with `synchronous=NORMAL`, which may lose the last commits on a power cut:
    a push acknowledged to a handheld (which then drops its mutations) could vanish. FULL by default now."""
    for setting, expected in ((None, 2), ("NORMAL", 1)):
        settings = _settings(tmp_path)
        if setting is not None:
            settings = settings.model_copy(update={"sqlite_synchronous": setting})
        engine = make_engine(settings)
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == expected  # 2 FULL, 1 NORMAL
        finally:
            engine.dispose()


def test_postgresql_sessions_are_in_utc_whatever_the_server_s_time_zone(tmp_path: Path) -> None:
    """Regression: the engine took the server's TimeZone (a Chinese host's initdb sets Asia/Shanghai), and an
    order due 9999-12-31T23:00Z read back as year 10000, which failed every work-order list it was in."""
    from tests.conftest import POSTGRES_URL, create_postgres_database, drop_postgres_database

    if not POSTGRES_URL:
        pytest.skip("needs STEWARD_TEST_POSTGRES_URL")
    url = create_postgres_database()
    try:
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            name = conn.execute(text("SELECT current_database()")).scalar_one()
            conn.execute(text(f"ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Shanghai'"))
        admin.dispose()
        engine = make_engine(Settings(database_url=url + "?options=-c%20statement_timeout%3D5000",
                                      data_dir=tmp_path))
        with engine.connect() as conn:
            assert conn.execute(text("SHOW timezone")).scalar_one() == "UTC"
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "5s"  # the URL's own options
            far = conn.execute(text("SELECT TIMESTAMPTZ '9999-12-31 23:00:00+00'")).scalar_one()
            assert (far.year, far.hour, far.utcoffset()) == (9999, 23, timedelta(0))
        engine.dispose()
    finally:
        drop_postgres_database(url)


class _Refused(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"refused ({sqlstate})")
        self.sqlstate = sqlstate


class _Admin:
    """A connection whose first statements are refused the way PostgreSQL refuses them."""

    def __init__(self, *refusals: str) -> None:
        self.refusals, self.statements = list(refusals), []  # type: list[str], list[str]

    def exec_driver_sql(self, statement: str) -> None:
        self.statements.append(statement)
        if self.refusals:
            raise DBAPIError(statement, None, _Refused(self.refusals.pop(0)))


def test_dropping_a_test_database_waits_out_an_autovacuum_worker() -> None:
    """Regression (CI): `DROP DATABASE ... WITH (FORCE)` by a role outside pg_signal_backend failed with
    InsufficientPrivilege whenever autovacuum was visiting the database; a plain DROP stops autovacuum itself."""
    admin = _Admin("42501")
    _drop(admin, "steward_test_x", tries=5, wait_s=0)
    assert admin.statements == ['DROP DATABASE IF EXISTS "steward_test_x" WITH (FORCE)',
                                'DROP DATABASE IF EXISTS "steward_test_x"']
    busy = _Admin("42501", "55006", "42501")  # autovacuum, then a session of another role, both gone in time
    _drop(busy, "d", tries=5, wait_s=0)
    assert busy.statements[2:] == ['DROP DATABASE IF EXISTS "d" WITH (FORCE)', 'DROP DATABASE IF EXISTS "d"']


def test_dropping_a_database_gives_up_on_other_errors_and_after_its_tries() -> None:
    with pytest.raises(DBAPIError, match="42P01"):
        _drop(_Admin("42P01"), "d", tries=5, wait_s=0)
    stuck = _Admin(*["55006"] * 3)
    with pytest.raises(DBAPIError, match="55006"):
        _drop(stuck, "d", tries=3, wait_s=0)
    assert len(stuck.statements) == 3


def test_a_created_database_is_dropped_with_a_session_still_open_in_it() -> None:
    from tests.conftest import POSTGRES_URL, postgres_admin_url

    if not POSTGRES_URL:
        pytest.skip("needs STEWARD_TEST_POSTGRES_URL")
    url = create_database(postgres_admin_url(), "steward_test")
    name = make_url(url).database
    left_open = create_engine(url)
    conn = left_open.connect()
    conn.execute(text("SELECT 1"))  # a test that forgot to close its connection
    drop_database(postgres_admin_url(), str(name))
    conn.invalidate()  # the server ended it
    left_open.dispose()
    check = create_engine(postgres_admin_url())
    with check.connect() as c:
        assert c.execute(text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name}).scalar_one() == 0
    check.dispose()
