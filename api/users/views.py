"""Routes for sign-in, the current user, users and grids."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from api.deps import AdminUser, CurrentUser, PageDep, SessionDep, SettingsDep
from api.security import create_access_token
from api.users import service
from api.users.models import (
    GridPublic,
    GridUpdate,
    Role,
    Token,
    UserCreate,
    UserPublic,
    UsersPublic,
    UserUpdate,
)

router = APIRouter(tags=["users"])


@router.post("/auth/token", response_model=Token)
def sign_in(request: Request, response: Response, form: Annotated[OAuth2PasswordRequestForm, Depends()],
            session: SessionDep, settings: SettingsDep):
    """Sign in with a user name and password; throttled per address and locked after repeated failures (429)."""
    # A token is kept by no cache on the way (RFC 6749 5.1): a shared proxy or the browser's cache held it.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    address = request.client.host if request.client else "unknown"
    user = service.sign_in(session=session, settings=settings, username=form.username, password=form.password,
                           address=address)
    token, lifetime = create_access_token(settings=settings, user_id=user.id, role=user.role.value,
                                          epoch=user.token_epoch)
    return Token(access_token=token, expires_in=lifetime, role=user.role)


@router.get("/auth/me", response_model=UserPublic)
def me(user: CurrentUser):
    return user


@router.get("/auth/me/grid", response_model=GridPublic)
def my_grid(session: SessionDep, user: CurrentUser):
    return GridPublic(user_id=user.id, building_ids=service.get_grid(session=session, user=user))


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserPublic)
def create_user(data: UserCreate, session: SessionDep, _: AdminUser):
    return service.create_user(session=session, data=data)


@router.get("/users", response_model=UsersPublic)
def list_users(session: SessionDep, _: AdminUser, page: PageDep, role: Role | None = None):
    rows, count = service.list_users(session=session, page=page, role=role)
    return {"data": rows, "count": count}


@router.get("/users/{id}", response_model=UserPublic)
def get_user(id: uuid.UUID, session: SessionDep, _: AdminUser):
    return service.get_user(session=session, id=id)


@router.patch("/users/{id}", response_model=UserPublic)
def update_user(id: uuid.UUID, data: UserUpdate, session: SessionDep, admin: AdminUser):
    user = service.get_user(session=session, id=id)
    return service.update_user(session=session, user=user, data=data, actor=admin)


@router.get("/users/{id}/grid", response_model=GridPublic)
def get_grid(id: uuid.UUID, session: SessionDep, _: AdminUser):
    user = service.get_user(session=session, id=id)
    return GridPublic(user_id=user.id, building_ids=service.get_grid(session=session, user=user))


@router.put("/users/{id}/grid", response_model=GridPublic)
def set_grid(id: uuid.UUID, data: GridUpdate, session: SessionDep, _: AdminUser):
    user = service.get_user(session=session, id=id)
    return GridPublic(user_id=user.id, building_ids=service.set_grid(session=session, user=user,
                                                                     building_ids=data.building_ids))
