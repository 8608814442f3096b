"""The proactive service's entry points: one evaluation run, the proactive orders, SLA breaches, the summary."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, literal, not_, or_
from sqlmodel import Session, col, func, select

from api import access
from api.db import UTCDateTime, utcnow
from api.deps import Page
from api.errors import NotFound
from api.network.models import Household
from api.notices import service as notices
from api.notices.deliveries import clock, quiet_hours
from api.notices.sms import SmsSender
from api.proactive import campaigns, clusters
from api.proactive.models import (
    Breach,
    Campaign,
    CampaignDelivery,
    CampaignStatus,
    DeliveryStatus,
    ProactiveKind,
    ProactiveMember,
    ProactiveOrder,
    ProactiveOrderPublic,
    RunReport,
    Summary,
)
from api.settings import Settings
from api.users.models import User
from api.work_orders.models import OPEN_STATUSES, WorkOrder, open_clause

# SQLite has one writer: evaluations inside one process take turns. PostgreSQL runs them side by side and
# relies on the unique `open_key` (see `clusters`).
_sqlite_turn = threading.Lock()


def run(*, session: Session, settings: Settings, sender: SmsSender, now: datetime | None = None) -> RunReport:
    """One evaluation: release finished groups, open cluster and revisit orders, retry campaign and notice SMS."""
    now = now or utcnow()
    # One clock for everything the run sends, read before each SMS: each notice and campaign started its own at
    # `now`, so after a backlog the next one read the run's start again and texted residents in the quiet hours
    # (and after the end of what it announced).
    run_clock = clock(now)
    sqlite = session.get_bind().dialect.name == "sqlite"
    if sqlite:
        _sqlite_turn.acquire()
    try:
        closed = clusters.close_finished(session, now)
        opened, linked = clusters.evaluate_clusters(session=session, settings=settings, now=now)
        revisits = clusters.evaluate_revisits(session=session, settings=settings, now=now)
    finally:
        if sqlite:
            _sqlite_turn.release()
    sent = failed = 0
    if not quiet_hours(settings, run_clock()):  # retries wait for the morning; they are still due then
        sent, failed = campaigns.send_due(session=session, settings=settings, sender=sender, clock=run_clock)
        notice_sent, notice_failed = notices.send_due(session=session, settings=settings, sender=sender,
                                                      clock=run_clock)
        sent, failed = sent + notice_sent, failed + notice_failed
    return RunReport(closed=closed, clusters_opened=opened, members_linked=linked, revisits_opened=revisits,
                     deliveries_sent=sent, deliveries_failed=failed)


# --- proactive orders ----------------------------------------------------------------------------------------


def _order_clause(user: User) -> ColumnElement[bool]:
    return col(ProactiveOrder.work_order_id).in_(select(WorkOrder.id).where(access.work_order_clause(user)))


def public(session: Session, row: ProactiveOrder, user: User) -> ProactiveOrderPublic:
    """A proactive order with the ids of the complaints it groups that the user may see (a building's or a
    station's group spans other stewards' grids; their ids stay out of a steward's answer, as everywhere)."""
    from api.notes.models import Note
    from api.notes.service import note_clause

    orders = select(WorkOrder.id).where(access.work_order_clause(user))
    notes = select(Note.id).where(note_clause(user))
    members = session.exec(select(ProactiveMember.work_order_id, ProactiveMember.transcript_id)
                           .where(ProactiveMember.proactive_order_id == row.id,
                                  or_(col(ProactiveMember.work_order_id).is_(None),
                                      col(ProactiveMember.work_order_id).in_(orders)),
                                  or_(col(ProactiveMember.transcript_id).is_(None),
                                      col(ProactiveMember.transcript_id).in_(notes)))
                           .order_by(col(ProactiveMember.at), col(ProactiveMember.id))).all()
    return ProactiveOrderPublic.model_validate(row.model_dump() | {
        "open": row.open_key is not None,
        "member_work_order_ids": [w for w, _ in members if w is not None],
        "member_transcript_ids": [t for _, t in members if t is not None]})


def get_order(*, session: Session, user: User, id: uuid.UUID) -> ProactiveOrder:
    """A proactive order whose work order the user may see."""
    row = session.exec(select(ProactiveOrder).where(ProactiveOrder.id == id, _order_clause(user))).first()
    if row is None:
        raise NotFound(f"No proactive order with id {id} (or it is outside your grid).")
    return row


def list_orders(*, session: Session, user: User, page: Page, kind: ProactiveKind | None = None,
                open: bool | None = None) -> tuple[list[ProactiveOrder], int]:
    """Proactive orders the user may see, newest first."""
    stmt = select(ProactiveOrder).where(_order_clause(user))
    if kind:
        stmt = stmt.where(ProactiveOrder.kind == kind)
    if open is not None:
        is_open = col(ProactiveOrder.open_key).is_not(None)
        stmt = stmt.where(is_open if open else ~is_open)
    return access.paged(session, stmt, page, col(ProactiveOrder.opened_at).desc(), ProactiveOrder.id)


# --- SLA -----------------------------------------------------------------------------------------------------


def _breach_clause(now: datetime, state: str) -> ColumnElement[bool]:
    open_late = and_(open_clause(), col(WorkOrder.sla_due_at) < now)
    resolved_late = and_(col(WorkOrder.resolved_at).is_not(None),
                         col(WorkOrder.resolved_at) > col(WorkOrder.sla_due_at))
    return {"open": open_late, "resolved": resolved_late, "all": or_(open_late, resolved_late)}[state]


def breaches(*, session: Session, user: User, page: Page, state: str = "open", now: datetime | None = None
             ) -> tuple[list[Breach], int]:
    """Work orders past their SLA: still open after the due time, or resolved after it; most overdue first
    (`all`: the open ones first)."""
    now = now or utcnow()
    # A steward also sees the orders assigned to them outside their grid; those households' flags are not
    # theirs to read (as GET /households/{id} answers 404): null there.
    sensitive = case((access.building_clause(user, Household.building_id), col(Household.sensitive)), else_=None)
    stmt = (select(WorkOrder, sensitive).join(Household, col(Household.id) == col(WorkOrder.household_id))
            .where(access.work_order_clause(user), _breach_clause(now, state)))
    count = int(session.exec(select(func.count()).select_from(stmt.subquery())).one())
    most_overdue: tuple[Any, ...]
    if state == "open":
        # Open orders are all late until now: the earliest due is the most overdue (and the partial index of
        # open orders serves it).
        most_overdue = (col(WorkOrder.sla_due_at),)
    elif state == "resolved":  # late until they were resolved
        most_overdue = (_lateness(session, now).desc(),)
    else:
        # Open ones first, then resolved ones, each most overdue first: keys that do not move while pages are
        # read. Ranked together by lateness, an open order (later every minute) overtook resolved ones between
        # two pages, and the next page repeated one row and skipped another. (Open orders of one due time are
        # equally late: the id decides.)
        is_open = open_clause()
        most_overdue = (case((is_open, 0), else_=1), case((is_open, col(WorkOrder.sla_due_at))),
                        _lateness(session, now).desc())
    rows = session.exec(stmt.order_by(*most_overdue, col(WorkOrder.id)).offset(page.offset).limit(page.limit)).all()
    out = []
    for order, sensitive in rows:
        end = order.resolved_at if order.resolved_at and order.status not in OPEN_STATUSES else now
        out.append(Breach(work_order_id=order.id, household_id=order.household_id, category=order.category.value,
                          priority=order.priority.value, status=order.status.value, source=order.source.value,
                          assignee_id=order.assignee_id,
                          sensitive=None if sensitive is None else bool(sensitive), sla_due_at=order.sla_due_at,
                          resolved_at=order.resolved_at,
                          overdue_minutes=max(0, int((end - order.sla_due_at).total_seconds() // 60))))
    return out, count


def _lateness(session: Session, now: datetime) -> ColumnElement[Any]:
    """How late a work order is, in SQL: from its due time to its resolution (closed) or `now` (open), in
    seconds on PostgreSQL and days on SQLite (only its order matters)."""
    closed = and_(col(WorkOrder.resolved_at).is_not(None), not_(open_clause()))
    end = case((closed, col(WorkOrder.resolved_at)), else_=literal(now, UTCDateTime))
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - col(WorkOrder.sla_due_at))
    return func.julianday(end) - func.julianday(col(WorkOrder.sla_due_at))


def _count(session: Session, stmt: Any) -> int:
    return int(session.exec(select(func.count()).select_from(stmt.subquery())).one())


def summary(*, session: Session, user: User, days: int = 30, now: datetime | None = None) -> Summary:
    """Counts for the supervisor console, scoped to the caller: SLA breaches (open, due soon, resolved late
    among orders created in the last `days`), open proactive orders by kind, campaigns and deliveries."""
    now = now or utcnow()
    orders = select(WorkOrder.id).where(access.work_order_clause(user))
    recent = orders.where(col(WorkOrder.created_at) >= now - timedelta(days=days))
    due_soon = and_(open_clause(), col(WorkOrder.sla_due_at) >= now,
                    col(WorkOrder.sla_due_at) < now + timedelta(hours=2))
    by_kind = {k.value: 0 for k in ProactiveKind}
    for kind, n in session.exec(select(ProactiveOrder.kind, func.count())
                                .where(col(ProactiveOrder.open_key).is_not(None), _order_clause(user))
                                .group_by(col(ProactiveOrder.kind))).all():
        by_kind[ProactiveKind(kind).value] = n
    revisits = by_kind.pop(ProactiveKind.revisit.value)
    visible = campaigns.campaign_clause(user)
    by_status = {s.value: 0 for s in CampaignStatus}
    for status, n in session.exec(select(Campaign.status, func.count()).where(visible)
                                  .group_by(col(Campaign.status))).all():
        by_status[CampaignStatus(status).value] = n
    deliveries = {s.value: 0 for s in DeliveryStatus}
    for status, n in session.exec(
            select(CampaignDelivery.status, func.count())
            .where(access.household_clause(user, CampaignDelivery.household_id),
                   col(CampaignDelivery.campaign_id).in_(select(Campaign.id).where(visible)))
            .group_by(col(CampaignDelivery.status))).all():
        deliveries[DeliveryStatus(status).value] = n
    return Summary(
        generated_at=now,
        sla_open_overdue=_count(session, orders.where(_breach_clause(now, "open"))),
        sla_due_within_2h=_count(session, orders.where(due_soon)),
        sla_resolved_late=_count(session, recent.where(_breach_clause(now, "resolved"))),
        sla_window_days=days, clusters_open=by_kind, revisits_open=revisits, campaigns=by_status,
        deliveries=deliveries)

