"""Builders shared by the proactive tests: a season calendar around now, campaigns, complaints."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient
from sqlmodel import Session

from api.db import utcnow
from api.network.models import Station
from api.proactive.models import Campaign, CampaignKind, SeasonCalendar
from tests.utils.factories import World

API = "/api/v1/proactive"
TZ = ZoneInfo("Asia/Shanghai")  # STEWARD_TIMEZONE in the tests


def local(days: int, hour: int, minute: int = 0) -> datetime:
    """`hour:minute` Beijing time, `days` days from today (the tests never depend on the calendar date)."""
    day = (utcnow().astimezone(TZ) + timedelta(days=days)).date()
    return datetime.combine(day, time(hour, minute), TZ)


def season_of(heating_start: datetime) -> str:
    """The season label a heating start belongs to (its heating starts between 1 July and 30 June)."""
    first = heating_start.astimezone(TZ).year - (heating_start.astimezone(TZ).month < 7)
    return f"{first}-{first + 1}"


def day_text(ts: datetime) -> str:
    """How the SMS writes a local time: 11月1日08:00."""
    return f"{ts.month}月{ts.day}日{ts:%H:%M}"


# The calendar of `calendar_body`: filling in a month, heating six weeks from now, under its own season.
FILL_START, FILL_END, PRESSURE_TEST = local(30, 8), local(30, 17), local(34, 9)
HEATING_START = local(44, 0)
SEASON = season_of(HEATING_START)
# Four months of heating, cut at the end of the season (30 June) when the tests run in spring.
HEATING_END = min(local(164, 0), datetime(int(SEASON[5:]), 6, 30, 23, tzinfo=TZ))


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


def calendar_body(fill: datetime = FILL_START, **over: datetime) -> dict[str, str]:
    """A season calendar's body: the module's dates, the water filling moved to start at `fill` (same length,
    the later steps kept unless they would come before it), any field given in `over`."""
    shift = fill - FILL_START
    dates = {"water_fill_start": fill, "water_fill_end": FILL_END + shift,
             "pressure_test_at": max(PRESSURE_TEST, FILL_END + shift), "heating_start_at": HEATING_START,
             "heating_end_at": HEATING_END} | over
    return {name: ts.isoformat() for name, ts in dates.items()}


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


def later_season(years: int = 1) -> tuple[str, dict[str, str]]:
    """Another season's label and a calendar body for it: `calendar_body`'s dates, `years` years later."""
    def shift(ts: datetime) -> datetime:
        try:
            return ts.replace(year=ts.year + years)
        except ValueError:  # 29 February
            return ts.replace(year=ts.year + years, day=28)

    body = {name: shift(datetime.fromisoformat(ts)).isoformat() for name, ts in calendar_body().items()}
    first = int(SEASON[:4]) + years
    return f"{first}-{first + 1}", body


class SlowGateway:
    """Takes a minute per SMS (the delivery clock moves on a minute each): what a backlog on a slow gateway does
    to a run that started at a fixed `now`. Records the local time of each SMS."""

    def __init__(self, start: datetime, offset: dict[str, timedelta]) -> None:
        self.start, self.offset, self.at = start, offset, []

    def send(self, phone: str, text: str) -> bool:
        self.at.append(self.start + self.offset["t"])
        self.offset["t"] += timedelta(minutes=1)
        return True
