"""Full-text search over Chinese transcripts: FTS5 trigram on SQLite, a pg_trgm GIN index on PostgreSQL.

The index is derived data: `ensure_search_index` creates it when missing (at start) and fills it from
the transcripts, so it is never out of step and can be dropped and rebuilt at will. It is not in the
migrations because schema comparison sees FTS5's shadow tables as foreign tables.
Trigrams cannot match queries shorter than three characters (most Chinese words are two): those
fall back to a plain substring scan.
"""

from __future__ import annotations

import logging
import unicodedata
import weakref
from typing import Any

from sqlalchemy import Engine, bindparam, column, or_, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import col, select

from api.db import sqlite_write_lock
from api.errors import Unprocessable
from api.notes.models import Note
from speech.models import Transcript
from speech.text import to_simplified

log = logging.getLogger(__name__)

# The index's rows are keyed by an integer, `transcript_search_rows.fts_rowid` (an INTEGER PRIMARY KEY, which
# VACUUM keeps, unlike the transcripts' own rowids), so that a write finds its row through a key. Before, the
# triggers deleted `WHERE transcript_id = old.id` on an UNINDEXED column: every worker result, correction and
# note delete scanned the whole index under SQLite's one write lock (164 ms a write at 200,000 transcripts).
_ROW = "(SELECT fts_rowid FROM transcript_search_rows WHERE transcript_id = {0}.id)"
_SQLITE = [
    "CREATE TABLE IF NOT EXISTS transcript_search_rows (fts_rowid INTEGER PRIMARY KEY, "
    "transcript_id CHAR(32) NOT NULL UNIQUE)",
    "CREATE VIRTUAL TABLE IF NOT EXISTS transcript_search USING fts5(text, tokenize='trigram')",
    "CREATE TRIGGER IF NOT EXISTS transcript_search_insert AFTER INSERT ON transcripts BEGIN "
    "INSERT INTO transcript_search_rows(transcript_id) VALUES (new.id); "
    f"INSERT INTO transcript_search(rowid, text) VALUES ({_ROW.format('new')}, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS transcript_search_update AFTER UPDATE OF text ON transcripts BEGIN "
    "INSERT OR IGNORE INTO transcript_search_rows(transcript_id) VALUES (new.id); "
    f"DELETE FROM transcript_search WHERE rowid = {_ROW.format('old')}; "
    f"INSERT INTO transcript_search(rowid, text) VALUES ({_ROW.format('new')}, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS transcript_search_delete AFTER DELETE ON transcripts BEGIN "
    f"DELETE FROM transcript_search WHERE rowid = {_ROW.format('old')}; "
    "DELETE FROM transcript_search_rows WHERE transcript_id = old.id; END",
]
_SQLITE_FILL = [
    "INSERT INTO transcript_search_rows(transcript_id) SELECT id FROM transcripts",
    "INSERT INTO transcript_search(rowid, text) SELECT r.fts_rowid, t.text FROM transcripts t "
    "JOIN transcript_search_rows r ON r.transcript_id = t.id",
]
# The index of 0003-era databases, keyed by an UNINDEXED column: replaced at start.
_SQLITE_OLD = ["DROP TRIGGER IF EXISTS transcripts_fts_insert", "DROP TRIGGER IF EXISTS transcripts_fts_update",
               "DROP TRIGGER IF EXISTS transcripts_fts_delete", "DROP TABLE IF EXISTS transcripts_fts"]


def ensure_search_index(engine: Engine) -> bool:
    """Create the search index if it is missing; False if this database cannot have one (then search scans)."""
    if engine.dialect.name == "sqlite":
        with engine.begin() as conn:
            sqlite_write_lock(conn)  # first: two processes starting at once must not both see no index and fill it
            if conn.execute(text("SELECT 1 FROM sqlite_master WHERE name = 'transcripts_fts'")).first():
                log.info("replacing the search index with one keyed by row (one pass over the transcripts)")
                for statement in _SQLITE_OLD:
                    conn.execute(text(statement))
            exists = conn.execute(text("SELECT 1 FROM sqlite_master WHERE name = 'transcript_search'")).first()
            if not exists:
                conn.execute(text("DROP TABLE IF EXISTS transcript_search_rows"))  # its index went with it
            for statement in _SQLITE:
                conn.execute(text(statement))
            if not exists:
                for statement in _SQLITE_FILL:
                    conn.execute(text(statement))
        return True
    if engine.dialect.name == "postgresql":
        try:
            with engine.begin() as conn:
                # Looked up first: `CREATE INDEX IF NOT EXISTS` takes its SHARE lock on the table before it finds
                # the index, so every start (API processes, workers) waited for any open write to the transcripts,
                # and every transcript write after it queued behind the waiting start.
                if conn.execute(text("SELECT to_regclass('ix_transcripts_text_trgm')")).scalar() is not None:
                    return True
                conn.execute(text("SELECT pg_advisory_xact_lock(4242001)"))  # one creator at a time
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
                conn.execute(text("CREATE INDEX IF NOT EXISTS ix_transcripts_text_trgm ON transcripts "
                                  "USING gin (text gin_trgm_ops)"))
        except DBAPIError as exc:
            log.warning("no trigram index (search will scan): %s", exc.orig)
            return False
        return True
    return False


_ready: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


def index_ready(engine: Engine) -> bool:
    """Whether the search index exists (created on first need)."""
    if engine not in _ready:
        try:
            _ready[engine] = ensure_search_index(engine)
        except DBAPIError as exc:  # the database is down: scan this time, try again next time
            log.warning("search index unavailable: %s", exc.orig)
            return False
    return _ready[engine]


def _like_pattern(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# The longest query, as the console's search box takes: a transcript holds sentences, not pages.
MAX_QUERY = 200


def check_query(q: str) -> str:
    """`q` without surrounding spaces; refused if longer than `MAX_QUERY` characters, or if control characters
    remain, which no transcript holds and which the backends treat differently (FTS5 fails on NUL, PostgreSQL
    cannot bind it)."""
    q = q.strip()
    if len(q) > MAX_QUERY:
        raise Unprocessable(f"q is {len(q)} characters long; search for at most {MAX_QUERY}.", code="invalid_query")
    if any(unicodedata.category(c) == "Cc" for c in q):
        raise Unprocessable("q holds control characters (NUL, tab, newline...); search for plain text.",
                            code="invalid_query")
    return q


def search_clause(q: str, engine: Engine, *, masked: bool = True) -> Any:
    """A WHERE clause on `Transcript` joined with its `Note`, matching transcripts whose text contains `q`;
    `masked` (for users without the view_pii right; the default, so that a caller who forgets errs on the
    safe side): whose masked text contains it too.

    Otherwise search would reveal what masking hides: a steward who sees 回电138****8000 could try
    回电1380, 回电1381... and learn each hidden digit from the count. The masked copy is the note's
    `transcript_text` (kept in step with the text on every write); the index still narrows the scan.
    """
    q = check_query(q)
    # Transcripts are written in one form (`to_simplified`: 暖气, 501, B座, whether the model or a supervisor
    # wrote them), and so is the query; it is looked for as typed too, for text written before or in a
    # language the pipeline leaves alone (Cantonese in Traditional characters).
    forms = [to_simplified(q), q]
    if engine.dialect.name == "sqlite" and any(not c.isascii() and c.lower() != c.upper() for c in q):
        # SQLite's LIKE folds the case of ASCII letters only, where its FTS5 index and PostgreSQL's ILIKE fold
        # every letter: the query is also looked for in lower and in upper case, which finds CAFÉ in "Café"
        # (not a text that mixes the cases of such letters within the match: see docs/speech.md).
        forms += [f.lower() for f in forms] + [f.upper() for f in forms]
    return or_(*(_matching(form, engine, masked) for form in dict.fromkeys(forms)))


def _matching(q: str, engine: Engine, masked: bool) -> Any:
    """The clause for one form of the query (its parameter names are unique: a statement has one per form)."""
    clause: Any
    if engine.dialect.name == "sqlite" and len(q) >= 3 and index_ready(engine):
        phrase = '"' + q.replace('"', '""') + '"'
        matching = (text("SELECT r.transcript_id FROM transcript_search s JOIN transcript_search_rows r "
                         "ON r.fts_rowid = s.rowid WHERE transcript_search MATCH :phrase")
                    .bindparams(bindparam("phrase", phrase, unique=True)).columns(column("transcript_id")).subquery())
        clause = col(Transcript.id).in_(select(matching.c.transcript_id))
    else:  # PostgreSQL's trigram index serves ILIKE; short SQLite queries scan.
        clause = col(Transcript.text).ilike(_like_pattern(q), escape="\\")
    if masked:
        clause = clause & col(Note.transcript_text).ilike(_like_pattern(q), escape="\\")
    return clause
