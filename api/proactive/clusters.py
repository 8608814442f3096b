"""Complaint clusters and sensitive-household revisits: the work orders the service opens by itself.

A complaint is a work order (any source but `proactive`, not cancelled) or a transcribed hotline call (not a
steward's voice note) whose tags include one of the cluster categories, at a known household, inside the
sliding window. A suspended (报停) household's "not warm" or air-lock complaint is not one: its heating is
off on purpose. Complaints are grouped by unit riser (building + unit), building and station; a group
whose distinct complaining households reach the threshold gets ONE proactive work order.
`ProactiveOrder.open_key` is unique and set while that order is open, so a second order for the group
fails on the constraint even when two evaluations race (PostgreSQL); the loser links nothing and moves
on. Complaints made before the group's previous order was closed, or that a finished proactive order
grouped, never count again.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, or_
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from api.fieldwork.models import Reading, Visit
from api.network.models import (
    Building,
    HeatingStatus,
    Household,
    Station,
    address_text,
    building_text,
    unit_text,
)
from api.notes.models import Note, NoteKind
from api.proactive.campaigns import in_season_stations
from api.proactive.models import ProactiveKind, ProactiveMember, ProactiveOrder
from api.settings import Settings
from api.users.models import GridBuilding, Role, User
from api.work_orders.models import OPEN_STATUSES, Category, Priority, Source, Status, WorkOrder, WorkOrderEvent
from api.work_orders.service import sla_delta
from speech.models import Transcript, TranscriptState
from sync import tracking

CLUSTER_CATEGORIES = (Category.leak, Category.not_warm, Category.air_lock, Category.noise)  # tie-break order
CLUSTER_KINDS = (ProactiveKind.riser, ProactiveKind.building, ProactiveKind.station)  # narrowest first
_PLACE = (col(Household.id), col(Household.building_id), col(Household.unit), col(Building.station_id))
# What a suspended (报停) home reports without it saying anything about the network: its heating is valved off
# on purpose. Its leaks and noises still count (a leak during filling is what its notice asks it to report).
SUSPENDED_EXPECTED = frozenset({Category.not_warm, Category.air_lock})
_LABELS = {Category.leak: "漏水", Category.not_warm: "不热", Category.air_lock: "气堵", Category.noise: "噪音"}


@dataclass(frozen=True)
class Signal:
    """One complaint, at a household, at a time: a work order, a call's transcript, or both when the work order
    is the call's draft. A call and its draft are one complaint, made when the call was: the call may have
    counted (and been grouped) on its own before a correction gave it its draft."""

    work_order_id: uuid.UUID | None
    transcript_id: uuid.UUID | None
    household_id: uuid.UUID
    building_id: uuid.UUID
    unit: str
    station_id: uuid.UUID
    category: Category
    at: datetime

    def key(self, kind: ProactiveKind) -> str:
        if kind == ProactiveKind.riser:
            return f"{self.building_id}:{self.unit}"
        return str(self.building_id if kind == ProactiveKind.building else self.station_id)

    def refs(self) -> set[uuid.UUID]:
        """The ids the complaint is known by (a member or an answered complaint holding any of them is this one)."""
        return {ref for ref in (self.work_order_id, self.transcript_id) if ref is not None}


def close_finished(session: Session, now: datetime) -> int:
    """Release the groups whose proactive order is no longer open (resolved, closed, cancelled), and hold
    again the group of an order that was reopened (resolved, then back in progress) unless another order
    holds it by now: without that, the reopened order and a new one could both be open for one group."""
    joined = select(ProactiveOrder).join(WorkOrder, col(WorkOrder.id) == col(ProactiveOrder.work_order_id))
    finished = session.exec(select(ProactiveOrder, WorkOrder)
                            .join(WorkOrder, col(WorkOrder.id) == col(ProactiveOrder.work_order_id))
                            .where(col(ProactiveOrder.open_key).is_not(None),
                                   col(WorkOrder.status).not_in(OPEN_STATUSES))).all()
    for row, order in finished:
        # Closed when the order was finished, not when this run noticed: a complaint made in between (still
        # cold after the repair) is a new one and counts for the group again.
        row.open_key = None
        row.closed_at = min(order.resolved_at or order.closed_at or order.updated_at or now, now)
        session.add(row)
    session.commit()
    for row in session.exec(joined.where(col(ProactiveOrder.open_key).is_(None),
                                         col(WorkOrder.status).in_(OPEN_STATUSES))).all():
        try:
            with session.begin_nested():
                row.open_key, row.closed_at = f"{row.kind.value}:{row.group_key}", None
                session.add(row)
                session.flush()
        except IntegrityError:  # another order holds the group now: this one stays a plain work order
            continue
    session.commit()
    return len(finished)


def signals(session: Session, settings: Settings, now: datetime) -> list[Signal]:
    """The complaints inside the window: work orders (a call's draft with its call), then tagged transcripts of
    calls that have none."""
    since = now - timedelta(hours=settings.proactive_cluster_window_hours)
    made_at = func.coalesce(col(Note.recorded_at), col(WorkOrder.created_at))  # a draft: when its call was made
    orders = session.execute(
        sa_select(col(WorkOrder.id), col(Transcript.id), col(WorkOrder.category), made_at, *_PLACE)
        .join(Household, col(Household.id) == col(WorkOrder.household_id))
        .join(Building, col(Building.id) == col(Household.building_id))
        .outerjoin(Transcript, col(Transcript.draft_work_order_id) == col(WorkOrder.id))
        .outerjoin(Note, col(Note.id) == col(Transcript.id))
        .where(col(WorkOrder.created_at) >= since, made_at >= since, col(WorkOrder.created_at) <= now,
               col(WorkOrder.category).in_(CLUSTER_CATEGORIES), col(WorkOrder.source) != Source.proactive,
               col(WorkOrder.status) != Status.cancelled,
               or_(col(Household.heating_status) != HeatingStatus.suspended,
                   col(WorkOrder.category).not_in(SUSPENDED_EXPECTED)))).all()
    out = [Signal(o_id, t_id, h, b, unit, st, Category(cat), at) for o_id, t_id, cat, at, h, b, unit, st in orders]
    tags = or_(*(col(Transcript.categories).contains(f",{c.value},") for c in CLUSTER_CATEGORIES))
    calls = session.execute(
        sa_select(col(Transcript.id), col(Transcript.categories), col(Transcript.draft_work_order_id),
                  col(Note.work_order_id), col(Note.recorded_at), col(Household.heating_status), *_PLACE)
        .join(Note, col(Note.id) == col(Transcript.id))
        .join(Household, col(Household.id) == col(Note.household_id))
        .join(Building, col(Building.id) == col(Household.building_id))
        # Calls only: a steward's voice notes at the homes they visit ("排气后不热的问题解决了") are no complaint.
        .where(col(Note.kind) == NoteKind.call_recording, col(Note.recorded_at) >= since,
               col(Note.recorded_at) <= now, tags,
               col(Transcript.status).in_((TranscriptState.transcribed, TranscriptState.approved)))).all()
    for t_id, categories, draft_id, linked_id, at, heating, h, b, unit, st in calls:
        if draft_id is not None or linked_id is not None:
            # The call became a work order: that order is the complaint, judged by the filter above (a
            # cancelled or re-categorised draft must not come back through the call's own tags); a draft
            # carries its call's id.
            continue
        ignored = SUSPENDED_EXPECTED if heating == HeatingStatus.suspended else frozenset()
        category = next((c for c in CLUSTER_CATEGORIES if f",{c.value}," in categories and c not in ignored), None)
        if category is not None:
            out.append(Signal(None, t_id, h, b, unit, st, category, at))
    return out


def grid_steward(session: Session, building_id: uuid.UUID) -> uuid.UUID | None:
    """The steward whose grid holds the building (the first active one by username)."""
    stmt = (select(User.id).join(GridBuilding, col(GridBuilding.user_id) == col(User.id))
            .where(GridBuilding.building_id == building_id, User.role == Role.steward, col(User.active).is_(True))
            .order_by(col(User.username)))
    return session.exec(stmt).first()


def _system_order(session: Session, settings: Settings, household: Household, category: Category,
                  priority: Priority, description: str, now: datetime) -> WorkOrder:
    """A work order opened by the service itself (no author), assigned to the grid's steward when there is one."""
    assignee = grid_steward(session, household.building_id)
    order = WorkOrder(household_id=household.id, source=Source.proactive, category=category, priority=priority,
                      description=description[:4000], status=Status.assigned if assignee else Status.new,
                      assignee_id=assignee, sla_due_at=now + sla_delta(settings, household, category, priority),
                      created_at=now, updated_at=now)
    session.add(order)
    session.flush()
    session.add(WorkOrderEvent(work_order_id=order.id, kind="created", to_status=Status.new, at=now,
                               note=description[:200]))
    if assignee:
        session.add(WorkOrderEvent(work_order_id=order.id, kind="assigned", from_status=Status.new,
                                   to_status=Status.assigned, assignee_id=assignee, at=now))
    return order


def _where(session: Session, kind: ProactiveKind, anchor: Signal) -> str:
    building = session.get(Building, anchor.building_id)
    name = building_text(building) if building else "本楼"
    if kind == ProactiveKind.riser:
        return f"{name}{unit_text(anchor.unit)}立管"
    if kind == ProactiveKind.building:
        return name
    station = session.get(Station, anchor.station_id)
    return station.name if station else "本站"


def _open_group(session: Session, settings: Settings, kind: ProactiveKind, key: str, group: list[Signal],
                now: datetime) -> ProactiveOrder | None:
    """Open the group's order and link its complaints; None if another evaluation opened it first."""
    anchor = min(group, key=lambda s: (s.at, str(s.household_id)))
    counts = Counter(s.category for s in group)
    category = max(CLUSTER_CATEGORIES, key=lambda c: (counts[c], -CLUSTER_CATEGORIES.index(c)))
    households = len({s.household_id for s in group})
    priority = Priority.urgent if counts[Category.leak] else Priority.high
    hours = f"{settings.proactive_cluster_window_hours:g}"
    what = "、".join(f"{_LABELS[c]}{n}起" for c, n in counts.most_common())
    description = (f"【主动服务·{kind.value}】{_where(session, kind, anchor)}{hours}小时内{households}户反映问题"
                   f"（{what}），请整体排查，勿逐户处理。")
    household = session.get(Household, anchor.household_id)
    assert household is not None
    tracking.allocate_seq(session)  # before the savepoint: the sequence number belongs to the transaction
    try:
        with session.begin_nested():
            order = _system_order(session, settings, household, category, priority, description, now)
            row = ProactiveOrder(kind=kind, group_key=key, open_key=f"{kind.value}:{key}",
                                 station_id=anchor.station_id,
                                 building_id=None if kind == ProactiveKind.station else anchor.building_id,
                                 unit=anchor.unit if kind == ProactiveKind.riser else None,
                                 household_id=anchor.household_id, work_order_id=order.id,
                                 signal_count=len(group), opened_at=now)
            session.add(row)
            session.flush()
            _link(session, row, group)
    except IntegrityError:
        return None
    return row


def _link(session: Session, row: ProactiveOrder, group: list[Signal]) -> int:
    for s in group:
        session.add(ProactiveMember(proactive_order_id=row.id, work_order_id=s.work_order_id,
                                    transcript_id=s.transcript_id, household_id=s.household_id, at=s.at))
    session.flush()
    return len(group)


def _link_new(session: Session, row: ProactiveOrder, group: list[Signal]) -> int:
    """Add complaints that arrived after the group's order was opened."""
    members = session.exec(select(ProactiveMember.work_order_id, ProactiveMember.transcript_id)
                           .where(ProactiveMember.proactive_order_id == row.id)).all()
    known = {m for pair in members for m in pair if m is not None}
    new = [s for s in group if not s.refs() & known]
    if not new:
        return 0
    tracking.allocate_seq(session)
    try:
        with session.begin_nested():
            _link(session, row, new)
            row.signal_count += len(new)
            session.add(row)
    except IntegrityError:  # a concurrent evaluation linked them
        return 0
    return len(new)


def evaluate_clusters(*, session: Session, settings: Settings, now: datetime) -> tuple[int, int]:
    """Open one proactive order per group over its threshold; link later complaints. Returns (opened, linked)."""
    # A complaint a finished proactive order already answered never counts again, in any group.
    answered = {ref for pair in session.exec(
        select(ProactiveMember.work_order_id, ProactiveMember.transcript_id)
        .join(ProactiveOrder, col(ProactiveOrder.id) == col(ProactiveMember.proactive_order_id))
        .where(col(ProactiveOrder.open_key).is_(None), ProactiveOrder.kind != ProactiveKind.revisit)).all()
        for ref in pair if ref is not None}
    found = [s for s in signals(session, settings, now) if not s.refs() & answered]
    thresholds = {ProactiveKind.riser: settings.proactive_cluster_riser_threshold,
                  ProactiveKind.building: settings.proactive_cluster_building_threshold,
                  ProactiveKind.station: settings.proactive_cluster_station_threshold}
    open_rows = {(r.kind, r.group_key): r for r in session.exec(
        select(ProactiveOrder).where(col(ProactiveOrder.open_key).is_not(None))).all()}
    last_closed = {(kind, key): at for kind, key, at in session.exec(
        select(ProactiveOrder.kind, ProactiveOrder.group_key, func.max(ProactiveOrder.closed_at))
        .where(col(ProactiveOrder.closed_at).is_not(None))
        .group_by(col(ProactiveOrder.kind), col(ProactiveOrder.group_key))).all()}
    covered: set[uuid.UUID] = set(session.exec(
        select(ProactiveMember.household_id).join(ProactiveOrder, col(ProactiveOrder.id) ==
                                                  col(ProactiveMember.proactive_order_id))
        .where(col(ProactiveOrder.open_key).is_not(None), ProactiveOrder.kind != ProactiveKind.revisit)).all())
    opened = linked = 0
    for kind in CLUSTER_KINDS:
        groups: dict[str, list[Signal]] = defaultdict(list)
        for s in found:
            groups[s.key(kind)].append(s)
        for key, group in sorted(groups.items()):
            cutoff = last_closed.get((kind, key))
            group = [s for s in group if cutoff is None or s.at > cutoff]
            households = {s.household_id for s in group}
            if (kind, key) in open_rows:
                linked += _link_new(session, open_rows[(kind, key)], group)
                covered |= households  # linked now: a wider group of them adds nothing either
                continue
            # A wider group made only of households a narrower open order already covers adds nothing.
            if len(households) < thresholds[kind] or households <= covered:
                continue
            row = _open_group(session, settings, kind, key, group, now)
            if row is not None:
                opened += 1
            else:  # another evaluation opened it meanwhile (the unique open_key): its order covers them now
                winner = session.exec(select(ProactiveOrder).where(
                    ProactiveOrder.open_key == f"{kind.value}:{key}")).first()
                if winner is not None:
                    linked += _link_new(session, winner, group)
            # Either way no wider group of them opens: the loser of the riser's race, its `covered` read before
            # the winner committed, opened the building's order for the same complaints (two orders, one cluster).
            covered |= households
    session.commit()
    return opened, linked


# --- revisits ----------------------------------------------------------------------------------------------


def evaluate_revisits(*, session: Session, settings: Settings, now: datetime) -> int:
    """A revisit order for every sensitive household of an in-season station that had no visit with an
    indoor temperature in the period, unless one is open or was opened within the period."""
    stations = in_season_stations(session, now)
    if not stations:
        return 0
    since = now - timedelta(days=settings.proactive_revisit_days)
    measured = exists().where(
        col(Visit.household_id) == col(Household.id), col(Visit.arrived_at) >= since, col(Visit.arrived_at) <= now,
        or_(col(Visit.indoor_temp_c).is_not(None), exists().where(col(Reading.visit_id) == col(Visit.id))))
    scheduled = exists().where(
        col(ProactiveOrder.household_id) == col(Household.id), col(ProactiveOrder.kind) == ProactiveKind.revisit,
        or_(col(ProactiveOrder.open_key).is_not(None), col(ProactiveOrder.opened_at) >= since))
    stmt = (select(Household).join(Building, col(Building.id) == col(Household.building_id))
            .where(col(Household.sensitive).is_(True), Household.heating_status == HeatingStatus.normal,
                   col(Building.station_id).in_(stations), ~measured, ~scheduled)
            .order_by(col(Household.id)))
    opened = 0
    for household in session.exec(stmt).all():
        building = session.get(Building, household.building_id)
        where = address_text(building, household) if building else ""
        description = (f"【主动回访】敏感户{where}（{household.resident_name or '住户'}）近"
                       f"{settings.proactive_revisit_days:g}天无入户测温记录，请上门回访并测量室温。")
        tracking.allocate_seq(session)
        try:
            with session.begin_nested():
                order = _system_order(session, settings, household, Category.other, Priority.normal,
                                      description, now)
                session.add(ProactiveOrder(kind=ProactiveKind.revisit, group_key=str(household.id),
                                           open_key=f"revisit:{household.id}", household_id=household.id,
                                           building_id=household.building_id,
                                           station_id=building.station_id if building else None,
                                           unit=household.unit, work_order_id=order.id, opened_at=now))
                session.flush()
        except IntegrityError:
            continue  # a concurrent evaluation scheduled it
        opened += 1
    session.commit()
    return opened
