"""One SMS per household, sent once: claim the delivery row, hand it to the sender, record the result.

Shared by notices (`notice_deliveries`) and campaigns (`campaign_deliveries`), whose rows have the same
delivery columns. Whoever sends a message first wins a conditional UPDATE checked by its row count: SQLite
ignores SELECT ... FOR UPDATE, so a read-then-write check let two requests (or two server processes, or a
send that outlived its lease) both text a household. The claim is committed before the gateway is called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Table, and_, or_, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, SQLModel

from api.db import Versioned, utcnow, write_turn
from api.notices.models import NoticeDelivery
from api.notices.sms import SmsSender, deliver
from api.proactive.models import CampaignDelivery, DeliveryStatus
from api.settings import Settings

log = logging.getLogger(__name__)

# How long a claimed delivery is held for the sender that claimed it. The message is in flight until its
# result is committed; if that process died, the row is retried once the hold has passed (the HTTP sender
# passes the delivery id as `ref`, so a gateway that deduplicates makes that retry harmless). Far longer
# than any gateway call, so a live sender's message is never taken over, even after its send lease ran out.
CLAIM_HOLD = timedelta(hours=1)


# A campaign's or a notice's copy for one household: the same delivery columns (`DeliveryState`).
Delivery = CampaignDelivery | NoticeDelivery


def _table(obj: SQLModel) -> Table:
    table: Table = type(obj).__table__  # type: ignore[attr-defined]
    return table


def write_if(session: Session, obj: SQLModel, condition: Callable[[Table], ColumnElement[bool]],
             **values: Any) -> bool:
    """Write `values` to `obj`'s row in one UPDATE that matches only while `condition(table)` holds (and, for a
    versioned row, while it is at the version read); commit and return True if it matched, else roll back
    and return False (the session's objects are then expired: read them again to see why).

    The same values are then set on the object, so the flush records the write like any other (sync
    tracking stamps `seq`, `version` and `field_versions`; a bulk UPDATE alone would bypass it).
    """
    table = _table(obj)
    where = and_(table.c.id == obj.id, condition(table))  # type: ignore[attr-defined]
    if isinstance(obj, Versioned):
        # The change sequence before the row, the order a sync push and every REST write take them in: the
        # flush takes it anyway, and after this UPDATE's row lock it could deadlock with a writer holding it.
        write_turn(session)
        where = and_(where, table.c.version == obj.version)
    if session.connection().execute(update(table).where(where).values(**values)).rowcount != 1:
        session.rollback()
        return False
    obj.sqlmodel_update(values)
    session.add(obj)
    session.commit()
    return True


def quiet_hours(settings: Settings, now: datetime) -> bool:
    """Whether `now` falls in STEWARD_SMS_QUIET_HOURS (local time; a span across midnight such as 21:00-08:00
    too): the periodic run then retries no resident SMS. Retries had texted residents at 03:00. Asked before
    each SMS, not once per run: a run that began at 20:57 with a backlog texted on past 21:00."""
    if not settings.sms_quiet_hours:
        return False
    start, end = (time.fromisoformat(part) for part in settings.sms_quiet_hours.split("-"))
    local = now.astimezone(ZoneInfo(settings.timezone)).time()
    return start <= local < end if start <= end else (local >= start or local < end)


def clock(now: datetime) -> Callable[[], datetime]:
    """A clock that starts at `now` (which tests may set) and advances with real time. One per run, shared by
    every notice and campaign it sends: each started its own at the run's start, so the second notice of a
    backlog begun at 20:57 read 20:57 again and texted residents at 21:00, 21:01..."""
    started = utcnow()
    return lambda: now + (utcnow() - started)


def due(table: Table, settings: Settings, now: datetime, *, final_too: bool = False) -> ColumnElement[bool]:
    """Rows to send now: queued, or failed with tries left and their retry time come; never one a sender
    holds (`next_attempt_at` still ahead). `final_too` adds failures out of tries (a manual resend)."""
    free = or_(table.c.next_attempt_at.is_(None), table.c.next_attempt_at <= now)
    retry = (table.c.status == DeliveryStatus.failed) & (table.c.attempts < settings.proactive_sms_max_attempts)
    if final_too:
        retry = retry | ((table.c.status == DeliveryStatus.failed) & table.c.next_attempt_at.is_(None))
    return and_(or_(table.c.status == DeliveryStatus.queued, retry), free)


def send_one(session: Session, settings: Settings, sender: SmsSender, delivery: Delivery, now: datetime, *,
             final_too: bool = False) -> bool | None:
    """Claim one delivery, send it, record the result: True (sent), False (failed), None (not due any more:
    another sender claimed or sent it meanwhile)."""
    row: Any = delivery
    attempts, hold = delivery.attempts, now + CLAIM_HOLD
    # Claimed as `queued` with the hold: a process that dies mid-send leaves a queued row, sent again once the
    # hold has passed whatever its count (a `failed` row at its last try was picked up by nothing, ever).
    # Only the row as this sender read it: a plan that ran since (a corrected number, a new wording) resets the
    # attempts, so a queued row matched the count and the old number was texted in the old words.
    claimed = write_if(session, row, lambda t: due(t, settings, now, final_too=final_too) & (t.c.attempts == attempts)
                       & (t.c.phone == delivery.phone) & (t.c.text == delivery.text),
                       attempts=attempts + 1, next_attempt_at=hold, status=DeliveryStatus.queued)
    if not claimed:
        return None
    phone = delivery.phone
    assert phone is not None  # due rows always have one (no phone: skipped)
    # The ref names the message to this number: a gateway that drops repeats of a ref (after a timeout that did
    # deliver) then still sends the message to a corrected number, which kept the delivery's id.
    result = deliver(sender, phone, delivery.text, ref=f"{delivery.id}:{phone}")
    if result.ok:
        values: dict[str, Any] = {"status": DeliveryStatus.sent, "sent_at": utcnow(), "reason": None,
                                  "next_attempt_at": None}
    else:
        retry = attempts + 1 < settings.proactive_sms_max_attempts
        backoff = settings.proactive_sms_retry_backoff_s * 2 ** attempts
        values = {"status": DeliveryStatus.failed, "reason": storable_reason(result.reason),
                  "next_attempt_at": now + timedelta(seconds=backoff) if retry else None}
    # Recorded only on the delivery as this claim left it. A plan that ran during the gateway call may have
    # started it over for a corrected number (notices have no send lease), and a sender may have taken it over
    # once the hold passed: `sent` written over that told the office the new number was texted, and it never was.
    if not write_if(session, row, lambda t: (t.c.status == DeliveryStatus.queued) & (t.c.attempts == attempts + 1)
                    & (t.c.next_attempt_at == hold) & (t.c.phone == phone), **values):
        log.warning("delivery %s changed while its message was in flight; left as it is now (%s)", delivery.id,
                    "sent" if result.ok else "failed")
    return result.ok


def storable_reason(reason: str) -> str:
    """A failure's reason as a text column holds it: at most 500 characters, no NUL. The gateway's answer is
    quoted in it, and one in UTF-16 or binary carries NULs, which PostgreSQL refuses (and SQLite is made to
    refuse): the result's commit failed, the send stopped there with a 422 and the delivery stayed held."""
    return reason.replace("\x00", "")[:500]


def give_up(session: Session, settings: Settings, rows: list[Any], now: datetime, reason: str, *,
            final_too: bool = False) -> int:
    """Mark deliveries that are due `skipped` with `reason` instead of sending them (what they announce is
    over); each in a conditional UPDATE, so one a sender claimed meanwhile is left to it. How many.
    `final_too`: failures out of tries as well, which a manual resend would send (as `due` reads it)."""
    def still_due(attempts: int) -> Callable[[Table], ColumnElement[bool]]:
        return lambda t: due(t, settings, now, final_too=final_too) & (t.c.attempts == attempts)

    return sum(write_if(session, row, still_due(row.attempts), status=DeliveryStatus.skipped, reason=reason,
                        next_attempt_at=None) for row in rows)


def write_if_unchanged(session: Session, row: NoticeDelivery, changes: dict[str, Any]) -> bool:
    """Write `changes` (from `replan`) to a notice delivery in one UPDATE that matches only while the row is as it
    was read: not claimed, sent, failed, given up or replanned by another sender since. False if it moved on
    (whoever moved it read the household after this one did). Not committed; the object takes the values.

    Notices have no send lease: two resends, or the evaluation runs of several server processes, plan at the
    same time. Written blindly, a plan made from a stale read put a delivery that the other had just sent
    back to `queued` with no attempts, and the household was texted again."""
    table = _table(row)
    as_read = and_(table.c.id == row.id, table.c.status == row.status, table.c.attempts == row.attempts,
                   table.c.phone.is_not_distinct_from(row.phone),
                   table.c.next_attempt_at.is_not_distinct_from(row.next_attempt_at))
    if session.connection().execute(update(table).where(as_read).values(**changes)).rowcount != 1:
        return False
    for name, value in changes.items():  # as stored: no second UPDATE at the next flush
        set_committed_value(row, name, value)
    return True


def replan(row: Delivery, phone: str | None, text: str, skip_reason: str | None) -> dict[str, Any]:
    """The changes that bring a delivery not yet sent up to date with its household (empty: none).

    A household suspended since, or without a phone now, is skipped; one that can be reached again is
    queued. A new phone number starts over (queued, no attempts): the failures were the old number's.
    """
    wanted: dict[str, Any] = {"phone": phone, "text": text}
    if skip_reason:
        # A number the office removed leaves the row too: stewards read (and sync) the deliveries to call the
        # households without one, and the old number was often someone else's.
        wanted = {"status": DeliveryStatus.skipped, "reason": skip_reason} | ({"phone": None} if phone is None else {})
    elif phone != row.phone:
        wanted |= {"status": DeliveryStatus.queued, "attempts": 0, "reason": None, "next_attempt_at": None}
    elif row.status == DeliveryStatus.skipped:
        wanted |= {"status": DeliveryStatus.queued, "reason": None}
    return {k: v for k, v in wanted.items() if getattr(row, k) != v}
