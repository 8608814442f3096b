"""The transcript service on both backends, below the routes: what a refused write leaves behind, and
writes that race (two sessions, as two requests would be)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import StatementError
from sqlmodel import Session, col, func, select

from api.errors import Conflict, InvalidTransition
from api.notes.models import Note
from api.settings import Settings
from speech import service
from speech.models import CallMetadata, SegmentEdit, Transcript, TranscriptRevision, TranscriptState, TranscriptUpdate
from speech.storage import store_audio
from tests.speech.conftest import FIXTURES
from tests.speech.service_helpers import make_transcript
from tests.utils.factories import World, make_world

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
