"""What the console adds to the API: the review queue (pending first), segment confidence, one work
order's timeline gathered from every domain, and the dashboard's figures. Keyword-only functions; scope
comes from `api.access` and the notes' rules, masking from `speech.redact`."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, true
from sqlmodel import Session, col, select

from api import access
from api.console.models import (
    Breach,
    ConsoleMe,
    Count,
    Dashboard,
    PersonPublic,
    ProactiveLine,
    ProactivePanel,
    ReadingPoint,
    RoomLine,
    SegmentQuality,
    Timeline,
    TimelineItem,
    TranscriptQuality,
)
from api.db import one_snapshot, utcnow
from api.deps import Page
from api.fieldwork.models import Reading, Visit
from api.network.models import Building, Household, Station, address_text, building_text, unit_text
from api.notes.models import Note, NoteKind
from api.notes.service import note_clause
from api.proactive import service as proactive
from api.proactive.models import ProactiveKind, ProactiveMember, ProactiveOrder
from api.settings import Settings
from api.users.models import Role, User
from api.work_orders import service as work_orders
from api.work_orders.models import OPEN_STATUSES, Source, Status, WorkOrder, WorkOrderEvent, open_clause
from speech import service as speech
from speech.models import Call, Transcript, TranscriptState
from speech.redact import can_view_pii, redact_for, redact_phone
from video import service as video
from video.models import VideoRoom, VideoSnapshot

# Readings drawn around a work order: from shortly before it was opened until shortly after it closed.
READINGS_BEFORE = timedelta(days=3)
READINGS_AFTER = timedelta(days=1)
READINGS_MAX = 500
# Open proactive orders listed on the dashboard (the counts by kind cover all of them).
PROACTIVE_CLUSTERS_SHOWN = 20
PROACTIVE_REVISITS_SHOWN = 10


def can_review(user: User) -> bool:
    """Supervisors and admins review transcripts, settle conflicts and read the dashboard."""
    return access.is_office(user)


def _person(user: User) -> PersonPublic:
    return PersonPublic(id=user.id, username=user.username, full_name=user.full_name, role=user.role.value)


def me(*, session: Session, settings: Settings, user: User) -> ConsoleMe:
    """The signed-in user, their rights in the console, and the people the pages name (the office sees
    every user; a steward sees themselves and the office, who assign their orders and approve)."""
    stmt = select(User).order_by(col(User.role), col(User.username))
    if not can_review(user):
        stmt = stmt.where((col(User.id) == user.id) | col(User.role).in_((Role.admin, Role.supervisor)))
    people = list(session.exec(stmt).all())
    return ConsoleMe(user=_person(user), can_review=can_review(user), view_pii=can_view_pii(user),
                     refresh_s=settings.console_refresh_s, timezone=settings.timezone,
                     people=[_person(p) for p in people])


def queue(*, session: Session, settings: Settings, user: User, page: Page, status: TranscriptState | None = None,
          category: str | None = None, date_from: date | None = None, date_to: date | None = None,
          steward_id: uuid.UUID | None = None, q: str | None = None) -> tuple[list[Transcript], int, int]:
    """Transcripts the user may see with the API's filters, those waiting for review first (newest
    recording first within each group); also how many of the matching ones wait for review."""
    stmt = speech.transcripts_query(session=session, settings=settings, user=user, status=status,
                                    category=category, date_from=date_from, date_to=date_to, steward_id=steward_id,
                                    q=q)
    pending_first = case((col(Transcript.status) == TranscriptState.transcribed, 0), else_=1)
    rows, count = access.paged(session, stmt, page, pending_first, col(Note.recorded_at).desc(), col(Transcript.id))
    pending_stmt = stmt.where(col(Transcript.status) == TranscriptState.transcribed)
    pending = session.exec(select(func.count()).select_from(pending_stmt.subquery())).one()
    return rows, count, int(pending)


def quality(*, settings: Settings, transcript: Transcript) -> TranscriptQuality:
    """Each segment's decoder confidence and whether it should be checked by ear (older or edited rows
    without the figures are never flagged)."""
    out = []
    for i, s in enumerate(transcript.segments):
        logprob, no_speech = s.get("avg_logprob"), s.get("no_speech_prob")
        low = (logprob is not None and logprob < settings.console_low_logprob) or \
              (no_speech is not None and no_speech > settings.console_high_no_speech)
        out.append(SegmentQuality(index=i, avg_logprob=logprob, no_speech_prob=no_speech, low=low))
    return TranscriptQuality(low_logprob=settings.console_low_logprob,
                             high_no_speech=settings.console_high_no_speech, segments=out)


# --- timeline -------------------------------------------------------------------------------------------


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


def timeline(*, session: Session, user: User, id: uuid.UUID) -> Timeline:
    """Everything that happened on one work order the user may see, oldest first: status changes,
    visits, recordings with their transcripts (calls with the caller's number), video calls with their
    snapshots; and the household's indoor readings around it for the chart. Numbers are masked for users
    without the view_pii right."""
    order = work_orders.get(session=session, user=user, id=id)
    # In the user's scope, as everywhere: a steward covering an order outside the grid sees the order, not the
    # household's record (its fields stay empty, as GET /households/{id} answers 404 and sync sends none).
    household = session.exec(select(Household).where(
        Household.id == order.household_id, access.building_clause(user, Household.building_id))).first()
    building = session.get(Building, household.building_id) if household else None
    station = session.get(Station, building.station_id) if building else None

    def mask(text: str | None) -> str | None:
        return None if text is None else redact_for(user, text)

    def phone(number: str | None) -> str | None:  # one number: masked by its shape (`redact_phone`)
        return number if number is None or can_view_pii(user) else redact_phone(number)

    now = utcnow()
    work_order = {
        "id": order.id, "category": order.category.value, "priority": order.priority.value,
        "status": order.status.value, "source": order.source.value, "description": mask(order.description),
        "caller_phone": phone(order.caller_phone), "assignee_id": order.assignee_id, "sla_due_at": order.sla_due_at,
        "created_at": order.created_at, "resolved_at": order.resolved_at, "closed_at": order.closed_at,
        "sla_breached": order.status in OPEN_STATUSES and order.sla_due_at < now,
    }
    place = {
        "id": household.id if household else None,
        "community": building.community if building else "", "building": building.number if building else "",
        "unit": household.unit if household else "", "room": household.room if household else "",
        "address": address_text(building, household) if building and household else "",
        "resident_name": household.resident_name if household else "",
        "phone": phone(household.phone) if household else None,
        "heating_status": household.heating_status.value if household else None,
        "station": station.name if station else "",
    }
    items: list[TimelineItem] = []
    events = work_orders.events(session=session, order=order)
    for event in events:
        items.append(TimelineItem(at=event.at, kind=event.kind, actor_id=event.actor_id, data={
            "from_status": _value(event.from_status), "to_status": _value(event.to_status),
            "assignee_id": event.assignee_id, "note": mask(event.note)}))
    visits = session.exec(select(Visit).where(Visit.work_order_id == order.id, access.visit_clause(user))).all()
    for visit in visits:
        items.append(TimelineItem(at=visit.arrived_at, kind="visit", actor_id=visit.steward_id, data={
            "id": visit.id, "left_at": visit.left_at, "indoor_temp_c": visit.indoor_temp_c,
            "actions": mask(visit.actions), "result": _value(visit.result)}))
    items.extend(_recordings(session, user, order.id))
    items.extend(_video_calls(session, order.id))
    # By time alone (a stable sort): events of one instant keep the order they were written in. By (time, kind),
    # a proactive order's `assigned`, written with its `created`, came first.
    items.sort(key=lambda i: i.at)

    until = (_ended_at(order, events) or now) + READINGS_AFTER
    readings = session.exec(select(Reading).where(
        Reading.household_id == order.household_id, access.reading_clause(user),
        col(Reading.taken_at) >= order.created_at - READINGS_BEFORE, col(Reading.taken_at) <= until)
        .order_by(col(Reading.taken_at).desc()).limit(READINGS_MAX)).all()
    # Past the cap the newest points stay (an open order's chart must show today), charted oldest first.
    points = [ReadingPoint(taken_at=r.taken_at, temp_c=r.temp_c, room=r.room) for r in reversed(readings)]
    return Timeline(work_order=work_order, household=place, items=items, readings=points)


def _ended_at(order: WorkOrder, events: list[WorkOrderEvent]) -> datetime | None:
    """When a finished order ended, for the chart: closed, resolved (the office may never close it), or
    cancelled (its status line; its last change if it has none). None while it is open. Only a close sets
    `closed_at`: a resolved or cancelled order's chart ran until today, and its cap of points could leave out
    the readings of the days around the order."""
    if order.status in OPEN_STATUSES:
        return None
    if order.status == Status.cancelled:
        return next((e.at for e in reversed(events) if e.to_status == Status.cancelled), order.updated_at)
    return order.closed_at or order.resolved_at or order.updated_at


def _recordings(session: Session, user: User, order_id: uuid.UUID) -> list[TimelineItem]:
    """Voice notes and calls about the order (or that opened it), with their transcripts as this user may
    read them."""
    rows = session.exec(select(Transcript).join(Note, col(Note.id) == Transcript.id)
                        .where(speech.or_work_order(order_id), note_clause(user))).all()
    items = []
    for transcript in rows:
        public = speech.present(session, user, transcript)
        call = session.get(Call, transcript.id) if public.kind == NoteKind.call_recording.value else None
        items.append(TimelineItem(
            at=public.recorded_at, kind="call" if call else "note", actor_id=public.owner_id, data={
                "transcript_id": public.id, "status": public.status.value, "text": public.text,
                "duration_s": public.duration_s, "categories": public.categories,
                "caller_phone": public.caller_phone, "agent": public.agent, "redacted": public.redacted,
                "opened_order": transcript.draft_work_order_id == order_id}))
    return items


def _video_calls(session: Session, order_id: uuid.UUID) -> list[TimelineItem]:
    """Video calls of the order (the order's visibility was checked), each with its snapshots. A room its relay
    abandoned is closed as `lost` first, as any request about it does (`video.close_if_abandoned`): the
    database keeps it `open`, and the timeline said so days after the call ended."""
    rooms = session.exec(select(VideoRoom).where(VideoRoom.work_order_id == order_id)).all()
    shots = session.exec(select(VideoSnapshot).where(VideoSnapshot.work_order_id == order_id)
                         .order_by(col(VideoSnapshot.taken_at))).all()
    items = []
    for room in rooms:
        video.close_if_abandoned(session, room)
        items.append(TimelineItem(at=room.created_at, kind="video", actor_id=room.created_by_id, data={
            "room_id": room.id, "state": room.state.value, "closed_at": room.closed_at,
            "close_reason": _value(room.close_reason), "recording_note_id": room.recording_note_id,
            "snapshots": [{"id": s.id, "taken_at": s.taken_at, "width": s.width, "height": s.height,
                           "taken_by_id": s.taken_by_id} for s in shots if s.room_id == room.id]}))
    return items


# --- dashboard ------------------------------------------------------------------------------------------


def _counts(session: Session, column: Any, where: Any) -> list[Count]:
    rows = session.exec(select(column, func.count()).where(where).group_by(column)
                        .order_by(func.count().desc())).all()
    return [Count(key=str(_value(k)), label=str(_value(k)), count=int(n)) for k, n in rows]


def _place(kind: ProactiveKind, household: Household, building: Building, station: str) -> str:
    """Where a proactive order's group is, in the words of its work order's description."""
    if kind == ProactiveKind.station:
        return station
    name = building_text(building)  # 3号楼 typed with its word is not 3号楼号楼
    if kind == ProactiveKind.riser:
        return f"{name}{unit_text(household.unit)}立管"
    if kind == ProactiveKind.revisit:
        return address_text(building, household)
    return name


def _proactive_lines(session: Session, user: User, kinds: tuple[ProactiveKind, ...], limit: int) -> list[ProactiveLine]:
    """Open proactive orders of the given kinds the user may see: widest group first, then newest, with
    how many complaints each groups. The anchor household sits in the group's riser, building and station."""
    kind = col(ProactiveOrder.kind)
    widest = case((kind == ProactiveKind.station, 0), (kind == ProactiveKind.building, 1),
                  (kind == ProactiveKind.riser, 2), else_=3)
    rows = session.exec(
        select(ProactiveOrder, WorkOrder, Household, Building)
        .join(WorkOrder, col(WorkOrder.id) == ProactiveOrder.work_order_id)
        .join(Household, col(Household.id) == WorkOrder.household_id)
        .join(Building, col(Building.id) == Household.building_id)
        .where(col(ProactiveOrder.open_key).is_not(None), col(ProactiveOrder.kind).in_(kinds),
               access.work_order_clause(user))
        .order_by(widest, col(ProactiveOrder.opened_at).desc(), col(ProactiveOrder.id)).limit(limit)).all()
    ids = [p.id for p, *_ in rows]
    members = dict(session.exec(select(ProactiveMember.proactive_order_id, func.count())
                                .where(col(ProactiveMember.proactive_order_id).in_(ids))
                                .group_by(col(ProactiveMember.proactive_order_id))).all()) if ids else {}
    stations = dict(session.exec(select(Station.id, Station.name)
                                 .where(col(Station.id).in_({b.station_id for *_, b in rows}))).all()) if ids else {}
    return [ProactiveLine(id=p.id, work_order_id=o.id, kind=p.kind.value,
                          place=_place(p.kind, h, b, stations.get(b.station_id, "")),
                          station=stations.get(b.station_id, ""), members=int(members.get(p.id, 0)),
                          signal_count=p.signal_count,
                          category=o.category.value, priority=o.priority.value, status=o.status.value,
                          sla_due_at=o.sla_due_at, opened_at=p.opened_at)
            for p, o, h, b in rows]


def proactive_panel(*, session: Session, user: User, now: datetime | None = None) -> ProactivePanel:
    """未诉先办 on the dashboard: the proactive service's own summary (SLA, open orders by kind, campaigns and
    deliveries by status) and the open cluster and revisit orders, each linking to its timeline."""
    clusters = (ProactiveKind.riser, ProactiveKind.building, ProactiveKind.station)
    return ProactivePanel(summary=proactive.summary(session=session, user=user, now=now),
                          clusters=_proactive_lines(session, user, clusters, PROACTIVE_CLUSTERS_SHOWN),
                          revisits=_proactive_lines(session, user, (ProactiveKind.revisit,), PROACTIVE_REVISITS_SHOWN))


def dashboard(*, session: Session, user: User, now: datetime | None = None) -> Dashboard:
    """The district's figures right now: open orders by category, station and source, SLA breaches,
    the transcription queue and its throughput, the video rooms in progress, and the proactive panel."""
    one_snapshot(session)  # "one moment for every figure on the screen" (docs/console.md), under writes too
    now = now or utcnow()
    is_open = open_clause()
    open_total = session.exec(select(func.count()).select_from(WorkOrder).where(is_open)).one()
    by_station_rows = session.exec(
        select(Station.id, Station.name, func.count())
        .select_from(WorkOrder).join(Household, col(Household.id) == WorkOrder.household_id)
        .join(Building, col(Building.id) == Household.building_id).join(Station, col(Station.id) == Building.station_id)
        .where(is_open).group_by(col(Station.id), col(Station.name)).order_by(func.count().desc(), col(Station.name))
        .limit(30)).all()
    by_source = _counts(session, WorkOrder.source, is_open)
    late = is_open & (col(WorkOrder.sla_due_at) < now)
    breached = session.exec(select(func.count()).select_from(WorkOrder).where(late)).one()
    breach_rows = session.exec(
        select(WorkOrder, Station.name).join(Household, col(Household.id) == WorkOrder.household_id)
        .join(Building, col(Building.id) == Household.building_id).join(Station, col(Station.id) == Building.station_id)
        .where(late).order_by(col(WorkOrder.sla_due_at), col(WorkOrder.id)).limit(10)).all()
    by_status = _counts(session, Transcript.status, true())
    pending = sum(c.count for c in by_status if c.key == TranscriptState.transcribed.value)

    def since(column: Any, delta: timedelta) -> int:
        return int(session.exec(select(func.count()).select_from(Transcript)
                                .where(col(column) >= now - delta)).one())

    # Live rooms only, newest first: rooms whose relay died stay `open` in the database until a request about
    # them closes them, and twenty of them, oldest first, filled the list and hid the call in progress.
    rooms = session.exec(select(VideoRoom).where(video.live_clause(now))
                         .order_by(col(VideoRoom.created_at).desc(), col(VideoRoom.id)).limit(20)).all()
    return Dashboard(
        at=now, open_total=int(open_total), open_by_category=_counts(session, WorkOrder.category, is_open),
        open_by_station=[Count(key=str(sid), label=name, count=int(n)) for sid, name, n in by_station_rows],
        open_by_source=by_source,
        proactive_open=sum(c.count for c in by_source if c.key == Source.proactive.value),
        sla_breached=int(breached),
        breaches=[Breach(id=o.id, category=o.category.value, priority=o.priority.value, status=o.status.value,
                         sla_due_at=o.sla_due_at, station=name) for o, name in breach_rows],
        transcripts_by_status=by_status, pending_review=pending,
        transcribed_last_hour=since(Transcript.transcribed_at, timedelta(hours=1)),
        transcribed_last_day=since(Transcript.transcribed_at, timedelta(days=1)),
        approved_last_day=since(Transcript.approved_at, timedelta(days=1)),
        active_rooms=[RoomLine(id=r.id, work_order_id=r.work_order_id, created_at=r.created_at,
                               expires_at=r.expires_at) for r in rooms],
        proactive=proactive_panel(session=session, user=user, now=now))
