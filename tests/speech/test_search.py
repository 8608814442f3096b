"""The SQLite search index: writes find their row through a key, and an index of the old shape is replaced."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlmodel import Session

from api.app import create_app
from api.settings import Settings
from speech.models import Transcript
from speech.search import ensure_search_index
from tests.speech.service_helpers import make_transcript
from tests.utils.factories import World, make_world


@pytest.fixture
def sqlite_engine(engine: Engine) -> Engine:
    if engine.dialect.name != "sqlite":
        pytest.skip("the FTS5 index is SQLite's (PostgreSQL's trigram index is a plain index)")
    return engine


@pytest.fixture
def quiet(settings: Settings) -> Settings:  # no transcription queue: nothing loads Whisper
    return settings.model_copy(update={"speech_queue": "off"})


@pytest.fixture
def world(session: Session, quiet: Settings) -> World:
    return make_world(session, quiet)


@pytest.fixture
def api(quiet: Settings, sqlite_engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(quiet, engine=sqlite_engine)) as client:
        yield client


def _steps_of_one_write(engine: Engine, transcript: Transcript, words: str) -> int:
    """SQLite's virtual machine steps for one UPDATE of a transcript's text (its triggers included): a count
    that does not depend on the machine's speed."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    with engine.begin() as conn:
        dbapi = conn.connection.dbapi_connection
        dbapi.set_progress_handler(count, 1)  # type: ignore[union-attr]
        try:
            conn.execute(text("UPDATE transcripts SET text = :t WHERE id = :id"), {"t": words, "id": transcript.id.hex})
        finally:
            dbapi.set_progress_handler(None, 1)  # type: ignore[union-attr]
    return steps


def test_a_text_write_does_not_scan_the_whole_index(api: TestClient, sqlite_engine: Engine, session: Session,
                                                    world: World) -> None:
    """Regression: the triggers deleted the old text `WHERE transcript_id = old.id`, an UNINDEXED column of the
    FTS5 table, so every worker result, correction and note delete scanned the whole index under SQLite's one
    write lock (164 ms a write at 200,000 transcripts, measured in review)."""
    ensure_search_index(sqlite_engine)
    transcript = make_transcript(session, world.steward_a, "暖气不热。", household_id=world.household_a.id)
    alone = _steps_of_one_write(sqlite_engine, transcript, "暖气还是不热。")
    body = "供暖热线您好，我家3号楼2单元501室暖气不热，麻烦派人来看一下。"
    with sqlite_engine.begin() as conn:  # 20,000 other transcripts in the index
        conn.execute(text("INSERT INTO transcript_search_rows(transcript_id) VALUES (:i)"),
                     [{"i": f"{k:032x}"} for k in range(20_000)])
        conn.execute(text("INSERT INTO transcript_search(rowid, text) SELECT fts_rowid, :t FROM transcript_search_rows "
                          "WHERE transcript_id <> :id"), {"t": body, "id": transcript.id.hex})
    among_many = _steps_of_one_write(sqlite_engine, transcript, "暖气终于热了。")
    assert among_many < alone * 3, (alone, among_many)  # a scan of 20,000 rows is hundreds of times more
    found = api.get("/api/v1/transcripts", params={"q": "终于热了"}, headers=world.headers(world.supervisor)).json()
    assert [t["id"] for t in found["data"]] == [str(transcript.id)]
    assert api.get("/api/v1/transcripts", params={"q": "还是不热"},
                   headers=world.headers(world.supervisor)).json()["count"] == 0  # the old text left the index


def test_an_index_of_the_old_shape_is_replaced_and_keeps_finding(sqlite_engine: Engine, session: Session,
                                                                 world: World, quiet: Settings) -> None:
    """A database whose index was made before (keyed by the UNINDEXED column) gets the new one at start,
    filled from the transcripts; the old table and its triggers are gone."""
    with sqlite_engine.begin() as conn:  # what speech/search.py created until 2026-12-02
        for name in ("transcript_search_insert", "transcript_search_update", "transcript_search_delete"):
            conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
        conn.execute(text("DROP TABLE IF EXISTS transcript_search"))
        conn.execute(text("DROP TABLE IF EXISTS transcript_search_rows"))
        conn.execute(text("CREATE VIRTUAL TABLE transcripts_fts USING fts5(transcript_id UNINDEXED, text, "
                          "tokenize='trigram')"))
        conn.execute(text("CREATE TRIGGER transcripts_fts_insert AFTER INSERT ON transcripts BEGIN "
                          "INSERT INTO transcripts_fts(transcript_id, text) VALUES (new.id, new.text); END"))
    kept = make_transcript(session, world.steward_a, "楼道里漏水了。", household_id=world.household_a.id)
    with TestClient(create_app(quiet, engine=sqlite_engine)) as api:
        with sqlite_engine.connect() as conn:
            names = set(conn.execute(text("SELECT name FROM sqlite_master")).scalars())
        assert "transcripts_fts" not in names and "transcripts_fts_insert" not in names
        assert {"transcript_search", "transcript_search_rows", "transcript_search_update"} <= names
        office = world.headers(world.supervisor)
        found = api.get("/api/v1/transcripts", params={"q": "漏水了"}, headers=office).json()
        assert [t["id"] for t in found["data"]] == [str(kept.id)]
        later = make_transcript(session, world.steward_a, "暖气片漏水了。", household_id=world.household_a.id)
        found = api.get("/api/v1/transcripts", params={"q": "漏水了"}, headers=office).json()
        assert {t["id"] for t in found["data"]} == {str(kept.id), str(later.id)}


def test_a_process_starting_does_not_wait_behind_a_write_to_the_transcripts(engine: Engine) -> None:
    """Regression (multi-process review): every API process and `steward worker` ensures the search index at
    start (and each process again at its first search). On PostgreSQL `CREATE INDEX IF NOT EXISTS` takes its
    SHARE lock on `transcripts` before it finds the index there: a start during any open write to the
    transcripts waited for it without limit, and every transcript write after (a call upload, a worker's
    result) queued behind the waiting start."""
    import threading
    import time

    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's index is ensured under its one write lock, which a start takes anyway")
    ensure_search_index(engine)  # the first start made it
    done: list[float] = []
    with engine.connect() as writer:
        writer.execute(text("UPDATE transcripts SET text = text WHERE false"))  # a write in flight
        starting = threading.Thread(target=lambda: done.append(ensure_search_index(engine) and time.monotonic()))
        starting.start()
        starting.join(timeout=5)
        finished_before_commit = bool(done)
        writer.commit()
    starting.join(timeout=30)
    assert finished_before_commit, "the start waited for the open write to the transcripts"
