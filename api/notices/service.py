"""Pre-season notices: create for a building or station, render each household's SMS, send each once."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import exists
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, func, select

from api import access
from api.db import new_id, refuse_taken_id, utcnow
from api.deps import Page
from api.errors import Conflict, NotFound, Unprocessable
from api.network.models import Building, HeatingStatus, Household, Station, address_text
from api.notices import deliveries
from api.notices.models import (
    FILL_LEAD_MAX,
    Notice,
    NoticeCreate,
    NoticeDelivery,
    NoticeMessage,
    NoticeTarget,
)
from api.notices.sms import SmsSender
from api.proactive.models import DeliveryStatus
from api.settings import Settings
from api.users.models import User


def create(*, session: Session, settings: Settings, user: User, data: NoticeCreate) -> Notice:
    """Draft a notice for one building or all buildings of a station."""
    refuse_taken_id(session, Notice, data.id, "notice")
    if data.building_id is not None and session.get(Building, data.building_id) is None:
        raise NotFound(f"No building with id {data.building_id}.")
    if data.station_id is not None and session.get(Station, data.station_id) is None:
        raise NotFound(f"No station with id {data.station_id}.")
    now, tz = utcnow(), ZoneInfo(settings.timezone)
    _refuse_past(data.water_fill_end, now, tz)
    if data.water_fill_start - now > FILL_LEAD_MAX:
        raise Unprocessable(f"The water filling starts {data.water_fill_start.astimezone(tz):%Y-%m-%d} (local time), "
                            f"more than {FILL_LEAD_MAX.days} days ahead; its SMS gives the dates without a year: "
                            "draft the notice closer to the season.", code="fill_window_far")
    notice = Notice.model_validate(data.model_dump(exclude_none=True) | {
        "service_phone": data.service_phone or settings.service_phone, "created_by_id": user.id})
    session.add(notice)
    session.commit()
    return notice


def _refuse_past(water_fill_end: datetime, now: datetime, tz: ZoneInfo) -> None:
    """A notice announces a filling still to come: its SMS gives no year, so one whose filling is over told
    residents of dates long gone as if they were ahead."""
    if water_fill_end <= now:
        raise Unprocessable(f"The water filling ended {water_fill_end.astimezone(tz):%Y-%m-%d %H:%M} (local time); "
                            "a notice announces one still to come: draft a new one with the coming dates.",
                            code="fill_window_past")


def get(*, session: Session, user: User, id: uuid.UUID) -> Notice:
    """A notice the user may see (stewards: notices for buildings of their grid)."""
    clause = access.building_clause(user, Notice.building_id)
    if not access.is_office(user):
        stations = select(Building.station_id).where(col(Building.id).in_(access.grid_buildings(user)))
        clause = clause | col(Notice.station_id).in_(stations)
    return access.get_visible(session, Notice, id, clause, what="notice")


def list_notices(*, session: Session, page: Page, building_id: uuid.UUID | None = None,
                 station_id: uuid.UUID | None = None) -> tuple[list[Notice], int]:
    """Notices, newest first."""
    stmt = select(Notice)
    if building_id:
        stmt = stmt.where(Notice.building_id == building_id)
    if station_id:
        stmt = stmt.where(Notice.station_id == station_id)
    return access.paged(session, stmt, page, col(Notice.created_at).desc(), Notice.id)


_ADDRESS_ORDER = (col(Building.community), col(Building.number), col(Household.unit), col(Household.room),
                  col(Household.id))


def _reached(notice: Notice) -> Any:
    """A select of (household, building) of every household the notice reaches."""
    stmt = select(Household, Building).join(Building, col(Household.building_id) == col(Building.id))
    if notice.target == NoticeTarget.building:
        return stmt.where(Building.id == notice.building_id)
    return stmt.where(Building.station_id == notice.station_id)


def _households(session: Session, notice: Notice) -> list[tuple[Household, Building]]:
    return [(h, b) for h, b in session.exec(_reached(notice).order_by(*_ADDRESS_ORDER)).all()]


def _local(ts: datetime, tz: ZoneInfo) -> str:
    local = ts.astimezone(tz)
    return f"{local.month}月{local.day}日{local:%H:%M}"


def render_text(notice: Notice, household: Household, building: Building, tz: ZoneInfo) -> str:
    """The SMS a resident receives, in the utility's usual wording."""
    who = f"{household.resident_name}住户" if household.resident_name else "住户"
    where = address_text(building, household)
    when = f"{_local(notice.water_fill_start, tz)}至{_local(notice.water_fill_end, tz)}"
    if household.heating_status == HeatingStatus.suspended:
        body = (f"您家已办理停暖，本楼将于{when}注水试压，请确认户内供暖阀门保持关闭并家中留人，"
                f"发现漏水请立即拨打服务热线{notice.service_phone}。")
    else:
        body = (f"本楼将于{when}注水试压。{notice.bleed_instructions}"
                f"如有问题请拨打供暖服务热线{notice.service_phone}。")
    return f"【{notice.title}】尊敬的{who}（{where}）：{body}"


def messages(*, session: Session, settings: Settings, notice: Notice) -> list[NoticeMessage]:
    """One rendered message per household the notice reaches."""
    tz = ZoneInfo(settings.timezone)
    return [NoticeMessage(household_id=h.id, phone=h.phone, text=render_text(notice, h, b, tz))
            for h, b in _households(session, notice)]


def messages_page(*, session: Session, settings: Settings, notice: Notice, page: Page
                  ) -> tuple[list[NoticeMessage], int]:
    """One page of `messages`, by address, and how many there are in all: a station's notice reaches tens of
    thousands of homes, which came as one answer of megabytes."""
    tz = ZoneInfo(settings.timezone)
    rows, count = access.paged(session, _reached(notice), page, *_ADDRESS_ORDER)
    return [NoticeMessage(household_id=h.id, phone=h.phone, text=render_text(notice, h, b, tz))
            for h, b in rows], count


def _plan(session: Session, settings: Settings, notice: Notice) -> None:
    """A delivery for every household that has none; the ones not sent follow their household (a new phone
    starts over, one without a phone is skipped)."""
    existing = {d.household_id: d for d in session.exec(
        select(NoticeDelivery).where(NoticeDelivery.notice_id == notice.id)
        .execution_options(populate_existing=True)).all()}
    table = NoticeDelivery.__table__  # type: ignore[attr-defined]
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    planned = messages(session=session, settings=settings, notice=notice)
    # A household no longer reached (its building moved to another station) is not retried with the dates of
    # a station that no longer feeds it.
    targeted = {m.household_id for m in planned}
    deliveries.give_up(session, settings, [d for h, d in existing.items() if h not in targeted], utcnow(),
                       "not_targeted", final_too=True)  # a resend would text a final failure too
    for m in planned:
        skip = None if m.phone else "no_phone"
        row = existing.get(m.household_id)
        if row is None:
            # A resend racing this one may plan the same household: the unique key keeps one row.
            session.execute(insert(table).values(
                id=new_id(), notice_id=notice.id, household_id=m.household_id, phone=m.phone, text=m.text,
                status=DeliveryStatus.skipped if skip else DeliveryStatus.queued, attempts=0, reason=skip,
                created_at=utcnow()).on_conflict_do_nothing(index_elements=[table.c.notice_id, table.c.household_id]))
        elif row.status != DeliveryStatus.sent and (changes := deliveries.replan(row, m.phone, m.text, skip)):
            # Only while the row is as read: another plan or send may have moved it since (no lease here).
            deliveries.write_if_unchanged(session, row, changes)
    session.commit()


def _send_due(session: Session, settings: Settings, sender: SmsSender, notice: Notice,
              clock: Callable[[], datetime], *, final_too: bool = False, periodic: bool = False) -> tuple[int, int]:
    """Send the notice's deliveries that are due, each claimed first; recount `sent_count`. (sent, failed).
    Before each SMS, at `clock`'s time (`deliveries.clock`, the run's): once the filling is over the rest are
    given up (`event_passed`), and the `periodic` run stops in the quiet hours (the rest stay due); asked once
    per run, a long one texted on past both."""
    now = clock()
    table = NoticeDelivery.__table__  # type: ignore[attr-defined]
    # Read again (`populate_existing`): a row that another sender planned since this session read it would
    # otherwise be claimed with the phone and text read before.
    rows = session.exec(select(NoticeDelivery).where(NoticeDelivery.notice_id == notice.id,
                                                     deliveries.due(table, settings, now, final_too=final_too))
                        .order_by(col(NoticeDelivery.id)).execution_options(populate_existing=True)).all()
    sent = failed = 0
    for index, row in enumerate(rows):
        at = clock()
        if notice.water_fill_end <= at:
            deliveries.give_up(session, settings, list(rows[index:]), at, "event_passed", final_too=final_too)
            break
        if periodic and deliveries.quiet_hours(settings, at):
            break
        outcome = deliveries.send_one(session, settings, sender, row, clock(), final_too=final_too)
        sent, failed = sent + (outcome is True), failed + (outcome is False)
    _recount(session, notice)
    return sent, failed


def _recount(session: Session, notice: Notice) -> None:
    session.refresh(notice)
    notice.sent_count = session.exec(select(func.count()).where(NoticeDelivery.notice_id == notice.id,
                                                                NoticeDelivery.status == DeliveryStatus.sent)).one()
    session.add(notice)
    session.commit()


def _mark_sent(session: Session, notice: Notice, now: datetime) -> bool:
    """Set `sent_at` if no send did yet, in one conditional UPDATE; False if one did (SQLite ignores the row
    lock that a read-then-write check relied on, so two sends both texted everyone)."""
    for _ in range(3):  # the row may move under us without being sent
        if notice.sent_at is not None:
            return False
        if deliveries.write_if(session, notice, lambda t: t.c.sent_at.is_(None), sent_at=now):
            return True
    raise Conflict("The notice changed while it was being sent; send it again.", code="conflict")


def send(*, session: Session, settings: Settings, sender: SmsSender, notice: Notice, resend: bool = False,
         now: datetime | None = None) -> Notice:
    """Text every household with a phone, once; `resend` tries again the ones not reached yet.

    The first send marks the notice sent in one conditional UPDATE, so a second one racing it is refused
    (409 `already_sent`). Each household's SMS is a delivery row claimed right before it is sent: no
    household is texted twice, even by a resend. A failure is recorded with its reason and retried after a
    backoff by the evaluation run (`send_due`), or by `resend=true` once that backoff has passed (also when out
    of tries; a row in backoff may be held by a sender at this moment, which the same column marks).
    Once the filling has ended, a send or resend is refused (422 `fill_window_past`) and the evaluation run
    marks what it would have retried skipped (`event_passed`).
    """
    now = now or utcnow()
    _refuse_past(notice.water_fill_end, now, ZoneInfo(settings.timezone))
    if not _mark_sent(session, notice, now) and not resend:
        raise Conflict("This notice was already sent; pass resend=true to retry the households it has not "
                       "reached.", code="already_sent")
    _plan(session, settings, notice)
    _send_due(session, settings, sender, notice, deliveries.clock(now), final_too=resend)
    return notice


UNPLANNED_RECOVERY = timedelta(days=1)  # how old a sent notice with no deliveries the periodic run still plans


def send_due(*, session: Session, settings: Settings, sender: SmsSender, now: datetime | None = None,
             clock: Callable[[], datetime] | None = None) -> tuple[int, int]:
    """Retry the notice SMS that failed and whose time has come, in every sent notice (the periodic run).
    `clock`: the run's (`deliveries.clock`), its campaigns' before; else one started at `now`."""
    # One clock for every notice: each started one at the run's start, so after a backlog the next notice read
    # 20:57 again at 21:00 and texted residents in the quiet hours (and after its filling's end).
    if clock is None:
        now = now or utcnow()
        clock = deliveries.clock(now)
    else:
        now = clock()
    table = NoticeDelivery.__table__  # type: ignore[attr-defined]
    # A notice marked sent by a process that died before planning its deliveries has none: plan them now (a
    # plain send answers 409 already_sent, so nothing else would ever text its households). Only one that
    # reached nobody, marked within UNPLANNED_RECOVERY: notices sent before migration 0009 have no delivery
    # rows either, and planning them texted every household again about last season's dates.
    planned = select(NoticeDelivery.id).where(NoticeDelivery.notice_id == Notice.id)
    for unplanned in session.exec(select(Notice).where(
            col(Notice.sent_at) >= now - UNPLANNED_RECOVERY, Notice.sent_count == 0, ~exists(planned),
            col(Notice.water_fill_end) > now)).all():
        _plan(session, settings, unplanned)
    ids = session.exec(select(NoticeDelivery.notice_id).where(deliveries.due(table, settings, now))
                       .distinct()).all()
    sent = failed = 0
    for id in ids:
        notice = session.get(Notice, id)
        if notice is None or notice.sent_at is None:
            continue
        at = clock()
        if notice.water_fill_end <= at:  # over: a retry would announce it as still to come
            rows = session.exec(select(NoticeDelivery).where(NoticeDelivery.notice_id == notice.id,
                                                             deliveries.due(table, settings, at))).all()
            deliveries.give_up(session, settings, list(rows), at, "event_passed")
            continue
        # Re-planned first, as a resend and campaigns do: a retry texted the number the office had removed or
        # corrected, with the resident's name and address, and a home suspended since with the normal wording.
        _plan(session, settings, notice)
        s, f = _send_due(session, settings, sender, notice, clock, periodic=True)
        sent, failed = sent + s, failed + f
    # A send cut off after its last SMS and before its count (a killed process) left `sent_count` wrong for
    # good: nothing was due any more, so no run came back to it.
    actual = (select(func.count()).where(NoticeDelivery.notice_id == Notice.id,
                                         NoticeDelivery.status == DeliveryStatus.sent).scalar_subquery())
    for notice in session.exec(select(Notice).where(col(Notice.sent_at).is_not(None),
                                                    col(Notice.water_fill_end) > now,
                                                    Notice.sent_count != actual)).all():
        _recount(session, notice)
    return sent, failed



def list_deliveries(*, session: Session, page: Page, notice: Notice,
                    status: DeliveryStatus | None = None) -> tuple[list[NoticeDelivery], int]:
    """A notice's deliveries (one per household with a phone once it was sent), failed ones with their reason:
    which residents were not reached, and why."""
    stmt = select(NoticeDelivery).where(NoticeDelivery.notice_id == notice.id)
    if status:
        stmt = stmt.where(NoticeDelivery.status == status)
    return access.paged(session, stmt, page, col(NoticeDelivery.household_id))
