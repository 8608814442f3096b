"""Password hashing (argon2), access tokens (JWT), and masking of secrets and personal numbers in logs."""

from __future__ import annotations

import logging
import re
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

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


def create_access_token(*, settings: Settings, user_id: uuid.UUID, role: str, epoch: int = 0) -> tuple[str, int]:
    """A signed token carrying the user id, role and token epoch (`User.token_epoch`); returns it with its
    lifetime in seconds."""
    lifetime = timedelta(minutes=settings.access_token_minutes)
    now = utcnow()
    claims = {"sub": str(user_id), "role": role, "iat": now, "exp": now + lifetime, "typ": "access", "ep": epoch}
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


# --- logs never hold credentials or unmasked personal numbers -------------------------------------------

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
_SECRET_FIELD = re.compile(r"(?i)((?:password|passwd|secret|access_token|token|credential)[\"']?\s*[=:]\s*[\"']?)"
                           r"[^\s\"'&,;}]+")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})")


def redact_log_text(text: str) -> str:
    """`text` with tokens, passwords and phone/ID numbers masked (the transcript masking rules).

    Percent-encoded text (uvicorn logs query strings encoded: `q=%E5%9B%9E%E7%94%B513912345678`) and JSON's
    `\\uXXXX` escapes are decoded first: the rules need a non-digit before a number and allow only a space,
    `-`, `，` or `、` between its groups, so `139%201234%205678` and `\\u753513912345678` got past them."""
    from speech.redact import redact_text  # the service's one masking rule for personal numbers

    if _PERCENT.search(text):
        text = unquote(text)
    if "\\u" in text:
        text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    text = _JWT.sub("[token]", text)
    text = _BEARER.sub(r"\1[token]", text)
    text = _SECRET_FIELD.sub(r"\1[redacted]", text)
    return redact_text(text)


def _redact_arg(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value  # keeps %d and %f working
    text = value if isinstance(value, str) else str(value)
    masked = redact_log_text(text)
    return value if masked == text else masked


_installed = False


def install_log_redaction() -> None:
    """Mask tokens, passwords and phone numbers in every log record of this process, whichever library
    writes it and whichever handler prints it (uvicorn's access log included). Idempotent.

    The record factory masks the message, each argument (uvicorn's access formatter needs its arguments
    as a tuple, so they are masked in place rather than merged) and the formatted traceback."""
    global _installed
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            if isinstance(record.msg, str):
                record.msg = redact_log_text(record.msg)
            elif record.msg is not None and not record.args:  # `log.info(exc)`: the object's text is the message
                text = str(record.msg)
                if (masked := redact_log_text(text)) != text:
                    record.msg = masked
            if isinstance(record.args, tuple):
                record.args = tuple(_redact_arg(a) for a in record.args)
            elif isinstance(record.args, dict):
                record.args = {k: _redact_arg(v) for k, v in record.args.items()}
            if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
                record.exc_text = redact_log_text(logging.Formatter().formatException(record.exc_info))
        except Exception:  # masking must never lose the record
            record.msg, record.args = "[a log message that could not be masked was dropped]", ()
        return record

    logging.setLogRecordFactory(factory)


def configure_logging(level: str) -> None:
    """Give the service's own loggers (`api`, `sync`, `speech`, `video`, `steward.*`) a handler on stderr at
    `level` (STEWARD_LOG_LEVEL): uvicorn configures only its own, so INFO lines such as the log SMS sender's
    were printed nowhere. Idempotent; keeps a handler someone configured already."""
    root = logging.getLogger()
    numeric = 5 if level.lower() == "trace" else logging.getLevelName(level.upper())
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    # Alembic says at INFO which DDL mode it assumes each time a command checks the schema: three lines of
    # stderr per `steward proactive run` under cron, a mail every run. Its warnings still show.
    if root.level > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)
