"""Routes of the console: the page and its assets at `/console`, the JSON it adds under
`/api/v1/console`. Sign-in is the API's own (a bearer token kept in the tab's sessionStorage), so there
is no cookie and no CSRF surface; docs/console.md says why."""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query

from api.console import service
from api.console.models import ConsoleMe, Dashboard, QueuePage, Timeline, TranscriptQuality
from api.deps import CurrentUser, OfficeUser, PageDep, SessionDep, SettingsDep
from api.errors import NotFound
from api.page_files import PageFile
from speech import service as speech
from speech.models import TranscriptState

STATIC = Path(__file__).parent / "static"
# The page holds an access token: no framing, no referrer, no inline or foreign script (XSS is the one
# way to steal a token kept in sessionStorage, so everything is rendered with textContent and the CSP
# forbids any script but our own file). Audio and snapshots are fetched with the token into blob: URLs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
           "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}
ASSETS = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}

pages_router = APIRouter(include_in_schema=False)


@pages_router.api_route("/console", methods=["GET", "HEAD"])
@pages_router.api_route("/console/", methods=["GET", "HEAD"])
def console_page() -> PageFile:
    """The console (one page; the views are `#/queue`, `#/t/<id>`, `#/wo/<id>`, `#/conflicts`, `#/dashboard`)."""
    return PageFile(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@pages_router.api_route("/console/static/{name}", methods=["GET", "HEAD"])
def console_asset(name: str) -> PageFile:
    if name not in ASSETS:
        raise NotFound(f"No console asset {name}.")
    return PageFile(STATIC / name, media_type=ASSETS[name],
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


router = APIRouter(prefix="/console", tags=["console"])


@router.get("/me", response_model=ConsoleMe)
def me(session: SessionDep, settings: SettingsDep, user: CurrentUser) -> ConsoleMe:
    """Who is signed in, what the console lets them do, and the names of the people the pages show."""
    return service.me(session=session, settings=settings, user=user)


@router.get("/transcripts", response_model=QueuePage)
def review_queue(session: SessionDep, settings: SettingsDep, user: CurrentUser, page: PageDep,
                 status: TranscriptState | None = None, category: str | None = None,
                 date_from: date | None = None, date_to: date | None = None, steward_id: uuid.UUID | None = None,
                 q: Annotated[str | None, Query(json_schema_extra={"maxLength": 200})] = None) -> QueuePage:
    """The review queue: the transcripts API's filters and search, those waiting for review first. The filters
    are checked by the transcripts API's own rules (422 `invalid_category`, `invalid_query`), as there."""
    rows, count, pending = service.queue(session=session, settings=settings, user=user, page=page, status=status,
                                         category=category, date_from=date_from, date_to=date_to,
                                         steward_id=steward_id, q=q)
    return QueuePage(data=speech.present_page(session, user, rows), count=count, pending=pending)


@router.get("/transcripts/{id}/quality", response_model=TranscriptQuality)
def transcript_quality(id: uuid.UUID, session: SessionDep, settings: SettingsDep,
                       user: CurrentUser) -> TranscriptQuality:
    """Per-segment decoder confidence (avg_logprob, no_speech_prob) and the low-confidence flag."""
    return service.quality(settings=settings, transcript=speech.get(session=session, user=user, id=id))


@router.get("/work-orders/{id}/timeline", response_model=Timeline)
def work_order_timeline(id: uuid.UUID, session: SessionDep, user: CurrentUser) -> Timeline:
    """One work order's history from every domain, oldest first, and the household's readings."""
    return service.timeline(session=session, user=user, id=id)


@router.get("/dashboard", response_model=Dashboard)
def dashboard(session: SessionDep, user: OfficeUser) -> Dashboard:
    """The district's live figures and the proactive panel (the page polls it every STEWARD_CONSOLE_REFRESH_S
    seconds)."""
    return service.dashboard(session=session, user=user)
