"""Transcripts as records: calls in, notes queued, listing, search, correction with history, approval."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, event
from sqlalchemy import update as update_rows  # `update` is this module's edit
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from api import access
from api.db import utcnow
from api.deps import Page
from api.errors import Conflict, DomainError, InvalidTransition, NotFound, Unprocessable
from api.network.service import get_household
from api.notes.models import Note, NoteKind, TranscriptStatus
from api.notes.service import note_clause
from api.settings import Settings
from api.users.models import User
from api.work_orders import service as work_orders
from api.work_orders.models import Category, WorkOrder
from speech.glossary import categorize, load_glossary
from speech.models import (
    Call,
    CallMetadata,
    RevisionPublic,
    SegmentPublic,
    Transcript,
    TranscriptDetail,
    TranscriptPublic,
    TranscriptRevision,
    TranscriptState,
    TranscriptUpdate,
)
from speech.pipeline import join_segments, segment_separator
from speech.redact import (
    MASKING_RULES,
    can_view_pii,
    hidden_digits,
    hide_digits,
    redact_joined,
    redact_parts,
    redact_phone,
    redact_text,
)
from speech.search import search_clause
from speech.storage import add_audio, probe_duration, remove_audio
from speech.text import half_width, to_simplified
from sync.tracking import allocate_seq

log = logging.getLogger(__name__)


@event.listens_for(Session, "before_flush")
def _queue_new_recordings(session: Session, _flush_context: Any, _instances: Any) -> None:
    """Every new note gets its transcript job in the same transaction (the note may arrive through sync
    before its audio: the job waits for the blob)."""
    pending = {o.id for o in session.new if isinstance(o, Transcript)}
    for obj in list(session.new):
        if isinstance(obj, Note) and obj.id not in pending:
            session.add(Transcript(id=obj.id, status=TranscriptState.waiting_audio))


def create_call(*, session: Session, settings: Settings, user: User, metadata: CallMetadata,
                audio: bytes) -> Transcript:
    """Store a hotline recording and queue its transcription."""
    if not audio:
        raise Unprocessable("The audio file is empty.", code="empty_audio")
    if metadata.household_id is not None:
        get_household(session=session, user=user, id=metadata.household_id)
    if metadata.work_order_id is not None:
        order = work_orders.get(session=session, user=user, id=metadata.work_order_id)
        if metadata.household_id is not None and order.household_id != metadata.household_id:
            raise Unprocessable("The work order belongs to another household.", code="household_mismatch")
        # As for notes: a call about an order is about its household (lists by household and the grid's scope
        # go by it; stored without it, the call was missing from the household's recordings).
        metadata = metadata.model_copy(update={"household_id": order.household_id})
    # The blob is stored first so that the job never finds its row without the audio; if the row is then
    # refused (at flush or commit), a blob this call added is taken back rather than left unreferenced.
    sha256, added = add_audio(settings, audio)
    try:
        transcript = _record_call(session, user, metadata, audio, sha256)
    except Exception:
        session.rollback()
        if added:
            _take_back_audio(session, settings, sha256)
        raise
    # A refused call with the same bytes may have taken them back since this one looked, whether this one then
    # found them stored or stored them too (both looked before either stored): stored again if so.
    add_audio(settings, audio)
    return transcript


def _record_call(session: Session, user: User, metadata: CallMetadata, audio: bytes, sha256: str) -> Transcript:
    note = Note(kind=NoteKind.call_recording, owner_id=user.id, household_id=metadata.household_id,
                work_order_id=metadata.work_order_id, audio_sha256=sha256,
                duration_s=min(probe_duration(io.BytesIO(audio)), 6 * 3600.0),
                recorded_at=metadata.started_at, transcript_status=TranscriptStatus.pending)
    session.add(note)
    session.flush()  # the hook adds the transcript
    session.add(Call(id=note.id, caller_phone=metadata.caller_phone, agent=metadata.agent,
                     started_at=metadata.started_at, created_by_id=user.id))
    transcript = session.get(Transcript, note.id)
    assert transcript is not None
    transcript.status = TranscriptState.queued
    session.commit()
    return transcript


def _take_back_audio(session: Session, settings: Settings, sha256: str) -> None:
    """Delete the blob of a refused call unless a note refers to it: the same bytes may have come meanwhile
    by sync or with another call, which found them stored and did not store them again.

    The look and the delete hold the change sequence, which every note's insert takes until its commit: a
    note naming these bytes either committed first (seen: the blob stays) or commits after the blob is gone,
    and then a call stores it again (`create_call`); a device's push finds it missing on its next HEAD, as
    after the sweep."""
    try:
        allocate_seq(session)
        in_use = session.exec(select(Note.id).where(col(Note.audio_sha256) == sha256).limit(1)).first()
        if in_use is None:
            remove_audio(settings, sha256)
    except SQLAlchemyError:  # cannot tell: an unreferenced blob is better than a note without its audio
        log.warning("kept blob %s of a refused call: the database did not answer", sha256)
    finally:
        session.rollback()


# --- reading --------------------------------------------------------------------------------------------


def _public(transcript: Transcript, note: Note, call: Call | None, user: User) -> dict[str, Any]:
    pii = can_view_pii(user)
    return {
        "id": transcript.id, "status": transcript.status, "kind": note.kind.value, "attempts": transcript.tries,
        "failure_reason": transcript.failure_reason if pii or not transcript.failure_reason
        else redact_text(transcript.failure_reason), "engine": transcript.engine, "model": transcript.model,
        "language": transcript.language, "duration_s": transcript.duration_s,
        "text": transcript.text if pii else hide_digits(_masked_text(transcript), _kept_hidden(transcript, note)),
        "categories": transcript.category_list, "revision": transcript.revision, "owner_id": note.owner_id,
        "household_id": note.household_id, "work_order_id": note.work_order_id,
        "draft_work_order_id": transcript.draft_work_order_id, "recorded_at": note.recorded_at,
        "caller_phone": (call.caller_phone if pii else redact_phone(call.caller_phone)) if call else None,
        "agent": call.agent if call else None, "approved_by_id": transcript.approved_by_id,
        "approved_at": transcript.approved_at, "transcribed_at": transcript.transcribed_at, "redacted": not pii,
    }


def present(session: Session, user: User, transcript: Transcript, *, detail: bool = False) -> Any:
    """The transcript as this user may read it (numbers masked without the view_pii right)."""
    note = session.get(Note, transcript.id)
    assert note is not None
    data = _public(transcript, note, session.get(Call, transcript.id), user)
    if not detail:
        return TranscriptPublic(**data)
    texts = [s["text"] for s in transcript.segments]
    if not can_view_pii(user):
        texts = _redact_segments(texts, transcript, _kept_hidden(transcript, note))
    segments = [SegmentPublic(index=i, start=s["start"], end=s["end"], text=text)
                for i, (s, text) in enumerate(zip(transcript.segments, texts, strict=True))]
    return TranscriptDetail(**data, segments=segments)


def present_page(session: Session, user: User, transcripts: Sequence[Transcript]) -> list[TranscriptPublic]:
    """A list page of transcripts as `present` shows each: their notes and calls read in two queries, not two
    per transcript (a page of 500 cost 1,003 queries)."""
    ids = [t.id for t in transcripts]
    if not ids:
        return []
    notes = {n.id: n for n in session.exec(select(Note).where(col(Note.id).in_(ids)))}
    calls = {c.id: c for c in session.exec(select(Call).where(col(Call.id).in_(ids)))}
    return [TranscriptPublic(**_public(t, notes[t.id], calls.get(t.id), user)) for t in transcripts]


def _kept_hidden(transcript: Transcript, note: Note) -> set[str]:
    """The digits the note's masked copy hides: what any version of the text hid (`_sync_note_text`). A
    correction that breaks a number's shape (138 0013 800, a digit dropped) no longer reads as a phone number,
    and its middle digits, hidden until then, were shown to stewards and found by their searches."""
    copy = note.transcript_text
    if not transcript.text or copy is None or len(copy) != len(transcript.text):  # not a copy of this text
        return set()
    return hidden_digits(transcript.text, copy)


def _masked_text(transcript: Transcript) -> str:
    """The transcript's text with personal numbers masked, from its segments (see `redact_joined`)."""
    texts = [s["text"] for s in transcript.segments]
    separator = segment_separator(transcript.language or "zh")
    if separator.join(t for t in texts if t) != transcript.text:  # not made from its segments (never so far)
        return redact_text(transcript.text)
    return redact_joined(texts, separator)


MASKING_STATE = "masking_rules"  # sync_state: the masking rules' edition the stored copies were written with


def remask_stored_copies(engine: Engine, *, batch: int = 500, progress: Callable[[int], None] | None = None) -> int:
    """Rewrite the masked copies (`notes.transcript_text`: what handhelds sync and stewards search) written
    under other masking rules than this release's (`speech.redact.MASKING_RULES`); how many changed. A
    release that masks more (a landline in comma groups, digit names run into a word) otherwise left every
    earlier transcript's copy as it was, and stewards read and searched those numbers whole.

    In batches by id, each its own transaction, taken as a REST write takes them (the change sequence, then
    the rows), so that a worker or a supervisor's correction writing a copy meanwhile is not overwritten with
    one made from an older text; each changed note gets a new version and change sequence number, so the
    next pull brings it to the handhelds."""
    from sync.models import SyncState
    from sync.tracking import allocate_seq, insert_ignore

    with Session(engine) as session:
        state = session.get(SyncState, MASKING_STATE)
        if state is not None and state.value == MASKING_RULES:
            return 0
    changed, after = 0, None
    while True:
        with Session(engine) as session:
            allocate_seq(session)
            page = select(Note).where(col(Note.transcript_text).is_not(None))
            if after is not None:
                page = page.where(col(Note.id) > after)
            notes = session.exec(page.order_by(col(Note.id)).limit(batch).with_for_update()).all()
            if not notes:
                break
            transcripts = {t.id: t for t in session.exec(
                select(Transcript).where(col(Transcript.id).in_([n.id for n in notes]))).all()}
            for note in notes:
                transcript = transcripts.get(note.id)
                masked = (hide_digits(_masked_text(transcript), _kept_hidden(transcript, note)
                                      | _hidden_in_history(session, transcript))
                          if transcript is not None and transcript.text else None)
                if masked is not None and masked != note.transcript_text:
                    note.transcript_text = masked
                    session.add(note)
                    changed += 1
            session.commit()
            after = notes[-1].id
        if progress is not None:
            progress(len(notes))
    # Written whether or not another process recorded it meanwhile: API containers that start together each
    # run `db upgrade`, and both found no edition recorded; the second's plain INSERT then failed on the
    # first one's row and its container stopped before serving.
    now, table = utcnow(), SyncState.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        insert_ignore(conn, table, {"name": MASKING_STATE, "value": MASKING_RULES, "updated_at": now})
        conn.execute(update_rows(table).where(table.c.name == MASKING_STATE)
                     .values(value=MASKING_RULES, updated_at=now))
    return changed


def _redact_segments(texts: list[str], transcript: Transcript, keep_hidden: Collection[str] = ()) -> list[str]:
    """Segment texts masked as they read in the transcript's text: a number may be split between two
    segments, and masked alone each half would show what the text masks. The digits of `keep_hidden` (what
    earlier versions hid) are masked as they read in the text too, across a segment boundary as well."""
    return redact_parts(texts, segment_separator(transcript.language or "zh"), keep_hidden)


def get(*, session: Session, user: User, id: uuid.UUID) -> Transcript:
    """A transcript whose recording the user may see."""
    row = session.exec(select(Transcript).join(Note, col(Note.id) == Transcript.id)
                       .where(col(Transcript.id) == id, note_clause(user))).first()
    if row is None:
        raise NotFound(f"No transcript with id {id} (or it is outside your grid).")
    return row


def list_transcripts(*, session: Session, settings: Settings, user: User, page: Page,
                     status: TranscriptState | None = None, category: str | None = None,
                     date_from: date | None = None, date_to: date | None = None,
                     steward_id: uuid.UUID | None = None, work_order_id: uuid.UUID | None = None,
                     q: str | None = None) -> tuple[list[Transcript], int]:
    """Transcripts the user may see, newest recording first, filtered."""
    stmt = transcripts_query(session=session, settings=settings, user=user, status=status, category=category,
                             date_from=date_from, date_to=date_to, steward_id=steward_id,
                             work_order_id=work_order_id, q=q)
    return access.paged(session, stmt, page, col(Note.recorded_at).desc(), col(Transcript.id))


def transcripts_query(*, session: Session, settings: Settings, user: User, status: TranscriptState | None = None,
                      category: str | None = None, date_from: date | None = None, date_to: date | None = None,
                      steward_id: uuid.UUID | None = None, work_order_id: uuid.UUID | None = None,
                      q: str | None = None) -> Any:
    """The select of transcripts (joined with their notes) the user may see, with the API's filters: one
    definition for the API's list and the console's review queue."""
    stmt = select(Transcript).join(Note, col(Note.id) == Transcript.id).where(note_clause(user))
    if status is not None:
        stmt = stmt.where(col(Transcript.status) == status)
    if category:
        # autoescape: `%` and `_` are characters to find, not LIKE wildcards that match every row
        stmt = stmt.where(col(Transcript.categories).contains(f",{check_category(settings, category)},",
                                                              autoescape=True))
    zone = ZoneInfo(settings.timezone)  # a date is a local calendar day
    if date_from is not None and (start := _day_start(date_from, zone)) is not None:
        stmt = stmt.where(col(Note.recorded_at) >= start)
    if date_to is not None and (end := _day_start(date_to, zone, later=1)) is not None:
        stmt = stmt.where(col(Note.recorded_at) < end)
    if steward_id is not None:
        stmt = stmt.where(col(Note.owner_id) == steward_id)
    if work_order_id is not None:
        stmt = stmt.where(or_work_order(work_order_id))
    if q and q.strip():
        bind = session.get_bind()
        assert isinstance(bind, Engine)
        stmt = stmt.where(search_clause(q, bind, masked=not can_view_pii(user)))
    return stmt


def categories(settings: Settings) -> list[str]:
    """The categories a transcript can be tagged with: the glossary's, and those of the work-order list."""
    return sorted({*load_glossary(settings.speech_glossary).categories, *(c.value for c in Category)})


def check_category(settings: Settings, category: str) -> str:
    """`category` if it is one of `categories`; otherwise 422 naming them. Tags are stored as the glossary names
    them, and LIKE on SQLite ignores ASCII case (PostgreSQL does not): `LEAK` matched `leak` on one backend."""
    known = categories(settings)
    if category not in known:
        raise Unprocessable(f"Unknown category {category!r}; use one of: {', '.join(known)}.",
                            code="invalid_category")
    return category


def _day_start(day: date, zone: ZoneInfo, *, later: int = 0) -> datetime | None:
    """When the local day `later` days after `day` begins, in UTC; None when that instant is outside the
    datetime range (the day after 9999-12-31, or 0001-01-01 east of UTC): every storable time then lies on the
    same side of it, so the bound filters nothing."""
    try:
        return datetime.combine(day + timedelta(days=later), time.min, zone).astimezone(UTC)
    except OverflowError:
        return None


def or_work_order(work_order_id: uuid.UUID) -> Any:
    """Recordings linked to the work order, or that opened it."""
    return (col(Note.work_order_id) == work_order_id) | (col(Transcript.draft_work_order_id) == work_order_id)


def revisions(*, session: Session, transcript: Transcript) -> list[TranscriptRevision]:
    """The edit history, oldest first."""
    return list(session.exec(select(TranscriptRevision).where(TranscriptRevision.transcript_id == transcript.id)
                             .order_by(col(TranscriptRevision.revision))).all())


def present_revisions(*, session: Session, user: User, transcript: Transcript) -> list[RevisionPublic]:
    """The edit history as this user may read it: without the view_pii right, each text before and after
    is masked as it read within the whole transcript at that revision (like the segments themselves)."""
    rows = revisions(session=session, transcript=transcript)
    if can_view_pii(user):
        return [RevisionPublic.model_validate(r, from_attributes=True) for r in rows]
    steps = _versions(transcript, rows)
    # What any version hid stays hidden in every other: a mobile moved between two segments one save at a time
    # did not read as a number in between, and the history gave its middle digits back.
    hidden = _ever_hidden(steps)
    out = []
    for row, before, after in steps:
        changes = [c | {"before": before.shown(c["index"], c["before"], hidden),
                        "after": after.shown(c["index"], c["after"], hidden)} for c in row.changes]
        out.append(RevisionPublic(revision=row.revision, user_id=row.user_id, at=row.at, changes=changes))
    return out[::-1]


def _versions(transcript: Transcript, rows: list[TranscriptRevision]
              ) -> list[tuple[TranscriptRevision, _Segments, _Segments]]:
    """Each revision, newest first, with the segment texts before and after it: a walk back from the current
    texts, undoing one revision at a time."""
    texts = [s["text"] for s in transcript.segments]
    steps = []
    for row in reversed(rows):
        after = _Segments(transcript, list(texts))
        for change in reversed(row.changes):
            if 0 <= change["index"] < len(texts):
                texts[change["index"]] = change["before"]
        steps.append((row, _Segments(transcript, list(texts)), after))
    return steps


def _ever_hidden(steps: list[tuple[TranscriptRevision, _Segments, _Segments]]) -> set[str]:
    """The digit strings any version of the history hid."""
    return set().union(*(seg.hidden for _, before, after in steps for seg in (before, after)))


def _hidden_in_history(session: Session, transcript: Transcript) -> set[str]:
    """What any version of a corrected transcript hid (none for one never corrected)."""
    if not transcript.revision:
        return set()
    return _ever_hidden(_versions(transcript, revisions(session=session, transcript=transcript)))


class _Segments:
    """A transcript's segment texts at one revision, masked together once."""

    def __init__(self, transcript: Transcript, texts: list[str]) -> None:
        self.transcript, self.texts = transcript, texts
        self.masked = _redact_segments(texts, transcript)
        # Read in the segments joined: a number split between two segments (13800 + 138000) hides pieces of
        # under three digits in each, which alone name nothing, and the history forgot the number.
        separator = segment_separator(transcript.language or "zh")
        self.hidden = hidden_digits(separator.join(texts), separator.join(self.masked))

    def shown(self, index: int, text: str, keep_hidden: Collection[str] = ()) -> str:
        """`text` masked as segment `index` among the others (a history that does not match, such as two
        edits of one segment in a revision, is masked with that text put in place), with the digits of
        `keep_hidden` masked as they read across the segments."""
        if not 0 <= index < len(self.texts):
            return hide_digits(redact_text(text), set(keep_hidden))
        texts = [*self.texts[:index], text, *self.texts[index + 1:]]
        if not keep_hidden and self.texts[index] == text:
            return self.masked[index]
        return _redact_segments(texts, self.transcript, keep_hidden)[index]


# --- review ---------------------------------------------------------------------------------------------


def update(*, session: Session, settings: Settings, user: User, transcript: Transcript,
           data: TranscriptUpdate) -> Transcript:
    """Correct segment texts; the edit is kept as a revision (who, when, before and after)."""
    from speech.jobs import sequence_first
    if transcript.status != TranscriptState.transcribed:
        raise InvalidTransition(f"Only a transcribed, not yet approved transcript can be corrected (it is "
                                f"{transcript.status.value}).")
    if data.base_revision is not None and data.base_revision != transcript.revision:
        raise Conflict(f"The transcript is at revision {transcript.revision}, not {data.base_revision}; reload it "
                       "and apply your corrections again.", code="stale_revision")
    language = transcript.language or "zh"
    segments, changes = _apply_edits(transcript.segments, data, language)
    if not changes:
        return transcript
    note = session.get(Note, transcript.id)
    # What the text hid until now: the masked copy's, and every earlier version's. From the copy alone, a
    # number taken out by one correction was forgotten, and typed back by the next its digits were shown.
    hidden = _kept_hidden(transcript, note) | _hidden_in_history(session, transcript) if note is not None else set()
    now = utcnow()
    text = join_segments([s["text"] for s in segments], language)
    tags = categorize(text, load_glossary(settings.speech_glossary))
    sequence_first(session)  # the note's synced text is written after the transcript's row
    _write_if_unmoved(session, transcript, "apply your corrections again", revision=transcript.revision + 1,
                      segments=segments, text=text, categories="," + ",".join(tags) + ",", updated_at=now)
    session.add(TranscriptRevision(transcript_id=transcript.id, revision=transcript.revision, user_id=user.id,
                                   at=now, changes=changes))
    note = _sync_note_text(session, transcript, hidden)
    if note is not None:
        _open_draft(session, settings, user, transcript, note, tags)
    session.commit()
    return transcript


def _open_draft(session: Session, settings: Settings, user: User, transcript: Transcript, note: Note,
                tags: list[str]) -> None:
    """A correction that makes a call a leak or a cold-home report opens the draft work order the worker opens
    for such a call (`jobs._complete`), on behalf of the supervisor correcting it: the order commits with the
    correction, then the transcript is linked to it. A transcript with a draft keeps it, also when the
    correction takes the tag away (a person closes it, the text may be wrong), and never opens a second one.
    A refused draft (logged) does not refuse the correction."""
    from speech import jobs

    if not settings.speech_draft_work_orders or transcript.draft_work_order_id is not None:
        return
    category = jobs.draft_category(note, tags)
    if category is None:
        return
    order_id = jobs.draft_work_order_id(note.id)
    if session.get(WorkOrder, order_id) is None:  # else a link lost after its order committed: linked now
        try:
            jobs.open_draft(session, settings, note, category, note.transcript_text or "", author=user)
        except DomainError as exc:  # refused before anything was added: the correction is still to commit
            log.warning("correction of call %s opened no draft work order: %s", note.id, exc.message)
            return
    stmt = (update_rows(Transcript)
            .where(col(Transcript.id) == transcript.id, col(Transcript.draft_work_order_id).is_(None))
            .values(draft_work_order_id=order_id))
    session.connection().execute(stmt)
    session.refresh(transcript)


def _apply_edits(current: list[dict[str, Any]], data: TranscriptUpdate, language: str
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The segments after the edits (a new list: JSON columns do not see in-place changes), and the changes.

    Each text is written in the form the pipeline writes (`to_simplified`: Simplified characters, ASCII digits
    and letters) so that it is tagged and found like the model's: typed as 暖氣不熱 in an IME's Traditional
    or full-width mode, it was tagged `other` and missed by a search for 暖气. In another language (the
    pipeline leaves its characters alone: Cantonese is written in Traditional ones) only digits and letters
    become ASCII."""
    segments = [dict(s) for s in current]
    changes = []
    edited: set[int] = set()
    for edit in data.segments:
        if edit.index >= len(segments):
            raise Unprocessable(f"Segment {edit.index} does not exist (the transcript has {len(segments)}).",
                                code="no_such_segment")
        if edit.index in edited:  # two texts for one segment: which one was meant?
            raise Unprocessable(f"Segment {edit.index} is edited more than once; send one text per segment.",
                                code="duplicate_segment")
        edited.add(edit.index)
        before = segments[edit.index]["text"]
        after = edit.text.strip()
        after = to_simplified(after) if language.startswith("zh") else half_width(after)
        if after != before:
            segments[edit.index]["text"] = after
            changes.append({"index": edit.index, "before": before, "after": after})
    return segments, changes


def approve(*, session: Session, user: User, transcript: Transcript, base_revision: int | None = None) -> Transcript:
    """Mark the transcript reviewed; it can no longer be edited. With `base_revision` (the console sends the one
    it shows), only if no one corrected it since: approving locked in text the approver had never seen."""
    if transcript.status != TranscriptState.transcribed:
        raise InvalidTransition(f"Only a transcribed transcript can be approved (it is {transcript.status.value}).")
    if base_revision is not None and base_revision != transcript.revision:
        raise Conflict(f"The transcript is at revision {transcript.revision}, not {base_revision}: someone corrected "
                       "it meanwhile; review the new text and approve it again.", code="stale_revision")
    now = utcnow()
    _write_if_unmoved(session, transcript, "review the new text and approve it again",
                      status=TranscriptState.approved, approved_by_id=user.id, approved_at=now, updated_at=now)
    session.commit()
    return transcript


def retry(*, session: Session, user: User, transcript: Transcript) -> Transcript:
    """Queue a failed transcript again, with a fresh count of attempts (its audio was replaced, the model or a
    setting was fixed); the failure reason is cleared. Only from `failed`, in one conditional UPDATE."""
    from speech.jobs import _note_status, sequence_first

    if transcript.status != TranscriptState.failed:
        raise InvalidTransition(f"Only a failed transcript can be retried (it is {transcript.status.value}).")
    now = utcnow()
    sequence_first(session)  # the note's status is written after the transcript's row
    stmt = (update_rows(Transcript)
            .where(col(Transcript.id) == transcript.id, col(Transcript.status) == TranscriptState.failed)
            .values(status=TranscriptState.queued, retry_base=Transcript.attempts, failure_reason=None,
                    next_attempt_at=now,
                    lease_until=None, updated_at=now))
    if session.connection().execute(stmt).rowcount != 1:
        session.rollback()
        raise InvalidTransition("The transcript is no longer failed: someone retried it meanwhile.")
    _note_status(session, transcript.id, TranscriptStatus.pending)
    session.commit()
    session.refresh(transcript)
    log.info("transcript %s queued again by %s", transcript.id, user.id)
    return transcript


def _write_if_unmoved(session: Session, transcript: Transcript, retry: str, **values: Any) -> None:
    """Write `values` to the transcript's row only if it is still transcribed and at the revision read, in one
    conditional UPDATE; else roll back and refuse (409), `retry` saying what to do next.

    Checking in Python and writing later let two edits based on one revision both succeed (the second
    silently undoing the first) and an edit land on a transcript approved in between.
    """
    read = transcript.revision
    stmt = (update_rows(Transcript)
            .where(col(Transcript.id) == transcript.id, col(Transcript.revision) == read,
                   col(Transcript.status) == TranscriptState.transcribed)
            .values(**values))
    if session.connection().execute(stmt).rowcount == 1:
        session.refresh(transcript)  # the row as written, in this transaction
        return
    session.rollback()
    current = session.get(Transcript, transcript.id)  # reloaded: the rollback expired what was read
    if current is None:
        raise NotFound(f"No transcript with id {transcript.id} (it was deleted meanwhile).")
    if current.status != TranscriptState.transcribed:
        raise InvalidTransition(f"The transcript was {current.status.value} meanwhile; it can no longer be "
                                "changed.")
    raise Conflict(f"The transcript moved on to revision {current.revision} (you read {read}) meanwhile; reload "
                   f"it and {retry}.", code="stale_revision")


def _sync_note_text(session: Session, transcript: Transcript, hidden: set[str]) -> Note | None:
    """The note's masked copy of the corrected text, still hiding the `hidden` digits of earlier versions."""
    note = session.get(Note, transcript.id)
    if note is not None:
        note.transcript_text = hide_digits(_masked_text(transcript), hidden)
    return note
