"""The periodic evaluation inside `steward serve`: one thread, like the speech queue's embedded worker.

It runs `service.run` every `STEWARD_PROACTIVE_INTERVAL_MINUTES` (first run shortly after start). Only an
app that owns its engine runs it (`create_app(background=...)`): tests that hand the app an engine get
no background writes. Several server processes on PostgreSQL may each run it; the unique `open_key` and
the campaign send lease keep them from doing anything twice. `steward proactive run` does the same
evaluation once, for cron.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from api.notices.sms import SmsSender
from api.settings import Settings

log = logging.getLogger(__name__)


class Evaluator:
    """A daemon thread that evaluates every `interval_s`; `close()` stops it (idempotent)."""

    def __init__(self, engine: Engine, settings: Settings, sender: SmsSender, *, interval_s: float,
                 first_delay_s: float = 30.0) -> None:
        self.engine, self.settings, self.sender = engine, settings, sender
        self.interval_s, self.first_delay_s = interval_s, first_delay_s
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="proactive-evaluator", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run_once(self) -> None:
        """One evaluation; errors are logged, never raised (the next tick tries again)."""
        from api.proactive import service

        try:
            with Session(self.engine, expire_on_commit=False) as session:
                report = service.run(session=session, settings=self.settings, sender=self.sender)
            if any(report.model_dump().values()):
                log.info("proactive evaluation: %s", report.model_dump())
        except Exception:
            log.exception("proactive evaluation failed")
        self.runs += 1

    def _loop(self) -> None:
        wait = self.first_delay_s
        while not self._stop.wait(wait):
            self.run_once()
            wait = self.interval_s

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Start the evaluator with a served app (router lifespan, merged into the app's by FastAPI)."""
    settings: Settings = app.state.settings
    evaluator = None
    if getattr(app.state, "proactive_background", False) and settings.proactive_interval_minutes > 0:
        evaluator = Evaluator(app.state.engine, settings, app.state.sms_sender,
                              interval_s=settings.proactive_interval_minutes * 60)
        evaluator.start()
    app.state.proactive_evaluator = evaluator
    try:
        yield
    finally:
        if evaluator is not None:
            evaluator.close()
