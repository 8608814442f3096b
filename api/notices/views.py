"""Routes for resident notices."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, status

from api.deps import CurrentUser, OfficeUser, PageDep, SessionDep, SettingsDep
from api.notices import service
from api.notices.models import NoticeCreate, NoticeDeliveriesPublic, NoticeMessages, NoticePublic, NoticesPublic
from api.proactive.models import DeliveryStatus

router = APIRouter(prefix="/notices", tags=["notices"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=NoticePublic)
def create_notice(data: NoticeCreate, session: SessionDep, settings: SettingsDep, user: OfficeUser):
    return service.create(session=session, settings=settings, user=user, data=data)


@router.get("", response_model=NoticesPublic)
def list_notices(session: SessionDep, _: OfficeUser, page: PageDep, building_id: uuid.UUID | None = None,
                 station_id: uuid.UUID | None = None):
    rows, count = service.list_notices(session=session, page=page, building_id=building_id, station_id=station_id)
    return {"data": rows, "count": count}


@router.get("/{id}", response_model=NoticePublic)
def get_notice(id: uuid.UUID, session: SessionDep, user: CurrentUser):
    return service.get(session=session, user=user, id=id)


@router.get("/{id}/messages", response_model=NoticeMessages)
def notice_messages(id: uuid.UUID, session: SessionDep, settings: SettingsDep, user: OfficeUser, page: PageDep):
    """The SMS each household would receive, by address, a page at a time (`count`: all of them)."""
    notice = service.get(session=session, user=user, id=id)
    data, count = service.messages_page(session=session, settings=settings, notice=notice, page=page)
    return {"notice_id": notice.id, "data": data, "count": count}


@router.post("/{id}/send", response_model=NoticePublic)
def send_notice(id: uuid.UUID, request: Request, session: SessionDep, settings: SettingsDep, user: OfficeUser,
                resend: bool = False):
    notice = service.get(session=session, user=user, id=id)
    return service.send(session=session, settings=settings, sender=request.app.state.sms_sender, notice=notice,
                        resend=resend)


@router.get("/{id}/deliveries", response_model=NoticeDeliveriesPublic)
def notice_deliveries(id: uuid.UUID, session: SessionDep, user: OfficeUser, page: PageDep,
                      status: DeliveryStatus | None = None):
    """Who was texted, who was not and why (`failed` with the gateway's reason; retried by the evaluation run)."""
    notice = service.get(session=session, user=user, id=id)
    rows, count = service.list_deliveries(session=session, page=page, notice=notice, status=status)
    return {"data": rows, "count": count}
