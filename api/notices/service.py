"""Pre-season notices: create for a building or station, render each household's SMS, send."""

from __future__ import annotations

import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from api import access
from api.db import utcnow
from api.deps import Page
from api.errors import Conflict, NotFound
from api.network.models import Building, HeatingStatus, Household, Station
from api.notices.models import Notice, NoticeCreate, NoticeMessage, NoticeTarget
from api.notices.sms import SmsSender
from api.settings import Settings
from api.users.models import User


def create(*, session: Session, settings: Settings, user: User, data: NoticeCreate) -> Notice:
    """Draft a notice for one building or all buildings of a station."""
    if data.id is not None and session.get(Notice, data.id) is not None:
        raise Conflict(f"A notice with id {data.id} already exists.", code="already_exists")
    if data.building_id is not None and session.get(Building, data.building_id) is None:
        raise NotFound(f"No building with id {data.building_id}.")
    if data.station_id is not None and session.get(Station, data.station_id) is None:
        raise NotFound(f"No station with id {data.station_id}.")
    notice = Notice.model_validate(data.model_dump(exclude_none=True) | {
        "service_phone": data.service_phone or settings.service_phone, "created_by_id": user.id})
    session.add(notice)
    session.commit()
    return notice


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


def _households(session: Session, notice: Notice) -> list[tuple[Household, Building]]:
    stmt = select(Household, Building).join(Building, col(Household.building_id) == col(Building.id))
    if notice.target == NoticeTarget.building:
        stmt = stmt.where(Building.id == notice.building_id)
    else:
        stmt = stmt.where(Building.station_id == notice.station_id)
    stmt = stmt.order_by(col(Building.community), col(Building.number), col(Household.unit), col(Household.room))
    return [(h, b) for h, b in session.exec(stmt).all()]


def _local(ts: datetime, tz: ZoneInfo) -> str:
    local = ts.astimezone(tz)
    return f"{local.month}月{local.day}日{local:%H:%M}"


def render_text(notice: Notice, household: Household, building: Building, tz: ZoneInfo) -> str:
    """The SMS a resident receives, in the utility's usual wording."""
    who = f"{household.resident_name}住户" if household.resident_name else "住户"
    where = f"{building.community}{building.number}号楼{household.unit}单元{household.room}室"
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


def send(*, session: Session, settings: Settings, sender: SmsSender, notice: Notice, resend: bool = False
         ) -> Notice:
    """Hand every message with a phone number to the SMS sender, once (unless `resend`)."""
    session.refresh(notice, with_for_update=True)  # a send racing this one must see its sent_at
    if notice.sent_at is not None and not resend:
        raise Conflict("This notice was already sent; pass resend=true to send it again.", code="already_sent")
    sent = 0
    for message in messages(session=session, settings=settings, notice=notice):
        if message.phone and sender.send(message.phone, message.text):
            sent += 1
    notice.sent_at = utcnow()
    notice.sent_count = sent
    session.add(notice)
    session.commit()
    return notice
