"""Routes for work orders: intake, assignment, status changes, timeline."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, status

from api.deps import CurrentUser, OfficeUser, PageDep, SessionDep, SettingsDep
from api.work_orders import service
from api.work_orders.models import (
    AssignRequest,
    Category,
    Priority,
    Source,
    Status,
    TransitionRequest,
    WorkOrderCreate,
    WorkOrderEventPublic,
    WorkOrderPublic,
    WorkOrdersPublic,
    WorkOrderUpdate,
)

router = APIRouter(prefix="/work-orders", tags=["work orders"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WorkOrderPublic)
def create_work_order(data: WorkOrderCreate, session: SessionDep, settings: SettingsDep, user: CurrentUser):
    return service.create(session=session, settings=settings, user=user, data=data)


@router.get("", response_model=WorkOrdersPublic)
def list_work_orders(session: SessionDep, user: CurrentUser, page: PageDep,
                     status: list[Status] | None = Query(None), category: Category | None = None,
                     priority: Priority | None = None, source: Source | None = None,
                     assignee_id: uuid.UUID | None = None, household_id: uuid.UUID | None = None,
                     building_id: uuid.UUID | None = None, overdue: bool | None = None):
    rows, count = service.list_orders(session=session, user=user, page=page, status=status, category=category,
                                      priority=priority, source=source, assignee_id=assignee_id,
                                      household_id=household_id, building_id=building_id, overdue=overdue)
    return {"data": rows, "count": count}


@router.get("/{id}", response_model=WorkOrderPublic)
def get_work_order(id: uuid.UUID, session: SessionDep, user: CurrentUser):
    return service.get(session=session, user=user, id=id)


@router.patch("/{id}", response_model=WorkOrderPublic)
def update_work_order(id: uuid.UUID, data: WorkOrderUpdate, session: SessionDep, settings: SettingsDep,
                      user: OfficeUser):
    order = service.get(session=session, user=user, id=id)
    return service.update(session=session, settings=settings, user=user, order=order, data=data)


@router.post("/{id}/assign", response_model=WorkOrderPublic)
def assign_work_order(id: uuid.UUID, data: AssignRequest, session: SessionDep, user: OfficeUser):
    order = service.get(session=session, user=user, id=id)
    return service.assign(session=session, user=user, order=order, assignee_id=data.assignee_id, note=data.note)


@router.post("/{id}/transitions", response_model=WorkOrderPublic)
def transition_work_order(id: uuid.UUID, data: TransitionRequest, session: SessionDep, user: CurrentUser):
    order = service.get(session=session, user=user, id=id)
    return service.transition(session=session, user=user, order=order, target=data.status, note=data.note,
                              base_version=data.base_version)


@router.get("/{id}/events", response_model=list[WorkOrderEventPublic])
def work_order_events(id: uuid.UUID, session: SessionDep, user: CurrentUser):
    order = service.get(session=session, user=user, id=id)
    return service.events(session=session, order=order)
