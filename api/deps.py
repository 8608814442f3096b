"""Named dependencies for routes: the session, the current user, role checks and paging."""

from __future__ import annotations

import asyncio
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import Engine
from sqlalchemy.pool import QueuePool
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.db import session_scope
from api.errors import Forbidden, Unauthorized
from api.security import decode_access_token
from api.settings import Settings
from api.users.models import Role, User

T = TypeVar("T")

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


# Dependencies that only read app state are `async`: FastAPI runs sync ones in its thread pool, a hop
# per dependency per request.
async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _session_slots(request: Request, engine: Engine) -> asyncio.Semaphore | None:
    """One slot per connection the pool can hand out (None when checking out never waits)."""
    pool = engine.pool
    if not isinstance(pool, QueuePool) or pool._max_overflow < 0:
        return None
    loop = asyncio.get_running_loop()
    held = getattr(request.app.state, "session_slots", None)
    if held is None or held[0] is not loop:  # one semaphore per event loop (tests start several)
        held = (loop, asyncio.Semaphore(pool.size() + pool._max_overflow))
        request.app.state.session_slots = held
    slots: asyncio.Semaphore = held[1]
    return slots


async def get_session(request: Request, engine: Annotated[Engine, Depends(get_engine)]) -> AsyncIterator[Session]:
    """The request's session, opened once one of the pool's connections is sure to be free for it.

    FastAPI runs sync dependencies and routes in a pool of 40 threads, one step at a time. Without the slots,
    more requests than connections deadlock the service: every thread waits in the connection pool while the
    requests holding the connections wait for a thread to finish (docs/reliability.md). A request now waits
    for its slot here, on the event loop, holding neither a thread nor a connection. Async on purpose too:
    closing the session (and returning its connection) never waits for a thread.
    """
    slots = _session_slots(request, engine)
    if slots is None:
        with contextmanager(session_scope)(engine) as session:
            yield session
        return
    async with slots:
        with contextmanager(session_scope)(engine) as session:
            yield session


# Checks that come before the unknown-parameter check, by route endpoint: the sync protocol's version (an old
# server must tell a newer app that sends a parameter it does not know to update, not that the parameter is
# unknown: docs/sync-protocol.md puts the version check first).
FIRST_CHECKS: dict[Callable[..., object], Callable[[Request], Awaitable[None]]] = {}

_QUERY_NAMES = "_steward_query_names"  # kept on the route: keyed by id(), a collected app's route could lend its id


def _query_names(dependant: Dependant) -> Iterator[tuple[str, bool]]:
    """The query parameters a route reads, its dependencies' included, each with whether it takes several values
    (`?tag=a&tag=b` for a list)."""
    for field in dependant.query_params:
        annotation = field.field_info.annotation
        origins = {typing.get_origin(annotation), *(typing.get_origin(a) for a in typing.get_args(annotation))}
        yield field.alias, bool(origins & {list, set, tuple, frozenset})
    for sub in dependant.dependencies:
        yield from _query_names(sub)


async def known_query_parameters(request: Request) -> None:
    """Refuse a query parameter the route does not take (422 `validation_error` naming it). Ignored, a
    misspelt filter (`?assignee=` for `assignee_id`) answered every row as if it had filtered, and `limit` on a
    list without paging looked honoured."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known: tuple[frozenset[str], frozenset[str]] | None = getattr(route, _QUERY_NAMES, None)
    if known is None:
        pairs = list(_query_names(route.dependant))
        known = frozenset(name for name, _ in pairs), frozenset(name for name, many in pairs if many)
        setattr(route, _QUERY_NAMES, known)
    names, many = known
    unknown = sorted(set(request.query_params) - names)
    # Given twice, a filter took its last value without a word (`?role=admin&role=steward`: stewards only).
    repeated = sorted(name for name in names - many if len(request.query_params.getlist(name)) > 1)
    if unknown or repeated:
        first = FIRST_CHECKS.get(route.endpoint)
        if first is not None:
            await first(request)
        takes = ", ".join(sorted(names)) or "none"
        raise RequestValidationError(
            [{"type": "extra_forbidden", "loc": ("query", name), "input": None,
              "msg": f"Unknown query parameter; this route takes: {takes}"} for name in unknown]
            + [{"type": "repeated", "loc": ("query", name), "input": None,
                "msg": "Given more than once; this parameter takes one value"} for name in repeated])


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
TokenDep = Annotated[str | None, Depends(oauth2_scheme)]


def get_current_user(session: SessionDep, settings: SettingsDep, token: TokenDep) -> User:
    """The signed-in, active user; the role comes from the database so a demotion applies at once."""
    return authenticate(session, settings, token, release=True)


def authenticate(session: Session, settings: Settings, token: str | None, *, release: bool) -> User:
    """`get_current_user` as a plain call, for hot async routes that run their whole work in one thread
    hop (the sync pull and push) instead of one hop for the user and another for the route; those keep
    the connection (`release=False`) and read the user on it before the work (a push in its transaction, a
    pull outside any: `api.db.reads_without_transaction`)."""
    if not token:
        raise Unauthorized("Sign in first: send `Authorization: Bearer <token>` from /api/v1/auth/token.",
                           code="not_authenticated")
    claims = decode_access_token(settings=settings, token=token)
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except ValueError as exc:
        raise Unauthorized("The access token is invalid; sign in again.", code="invalid_token") from exc
    user = session.get(User, user_id)
    if release:
        # End this read now: the route runs in another pool thread, and the connection goes back to the
        # pool meanwhile (a request waiting for a thread, or streaming an upload, holds none).
        session.commit()
    if user is None or not user.active:
        raise Unauthorized("This account no longer exists or is disabled.", code="inactive_user")
    if claims.get("ep", 0) != user.token_epoch:  # tokens signed before 0017 carry none: epoch 0
        raise Unauthorized("This sign-in has ended: the password was changed or the account was disabled since. "
                           "Sign in again.", code="token_revoked")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def in_short_session(request: Request, engine: Engine, work: Callable[[Session], T]) -> T:
    """Run `work` in a session of its own, in the thread pool, holding a slot and a connection only while it
    runs: for routes that then stream bytes for as long as a weak link takes."""
    slots = _session_slots(request, engine)

    def run() -> T:
        with contextmanager(session_scope)(engine) as session:
            return work(session)

    if slots is None:
        return await run_in_threadpool(run)
    async with slots:
        return await run_in_threadpool(run)


async def get_streaming_user(request: Request, engine: EngineDep, settings: SettingsDep, token: TokenDep) -> User:
    """`get_current_user` for routes that stream a request or an answer (blobs, recordings), or await
    something long (the video relay). A `SessionDep` holds its slot until the response is sent: 20 slow
    uploads or downloads on a weak link held every slot, and every other request of the process waited
    behind them."""
    return await in_short_session(request, engine, lambda session: authenticate(session, settings, token,
                                                                                release=True))


StreamingUser = Annotated[User, Depends(get_streaming_user)]


def require_role(*roles: Role) -> Callable[[User], Awaitable[User]]:
    """A dependency that lets only the given roles through (403 otherwise)."""

    async def check(user: CurrentUser) -> User:
        if user.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise Forbidden(f"This action needs one of the roles: {allowed}.", code="role_required")
        return user

    return check


AdminUser = Annotated[User, Depends(require_role(Role.admin))]
OfficeUser = Annotated[User, Depends(require_role(Role.admin, Role.supervisor))]


class Page:
    """Offset paging shared by every list route."""

    def __init__(self, request: Request, offset: int = Query(0, ge=0, le=10_000_000),
                 limit: int = Query(50, ge=1, description="Rows per page, 1..STEWARD_PAGE_MAX_LIMIT (500).")) -> None:
        largest = request.app.state.settings.page_max_limit
        if limit > largest:  # the same shape as any other invalid query parameter, `errors[].loc` included
            raise RequestValidationError([{"type": "less_than_equal", "loc": ("query", "limit"),
                                           "msg": f"Input should be less than or equal to {largest}",
                                           "input": limit, "ctx": {"le": largest}}])
        self.offset = offset
        self.limit = limit


PageDep = Annotated[Page, Depends()]
