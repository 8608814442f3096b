"""Routes for visits and temperature readings."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from api.deps import CurrentUser, PageDep, SessionDep
from api.fieldwork import service
from api.fieldwork.models import (
    ReadingCreate,
    ReadingPublic,
    ReadingsPublic,
    VisitCreate,
    VisitPublic,
    VisitsPublic,
    VisitUpdate,
)

router = APIRouter(tags=["field work"])


@router.post("/visits", status_code=status.HTTP_201_CREATED, response_model=VisitPublic)
def create_visit(data: VisitCreate, session: SessionDep, user: CurrentUser):
    return service.create_visit(session=session, user=user, data=data)


@router.get("/visits", response_model=VisitsPublic)
def list_visits(session: SessionDep, user: CurrentUser, page: PageDep, household_id: uuid.UUID | None = None,
                work_order_id: uuid.UUID | None = None, steward_id: uuid.UUID | None = None):
    rows, count = service.list_visits(session=session, user=user, page=page, household_id=household_id,
                                      work_order_id=work_order_id, steward_id=steward_id)
    return {"data": rows, "count": count}


@router.get("/visits/{id}", response_model=VisitPublic)
def get_visit(id: uuid.UUID, session: SessionDep, user: CurrentUser):
    return service.get_visit(session=session, user=user, id=id)


@router.patch("/visits/{id}", response_model=VisitPublic)
def update_visit(id: uuid.UUID, data: VisitUpdate, session: SessionDep, user: CurrentUser):
    visit = service.get_visit(session=session, user=user, id=id)
    return service.update_visit(session=session, user=user, visit=visit, data=data)


@router.post("/readings", status_code=status.HTTP_201_CREATED, response_model=ReadingPublic)
def create_reading(data: ReadingCreate, session: SessionDep, user: CurrentUser):
    return service.create_reading(session=session, user=user, data=data)


@router.get("/readings", response_model=ReadingsPublic)
def list_readings(session: SessionDep, user: CurrentUser, page: PageDep, household_id: uuid.UUID | None = None):
    rows, count = service.list_readings(session=session, user=user, page=page, household_id=household_id)
    return {"data": rows, "count": count}
