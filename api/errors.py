"""Domain errors raised by services, and the one place that maps every failure to HTTP."""

from __future__ import annotations

import errno
import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)


class DomainError(Exception):
    """Base of every error a service raises on purpose; `code` is stable, `message` says what to do."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.headers = headers


class BadRequest(DomainError):
    status_code, code = 400, "bad_request"


class Unauthorized(DomainError):
    status_code, code = 401, "unauthorized"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(DomainError):
    status_code, code = 403, "forbidden"


class NotFound(DomainError):
    status_code, code = 404, "not_found"


class Conflict(DomainError):
    status_code, code = 409, "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class PayloadTooLarge(DomainError):
    status_code, code = 413, "payload_too_large"


class Unprocessable(DomainError):
    status_code, code = 422, "validation_error"


class Unavailable(DomainError):
    """Something this server needs is not there (storage it cannot write): nothing was done; retry once fixed."""

    status_code, code = 503, "unavailable"


class ErrorDetail(BaseModel):
    """What went wrong: a stable `code` and a `message` that says what to do (some errors add fields)."""

    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class ErrorResponse(BaseModel):
    """The one error shape of every 4xx and 5xx answer."""

    detail: ErrorDetail


# Documents the error shape in OpenAPI for every route (it replaces FastAPI's default 422 schema, which is
# not what this service answers); clients and the fuzz tests check responses against it.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "Refused: `{\"detail\": {\"code\", \"message\"}}`."},
}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The single error shape: `{"detail": {"code", "message"}}` (plus optional extra keys)."""
    return {"detail": {"code": code, "message": message, **extra}}


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
                 415: "unsupported_media_type", 422: "validation_error", 429: "too_many_requests"}


def _unavailable() -> JSONResponse:
    return JSONResponse(error_body("database_unavailable", "The database is unavailable for a moment; retry "
                                   "shortly."), 503, headers={"Retry-After": "5"})


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation failures, HTTP errors and surprises to the one error shape."""

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body("malformed_json", "The request body is not valid JSON."), 400)
        if any(tuple(e.get("loc", ())) == ("body",) and isinstance(e.get("input"), bytes) for e in errors):
            # FastAPI reads a JSON route's body as JSON only when it says so: any other type stays bytes
            return JSONResponse(error_body("unsupported_media_type", "Send the body as JSON, with "
                                           "`Content-Type: application/json`."), 415)
        safe = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return JSONResponse(error_body("validation_error", _validation_message(errors), errors=safe), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.detail, dict) and "code" in exc.detail:
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError | RecursionError):
            # FastAPI reports a body that is not UTF-8, or nested deeper than the JSON parser goes, as a generic
            # parse error; it is malformed JSON.
            return JSONResponse(error_body("malformed_json", "The request body is not valid JSON: not UTF-8, or "
                                           "nested too deeply."), 400)
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        # Services check uniqueness first; this catches the race between two writers.
        log.info("integrity error: %s", exc.orig)
        return JSONResponse(error_body("conflict", "The change conflicts with existing data; reload and retry."),
                            409)

    @app.exception_handler(StatementError)
    async def _unstorable(request: Request, exc: StatementError) -> JSONResponse:
        # Values that pass validation but that the database cannot hold: NUL characters in PostgreSQL
        # text, a timestamp that leaves the datetime range once converted to UTC.
        if isinstance(exc, DataError) or (not isinstance(exc, DBAPIError) and isinstance(exc.orig, OverflowError)):
            log.info("value cannot be stored: %s", exc.orig)
            return JSONResponse(error_body("validation_error", "A value cannot be stored (text with NUL "
                                           "characters, or a date out of range); correct it and retry."), 422)
        if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
            # The database went away or is busy (a PostgreSQL restart or failover drops the pooled
            # connections; SQLite past its busy timeout): nothing was committed, and a retry in a moment
            # works (`pool_pre_ping` replaces dead connections). Handhelds retry a 503 after Retry-After.
            log.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc.orig)
            return _unavailable()
        return await _unexpected(request, exc)

    @app.exception_handler(PoolTimeout)
    async def _no_connection(request: Request, exc: PoolTimeout) -> JSONResponse:
        # Every pooled connection stayed busy past the pool's timeout (the request slots count requests, but
        # background workers and health checks take connections from the same pool): as busy as a database
        # that went away, and retried the same way.
        log.warning("no database connection free for %s %s: %s", request.method, request.url.path, exc)
        return _unavailable()

    @app.exception_handler(BotoCoreError)
    @app.exception_handler(ClientError)
    async def _storage(request: Request, exc: Exception) -> JSONResponse:
        # The S3-compatible blob store failed (unreachable, refused the credentials): nothing was written
        # (uploads reach the store only once verified), and the device retries; a 500 paged someone.
        log.warning("blob store unavailable during %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(error_body("storage_unavailable", "The file storage is unavailable for a moment; "
                                       "retry shortly."), 503, headers={"Retry-After": "30"})

    @app.exception_handler(OSError)
    async def _disk(request: Request, exc: OSError) -> JSONResponse:
        # The data directory is full or read-only (blobs, recordings, partial uploads): nothing was stored (a
        # blob is renamed into place only once complete), and the device keeps it and retries; an operator
        # frees space. Any other OSError is a surprise.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return await _unexpected(request, exc)
        log.error("storage full or read-only during %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(error_body("storage_full", "The server cannot store files right now (its disk is "
                                       "full or read-only); nothing was stored: retry later."), 503,
                            headers={"Retry-After": "300"})

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        # A weak link dropped while the body was arriving: expected in the field, not a server error (a 5xx
        # would page someone). Nobody reads the answer; 499 is what proxies log for it.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return JSONResponse(error_body("client_disconnected", "The connection closed before the whole body "
                                       "arrived."), 499)

    @app.exception_handler(UnicodeEncodeError)
    async def _not_text(request: Request, exc: UnicodeEncodeError) -> JSONResponse:
        # A lone surrogate from a form field that the request's own multipart charset decoded so (utf-7: `+2AA-`)
        # reached the database driver, which cannot encode it: bad input, not a server error. JSON bodies are
        # refused earlier (pydantic). Nothing was written: the driver refused the statement.
        if exc.reason != "surrogates not allowed":
            return await _unexpected(request, exc)
        return JSONResponse(error_body("validation_error", "The request holds text that is not valid Unicode "
                                       "(a lone surrogate); send UTF-8."), 422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", "Unexpected server error; it has been logged."), 500)
