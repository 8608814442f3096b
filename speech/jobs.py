"""The transcription job, shared by both queues: claim a transcript, transcribe its audio, record the outcome.

The transcript row is the durable job. Claiming is one conditional UPDATE, so two workers can never run
the same transcript: the embedded queue claims `queued` rows whose time has come, or `running` rows whose
lease ran out (their worker died); procrastinate claims the row its job names (procrastinate itself
guarantees one worker per job and retries jobs of dead workers). Every later write is conditional too: on
`waiting_audio` for a promotion, on `running` at the claimed attempt for an outcome.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, or_, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from api.db import utcnow
from api.errors import DomainError
from api.notes.models import Note, NoteKind, TranscriptStatus
from api.settings import Settings
from speech.audio import AudioDecodeError, decode_audio
from speech.glossary import categorize, load_glossary
from speech.models import Call, Transcript, TranscriptState
from speech.pipeline import segment_separator
from speech.redact import redact_joined
from speech.storage import audio_file, audio_stored

if TYPE_CHECKING:
    from api.users.models import User

log = logging.getLogger(__name__)

# A job that runs longer than this (embedded queue) is presumed dead and taken over.
LEASE = timedelta(minutes=30)
PROMOTE_PAGE = 500  # waiting rows read (and blobs looked up) at a time
DRAFT_CATEGORIES = ("leak", "not_warm")
DRAFT_NAMESPACE = uuid.UUID("6c1b0f52-8d3e-4f0a-9a57-3f7e2c1d9b44")  # draft work-order ids


def backoff(settings: Settings, attempts: int) -> timedelta:
    """Wait before the next try: STEWARD_SPEECH_RETRY_BACKOFF_S, doubled after each failure."""
    return timedelta(seconds=settings.speech_retry_backoff_s * 2 ** max(attempts - 1, 0))


def claim(engine: Engine, transcript_id: uuid.UUID, *, takeover: bool = False) -> int | None:
    """Mark the transcript running (one more attempt); the attempt this worker now holds, or None if another
    worker has it or it is finished.

    `takeover` lets a procrastinate job take a `running` row: procrastinate only hands a job to a second
    worker after the first one stopped sending heartbeats. The attempt number is what the outcome is written
    against: a worker whose attempt was taken over cannot overwrite what came after it.
    """
    now = utcnow()
    running = col(Transcript.status) == TranscriptState.running
    if not takeover:
        running = running & (col(Transcript.lease_until) < now)
    stmt = (update(Transcript)
            .where(col(Transcript.id) == transcript_id,
                   or_(col(Transcript.status) == TranscriptState.queued, running))
            .values(status=TranscriptState.running, attempts=Transcript.attempts + 1, lease_until=now + LEASE,
                    updated_at=now)
            .returning(col(Transcript.attempts)))
    with Session(engine) as session:
        sequence_first(session)
        attempt = session.connection().execute(stmt).scalar()
        if attempt is None:
            return None
        _note_status(session, transcript_id, TranscriptStatus.running)
        session.commit()
    return int(attempt)


def renew_lease(engine: Engine, transcript_id: uuid.UUID, attempt: int) -> bool:
    """Extend the lease of a job this worker still runs at `attempt`; False when it no longer holds it."""
    now = utcnow()
    stmt = (update(Transcript)
            .where(col(Transcript.id) == transcript_id, col(Transcript.status) == TranscriptState.running,
                   col(Transcript.attempts) == attempt)
            .values(lease_until=now + LEASE))
    with engine.begin() as conn:
        return bool(conn.execute(stmt).rowcount)


def current_attempt(engine: Engine, transcript_id: uuid.UUID) -> int:
    """The attempt a transcript is at (for callers that claimed it without keeping the number)."""
    with Session(engine) as session:
        transcript = session.get(Transcript, transcript_id)
        return transcript.attempts if transcript is not None else 0


def next_due(engine: Engine) -> uuid.UUID | None:
    """The transcript the embedded queue should take next, if any."""
    now = utcnow()
    with Session(engine) as session:
        return session.exec(
            select(Transcript.id).where(or_(
                (col(Transcript.status) == TranscriptState.queued) & (col(Transcript.next_attempt_at) <= now),
                (col(Transcript.status) == TranscriptState.running) & (col(Transcript.lease_until) < now),
            )).order_by(col(Transcript.next_attempt_at)).limit(1)
        ).first()


def promote_waiting(engine: Engine, settings: Settings) -> list[uuid.UUID]:
    """Queue every transcript whose audio blob has arrived since its note did.

    All waiting rows are looked at, oldest first, a page at a time: notes whose audio never comes (a lost
    handheld) must not hide the ones behind them. The blob store cannot be asked in SQL, so each waiting
    row costs one existence check per sweep (a HEAD request with the S3 store).
    """
    promoted: list[uuid.UUID] = []
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        page = _waiting_page(engine, after)
        stored = audio_stored(settings, (sha256 for _, _, sha256 in page))
        promoted += _promote(engine, [transcript_id for transcript_id, _, sha256 in page if sha256 in stored])
        if len(page) < PROMOTE_PAGE:
            return promoted
        after = page[-1][1], page[-1][0]


def promote_audio(engine: Engine, sha256: str) -> list[uuid.UUID]:
    """Queue the transcripts that waited for this audio blob, just uploaded; the ids queued. (The sweep of
    `promote_waiting` still finds any this misses: a note that arrived after its audio, a lost call.)"""
    with Session(engine) as session:
        waiting = session.exec(_waiting(Transcript.id).where(col(Note.audio_sha256) == sha256)).all()
    return _promote(engine, list(waiting))


def _waiting(*columns: Any) -> Any:
    """A select of `columns` over the transcripts whose note's audio has not arrived (Note joined)."""
    return (select(*columns).join(Note, col(Note.id) == Transcript.id)
            .where(col(Transcript.status) == TranscriptState.waiting_audio))


def _waiting_page(engine: Engine, after: tuple[datetime, uuid.UUID] | None
                  ) -> list[tuple[uuid.UUID, datetime, str]]:
    """(id, created_at, audio sha256) of the next waiting transcripts after `after`, oldest first."""
    stmt = _waiting(Transcript.id, Transcript.created_at, Note.audio_sha256)
    if after is not None:
        created, last = after
        stmt = stmt.where(or_(col(Transcript.created_at) > created,
                              (col(Transcript.created_at) == created) & (col(Transcript.id) > last)))
    with Session(engine) as session:
        rows = session.exec(stmt.order_by(col(Transcript.created_at), col(Transcript.id)).limit(PROMOTE_PAGE))
        return [tuple(row) for row in rows.all()]


def _promote(engine: Engine, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Queue those of these transcripts that still wait for audio; the ids queued.

    One conditional UPDATE: the rows were read earlier, and since then another promoter may have queued
    them and a worker claimed, finished, or a supervisor approved them, none of which may be undone.
    """
    if not ids:
        return []
    now = utcnow()
    stmt = (update(Transcript)
            .where(col(Transcript.id).in_(ids), col(Transcript.status) == TranscriptState.waiting_audio)
            .values(status=TranscriptState.queued, next_attempt_at=now, updated_at=now)
            .returning(col(Transcript.id)))
    with Session(engine) as session:
        sequence_first(session)
        queued = set(session.connection().execute(stmt).scalars())
        for transcript_id in queued:
            _note_status(session, transcript_id, TranscriptStatus.pending)
        session.commit()
    return [transcript_id for transcript_id in ids if transcript_id in queued]


def running(engine: Engine) -> list[tuple[uuid.UUID, int]]:
    """(id, attempt) of the transcripts marked running."""
    with Session(engine) as session:
        rows = session.exec(select(Transcript.id, Transcript.attempts)
                            .where(col(Transcript.status) == TranscriptState.running).limit(1000))
        return [(transcript_id, attempts) for transcript_id, attempts in rows.all()]


def requeue(engine: Engine, transcript_id: uuid.UUID, attempt: int) -> bool:
    """Queue a running transcript again, if it is still at this attempt (its job is gone: nobody else will)."""
    now = utcnow()
    with Session(engine) as session:
        sequence_first(session)
        if not _record(session, transcript_id, attempt, "requeued", status=TranscriptState.queued,
                       next_attempt_at=now, lease_until=None, updated_at=now):
            return False
        _note_status(session, transcript_id, TranscriptStatus.pending)
        session.commit()
    return True


def run(engine: Engine, settings: Settings, transcript_id: uuid.UUID, *, attempt: int | None = None,
        pipeline: Any = None, final_attempt: bool | None = None) -> TranscriptState:
    """Transcribe a claimed transcript and record the outcome; the state it ends in.

    `attempt` is what `claim` returned (read from the row when not given). Undecodable audio fails at once
    (retrying cannot help). Other errors, while transcribing or while saving the result, are retried with
    backoff until STEWARD_SPEECH_MAX_ATTEMPTS; `final_attempt` overrides that count (procrastinate keeps its
    own). A worker whose attempt was superseded records nothing; it returns the state the row is in.
    """
    with Session(engine) as session:
        transcript = session.get(Transcript, transcript_id)
        note = session.get(Note, transcript_id)
        if transcript is None or note is None:
            return TranscriptState.failed
        sha256 = note.audio_sha256
        attempt = transcript.attempts if attempt is None else attempt
        tries = attempt - transcript.retry_base  # this run's place in its budget (the retry's count)
    where = "recording"
    try:
        # With the S3 store the file is a temporary download, kept only while it is decoded.
        with audio_file(settings, sha256) as path:
            if path is None:
                return _wait_for_audio(engine, transcript_id, attempt)
            where = str(path)
            audio = decode_audio(path, max_duration_s=settings.speech_max_duration_s)
        result = _pipeline(settings, pipeline).run(audio)
        # Saving is inside the try: an error there is retried like one of the model's, never left `running`.
        return _complete(engine, settings, transcript_id, attempt, result)
    except AudioDecodeError as exc:
        return _fail(engine, transcript_id, attempt, f"undecodable audio: {exc}".replace(where, "recording"))
    except Exception as exc:
        log.exception("transcription of %s failed (attempt %d)", transcript_id, tries)
        last = tries >= settings.speech_max_attempts if final_attempt is None else final_attempt
        reason = failure_reason(exc)
        if last:
            return _fail(engine, transcript_id, attempt, f"gave up after {tries} attempts: {reason}")
        if not _retry_later(engine, settings, transcript_id, attempt, reason, tries=tries):
            return _state(engine, transcript_id)  # superseded: nothing for this worker to retry
        raise


def failure_reason(exc: BaseException) -> str:
    """What a failed attempt records: the error's kind and, for a database error, the database's own first
    line, never the statement or its values (`str()` of a SQLAlchemy error quoted the transcript being
    saved, and stewards read the reason)."""
    if isinstance(exc, DBAPIError):
        first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
        return f"{type(exc).__name__}: {first}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]


def _pipeline(settings: Settings, pipeline: Any) -> Any:
    from speech.pipeline import shared_pipeline

    return pipeline or shared_pipeline(settings)


def _record(session: Session, transcript_id: uuid.UUID, attempt: int, what: str, **values: Any) -> bool:
    """Write `values` to the transcript only while it is `running` for this attempt, in one conditional UPDATE.

    A worker may be superseded while it works (its lease ran out and another took the job over, or the job
    was re-queued): its outcome must not replace a newer run's, let alone text a supervisor approved since.
    """
    stmt = (update(Transcript)
            .where(col(Transcript.id) == transcript_id, col(Transcript.status) == TranscriptState.running,
                   col(Transcript.attempts) == attempt)
            .values(**values))
    if session.connection().execute(stmt).rowcount == 1:
        return True
    session.rollback()
    log.warning("transcript %s: attempt %d is no longer the running one; its outcome (%s) is dropped",
                transcript_id, attempt, what)
    return False


def sequence_first(session: Session) -> None:
    """Take the change sequence before writing a transcript's row, when the note (a synced row) is written
    after it. A sync push takes the sequence first and its delete of the note cascades to the transcript's
    row: written in the other order, the two deadlocked on PostgreSQL (a supervisor got 503, or the device's
    delete was rejected for good)."""
    from sync.tracking import allocate_seq  # sync's models import api.db, which this package's models use

    allocate_seq(session)


def _note_status(session: Session, transcript_id: uuid.UUID, status: TranscriptStatus) -> Note | None:
    """Set the note's transcript status (through the session: sync must see the change)."""
    note = session.get(Note, transcript_id)
    if note is not None and note.transcript_status != status:
        note.transcript_status = status
    return note


def _state(engine: Engine, transcript_id: uuid.UUID) -> TranscriptState:
    with Session(engine) as session:
        transcript = session.get(Transcript, transcript_id)
        return transcript.status if transcript is not None else TranscriptState.failed


def _fail(engine: Engine, transcript_id: uuid.UUID, attempt: int, reason: str) -> TranscriptState:
    with Session(engine) as session:
        sequence_first(session)
        if not _record(session, transcript_id, attempt, "failed", status=TranscriptState.failed,
                       failure_reason=reason[:2000], lease_until=None, updated_at=utcnow()):
            return _state(engine, transcript_id)
        _note_status(session, transcript_id, TranscriptStatus.failed)
        session.commit()
    log.warning("transcript %s failed: %s", transcript_id, reason)
    return TranscriptState.failed


def _wait_for_audio(engine: Engine, transcript_id: uuid.UUID, attempt: int) -> TranscriptState:
    """The audio is not in the store (the sweep deleted it just as the note came to name it, or it was never
    uploaded): wait for it as a note that came before its audio does, without spending an attempt, so that
    its next upload queues the job (`promote_audio`, or the sweep of waiting notes). Retried like an error,
    it ran out of attempts in a minute and stayed failed after the device uploaded the audio again."""
    with Session(engine) as session:
        sequence_first(session)
        if not _record(session, transcript_id, attempt, "waiting for audio", status=TranscriptState.waiting_audio,
                       lease_until=None, retry_base=Transcript.retry_base + 1, updated_at=utcnow()):
            return _state(engine, transcript_id)
        _note_status(session, transcript_id, TranscriptStatus.none)
        session.commit()
    log.warning("transcript %s: its audio is not in the store; waiting for it to be uploaded", transcript_id)
    return TranscriptState.waiting_audio


def _retry_later(engine: Engine, settings: Settings, transcript_id: uuid.UUID, attempt: int, reason: str, *,
                 tries: int) -> bool:
    now = utcnow()
    with Session(engine) as session:
        sequence_first(session)
        if not _record(session, transcript_id, attempt, "retry", status=TranscriptState.queued,
                       failure_reason=reason[:2000], next_attempt_at=now + backoff(settings, tries),
                       lease_until=None, updated_at=now):
            return False
        _note_status(session, transcript_id, TranscriptStatus.pending)
        session.commit()
    return True


def _complete(engine: Engine, settings: Settings, transcript_id: uuid.UUID, attempt: int,
              result: Any) -> TranscriptState:
    segments = [{"start": round(s.start, 2), "end": round(s.end, 2), "text": s.text,
                 "avg_logprob": round(s.avg_logprob, 4), "no_speech_prob": round(s.no_speech_prob, 4)}
                for s in result.segments]
    categories = categorize(result.text, load_glossary(settings.speech_glossary))
    masked = redact_joined([s.text for s in result.segments], segment_separator(result.language))
    now = utcnow()
    with Session(engine) as session:
        sequence_first(session)
        transcript = session.get(Transcript, transcript_id)
        note = session.get(Note, transcript_id)
        if transcript is None or note is None:
            return TranscriptState.failed
        if (transcript.status, transcript.attempts) != (TranscriptState.running, attempt):
            # Superseded (taken over, or failed and retried by a supervisor): it opens nothing either. Checked
            # under the change sequence, which every other writer of the row takes first.
            log.warning("transcript %s: attempt %d is no longer the running one; its outcome is dropped",
                        transcript_id, attempt)
            return transcript.status
        # The draft work order (under an id derived from the recording, so a retry finds it instead of opening
        # a second one) commits with the transcript: one worker's outcome, whole or not at all.
        draft_id = transcript.draft_work_order_id
        if settings.speech_draft_work_orders:
            draft_id = _open_draft_work_order(session, settings, note, categories, masked) or draft_id
            sequence_first(session)  # a refused draft rolled back: again before the transcript's row lock
        if not _record(session, transcript_id, attempt, "transcribed", status=TranscriptState.transcribed,
                       failure_reason=None, lease_until=None, engine=result.engine, model=result.model,
                       language=result.language, duration_s=result.duration, text=result.text, segments=segments,
                       categories="," + ",".join(categories) + ",", transcribed_at=now, updated_at=now,
                       draft_work_order_id=draft_id):
            return _state(engine, transcript_id)
        # The note's copy travels to handhelds through sync: stewards' devices get it masked.
        note = _note_status(session, transcript_id, TranscriptStatus.done)
        if note is not None:
            note.transcript_text = masked
            note.transcript_language = result.language
        session.commit()
    return TranscriptState.transcribed


def draft_work_order_id(note_id: uuid.UUID) -> uuid.UUID:
    """The id of the draft work order a call may open: one per recording, whatever the number of tries."""
    return uuid.uuid5(DRAFT_NAMESPACE, str(note_id))


def draft_category(note: Note, categories: list[str]) -> str | None:
    """The category of the draft work order a call opens, if it opens one: a call (not a voice note) tagged
    leak or not_warm, about a household and not about a work order already."""
    category = next((c for c in categories if c in DRAFT_CATEGORIES), None)
    if note.kind != NoteKind.call_recording or note.household_id is None or note.work_order_id is not None:
        return None
    return category


def _open_draft_work_order(session: Session, settings: Settings, note: Note, categories: list[str],
                           masked: str) -> uuid.UUID | None:
    """A call about a leak or a cold home opens a work order (status new) for its household, on behalf of its
    uploader; its id. `masked` is the transcript's text with personal numbers masked."""
    from api.users.models import User
    from api.work_orders.models import WorkOrder

    category = draft_category(note, categories)
    if category is None:
        return None
    order_id = draft_work_order_id(note.id)
    if session.get(WorkOrder, order_id) is not None:  # opened by an earlier try of this job
        return order_id
    call = session.get(Call, note.id)
    author = session.get(User, call.created_by_id) if call and call.created_by_id else None
    if author is None:  # the uploader's account was deleted: nobody to open it on behalf of
        log.warning("call %s opened no draft work order: its uploader no longer exists", note.id)
        return None
    try:
        return open_draft(session, settings, note, category, masked, author=author, commit=False)
    except DomainError as exc:
        # A draft is a convenience: the transcript must still be saved when it is refused (the uploader lost
        # the role or the grid meanwhile). Checking as the office instead would need a system actor.
        session.rollback()
        log.warning("call %s opened no draft work order: %s", note.id, exc.message)
        return None


def open_draft(session: Session, settings: Settings, note: Note, category: str, masked: str, *,
               author: User, commit: bool = True) -> uuid.UUID:
    """Open the call's draft work order as `author` and commit (with whatever the session holds; flushed
    only with `commit=False`); its id. A refusal is a DomainError raised before anything is added to the
    session."""
    from api.work_orders import service as work_orders
    from api.work_orders.models import Category, Source, WorkOrderCreate

    call = session.get(Call, note.id)
    assert note.household_id is not None
    order_id = draft_work_order_id(note.id)
    data = WorkOrderCreate(id=order_id, household_id=note.household_id, source=Source.hotline,
                           category=Category(category), description=f"[来电转写草稿] {masked}"[:4000],
                           caller_phone=draft_phone(call.caller_phone) if call else None)
    work_orders.create(session=session, settings=settings, user=author, data=data, commit=commit)
    return order_id


def draft_phone(phone: str) -> str:
    """The call's number as a work order holds it (20 characters; a call's may have 32): spaces, dashes,
    dots and brackets dropped when it is longer, so `+86 (531) 8888-6666 转 801` keeps every digit. Only
    a number still longer is cut; the call keeps it whole."""
    if len(phone) > 20:
        phone = re.sub(r"[\s\-.()（）]", "", phone)
    return phone[:20]
