"""The transcription queue: exclusive claims, retries with backoff, voice notes queued when their audio
arrives, and jobs that survive a worker killed mid-transcription (embedded on SQLite, procrastinate on
PostgreSQL)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from api.app import create_app
from api.db import utcnow
from api.notes.models import Note
from api.settings import Settings
from speech import jobs
from speech.models import Transcript, TranscriptState
from speech.storage import store_audio
from speech.worker import EmbeddedWorker, build_app, defer, recover_async
from tests.speech.conftest import FIXTURES, silence, write_wav
from tests.speech.service_helpers import bundled_model_dir, clear_procrastinate, wait_until_done
from tests.utils.factories import World, make_note, make_world

LEAK = (FIXTURES / "leak_report.wav").read_bytes()


@pytest.fixture
def speech_settings_(settings: Settings, speech_data_dir: Path, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"whisper_model": bundled_model_dir(speech_data_dir),
                                       "blob_dir": tmp_path / "blobs", "speech_retry_backoff_s": 0.3})


@pytest.fixture
def world(session: Session, speech_settings_: Settings) -> World:
    return make_world(session, speech_settings_)


def _state(engine: Engine, transcript_id: uuid.UUID) -> Transcript:
    with Session(engine) as session:
        transcript = session.get(Transcript, transcript_id)
        assert transcript is not None
        return transcript


def test_a_job_is_claimed_by_one_worker_only(engine: Engine, session: Session, world: World) -> None:
    note = make_note(session, world.steward_a)
    transcript = session.get(Transcript, note.id)
    assert transcript is not None and transcript.status == TranscriptState.waiting_audio
    assert not jobs.claim(engine, note.id)  # waiting for its audio: not claimable
    transcript.status = TranscriptState.queued
    session.commit()
    assert jobs.claim(engine, note.id)
    assert not jobs.claim(engine, note.id)  # running, lease not over
    assert jobs.next_due(engine) is None


def test_a_restart_retakes_running_jobs_only_where_one_process_serves(engine: Engine, session: Session,
                                                                      world: World, settings: Settings) -> None:
    """On SQLite one process serves the database: a job `running` at start was cut off by a stop and is taken
    again at once. Regression: on PostgreSQL, where several serve processes may each run the embedded queue, a
    starting process also ended the lease of a job another live process was running, and ran it again."""
    note = make_note(session, world.steward_a)
    transcript = session.get(Transcript, note.id)
    assert transcript is not None
    transcript.status = TranscriptState.queued
    session.commit()
    assert jobs.claim(engine, note.id)
    EmbeddedWorker(engine, settings, threads=1)._recover()
    session.expire_all()
    taken_again = jobs.claim(engine, note.id)
    assert (taken_again is not None) is (engine.dialect.name == "sqlite")


def test_transient_errors_are_retried_with_backoff_then_the_job_fails(engine: Engine, session: Session, world: World,
                                                                      speech_settings_: Settings) -> None:
    class Broken:
        def run(self, audio: object) -> None:
            raise RuntimeError("the model fell over")

    sha = store_audio(speech_settings_, LEAK)
    note = make_note(session, world.steward_a, audio_sha256=sha)
    jobs.promote_waiting(engine, speech_settings_)
    waits = []
    for attempt in (1, 2):
        assert jobs.next_due(engine) == note.id
        assert jobs.claim(engine, note.id)
        before = utcnow()
        with pytest.raises(RuntimeError, match="fell over"):
            jobs.run(engine, speech_settings_, note.id, pipeline=Broken())
        t = _state(engine, note.id)
        assert (t.status, t.attempts, t.failure_reason) == (TranscriptState.queued, attempt,
                                                            "RuntimeError: the model fell over")
        waits.append((t.next_attempt_at - before).total_seconds())
        assert jobs.next_due(engine) is None  # not before its backoff
        time.sleep(waits[-1] + 0.05)
    assert waits[0] == pytest.approx(0.3, abs=0.1) and waits[1] == pytest.approx(0.6, abs=0.1)  # doubling
    assert jobs.claim(engine, note.id)
    assert jobs.run(engine, speech_settings_, note.id, pipeline=Broken()) == TranscriptState.failed
    t = _state(engine, note.id)
    assert t.status == TranscriptState.failed and t.attempts == 3
    assert t.failure_reason == "gave up after 3 attempts: RuntimeError: the model fell over"


def test_a_database_blip_right_after_a_claim_queues_the_job_again(engine: Engine, session: Session, world: World,
                                                                   speech_settings_: Settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): the check of a job's attempts, which reads its row, ran outside the code that
    hands a failed attempt back, so a database blip there left the claimed job `running` (and shown so on the
    handhelds) until its 30-minute lease ran out."""
    from sqlalchemy.exc import OperationalError

    from speech import worker as worker_module

    note = make_note(session, world.steward_a, audio_sha256=store_audio(speech_settings_, LEAK))
    jobs.promote_waiting(engine, speech_settings_)
    real, down = worker_module.Session, [True]

    def blip(*args: Any, **kwargs: Any) -> Session:
        if down[0]:
            down[0] = False
            raise OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "Session", blip)
    monkeypatch.setattr(worker_module.time, "sleep", lambda s: None)
    assert EmbeddedWorker(engine, speech_settings_, threads=1, pipeline=object())._work_once()
    transcript = _state(engine, note.id)
    assert (transcript.status, transcript.lease_until) == (TranscriptState.queued, None)


def test_a_job_that_outlives_its_lease_keeps_it_and_runs_once(engine: Engine, session: Session, world: World,
                                                              speech_settings_: Settings,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the lease was taken at the claim and never renewed, so with two threads a job longer than
    the lease (a recording of hours, or one waiting for the shared model) was taken over by the other thread,
    ran again and again, and ended `failed` as if its worker had kept stopping. (A 1 s lease stands for the
    30 minutes; the job takes 2.5 s.)"""
    from speech.engines import Segment
    from speech.pipeline import Transcript as Result

    monkeypatch.setattr(jobs, "LEASE", timedelta(seconds=1))
    runs: list[float] = []

    class Slow:
        def run(self, audio: object) -> Result:
            runs.append(time.monotonic())
            time.sleep(2.5)
            return Result(engine="faster-whisper", model="slow", language="zh", duration=1.0,
                          segments=[Segment(start=0, end=1, text="好的", avg_logprob=-0.1, no_speech_prob=0.01)])

    note = make_note(session, world.steward_a, audio_sha256=store_audio(speech_settings_, LEAK))
    jobs.promote_waiting(engine, speech_settings_)
    worker = EmbeddedWorker(engine, speech_settings_, threads=2, poll_s=0.1, pipeline=Slow())
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while _state(engine, note.id).status in (TranscriptState.queued, TranscriptState.running):
            assert time.monotonic() < deadline, _state(engine, note.id)
            time.sleep(0.1)
    finally:
        worker.close()
    t = _state(engine, note.id)
    assert (t.status, t.attempts, t.text, len(runs)) == (TranscriptState.transcribed, 1, "好的", 1)


def test_a_voice_note_is_transcribed_once_its_audio_arrives(engine: Engine, world: World,
                                                            speech_settings_: Settings) -> None:
    import hashlib

    clear_procrastinate(engine)
    sha = hashlib.sha256(LEAK).hexdigest()
    with TestClient(create_app(speech_settings_, engine=engine)) as api:
        r = api.post("/api/v1/notes", headers=world.headers(world.steward_a),
                     json={"household_id": str(world.household_a.id), "audio_sha256": sha, "duration_s": 7.2,
                           "recorded_at": "2026-11-29T09:30:00+08:00"})
        assert r.status_code == 201, r.text
        note_id = uuid.UUID(r.json()["id"])
        assert _state(engine, note_id).status == TranscriptState.waiting_audio
        # The audio arrives later, through sync's blob upload, which queues the job (no sweep needed).
        put = api.put(f"/api/v1/blobs/{sha}", content=LEAK, headers=world.headers(world.steward_a))
        assert put.status_code == 201, put.text
        assert _state(engine, note_id).status != TranscriptState.waiting_audio
        assert jobs.promote_waiting(engine, speech_settings_) == []
        wait_until_done(engine, speech_settings_, [note_id])
        note = api.get(f"/api/v1/notes/{note_id}", headers=world.headers(world.steward_a)).json()
    assert note["transcript_status"] == "done" and "501" in note["transcript_text"]
    assert note["version"] > r.json()["version"]  # a new version: the next pull brings it to the handheld


def test_the_dispatch_queues_again_a_running_transcript_whose_job_ended(
        engine: Engine, session: Session, world: World, speech_settings_: Settings) -> None:
    import asyncio

    from sqlalchemy import text

    if engine.dialect.name != "postgresql":
        pytest.skip("procrastinate needs PostgreSQL (the embedded queue retakes a row when its lease ends)")
    clear_procrastinate(engine)
    sha = store_audio(speech_settings_, LEAK)
    orphan, live = (make_note(session, world.steward_a, audio_sha256=sha).id for _ in range(2))
    jobs.promote_waiting(engine, speech_settings_)
    for transcript_id in (orphan, live):
        defer(speech_settings_, transcript_id)
        assert jobs.claim(engine, transcript_id, takeover=True)
    # procrastinate gave up on the orphan's job while its outcome could not be written (the database was down):
    # the row says running, and no job will ever run it. The other job is alive (waiting for a retry).
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL search_path TO procrastinate"))  # for procrastinate's own triggers
        conn.execute(text("UPDATE procrastinate.procrastinate_jobs SET status = 'failed' WHERE lock = :lock"),
                     {"lock": f"transcribe-{orphan}"})

    async def dispatch() -> None:
        app = build_app(speech_settings_, engine)
        async with app.open_async():
            await recover_async(app, engine, speech_settings_)

    asyncio.run(dispatch())
    assert (_state(engine, orphan).status, _state(engine, live).status) == (TranscriptState.queued,
                                                                            TranscriptState.running)
    with engine.connect() as conn:
        waiting = conn.execute(text("SELECT count(*) FROM procrastinate.procrastinate_jobs "
                                    "WHERE lock = :lock AND status = 'todo'"), {"lock": f"transcribe-{orphan}"})
        assert waiting.scalar() == 1  # deferred again


def test_the_dispatch_defers_no_second_job_for_a_transcript_whose_job_is_being_retried(
        engine: Engine, session: Session, world: World, speech_settings_: Settings) -> None:
    """Regression (review): a failed attempt writes its transcript `queued` before procrastinate moves the job
    from `doing` back to `todo`. The minute's dispatch, run by another worker in between, deferred a second
    job; procrastinate's retry of the first then broke on the queueing lock and left it `doing` for good, and
    from then on every dispatch failed on retrying it as a stalled job (and `steward worker` could not start).
    Now the dispatch defers only transcripts without a live job, and a stalled job whose retry meets such a
    second job cancels that one."""
    import asyncio

    from sqlalchemy import text

    if engine.dialect.name != "postgresql":
        pytest.skip("procrastinate needs PostgreSQL")
    clear_procrastinate(engine)
    sha = store_audio(speech_settings_, LEAK)
    transcript_id = make_note(session, world.steward_a, audio_sha256=sha).id
    jobs.promote_waiting(engine, speech_settings_)
    defer(speech_settings_, transcript_id)
    attempt = jobs.claim(engine, transcript_id, takeover=True)
    assert attempt is not None
    lock = f"transcribe-{transcript_id}"

    def job_states() -> list[str]:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT status FROM procrastinate.procrastinate_jobs WHERE lock = :lock "
                                          "ORDER BY id"), {"lock": lock}).scalars())

    def worker_running_it(heartbeat: str) -> None:  # the job is `doing` in a worker beating at `heartbeat`
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL search_path TO procrastinate"))
            worker = conn.execute(text(f"INSERT INTO procrastinate_workers (last_heartbeat) VALUES ({heartbeat}) "
                                       "RETURNING id")).scalar_one()
            conn.execute(text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :worker "
                              "WHERE lock = :lock AND status = 'todo'"), {"worker": worker, "lock": lock})

    async def dispatch() -> None:
        app = build_app(speech_settings_, engine)
        async with app.open_async():
            await recover_async(app, engine, speech_settings_)

    # The attempt failed and wrote the transcript queued; its live worker has not handed the job back yet.
    worker_running_it("now()")
    assert jobs._retry_later(engine, speech_settings_, transcript_id, attempt, "RuntimeError: x", tries=1)
    asyncio.run(dispatch())
    assert job_states() == ["doing"]  # no second job
    # A second job deferred so before this release, and the first one's worker stopped: the dispatch cancels
    # the second and retries the first, instead of failing on it every minute.
    defer(speech_settings_, transcript_id)
    with engine.begin() as conn:
        conn.execute(text("UPDATE procrastinate.procrastinate_workers SET last_heartbeat = now() - interval '1 hour'"))
    assert job_states() == ["doing", "todo"]
    asyncio.run(dispatch())
    assert job_states() == ["todo", "cancelled"]
    asyncio.run(dispatch())  # and the next minute's too
    assert job_states() == ["todo", "cancelled"]


def _long_recording(tmp_path: Path, settings: Settings, engine: Engine, world: World, session: Session) -> uuid.UUID:
    """A queued 33-second recording (the two clips, twice, a second apart): long enough to be killed
    mid-transcription. (The same clip repeated makes Whisper loop.)"""
    from speech.audio import decode_audio

    leak, valve = decode_audio(FIXTURES / "leak_report.wav"), decode_audio(FIXTURES / "valve_bleeding.wav")
    audio = np.concatenate([leak, silence(1), valve, silence(1), leak, silence(1), valve])
    sha = store_audio(settings, write_wav(tmp_path / "long.wav", audio).read_bytes())
    note = make_note(session, world.steward_a, audio_sha256=sha, duration_s=len(audio) / 16000)
    jobs.promote_waiting(engine, settings)
    return note.id


def _env(settings: Settings) -> dict[str, str]:
    return os.environ | {"STEWARD_DATABASE_URL": settings.database_url, "STEWARD_DATA_DIR": str(settings.data_dir),
                         "STEWARD_BLOB_DIR": str(settings.blob_dir or ""),
                         "STEWARD_WHISPER_MODEL": settings.whisper_model,
                         "STEWARD_SPEECH_STALLED_AFTER_S": "2", "STEWARD_SECRET_KEY": settings.secret_key}


EMBEDDED_PROCESS = """
import time
from api.db import make_engine
from api.settings import get_settings
from speech.worker import EmbeddedWorker
settings = get_settings()
EmbeddedWorker(make_engine(settings), settings, threads=1, poll_s=0.2).start()
time.sleep(600)
"""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _wait_for(engine: Engine, transcript_id: uuid.UUID, status: TranscriptState, timeout: float) -> Transcript:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        transcript = _state(engine, transcript_id)
        if transcript.status == status:
            return transcript
        time.sleep(0.1)
    raise AssertionError(f"still {transcript.status} after {timeout} s, waiting for {status}")


@pytest.mark.slow
def test_the_queue_survives_a_worker_killed_mid_job(engine: Engine, session: Session, world: World, tmp_path: Path,
                                                    speech_settings_: Settings,
                                                    processes: list[subprocess.Popen[bytes]]) -> None:
    clear_procrastinate(engine)
    transcript_id = _long_recording(tmp_path, speech_settings_, engine, world, session)
    if engine.dialect.name == "postgresql":
        defer(speech_settings_, transcript_id)
        command = [os.path.join(os.path.dirname(sys.executable), "steward"), "worker"]
    else:
        command = [sys.executable, "-c", EMBEDDED_PROCESS]
    env = _env(speech_settings_)
    processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    _wait_for(engine, transcript_id, TranscriptState.running, timeout=60)
    processes[0].send_signal(signal.SIGKILL)  # mid-transcription: no chance to clean up
    processes[0].wait(10)
    time.sleep(0.5)
    assert _state(engine, transcript_id).status == TranscriptState.running  # left behind by the dead worker
    if engine.dialect.name == "postgresql":
        time.sleep(2.5)  # past STEWARD_SPEECH_STALLED_AFTER_S without a heartbeat: the next worker retries it
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        done = _wait_for(engine, transcript_id, TranscriptState.transcribed, timeout=120)
        processes[1].send_signal(signal.SIGTERM)
    else:  # the server starts again
        worker = EmbeddedWorker(engine, speech_settings_, threads=1, poll_s=0.2)
        worker.start()
        try:
            done = _wait_for(engine, transcript_id, TranscriptState.transcribed, timeout=120)
        finally:
            worker.close()
    assert done.attempts == 2
    # One whole transcript, nothing kept of the killed attempt: segments in order without overlap, to the end
    # of the recording. (Not the exact words: what Whisper base hears in this call depends on the CPU, and a
    # window can come back decoded by sampling; tests/speech/test_pipeline.py checks recognition.)
    spans = [(s["start"], s["end"]) for s in done.segments]
    assert all(a[1] <= b[0] + 0.01 for a, b in itertools.pairwise(spans)), spans
    assert done.duration_s is not None and spans[-1][1] >= done.duration_s - 3, (spans, done.duration_s)
    assert done.text, done.segments
    with Session(engine) as s:
        assert s.get(Note, transcript_id).transcript_status.value == "done"  # type: ignore[union-attr]


def _stalled_job(engine: Engine, session: Session, world: World, settings: Settings) -> uuid.UUID:
    """A transcript whose job is `doing` in a worker that died an hour ago."""
    from sqlalchemy import text

    clear_procrastinate(engine)
    tid = make_note(session, world.steward_a, audio_sha256=store_audio(settings, LEAK)).id
    jobs.promote_waiting(engine, settings)
    defer(settings, tid)
    assert jobs.claim(engine, tid, takeover=True) == 1
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL search_path TO procrastinate"))  # for procrastinate's own triggers
        dead = conn.execute(text("INSERT INTO procrastinate_workers (last_heartbeat) "
                                 "VALUES (now() - interval '1 hour') RETURNING id")).scalar_one()
        conn.execute(text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w WHERE lock = :l"),
                     {"w": dead, "l": f"transcribe-{tid}"})
    return tid


@pytest.mark.parametrize("taken_meanwhile", [False, True], ids=["retried-first", "taken-by-a-live-worker"])
def test_two_workers_recovering_one_stalled_job_retry_it_once(engine: Engine, session: Session, world: World,
                                                              speech_settings_: Settings,
                                                              taken_meanwhile: bool) -> None:
    """Regression (review): each recovery retried the stalled jobs it had listed without looking again. Two at
    once (several workers started together after a crash): the second one's retry failed and stopped that
    worker at its start, or, the job taken meanwhile by a live worker, put it back in the queue, and a second
    worker ran it beside the first. A job is retried only while it is still stalled."""
    import asyncio

    if engine.dialect.name != "postgresql":
        pytest.skip("procrastinate needs PostgreSQL")
    tid = _stalled_job(engine, session, world, speech_settings_)
    first, second = build_app(speech_settings_, engine), build_app(speech_settings_, engine)
    fetched: list[Any] = []

    async def main() -> None:
        async with first.open_async(), second.open_async():
            listed = second.job_manager.get_stalled_jobs

            async def listed_then_the_other_recovers(**kw: Any) -> Any:
                found = await listed(**kw)  # the second worker has its list; the first worker recovers now
                await recover_async(first, engine, speech_settings_)
                if taken_meanwhile:
                    live = await first.job_manager.register_worker()
                    fetched.append(await first.job_manager.fetch_job(queues=["speech"], worker_id=live))
                return found

            second.job_manager.get_stalled_jobs = listed_then_the_other_recovers  # type: ignore[method-assign]
            await recover_async(second, engine, speech_settings_)  # raised on the job the first had retried
            other = await first.job_manager.register_worker()
            fetched.append(await first.job_manager.fetch_job(queues=["speech"], worker_id=other))

    asyncio.run(main())
    if taken_meanwhile:
        assert fetched[0] is not None and fetched[1] is None  # the live worker's job is nobody else's
    else:
        assert fetched[0] is not None  # retried once, waiting for a worker
    with engine.connect() as conn:
        from sqlalchemy import text

        rows = conn.execute(text("SELECT status, attempts FROM procrastinate.procrastinate_jobs WHERE lock = :l"),
                            {"l": f"transcribe-{tid}"}).all()
    assert [tuple(r) for r in rows] == [("doing", 1)]  # one retry (attempts 1), running in one worker


def _retry_held(engine: Engine, job_id: int, started: Any, release: Any, then_taken: bool) -> None:
    """Another worker's recovery retrying the job, its transaction held open until `release`; with
    `then_taken`, a live worker has fetched the job again before it commits."""
    from sqlalchemy import text

    from speech import worker

    with engine.connect() as conn:
        conn.execute(text("SET search_path TO procrastinate, public"))
        conn.execute(text(worker._LOCK_JOB), {"job_id": job_id})
        conn.execute(text(worker._RETRY_IF_STALLED), {"job_id": job_id, "seconds": 60.0})
        if then_taken:  # a worker that registers and takes the job while the other recovery waits for its lock
            live = conn.execute(text("INSERT INTO procrastinate_workers (last_heartbeat) "
                                     "VALUES (now() + interval '1 hour') RETURNING id")).scalar_one()
            conn.execute(text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w WHERE id = :j"),
                         {"w": live, "j": job_id})
        started.set()
        release.wait(10)
        conn.commit()


def _stalled_job_id(engine: Engine, session: Session, world: World, settings: Settings) -> int:
    """The procrastinate job of a stalled transcription (`_stalled_job`); PostgreSQL only."""
    from sqlalchemy import text

    if engine.dialect.name != "postgresql":
        pytest.skip("procrastinate needs PostgreSQL")
    tid = _stalled_job(engine, session, world, settings)
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT id FROM procrastinate.procrastinate_jobs WHERE lock = :l"),
                                {"l": f"transcribe-{tid}"}).scalar_one())


@pytest.mark.parametrize("then_taken", [False, True], ids=["retried", "retried-and-taken-by-a-live-worker"])
def test_a_recovery_waits_for_another_recovery_of_the_same_job_at_the_same_instant(
        engine: Engine, session: Session, world: World, speech_settings_: Settings, then_taken: bool) -> None:
    """Regression (review): the one statement that checked and retried a stalled job called the retry before it
    locked the row and checked again. Two recoveries at the same instant: the second one's retry failed (the
    worker stopped at its start), or it put a job a live worker had fetched meanwhile back in the queue. A lone
    retry also answered that it had retried nothing (its row was changed by the statement's own call). Then, with
    the lock in the statement's CTE, the check read the workers as at the statement's start: a worker that
    registered and took the job while the statement waited for the lock counted as dead."""
    import asyncio
    import threading

    from sqlalchemy import text

    from speech import worker

    job_id = _stalled_job_id(engine, session, world, speech_settings_)
    started, release = threading.Event(), threading.Event()
    other = threading.Thread(target=_retry_held, args=(engine, job_id, started, release, then_taken))
    other.start()
    assert started.wait(10)
    app = build_app(speech_settings_, engine)

    async def main() -> bool:
        async with app.open_async():
            retry = asyncio.create_task(asyncio.to_thread(worker._retry_if_stalled, engine, job_id, 60))
            await asyncio.sleep(0.5)  # in its statement now, waiting for the other recovery's lock
            release.set()
            return await retry

    try:
        retried = asyncio.run(main())
    finally:
        release.set()
        other.join()
    assert retried is False
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status::text, attempts FROM procrastinate.procrastinate_jobs WHERE id = :j"),
                           {"j": job_id}).one()
    assert tuple(row) == (("doing", 1) if then_taken else ("todo", 1))


def test_a_retry_of_a_stalled_job_says_it_retried_it(engine: Engine, session: Session, world: World,
                                                      speech_settings_: Settings) -> None:
    import asyncio

    from sqlalchemy import text

    from speech import worker

    job_id = _stalled_job_id(engine, session, world, speech_settings_)
    app = build_app(speech_settings_, engine)

    async def main() -> bool:
        async with app.open_async():
            return await asyncio.to_thread(worker._retry_if_stalled, engine, job_id, 60)

    assert asyncio.run(main()) is True
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status::text FROM procrastinate.procrastinate_jobs WHERE id = :j"),
                              {"j": job_id}).scalar_one()
    assert status == "todo"
