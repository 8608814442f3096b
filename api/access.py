"""Who may see which rows: one set of SQL filters that every service and the sync feed share.

Admins and supervisors see the whole district. A steward sees the buildings of their grid, the
households in them, those households' work orders, visits, readings and notes, plus any work order
assigned to them. Rows outside a caller's scope answer 404, never 403, so ids do not leak.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, exists, func, or_, true
from sqlmodel import Session, SQLModel, col, select

from api.deps import Page
from api.errors import NotFound
from api.fieldwork.models import Reading, Visit
from api.network.models import Household
from api.users.models import GridBuilding, Role, User
from api.work_orders.models import WorkOrder

T = TypeVar("T", bound=SQLModel)


def is_office(user: User) -> bool:
    """Admins and supervisors work district-wide."""
    return user.role in (Role.admin, Role.supervisor)


def grid_buildings(user: User) -> Any:
    """The ids of the buildings in the user's grid, as a subquery."""
    return select(GridBuilding.building_id).where(GridBuilding.user_id == user.id)


def building_clause(user: User, column: Any) -> ColumnElement[bool]:
    """Rows whose building `column` the user may see."""
    return true() if is_office(user) else col(column).in_(grid_buildings(user))


def grid_households(user: User) -> Any:
    """The ids of the households in the user's grid, as a subquery."""
    return select(Household.id).where(col(Household.building_id).in_(grid_buildings(user)))


def household_clause(user: User, column: Any) -> ColumnElement[bool]:
    """Rows whose household `column` the user may see (through the grid)."""
    if is_office(user):
        return true()
    return col(column).in_(grid_households(user))


def household_row_clause(user: User, column: Any) -> ColumnElement[bool]:
    """The test of `household_clause`, row by row: each row's household is looked up with its building in
    the grid (two index probes), instead of the grid's whole household set being built first. Cheaper for a
    few rows (a short sync delta: 5,000 households' ids are ~1 ms), far dearer for many."""
    if is_office(user):
        return true()
    return exists().where(col(Household.id) == column, col(GridBuilding.building_id) == col(Household.building_id),
                          col(GridBuilding.user_id) == user.id)


def work_order_clause(user: User) -> ColumnElement[bool]:
    """Work orders the user may see: in the grid, or assigned to them."""
    if is_office(user):
        return true()
    return or_(col(WorkOrder.assignee_id) == user.id, household_clause(user, WorkOrder.household_id))


def visit_clause(user: User) -> ColumnElement[bool]:
    """Visits the user may see: at households of the grid, or made by them (for an order they cover)."""
    if is_office(user):
        return true()
    return or_(household_clause(user, Visit.household_id), col(Visit.steward_id) == user.id)


def visit_attach_clause(user: User) -> ColumnElement[bool]:
    """Visits the user may add new readings and notes to: at households of the grid, or made by them for a
    work order they still cover. (They keep reading and completing their own visits after the order went to
    someone else, but no longer write new rows about a household outside their grid through them.)"""
    if is_office(user):
        return true()
    covered = select(WorkOrder.id).where(work_order_clause(user))
    return or_(household_clause(user, Visit.household_id),
               and_(col(Visit.steward_id) == user.id, col(Visit.work_order_id).in_(covered)))


def reading_clause(user: User) -> ColumnElement[bool]:
    """Readings the user may see: at households of the grid, or taken by them."""
    if is_office(user):
        return true()
    return or_(household_clause(user, Reading.household_id), col(Reading.taken_by_id) == user.id)


def get_visible(session: Session, model: type[T], id: uuid.UUID, clause: ColumnElement[bool],
                *, what: str) -> T:
    """The row with this id if the clause lets the caller see it, else `NotFound`."""
    row = session.exec(select(model).where(model.id == id, clause)).first()  # type: ignore[attr-defined]
    if row is None:
        raise NotFound(f"No {what} with id {id} (or it is outside your grid).")
    return row


def paged(session: Session, stmt: Any, page: Page, *order_by: Any) -> tuple[list[Any], int]:
    """One page of a select, plus the total count of matching rows."""
    count = session.exec(select(func.count()).select_from(stmt.order_by(None).subquery())).one()
    rows = session.exec(stmt.order_by(*order_by).offset(page.offset).limit(page.limit)).all()
    return list(rows), int(count)
