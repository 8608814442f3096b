"""Builders shared by the proactive tests: a season calendar around now, campaigns, complaints."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session

from api.db import utcnow
from api.network.models import Station
from api.proactive.models import Campaign, CampaignKind, SeasonCalendar
from tests.utils.factories import World

API = "/api/v1/proactive"
SEASON = "2026-2027"


def assert_error(r: Any, status: int, code: str) -> None:
    """The one error shape, with the expected status and code."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"detail"} and body["detail"]["code"] == code and body["detail"]["message"], body


def make_calendar(session: Session, station: Station, *, in_season: bool = True, season: str = SEASON,
                  now: datetime | None = None) -> SeasonCalendar:
    now = now or utcnow()
    start = now - timedelta(days=10) if in_season else now + timedelta(days=30)
    calendar = SeasonCalendar(station_id=station.id, season=season, water_fill_start=start - timedelta(days=5),
                              water_fill_end=start - timedelta(days=5, hours=-8),
                              pressure_test_at=start - timedelta(days=3), heating_start_at=start,
                              heating_end_at=start + timedelta(days=120))
    session.add(calendar)
    session.commit()
    return calendar


def calendar_body(fill: str = "2026-11-01T08:00:00+08:00") -> dict[str, str]:
    return {"water_fill_start": fill, "water_fill_end": "2026-11-01T17:00:00+08:00",
            "pressure_test_at": "2026-11-05T09:00:00+08:00", "heating_start_at": "2026-11-15T00:00:00+08:00",
            "heating_end_at": "2027-03-15T00:00:00+08:00"}


def create_campaign(client: TestClient, world: World, kind: CampaignKind = CampaignKind.water_fill,
                    **body: Any) -> dict[str, Any]:
    """PUT the station's calendar (idempotent) and POST a campaign as the supervisor."""
    h = world.headers(world.supervisor)
    r = client.put(f"{API}/stations/{world.station.id}/calendars/{SEASON}", json=calendar_body(), headers=h)
    assert r.status_code == 200, r.text
    r = client.post(f"{API}/campaigns", json={"station_id": str(world.station.id), "season": SEASON,
                                              "kind": kind.value} | body, headers=h)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


def reread(session: Session, campaign_id: Any) -> Campaign:
    session.expire_all()
    row = session.get(Campaign, campaign_id)
    assert row is not None
    return row
