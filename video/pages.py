"""The browser pages: the resident's join page, the steward's room page (and supervisors' watch view),
and the lobby that opens a call. Static HTML/JS, no build step."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.errors import NotFound

STATIC = Path(__file__).parent / "static"
# The join URL carries the resident's token: never send it on as a referrer, never cache the page.
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}
ASSETS = {"video.js": "text/javascript; charset=utf-8", "video.css": "text/css; charset=utf-8"}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/join/{token}")
def join_page(token: str) -> FileResponse:
    """The resident's page; the script reads the token from the URL and checks it with the API."""
    return _page("join.html")


@router.get("/video")
def lobby_page() -> FileResponse:
    """Sign in and open a call for a work order."""
    return _page("lobby.html")


@router.get("/video/room/{id}")
def room_page(id: uuid.UUID) -> FileResponse:
    """The steward's page of a room; `?watch=1` is the supervisor's watch-only view."""
    return _page("room.html")


@router.get("/video/static/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound(f"No asset {name}.")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})
