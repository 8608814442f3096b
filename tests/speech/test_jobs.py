"""The transcription job's outcome is written exactly once, even when the job dies half-way and is retried:
a hotline call's transcript and its draft work order commit together, and a retry never opens a second
draft (found by the worker crash test, tests/stress/test_worker_crash.py). Every waiting note whose audio
arrived is queued, and no stale worker or promoter overwrites what came after it."""

from __future__ import annotations

import contextlib
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from api.notes.models import Note, TranscriptStatus
from api.settings import Settings
from api.users.models import Role, User
from api.work_orders.models import Source, WorkOrder
from speech import jobs
from speech import service as speech_service
from speech.engines import Segment
from speech.models import CallMetadata, Transcript, TranscriptState, TranscriptUpdate
from speech.pipeline import Pipeline
from speech.pipeline import Transcript as Result
from speech.storage import store_audio
from sync.tracking import allocate_seq
from tests.speech.conftest import FIXTURES
from tests.speech.service_helpers import bundled_model_dir
from tests.utils.asserts import someone_waits_for_a_lock
from tests.utils.factories import World, make_note, make_world

LEAK = (FIXTURES / "leak_report.wav").read_bytes()


def leak_glossary(directory: Path) -> Path:
    """The bundled glossary, plus 落水 as a word for a leak: what the base model hears in leak_report.wav
    ("暖气落水了"), so that the call opens a draft work order as a site's own glossary would make it."""
    from importlib import resources

    from speech.glossary import BUNDLED_GLOSSARY

    text = resources.files("speech").joinpath("data", BUNDLED_GLOSSARY).read_text("utf-8")
    assert 'leak = ["漏水"' in text
    path = directory / "glossary.toml"
    path.write_text(text.replace('leak = ["漏水"', 'leak = ["落水", "漏水"', 1), "utf-8")
    return path


@pytest.fixture
def job_settings(settings: Settings, speech_data_dir: Path, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"whisper_model": bundled_model_dir(speech_data_dir),
                                       "blob_dir": tmp_path / "blobs", "speech_queue": "off",
                                       "speech_glossary": leak_glossary(tmp_path)})


@pytest.fixture
def world(session: Session, job_settings: Settings) -> World:
    return make_world(session, job_settings)


def _queued_call(session: Session, settings: Settings, world: World) -> uuid.UUID:
    metadata = CallMetadata.model_validate({"caller_phone": "13800138000", "started_at": "2026-11-29T08:00:00+08:00",
                                            "agent": "agent-07", "household_id": str(world.household_a.id)})
    transcript = speech_service.create_call(session=session, settings=settings, user=world.supervisor,
                                            metadata=metadata, audio=LEAK)
    return transcript.id


def _drafts(engine: Engine, world: World) -> list[WorkOrder]:
    with Session(engine) as s:
        return list(s.exec(select(WorkOrder).where(col(WorkOrder.household_id) == world.household_a.id,
                                                   col(WorkOrder.source) == Source.hotline)).all())


def _transcript(engine: Engine, transcript_id: uuid.UUID) -> Transcript:
    with Session(engine) as s:
        transcript = s.get(Transcript, transcript_id)
        assert transcript is not None
        return transcript


def test_a_job_that_dies_before_its_draft_work_order_is_retried_and_opens_it(
        engine: Engine, session: Session, world: World, job_settings: Settings, faster_pipeline: Pipeline,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from api.work_orders import service as work_orders

    transcript_id = _queued_call(session, job_settings, world)
    real_create = work_orders.create

    def dies(**kw: Any) -> WorkOrder:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(work_orders, "create", dies)
    assert jobs.claim(engine, transcript_id)
    with pytest.raises(ConnectionError):
        jobs.run(engine, job_settings, transcript_id, pipeline=faster_pipeline)
    # Nothing of the outcome is half-written, and the job is retried like any other error.
    transcript = _transcript(engine, transcript_id)
    assert (transcript.status, transcript.failure_reason) == (TranscriptState.queued,
                                                              "ConnectionError: the database went away")
    assert _drafts(engine, world) == []
    monkeypatch.setattr(work_orders, "create", real_create)
    assert jobs.claim(engine, transcript_id, takeover=True)  # procrastinate retries the job
    assert jobs.run(engine, job_settings, transcript_id, pipeline=faster_pipeline) == TranscriptState.transcribed
    [draft] = _drafts(engine, world)
    assert _transcript(engine, transcript_id).draft_work_order_id == draft.id


def test_a_retry_after_the_draft_was_written_does_not_open_a_second_one(
        engine: Engine, session: Session, world: World, job_settings: Settings, faster_pipeline: Pipeline) -> None:
    transcript_id = _queued_call(session, job_settings, world)
    assert jobs.claim(engine, transcript_id)
    assert jobs.run(engine, job_settings, transcript_id, pipeline=faster_pipeline) == TranscriptState.transcribed
    [draft] = _drafts(engine, world)
    # The worker died after writing and before procrastinate recorded the job as done: the job runs again.
    with Session(engine) as s:
        transcript = s.get(Transcript, transcript_id)
        assert transcript is not None
        transcript.status = TranscriptState.running
        s.commit()
    assert jobs.claim(engine, transcript_id, takeover=True)
    assert jobs.run(engine, job_settings, transcript_id, pipeline=faster_pipeline) == TranscriptState.transcribed
    assert [d.id for d in _drafts(engine, world)] == [draft.id]
    assert _transcript(engine, transcript_id).draft_work_order_id == draft.id
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(WorkOrder)).one() == 1


class Scripted:
    """Stands in for the model where a test is about what happens around transcription."""

    def __init__(self, text: str = "暖气漏水了，3号楼2单元501室。", *more: str) -> None:
        self.texts = (text, *more)

    def run(self, audio: object) -> Result:
        return Result(engine="faster-whisper", model="scripted", language="zh", duration=7.2 * len(self.texts),
                      segments=[Segment(start=7.2 * i, end=7.2 * (i + 1), text=text, avg_logprob=-0.2,
                                        no_speech_prob=0.01) for i, text in enumerate(self.texts)])


def _note_status(engine: Engine, note_id: uuid.UUID) -> TranscriptStatus:
    with Session(engine) as s:
        note = s.get(Note, note_id)
        assert note is not None
        return note.transcript_status


def test_a_note_whose_audio_arrived_is_queued_behind_any_number_that_never_get_it(
        engine: Engine, session: Session, world: World, job_settings: Settings) -> None:
    # A full page of notes from handhelds that never uploaded (a lost phone), older than the one that did.
    session.add_all([Note(owner_id=world.steward_a.id, audio_sha256=f"{i:064x}", duration_s=5.0,
                          recorded_at=world.household_a.created_at) for i in range(500)])
    session.commit()
    late = make_note(session, world.steward_a, audio_sha256=store_audio(job_settings, LEAK))
    assert jobs.promote_waiting(engine, job_settings) == [late.id]
    assert _transcript(engine, late.id).status == TranscriptState.queued
    assert _note_status(engine, late.id) == TranscriptStatus.pending  # the handheld sees it is on its way
    assert jobs.promote_waiting(engine, job_settings) == []


def _waiting_note(session: Session, world: World, settings: Settings) -> uuid.UUID:
    return make_note(session, world.steward_a, audio_sha256=store_audio(settings, LEAK)).id


def _promote_slowly(engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch,
                    meanwhile: Any) -> None:
    """One promoter reads the waiting rows, and `meanwhile` runs before it writes (a slow blob store)."""
    real = jobs.audio_stored
    calls = []

    def slow(settings: Settings, sha256s: Any) -> set[str]:
        stored = real(settings, sha256s)
        if not calls:
            calls.append(1)
            meanwhile()
        return stored

    monkeypatch.setattr(jobs, "audio_stored", slow)
    jobs.promote_waiting(engine, settings)


def test_a_slow_promoter_does_not_queue_again_a_job_a_worker_claimed(
        engine: Engine, session: Session, world: World, job_settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    note_id = _waiting_note(session, world, job_settings)
    claimed = []

    def promoted_and_claimed() -> None:
        assert jobs.promote_waiting(engine, job_settings) == [note_id]
        claimed.append(jobs.claim(engine, note_id))

    _promote_slowly(engine, job_settings, monkeypatch, promoted_and_claimed)
    assert claimed == [1]
    assert _transcript(engine, note_id).status == TranscriptState.running
    assert _note_status(engine, note_id) == TranscriptStatus.running
    assert jobs.claim(engine, note_id) is None  # no second worker runs it at the same time


def test_a_slow_promoter_does_not_reopen_an_approved_transcript(
        engine: Engine, session: Session, world: World, job_settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    note_id = _waiting_note(session, world, job_settings)

    def transcribed_and_approved() -> None:
        jobs.promote_waiting(engine, job_settings)
        assert jobs.claim(engine, note_id)
        assert jobs.run(engine, job_settings, note_id, pipeline=Scripted("原始文本")) == TranscriptState.transcribed
        _correct_and_approve(engine, world, job_settings, note_id, "主管改正的文本")

    _promote_slowly(engine, job_settings, monkeypatch, transcribed_and_approved)
    transcript = _transcript(engine, note_id)
    assert (transcript.status, transcript.text) == (TranscriptState.approved, "主管改正的文本")
    assert jobs.claim(engine, note_id) is None


def _correct_and_approve(engine: Engine, world: World, settings: Settings, transcript_id: uuid.UUID,
                         text: str) -> None:
    with Session(engine) as s:
        transcript = speech_service.get(session=s, user=world.supervisor, id=transcript_id)
        speech_service.update(session=s, settings=settings, user=world.supervisor, transcript=transcript,
                              data=TranscriptUpdate.model_validate({"segments": [{"index": 0, "text": text}]}))
        speech_service.approve(session=s, user=world.supervisor, transcript=transcript)


@pytest.mark.parametrize("pipeline", [Scripted("旧的结果"), None], ids=["result", "error"])
def test_a_worker_whose_job_was_taken_over_records_nothing(
        engine: Engine, session: Session, world: World, job_settings: Settings, pipeline: Scripted | None) -> None:
    class Broken:
        def run(self, audio: object) -> None:
            raise RuntimeError("the model fell over")

    transcript_id = _queued_call(session, job_settings, world)
    slow = jobs.claim(engine, transcript_id)
    fast = jobs.claim(engine, transcript_id, takeover=True)  # the slow worker was presumed dead
    assert (slow, fast) == (1, 2)
    assert jobs.run(engine, job_settings, transcript_id, attempt=fast, pipeline=Scripted("新的结果")) \
        == TranscriptState.transcribed
    _correct_and_approve(engine, world, job_settings, transcript_id, "主管改正的文本")
    # The slow worker finishes last: neither its text nor its error replaces what the supervisor approved.
    settings = job_settings.model_copy(update={"speech_max_attempts": 5})
    assert jobs.run(engine, settings, transcript_id, attempt=slow, pipeline=pipeline or Broken()) \
        == TranscriptState.approved
    transcript = _transcript(engine, transcript_id)
    assert (transcript.status, transcript.text, transcript.attempts) == (TranscriptState.approved, "主管改正的文本", 2)
    assert _note_status(engine, transcript_id) == TranscriptStatus.done


def test_a_worker_presumed_dead_writes_nothing_over_a_job_retried_since(
        engine: Engine, session: Session, world: World, job_settings: Settings) -> None:
    """Regression (review): a supervisor's retry set the attempts back to 0, and the attempt number is what an
    outcome is written against: a worker presumed dead at attempt 1 matched the retried job's first attempt
    and its stale text replaced the new run's."""
    class Broken:
        def run(self, audio: object) -> None:
            raise RuntimeError("the model fell over")

    settings = job_settings.model_copy(update={"speech_max_attempts": 2, "speech_draft_work_orders": False})
    transcript_id = _queued_call(session, settings, world)
    zombie = jobs.claim(engine, transcript_id)  # worker A, then it stops answering
    taker = jobs.claim(engine, transcript_id, takeover=True)  # A presumed dead; attempt 2 fails for good
    assert jobs.run(engine, settings, transcript_id, attempt=taker, pipeline=Broken()) == TranscriptState.failed
    with Session(engine) as s:  # POST .../retry
        retried = speech_service.retry(session=s, user=world.supervisor, transcript=s.get(Transcript, transcript_id))
        assert speech_service.present(s, world.supervisor, retried).attempts == 0  # a fresh budget, shown
    fresh = jobs.claim(engine, transcript_id)
    assert (zombie, taker, fresh) == (1, 2, 3)
    assert jobs.run(engine, settings, transcript_id, attempt=zombie, pipeline=Scripted("旧模型的错误文本")) \
        == TranscriptState.running  # dropped: the retried job is running
    assert jobs.run(engine, settings, transcript_id, attempt=fresh, pipeline=Scripted("修好的模型的文本")) \
        == TranscriptState.transcribed
    transcript = _transcript(engine, transcript_id)
    assert (transcript.text, transcript.attempts, transcript.tries) == ("修好的模型的文本", 3, 1)


def test_the_budget_of_a_retried_job_counts_from_the_retry(
        engine: Engine, session: Session, world: World, job_settings: Settings) -> None:
    """With the attempts no longer set back by a retry, the retried job still gets its whole budget, and its
    reason counts its own attempts."""
    class Broken:
        def run(self, audio: object) -> None:
            raise RuntimeError("the model fell over")

    settings = job_settings.model_copy(update={"speech_max_attempts": 2, "speech_draft_work_orders": False,
                                               "speech_retry_backoff_s": 0.0})
    transcript_id = _queued_call(session, settings, world)
    for _ in range(2):
        attempt = jobs.claim(engine, transcript_id)
        assert attempt is not None
        with contextlib.suppress(RuntimeError):  # retried later
            jobs.run(engine, settings, transcript_id, attempt=attempt, pipeline=Broken())
    assert _transcript(engine, transcript_id).status == TranscriptState.failed
    with Session(engine) as s:
        speech_service.retry(session=s, user=world.supervisor, transcript=s.get(Transcript, transcript_id))
    attempt = jobs.claim(engine, transcript_id)
    assert attempt == 3
    with pytest.raises(RuntimeError):  # attempt 1 of 2 after the retry: retried again, not failed
        jobs.run(engine, settings, transcript_id, attempt=attempt, pipeline=Broken())
    assert _transcript(engine, transcript_id).status == TranscriptState.queued
    attempt = jobs.claim(engine, transcript_id)
    assert jobs.run(engine, settings, transcript_id, attempt=attempt, pipeline=Broken()) == TranscriptState.failed
    assert _transcript(engine, transcript_id).failure_reason.startswith("gave up after 2 attempts")


def test_a_worker_presumed_dead_opens_no_draft_work_order(
        engine: Engine, session: Session, world: World, job_settings: Settings) -> None:
    """Regression (review): the draft work order committed before the worker checked that it still held the
    job, so a worker presumed dead, finishing last with a text tagged leak, opened a leak work order for a
    call a supervisor had approved as a question about a meter reading."""
    transcript_id = _queued_call(session, job_settings, world)
    slow = jobs.claim(engine, transcript_id)
    fast = jobs.claim(engine, transcript_id, takeover=True)
    assert jobs.run(engine, job_settings, transcript_id, attempt=fast, pipeline=Scripted("请问明天几点来抄表？")) \
        == TranscriptState.transcribed
    _correct_and_approve(engine, world, job_settings, transcript_id, "请问明天几点来抄表？")
    assert jobs.run(engine, job_settings, transcript_id, attempt=slow, pipeline=Scripted()) \
        == TranscriptState.approved
    assert _drafts(engine, world) == []
    assert _transcript(engine, transcript_id).draft_work_order_id is None


def test_a_job_whose_audio_is_gone_waits_for_it_and_runs_when_it_is_uploaded_again(
        engine: Engine, session: Session, world: World, job_settings: Settings) -> None:
    """Regression (review): audio missing from the store (swept just as a pushed note came to name it) was an
    error retried like any other: the job ran out of attempts within a minute and stayed failed after the
    device uploaded the audio again. It now waits for the audio, as a note pushed before its upload does."""
    import hashlib

    from speech.storage import remove_audio

    settings = job_settings.model_copy(update={"speech_max_attempts": 1})
    transcript_id = _queued_call(session, settings, world)
    remove_audio(settings, hashlib.sha256(LEAK).hexdigest())
    attempt = jobs.claim(engine, transcript_id)
    assert jobs.run(engine, settings, transcript_id, attempt=attempt, pipeline=Scripted("请问明天几点来抄表？")) \
        == TranscriptState.waiting_audio
    transcript = _transcript(engine, transcript_id)
    assert (transcript.status, transcript.tries) == (TranscriptState.waiting_audio, 0)  # no attempt spent
    assert _note_status(engine, transcript_id) == TranscriptStatus.none
    assert jobs.promote_waiting(engine, settings) == []  # still not there
    store_audio(settings, LEAK)  # the device's upload
    assert jobs.promote_waiting(engine, settings) == [transcript_id]
    attempt = jobs.claim(engine, transcript_id)
    assert jobs.run(engine, settings, transcript_id, attempt=attempt, pipeline=Scripted("请问明天几点来抄表？")) \
        == TranscriptState.transcribed


def test_a_draft_work_order_refused_to_the_uploader_does_not_stop_the_transcript(
        engine: Engine, session: Session, world: World, job_settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    transcript_id = _queued_call(session, job_settings, world)
    with Session(engine) as s:  # the supervisor who uploaded the call is a steward (without a grid) by now
        uploader = s.get(User, world.supervisor.id)
        assert uploader is not None
        uploader.role = Role.steward
        s.commit()
    assert jobs.claim(engine, transcript_id)
    assert jobs.run(engine, job_settings, transcript_id, pipeline=Scripted()) == TranscriptState.transcribed
    transcript = _transcript(engine, transcript_id)
    assert transcript.category_list[0] == "leak" and transcript.draft_work_order_id is None
    assert _drafts(engine, world) == []
    assert _note_status(engine, transcript_id) == TranscriptStatus.done
    assert "opened no draft work order" in caplog.text


def test_an_error_while_saving_on_the_last_attempt_fails_the_job_with_its_reason(
        engine: Engine, session: Session, world: World, job_settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from api.work_orders import service as work_orders

    def dies(**kw: Any) -> WorkOrder:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(work_orders, "create", dies)
    settings = job_settings.model_copy(update={"speech_max_attempts": 1})
    transcript_id = _queued_call(session, settings, world)
    assert jobs.claim(engine, transcript_id)
    assert jobs.run(engine, settings, transcript_id, pipeline=Scripted()) == TranscriptState.failed
    transcript = _transcript(engine, transcript_id)
    assert (transcript.status, transcript.failure_reason) == (
        TranscriptState.failed, "gave up after 1 attempts: ConnectionError: the database went away")
    assert _note_status(engine, transcript_id) == TranscriptStatus.failed


def test_a_number_that_runs_into_the_next_segments_digits_is_masked_in_every_copy(
        engine: Engine, session: Session, world: World, job_settings: Settings) -> None:
    """Regression: the masked copies were made from the joined text, where 13800138000 followed by a segment
    starting 3号楼 reads as one 12-digit run that no rule matches: the number reached handhelds (the note's
    copy) and the draft work order unmasked."""
    transcript_id = _queued_call(session, job_settings, world)
    assert jobs.claim(engine, transcript_id)
    pipeline = Scripted("暖气漏水了，请回电13800138000", "3号楼2单元501室。")
    assert jobs.run(engine, job_settings, transcript_id, pipeline=pipeline) == TranscriptState.transcribed
    transcript = _transcript(engine, transcript_id)
    assert transcript.text == "暖气漏水了，请回电138001380003号楼2单元501室。"  # the stored original
    with Session(engine) as s:
        note = s.get(Note, transcript_id)
        assert note is not None
        assert note.transcript_text == "暖气漏水了，请回电138****80003号楼2单元501室。"
    [draft] = _drafts(engine, world)
    assert draft.description == "[来电转写草稿] 暖气漏水了，请回电138****80003号楼2单元501室。"


class _Broken:
    def run(self, audio: object) -> None:
        raise RuntimeError("the model fell over")


def _expire_lease(engine: Engine, transcript_id: uuid.UUID) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from api.db import utcnow

    with engine.begin() as conn:
        conn.execute(update(Transcript).where(col(Transcript.id) == transcript_id)
                     .values(lease_until=utcnow() - timedelta(seconds=1), next_attempt_at=utcnow()))


def test_a_database_blip_while_recording_a_retry_does_not_park_the_job(
        engine: Engine, session: Session, world: World, job_settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: with the database away for a moment when the failed attempt was recorded, the job stayed
    `running` (and the handhelds showed it so) until its 30-minute lease ran out; it is queued again."""
    from sqlalchemy.exc import OperationalError

    from speech import worker as worker_module
    from speech.worker import EmbeddedWorker

    transcript_id = _queued_call(session, job_settings, world)
    real_retry, down = jobs._retry_later, [True]

    def blip(*args: Any, **kwargs: Any) -> bool:
        if down[0]:
            down[0] = False
            raise OperationalError("UPDATE transcripts", {}, Exception("database is locked"))
        return real_retry(*args, **kwargs)

    monkeypatch.setattr(jobs, "_retry_later", blip)
    monkeypatch.setattr(worker_module.time, "sleep", lambda s: None)
    worker = EmbeddedWorker(engine, job_settings.model_copy(update={"speech_retry_backoff_s": 0}), threads=1,
                            pipeline=_Broken())
    assert worker._work_once()
    assert _transcript(engine, transcript_id).status == TranscriptState.queued
    assert jobs.next_due(engine) == transcript_id


def test_the_last_error_is_kept_when_a_job_runs_out_of_attempts_on_a_crash(
        engine: Engine, session: Session, world: World, job_settings: Settings) -> None:
    """Regression: two ordinary errors and then a worker killed mid-attempt ended as "the worker stopped 3
    times", the model's error overwritten."""
    from speech.worker import EmbeddedWorker

    transcript_id = _queued_call(session, job_settings, world)
    for _ in (1, 2):
        _expire_lease(engine, transcript_id)
        attempt = jobs.claim(engine, transcript_id)
        with pytest.raises(RuntimeError):
            jobs.run(engine, job_settings, transcript_id, attempt=attempt, pipeline=_Broken())
    _expire_lease(engine, transcript_id)
    assert jobs.claim(engine, transcript_id) == 3  # and its worker is killed during this attempt
    _expire_lease(engine, transcript_id)
    assert EmbeddedWorker(engine, job_settings, threads=1, pipeline=_Broken())._work_once()
    transcript = _transcript(engine, transcript_id)
    assert transcript.status == TranscriptState.failed and transcript.failure_reason is not None
    assert "the last one interrupted" in transcript.failure_reason
    assert "RuntimeError: the model fell over" in transcript.failure_reason, transcript.failure_reason


def test_a_call_that_opens_a_draft_while_its_note_is_deleted_is_not_a_deadlock(
        engine: Engine, session: Session, settings: Settings, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the draft work order's commit let go of the change sequence, and the transcript's row was
    then locked before the note's flush took the sequence again: a push deleting the note at that moment (the
    sequence, then the row) deadlocked on PostgreSQL."""
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    world: World = make_world(session, settings)
    meta = CallMetadata.model_validate({"caller_phone": "13800138000", "started_at": "2025-11-29T08:00:00+08:00",
                                        "agent": "a", "household_id": str(world.household_a.id)})
    tid = speech_service.create_call(session=session, settings=settings, user=world.supervisor, metadata=meta,
                                     audio=(FIXTURES / "leak_report.wav").read_bytes()).id
    attempt = jobs.claim(engine, tid)
    assert attempt
    seg = SimpleNamespace(start=0.0, end=2.0, text="暖气漏水了", avg_logprob=-0.2, no_speech_prob=0.01)
    result = SimpleNamespace(segments=[seg], text="暖气漏水了", engine="e", model="m", language="zh", duration=2.0)
    row_written = threading.Event()
    real = jobs._note_status

    def after_the_row(s: Any, transcript_id: Any, status: Any) -> Any:  # transcript row written (locked) here
        row_written.set()
        assert someone_waits_for_a_lock(engine)  # the delete waits for it
        return real(s, transcript_id, status)

    monkeypatch.setattr(jobs, "_note_status", after_the_row)
    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["state"] = jobs._complete(engine, settings, tid, attempt, result)
        except Exception as exc:
            out["error"] = repr(exc)

    thread = threading.Thread(target=work)
    thread.start()
    assert row_written.wait(10)
    deleted: dict[str, Any] = {}
    try:
        with Session(engine) as s:  # what a push deleting the note does: the sequence first, then the delete
            allocate_seq(s)
            s.delete(s.get(Note, tid))
            s.commit()
    except Exception as exc:
        deleted["error"] = repr(exc)
    thread.join(30)
    assert "error" not in out and "error" not in deleted, (out, deleted)
    with Session(engine) as s:
        assert s.get(Transcript, tid) is None
