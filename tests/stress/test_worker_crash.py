"""Crash durability of transcription: `steward worker` (procrastinate on PostgreSQL, real Whisper) is killed with
SIGKILL in the middle of jobs, again and again, and started again. Every hotline call ends transcribed, each
try of a job is accounted for by a kill, each call opens exactly one draft work order, and no job is left
behind. The short run is part of the normal suite; the long one (`-m stress`) runs in `.ci/run`."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session, col, select

from api.app import create_app
from api.db import make_engine
from api.notes.models import Note
from api.settings import Settings
from api.work_orders.models import Source, WorkOrder, WorkOrderEvent
from speech.jobs import draft_work_order_id
from speech.models import Transcript, TranscriptState
from tests.speech.service_helpers import bundled_model_dir, post_call
from tests.speech.test_jobs import LEAK, leak_glossary
from tests.stress.conftest import STEWARD, process_env
from tests.utils.factories import make_world

STALLED_AFTER_S = 2


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return bundled_model_dir(tmp_path_factory.mktemp("stress-models"))


def _states(settings: Settings, ids: list[uuid.UUID]) -> dict[uuid.UUID, Transcript]:
    engine = make_engine(settings)
    try:
        with Session(engine) as session:
            rows = session.exec(select(Transcript).where(col(Transcript.id).in_(ids))).all()
            return {t.id: t for t in rows}
    finally:
        engine.dispose()


def _wait(settings: Settings, ids: list[uuid.UUID], done: Any, timeout: float, what: str) -> dict[uuid.UUID, Any]:
    deadline = time.monotonic() + timeout
    while True:
        states = _states(settings, ids)
        if done(states):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s: {[(t.status, t.attempts) for t in states.values()]}")
        time.sleep(0.05)


def _claimed(states: dict[uuid.UUID, Transcript], before: dict[uuid.UUID, int]) -> list[uuid.UUID]:
    """Transcripts claimed since `before` (each claim counts an attempt)."""
    return [i for i, t in states.items() if t.attempts > before[i]]


def _finished(states: dict[uuid.UUID, Transcript]) -> bool:
    return all(t.status == TranscriptState.transcribed for t in states.values())


def _run(settings: Settings, tmp_path: Path, processes: list[subprocess.Popen[bytes]], *, calls: int, kills: int,
         seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    settings = settings.model_copy(update={"speech_glossary": leak_glossary(tmp_path)})
    engine = make_engine(settings)
    with Session(engine, expire_on_commit=False) as session:
        world = make_world(session, settings)
    households = [world.household_a.id, world.household_b.id]
    # The API queues each call as a procrastinate job (the production path on PostgreSQL).
    with TestClient(create_app(settings, engine=engine)) as api:
        headers = world.headers(world.supervisor)
        ids = []
        for i in range(calls):
            response = post_call(api, headers, LEAK, household_id=str(households[i % 2]))
            assert response.status_code == 202, response.text
            ids.append(uuid.UUID(response.json()["id"]))
    engine.dispose()
    env = process_env(settings, STEWARD_WHISPER_MODEL=str(settings.whisper_model),
                      STEWARD_SPEECH_GLOSSARY=str(settings.speech_glossary),
                      STEWARD_SPEECH_STALLED_AFTER_S=str(STALLED_AFTER_S),
                      STEWARD_SPEECH_MAX_ATTEMPTS=str(kills + 3), STEWARD_WHISPER_THREADS="1")
    log = (tmp_path / "worker.log").open("ab")

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen([STEWARD, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    report: dict[str, Any] = {"seed": seed, "calls": calls, "kills": 0, "kills_mid_job": 0}
    began = time.monotonic()
    worker = start()
    for _ in range(kills):
        # Wait for this worker to claim a job (a row may still be `running` from the worker killed before).
        before = {i: t.attempts for i, t in _states(settings, ids).items()}
        states = _wait(settings, ids, lambda s, b=before: bool(_claimed(s, b)) or _finished(s), 180,
                       "a job to start")
        if _finished(states):
            break
        time.sleep(rng.uniform(0, 3.0))  # somewhere in the transcription (a 7 s clip takes a few s here)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        report["kills"] += 1
        after = _states(settings, ids)
        report["kills_mid_job"] += any(after[i].status == TranscriptState.running for i in _claimed(after, before))
        time.sleep(STALLED_AFTER_S + 0.5)  # no heartbeat for that long: the next worker retries the job
        worker = start()
    states = _wait(settings, ids, _finished, 300, "every job to complete")
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    report["seconds"] = round(time.monotonic() - began, 1)
    report["attempts"] = sum(t.attempts for t in states.values())

    engine = make_engine(settings)
    try:
        with Session(engine) as session:
            for transcript_id, transcript in states.items():
                assert "501" in transcript.text and "leak" in transcript.category_list, transcript.text
                note = session.get(Note, transcript_id)
                assert note is not None and note.transcript_status.value == "done"
                assert transcript.draft_work_order_id == draft_work_order_id(transcript_id)
            drafts = session.exec(select(WorkOrder).where(col(WorkOrder.source) == Source.hotline)).all()
            assert sorted(d.id for d in drafts) == sorted(draft_work_order_id(i) for i in ids)  # one per call
            created = session.exec(select(WorkOrderEvent).where(col(WorkOrderEvent.kind) == "created")).all()
            assert len(created) == calls
            jobs = session.connection().execute(text(
                "SELECT status, count(*) FROM procrastinate.procrastinate_jobs "
                "WHERE task_name = 'speech.transcribe' GROUP BY status")).all()
    finally:
        engine.dispose()
    report["jobs"] = {str(s): n for s, n in jobs}
    # Every try beyond the first of a job was forced by a kill that caught it running: none ran twice.
    assert report["attempts"] == calls + report["kills_mid_job"], report
    assert set(report["jobs"]) == {"succeeded"}, report  # nothing failed, nothing left queued or running
    print("worker crash report:", json.dumps(report))
    return report


def _seed() -> int:
    return int(os.environ.get("STEWARD_STRESS_SEED") or random.randrange(10 ** 6))


@pytest.mark.slow
def test_transcription_survives_a_worker_kill(pg_settings: Settings, model_dir: str, tmp_path: Path,
                                              processes: list[subprocess.Popen[bytes]]) -> None:
    settings = pg_settings.model_copy(update={"whisper_model": model_dir})
    report = _run(settings, tmp_path, processes, calls=2, kills=1, seed=_seed())
    assert report["kills"] == 1


@pytest.mark.stress
@pytest.mark.timeout(900)
def test_transcription_survives_repeated_worker_kills(pg_settings: Settings, model_dir: str, tmp_path: Path,
                                                      processes: list[subprocess.Popen[bytes]]) -> None:
    settings = pg_settings.model_copy(update={"whisper_model": model_dir})
    report = _run(settings, tmp_path, processes, calls=4, kills=8, seed=_seed())
    assert report["kills"] >= 5 and report["kills_mid_job"] >= 3
