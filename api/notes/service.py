"""Voice notes and call recordings (metadata; the audio lives in the blob store by sha256)."""

from __future__ import annotations

import uuid

from sqlalchemy import ColumnElement, or_, true
from sqlmodel import Session, col, select

from api import access
from api.db import refuse_taken_id, write_turn
from api.deps import Page
from api.errors import Unprocessable
from api.fieldwork.service import visit_to_attach
from api.network.service import get_household
from api.notes.models import Note, NoteCreate
from api.users.models import User
from api.work_orders import service as work_orders
from api.work_orders.models import WorkOrder


def note_clause(user: User) -> ColumnElement[bool]:
    """Notes the user may see: their own, or linked to a household or work order they may see."""
    if access.is_office(user):
        return true()
    return or_(col(Note.owner_id) == user.id, access.household_clause(user, Note.household_id),
               col(Note.work_order_id).in_(select(WorkOrder.id).where(access.work_order_clause(user))))


def create(*, session: Session, user: User, data: NoteCreate) -> Note:
    """Register a recording owned by the caller; links must be rows the caller may see."""
    # Every link names the same household: the first one fixes it for the others (also when
    # `household_id` itself is left out, a visit and a work order must agree).
    household_id = data.household_id
    write_turn(session)  # as for visits: the checks see every reassignment committed before the write
    if household_id is not None and data.work_order_id is None and data.visit_id is None:
        # Named with a visit or an order, the household need only be theirs (checked below): a steward covering
        # an order outside the grid notes its visit as a reading of it may be recorded.
        get_household(session=session, user=user, id=household_id)
    if data.work_order_id is not None:
        order = work_orders.get(session=session, user=user, id=data.work_order_id)
        if household_id is not None and order.household_id != household_id:
            raise Unprocessable("The work order belongs to another household.", code="household_mismatch")
        household_id = order.household_id
    if data.visit_id is not None:
        visit = visit_to_attach(session=session, user=user, id=data.visit_id)
        if household_id is not None and visit.household_id != household_id:
            what = "household" if data.household_id is not None else "household than the work order"
            raise Unprocessable(f"The visit belongs to another {what}.", code="household_mismatch")
        household_id = visit.household_id
    refuse_taken_id(session, Note, data.id, "note", user=user)  # after the scope checks (visits)
    # The household a link names is stored too: lists by household, the grid's scope and sync go by it.
    linked = {"household_id": household_id} if household_id is not None else {}
    note = Note.model_validate(data.model_dump(exclude_none=True) | {"owner_id": user.id} | linked)
    session.add(note)
    session.commit()
    return note


def get(*, session: Session, user: User, id: uuid.UUID) -> Note:
    """A note the user may see."""
    return access.get_visible(session, Note, id, note_clause(user), what="note")


def list_notes(*, session: Session, user: User, page: Page, work_order_id: uuid.UUID | None = None,
               household_id: uuid.UUID | None = None) -> tuple[list[Note], int]:
    """Notes the user may see, newest first."""
    stmt = select(Note).where(note_clause(user))
    if work_order_id:
        stmt = stmt.where(Note.work_order_id == work_order_id)
    if household_id:
        stmt = stmt.where(Note.household_id == household_id)
    return access.paged(session, stmt, page, col(Note.recorded_at).desc(), Note.id)
