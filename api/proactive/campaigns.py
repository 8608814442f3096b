"""Season calendars and notice campaigns: render each household's SMS, send once, record every delivery."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, or_
from sqlmodel import Session, col, func, select

from api import access
from api.db import new_id, refuse_taken_id, utcnow, write_turn
from api.deps import Page
from api.errors import Conflict, NotFound, Unprocessable
from api.network.models import Building, HeatingStatus, Household, Station, address_text
from api.network.service import get_station
from api.notices import deliveries
from api.notices.models import NoticeBase
from api.notices.sms import SmsSender
from api.proactive.models import (
    Campaign,
    CampaignCreate,
    CampaignDelivery,
    CampaignKind,
    CampaignStatus,
    DeliveryStatus,
    PreviewMessage,
    SeasonCalendar,
    SeasonCalendarPut,
)
from api.settings import Settings
from api.users.models import GridBuilding, Role, User

log = logging.getLogger(__name__)

TITLES = {CampaignKind.water_fill: "供暖季前注水通知", CampaignKind.pressure_test: "管网打压试验通知",
          CampaignKind.heating_start: "供暖开始通知"}
# What residents should do, by kind: filling repeats the notices' wording; heating start is about bleeding.
BLEED = {CampaignKind.water_fill: str(NoticeBase.model_fields["bleed_instructions"].default),
         CampaignKind.pressure_test: "打压期间请勿打开暖气片放风阀。",
         CampaignKind.heating_start: "请用排气钥匙逆时针拧开暖气片排气阀，见水后关闭；仍不热请联系供暖管家。"}
# What a suspended (报停) home is told before filling and pressure tests (as `api.notices.service.render_text`).
SUSPENDED_ADVICE = "请确认户内供暖阀门保持关闭并家中留人，发现漏水请立即拨打服务热线。"
# Campaigns that skip suspended homes: the heating start does not concern them.
SKIPS_SUSPENDED = frozenset({CampaignKind.heating_start})
SEND_LEASE = timedelta(minutes=10)


# --- calendars ---------------------------------------------------------------------------------------------


def put_calendar(*, session: Session, settings: Settings, user: User, station_id: uuid.UUID, season: str,
                 data: SeasonCalendarPut) -> SeasonCalendar:
    """Create or replace a station's calendar for a season (its heating within the season it is filed under)."""
    get_station(session=session, id=station_id)
    _check_season(season)
    _check_heating_in_season(season, data, ZoneInfo(settings.timezone))
    # The change sequence before any row lock, as every writer of synced rows takes them (the drafts' new dates
    # take it at the flush): a send claiming a draft, which takes it first, deadlocked with this on PostgreSQL.
    write_turn(session)
    row = session.exec(select(SeasonCalendar).where(SeasonCalendar.station_id == station_id,
                                                    SeasonCalendar.season == season).with_for_update()).first()
    if row is None:
        row = SeasonCalendar(station_id=station_id, season=season, **data.model_dump())
    else:
        row.sqlmodel_update(data.model_dump())
        row.updated_at = utcnow()
    row.updated_by_id = user.id
    session.add(row)
    # A campaign not sent yet announces the calendar as it is now (the office drafts, checks the preview,
    # corrects the calendar, sends); one already sent keeps the dates its residents were told. The drafts are
    # locked as they are read: a send claiming one in between texted the old dates, and this commit then wrote
    # the new ones over the campaign it was sending (a claim now waits, and its send reads the new dates).
    for campaign in session.exec(select(Campaign).where(Campaign.station_id == station_id, Campaign.season == season,
                                                        Campaign.status == CampaignStatus.draft)
                                 .with_for_update()):
        campaign.event_start, campaign.event_end = _event_dates(row, campaign.kind)
        session.add(campaign)
    session.commit()
    return row


def _event_dates(calendar: SeasonCalendar, kind: CampaignKind) -> tuple[datetime, datetime | None]:
    """What a campaign of this kind announces, from the station's calendar."""
    return {CampaignKind.water_fill: (calendar.water_fill_start, calendar.water_fill_end),
            CampaignKind.pressure_test: (calendar.pressure_test_at, None),
            CampaignKind.heating_start: (calendar.heating_start_at, None)}[kind]


def _check_season(season: str) -> None:
    first, _, second = season.partition("-")
    if not (len(season) == 9 and first.isdigit() and second.isdigit() and int(second) == int(first) + 1
            and 2000 <= int(first) < 2100):
        raise Unprocessable(f"Season {season!r} is not of the form 2026-2027 (two consecutive years).",
                            code="invalid_season")


def _check_heating_in_season(season: str, data: SeasonCalendarPut, tz: ZoneInfo) -> None:
    """The heating of season `2026-2027` starts and ends between 1 July 2026 and 30 June 2027 (local dates):
    a calendar filed under another season's label announced its dates twice, once per label."""
    first = int(season[:4])
    lo, hi = date(first, 7, 1), date(first + 1, 6, 30)
    for name, ts in (("heating_start_at", data.heating_start_at), ("heating_end_at", data.heating_end_at)):
        if not lo <= ts.astimezone(tz).date() <= hi:
            raise Unprocessable(f"{name} ({ts.astimezone(tz):%Y-%m-%d}) is outside season {season}, which runs "
                                f"from {lo} to {hi}; file the calendar under its own season.",
                                code="season_mismatch")


def list_calendars(*, session: Session, page: Page, station_id: uuid.UUID | None = None,
                   season: str | None = None) -> tuple[list[SeasonCalendar], int]:
    """Calendars, newest season first."""
    stmt = select(SeasonCalendar)
    if station_id:
        stmt = stmt.where(SeasonCalendar.station_id == station_id)
    if season:
        stmt = stmt.where(SeasonCalendar.season == season)
    return access.paged(session, stmt, page, col(SeasonCalendar.season).desc(), SeasonCalendar.station_id)


def in_season_stations(session: Session, now: datetime) -> list[uuid.UUID]:
    """Stations whose heating season (by their calendar) is running now."""
    stmt = select(SeasonCalendar.station_id).where(col(SeasonCalendar.heating_start_at) <= now,
                                                   col(SeasonCalendar.heating_end_at) > now)
    return list(set(session.exec(stmt).all()))


# --- campaigns ---------------------------------------------------------------------------------------------


def _event_over(kind: CampaignKind, start: datetime, end: datetime | None, now: datetime) -> bool:
    """Whether what a campaign announces is over: the end of the filling, the pressure test, the heating start.
    Telling residents of it then (the SMS gives no year) sends them wrong dates."""
    return (end if kind == CampaignKind.water_fill and end is not None else start) <= now


def _refuse_past(kind: CampaignKind, start: datetime, end: datetime | None, now: datetime, tz: ZoneInfo) -> None:
    if not _event_over(kind, start, end, now):
        return
    if kind == CampaignKind.water_fill:
        what, ts, code = "water filling of this calendar ended", end or start, "fill_window_past"
    else:
        what, ts, code = f"{kind.value.replace('_', ' ')} of this calendar was", start, "event_past"
    raise Unprocessable(f"The {what} {ts.astimezone(tz):%Y-%m-%d %H:%M} (local time); a campaign announces one "
                        "still to come: correct the season calendar first.", code=code)


def campaign_clause(user: User) -> ColumnElement[bool]:
    """Campaigns a user may see: all for the office; a steward's, of the stations feeding their grid."""
    if access.is_office(user):
        return access.building_clause(user, Campaign.station_id)
    stations = select(Building.station_id).where(col(Building.id).in_(access.grid_buildings(user)))
    return col(Campaign.station_id).in_(stations)


def create_campaign(*, session: Session, settings: Settings, user: User, data: CampaignCreate) -> Campaign:
    """Draft a campaign for a station's season; its dates come from the station's calendar."""
    refuse_taken_id(session, Campaign, data.id, "campaign")
    get_station(session=session, id=data.station_id)
    _check_season(data.season)
    # The calendar is locked as it is read: a correction committing between this read and the insert below
    # moved the drafts it saw, not this one, which then announced dates the calendar no longer had. Now the
    # correction waits for this commit and moves this draft too (or this waits, and reads its dates).
    write_turn(session)  # before the calendar's lock, as `put_calendar` (the insert takes it at the flush)
    calendar = session.exec(select(SeasonCalendar).where(SeasonCalendar.station_id == data.station_id,
                                                         SeasonCalendar.season == data.season)
                            .with_for_update()).first()
    if calendar is None:
        raise Unprocessable(f"Station {data.station_id} has no calendar for {data.season}; PUT "
                            f"/proactive/stations/{data.station_id}/calendars/{data.season} first.",
                            code="no_calendar")
    existing = session.exec(select(Campaign.id).where(Campaign.station_id == data.station_id,
                                                      Campaign.season == data.season,
                                                      Campaign.kind == data.kind)).first()
    if existing is not None:
        raise Conflict(f"Campaign {existing} already covers {data.kind.value} of {data.season} for this station; "
                       "send that one again to reach households it missed.", code="already_exists")
    start, end = _event_dates(calendar, data.kind)
    _refuse_past(data.kind, start, end, utcnow(), ZoneInfo(settings.timezone))
    campaign = Campaign(id=data.id or new_id(), station_id=data.station_id, season=data.season,
                        kind=data.kind, title=data.title or TITLES[data.kind],
                        bleed_instructions=data.bleed_instructions or BLEED[data.kind],
                        service_phone=data.service_phone or settings.service_phone, event_start=start,
                        event_end=end, created_by_id=user.id)
    session.add(campaign)
    session.commit()
    return campaign


def get_campaign(*, session: Session, user: User, id: uuid.UUID) -> Campaign:
    """A campaign the user may see."""
    return access.get_visible(session, Campaign, id, campaign_clause(user), what="campaign")


def list_campaigns(*, session: Session, user: User, page: Page, station_id: uuid.UUID | None = None,
                   season: str | None = None, status: CampaignStatus | None = None) -> tuple[list[Campaign], int]:
    """Campaigns the user may see, newest first."""
    stmt = select(Campaign).where(campaign_clause(user))
    if station_id:
        stmt = stmt.where(Campaign.station_id == station_id)
    if season:
        stmt = stmt.where(Campaign.season == season)
    if status:
        stmt = stmt.where(Campaign.status == status)
    return access.paged(session, stmt, page, col(Campaign.created_at).desc(), Campaign.id)


def list_deliveries(*, session: Session, user: User, page: Page, campaign: Campaign,
                    status: DeliveryStatus | None = None) -> tuple[list[CampaignDelivery], int]:
    """A campaign's deliveries to households the user may see."""
    stmt = select(CampaignDelivery).where(CampaignDelivery.campaign_id == campaign.id,
                                          access.household_clause(user, CampaignDelivery.household_id))
    if status:
        stmt = stmt.where(CampaignDelivery.status == status)
    return access.paged(session, stmt, page, col(CampaignDelivery.household_id))


# --- rendering -----------------------------------------------------------------------------------------------


def _when(ts: datetime, tz: ZoneInfo) -> str:
    local = ts.astimezone(tz)
    return f"{local.month}月{local.day}日{local:%H:%M}"


def render(campaign: Campaign, station: Station, household: Household, building: Building, steward: str,
           tz: ZoneInfo) -> str:
    """The SMS a resident receives: date, what to do, their steward's name and the service number. A suspended
    (报停) home gets the notices' wording for filling and pressure tests: keep its valves closed, stay home."""
    who = f"{household.resident_name}住户" if household.resident_name else "住户"
    where = address_text(building, household)
    start = _when(campaign.event_start, tz)
    suspended = household.heating_status == HeatingStatus.suspended
    if campaign.kind == CampaignKind.water_fill:
        end = _when(campaign.event_end, tz) if campaign.event_end else ""
        body = f"{station.name}供热管网将于{start}至{end}注水。{campaign.bleed_instructions}"
        if suspended:
            body = f"您家已办理停暖，{station.name}供热管网将于{start}至{end}注水。{SUSPENDED_ADVICE}"
    elif campaign.kind == CampaignKind.pressure_test and suspended:
        body = f"您家已办理停暖，{station.name}供热管网将于{start}打压试验。{SUSPENDED_ADVICE}"
    elif campaign.kind == CampaignKind.pressure_test:
        body = (f"{station.name}供热管网将于{start}打压试验，请家中留人，发现漏水请立即关闭进户阀门。"
                f"{campaign.bleed_instructions}")
    else:
        body = f"{station.name}将于{start}正式供暖。如暖气片上热下凉，{campaign.bleed_instructions}"
    # Without a steward's name (none for the building, or a steward with no full name), no placeholder and no
    # login name: "（待分配）" and "steward6" went to residents.
    sign = (f"您的供暖管家{steward}，服务热线{campaign.service_phone}。" if steward
            else f"如有问题请拨打服务热线{campaign.service_phone}。")
    return f"【{campaign.title}】尊敬的{who}（{where}）：{body}{sign}"


def _stewards_by_building(session: Session, station_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """Each building's steward name: the full name of the first active steward of its grid (by username) who has
    one."""
    stmt = (select(GridBuilding.building_id, User.full_name)
            .join(User, col(User.id) == col(GridBuilding.user_id))
            .join(Building, col(Building.id) == col(GridBuilding.building_id))
            .where(Building.station_id == station_id, User.role == Role.steward, col(User.active).is_(True))
            .order_by(col(User.username)))
    out: dict[uuid.UUID, str] = {}
    for building_id, full_name in session.exec(stmt).all():
        if full_name.strip():  # a login name is no name for residents
            out.setdefault(building_id, full_name.strip())
    return out


def _skip_reason(campaign: Campaign, household: Household) -> str | None:
    if campaign.kind in SKIPS_SUSPENDED and household.heating_status == HeatingStatus.suspended:
        return "suspended"
    if not household.phone:
        return "no_phone"
    return None


def _targets(session: Session, settings: Settings, campaign: Campaign, page: Page | None = None
             ) -> tuple[list[PreviewMessage], int]:
    """Every household of the station's buildings with its text (or why it is skipped), in address order."""
    station = session.get(Station, campaign.station_id)
    if station is None:
        raise NotFound(f"No station with id {campaign.station_id}.")
    tz = ZoneInfo(settings.timezone)
    stewards = _stewards_by_building(session, campaign.station_id)
    stmt = (select(Household, Building).join(Building, col(Household.building_id) == col(Building.id))
            .where(Building.station_id == campaign.station_id)
            .order_by(col(Building.community), col(Building.number), col(Household.unit), col(Household.room)))
    total = None
    if page is not None:
        total = int(session.exec(select(func.count()).select_from(stmt.order_by(None).subquery())).one())
        stmt = stmt.offset(page.offset).limit(page.limit)
    out = []
    for household, building in session.exec(stmt).all():
        text = render(campaign, station, household, building, stewards.get(building.id, ""), tz)
        out.append(PreviewMessage(household_id=household.id, phone=household.phone, text=text,
                                  skip_reason=_skip_reason(campaign, household)))
    return out, len(out) if total is None else total


def preview(*, session: Session, settings: Settings, campaign: Campaign, page: Page
            ) -> tuple[list[PreviewMessage], int, dict[str, int]]:
    """One page of the texts the campaign would send, the total, and how many it would send or skip."""
    messages, total = _targets(session, settings, campaign, page)
    stmt = (select(Household.heating_status, Household.phone).join(Building, col(Household.building_id) ==
                                                                   col(Building.id))
            .where(Building.station_id == campaign.station_id))
    skips_suspended = campaign.kind in SKIPS_SUSPENDED
    skip = sum(1 for status, phone in session.exec(stmt).all()
               if (skips_suspended and status == HeatingStatus.suspended) or not phone)
    return messages, total, {"will_send": total - skip, "will_skip": skip}


# --- sending -------------------------------------------------------------------------------------------------


def _claim(session: Session, campaign: Campaign, now: datetime) -> datetime:
    """Hold the campaign for this send: a lease other senders respect, taken in one conditional UPDATE (two
    sends that both read a free lease used to both take it). Returns the lease's end."""
    until = now + SEND_LEASE
    for _ in range(3):  # the row may move under us (a recount) without anyone holding it
        current = session.get(Campaign, campaign.id, populate_existing=True)  # the same object, read again
        if current is None:
            raise NotFound(f"No campaign with id {campaign.id} (it was deleted meanwhile).")
        if current.sending_until is not None and current.sending_until > now:
            break
        # `sending` from the claim on, committed before the first message: a draft's dates follow the calendar,
        # and the periodic run retries only campaigns that are sending (a process killed during the first
        # send left a draft that nothing retried, and whose later messages took a changed calendar's dates).
        if deliveries.write_if(session, campaign, lambda t: or_(t.c.sending_until.is_(None), t.c.sending_until <= now),
                               sending_until=until, status=CampaignStatus.sending):
            return until
    session.rollback()
    raise Conflict("This campaign is being sent right now; try again in a few minutes.", code="send_in_progress")


def _renew(session: Session, campaign: Campaign, lease: datetime, now: datetime) -> datetime | None:
    """Extend our lease once half of it is spent (a send may take longer than one lease); None if another
    sender holds the campaign now: it will send what is left."""
    if now < lease - SEND_LEASE / 2:
        return lease
    until = now + SEND_LEASE
    if deliveries.write_if(session, campaign, lambda t: t.c.sending_until == lease, sending_until=until):
        return until
    log.warning("campaign %s: lost its send lease; another sender goes on", campaign.id)
    return None


def _plan(session: Session, settings: Settings, campaign: Campaign) -> None:
    """Add a delivery for every household that has none; re-check the ones not sent (heating resumed or
    suspended, phone gained, lost or corrected)."""
    existing = {d.household_id: d for d in session.exec(
        select(CampaignDelivery).where(CampaignDelivery.campaign_id == campaign.id)).all()}
    messages, _ = _targets(session, settings, campaign)
    # A household no longer targeted (its building moved to another station) is not retried with the dates of
    # a station that no longer feeds it.
    targeted = {m.household_id for m in messages}
    deliveries.give_up(session, settings, [d for h, d in existing.items() if h not in targeted], utcnow(),
                       "not_targeted", final_too=True)  # a resend would text a final failure too
    for m in messages:
        row = existing.get(m.household_id)
        status = DeliveryStatus.skipped if m.skip_reason else DeliveryStatus.queued
        if row is None:
            session.add(CampaignDelivery(campaign_id=campaign.id, household_id=m.household_id, phone=m.phone,
                                         text=m.text, status=status, reason=m.skip_reason))
            continue
        if row.status == DeliveryStatus.sent:
            continue  # never again
        changes = deliveries.replan(row, m.phone, m.text, m.skip_reason)
        if changes:
            row.sqlmodel_update(changes)
            session.add(row)
    session.commit()


def _due(session: Session, campaign: Campaign, settings: Settings, now: datetime) -> list[CampaignDelivery]:
    table = CampaignDelivery.__table__  # type: ignore[attr-defined]
    stmt = select(CampaignDelivery).where(CampaignDelivery.campaign_id == campaign.id,
                                          deliveries.due(table, settings, now))
    return list(session.exec(stmt.order_by(col(CampaignDelivery.id))).all())


def _recount(session: Session, settings: Settings, campaign: Campaign, now: datetime) -> None:
    counts: dict[str, int] = {s.value: 0 for s in DeliveryStatus}
    pending_failed = 0
    stmt = (select(CampaignDelivery.status, CampaignDelivery.attempts, func.count())
            .where(CampaignDelivery.campaign_id == campaign.id)
            .group_by(col(CampaignDelivery.status), col(CampaignDelivery.attempts)))
    for status, attempts, n in session.exec(stmt).all():
        counts[DeliveryStatus(status).value] += n
        if status == DeliveryStatus.failed and attempts < settings.proactive_sms_max_attempts:
            pending_failed += n
    campaign.total_count = sum(counts.values())
    campaign.sent_count, campaign.skipped_count = counts["sent"], counts["skipped"]
    campaign.failed_count = counts["failed"]
    campaign.pending_count = counts["queued"] + pending_failed
    campaign.status = CampaignStatus.sending if campaign.pending_count else CampaignStatus.completed
    campaign.last_run_at = now


def send(*, session: Session, settings: Settings, sender: SmsSender, campaign: Campaign,
         now: datetime | None = None, periodic: bool = False, clock: Callable[[], datetime] | None = None
         ) -> tuple[int, int]:
    """Send every delivery that is due: new households, and failed ones whose retry time has come.

    Idempotent: a household that was sent the campaign never gets it again (one delivery per household,
    unique, each claimed by a conditional UPDATE right before it is sent), so a rerun, a concurrent send or
    one that took over an expired lease only reaches households added since and retries failures. Each
    result is committed at once. Returns (sent, failed) of this run.

    Once what the campaign announces is over, a send is refused (422 `fill_window_past` / `event_past`) and
    the `periodic` run texts nobody: it marks the deliveries still due skipped (`event_passed`).

    `clock`: the periodic run's (`deliveries.clock`), shared by all it sends; `now` is then its time at the start
    of this campaign. Else one is started at `now`.
    """
    if clock is None:
        now = now or utcnow()
        clock = deliveries.clock(now)
    else:
        now = clock()
    if not periodic:
        _refuse_past(campaign.kind, campaign.event_start, campaign.event_end, now, ZoneInfo(settings.timezone))
    mine = _claim(session, campaign, now)
    sent = failed = 0
    try:
        if _event_over(campaign.kind, campaign.event_start, campaign.event_end, now):
            deliveries.give_up(session, settings, _due(session, campaign, settings, now), now, "event_passed")
            return 0, 0
        _plan(session, settings, campaign)
        due = _due(session, campaign, settings, now)
        for index, delivery in enumerate(due):
            at = clock()
            # Asked again before each SMS, not only at the start: a long run (a backlog, a slow gateway) texted
            # on into the quiet hours, and past the end of what it announced.
            if _event_over(campaign.kind, campaign.event_start, campaign.event_end, at):
                deliveries.give_up(session, settings, due[index:], at, "event_passed")
                break
            if periodic and deliveries.quiet_hours(settings, at):
                break  # still due: the first run after the quiet hours sends them
            lease = _renew(session, campaign, mine, at)
            if lease is None:
                break
            mine = lease
            outcome = deliveries.send_one(session, settings, sender, delivery, clock())
            sent, failed = sent + (outcome is True), failed + (outcome is False)
    finally:
        session.rollback()
        session.refresh(campaign)
        if campaign.first_sent_at is None and sent:
            campaign.first_sent_at = now
        _recount(session, settings, campaign, now)
        if campaign.sending_until == mine:  # release our lease, never one another sender took over
            campaign.sending_until = None
        session.add(campaign)
        session.commit()
    log.info("campaign %s: %d sent, %d failed this run", campaign.id, sent, failed)
    return sent, failed


def send_due(*, session: Session, settings: Settings, sender: SmsSender, now: datetime | None = None,
             clock: Callable[[], datetime] | None = None) -> tuple[int, int]:
    """Retry what is due in every campaign that is still sending (the periodic run). `clock`: the run's
    (`deliveries.clock`), which its notices go on with; else one started at `now`."""
    # One clock for every campaign: each campaign started one at the run's start, so after a backlog the next
    # campaign read 20:57 again at 21:00 and texted residents in the quiet hours (and after its event's end).
    clock = clock or deliveries.clock(now or utcnow())
    ids = session.exec(select(Campaign.id).where(Campaign.status == CampaignStatus.sending)).all()
    sent = failed = 0
    for id in ids:
        campaign = session.get(Campaign, id)
        if campaign is None:
            continue
        try:
            s, f = send(session=session, settings=settings, sender=sender, campaign=campaign, periodic=True,
                        clock=clock)
        except Conflict:
            continue  # another process is sending it
        sent, failed = sent + s, failed + f
    return sent, failed
