"""Who runs transcription jobs.

- Embedded (SQLite, `steward serve`): a few threads inside the server process; the transcripts table is
  the queue. A job left `running` by a crash is taken over when its lease runs out, and at once on the
  next start (only one process serves an embedded database).
- Production (PostgreSQL, `steward worker`): procrastinate, on any number of machines. Jobs are locked
  by procrastinate (one worker per job); a worker that stops sending heartbeats has its job retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Engine, bindparam, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from api.db import utcnow
from api.settings import Settings
from speech import jobs
from speech.models import Transcript, TranscriptState

log = logging.getLogger(__name__)

QUEUE = "speech"
PROCRASTINATE_SCHEMA = "procrastinate"


def queue_mode(settings: Settings, engine: Engine) -> str:
    """`embedded`, `procrastinate` or `off`, for this database."""
    if settings.speech_queue != "auto":
        return settings.speech_queue
    return "embedded" if engine.dialect.name == "sqlite" else "procrastinate"


# --- embedded -------------------------------------------------------------------------------------------


class EmbeddedWorker:
    """Transcription threads inside the server process. `close()` stops them (idempotent)."""

    def __init__(self, engine: Engine, settings: Settings, *, threads: int, poll_s: float = 2.0,
                 pipeline: Any = None) -> None:
        self.engine, self.settings, self.poll_s, self.pipeline = engine, settings, poll_s, pipeline
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._recovered = threading.Event()
        self._recover_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, name=f"speech-worker-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> None:
        """Start the threads; the first one recovers the jobs a crashed process left running."""
        for thread in self._threads:
            thread.start()

    def _recover(self) -> None:
        # Only one process serves a SQLite database: whatever is `running` now was running in a process that
        # is gone, so its lease is over. On PostgreSQL several `steward serve` processes may each run this
        # queue: a job `running` now may be another live process's, and ending its lease made this process
        # run it again beside that one. There the leases (renewed while a job runs) end by themselves.
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.begin() as conn:
            recovered = conn.execute(update(Transcript).where(col(Transcript.status) == TranscriptState.running)
                                     .values(lease_until=utcnow())).rowcount
        if recovered:
            log.warning("%d transcription(s) were interrupted by a stop; retrying them", recovered)

    def wake(self) -> None:
        """Look for work now (a job was just queued)."""
        self._wake.set()

    def _loop(self) -> None:
        last_promotion = 0.0
        while not self._stop.is_set():
            try:
                if not self._recovered.is_set():
                    with self._recover_lock:
                        if not self._recovered.is_set():
                            self._recover()
                            self._recovered.set()
                now = utcnow().timestamp()
                if now - last_promotion > 10:
                    jobs.promote_waiting(self.engine, self.settings)
                    last_promotion = now
                if self._work_once():
                    continue
            except Exception:  # a database hiccup must not kill the thread
                log.exception("speech worker loop error")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _work_once(self) -> bool:
        transcript_id = jobs.next_due(self.engine)
        attempt = jobs.claim(self.engine, transcript_id) if transcript_id is not None else None
        if transcript_id is None or attempt is None:
            return False
        self.process(transcript_id, attempt)
        return True

    def process(self, transcript_id: uuid.UUID, attempt: int | None = None) -> None:
        """Run one claimed job, `attempt` being what the claim returned (errors are recorded on the
        transcript, never raised)."""
        if attempt is None:
            attempt = jobs.current_attempt(self.engine, transcript_id)
        try:
            # Inside: it reads the row, and a database blip there left the claimed job `running` for its lease.
            if _over_attempts(self.engine, self.settings, transcript_id, attempt):
                return
            with _lease_kept(self.engine, transcript_id, attempt):
                jobs.run(self.engine, self.settings, transcript_id, attempt=attempt, pipeline=self.pipeline)
        except Exception:
            log.info("transcript %s will be retried", transcript_id)
            _hand_back(self.engine, transcript_id, attempt)

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)


@contextlib.contextmanager
def _lease_kept(engine: Engine, transcript_id: uuid.UUID, attempt: int) -> Iterator[None]:
    """Renew the job's lease every third of it while the block runs. The lease is for a worker that died:
    a job that waits for the pipeline (one model, shared by the threads) or decodes a recording of hours
    outlives it, and another thread would take it over, so that it ran again and again and then failed as
    if its worker had kept stopping."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(jobs.LEASE.total_seconds() / 3):
            try:
                if not jobs.renew_lease(engine, transcript_id, attempt):
                    return  # taken over or finished: nothing to keep
            except Exception:  # a database hiccup: try again at the next beat
                log.warning("could not renew the lease of transcript %s", transcript_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"speech-lease-{transcript_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


def _hand_back(engine: Engine, transcript_id: uuid.UUID, attempt: int, waits: tuple[float, ...] = (1, 2, 4)) -> None:
    """After a failed attempt: a job still `running` at it (its retry could not be recorded: the database was
    briefly away) is queued again, or it sat `running`, shown so on the handhelds, until its lease ran out
    (30 minutes). A job whose retry was recorded is left as it is (`requeue` finds it no longer running)."""
    for wait in (0, *waits):
        time.sleep(wait)
        try:
            jobs.requeue(engine, transcript_id, attempt)
            return
        except Exception:
            log.warning("could not queue transcript %s again; retrying", transcript_id, exc_info=True)


def _over_attempts(engine: Engine, settings: Settings, transcript_id: uuid.UUID, attempt: int) -> bool:
    """A job claimed more often than allowed (attempts that failed, and workers that stopped during one): fail
    it rather than loop, keeping the last error it recorded."""
    with Session(engine) as session:
        transcript = session.get(Transcript, transcript_id)
        tries = attempt - transcript.retry_base if transcript is not None else attempt
        last = transcript.failure_reason if transcript is not None else None
    if tries > settings.speech_max_attempts:
        jobs._fail(engine, transcript_id, attempt,
                   f"gave up after {tries - 1} attempts, the last one interrupted (its worker stopped); "
                   f"last error: {last or 'none recorded'}")
        return True
    return False


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Start the embedded worker with the app (router lifespan merged into the app's by FastAPI)."""
    from speech.search import ensure_search_index

    engine, settings = app.state.engine, app.state.settings
    try:
        ensure_search_index(engine)
    except Exception as exc:  # the service must start (and say 503 on /healthz) with its database down
        log.warning("search index not ensured at start: %s", exc)
    worker = None
    if queue_mode(settings, engine) == "embedded" and settings.speech_workers > 0:
        worker = EmbeddedWorker(engine, settings, threads=settings.speech_workers)
        worker.start()
    app.state.speech_worker = worker
    app.state.speech_deferrer = Deferrer(settings)

    def audio_arrived(sha256: str) -> None:  # a voice note's job starts with its upload, not the next sweep
        for transcript_id in jobs.promote_audio(engine, sha256):
            notify_queued(app.state, transcript_id)

    blobs = getattr(app.state, "blobs", None)
    if blobs is not None:
        blobs.listeners.append(audio_arrived)
    try:
        yield
    finally:
        if blobs is not None:
            blobs.listeners.remove(audio_arrived)
        if worker is not None:
            worker.close()
        app.state.speech_deferrer.close()


def notify_queued(app_state: Any, transcript_id: uuid.UUID) -> None:
    """Tell whichever queue runs jobs that a transcript was queued (after commit)."""
    worker = getattr(app_state, "speech_worker", None)
    if worker is not None:
        worker.wake()
        return
    if queue_mode(app_state.settings, app_state.engine) == "procrastinate":
        try:
            app_state.speech_deferrer.defer(transcript_id)
        except Exception:  # the periodic dispatch defers it within a minute
            log.exception("could not defer transcript %s now", transcript_id)


# --- procrastinate --------------------------------------------------------------------------------------


def _conninfo(settings: Settings) -> str:
    from psycopg.conninfo import make_conninfo
    from sqlalchemy.engine import make_url

    url = make_url(settings.resolved_database_url).set(drivername="postgresql")
    return make_conninfo(url.render_as_string(hide_password=False), options=f"-c search_path={PROCRASTINATE_SCHEMA}")


def build_app(settings: Settings, engine: Engine | None, *, sync: bool = False) -> Any:
    """The procrastinate app with the transcription task and its periodic helpers (`engine` may be None
    in a process that only defers jobs)."""
    import procrastinate
    from procrastinate.retry import BaseRetryStrategy, RetryDecision

    connector: Any
    if sync:
        connector = procrastinate.SyncPsycopgConnector(conninfo=_conninfo(settings))
    else:
        connector = procrastinate.PsycopgConnector(conninfo=_conninfo(settings))
    app = procrastinate.App(connector=connector)

    class Backoff(BaseRetryStrategy):
        def get_retry_decision(self, *, exception: BaseException, job: Any) -> RetryDecision | None:
            if job.attempts + 1 >= settings.speech_max_attempts:
                return None
            return RetryDecision(retry_in={"seconds": int(jobs.backoff(settings, job.attempts + 1).total_seconds())})

    @app.task(name="speech.transcribe", queue=QUEUE, retry=Backoff(), pass_context=True)
    def transcribe(context: Any, transcript_id: str) -> str:
        assert engine is not None, "this app only defers jobs"
        tid = uuid.UUID(transcript_id)
        attempt = jobs.claim(engine, tid, takeover=True)
        if attempt is None:
            return "skipped"
        if _over_attempts(engine, settings, tid, attempt):
            return "failed"
        return jobs.run(engine, settings, tid, attempt=attempt).value

    @app.periodic(cron="* * * * *")
    @app.task(name="speech.dispatch", queue=QUEUE, queueing_lock="speech.dispatch")
    async def dispatch(timestamp: int) -> None:
        assert engine is not None, "this app only defers jobs"
        await recover_async(app, engine, settings)

    return app


def _queued_ids(engine: Engine) -> list[uuid.UUID]:
    from sqlmodel import Session, select

    with Session(engine) as session:
        return list(session.exec(select(Transcript.id).where(col(Transcript.status) == TranscriptState.queued)
                                 .limit(1000)).all())


async def recover_async(app: Any, engine: Engine, settings: Settings) -> None:
    """Retry the jobs of dead workers, queue again running transcripts whose job is gone, queue recordings
    whose audio arrived, and defer any queued transcript that has no job (its defer was lost): what makes the
    queue survive crashes."""
    from procrastinate import exceptions

    seconds = settings.speech_stalled_after_s
    for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=seconds):
        try:
            retried = await asyncio.to_thread(_retry_if_stalled, engine, job.id, seconds)
        except IntegrityError:
            # A second job of the transcript waits already (deferred before the guard below existed), and it
            # could never run: the stalled one holds the transcript's lock. It goes, and the stalled one runs.
            await _cancel_waiting(app, job.queueing_lock)
            retried = await asyncio.to_thread(_retry_if_stalled, engine, job.id, seconds)
        if retried:
            log.warning("retried job %s of a worker that stopped", job.id)
    # The database and blob-store work in threads: on the event loop, a long look at waiting notes (a blob-store
    # request each) held up the worker's heartbeat, and the other workers took its running jobs for stalled.
    await _requeue_orphans(app, engine)
    await asyncio.to_thread(jobs.promote_waiting, engine, settings)
    queued = await asyncio.to_thread(_queued_ids, engine)
    for transcript_id in await asyncio.to_thread(_without_live_job, engine, queued):
        with contextlib.suppress(exceptions.AlreadyEnqueued):  # it already has a job waiting
            await app.configure_task("speech.transcribe", queueing_lock=f"transcribe-{transcript_id}",
                                     lock=f"transcribe-{transcript_id}").defer_async(transcript_id=str(transcript_id))


def _without_live_job(engine: Engine, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Those of these queued transcripts that have no job waiting or running. A failed attempt writes its
    transcript `queued` (with its backoff) before procrastinate moves its job from `doing` back to `todo`:
    deferred in between, a second job took the queueing lock, procrastinate's retry of the first one then
    broke on it, and the first stayed `doing` for good, holding the transcript's lock."""
    if not ids:
        return []
    stmt = text(f"SELECT lock FROM {PROCRASTINATE_SCHEMA}.procrastinate_jobs WHERE task_name = 'speech.transcribe' "
                "AND status IN ('todo', 'doing', 'aborting') AND lock IN :locks").bindparams(
        bindparam("locks", expanding=True))
    with engine.connect() as conn:
        live = set(conn.execute(stmt, {"locks": [f"transcribe-{i}" for i in ids]}).scalars())
    return [i for i in ids if f"transcribe-{i}" not in live]


# A stalled job retried only while it still is: in `doing`, its worker gone or silent. Its row is locked by a first
# statement and checked and retried by a second, in one transaction: the second statement reads the workers as
# they are once the lock is held. Two workers recovering at once (several started together after a crash) both
# retried it from their own list, and the second one's retry failed and stopped that worker at its start, or put
# the job, taken meanwhile by a live worker, back in the queue for a second worker to run beside it. In one
# statement the call ran before the lock (`FOR UPDATE` after it), and with the lock in the statement's own CTE
# the check still read the workers from the statement's start: a worker that had registered and taken the job
# while the statement waited for the lock counted as dead.
_LOCK_JOB = f"SELECT id FROM {PROCRASTINATE_SCHEMA}.procrastinate_jobs WHERE id = :job_id FOR UPDATE"
_RETRY_IF_STALLED = f"""
SELECT procrastinate_retry_job_v2(job.id, NOW(), NULL, NULL, NULL)
  FROM {PROCRASTINATE_SCHEMA}.procrastinate_jobs job
 WHERE job.id = :job_id AND job.status = 'doing'
   AND NOT EXISTS (SELECT 1 FROM {PROCRASTINATE_SCHEMA}.procrastinate_workers worker
                    WHERE worker.id = job.worker_id
                      AND worker.last_heartbeat >= NOW() - make_interval(secs => :seconds))
"""


def _retry_if_stalled(engine: Engine, job_id: int, seconds: float) -> bool:
    """Retry the job if it is still stalled; whether it was. Raises IntegrityError where another job of the
    transcript waits (the queueing lock)."""
    params = {"job_id": job_id, "seconds": float(seconds)}
    with engine.begin() as conn:
        # procrastinate's functions name its tables unqualified
        conn.execute(text(f"SET LOCAL search_path TO {PROCRASTINATE_SCHEMA}, public"))
        conn.execute(text(_LOCK_JOB), params)
        return bool(conn.execute(text(_RETRY_IF_STALLED), params).all())


async def _cancel_waiting(app: Any, queueing_lock: str | None) -> None:
    """Cancel the `todo` jobs under this queueing lock."""
    if queueing_lock is None:
        return
    for job in await app.job_manager.list_jobs_async(queueing_lock=queueing_lock, status="todo"):
        log.warning("cancelling job %s: a second job of a transcript whose first one is retried", job.id)
        await app.job_manager.cancel_job_by_id_async(job.id)


async def _requeue_orphans(app: Any, engine: Engine) -> None:
    """Queue again the transcripts left `running` without a live job: procrastinate gave up on the job (or
    it was deleted) while the outcome could not be written. Nothing else would ever look at them again."""
    from procrastinate.jobs import Status

    alive = {Status.TODO.value, Status.DOING.value, Status.ABORTING.value}  # a job's status is the plain string
    for transcript_id, attempt in await asyncio.to_thread(jobs.running, engine):
        found = await app.job_manager.list_jobs_async(task="speech.transcribe", lock=f"transcribe-{transcript_id}")
        if any(job.status in alive for job in found):
            continue
        if await asyncio.to_thread(jobs.requeue, engine, transcript_id, attempt):
            log.warning("transcript %s was left running by a job that ended; queued again", transcript_id)


class Deferrer:
    """Defers procrastinate jobs from the API process; its connection pool opens on first use and closes
    with the app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app: Any = None
        self._lock = threading.Lock()

    def defer(self, transcript_id: uuid.UUID) -> None:
        from procrastinate import exceptions

        with self._lock:
            if self._app is None:
                app = build_app(self.settings, None, sync=True)
                app.open()
                self._app = app
            with contextlib.suppress(exceptions.AlreadyEnqueued):  # it already has a job waiting
                self._app.configure_task("speech.transcribe", queueing_lock=f"transcribe-{transcript_id}",
                                         lock=f"transcribe-{transcript_id}").defer(transcript_id=str(transcript_id))

    def close(self) -> None:
        with self._lock:
            if self._app is not None:
                self._app.close()
                self._app = None


def defer(settings: Settings, transcript_id: uuid.UUID) -> None:
    """Queue a procrastinate job for this transcript (one-off, from synchronous code)."""
    deferrer = Deferrer(settings)
    try:
        deferrer.defer(transcript_id)
    finally:
        deferrer.close()


def run_worker(settings: Settings, engine: Engine, *, concurrency: int = 1, wait: bool = True) -> None:
    """`steward worker`: process transcription jobs until stopped (SIGINT/SIGTERM)."""
    import asyncio

    from speech.search import ensure_search_index

    ensure_search_index(engine)
    app = build_app(settings, engine)

    async def main() -> None:
        async with app.open_async():
            await recover_async(app, engine, settings)
            await app.run_worker_async(
                queues=[QUEUE], concurrency=concurrency, wait=wait, name="steward-speech",
                update_heartbeat_interval=max(settings.speech_stalled_after_s / 4, 0.5),
                stalled_worker_timeout=settings.speech_stalled_after_s)

    asyncio.run(main())
