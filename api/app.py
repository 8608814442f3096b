"""The application factory: settings, database, routers, error mapping, health and metrics."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine, text
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES

from api import __version__
from api.console.views import pages_router as console_pages_router
from api.console.views import router as console_router
from api.db import WalCheckpointer, make_engine, sqlite_file
from api.deps import known_query_parameters
from api.errors import ERROR_RESPONSES, install_error_handlers
from api.fieldwork.views import router as fieldwork_router
from api.middleware import BodyLimitMiddleware, CutAtShutdown, GZipResponses, MetricsMiddleware
from api.network.views import router as network_router
from api.notes.views import router as notes_router
from api.notices.sms import SmsSender, make_sender
from api.notices.views import router as notices_router
from api.proactive.views import router as proactive_router
from api.security import install_log_redaction
from api.settings import Settings, get_settings
from api.users.views import router as users_router
from api.work_orders.views import router as work_orders_router
from speech.views import speech_router
from sync.blobs.service import make_blobs
from sync.blobs.views import router as blobs_router
from sync.views import router as sync_router
from video.views import video_router

log = logging.getLogger("steward")

API_PREFIX = "/api/v1"
MULTIPART_ALLOWANCE = 64 * 1024  # form fields and part headers around an uploaded file
GZIP_MIN_BYTES = 1400  # smaller responses fit one packet as they are


@functools.cache
def api_router() -> APIRouter:
    """Every `/api/v1` route of the service, built once per process: FastAPI analyses a new router's routes
    (their parameters and dependencies) when an app first includes it, ~150 ms of CPU, and an app built
    again in the same process (the tests build hundreds) reuses that work (2-3 ms an app)."""
    router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(known_query_parameters)])
    for sub in (users_router, network_router, work_orders_router, fieldwork_router, notes_router, notices_router,
                sync_router, blobs_router, speech_router, console_router, proactive_router):
        router.include_router(sub)
    return router


def create_app(settings: Settings | None = None, *, engine: Engine | None = None,
               sms_sender: SmsSender | None = None, background: bool | None = None) -> FastAPI:
    """Build the service; tests pass their own settings and engine."""
    settings = settings or get_settings()
    install_log_redaction()  # logs never hold tokens, passwords or unmasked phone numbers
    owns_engine, owns_sender = engine is None, sms_sender is None
    engine = engine or make_engine(settings)

    # Background work (the periodic proactive evaluation, SQLite's checkpoints): a served app runs it; an
    # app handed an engine (tests, tools) does not unless asked.
    background = owns_engine if background is None else background

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        checkpointer = None
        if background and sqlite_file(engine) and settings.sqlite_checkpoint_interval_s > 0:
            checkpointer = WalCheckpointer(engine, interval_s=settings.sqlite_checkpoint_interval_s)
            checkpointer.start()
        app.state.wal_checkpointer = checkpointer
        try:
            yield
        finally:
            if checkpointer is not None:
                checkpointer.close()
            if owns_sender and callable(close_sender := getattr(app.state.sms_sender, "close", None)):
                close_sender()  # the HTTP gateway sender's connection pool
            if owns_engine:
                engine.dispose()

    app = FastAPI(title="Heat Steward", version=__version__, lifespan=lifespan, responses=ERROR_RESPONSES,
                  description="Backend of the heating steward service (供暖管家).")
    app.state.settings = settings
    app.state.engine = engine
    app.state.sms_sender = sms_sender or make_sender(settings)
    if owns_sender and settings.env == "production" and settings.sms_sender == "log":
        # The default sender marks every notice and campaign message `sent` and only writes it to the log.
        log.warning("STEWARD_SMS_SENDER=log in production: notices and campaign messages are written to the log "
                    "and marked sent, and no resident receives them; set STEWARD_SMS_SENDER=http and "
                    "STEWARD_SMS_HTTP_URL to send them through the SMS gateway")
    app.state.proactive_background = background  # api/proactive/worker.py
    app.state.blobs = make_blobs(settings)
    registry = CollectorRegistry()
    # Uploads get their own limits (the routes check them again); a multipart envelope adds a little.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       prefix_limits=((f"{API_PREFIX}/blobs", settings.blob_max_bytes),
                                      (f"{API_PREFIX}/calls", settings.audio_max_bytes + MULTIPART_ALLOWANCE)))
    if settings.gzip_level:
        # Pull pages are JSON of 1-20 MB on a first sync; gzip at level 1 shrinks them about 5x for ~4 ms of CPU
        # per MB (docs/sync-protocol.md). Blob and audio bytes are served as they are: they are compressed
        # media already, and a compressed body would break the byte ranges a resumed download asks for.
        app.add_middleware(GZipResponses, minimum_size=GZIP_MIN_BYTES, compresslevel=settings.gzip_level,
                           exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/octet-stream"))
    app.add_middleware(MetricsMiddleware, registry=registry)
    app.add_middleware(CutAtShutdown)  # the outermost of ours: whatever the cut request was doing
    install_error_handlers(app)
    app.include_router(api_router())
    app.include_router(video_router)
    app.include_router(console_pages_router)

    @app.get("/healthz", tags=["ops"])
    def healthz(request: Request) -> JSONResponse:
        try:
            with request.app.state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # the probe must answer, whatever broke
            log.warning("health check failed: %s", exc)
            return JSONResponse({"status": "error", "database": "unreachable", "version": __version__}, 503)
        return JSONResponse({"status": "ok", "database": "ok", "version": __version__})

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
