"""Residents' join tokens (signed, short-lived, one room) and the ICE servers handed to clients."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt

from api.db import utcnow
from api.errors import Forbidden, Unauthorized
from api.settings import Settings
from video.models import IceServer

JOIN_TYPE = "video_join"


@dataclass(frozen=True)
class JoinClaims:
    room_id: uuid.UUID
    expires_at: datetime


def create_join_token(*, settings: Settings, room_id: uuid.UUID, room_expires_at: datetime) -> tuple[str, datetime]:
    """A token that lets its holder join this one room as the resident, until it expires (never after the
    room's own end)."""
    now = utcnow()
    expires_at = min(now + timedelta(minutes=settings.video_join_token_minutes), room_expires_at)
    claims = {"sub": str(room_id), "typ": JOIN_TYPE, "role": "resident", "iat": now, "exp": expires_at,
              "jti": uuid.uuid4().hex}
    return jwt.encode(claims, settings.secret_key, algorithm=settings.jwt_algorithm), expires_at


def peek_type(*, settings: Settings, token: str) -> str:
    """The token's `typ` once its signature is checked (`access` or `video_join`); `Unauthorized` if forged."""
    try:
        claims: dict[str, Any] = jwt.decode(token, settings.secret_key, algorithms=[settings.jwt_algorithm],
                                            options={"verify_exp": False})
    except jwt.PyJWTError as exc:
        raise Unauthorized("The link or token is invalid; ask the steward for a new link.",
                           code="invalid_token") from exc
    return str(claims.get("typ", ""))


def decode_join_token(*, settings: Settings, token: str, room_id: uuid.UUID | None = None,
                      expired_too: bool = False) -> JoinClaims:
    """The claims of a valid join token; 401 if expired (unless `expired_too`) or forged, 403 if it is for
    another room."""
    try:
        claims = jwt.decode(token, settings.secret_key, algorithms=[settings.jwt_algorithm],
                            options={"require": ["sub", "exp", "typ"], "verify_exp": not expired_too})
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("The video link has expired; ask the steward to send a new one.",
                           code="join_link_expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("The video link is invalid; ask the steward to send a new one.",
                           code="invalid_token") from exc
    if claims.get("typ") != JOIN_TYPE:
        raise Unauthorized("This is not a video join link.", code="invalid_token")
    try:  # signed, so made with the key: still, claims of the wrong type are an invalid link, not a 500
        token_room = uuid.UUID(str(claims["sub"]))
        expires_at = datetime.fromtimestamp(float(claims["exp"]), tz=utcnow().tzinfo)
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
        raise Unauthorized("The video link is invalid.", code="invalid_token") from exc
    if room_id is not None and token_room != room_id:
        raise Forbidden("This video link is for another call.", code="wrong_room")
    return JoinClaims(room_id=token_room, expires_at=expires_at)


def ice_servers(settings: Settings, *, ttl_s: float) -> list[IceServer]:
    """STUN/TURN servers from settings. TURN URLs get coturn REST-API credentials (`use-auth-secret`):
    username `<expiry>:steward`, password base64(HMAC-SHA1(secret, username))."""
    urls = [u.strip() for u in settings.video_ice_servers.split(",") if u.strip()]
    stun = [u for u in urls if u.startswith(("stun:", "stuns:"))]
    turn = [u for u in urls if u.startswith(("turn:", "turns:"))]
    servers = [IceServer(urls=stun)] if stun else []
    if turn:
        if settings.video_turn_secret:
            username = f"{int(time.time() + ttl_s)}:steward"
            digest = hmac.new(settings.video_turn_secret.encode(), username.encode(), hashlib.sha1).digest()
            servers.append(IceServer(urls=turn, username=username, credential=base64.b64encode(digest).decode()))
        else:
            servers.append(IceServer(urls=turn))
    return servers
