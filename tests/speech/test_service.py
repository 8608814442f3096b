"""The transcript service on both backends, below the routes: what a refused write leaves behind, and
writes that race (two sessions, as two requests would be)."""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import StatementError
from sqlmodel import Session, col, delete, func, select

from api.db import utcnow
from api.errors import Conflict, InvalidTransition
from api.notes.models import Note, NoteKind
from api.settings import Settings
from api.work_orders.models import Category, Priority, Source, WorkOrder
from speech import jobs, service
from speech.models import (
    Call,
    CallMetadata,
    SegmentEdit,
    Transcript,
    TranscriptRevision,
    TranscriptState,
    TranscriptUpdate,
)
from speech.redact import MASKING_RULES
from speech.storage import store_audio
from sync.models import SyncState
from tests.speech.conftest import FIXTURES
from tests.speech.service_helpers import make_transcript
from tests.utils.factories import World, make_work_order, make_world
from tests.utils.threads import errors_running_together

LEAK = (FIXTURES / "leak_report.wav").read_bytes()


@pytest.fixture
def sp_settings(settings: Settings, tmp_path: Path) -> Settings:
    """No queue: nothing transcribes behind the tests' back."""
    return settings.model_copy(update={"blob_dir": tmp_path / "blobs", "speech_queue": "off"})


@pytest.fixture
def world(session: Session, sp_settings: Settings) -> World:
    return make_world(session, sp_settings)


def stored_blobs(settings: Settings) -> list[Path]:
    """Complete blobs in the local store (not the staging area of uploads in progress)."""
    root = Path(settings.blob_dir)  # type: ignore[arg-type]
    return [p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in ("tmp", "partial")]


def unstorable_metadata() -> CallMetadata:
    """Metadata that passes no validation (built as is) and that the database refuses at commit: a start time
    with no UTC equivalent."""
    return CallMetadata.model_construct(caller_phone="13800138000", agent="agent-07", household_id=None,
                                        work_order_id=None,
                                        started_at=datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))))


def test_a_call_refused_at_commit_takes_its_new_audio_back(world: World, session: Session,
                                                           sp_settings: Settings) -> None:
    """Regression: the recording was stored before the commit and stayed in the blob store when the commit
    failed, referenced by nothing."""
    with pytest.raises(StatementError):
        service.create_call(session=session, settings=sp_settings, user=world.supervisor,
                            metadata=unstorable_metadata(), audio=LEAK)
    assert session.exec(select(func.count()).select_from(Note)).one() == 0
    assert stored_blobs(sp_settings) == []


def test_a_call_refused_at_commit_keeps_audio_that_was_already_stored(world: World, session: Session,
                                                                      sp_settings: Settings) -> None:
    """The same bytes stored before (a handheld's upload, an earlier call) belong to someone else: kept."""
    store_audio(sp_settings, LEAK)
    with pytest.raises(StatementError):
        service.create_call(session=session, settings=sp_settings, user=world.supervisor,
                            metadata=unstorable_metadata(), audio=LEAK)
    assert len(stored_blobs(sp_settings)) == 1


@pytest.mark.parametrize("found_stored", [True, False])
def test_a_call_stores_its_audio_again_when_a_refused_call_took_the_same_bytes_back(
        world: World, session: Session, sp_settings: Settings, monkeypatch: pytest.MonkeyPatch,
        found_stored: bool) -> None:
    """Regression (race): a call that found its bytes stored (added by a second call with the same recording)
    committed a note whose audio the second call, refused, had taken back in between. Regression (review):
    the same when both looked before either stored, so that each stored them (`added` for both)."""
    sha256 = store_audio(sp_settings, LEAK) if found_stored else hashlib.sha256(LEAK).hexdigest()
    record_call = service._record_call

    def taken_back_meanwhile(*args: Any) -> Transcript:
        service.remove_audio(sp_settings, sha256)  # the refused call's take-back, after this call found the blob
        return record_call(*args)

    monkeypatch.setattr(service, "_record_call", taken_back_meanwhile)
    transcript = service.create_call(session=session, settings=sp_settings, user=world.supervisor,
                                     metadata=CallMetadata.model_validate({
                                         "caller_phone": "13800138000", "started_at": "2026-11-29T08:00:00Z",
                                         "agent": "agent-07"}), audio=LEAK)
    assert session.get(Note, transcript.id).audio_sha256 == sha256  # type: ignore[union-attr]
    assert [p.name for p in stored_blobs(sp_settings)] == [sha256]


def test_a_take_back_waits_for_a_note_naming_the_bytes_that_is_being_written(
        world: World, engine: Engine, sp_settings: Settings) -> None:
    """Regression (race): the take-back looked for a note naming the bytes and deleted them while a push or
    another call was committing one: a note without its audio. It now looks under the change sequence that
    every note's insert holds until its commit, so it waits and sees the note."""
    sha256 = store_audio(sp_settings, LEAK)
    writer = Session(engine)
    writer.add(Note(owner_id=world.steward_a.id, kind=NoteKind.voice_note, audio_sha256=sha256, duration_s=5.0,
                    recorded_at=utcnow()))
    writer.flush()  # written, holding the change sequence, not committed
    done = threading.Event()

    def take_back() -> None:
        with Session(engine) as s:
            service._take_back_audio(s, sp_settings, sha256)
        done.set()

    thread = threading.Thread(target=take_back)
    thread.start()
    assert not done.wait(1.0)  # it waits for the writer
    writer.commit()
    writer.close()
    thread.join(30)
    assert done.is_set()
    assert [p.name for p in stored_blobs(sp_settings)] == [sha256]


def edit(index: int, text: str, base_revision: int | None = None) -> TranscriptUpdate:
    return TranscriptUpdate(segments=[SegmentEdit(index=index, text=text)], base_revision=base_revision)


def two_readers(engine: Engine, world: World, transcript: Transcript) -> tuple[Session, Session, Transcript,
                                                                                Transcript]:
    """Two requests' sessions that have both read the transcript."""
    a, b = Session(engine, expire_on_commit=False), Session(engine, expire_on_commit=False)
    return (a, b, service.get(session=a, user=world.supervisor, id=transcript.id),
            service.get(session=b, user=world.supervisor, id=transcript.id))


def stored(engine: Engine, transcript: Transcript) -> tuple[Transcript, list[int]]:
    """The transcript as committed, and its revision numbers."""
    with Session(engine) as s:
        row = s.get(Transcript, transcript.id)
        assert row is not None
        revisions = s.exec(select(TranscriptRevision.revision)
                           .where(col(TranscriptRevision.transcript_id) == transcript.id)).all()
        return row, sorted(revisions)


@pytest.mark.parametrize("base_revision", [0, None])
def test_two_edits_of_the_same_revision_cannot_both_land(world: World, engine: Engine, session: Session,
                                                          sp_settings: Settings, base_revision: int | None) -> None:
    """Regression (lost update): both edits were checked against revision 0 before either wrote, and both were
    written: the second put segment 0 back and recorded a second revision 1."""
    t = make_transcript(session, world.steward_a, "一", "二", household_id=world.household_a.id)
    a, b, ta, tb = two_readers(engine, world, t)
    with a, b:
        service.update(session=a, settings=sp_settings, user=world.supervisor, transcript=ta,
                       data=edit(0, "A改", base_revision))
        with pytest.raises(Conflict) as refused:
            service.update(session=b, settings=sp_settings, user=world.supervisor, transcript=tb,
                           data=edit(1, "B改", base_revision))
    assert refused.value.code == "stale_revision"
    row, revisions = stored(engine, t)
    assert (row.text, row.revision, revisions) == ("A改二", 1, [1])


def test_an_edit_cannot_land_on_a_transcript_approved_meanwhile(world: World, engine: Engine, session: Session,
                                                               sp_settings: Settings) -> None:
    """Regression: the edit checked the status it had read (transcribed) and was written over the approval."""
    t = make_transcript(session, world.steward_a, "一", household_id=world.household_a.id)
    a, b, ta, tb = two_readers(engine, world, t)
    with a, b:
        service.approve(session=b, user=world.supervisor, transcript=tb)
        with pytest.raises(InvalidTransition):
            service.update(session=a, settings=sp_settings, user=world.supervisor, transcript=ta, data=edit(0, "改了"))
    row, revisions = stored(engine, t)
    assert (row.status, row.text, row.revision, revisions) == (TranscriptState.approved, "一", 0, [])


def test_an_approval_cannot_pass_over_an_edit_made_meanwhile(world: World, engine: Engine, session: Session,
                                                            sp_settings: Settings) -> None:
    """An approval is of the text that was read: an edit in between sends the reviewer back to read it."""
    t = make_transcript(session, world.steward_a, "一", household_id=world.household_a.id)
    a, b, ta, tb = two_readers(engine, world, t)
    with a, b:
        service.update(session=a, settings=sp_settings, user=world.supervisor, transcript=ta, data=edit(0, "改了"))
        with pytest.raises(Conflict) as refused:
            service.approve(session=b, user=world.supervisor, transcript=tb)
        assert refused.value.code == "stale_revision"
        again = service.get(session=b, user=world.supervisor, id=t.id)  # reloaded: now it can be approved
        assert service.approve(session=b, user=world.supervisor, transcript=again).status == TranscriptState.approved
    row, _ = stored(engine, t)
    assert (row.status, row.text, row.revision) == (TranscriptState.approved, "改了", 1)


def hotline_call(session: Session, world: World, *texts: str, caller_phone: str = "13800138000",
                 **note_fields: Any) -> Transcript:
    """A transcribed call of household A (tagged `other`), as the worker leaves it."""
    t = make_transcript(session, world.supervisor, *texts,
                        **({"kind": NoteKind.call_recording, "household_id": world.household_a.id} | note_fields))
    session.add(Call(id=t.id, caller_phone=caller_phone, agent="agent-07", started_at=utcnow(),
                     created_by_id=world.supervisor.id))
    session.commit()
    return t


def drafts(engine: Engine) -> list[WorkOrder]:
    with Session(engine) as s:
        return list(s.exec(select(WorkOrder).where(col(WorkOrder.source) == Source.hotline)).all())


def test_a_draft_keeps_every_digit_of_a_long_written_caller_number(
        world: World, engine: Engine, session: Session, sp_settings: Settings) -> None:
    """Regression: a call's number may have 32 characters and a work order's 20; the draft cut it to its
    first 20, so `+86 (531) 8888-6666 转 801` lost the extension the office calls back on."""
    t = hotline_call(session, world, "卫生间漏水了。", caller_phone="+86 (531) 8888-6666 转 801")
    with Session(engine, expire_on_commit=False) as s:
        service.update(session=s, settings=sp_settings, user=world.admin,
                       transcript=service.get(session=s, user=world.admin, id=t.id), data=edit(0, "卫生间漏水了！"))
    [draft] = drafts(engine)
    assert draft.caller_phone == "+8653188886666转801"
    assert jobs.draft_phone("0531-8888-6666") == "0531-8888-6666"  # what fits is kept as written
    assert jobs.draft_phone("1" * 32) == "1" * 20  # only a number of more than 20 digits is still cut


def test_a_correction_that_makes_a_call_a_leak_report_opens_its_draft_work_order(
        world: World, engine: Engine, session: Session, sp_settings: Settings) -> None:
    """Regression: the draft was opened only by the worker, so a call the model heard wrong (落水 for 漏水)
    stayed without one after a supervisor corrected it to a leak report."""
    t = hotline_call(session, world, "我家卫生间落水了，", "请回电13800138000。")
    with Session(engine, expire_on_commit=False) as s:
        corrected = service.update(session=s, settings=sp_settings, user=world.admin,
                                   transcript=service.get(session=s, user=world.admin, id=t.id),
                                   data=edit(0, "我家卫生间漏水了，"))
        assert corrected.category_list == ["leak"] and corrected.draft_work_order_id is not None
    [draft] = drafts(engine)
    row, revisions = stored(engine, t)
    assert (row.draft_work_order_id, row.revision, revisions) == (draft.id, 1, [1])
    assert (draft.id, draft.household_id, draft.category.value, draft.created_by_id) == (
        jobs.draft_work_order_id(t.id), world.household_a.id, "leak", world.admin.id)
    assert draft.description == "[来电转写草稿] 我家卫生间漏水了，请回电138****8000。"  # masked, as the worker's
    assert draft.caller_phone == "13800138000"
    # Later corrections keep it, whether the tag stays or goes (a person decides), and never open a second.
    for i, text in enumerate(("我家卫生间漏水了，暖气片也漏水。", "我家卫生间没事了，"), start=2):
        with Session(engine, expire_on_commit=False) as s:
            again = service.update(session=s, settings=sp_settings, user=world.supervisor,
                                   transcript=service.get(session=s, user=world.supervisor, id=t.id),
                                   data=edit(0, text))
            assert (again.revision, again.draft_work_order_id) == (i, draft.id)
    assert [d.id for d in drafts(engine)] == [draft.id]
    assert stored(engine, t)[0].category_list == ["other"]


@pytest.mark.parametrize("case", ["voice_note", "no_household", "about_an_order", "setting_off", "lost_link"])
def test_a_correction_opens_a_draft_only_where_the_worker_would(world: World, engine: Engine, session: Session,
                                                                sp_settings: Settings, case: str) -> None:
    """The worker's rule, after a correction too: only for a call, about a household, not about an order
    already, with STEWARD_SPEECH_DRAFT_WORK_ORDERS on; a draft already open (its link lost) is linked, not
    opened twice."""
    settings = sp_settings.model_copy(update={"speech_draft_work_orders": case != "setting_off"})
    fields: dict[str, Any] = {"voice_note": {"kind": NoteKind.voice_note},
                              "no_household": {"household_id": None}}.get(case, {})
    if case == "about_an_order":
        fields["work_order_id"] = make_work_order(session, world.household_a, source=Source.visit).id
    t = hotline_call(session, world, "暖气不热吗？", **fields)
    existing = None
    if case == "lost_link":  # the draft committed, its link did not (the process died in between)
        existing = WorkOrder(id=jobs.draft_work_order_id(t.id), household_id=world.household_a.id,
                             category=Category.not_warm, priority=Priority.normal, source=Source.hotline,
                             sla_due_at=utcnow() + timedelta(hours=24))
        session.add(existing)
        session.commit()
    with Session(engine, expire_on_commit=False) as s:
        corrected = service.update(session=s, settings=settings, user=world.supervisor,
                                   transcript=service.get(session=s, user=world.supervisor, id=t.id),
                                   data=edit(0, "暖气不热。"))
    assert corrected.category_list == ["not_warm"]
    assert corrected.draft_work_order_id == (existing.id if existing else None)
    assert [d.id for d in drafts(engine)] == ([existing.id] if existing else [])


def test_a_draft_refused_to_the_corrector_does_not_refuse_the_correction(
        world: World, engine: Engine, session: Session, sp_settings: Settings,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.errors import Forbidden
    from api.work_orders import service as work_orders

    def refused(**kw: Any) -> WorkOrder:
        raise Forbidden("no longer allowed")

    monkeypatch.setattr(work_orders, "create", refused)
    t = hotline_call(session, world, "暖气漏水了")
    with Session(engine, expire_on_commit=False) as s:
        service.update(session=s, settings=sp_settings, user=world.supervisor,
                       transcript=service.get(session=s, user=world.supervisor, id=t.id), data=edit(0, "暖气片漏水了"))
    row, revisions = stored(engine, t)
    assert (row.text, row.category_list, row.draft_work_order_id, revisions) == ("暖气片漏水了", ["leak"], None, [1])
    assert "opened no draft work order: no longer allowed" in caplog.text


def test_a_call_about_a_work_order_is_filed_under_the_orders_household(world: World, session: Session,
                                                                       sp_settings: Settings) -> None:
    """Regression: a call naming only its work order was stored without a household (notes took the order's),
    so it was missing from the household's recordings and from its steward's grid."""
    order = make_work_order(session, world.household_b)
    metadata = CallMetadata.model_validate({"caller_phone": "13800138000", "started_at": "2026-11-29T08:00:00Z",
                                            "agent": "agent-07", "work_order_id": str(order.id)})
    t = service.create_call(session=session, settings=sp_settings, user=world.supervisor, metadata=metadata,
                            audio=LEAK)
    note = session.get(Note, t.id)
    assert note is not None and (note.household_id, note.work_order_id) == (world.household_b.id, order.id)
    assert service.get(session=session, user=world.steward_b, id=t.id).id == t.id  # in the steward's grid


def test_an_upgrade_rewrites_the_masked_copies_written_under_older_rules(session: Session, engine: Engine,
                                                                         world: World) -> None:
    """Regression (upgrade walkthrough): a release that masks more left the masked copies stored before as they
    were, and stewards read, synced and searched those numbers whole (`座机0531，8888，6666`)."""
    old = make_transcript(session, world.steward_a, "座机0531，8888，6666，回电。", household_id=world.household_a.id)
    fine = make_transcript(session, world.steward_a, "暖气不热。", household_id=world.household_a.id)
    note = session.get(Note, old.id)
    assert note is not None
    note.transcript_text = "座机0531，8888，6666，回电。"  # what the previous release's rules left
    session.add(note)
    session.commit()
    version, seq = note.version, note.seq
    assert service.remask_stored_copies(engine, batch=1) == 1
    session.expire_all()
    note = session.get(Note, old.id)
    assert note is not None and note.transcript_text == "座机0531，****，6666，回电。"
    assert note.version > version and note.seq > seq  # the next pull brings the new copy to handhelds
    untouched = session.get(Note, fine.id)
    assert untouched is not None and untouched.transcript_text == "暖气不热。"
    # once per edition of the rules: a second upgrade does not walk the notes again
    note.transcript_text = "座机0531，8888，6666，回电。"
    session.add(note)
    session.commit()
    assert service.remask_stored_copies(engine) == 0


def test_an_upgrade_hides_again_what_a_version_before_the_last_hid(session: Session, engine: Engine, world: World,
                                                                    sp_settings: Settings) -> None:
    """Regression (review): a correction that took the number out made a copy with nothing to remember it by,
    and the one that typed it back (its shape broken) showed its middle digits. Copies written so by an earlier
    release are masked again from the whole history at the upgrade (masking rules 5)."""
    t = make_transcript(session, world.steward_a, "请回电13800138000", "谢谢", household_id=world.household_a.id)
    for index, text in ((0, "请回电1380013800"), (0, "请回电"), (1, "1380013800谢谢")):
        service.update(session=session, settings=sp_settings, user=world.supervisor, transcript=t,
                       data=edit(index, text))
    note = session.get(Note, t.id)
    assert note is not None and note.transcript_text == "请回电138****800谢谢"
    note.transcript_text = "请回电1380013800谢谢"  # what the previous release wrote
    session.add(note)
    session.commit()
    session.exec(delete(SyncState).where(col(SyncState.name) == service.MASKING_STATE))  # an older release's
    session.commit()
    assert service.remask_stored_copies(engine) == 1
    session.expire_all()
    note = session.get(Note, t.id)
    assert note is not None and note.transcript_text == "请回电138****800谢谢"


def test_an_upgrade_keeps_hiding_what_an_earlier_version_of_the_text_hid(session: Session, engine: Engine,
                                                                          world: World) -> None:
    """Regression (review): a corrected text that lost a digit (1380013800) no longer reads as a mobile; its copy
    keeps hiding the digits the first version hid, and rewriting the copies under new rules must too."""
    t = make_transcript(session, world.steward_a, "请回电1380013800", household_id=world.household_a.id)
    note = session.get(Note, t.id)
    assert note is not None
    note.transcript_text = "请回电138****800"  # written by the correction that dropped the digit
    session.add(note)
    session.commit()
    session.exec(delete(SyncState).where(col(SyncState.name) == service.MASKING_STATE))  # an older release's
    session.commit()
    service.remask_stored_copies(engine)
    session.expire_all()
    note = session.get(Note, t.id)
    assert note is not None and note.transcript_text == "请回电138****800"


def test_two_upgrades_at_once_both_record_the_masking_rules(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (multi-process review): two API containers that start together each run `steward db upgrade`;
    the migrations take turns, but both then found no masking edition recorded (a new database, or a release
    that changed the rules) and both inserted it: the second failed on the first one's row (PostgreSQL: unique
    violation; SQLite: its stale read could not become a write), and its container stopped before serving."""
    from sync.models import SyncState

    both_read = threading.Barrier(2)

    def at_once() -> datetime:  # the state's timestamp, taken by both after their read of the state
        both_read.wait(timeout=20)
        return utcnow()

    monkeypatch.setattr(service, "utcnow", at_once)
    assert errors_running_together(lambda: service.remask_stored_copies(engine), timeout=60) == []
    with Session(engine) as s:
        state = s.get(SyncState, service.MASKING_STATE)
        assert state is not None and state.value == MASKING_RULES
