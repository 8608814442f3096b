"""The transcription job's outcome is written exactly once, even when the job dies half-way and is retried:
a hotline call's transcript and its draft work order commit together, and a retry never opens a second
draft (found by the worker crash test, tests/stress/test_worker_crash.py)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from api.settings import Settings
from api.work_orders.models import Source, WorkOrder
from speech import jobs
from speech import service as speech_service
from speech.models import CallMetadata, Transcript, TranscriptState
from speech.pipeline import Pipeline
from tests.speech.conftest import FIXTURES
from tests.speech.service_helpers import bundled_model_dir
from tests.utils.factories import World, make_world

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
    # Nothing of the outcome is half-written: the job is still the worker's, to be retried.
    assert _transcript(engine, transcript_id).status == TranscriptState.running
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
