"""What a pushed mutation may do to each table: the REST API's permissions and validation, reused.

The REST services commit inside, so the push (one transaction, a savepoint per mutation) cannot call
them; the same models, state machine and priority rule are used here instead. Every refusal raises
`Rejected` with a stable code, and the push answers the mutation `rejected` without blocking the queue.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, StrictFloat, ValidationError, field_validator
from pydantic import Field as PydanticField
from sqlmodel import col, select

from api.db import utcnow
from api.fieldwork.models import (
    Reading,
    ReadingCreate,
    Visit,
    VisitCreate,
    VisitUpdate,
    check_visit_length,
    plausible_field_time,
)
from api.network.models import Household, HouseholdUpdate
from api.notes.models import Note, NoteCreate, NoteKind, not_a_call
from api.schemas import UtcDatetime, not_null
from api.users.models import Role, User
from api.work_orders.models import (
    OPEN_STATUSES,
    STEWARD_TARGETS,
    TRANSITIONS,
    Priority,
    Status,
    WorkOrder,
    WorkOrderCreate,
    WorkOrderEvent,
    WorkOrderUpdate,
)
from api.work_orders.service import (
    REOPENED_RELEASE_NOTE,
    STEWARD_LOW_PRIORITY,
    STEWARD_SOURCES,
    apply_edits,
    assign_refusal,
    check_sla_due,
    effective_priority,
    release_if_left,
    set_status,
    sla_delta,
)
from sync.registry import BY_NAME, SyncTable
from sync.tracking import side_effect

if TYPE_CHECKING:
    from sync.mutations import Context


@dataclass
class ConflictEntry:
    """One line for the conflict log."""

    field: str | None
    kind: str
    server_value: Any
    device_value: Any
    winner: str


def shown(value: str, limit: int = 40) -> str:
    """A device's value quoted in a rejection message, cut short (the value may be as long as the body)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


class Rejected(Exception):
    """The mutation can never apply; `code` goes to the device as `reason`."""

    def __init__(self, code: str, message: str, conflicts: list[ConflictEntry] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.conflicts = conflicts or []


def validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """Validate with a REST model; errors become `invalid_value` naming the fields."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        raise Rejected("invalid_value", "; ".join(parts)) from exc


def only(fields: dict[str, Any], allowed: frozenset[str] | set[str], what: str) -> None:
    """Refuse fields the caller may not write here."""
    extra = sorted(set(fields) - set(allowed))
    if extra:
        raise Rejected("read_only_field", f"{', '.join(shown(name) for name in extra)} cannot be written {what}; "
                                          f"writable: {', '.join(sorted(allowed)) or 'nothing'}.")


def _fields_of(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(model.model_fields) - {"id"}


class NoteUpdate(BaseModel):
    """The note fields a device may change after creation (links and audio are fixed)."""

    model_config = {"extra": "forbid"}

    kind: NoteKind | None = None
    duration_s: StrictFloat | None = PydanticField(default=None, ge=0, le=6 * 3600)
    recorded_at: UtcDatetime | None = None  # as NoteCreate: refused at validation when it has no UTC equivalent

    _plausible_time = field_validator("recorded_at")(plausible_field_time)
    _not_null = field_validator("kind", "duration_s", "recorded_at")(not_null)  # columns that hold a value
    _kind = field_validator("kind")(not_a_call)


@dataclass
class Rules:
    """One table's rules; the defaults refuse everything."""

    create: Callable[[Context, uuid.UUID, dict[str, Any]], Any] | None = None
    # The same checks as `create`, returning the new row's checked values instead of an ORM object: the
    # bulk path of append-only tables (see `Context.stage`).
    create_values: Callable[[Context, uuid.UUID, dict[str, Any]], dict[str, Any]] | None = None
    # (ctx, row) -> the fields the caller may update on this row; raises when it may update none.
    writable: Callable[[Context, Any], frozenset[str]] | None = None
    update_model: type[BaseModel] | None = None
    apply: Callable[[Context, Any, dict[str, Any]], None] | None = None
    may_delete: Callable[[Context, Any], None] | None = None
    before_delete: Callable[[Context, Any], None] | None = None
    not_deletable: str = "Rows of this table are not deleted from devices."
    # The fields a device writes (on create or update); the other columns are the server's (`created_at`,
    # `transcript_status`, the recorder), which a full write of an existing row carries as the device last
    # saw them: ignored there (see `sync.mutations._differences`).
    device_fields: frozenset[str] = frozenset()
    # Fields whose mention matters even with the server's value: an order's edit that names its current
    # `sla_due_at` keeps that deadline (REST: "unless the edit sets sla_due_at itself"); dropped as unchanged,
    # the category change moved it.
    pinned: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)


def _visible_household(ctx: Context, household_id: uuid.UUID) -> Household:
    household = ctx.get(BY_NAME["households"], household_id)
    if household is None or not ctx.visible(BY_NAME["households"], household):
        raise Rejected("out_of_scope", f"No household with id {household_id} in your scope.")
    return household


def _may_attach(ctx: Context, visit: Visit) -> bool:
    if ctx.office:
        return True
    household = ctx.get(BY_NAME["households"], visit.household_id)
    if household is not None and ctx.visible(BY_NAME["households"], household):
        return True
    order = ctx.get(BY_NAME["work_orders"], visit.work_order_id) if visit.work_order_id is not None else None
    return order is not None and ctx.visible(BY_NAME["work_orders"], order)


def _visible_order(ctx: Context, order_id: uuid.UUID, household_id: uuid.UUID | None) -> WorkOrder:
    order = ctx.get(BY_NAME["work_orders"], order_id)
    if order is None or not ctx.visible(BY_NAME["work_orders"], order):
        raise Rejected("out_of_scope", f"No work order with id {order_id} in your scope.")
    if household_id is not None and order.household_id != household_id:
        raise Rejected("invalid_value", "The work order belongs to another household.")
    return order


def _visible_visit(ctx: Context, visit_id: uuid.UUID, household_id: uuid.UUID | None) -> Visit:
    """The visit a new reading or note names: as in REST (`access.visit_attach_clause`), one at a household of
    the grid, or the caller's own for a work order they still cover."""
    visit = ctx.get(BY_NAME["visits"], visit_id)
    if visit is None or not ctx.visible(BY_NAME["visits"], visit) or not _may_attach(ctx, visit):
        raise Rejected("out_of_scope", f"No visit with id {visit_id} in your scope.")
    if household_id is not None and visit.household_id != household_id:
        raise Rejected("invalid_value", "The visit belongs to another household.")
    return visit


def _owner_or_office(ctx: Context, owner_id: uuid.UUID | None, what: str) -> None:
    if not ctx.office and owner_id != ctx.user.id:
        raise Rejected("not_owner", f"Only the steward who made this {what} (or the office) can change it.")


# --- visits ---------------------------------------------------------------------------------------

VISIT_FIELDS = _fields_of(VisitUpdate)


def create_visit(ctx: Context, id: uuid.UUID, fields: dict[str, Any]) -> Visit:
    if ctx.user.role != Role.steward:
        raise Rejected("forbidden", "Visits are recorded by the steward who made them.")
    only(fields, _fields_of(VisitCreate), "when creating a visit")
    data: VisitCreate = validate(VisitCreate, fields | {"id": id})
    if data.left_at is not None and data.left_at < data.arrived_at:
        raise Rejected("invalid_value", "left_at must not be before arrived_at.")
    # As in the REST API: a steward covering an order outside their grid reaches its household through it.
    if data.work_order_id is None:
        _visible_household(ctx, data.household_id)
    else:
        _visible_order(ctx, data.work_order_id, data.household_id)
    return Visit.model_validate(data.model_dump(exclude_none=True) | {"steward_id": ctx.user.id})


def _visit_writable(ctx: Context, visit: Visit) -> frozenset[str]:
    _owner_or_office(ctx, visit.steward_id, "visit")
    return VISIT_FIELDS


def _visit_apply(_: Context, visit: Visit, values: dict[str, Any]) -> None:
    # As in REST: left before arriving, or longer than a visit can last (a wrong date), is refused.
    problem = check_visit_length(values.get("arrived_at", visit.arrived_at), values.get("left_at", visit.left_at))
    if problem:
        raise Rejected("invalid_value", problem)
    for name, value in values.items():
        setattr(visit, name, value)


_VISIT_LINKS = ((Reading, "readings"), (Note, "notes"))  # rows whose visit_id a visit's delete clears


def _visit_before_delete(ctx: Context, visit: Visit) -> None:
    # The database would clear these links itself (ON DELETE SET NULL) where sync cannot see it. The
    # device does not hold these rows as they now are, so they are not marked as its own writes.
    for model, table in _VISIT_LINKS:
        for row in ctx.session.exec(select(model).where(col(model.visit_id) == visit.id)):
            row.visit_id = None
            ctx.session.add(row)
            side_effect(ctx.session, table, row, "visit_id")
    # New rows of this batch staged for the bulk insert (`Context.insert_staged`, after every mutation
    # ran) are not in the database yet: cleared here, they are written without the link, and the push
    # answers their device the row as it is stored. The link is recorded as set by the server at creation
    # (`mutations._server_set`), so a re-send from the device's copy that never had the answer drops it.
    for spec, staged in ctx.staged:
        if any(spec.name == table for _, table in _VISIT_LINKS) and staged.visit_id == visit.id:
            staged.visit_id = None
            staged.field_versions = (staged.field_versions or {}) | {"visit_id": [1, None]}


# --- readings -------------------------------------------------------------------------------------


def reading_values(ctx: Context, id: uuid.UUID, fields: dict[str, Any]) -> dict[str, Any]:
    only(fields, _fields_of(ReadingCreate), "when creating a reading")
    data: ReadingCreate = validate(ReadingCreate, fields | {"id": id})
    if data.visit_id is None:
        _visible_household(ctx, data.household_id)
    else:  # a reading taken during the user's own visit, possibly outside their grid (as in REST)
        _visible_visit(ctx, data.visit_id, data.household_id)
    return data.model_dump(exclude_none=True) | {"taken_by_id": ctx.user.id}


def create_reading(ctx: Context, id: uuid.UUID, fields: dict[str, Any]) -> Reading:
    return Reading.model_validate(reading_values(ctx, id, fields))


# --- notes ----------------------------------------------------------------------------------------


def create_note(ctx: Context, id: uuid.UUID, fields: dict[str, Any]) -> Note:
    only(fields, _fields_of(NoteCreate), "when creating a note")
    data: NoteCreate = validate(NoteCreate, fields | {"id": id})
    # As in REST: every link names the same household, the first one fixes it for the others.
    household_id = data.household_id
    if household_id is not None and data.work_order_id is None and data.visit_id is None:  # else: the links'
        _visible_household(ctx, household_id)
    if data.work_order_id is not None:
        household_id = _visible_order(ctx, data.work_order_id, household_id).household_id
    if data.visit_id is not None:
        household_id = _visible_visit(ctx, data.visit_id, household_id).household_id
    # The household a link names is stored too, as in REST: the grid's scope and lists by household go by it
    # (a note pushed with only a visit was hidden from the grid's other stewards and from its next steward).
    linked = {"household_id": household_id} if household_id is not None else {}
    return Note.model_validate(data.model_dump(exclude_none=True) | {"owner_id": ctx.user.id} | linked)


def _note_writable(ctx: Context, note: Note) -> frozenset[str]:
    _owner_or_office(ctx, note.owner_id, "note")
    # A call stays a call: turned into a voice note it left the complaint counts of the proactive clusters.
    return _fields_of(NoteUpdate) - {"kind"} if note.kind == NoteKind.call_recording else _fields_of(NoteUpdate)


# --- households -----------------------------------------------------------------------------------


def _household_writable(ctx: Context, _: Household) -> frozenset[str]:
    if not ctx.office:
        raise Rejected("forbidden", "Household master data is changed by the office.")
    return _fields_of(HouseholdUpdate) - {"unit", "room"}  # a flat's place is corrected over REST (checked unique)


# --- work orders ----------------------------------------------------------------------------------

OFFICE_ORDER_FIELDS = frozenset({"status", "assignee_id"}) | _fields_of(WorkOrderUpdate)


class WorkOrderSyncUpdate(WorkOrderUpdate):
    status: Status | None = None
    assignee_id: uuid.UUID | None = None


def _event(ctx: Context, order: WorkOrder, kind: str, *, note: str = "", **kw: Any) -> None:
    ctx.session.add(WorkOrderEvent(work_order_id=order.id, actor_id=ctx.user.id, kind=kind,
                                   note=f"offline sync; {note}" if note else "offline sync", **kw))


def _active_steward(ctx: Context, id: uuid.UUID) -> None:
    user = ctx.session.get(User, id)
    if user is None or not user.active or user.role != Role.steward:
        raise Rejected("invalid_value", f"User {id} is not an active steward; work orders go to stewards.")


def create_work_order(ctx: Context, id: uuid.UUID, fields: dict[str, Any]) -> WorkOrder:
    only(fields, _fields_of(WorkOrderCreate), "when creating a work order")
    data: WorkOrderCreate = validate(WorkOrderCreate, fields | {"id": id})
    household = _visible_household(ctx, data.household_id)
    assignee_id = data.assignee_id
    if not ctx.office:
        if data.source not in STEWARD_SOURCES:
            raise Rejected("forbidden", "Stewards open work orders from visits or video calls only.")
        if assignee_id not in (None, ctx.user.id):
            raise Rejected("forbidden", "Stewards cannot assign work orders to others.")
        if data.sla_due_at is not None:
            raise Rejected("forbidden", "The SLA deadline is set by the office; leave sla_due_at out.")
        if data.priority == Priority.low:
            raise Rejected("forbidden", STEWARD_LOW_PRIORITY)
        assignee_id = ctx.user.id
    if assignee_id is not None:
        _active_steward(ctx, assignee_id)
    priority = effective_priority(household, data.category, data.priority)
    now = utcnow()
    order = WorkOrder.model_validate(
        data.model_dump(exclude_none=True, exclude={"assignee_id", "sla_due_at", "priority"})
        | {"priority": priority, "assignee_id": assignee_id, "status": Status.assigned if assignee_id else Status.new,
           "created_by_id": ctx.user.id,
           "sla_due_at": data.sla_due_at or now + sla_delta(ctx.settings, household, data.category, priority)})
    ctx.session.add(order)
    _event(ctx, order, "created", to_status=Status.new)
    if assignee_id:
        _event(ctx, order, "assigned", from_status=Status.new, to_status=Status.assigned, assignee_id=assignee_id)
    return order


def _order_writable(ctx: Context, order: WorkOrder) -> frozenset[str]:
    if ctx.office:
        return OFFICE_ORDER_FIELDS
    if order.assignee_id != ctx.user.id:
        raise Rejected("not_assignee", "Only the assigned steward can move this work order.")
    return frozenset({"status"})


def _order_apply(ctx: Context, order: WorkOrder, values: dict[str, Any]) -> None:
    # Everything is checked before anything changes: a push applies a batch without a savepoint per
    # mutation, so a refusal must leave the row untouched.
    values = dict(values)
    # Before anything reads the values: a null status is not a status (assignee_id says it in its own words).
    nulls = sorted(name for name, value in values.items() if value is None and name != "assignee_id")
    if nulls:
        raise Rejected("invalid_value", f"{', '.join(shown(name) for name in nulls)} cannot be null.")
    assign = "assignee_id" in values
    assignee = values.pop("assignee_id", None)
    target = Status(values.pop("status")) if "status" in values else None
    status = order.status
    if assign:
        if assignee is None:
            raise Rejected("invalid_value", "A work order cannot be unassigned; assign it to another steward.")
        if status not in OPEN_STATUSES:
            raise Rejected("not_editable", assign_refusal(status))
        _active_steward(ctx, assignee)
        status = Status.assigned if status == Status.new else status
    if target is not None:
        _check_transition(ctx, status, target)
    if problem := check_sla_due(order.created_at, values.get("sla_due_at")):  # as in REST
        raise Rejected("invalid_value", problem)
    # Edits hold for the order as this mutation leaves it (REST edits open orders only): cancelling with
    # edits is refused like a REST edit of a cancelled order, reopening with edits is allowed.
    final = target if target is not None else status
    if values and final not in OPEN_STATUSES:
        if target is None:
            raise Rejected("not_editable", f"A {status.value} work order can no longer be edited.")
        raise Rejected("not_editable", f"This change moves the work order to {target.value}, where it can no "
                                       "longer be edited; send the edits before the status change.")
    if assign:
        before = order.status
        order.assignee_id = assignee
        order.status = status
        _event(ctx, order, "assigned", from_status=before, to_status=status, assignee_id=assignee)
    if target is not None:
        _transition(ctx, order, target)
    # The REST rules of an edit: priority escalation for sensitive homes, and the SLA moves with them;
    # no event for an edit that changed nothing, and the note lists the fields that changed.
    if values and (changed := apply_edits(order, values, settings=ctx.settings,
                                          household=ctx.get(BY_NAME["households"], order.household_id))):
        _event(ctx, order, "updated", note=", ".join(changed))


def _check_transition(ctx: Context, current: Status, target: Status) -> None:
    allowed = TRANSITIONS[current]
    if target not in allowed:
        options = ", ".join(sorted(s.value for s in allowed)) or "none (it is final)"
        raise Rejected("invalid_transition", f"A work order cannot go from {current.value} to {target.value}; "
                                             f"allowed next: {options}.")
    if target == Status.assigned:
        raise Rejected("invalid_transition", "Assign a work order by writing assignee_id.")
    if not ctx.office and target not in STEWARD_TARGETS:
        raise Rejected("forbidden", f"Moving a work order to {target.value} is office work.")


def _transition(ctx: Context, order: WorkOrder, target: Status) -> None:
    before = order.status
    set_status(order, target)
    _event(ctx, order, "status", from_status=before, to_status=target)
    if (left := release_if_left(ctx.session, order, before)) is not None:  # as in REST
        _event(ctx, order, "released", from_status=target, to_status=Status.new, assignee_id=left,
               note=REOPENED_RELEASE_NOTE)


def _set_all(_: Context, row: Any, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(row, name, value)


def _may_delete_visit(ctx: Context, visit: Visit) -> None:
    _owner_or_office(ctx, visit.steward_id, "visit")


def _may_delete_reading(ctx: Context, reading: Reading) -> None:
    _owner_or_office(ctx, reading.taken_by_id, "reading")


def _may_delete_note(ctx: Context, note: Note) -> None:
    _owner_or_office(ctx, note.owner_id, "note")


RULES: dict[str, Rules] = {
    "stations": Rules(),
    "buildings": Rules(),
    "notices": Rules(),
    "notice_campaigns": Rules(),
    "campaign_deliveries": Rules(),
    "households": Rules(writable=_household_writable, update_model=HouseholdUpdate, apply=_set_all),
    "work_orders": Rules(create=create_work_order, writable=_order_writable, update_model=WorkOrderSyncUpdate,
                         apply=_order_apply, not_deletable="Work orders are not deleted; cancel them.",
                         device_fields=_fields_of(WorkOrderCreate) | _fields_of(WorkOrderSyncUpdate),
                         pinned=frozenset({"sla_due_at"})),
    "visits": Rules(create=create_visit, writable=_visit_writable, update_model=VisitUpdate, apply=_visit_apply,
                    may_delete=_may_delete_visit, before_delete=_visit_before_delete,
                    device_fields=_fields_of(VisitCreate) | VISIT_FIELDS),
    "readings": Rules(create=create_reading, create_values=reading_values, may_delete=_may_delete_reading,
                      device_fields=_fields_of(ReadingCreate)),
    "notes": Rules(create=create_note, writable=_note_writable, update_model=NoteUpdate, apply=_set_all,
                   may_delete=_may_delete_note, device_fields=_fields_of(NoteCreate) | _fields_of(NoteUpdate)),
}
READ_ONLY_TABLES = frozenset(name for name, rules in RULES.items()
                             if rules.create is None and rules.writable is None and rules.may_delete is None)


def rules_for(spec: SyncTable) -> Rules:
    return RULES[spec.name]
