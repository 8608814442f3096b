"""Routes for voice notes and call recordings."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from api.deps import CurrentUser, PageDep, SessionDep
from api.notes import service
from api.notes.models import NoteCreate, NotePublic, NotesPublic

router = APIRouter(prefix="/notes", tags=["notes"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=NotePublic)
def create_note(data: NoteCreate, session: SessionDep, user: CurrentUser):
    return service.create(session=session, user=user, data=data)


@router.get("", response_model=NotesPublic)
def list_notes(session: SessionDep, user: CurrentUser, page: PageDep, work_order_id: uuid.UUID | None = None,
               household_id: uuid.UUID | None = None):
    rows, count = service.list_notes(session=session, user=user, page=page, work_order_id=work_order_id,
                                     household_id=household_id)
    return {"data": rows, "count": count}


@router.get("/{id}", response_model=NotePublic)
def get_note(id: uuid.UUID, session: SessionDep, user: CurrentUser):
    return service.get(session=session, user=user, id=id)
