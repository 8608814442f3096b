"""Routes of the proactive service, under `/api/v1/proactive`."""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Path, Query, Request, status

from api.deps import CurrentUser, OfficeUser, PageDep, SessionDep, SettingsDep
from api.proactive import campaigns, service
from api.proactive.models import (
    SEASON_PATTERN,
    BreachesPublic,
    CampaignCreate,
    CampaignPreview,
    CampaignPublic,
    CampaignsPublic,
    CampaignStatus,
    DeliveriesPublic,
    DeliveryStatus,
    ProactiveKind,
    ProactiveOrderPublic,
    ProactiveOrdersPublic,
    RunReport,
    SeasonCalendarPublic,
    SeasonCalendarPut,
    SeasonCalendarsPublic,
    Summary,
)
from api.proactive.worker import lifespan

router = APIRouter(prefix="/proactive", tags=["proactive"], lifespan=lifespan)
Season = Path(pattern=SEASON_PATTERN, description="Heating season, e.g. 2026-2027.")


@router.put("/stations/{station_id}/calendars/{season}", response_model=SeasonCalendarPublic)
def put_calendar(station_id: uuid.UUID, data: SeasonCalendarPut, session: SessionDep, settings: SettingsDep,
                 user: OfficeUser, season: str = Season):
    return campaigns.put_calendar(session=session, settings=settings, user=user, station_id=station_id,
                                  season=season, data=data)


@router.get("/calendars", response_model=SeasonCalendarsPublic)
def list_calendars(session: SessionDep, _: CurrentUser, page: PageDep, station_id: uuid.UUID | None = None,
                   season: str | None = Query(None, pattern=SEASON_PATTERN)):
    rows, count = campaigns.list_calendars(session=session, page=page, station_id=station_id, season=season)
    return {"data": rows, "count": count}


@router.post("/campaigns", status_code=status.HTTP_201_CREATED, response_model=CampaignPublic)
def create_campaign(data: CampaignCreate, session: SessionDep, settings: SettingsDep, user: OfficeUser):
    return campaigns.create_campaign(session=session, settings=settings, user=user, data=data)


@router.get("/campaigns", response_model=CampaignsPublic)
def list_campaigns(session: SessionDep, user: CurrentUser, page: PageDep, station_id: uuid.UUID | None = None,
                   season: str | None = Query(None, pattern=SEASON_PATTERN), status: CampaignStatus | None = None):
    rows, count = campaigns.list_campaigns(session=session, user=user, page=page, station_id=station_id,
                                           season=season, status=status)
    return {"data": rows, "count": count}


@router.get("/campaigns/{id}", response_model=CampaignPublic)
def get_campaign(id: uuid.UUID, session: SessionDep, user: CurrentUser):
    return campaigns.get_campaign(session=session, user=user, id=id)


@router.get("/campaigns/{id}/preview", response_model=CampaignPreview)
def preview_campaign(id: uuid.UUID, session: SessionDep, settings: SettingsDep, user: OfficeUser, page: PageDep):
    campaign = campaigns.get_campaign(session=session, user=user, id=id)
    data, count, totals = campaigns.preview(session=session, settings=settings, campaign=campaign, page=page)
    return {"campaign_id": campaign.id, "data": data, "count": count, **totals}


@router.post("/campaigns/{id}/send", response_model=CampaignPublic)
def send_campaign(id: uuid.UUID, request: Request, session: SessionDep, settings: SettingsDep, user: OfficeUser):
    campaign = campaigns.get_campaign(session=session, user=user, id=id)
    campaigns.send(session=session, settings=settings, sender=request.app.state.sms_sender, campaign=campaign)
    return campaign


@router.get("/campaigns/{id}/deliveries", response_model=DeliveriesPublic)
def list_deliveries(id: uuid.UUID, session: SessionDep, user: CurrentUser, page: PageDep,
                    status: DeliveryStatus | None = None):
    campaign = campaigns.get_campaign(session=session, user=user, id=id)
    rows, count = campaigns.list_deliveries(session=session, user=user, page=page, campaign=campaign, status=status)
    return {"data": rows, "count": count}


@router.post("/run", response_model=RunReport)
def run_evaluation(request: Request, session: SessionDep, settings: SettingsDep, _: OfficeUser):
    return service.run(session=session, settings=settings, sender=request.app.state.sms_sender)


@router.get("/orders", response_model=ProactiveOrdersPublic)
def list_orders(session: SessionDep, user: CurrentUser, page: PageDep, kind: ProactiveKind | None = None,
                open: bool | None = None):
    rows, count = service.list_orders(session=session, user=user, page=page, kind=kind, open=open)
    return {"data": [service.public(session, r, user) for r in rows], "count": count}


@router.get("/orders/{id}", response_model=ProactiveOrderPublic)
def get_order(id: uuid.UUID, session: SessionDep, user: CurrentUser):
    return service.public(session, service.get_order(session=session, user=user, id=id), user)


@router.get("/sla/breaches", response_model=BreachesPublic)
def list_breaches(session: SessionDep, user: CurrentUser, page: PageDep,
                  state: Literal["open", "resolved", "all"] = "open"):
    rows, count = service.breaches(session=session, user=user, page=page, state=state)
    return {"data": rows, "count": count}


@router.get("/summary", response_model=Summary)
def get_summary(session: SessionDep, user: CurrentUser, days: int = Query(30, ge=1, le=366)):
    return service.summary(session=session, user=user, days=days)
