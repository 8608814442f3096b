"""Password hashing (argon2) and access tokens (JWT)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from api.db import utcnow
from api.errors import Unauthorized
from api.settings import Settings

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash of the password."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether the password matches; never raises for a wrong password or a damaged hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than today's."""
    return _hasher.check_needs_rehash(password_hash)


def create_access_token(*, settings: Settings, user_id: uuid.UUID, role: str) -> tuple[str, int]:
    """A signed token carrying the user id and role; returns it with its lifetime in seconds."""
    lifetime = timedelta(minutes=settings.access_token_minutes)
    now = utcnow()
    claims = {"sub": str(user_id), "role": role, "iat": now, "exp": now + lifetime, "typ": "access"}
    token = jwt.encode(claims, settings.secret_key, algorithm=settings.jwt_algorithm)
    return token, int(lifetime.total_seconds())


def decode_access_token(*, settings: Settings, token: str) -> dict[str, Any]:
    """The token's claims, or `Unauthorized` if it is expired, forged or malformed."""
    try:
        claims = jwt.decode(token, settings.secret_key, algorithms=[settings.jwt_algorithm],
                            options={"require": ["sub", "exp", "role"]})
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("The access token has expired; sign in again.", code="token_expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("The access token is invalid; sign in again.", code="invalid_token") from exc
    if claims.get("typ") != "access":
        raise Unauthorized("This is not an access token.", code="invalid_token")
    return claims
