"""Users, sign-in and stewards' grids."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete
from sqlalchemy import update as sa_update
from sqlmodel import Session, col, func, select

from api import access
from api.db import lock_for_update
from api.deps import Page
from api.errors import Conflict, NotFound, Unauthorized, Unprocessable
from api.network.models import Building
from api.security import hash_password, needs_rehash, verify_password
from api.settings import Settings
from api.users import throttle
from api.users.models import GridBuilding, Role, User, UserCreate, UserUpdate
from api.work_orders import service as work_orders

log = logging.getLogger(__name__)

# Verified against when the user name is unknown, so both failures take the same time.
_DUMMY_HASH = hash_password("not-a-real-password")


def authenticate(*, session: Session, username: str, password: str) -> User:
    """The active user with these credentials, or `Unauthorized`."""
    user = session.exec(select(User).where(_same_name(username))).first()
    if user is None:
        verify_password(_DUMMY_HASH, password)
        raise Unauthorized("Wrong user name or password.", code="invalid_credentials")
    # A disabled account answers as a wrong password does, whatever the password: a different answer for the
    # right one would confirm a guess at a departed colleague's password (the hash is still checked, so both
    # take the same time).
    if not verify_password(user.password_hash, password) or not user.active:
        raise Unauthorized("Wrong user name or password.", code="invalid_credentials")
    if needs_rehash(user.password_hash):
        # Only over the hash just verified: written as a plain update of the row read before, a password reset
        # that committed meanwhile was overwritten with a fresh hash of the old password (a lost handheld's
        # credentials worked again, the new ones did not).
        stmt = (sa_update(User).where(col(User.id) == user.id, col(User.password_hash) == user.password_hash)
                .values(password_hash=hash_password(password)))
        session.execute(stmt)
        session.commit()
    return user


def sign_in(*, session: Session, settings: Settings, username: str, password: str, address: str) -> User:
    """`authenticate`, throttled: 429 when the address is over its rate or the name or address is locked;
    every attempt counts toward the lockout before its password is verified, a right one clears the name's
    count."""
    throttle.check(session=session, settings=settings, username=username, address=address)
    try:
        user = authenticate(session=session, username=username, password=password)
    except Unauthorized as exc:
        if exc.code == "invalid_credentials":
            session.rollback()
            throttle.record_failure(session=session)
        raise
    throttle.record_success(session=session, username=username, address=address)
    return user


def _check_grid(session: Session, role: Role, building_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    ids = list(dict.fromkeys(building_ids))
    if ids and role != Role.steward:
        raise Unprocessable("Only stewards have a grid.", code="grid_for_non_steward")
    found = set(session.exec(select(Building.id).where(col(Building.id).in_(ids))).all()) if ids else set()
    missing = [str(i) for i in ids if i not in found]
    if missing:
        raise NotFound(f"No building with id {', '.join(missing[:5])}.")
    return ids


def _same_name(username: str) -> Any:
    """User names are one name whatever their case (`Admin` is `admin`): kept as typed, compared lower-cased
    (the unique index `uq_users_username_lower` says the same, and serves the sign-in lookup)."""
    # Both sides lowered by the database: SQLite's lower() folds ASCII only, and against Python's lower() a
    # name with a non-ASCII capital (stored before the name pattern held) never matched itself.
    return func.lower(User.username) == func.lower(username)


def create_user(*, session: Session, data: UserCreate) -> User:
    """Create a user (with a grid, for stewards)."""
    taken = session.exec(select(User.username).where(_same_name(data.username))).first()
    if taken is not None:
        raise Conflict(f"User name {data.username!r} is taken ({taken!r}: names differ in more than case).",
                       code="already_exists")
    grid = _check_grid(session, data.role, data.grid)
    user = User.model_validate(data.model_dump(exclude={"password", "grid"})
                               | {"password_hash": hash_password(data.password)})
    session.add(user)
    session.flush()
    session.add_all(GridBuilding(user_id=user.id, building_id=b) for b in grid)
    session.commit()
    return user


def get_user(*, session: Session, id: uuid.UUID) -> User:
    """A user by id."""
    user = session.get(User, id)
    if user is None:
        raise NotFound(f"No user with id {id}.")
    return user


def _removes_an_admin(user: User, changes: dict[str, object]) -> bool:
    """Whether the change takes an active admin out of the admins (a demotion or a deactivation)."""
    if user.role != Role.admin or not user.active:
        return False
    return changes.get("role", Role.admin) != Role.admin or changes.get("active", True) is False


def _lock_active_admins(session: Session) -> None:
    # PostgreSQL: two admins demoting each other at once would each still see the other as an admin and
    # both commit. Locking every admin row first (in id order, so two lockers cannot deadlock) makes the
    # second wait for the first and then see its change. SQLite renders no FOR UPDATE: its writes are
    # serialised, and the count below runs inside the write transaction.
    stmt = select(User.id).where(User.role == Role.admin, col(User.active).is_(True)).order_by(col(User.id))
    session.exec(stmt.with_for_update()).all()


def _count_active_admins(session: Session) -> int:
    stmt = select(func.count()).select_from(User).where(User.role == Role.admin, col(User.active).is_(True))
    return session.exec(stmt).one()


def update_user(*, session: Session, user: User, data: UserUpdate, actor: User | None = None) -> User:
    """Change a user's profile, role, password or active flag; the last active admin stays one. A steward
    disabled or given another role hands their open work orders back (`work_orders.release_all`).

    Decided on the row as it is now, locked (`lock_for_update`, as `set_grid`): from the copy read earlier, a
    change made in between (a supervisor made admin, then the other admin stepping down; a supervisor made a
    steward with a grid and orders) let this one disable the last admin, delete the new steward's grid on a
    phone edit, or disable them holding their orders."""
    lock_for_update(session, user)
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    guard = _removes_an_admin(user, changes)
    if guard:
        _lock_active_admins(session)
    if "password" in changes:
        changes["password_hash"] = hash_password(changes.pop("password"))
    if "password_hash" in changes or (user.active and changes.get("active") is False):
        # Every token signed in before is refused from now on (`api.deps.authenticate`): a lost handheld's
        # token ends with a new password, and does not come back when the account is enabled again.
        changes["token_epoch"] = user.token_epoch + 1
    leaving = user.role == Role.steward and user.active and (
        changes.get("role", user.role) != Role.steward or not changes.get("active", True))
    if leaving:
        # Their open orders go back to the office's queue, in this transaction (before anything else is
        # written: the release takes the change sequence first, as pushes do).
        released = work_orders.release_all(session=session, actor=actor, steward=user,
                                           note="管家账号已停用" if not changes.get("active", True) else "不再是管家")
        log.info("user %s left the stewards: %d open work orders back to new", user.id, released)
    if changes.get("role", user.role) != Role.steward:
        session.exec(delete(GridBuilding).where(col(GridBuilding.user_id) == user.id))
    user.sqlmodel_update(changes)
    session.add(user)
    if guard:
        # Counted after the change is written, in the same transaction, right before the commit.
        session.flush()
        if _count_active_admins(session) == 0:
            session.rollback()
            raise Conflict("This is the last active admin: make another user an admin first.", code="last_admin")
    session.commit()
    return user


def list_users(*, session: Session, page: Page, role: Role | None = None) -> tuple[list[User], int]:
    """Users by user name."""
    stmt = select(User)
    if role:
        stmt = stmt.where(User.role == role)
    return access.paged(session, stmt, page, User.username)


def get_grid(*, session: Session, user: User) -> list[uuid.UUID]:
    """The building ids of a steward's grid."""
    stmt = select(GridBuilding.building_id).where(GridBuilding.user_id == user.id)
    return list(session.exec(stmt.order_by(col(GridBuilding.building_id))).all())


def set_grid(*, session: Session, user: User, building_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Replace a steward's grid with exactly these buildings. The user's row is locked before the grid is
    read: two replacements at once left the union of both (a building neither admin gave), and identical
    ones answered 409 on the second's inserts. The change sequence is taken first, as a sync push takes it
    (`lock_for_update`): the grid's rows are scope events, and a push holding the sequence while its new rows'
    foreign key waited on this user's row deadlocked with a change that locked the row first."""
    ids = _check_grid(session, user.role, building_ids)
    if user.role != Role.steward:
        raise Unprocessable("Only stewards have a grid.", code="grid_for_non_steward")
    lock_for_update(session, user)
    if user.role != Role.steward:  # given another role since it was read: a grid would wait for a comeback
        session.rollback()
        raise Unprocessable("Only stewards have a grid.", code="grid_for_non_steward")
    current = set(get_grid(session=session, user=user))
    wanted = set(ids)
    if current - wanted:
        session.exec(delete(GridBuilding).where(
            col(GridBuilding.user_id) == user.id, col(GridBuilding.building_id).in_(current - wanted)))
    session.add_all(GridBuilding(user_id=user.id, building_id=b) for b in wanted - current)
    session.commit()
    return get_grid(session=session, user=user)
