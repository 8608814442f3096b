"""Sign-in throttling: a rate limit per client address, and a lockout of a user name or address after
repeated failures. The counters are rows of `login_throttle`, changed with one atomic upsert each, so
every worker process and machine on the same database shares them (docs/security.md)."""

from __future__ import annotations

import ipaddress
import math
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col

from api.db import UTCDateTime, utcnow
from api.errors import DomainError
from api.settings import Settings
from api.users.models import LoginThrottle

_KEY_LENGTH = 250
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix of IPv4 clients behind a translator


class TooManyAttempts(DomainError):
    status_code, code = 429, "too_many_attempts"


def _key(kind: str, value: str) -> str:
    # NUL cannot be stored in PostgreSQL text; the key only needs to tell values apart.
    return f"{kind}:{value.strip().lower().replace(chr(0), '?')[:_KEY_LENGTH]}"


def _address_key(kind: str, address: str) -> str:
    """The key of a client address. An IPv6 client counts by its /64, the block one host or subscriber line
    is given (RFC 6177): keyed by the whole address, one host sent each guess from another of its 2^64
    addresses and no per-address limit ever applied. An IPv4-mapped IPv6 address counts as its IPv4, and so
    does one under the NAT64 prefix `64:ff9b::/96` (RFC 6052): behind a translator, every IPv4 client shared
    one /64 and one client's failures locked out all the others."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return _key(kind, address)  # "unknown", or a test client's name
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _key(kind, str(ip.ipv4_mapped))
        if ip in _NAT64:
            return _key(kind, str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
        return _key(kind, str(ipaddress.IPv6Network((ip, 64), strict=False)))
    return _key(kind, str(ip))


def _name_key(session: Session, username: str) -> str:
    """The user name's key, lower-cased by the database as the sign-in's lookup lowers it
    (`api.users.service._same_name`): lowered by Python, `admİn` (a dotted capital İ), which PostgreSQL's
    lower() reads as `admin`, counted apart from it, and each such spelling got its own failures."""
    cleaned = username.strip().replace(chr(0), "?")[:_KEY_LENGTH]
    return f"user:{session.execute(select(func.lower(literal(cleaned)))).scalar_one()}"


def _count(session: Session, key: str, *, now: datetime, window_s: float, lock_at: int,
           lock_s: float) -> tuple[int, datetime | None]:
    """Count one event on `key` in its window (a new window once the old one has passed); the key is locked
    for `lock_s` when the count reaches `lock_at`. While a lock holds, an event neither counts nor moves the
    lock's end: the per-address rate's lock was set again by every attempt over it, so a client that retried
    before the `Retry-After` it was given was still refused after it, and a NAT whose handhelds kept trying
    was never let in. Returns the count and the lock's end, if any."""
    table = LoginThrottle.__table__  # type: ignore[attr-defined]
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    now_ = literal(now, UTCDateTime)
    # A new window once the old one has passed, or once a lock it set has ended: a lockout shorter than the
    # window otherwise locked the name again at the next attempt, the right password too, for the whole window.
    ended = table.c.locked_until.is_not(None) & (table.c.locked_until <= now_)
    expired = (table.c.window_start <= literal(now - timedelta(seconds=window_s), UTCDateTime)) | ended
    holding = table.c.locked_until.is_not(None) & (table.c.locked_until > now_)
    new_count = case((expired, 1), (holding, table.c.count), else_=table.c.count + 1)
    lock = literal(now + timedelta(seconds=lock_s), UTCDateTime)
    expires = now + timedelta(seconds=max(window_s, lock_s))
    upsert = insert(table).values(key=key, count=1, window_start=now, expires_at=expires,
                                  locked_until=now + timedelta(seconds=lock_s) if lock_at <= 1 else None)
    stmt = upsert.on_conflict_do_update(index_elements=[table.c.key], set_={
        "count": new_count,
        "window_start": case((expired, now_), else_=table.c.window_start),
        # A new window clears a lock that has ended: left standing, it kept `ended` true at every later
        # attempt, each restarted the count at 1, and the name or address never locked again.
        "locked_until": case((holding, table.c.locked_until), (new_count >= lock_at, lock), (expired, None),
                             else_=table.c.locked_until),
        "expires_at": literal(expires, UTCDateTime),
    }).returning(table.c.count, table.c.locked_until)
    count, locked_until = session.execute(stmt).one()
    return int(count), locked_until


def _refuse(locked_until: datetime, now: datetime, message: str) -> TooManyAttempts:
    wait = max(1, math.ceil((locked_until - now).total_seconds()))
    return TooManyAttempts(f"{message} Try again in {wait} s.", headers={"Retry-After": str(wait)})


def check(*, session: Session, settings: Settings, username: str, address: str) -> None:
    """Count this attempt against the address's rate and, before the password is verified, against the user
    name's and the address's failures; refuse it (429) if the address is over its rate, the name or address
    was locked, or this attempt is one more than `login_max_failures` (or `..._per_ip`) allow. Counting
    before verifying is what makes the lockout hold for guesses sent at the same time: each takes its own
    number from one atomic upsert, so at most `login_max_failures` of them are ever verified. A right
    password then clears the name's count (`record_success`); a wrong one leaves its count standing.
    Committed at once: a refused or failed attempt still counts."""
    now = utcnow()
    _, until = _count(session, _address_key("rate", address), now=now, window_s=60,
                      lock_at=settings.login_rate_per_minute + 1, lock_s=60)
    session.commit()
    if until is not None and until > now:
        raise _refuse(until, now, "Too many sign-in attempts from this address.")
    keys = [_name_key(session, username), _address_key("ip", address)]
    locked = session.execute(select(func.max(LoginThrottle.locked_until)).where(
        col(LoginThrottle.key).in_(keys), col(LoginThrottle.locked_until) > now)).scalar()
    if locked is not None:  # refused without counting, so that refused attempts do not stretch the lock
        raise _refuse(locked, now, "Too many failed sign-ins: sign-in is locked for a while.")
    until = count_attempt(session=session, settings=settings, username=username, address=address, now=now)
    if until is not None:
        raise _refuse(until, now, "Too many failed sign-ins: sign-in is locked for a while.")


def count_attempt(*, session: Session, settings: Settings, username: str, address: str,
                  now: datetime | None = None) -> datetime | None:
    """Count an attempt about to be verified against the user name and the address (committed at once);
    the end of the lock it set off when it is one more than the limits allow, else None."""
    now = now or utcnow()
    window, lock = settings.login_failure_window_s, settings.login_lockout_s
    ends = [_count(session, _name_key(session, username), now=now, window_s=window,
                   lock_at=settings.login_max_failures + 1, lock_s=lock)[1],
            _count(session, _address_key("ip", address), now=now, window_s=window,
                   lock_at=settings.login_max_failures_per_ip + 1, lock_s=lock)[1]]
    session.commit()
    return max((end for end in ends if end is not None and end > now), default=None)


def record_failure(*, session: Session) -> None:
    """A wrong password: its attempt was counted by `check`; expired counters are swept (committed at once).
    The sweep is housekeeping: should it lose a lock wait or deadlock against a concurrent sign-in's upsert of
    an expired row, the next failure sweeps instead (the 401 must not become a 500)."""
    try:
        session.exec(delete(LoginThrottle).where(col(LoginThrottle.expires_at) < utcnow()))
        session.commit()
    except DBAPIError:
        session.rollback()


def record_success(*, session: Session, username: str, address: str) -> None:
    """A correct password clears the user name's failures and takes its own attempt back off the address's
    count (the address's earlier failures stand: one address may serve many)."""
    table = LoginThrottle.__table__  # type: ignore[attr-defined]
    session.exec(delete(LoginThrottle).where(col(LoginThrottle.key) == _name_key(session, username)))
    session.execute(update(table).where(table.c.key == _address_key("ip", address), table.c.count > 0)
                    .values(count=table.c.count - 1))
    session.commit()
