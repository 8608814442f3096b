"""Sign-in throttling (api/users/throttle.py): a rate per client address, a lockout per user name and per
address after repeated failures, answered 429 `too_many_attempts` with Retry-After; the counters live in
the database and stay exact when several processes count at once."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, literal, update
from sqlmodel import Session, select

from api.app import create_app
from api.db import make_engine, utcnow
from api.settings import Settings
from api.users import throttle
from api.users.models import LoginThrottle
from tests.utils.asserts import assert_error
from tests.utils.factories import PASSWORD, World

TOKEN = "/api/v1/auth/token"


@pytest.fixture
def limits(settings: Settings) -> Settings:
    return settings.model_copy(update={"login_max_failures": 3, "login_max_failures_per_ip": 5,
                                       "login_rate_per_minute": 12, "login_lockout_s": 600})


@pytest.fixture
def api(limits: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(limits, engine=engine), raise_server_exceptions=False) as client:
        yield client


def sign_in(client: TestClient, username: str, password: str) -> Any:
    return client.post(TOKEN, data={"username": username, "password": password})


def test_a_user_name_is_locked_after_repeated_failures_even_for_the_right_password(api: TestClient,
                                                                                    world: World) -> None:
    name = world.steward_a.username
    for _ in range(3):
        assert_error(sign_in(api, name, "wrong-password"), 401, "invalid_credentials")
    locked = sign_in(api, name, PASSWORD)
    assert_error(locked, 429, "too_many_attempts")
    assert 590 <= int(locked.headers["retry-after"]) <= 600
    # the lock is on the name: a colleague at the same address still signs in
    assert sign_in(api, world.steward_b.username, PASSWORD).status_code == 200


def test_unknown_user_names_are_locked_the_same_way(api: TestClient, world: World) -> None:
    for _ in range(3):
        assert_error(sign_in(api, "nobody", "x"), 401, "invalid_credentials")
    assert_error(sign_in(api, "nobody", "x"), 429, "too_many_attempts")  # no hint whether the name exists


def test_a_right_password_clears_the_count(api: TestClient, world: World) -> None:
    name = world.steward_a.username
    for _ in range(2):
        sign_in(api, name, "wrong-password")
    assert sign_in(api, name, PASSWORD).status_code == 200
    for _ in range(2):
        assert_error(sign_in(api, name, "wrong-password"), 401, "invalid_credentials")
    assert sign_in(api, name, PASSWORD).status_code == 200


@pytest.mark.parametrize("window_began", [timedelta(hours=1), timedelta(seconds=601)], ids=["window-over", "in-window"])
def test_the_lock_ends_after_the_lockout(api: TestClient, world: World, session: Session,
                                         window_began: timedelta) -> None:
    """`in-window`, a regression: with STEWARD_LOGIN_LOCKOUT_S (600 here) under STEWARD_LOGIN_FAILURE_WINDOW_S
    (900), the first attempt after the lock ended was one more failure in the same window and locked the name
    again, the right password too, until the whole window had passed. A lock that ended starts a new count."""
    name = world.steward_a.username
    for _ in range(3):
        sign_in(api, name, "wrong-password")
    assert sign_in(api, name, PASSWORD).status_code == 429
    session.exec(update(LoginThrottle).values(locked_until=utcnow() - timedelta(seconds=1),  # type: ignore[call-overload]
                                              window_start=utcnow() - window_began))
    session.commit()
    assert sign_in(api, name, PASSWORD).status_code == 200


def test_an_address_is_locked_after_failures_across_many_names(api: TestClient, world: World) -> None:
    for i in range(5):
        assert_error(sign_in(api, f"guess{i}", "x"), 401, "invalid_credentials")
    assert_error(sign_in(api, world.admin.username, PASSWORD), 429, "too_many_attempts")


def test_attempts_per_address_are_rate_limited(api: TestClient, world: World) -> None:
    for _ in range(12):
        assert sign_in(api, world.admin.username, PASSWORD).status_code == 200
    refused = sign_in(api, world.admin.username, PASSWORD)
    assert_error(refused, 429, "too_many_attempts")
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_an_attempt_refused_by_the_rate_does_not_move_its_lock(api: TestClient, world: World,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A regression: every attempt over the rate set its lock again, so a client that tried once more before
    the Retry-After it was given was still refused after it (and a NAT whose handhelds kept retrying never got
    in). The lock ends when the first 429 said."""
    start = utcnow()
    clock = {"now": start}
    monkeypatch.setattr(throttle, "utcnow", lambda: clock["now"])
    for _ in range(12):
        assert sign_in(api, world.admin.username, PASSWORD).status_code == 200
    first = sign_in(api, world.admin.username, PASSWORD)
    assert_error(first, 429, "too_many_attempts")
    wait = int(first.headers["retry-after"])
    clock["now"] = start + timedelta(seconds=30)
    again = sign_in(api, world.admin.username, PASSWORD)
    assert_error(again, 429, "too_many_attempts")
    assert int(again.headers["retry-after"]) == wait - 30  # the same end, not another 60 s
    clock["now"] = start + timedelta(seconds=wait + 1)
    assert sign_in(api, world.admin.username, PASSWORD).status_code == 200


def test_a_name_locks_again_after_its_first_lock_ended(limits: Settings, engine: Engine, world: World,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A regression: the row kept the ended lock's time, so every later attempt counted as the first of a new
    window: after one lockout had run out, wrong passwords on that name were verified without end."""
    clock = {"now": utcnow()}
    monkeypatch.setattr(throttle, "utcnow", lambda: clock["now"])
    name = world.steward_a.username
    per_name_only = limits.model_copy(update={"login_max_failures_per_ip": 1000})
    with TestClient(create_app(per_name_only, engine=engine), raise_server_exceptions=False) as api:
        def attempt(password: str) -> Any:
            clock["now"] += timedelta(seconds=10)  # under the per-address rate (12 a minute)
            return sign_in(api, name, password)

        for _ in range(2):
            for _ in range(3):
                assert_error(attempt("wrong-password"), 401, "invalid_credentials")
            assert_error(attempt(PASSWORD), 429, "too_many_attempts")
            clock["now"] += timedelta(seconds=601)  # the lock ends
        assert attempt(PASSWORD).status_code == 200


def test_the_rate_limits_again_after_its_first_lock_ended(api: TestClient, world: World,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A regression: after the address's first rate lock had ended, every attempt restarted its minute."""
    clock = {"now": utcnow()}
    monkeypatch.setattr(throttle, "utcnow", lambda: clock["now"])
    for _ in range(2):
        answers = [sign_in(api, world.admin.username, PASSWORD).status_code for _ in range(14)]
        assert answers == [200] * 12 + [429] * 2
        clock["now"] += timedelta(seconds=61)


def _from(app: Any) -> Any:
    """The app as a peer at the address `x-peer` names would reach it (uvicorn sets the ASGI client so)."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        peer = dict(scope.get("headers", [])).get(b"x-peer")
        if scope["type"] == "http" and peer:
            scope = {**scope, "client": (peer.decode(), 50000)}
        await app(scope, receive, send)

    return asgi


def test_an_ipv6_host_is_counted_by_its_64(limits: Settings, engine: Engine, world: World) -> None:
    """A regression: keyed by the whole address, one IPv6 host (it holds a /64, 2^64 addresses) sent each
    guess from another address and the per-address lockout never applied. Its /64 counts as one address; an
    IPv4-mapped address counts as its IPv4 one."""
    with TestClient(_from(create_app(limits, engine=engine)), raise_server_exceptions=False) as client:
        def guess(peer: str, name: str, password: str = "guess-123") -> Any:
            return client.post(TOKEN, data={"username": name, "password": password}, headers={"x-peer": peer})

        for i in range(5):
            assert_error(guess(f"2001:db8:1:2::{i + 1:x}", f"guess{i}"), 401, "invalid_credentials")
        assert_error(guess("2001:db8:1:2:ffff::9", world.admin.username, PASSWORD), 429, "too_many_attempts")
        assert guess("2001:db8:1:3::1", world.admin.username, PASSWORD).status_code == 200  # the next /64
        for i in range(5):
            assert_error(guess("::ffff:203.0.113.7" if i % 2 else "203.0.113.7", f"guess{i}"), 401,
                         "invalid_credentials")
        assert_error(guess("::ffff:203.0.113.7", world.admin.username, PASSWORD), 429, "too_many_attempts")
        # Behind a NAT64 translator each IPv4 client keeps its own count (they share one /64 there).
        for i in range(5):
            assert_error(guess("64:ff9b::c633:6407", f"guess{i}"), 401, "invalid_credentials")  # 198.51.100.7
        assert_error(guess("198.51.100.7", world.admin.username, PASSWORD), 429, "too_many_attempts")
        assert guess("64:ff9b::c633:6408", world.admin.username, PASSWORD).status_code == 200


def test_a_malformed_sign_in_is_422_and_a_nul_in_the_name_is_no_500(api: TestClient, world: World) -> None:
    assert_error(api.post(TOKEN, data={"username": "admin"}), 422, "validation_error")
    r = sign_in(api, "ad\x00min", "x")
    assert r.status_code in (401, 422), r.text  # PostgreSQL cannot hold NUL: 422; SQLite finds no such user: 401


def _fail_many(url: str, settings: dict[str, Any], times: int) -> None:
    """In another process: count `times` attempts of the same name and address."""
    worker_settings = Settings(**settings)
    engine = make_engine(worker_settings)
    try:
        for _ in range(times):
            with Session(engine) as session:
                throttle.count_attempt(session=session, settings=worker_settings, username="target",
                                       address="10.0.0.9")
    finally:
        engine.dispose()


def test_counts_are_exact_when_several_processes_count_at_once(engine: Engine, limits: Settings,
                                                              session: Session) -> None:
    """Four processes, each with its own connection pool, count 10 attempts each on the same keys at once:
    the atomic upserts lose none, and every process then sees the lock (39 allowed: the 40th locks)."""
    big = limits.model_copy(update={"login_max_failures": 39, "login_max_failures_per_ip": 1000})
    fields = {"database_url": big.database_url, "data_dir": str(big.data_dir), "secret_key": big.secret_key,
              "login_max_failures": 39, "login_max_failures_per_ip": 1000}
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [pool.submit(_fail_many, big.database_url, fields, 10) for _ in range(4)]:
            future.result(timeout=120)
    rows = {row.key: row for row in session.exec(select(LoginThrottle)).all()}
    assert rows["user:target"].count == 40 and rows["ip:10.0.0.9"].count == 40
    assert rows["user:target"].locked_until is not None and rows["user:target"].locked_until > utcnow()
    assert rows["ip:10.0.0.9"].locked_until is None
    with pytest.raises(throttle.TooManyAttempts):
        throttle.check(session=session, settings=big, username="Target", address="10.0.0.1")


def test_wrong_passwords_sent_at_the_same_time_cannot_outrun_the_lockout(api: TestClient, world: World) -> None:
    """Regression: the lock was only read before verifying and the failure counted after, so 15 guesses in
    flight at once were all verified (about 60 per address per lockout instead of 3). Each attempt now takes
    its number before its password is checked."""
    name, start = world.steward_a.username, threading.Barrier(10)
    statuses: list[int] = []

    def guess() -> None:
        start.wait()
        statuses.append(sign_in(api, name, "wrong-password").status_code)

    threads = [threading.Thread(target=guess) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [401] * 3 + [429] * 7
    assert_error(sign_in(api, name, PASSWORD), 429, "too_many_attempts")  # and the name stays locked


def test_right_passwords_do_not_lock_a_shared_address(api: TestClient, world: World) -> None:
    """Counting before verifying must not make colleagues behind one address lock it: a right password takes
    its attempt back (the rate limit of 12 a minute still applies)."""
    users = [world.steward_a, world.steward_b, world.supervisor, world.admin]
    for i in range(11):
        assert sign_in(api, users[i % 4].username, PASSWORD).status_code == 200, i
    assert_error(sign_in(api, "guess", "x"), 401, "invalid_credentials")


def test_a_spelling_the_database_reads_as_the_same_name_shares_its_lockout(api: TestClient, world: World,
                                                                           engine: Engine) -> None:
    """Regression (review): the lockout keyed names by Python's lower(), the lookup by the database's. On
    PostgreSQL `İ` (dotted capital I) lowers to `i`, so each such spelling of a name signed in as it, and had
    failures of its own to spend. Now the key is what the database's lower() makes of the name."""
    name = world.supervisor.username  # supervisor<n>: an i to spell as İ
    with Session(engine) as session:
        variant = name.replace("i", "İ", 1)
        same = session.execute(select(func.lower(literal(variant)))).scalar_one() == name.lower()
    for _ in range(3):
        assert_error(sign_in(api, name, "wrong-password"), 401, "invalid_credentials")
    if same:  # PostgreSQL under a glibc collation: one name, one lock
        assert_error(sign_in(api, variant, PASSWORD), 429, "too_many_attempts")
    assert_error(sign_in(api, name.upper(), PASSWORD), 429, "too_many_attempts")  # ASCII case, on both
