"""The browser pages: the resident's join page, the steward's room page (and supervisors' watch view),
and the lobby that opens a call. Static HTML, each page's script in its own file (the CSP allows no inline
script), no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from api.errors import NotFound
from api.page_files import PageFile

STATIC = Path(__file__).parent / "static"
# The join URL carries the resident's token: never send it on as a referrer, never cache the page. The
# lobby and room pages share the console's origin and its token in sessionStorage (heat_token), so they get
# the console's policy (api/console/views.py): only our own script files, no framing. WebRTC adds
# `mediastream:` for media; the calls' HTTP goes to this origin (relay workers are same-origin, docs/video.md).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
           "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}
JS, CSS = "text/javascript; charset=utf-8", "text/css; charset=utf-8"
ASSETS = {"video.js": JS, "join.js": JS, "lobby.js": JS, "room.js": JS, "video.css": CSS}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> PageFile:
    return PageFile(STATIC / name, media_type="text/html; charset=utf-8", headers=HEADERS)


@router.api_route("/join/{token}", methods=["GET", "HEAD"])
def join_page(token: str) -> PageFile:
    """The resident's page; the script reads the token from the URL and checks it with the API."""
    return _page("join.html")


@router.api_route("/video", methods=["GET", "HEAD"])
def lobby_page() -> PageFile:
    """Sign in and open a call for a work order."""
    return _page("lobby.html")


@router.api_route("/video/room/{id}", methods=["GET", "HEAD"])
def room_page(id: str) -> PageFile:
    """The steward's page of a room; `?watch=1` is the supervisor's watch-only view. The id is not checked
    here: the page's script asks the API for the room and shows its answer (no room, not an id) in the page,
    where a JSON 422 would be all a mistyped link showed."""
    return _page("room.html")


@router.api_route("/video/static/{name}", methods=["GET", "HEAD"])
def asset(name: str) -> PageFile:
    if name not in ASSETS:
        raise NotFound(f"No asset {name}.")
    return PageFile(STATIC / name, media_type=ASSETS[name],
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
