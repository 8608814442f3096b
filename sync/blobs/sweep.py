"""Removing blobs that no row refers to (`steward blobs sweep`, for a daily cron job).

A blob is uploaded before (or after) the row that names it is pushed, and it stays when the row is deleted:
a deleted voice note's recording stayed downloadable for ever, and an upload whose row never came kept its
disk. The sweep deletes every stored blob that no note (`notes.audio_sha256`, which covers call recordings
and a video call's recording), no visit (`visits.photos`, `visits.signature_sha256`) and no video snapshot
(`video_snapshots.sha256`) names, once it is older than a grace period, so that an upload whose row is
still in a handheld's queue is not taken from under it.

A row that starts to name a swept blob in the same instant (a device that found the blob with HEAD a moment
before, and pushes the row just as the sweep deletes it) points at missing audio; its transcription waits for
the audio again (as a note pushed before its upload does) and the device uploads again on its next HEAD,
which queues it. The grace period makes that window as narrow as the age of the blob allows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from sqlalchemy import Engine, bindparam, text
from sqlmodel import Session, col, select

from api.db import utcnow
from sync.blobs.storage import BlobStore

SHA256 = re.compile(r"[0-9a-f]{64}")

BATCH = 500  # shas looked up in one query
# How much earlier than its commit a conflict line's time may be (it is stamped in the push's transaction):
# the lines the sweep reads again while it walks.
LATE_COMMITS = timedelta(hours=1)


@dataclass
class SweepReport:
    stored: int = 0  # blobs in the store
    referenced: int = 0  # named by a row: kept
    recent: int = 0  # unreferenced but younger than the grace period: kept for now
    deleted: int = 0  # unreferenced and older: deleted (or, in a dry run, would be)
    deleted_bytes: int = 0
    dry_run: bool = False


def referenced(session: Session, shas: list[str]) -> set[str]:
    """Which of these blobs a row names (every table that refers to blobs by sha256)."""
    from api.fieldwork.models import Visit
    from api.notes.models import Note
    from video.models import VideoSnapshot

    named = set(session.exec(select(Note.audio_sha256).where(col(Note.audio_sha256).in_(shas))).all())
    named |= set(session.exec(select(VideoSnapshot.sha256).where(col(VideoSnapshot.sha256).in_(shas))).all())
    named |= {sha for sha in session.exec(select(Visit.signature_sha256).where(
        col(Visit.signature_sha256).in_(shas))).all() if sha is not None}
    return named | _photos(session, shas)


# PostgreSQL: the GIN index on the jsonb list finds the visits naming any of the hashes (`?|`). SQLite has no
# such index: it reads the photo lists of the visits that have photos, once per batch.
_PHOTOS_PG = text("SELECT DISTINCT p FROM visits, jsonb_array_elements_text(visits.photos) AS p "
                  "WHERE visits.photos ?| CAST(:shas AS text[]) AND p = ANY(CAST(:shas AS text[]))")
_PHOTOS_SQLITE = text("SELECT DISTINCT j.value FROM visits, json_each(visits.photos) AS j "
                      "WHERE visits.photos != '[]' AND j.value IN :shas").bindparams(bindparam("shas", expanding=True))


def _photos(session: Session, shas: list[str]) -> set[str]:
    postgres = session.get_bind().dialect.name == "postgresql"
    return set(session.connection().execute(_PHOTOS_PG if postgres else _PHOTOS_SQLITE, {"shas": shas}).scalars())


def _hashes_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if SHA256.fullmatch(value):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _hashes_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _hashes_in(item)


def held_by_conflicts(session: Session, *, since: datetime | None = None) -> set[str]:
    """The blobs (photos, signatures, voice-note audio) a visit or note conflict nobody has reviewed yet names
    (logged `since`, when given): the side that lost (a photo the other device's list did not have, a visit or
    a transcribed note a delete won over) stays recoverable until a supervisor looked at it. Before, the
    conflict log named a photo, or a note's audio, that the sweep had already deleted."""
    from sync.models import SyncConflict

    stmt = select(SyncConflict.server_value, SyncConflict.device_value).where(
        col(SyncConflict.table_name).in_(("visits", "notes")), col(SyncConflict.reviewed_at).is_(None))
    if since is not None:
        stmt = stmt.where(col(SyncConflict.created_at) >= since)
    return {sha for server, device in session.exec(stmt).all() for sha in (*_hashes_in(server), *_hashes_in(device))}


def _batches(items: Iterable[tuple[str, int, datetime]]) -> Iterator[list[tuple[str, int, datetime]]]:
    it = iter(items)
    while batch := list(islice(it, BATCH)):
        yield batch


def sweep(engine: Engine, store: BlobStore, *, grace: timedelta, dry_run: bool = False,
          now: datetime | None = None, progress: Callable[[int], None] | None = None,
          report: SweepReport | None = None) -> SweepReport:
    """Delete the blobs no row names that were stored more than `grace` ago (`dry_run`: only count them).
    Counts go into `report` as the walk goes: when the store fails midway, the caller still has what was done."""
    cutoff = (now or utcnow()) - grace
    report = report or SweepReport()
    report.dry_run = dry_run
    started = utcnow()
    with Session(engine) as session:
        held = held_by_conflicts(session)
    for batch in _batches(store.listing()):
        shas = [sha for sha, _, _ in batch]
        with Session(engine) as session:
            named = referenced(session, shas)
            if any(sha not in named and sha not in held and stored_at <= cutoff for sha, _, stored_at in batch):
                # About to delete: the lines logged since shortly before the walk began, read after the batch's
                # rows. A delete that wins over an edit (pushed while the sweep runs) takes the visit or note
                # and logs the line naming its blobs in one commit, so a blob missing from the rows read is in
                # the lines read after them; read only before the walk, such a line did not hold its photos.
                # (Only the recent lines: all of them for each batch made a sweep cost blobs x conflicts.)
                held |= held_by_conflicts(session, since=started - LATE_COMMITS)
        named |= held
        for sha, size, stored_at in batch:
            report.stored += 1
            if sha in named:
                report.referenced += 1
            elif stored_at > cutoff:
                report.recent += 1
            else:
                if not dry_run:
                    store.delete(sha)
                report.deleted += 1
                report.deleted_bytes += size
        if progress is not None:
            progress(len(batch))
    return report
