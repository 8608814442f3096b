"""Visits and readings recorded by stewards on site."""

from __future__ import annotations

import uuid

from sqlmodel import Session, col, select

from api import access
from api.db import lock_for_update, refuse_taken_id, write_turn
from api.deps import Page
from api.errors import Forbidden, Unprocessable
from api.fieldwork.models import Reading, ReadingCreate, Visit, VisitCreate, VisitUpdate, check_visit_length
from api.network.service import get_household
from api.users.models import Role, User
from api.work_orders import service as work_orders


def _check_links(session: Session, user: User, household_id: uuid.UUID, work_order_id: uuid.UUID | None) -> None:
    # A steward covering an order outside their grid reaches its household through the order.
    if work_order_id is None:
        get_household(session=session, user=user, id=household_id)
        return
    order = work_orders.get(session=session, user=user, id=work_order_id)
    if order.household_id != household_id:
        raise Unprocessable("The work order belongs to another household.", code="household_mismatch")


def create_visit(*, session: Session, user: User, data: VisitCreate) -> Visit:
    """Record a steward's visit to a household of their grid (optionally for a work order)."""
    if user.role != Role.steward:
        raise Forbidden("Visits are recorded by the steward who made them.", code="role_required")
    if problem := check_visit_length(data.arrived_at, data.left_at):
        raise Unprocessable(problem, code="invalid_interval")
    write_turn(session)  # the checks below see every reassignment and grid change committed before the write
    _check_links(session, user, data.household_id, data.work_order_id)
    # After the scope checks: a 409 for an id taken outside the grid, where an unknown one got 404, told a
    # steward which ids exist there (docs/security.md).
    refuse_taken_id(session, Visit, data.id, "visit", user=user)
    visit = Visit.model_validate(data.model_dump(exclude_none=True) | {"steward_id": user.id})
    session.add(visit)
    session.commit()
    return visit


def get_visit(*, session: Session, user: User, id: uuid.UUID) -> Visit:
    """A visit the user may see."""
    return access.get_visible(session, Visit, id, access.visit_clause(user), what="visit")


def visit_to_attach(*, session: Session, user: User, id: uuid.UUID) -> Visit:
    """A visit the user may add readings and notes to (`access.visit_attach_clause`); 404 otherwise."""
    return access.get_visible(session, Visit, id, access.visit_attach_clause(user), what="visit")


def update_visit(*, session: Session, user: User, visit: Visit, data: VisitUpdate) -> Visit:
    """Complete a visit (left_at, temperature, actions, result); only its steward or the office may."""
    if user.role == Role.steward and visit.steward_id != user.id:
        raise Forbidden("Only the steward who made this visit can change it.", code="not_owner")
    lock_for_update(session, visit)  # re-read: the edit applies to the row as a push may just have left it
    changes = data.model_dump(exclude_unset=True)
    if problem := check_visit_length(visit.arrived_at, changes.get("left_at", visit.left_at)):
        raise Unprocessable(problem, code="invalid_interval")
    visit.sqlmodel_update(changes)
    session.add(visit)
    session.commit()
    return visit


def list_visits(*, session: Session, user: User, page: Page, household_id: uuid.UUID | None = None,
                work_order_id: uuid.UUID | None = None, steward_id: uuid.UUID | None = None
                ) -> tuple[list[Visit], int]:
    """Visits the user may see, newest first."""
    stmt = select(Visit).where(access.visit_clause(user))
    if household_id:
        stmt = stmt.where(Visit.household_id == household_id)
    if work_order_id:
        stmt = stmt.where(Visit.work_order_id == work_order_id)
    if steward_id:
        stmt = stmt.where(Visit.steward_id == steward_id)
    return access.paged(session, stmt, page, col(Visit.arrived_at).desc(), Visit.id)


def create_reading(*, session: Session, user: User, data: ReadingCreate) -> Reading:
    """Append an indoor temperature reading for a household the user may see."""
    write_turn(session)  # as for visits
    if data.visit_id is None:
        get_household(session=session, user=user, id=data.household_id)
    else:  # a reading taken during the user's own visit for an order they cover, possibly outside their grid
        visit = visit_to_attach(session=session, user=user, id=data.visit_id)
        if visit.household_id != data.household_id:
            raise Unprocessable("The visit belongs to another household.", code="household_mismatch")
    refuse_taken_id(session, Reading, data.id, "reading", user=user)  # after the scope checks (visits)
    reading = Reading.model_validate(data.model_dump(exclude_none=True) | {"taken_by_id": user.id})
    session.add(reading)
    session.commit()
    return reading


def list_readings(*, session: Session, user: User, page: Page, household_id: uuid.UUID | None = None
                  ) -> tuple[list[Reading], int]:
    """Readings the user may see, newest first."""
    stmt = select(Reading).where(access.reading_clause(user))
    if household_id:
        stmt = stmt.where(Reading.household_id == household_id)
    return access.paged(session, stmt, page, col(Reading.taken_at).desc(), Reading.id)
