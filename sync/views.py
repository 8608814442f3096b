"""Routes of the sync protocol: pull, push and the conflict log (docs/sync-protocol.md)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.db import reads_without_transaction
from api.deps import FIRST_CHECKS, OfficeUser, PageDep, SessionDep, SettingsDep, TokenDep, authenticate
from api.errors import Conflict, Unprocessable
from sync import service
from sync.cursor import InvalidCursor
from sync.models import (
    DEFAULT_LIMIT,
    MAX_CURSOR,
    MAX_LIMIT,
    SUPPORTED_VERSIONS,
    ConflictPublic,
    ConflictReview,
    ConflictsPublic,
    PullResponse,
    PushRequest,
    PushResponse,
)
from sync.pull import pull as pull_page
from sync.push import push as push_batch

router = APIRouter(prefix="/sync", tags=["sync"])


# A version or limit as a query string: ASCII digits only (`str.isdigit` takes ² and ①, which `int` refuses,
# and Arabic-Indic digits, which it reads), and few enough that `int` never meets a 4,300-digit string.
_WHOLE = re.compile(r"[0-9]{1,9}")


class UnsupportedVersion(Conflict):
    code = "unsupported_version"


def check_version(value: Any) -> None:
    """Refuse a missing or unknown protocol version before anything else, so old apps learn why."""
    supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
    if isinstance(value, str) and _WHOLE.fullmatch(value.strip()):
        value = int(value)
    # A whole number only: int(1.5) would pass as 1 here and then fail the body's validation with a 422.
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float)
                                                                         and value.is_integer())
    if not (whole and int(value) in SUPPORTED_VERSIONS):
        raise UnsupportedVersion(f"Sync protocol version {value!r} is not supported; this server speaks "
                                 f"{supported}. Update the app.")


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    size = int(value) if _WHOLE.fullmatch(value.strip()) else 0
    if not 1 <= size <= MAX_LIMIT:
        raise Unprocessable(f"limit must be a whole number between 1 and {MAX_LIMIT}.")
    return size


def _json(payload: dict[str, Any]) -> Response:
    """The answer as JSON. A push has committed by now, so this must not fail: a string orjson refuses (a lone
    surrogate a device sent, quoted back in a rejection) is written as a `\\ud800` escape instead."""
    try:
        content = orjson.dumps(payload)
    except TypeError:
        content = json.dumps(payload, default=str, separators=(",", ":")).encode()
    return Response(content=content, media_type="application/json")


@router.get("/pull", responses={200: {"model": PullResponse}})
async def pull(session: SessionDep, settings: SettingsDep, token: TokenDep,
               schema_version: Annotated[str | None, Query(description="Protocol version (1).")] = None,
               cursor: Annotated[str | None, Query(description="From the last page; none = first sync.")] = None,
               limit: Annotated[str | None, Query(description=f"Records per page, a whole number 1..{MAX_LIMIT} "
                                                              f"(default {DEFAULT_LIMIT}).")] = None
               ) -> Response:
    """One page of changes after the cursor. The protocol version is checked before the other parameters
    (docs/sync-protocol.md), so they are read here, not by FastAPI's validation."""

    def work() -> Response:  # the sign-in check and the page in one thread hop (a pull is a hot path)
        reads_without_transaction(session)  # a pull reads; its purge, when due, commits this first
        user = authenticate(session, settings, token, release=False)
        check_version(schema_version)
        size = _limit(limit)
        if cursor is not None and len(cursor) > MAX_CURSOR:
            raise InvalidCursor("The cursor is too long to be one this server issued; pull without a cursor to "
                                "start again.")
        return _json(pull_page(session=session, settings=settings, user=user, cursor=cursor or None, limit=size))

    return await run_in_threadpool(work)


@router.post("/push", responses={200: {"model": PushResponse}})
async def push(body: Annotated[dict[str, Any], Body()], session: SessionDep, settings: SettingsDep,
               token: TokenDep) -> Response:
    """Apply a batch of the device's queued mutations, exactly once."""

    def work() -> Response:
        user = authenticate(session, settings, token, release=False)
        check_version(body.get("schema_version"))
        try:
            request = PushRequest.model_validate(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from exc
        return _json(push_batch(session=session, settings=settings, user=user, body=request))

    return await run_in_threadpool(work)


async def _version_before_unknown_parameters(request: Request) -> None:
    """The version check of a pull or push that also names a query parameter this server does not know (a
    newer app's): refused as `unsupported_version`, not as the unknown parameter (api.deps.known_query_parameters)."""
    if request.method == "GET":
        check_version(request.query_params.get("schema_version"))
        return
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return  # a malformed body gets its own 422
    if isinstance(body, dict):
        check_version(body.get("schema_version"))


FIRST_CHECKS[pull] = FIRST_CHECKS[push] = _version_before_unknown_parameters


@router.get("/conflicts", response_model=ConflictsPublic)
def conflicts(session: SessionDep, _: OfficeUser, page: PageDep, table: str | None = None,
              row_id: uuid.UUID | None = None, user_id: uuid.UUID | None = None, client_id: uuid.UUID | None = None,
              kind: Annotated[str | None, Query(max_length=30)] = None,
              winner: Annotated[Literal["device", "server"] | None, Query()] = None,
              reviewed: Annotated[bool | None, Query(description="true: only reviewed; false: only not yet.")]
              = None):
    rows, count = service.list_conflicts(session=session, page=page, table=table, row_id=row_id, user_id=user_id,
                                         client_id=client_id, kind=kind, winner=winner, reviewed=reviewed)
    return {"data": rows, "count": count}


@router.post("/conflicts/{id}/review", response_model=ConflictPublic)
def review_conflict(id: uuid.UUID, body: ConflictReview, session: SessionDep, user: OfficeUser):
    """Mark a conflict line as reviewed (or clear the mark with `{"reviewed": false}`)."""
    return service.review_conflict(session=session, user=user, id=id, reviewed=body.reviewed)
