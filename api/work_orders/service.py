"""Work orders: hotline intake, assignment, the status state machine and the timeline."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from api import access
from api.db import lock_for_update, refuse_taken_id, utcnow, write_turn
from api.deps import Page
from api.errors import Conflict, Forbidden, InvalidTransition, NotFound, Unprocessable
from api.network.models import HeatingStatus, Household
from api.network.service import get_household
from api.settings import Settings
from api.users.models import Role, User
from api.work_orders.models import (
    OPEN_STATUSES,
    STEWARD_TARGETS,
    TRANSITIONS,
    Category,
    Priority,
    Source,
    Status,
    WorkOrder,
    WorkOrderCreate,
    WorkOrderEvent,
    WorkOrderUpdate,
)

STEWARD_SOURCES = frozenset({Source.visit, Source.video})


def _event(session: Session, order: WorkOrder, actor: User | None, kind: str, *, from_status: Status | None = None,
           to_status: Status | None = None, assignee_id: uuid.UUID | None = None, note: str = "") -> None:
    session.add(WorkOrderEvent(work_order_id=order.id, actor_id=actor.id if actor else None, kind=kind,
                               from_status=from_status, to_status=to_status, assignee_id=assignee_id,
                               note=note))


def _steward(session: Session, id: uuid.UUID) -> User:
    """The active steward an order goes to, read locked as `users.update_user` locks them: a steward disabled
    while a create checked them was seen active, and the new order stayed with them (`release_all` had run)."""
    user = session.get(User, id)
    if user is not None:
        lock_for_update(session, user)
    if user is None or not user.active or user.role != Role.steward:
        raise Unprocessable(f"User {id} is not an active steward; work orders go to stewards.",
                            code="invalid_assignee")
    return user


def _sensitive(household: Household | None, category: Category) -> bool:
    """Whether the household's sensitivity shortens this order: not for "not warm" from a 报停 home, whose
    heating is off on purpose (its valves are closed); any other problem there counts as usual."""
    if household is None or not household.sensitive:
        return False
    return not (household.heating_status == HeatingStatus.suspended and category == Category.not_warm)


STEWARD_LOW_PRIORITY = ("Stewards open orders at normal priority or above (low gives a longer SLA deadline, which "
                        "the office sets); leave priority out or ask the office to lower it.")


def effective_priority(household: Household, category: Category, priority: Priority) -> Priority:
    """A cold home of an elderly or sensitive resident is at least `high`, whatever the caller chose (not a
    suspended (报停) one: it is cold on purpose; the order is taken at the priority given)."""
    if (category == Category.not_warm and _sensitive(household, category)
            and priority in (Priority.normal, Priority.low)):
        return Priority.high
    return priority


def sla_delta(settings: Settings, household: Household | None, category: Category, priority: Priority) -> timedelta:
    """How long an order may stay open: the settings' SLA table by category and priority, shorter for a
    sensitive household (REST, sync push and the proactive service all use it)."""
    sensitive = _sensitive(household, category)
    return timedelta(hours=settings.sla_hours(priority.value, category=category.value, sensitive=sensitive))


def check_sla_due(created_at: datetime, sla_due_at: datetime | None) -> str | None:
    """Why an SLA deadline is refused (before the order existed); None if it is fine."""
    if sla_due_at is not None and sla_due_at <= created_at:
        return (f"sla_due_at must be after the order was created ({created_at.isoformat()}); leave it out for "
                "the SLA the rules give.")
    return None


def create(*, session: Session, settings: Settings, user: User, data: WorkOrderCreate,
           commit: bool = True) -> WorkOrder:
    """Open a work order. The office takes any source; stewards open `visit`/`video` orders for
    households in their grid, assigned to themselves, with the SLA the rules give (not one of their own).
    `commit=False` leaves it flushed in the caller's transaction (a transcript's draft commits with it)."""
    write_turn(session)  # the scope check sees every grid change committed before the write (api.db)
    household = get_household(session=session, user=user, id=data.household_id)
    assignee_id = data.assignee_id
    if user.role == Role.steward:
        if data.source not in STEWARD_SOURCES:
            raise Forbidden("Stewards open work orders from visits or video calls only.", code="role_required")
        if assignee_id not in (None, user.id):
            raise Forbidden("Stewards cannot assign work orders to others.", code="role_required")
        if data.sla_due_at is not None:  # the SLA is evidence for the office: it follows the priority rules
            raise Forbidden("The SLA deadline is set by the office; leave sla_due_at out.", code="role_required")
        if data.priority == Priority.low:  # the rules give `low` a longer SLA: a deadline of the steward's own
            raise Forbidden(STEWARD_LOW_PRIORITY, code="role_required")
        assignee_id = user.id
    # After the scope and role checks (as for visits): before them, a create refused anyway answered 409 or 403
    # by whether the id existed in another grid.
    refuse_taken_id(session, WorkOrder, data.id, "work order", user=user)
    if assignee_id is not None:
        _steward(session, assignee_id)
    priority = effective_priority(household, data.category, data.priority)
    now = utcnow()
    # Checked again at the creation instant: the body's check ran before `write_turn`, which waits behind any
    # write in progress, and a deadline seconds away was stored before the order existed (overdue at birth).
    if problem := check_sla_due(now, data.sla_due_at):
        raise Unprocessable(problem, code="invalid_sla")
    order = WorkOrder.model_validate(
        data.model_dump(exclude_none=True, exclude={"assignee_id", "sla_due_at", "priority"})
        | {
            "priority": priority,
            "assignee_id": assignee_id,
            "status": Status.assigned if assignee_id else Status.new,
            "created_by_id": user.id,
            "sla_due_at": data.sla_due_at or now + sla_delta(settings, household, data.category, priority),
            "created_at": now,
            "updated_at": now,
        }
    )
    session.add(order)
    session.flush()
    _event(session, order, user, "created", to_status=Status.new, note=data.description[:200])
    if assignee_id:
        _event(session, order, user, "assigned", from_status=Status.new, to_status=Status.assigned,
               assignee_id=assignee_id)
    if commit:
        session.commit()
    else:
        session.flush()
    return order


def get(*, session: Session, user: User, id: uuid.UUID) -> WorkOrder:
    """A work order the user may see."""
    return access.get_visible(session, WorkOrder, id, access.work_order_clause(user), what="work order")


def _lock(session: Session, order: WorkOrder) -> None:
    """Re-read the order under a row lock: checks must see what a concurrent request just committed (on
    SQLite too, where `FOR UPDATE` alone did nothing and two requests could both move an order from the
    status they had read: a cancelled order ended resolved). The change sequence first (`lock_for_update`): a
    REST write that locked the row and then waited for the sequence deadlocked with a push on PostgreSQL."""
    lock_for_update(session, order)


def _check_version(order: WorkOrder, base_version: int | None) -> None:
    if base_version is not None and base_version != order.version:
        raise Conflict(f"The work order changed since version {base_version} (now {order.version}); "
                       "reload it and try again.", code="version_conflict")


def assign(*, session: Session, user: User, order: WorkOrder, assignee_id: uuid.UUID, note: str = "") -> WorkOrder:
    """Give an open work order to a steward; a new order becomes `assigned`, others keep their status."""
    _lock(session, order)
    if order.status not in OPEN_STATUSES:
        raise InvalidTransition(assign_refusal(order.status))
    _steward(session, assignee_id)
    if order.assignee_id == assignee_id and order.status != Status.new:
        return order  # already theirs: no change, no `assigned` line in the timeline (sync skips it too)
    before = order.status
    order.assignee_id = assignee_id
    if order.status == Status.new:
        order.status = Status.assigned
    session.add(order)
    _event(session, order, user, "assigned", from_status=before, to_status=order.status, assignee_id=assignee_id,
           note=note)
    session.commit()
    return order


def release_all(*, session: Session, actor: User | None, steward: User, note: str) -> int:
    """Give back every open order of `steward`, who is leaving (disabled, or no longer a steward): each goes back
    to `new` with no assignee, and a `released` line in its timeline names whom it was taken from. Left with
    them, the orders sat with someone who could not work them while their SLA ran, and the office could not
    take them back (an order is never unassigned otherwise). Not committed: the caller's change commits with
    it. The change sequence is taken first, as a push takes it."""
    from sync.tracking import allocate_seq  # sync's models import this package's

    allocate_seq(session)
    orders = session.exec(select(WorkOrder).where(col(WorkOrder.assignee_id) == steward.id,
                                                  col(WorkOrder.status).in_(OPEN_STATUSES))
                          .order_by(col(WorkOrder.id)).with_for_update()).all()
    for order in orders:
        before = order.status
        order.assignee_id, order.status = None, Status.new
        session.add(order)
        _event(session, order, actor, "released", from_status=before, to_status=Status.new,
               assignee_id=steward.id, note=note)
    return len(orders)


def assign_refusal(status: Status) -> str:
    """Why an order in this (not open) status cannot be assigned, and what to do instead."""
    if TRANSITIONS[status]:
        return f"A {status.value} work order cannot be assigned; reopen it first (move it back to in_progress)."
    return (f"A {status.value} work order cannot be assigned: {status.value} is final. Open a new work order "
            "if the problem is back.")


def transition(*, session: Session, user: User, order: WorkOrder, target: Status, note: str = "",
               base_version: int | None = None) -> WorkOrder:
    """Move a work order along the state machine; every other move is refused with what is allowed."""
    _lock(session, order)
    _check_version(order, base_version)
    allowed = TRANSITIONS[order.status]
    if target not in allowed:
        options = ", ".join(sorted(s.value for s in allowed)) or "none (it is final)"
        raise InvalidTransition(f"A work order cannot go from {order.status.value} to {target.value}; "
                                f"allowed next: {options}.")
    if target == Status.assigned:
        raise InvalidTransition("Assign a work order with POST /work-orders/{id}/assign, naming the steward.")
    if user.role == Role.steward:
        if order.assignee_id != user.id:
            raise Forbidden("Only the assigned steward can move this work order.", code="not_assignee")
        if target not in STEWARD_TARGETS:
            raise Forbidden(f"Moving a work order to {target.value} is office work.", code="role_required")
    before = order.status
    set_status(order, target)
    session.add(order)
    _event(session, order, user, "status", from_status=before, to_status=target, note=note)
    if (left := release_if_left(session, order, before)) is not None:
        _event(session, order, user, "released", from_status=target, to_status=Status.new, assignee_id=left,
               note=REOPENED_RELEASE_NOTE)
    session.commit()
    return order


REOPENED_RELEASE_NOTE = "reopened; the steward no longer works orders"


def release_if_left(session: Session, order: WorkOrder, before: Status) -> uuid.UUID | None:
    """After a status change from `before`: a reopened order (closed before, open now) whose steward has left
    (disabled, or given another role) goes back to the office, `new` and unassigned, as their open orders did
    when they left (`release_all`). The steward's id when it did (the caller writes the `released` line), else
    None. REST and sync share it."""
    if before in OPEN_STATUSES or order.status not in OPEN_STATUSES or order.assignee_id is None:
        return None
    with session.no_autoflush:  # a flush of the changed order here, then another at commit: version +2
        assignee = session.get(User, order.assignee_id)
    if assignee is not None and assignee.active and assignee.role == Role.steward:
        return None
    left = order.assignee_id
    order.assignee_id, order.status = None, Status.new
    session.add(order)
    return left


def set_status(order: WorkOrder, target: Status) -> None:
    """Apply an already-checked status change and its timestamps (REST and sync share it)."""
    now = utcnow()
    order.status = target
    if target == Status.resolved:
        order.resolved_at = now
    elif target == Status.closed:
        order.closed_at = now
    elif target == Status.in_progress:
        order.resolved_at = None


def update(*, session: Session, settings: Settings, user: User, order: WorkOrder,
           data: WorkOrderUpdate) -> WorkOrder:
    """Office edits of category, description, priority or SLA. A new priority or category moves the SLA
    (counted from the order's creation) unless the edit sets `sla_due_at` itself."""
    _lock(session, order)
    if order.status not in OPEN_STATUSES:
        raise InvalidTransition(f"A {order.status.value} work order can no longer be edited.")
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    if not changes:
        return order
    if problem := check_sla_due(order.created_at, changes.get("sla_due_at")):
        raise Unprocessable(problem, code="invalid_sla")
    # Read before changing the order: a query after it would autoflush and bump the version twice.
    household = session.get(Household, order.household_id)
    changed = apply_edits(order, changes, settings=settings, household=household)
    if not changed:
        return order
    session.add(order)
    _event(session, order, user, "updated", note=", ".join(changed))
    session.commit()
    return order


def apply_edits(order: WorkOrder, changes: dict[str, Any], *, settings: Settings,
                household: Household | None) -> list[str]:
    """Apply checked office edits with the rules REST and sync share: a cold sensitive home stays at least
    `high` (as at intake), and a new priority or category moves the SLA (counted from the order's creation)
    unless the edit sets `sla_due_at` itself. The names of the fields that really changed, sorted: the
    timeline's `updated` note (none: no event, as for an edit that sends the current values)."""
    fields = dict.fromkeys((*changes, "priority", "sla_due_at"))
    was = {name: getattr(order, name) for name in fields}
    before, before_category = order.priority, order.category
    order.sqlmodel_update(changes)
    if household is not None:
        order.priority = effective_priority(household, order.category, order.priority)
    if (order.priority != before or order.category != before_category) and "sla_due_at" not in changes:
        order.sla_due_at = order.created_at + sla_delta(settings, household, order.category, order.priority)
    return sorted(name for name, old in was.items() if getattr(order, name) != old)


def list_orders(*, session: Session, user: User, page: Page, status: list[Status] | None = None,
                category: Category | None = None, priority: Priority | None = None,
                source: Source | None = None, assignee_id: uuid.UUID | None = None,
                household_id: uuid.UUID | None = None, building_id: uuid.UUID | None = None,
                overdue: bool | None = None) -> tuple[list[WorkOrder], int]:
    """Work orders the user may see, newest first, with the office's usual filters."""
    stmt = select(WorkOrder).where(access.work_order_clause(user))
    if status:
        stmt = stmt.where(col(WorkOrder.status).in_(status))
    if category:
        stmt = stmt.where(WorkOrder.category == category)
    if priority:
        stmt = stmt.where(WorkOrder.priority == priority)
    if source:
        stmt = stmt.where(WorkOrder.source == source)
    if assignee_id:
        stmt = stmt.where(WorkOrder.assignee_id == assignee_id)
    if household_id:
        stmt = stmt.where(WorkOrder.household_id == household_id)
    if building_id:
        stmt = stmt.where(col(WorkOrder.household_id).in_(
            select(Household.id).where(Household.building_id == building_id)))
    if overdue is not None:
        late = (col(WorkOrder.sla_due_at) < utcnow()) & col(WorkOrder.status).in_(OPEN_STATUSES)
        stmt = stmt.where(late if overdue else ~late)
    return access.paged(session, stmt, page, col(WorkOrder.created_at).desc(), WorkOrder.id)


def events(*, session: Session, order: WorkOrder) -> list[WorkOrderEvent]:
    """The work order's timeline, oldest first."""
    stmt = select(WorkOrderEvent).where(WorkOrderEvent.work_order_id == order.id)
    return list(session.exec(stmt.order_by(col(WorkOrderEvent.at), col(WorkOrderEvent.id))).all())


def require_exists(session: Session, id: uuid.UUID) -> None:
    """Raise `NotFound` unless the work order exists (for links from other rows)."""
    if session.get(WorkOrder, id) is None:
        raise NotFound(f"No work order with id {id}.")
