"""Named dependencies for routes: the session, the current user, role checks and paging."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import Engine
from sqlmodel import Session

from api.db import session_scope
from api.errors import Forbidden, Unauthorized
from api.security import decode_access_token
from api.settings import Settings
from api.users.models import Role, User

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    yield from session_scope(engine)


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
TokenDep = Annotated[str | None, Depends(oauth2_scheme)]


def get_current_user(session: SessionDep, settings: SettingsDep, token: TokenDep) -> User:
    """The signed-in, active user; the role comes from the database so a demotion applies at once."""
    if not token:
        raise Unauthorized("Sign in first: send `Authorization: Bearer <token>` from /api/v1/auth/token.",
                           code="not_authenticated")
    claims = decode_access_token(settings=settings, token=token)
    try:
        user_id = uuid.UUID(claims["sub"])
    except ValueError as exc:
        raise Unauthorized("The access token is invalid; sign in again.", code="invalid_token") from exc
    user = session.get(User, user_id)
    if user is None or not user.active:
        raise Unauthorized("This account no longer exists or is disabled.", code="inactive_user")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_role(*roles: Role) -> Callable[[User], User]:
    """A dependency that lets only the given roles through (403 otherwise)."""

    def check(user: CurrentUser) -> User:
        if user.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise Forbidden(f"This action needs one of the roles: {allowed}.", code="role_required")
        return user

    return check


AdminUser = Annotated[User, Depends(require_role(Role.admin))]
OfficeUser = Annotated[User, Depends(require_role(Role.admin, Role.supervisor))]


class Page:
    """Offset paging shared by every list route."""

    def __init__(self, offset: int = Query(0, ge=0, le=10_000_000),
                 limit: int = Query(50, ge=1, le=500)) -> None:
        self.offset = offset
        self.limit = limit


PageDep = Annotated[Page, Depends()]
