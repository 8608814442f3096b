"""Routes for stations, buildings and households."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, status
from sqlmodel import SQLModel

from api.deps import CurrentUser, OfficeUser, PageDep, SessionDep
from api.network import service
from api.network.models import (
    BuildingCreate,
    BuildingPublic,
    BuildingUpdate,
    HeatingStatus,
    HouseholdCreate,
    HouseholdPublic,
    HouseholdUpdate,
    StationCreate,
    StationPublic,
    StationUpdate,
)

router = APIRouter(tags=["network"])


class StationsPublic(SQLModel):
    data: list[StationPublic]
    count: int


class BuildingsPublic(SQLModel):
    data: list[BuildingPublic]
    count: int


class HouseholdsPublic(SQLModel):
    data: list[HouseholdPublic]
    count: int


@router.post("/stations", status_code=status.HTTP_201_CREATED, response_model=StationPublic)
def create_station(data: StationCreate, session: SessionDep, _: OfficeUser):
    return service.create_station(session=session, data=data)


@router.get("/stations", response_model=StationsPublic)
def list_stations(session: SessionDep, _: CurrentUser, page: PageDep,
                  district: str | None = None):
    rows, count = service.list_stations(session=session, page=page, district=district)
    return {"data": rows, "count": count}


@router.get("/stations/{id}", response_model=StationPublic)
def get_station(id: uuid.UUID, session: SessionDep, _: CurrentUser):
    return service.get_station(session=session, id=id)


@router.patch("/stations/{id}", response_model=StationPublic)
def update_station(id: uuid.UUID, data: StationUpdate, session: SessionDep,
                   _: OfficeUser):
    station = service.get_station(session=session, id=id)
    return service.update_station(session=session, station=station, data=data)


@router.post("/buildings", status_code=status.HTTP_201_CREATED, response_model=BuildingPublic)
def create_building(data: BuildingCreate, session: SessionDep, _: OfficeUser):
    return service.create_building(session=session, data=data)


@router.get("/buildings", response_model=BuildingsPublic)
def list_buildings(session: SessionDep, user: CurrentUser, page: PageDep,
                   station_id: uuid.UUID | None = None, community: str | None = None):
    rows, count = service.list_buildings(session=session, user=user, page=page, station_id=station_id,
                                         community=community)
    return {"data": rows, "count": count}


@router.get("/buildings/{id}", response_model=BuildingPublic)
def get_building(id: uuid.UUID, session: SessionDep, user: CurrentUser):
    return service.get_building(session=session, user=user, id=id)


@router.patch("/buildings/{id}", response_model=BuildingPublic)
def update_building(id: uuid.UUID, data: BuildingUpdate, session: SessionDep,
                    user: OfficeUser):
    building = service.get_building(session=session, user=user, id=id)
    return service.update_building(session=session, building=building, data=data)


@router.post("/households", status_code=status.HTTP_201_CREATED, response_model=HouseholdPublic)
def create_household(data: HouseholdCreate, session: SessionDep,
                     _: OfficeUser):
    return service.create_household(session=session, data=data)


@router.get("/households", response_model=HouseholdsPublic)
def list_households(session: SessionDep, user: CurrentUser, page: PageDep,
                    building_id: uuid.UUID | None = None, sensitive: bool | None = None,
                    heating_status: HeatingStatus | None = None,
                    q: str | None = Query(None, max_length=50)):
    rows, count = service.list_households(session=session, user=user, page=page, building_id=building_id,
                                          sensitive=sensitive, heating_status=heating_status, q=q)
    return {"data": rows, "count": count}


@router.get("/households/{id}", response_model=HouseholdPublic)
def get_household(id: uuid.UUID, session: SessionDep, user: CurrentUser):
    return service.get_household(session=session, user=user, id=id)


@router.patch("/households/{id}", response_model=HouseholdPublic)
def update_household(id: uuid.UUID, data: HouseholdUpdate, session: SessionDep,
                     user: OfficeUser):
    household = service.get_household(session=session, user=user, id=id)
    return service.update_household(session=session, household=household, data=data)
