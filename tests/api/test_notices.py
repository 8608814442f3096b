"""Pre-season notices: drafting, the SMS each household gets, sending once."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from api.errors import Conflict
from api.network.models import HeatingStatus, Household
from api.notices import service
from api.notices.models import Notice, NoticeDelivery
from api.notices.sms import LoggingSender
from api.proactive.models import DeliveryStatus
from api.settings import Settings
from tests.api.proactive.helpers import SlowGateway, day_text, local
from tests.utils.asserts import assert_error, count_rows, db_state, reread
from tests.utils.factories import World, make_building, make_household, make_notice, make_station, random_id

API = "/api/v1/notices"
# A filling ten days from now, 08:30 to 18:00 Beijing time (the tests never depend on the calendar date).
FILL_START, FILL_END = local(10, 8, 30), local(10, 18)
FILL = {"water_fill_start": FILL_START.isoformat(), "water_fill_end": FILL_END.isoformat()}


def test_office_drafts_a_building_notice_with_the_default_hotline(client: TestClient, session: Session,
                                                                  world: World, settings: Settings) -> None:
    r = client.post(API, json={"target": "building", "building_id": str(world.building_a.id)} | FILL,
                    headers=world.headers(world.supervisor))
    assert r.status_code == 201, r.text
    notice = r.json()
    assert notice["service_phone"] == settings.service_phone
    assert (notice["sent_at"], notice["sent_count"], notice["title"]) == (None, 0, "供暖季前注水通知")
    assert reread(session, Notice, notice["id"]).created_by_id == world.supervisor.id


def test_notice_target_and_window_are_validated(client: TestClient, session: Session, world: World) -> None:
    ids = {"B": str(world.building_a.id), "S": str(world.station.id)}
    for body in ({"target": "building", "station_id": "S"},
                 {"target": "station", "building_id": "B"},
                 {"target": "building", "building_id": "B", "station_id": "S"},
                 {"target": "building", "building_id": "B", "water_fill_end": FILL["water_fill_start"]},
                 {"target": "tower", "building_id": "B"}):
        payload = FILL | {k: ids.get(v, v) for k, v in body.items()}
        r = client.post(API, json=payload, headers=world.headers(world.supervisor))
        assert_error(r, 422, "validation_error")
    assert count_rows(session, Notice) == 0


@pytest.mark.parametrize("target", ["building", "station"])
def test_notice_for_a_missing_target_is_404(client: TestClient, session: Session, world: World,
                                            target: str) -> None:
    r = client.post(API, json={"target": target, f"{target}_id": random_id()} | FILL,
                    headers=world.headers(world.supervisor))
    assert_error(r, 404, "not_found")
    assert count_rows(session, Notice) == 0


def test_each_household_gets_its_own_text(client: TestClient, session: Session, world: World) -> None:
    b = world.building_a
    make_household(session, b, unit="2", room="101", resident_name="", phone=None)
    make_household(session, b, unit="2", room="102", resident_name="刘振东", heating_status=HeatingStatus.suspended)
    notice = make_notice(session, b, water_fill_start=FILL_START, water_fill_end=FILL_END, service_phone="96999")
    r = client.get(f"{API}/{notice.id}/messages", headers=world.headers(world.supervisor))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["notice_id"] == str(notice.id) and body["count"] == 3 == len(body["data"])
    by_room = {m["text"].split("（")[1].split("）")[0]: m for m in body["data"]}
    hh = world.household_a
    mine = by_room[f"{b.community}{b.number}号楼{hh.unit}单元{hh.room}室"]
    assert mine["household_id"] == str(hh.id) and mine["phone"] == hh.phone
    # Beijing time, whatever zone the times were given in (00:30Z is 08:30).
    assert mine["text"].startswith(f"【供暖季前注水通知】尊敬的{hh.resident_name}住户（")
    assert f"{day_text(FILL_START)}至{day_text(FILL_END)}注水试压" in mine["text"] and "08:30至" in mine["text"]
    assert "排气阀" in mine["text"] and "96999" in mine["text"] and "停暖" not in mine["text"]
    nameless = by_room[f"{b.community}{b.number}号楼2单元101室"]
    assert nameless["phone"] is None and "尊敬的住户（" in nameless["text"]
    suspended = by_room[f"{b.community}{b.number}号楼2单元102室"]
    assert "您家已办理停暖" in suspended["text"] and "阀门保持关闭" in suspended["text"]
    assert "排气阀" not in suspended["text"] and "96999" in suspended["text"]


def test_a_station_notice_reaches_every_building_it_feeds(client: TestClient, session: Session,
                                                          world: World) -> None:
    elsewhere = make_household(session, make_building(session, make_station(session)))
    notice = make_notice(session, station=world.station)
    r = client.get(f"{API}/{notice.id}/messages", headers=world.headers(world.admin)).json()
    assert r["count"] == 2
    assert {m["household_id"] for m in r["data"]} == {str(world.household_a.id), str(world.household_b.id)}
    assert str(elsewhere.id) not in {m["household_id"] for m in r["data"]}


def test_a_notices_messages_come_a_page_at_a_time(client: TestClient, session: Session, settings: Settings,
                                                 world: World) -> None:
    """Regression: a station's notice rendered every household's SMS in one answer (tens of thousands of
    homes), and `limit` was refused. The messages are paged like every list, by address."""
    client.app.state.settings = settings.model_copy(update={"page_max_limit": 20})  # type: ignore[attr-defined]
    for n in range(25):
        make_household(session, world.building_a, unit="9", room=f"{100 + n}")
    notice = make_notice(session, station=world.station)
    h = world.headers(world.supervisor)
    assert_error(client.get(f"{API}/{notice.id}/messages", params={"limit": 21}, headers=h), 422,
                 "validation_error")
    pages = [client.get(f"{API}/{notice.id}/messages", params={"offset": o, "limit": 20}, headers=h).json()
             for o in (0, 20)]
    assert [p["count"] for p in pages] == [27, 27] and [len(p["data"]) for p in pages] == [20, 7]
    ids = [m["household_id"] for p in pages for m in p["data"]]
    assert len(set(ids)) == 27  # every household once, none twice across the pages


def test_send_texts_every_household_with_a_phone_once(client: TestClient, session: Session, world: World,
                                                      sms: LoggingSender) -> None:
    make_household(session, world.building_a, phone=None)
    suspended = make_household(session, world.building_a, phone="13900000009",
                               heating_status=HeatingStatus.suspended)
    notice = make_notice(session, world.building_a)
    h = world.headers(world.supervisor)
    r = client.post(f"{API}/{notice.id}/send", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["sent_count"] == 2 and r.json()["sent_at"] is not None
    assert sorted(phone for phone, _ in sms.sent) == [world.household_a.phone, suspended.phone]
    texts = dict(sms.sent)
    assert "已办理停暖" in texts[str(suspended.phone)] and "已办理停暖" not in texts[str(world.household_a.phone)]
    row = reread(session, Notice, notice.id)
    assert (row.sent_count, row.version) == (2, 3)  # marked sent, then counted

    again = client.post(f"{API}/{notice.id}/send", headers=h)
    assert_error(again, 409, "already_sent")
    assert len(sms.sent) == 2 and reread(session, Notice, notice.id).version == 3

    # A resend reaches only households not reached yet: here, none.
    resent = client.post(f"{API}/{notice.id}/send", params={"resend": "true"}, headers=h)
    assert resent.status_code == 200 and resent.json()["sent_count"] == 2
    assert len(sms.sent) == 2


def test_stewards_cannot_render_or_send(client: TestClient, session: Session, world: World,
                                        sms: LoggingSender) -> None:
    notice = make_notice(session, world.building_a)
    before = db_state(session)
    h = world.headers(world.steward_a)
    assert client.get(f"{API}/{notice.id}", headers=h).status_code == 200
    assert_error(client.get(f"{API}/{notice.id}/messages", headers=h), 403, "role_required")
    assert_error(client.post(f"{API}/{notice.id}/send", headers=h), 403, "role_required")
    assert sms.sent == [] and db_state(session) == before


def test_list_notices_filters_newest_first(client: TestClient, session: Session, world: World) -> None:
    first = make_notice(session, world.building_a)
    second = make_notice(session, world.building_b)
    third = make_notice(session, station=world.station)
    h = world.headers(world.supervisor)
    r = client.get(API, headers=h).json()
    assert r["count"] == 3 and [n["id"] for n in r["data"]] == [str(third.id), str(second.id), str(first.id)]
    r = client.get(API, params={"building_id": str(world.building_a.id)}, headers=h).json()
    assert r["count"] == 1 and r["data"][0]["id"] == str(first.id)
    r = client.get(API, params={"station_id": str(world.station.id)}, headers=h).json()
    assert r["count"] == 1 and r["data"][0]["id"] == str(third.id)


def test_missing_notices_are_404(client: TestClient, world: World, sms: LoggingSender) -> None:
    h = world.headers(world.supervisor)
    for method, suffix in (("GET", ""), ("GET", "/messages"), ("POST", "/send")):
        assert_error(client.request(method, f"{API}/{random_id()}{suffix}", headers=h), 404, "not_found")
    assert sms.sent == []


def test_two_racing_sends_text_residents_once(client: TestClient, session: Session, world: World, engine: Engine,
                                              settings: Settings, sms: LoggingSender) -> None:
    """Regression: `sent_at` was checked on the row as first read, so a second send racing the first
    passed the check and every resident got the notice twice."""
    notice = make_notice(session, world.building_a)
    with Session(engine, expire_on_commit=False) as other:
        stale = other.get(Notice, notice.id)
        assert stale is not None and stale.sent_at is None
        assert client.post(f"{API}/{notice.id}/send", headers=world.headers(world.supervisor)).status_code == 200
        with pytest.raises(Conflict) as caught:
            service.send(session=other, settings=settings, sender=sms, notice=stale)
        assert caught.value.code == "already_sent"
    assert len(sms.sent) == 1
    assert reread(session, Notice, notice.id).version == 3


def test_notice_times_outside_a_sane_range_are_422(client: TestClient, world: World) -> None:
    r = client.post(API, json={"target": "building", "building_id": str(world.building_a.id),
                                            "water_fill_start": "9999-12-30T08:00:00+08:00",
                                            "water_fill_end": "9999-12-31T08:00:00+08:00"},
                    headers=world.headers(world.supervisor))
    assert_error(r, 422, "validation_error")


class _Gated:
    """Accepts every message; the first one waits until `release` is set (so two sends overlap for sure)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()

    def send(self, phone: str, text: str) -> bool:
        self.calls.append(phone)
        if len(self.calls) == 1:
            self.release.wait(5)
        return True


def test_two_sends_at_once_text_residents_once(session: Session, world: World, engine: Engine,
                                               settings: Settings) -> None:
    """Regression: the `sent_at` check relied on SELECT ... FOR UPDATE, which SQLite ignores: two sends at
    once both passed it and every resident got the notice twice."""
    notice = make_notice(session, station=world.station)
    sender = _Gated()
    barrier = threading.Barrier(2)
    results: list[str] = []

    def one() -> None:
        with Session(engine, expire_on_commit=False) as other:
            row = other.get(Notice, notice.id)
            assert row is not None
            barrier.wait()
            try:
                service.send(session=other, settings=settings, sender=sender, notice=row)
                results.append("sent")
            except Conflict as exc:
                results.append(exc.code)
            finally:
                sender.release.set()

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["already_sent", "sent"]
    assert Counter(sender.calls) == {world.household_a.phone: 1, world.household_b.phone: 1}
    assert reread(session, Notice, notice.id).sent_count == 2


def _deliveries(session: Session, notice: Notice, status: DeliveryStatus | None = None) -> list[NoticeDelivery]:
    session.expire_all()
    stmt = select(NoticeDelivery).where(NoticeDelivery.notice_id == notice.id)
    return list(session.exec(stmt.where(NoticeDelivery.status == status) if status else stmt).all())


class _Flaky:
    """Refuses the phones in `bad`, raises for those in `broken`, accepts the rest."""

    def __init__(self, bad: set[str | None] = frozenset(), broken: set[str | None] = frozenset()) -> None:
        self.bad, self.broken = set(bad), set(broken)
        self.calls: list[str] = []

    def send(self, phone: str, text: str) -> bool:
        self.calls.append(phone)
        if phone in self.broken:
            raise RuntimeError("modem on fire")
        return phone not in self.bad


def test_a_failed_notice_sms_is_recorded_and_retried_never_repeated(client: TestClient, session: Session,
                                                                   world: World, settings: Settings) -> None:
    """Regression: a refused SMS was only left out of `sent_count` (nothing retried it) and `resend=true`
    texted everyone again."""
    settings.proactive_sms_retry_backoff_s = 0
    notice = make_notice(session, station=world.station)
    a, b = world.household_a.phone, world.household_b.phone
    flaky = _Flaky(bad={b})
    client.app.state.sms_sender = flaky  # type: ignore[attr-defined]
    h = world.headers(world.supervisor)
    r = client.post(f"{API}/{notice.id}/send", headers=h)
    assert r.status_code == 200 and r.json()["sent_count"] == 1
    assert [(d.phone, d.attempts, d.reason) for d in _deliveries(session, notice, DeliveryStatus.failed)] == [
        (b, 1, "the SMS sender refused the message")]
    # the office sees who was not reached and why
    listed = client.get(f"{API}/{notice.id}/deliveries", params={"status": "failed"}, headers=h).json()
    assert [(d["phone"], d["reason"]) for d in listed["data"]] == [(b, "the SMS sender refused the message")]
    assert client.get(f"{API}/{notice.id}/deliveries", headers=h).json()["count"] == 2
    assert_error(client.get(f"{API}/{notice.id}/deliveries", headers=world.headers(world.steward_a)), 403,
                 "role_required")
    # The evaluation run retries it once its time has come; A is never texted again.
    flaky.bad.clear()
    report = client.post("/api/v1/proactive/run", headers=h).json()
    assert (report["deliveries_sent"], report["deliveries_failed"]) == (1, 0)
    assert reread(session, Notice, notice.id).sent_count == 2
    resent = client.post(f"{API}/{notice.id}/send", params={"resend": "true"}, headers=h)
    assert resent.status_code == 200 and resent.json()["sent_count"] == 2
    assert Counter(flaky.calls) == {a: 1, b: 2}


def test_a_sender_that_raises_fails_one_message_not_the_notice(client: TestClient, session: Session, world: World,
                                                               settings: Settings) -> None:
    """Regression: an exception from the sender answered 500 after some residents were texted, and left
    `sent_at` empty, so the next send texted them again."""
    settings.proactive_sms_max_attempts = 1
    notice = make_notice(session, station=world.station)
    a, b = world.household_a.phone, world.household_b.phone
    flaky = _Flaky(broken={a})
    client.app.state.sms_sender = flaky  # type: ignore[attr-defined]
    h = world.headers(world.supervisor)
    r = client.post(f"{API}/{notice.id}/send", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["sent_count"] == 1 and r.json()["sent_at"] is not None
    assert_error(client.post(f"{API}/{notice.id}/send", headers=h), 409, "already_sent")
    failed = _deliveries(session, notice, DeliveryStatus.failed)
    assert len(failed) == 1 and "modem on fire" in str(failed[0].reason) and failed[0].next_attempt_at is None
    # Out of tries: only a resend tries it again, and only it.
    flaky.broken.clear()
    r = client.post(f"{API}/{notice.id}/send", params={"resend": "true"}, headers=h)
    assert r.status_code == 200 and r.json()["sent_count"] == 2
    assert Counter(flaky.calls) == {a: 2, b: 1}


def test_a_corrected_phone_gets_the_notice_on_resend(client: TestClient, session: Session, world: World,
                                                     settings: Settings) -> None:
    settings.proactive_sms_max_attempts = 1
    notice = make_notice(session, world.building_b)
    flaky = _Flaky(bad={world.household_b.phone})
    client.app.state.sms_sender = flaky  # type: ignore[attr-defined]
    h = world.headers(world.supervisor)
    assert client.post(f"{API}/{notice.id}/send", headers=h).json()["sent_count"] == 0
    world.household_b.phone = "13900009999"
    session.add(world.household_b)
    session.commit()
    r = client.post(f"{API}/{notice.id}/send", params={"resend": "true"}, headers=h)
    assert r.json()["sent_count"] == 1 and flaky.calls == ["13800000002", "13900009999"]
    assert [(d.phone, d.status, d.attempts) for d in _deliveries(session, notice)] == [
        ("13900009999", DeliveryStatus.sent, 1)]


def test_a_notice_marked_sent_by_a_process_that_died_is_sent_by_the_periodic_run(
        session: Session, world: World, settings: Settings, sms: LoggingSender) -> None:
    """Regression: `sent_at` commits before the deliveries are planned. A process that died in between left a
    notice marked sent with nobody to text: the periodic run only retried existing deliveries, and a plain
    send answered 409 already_sent."""
    notice = make_notice(session, world.building_a)
    assert service._mark_sent(session, notice, datetime.now(UTC))  # and then the process died
    assert count_rows(session, NoticeDelivery) == 0
    assert service.send_due(session=session, settings=settings, sender=sms) == (1, 0)
    assert [phone for phone, _ in sms.sent] == [world.household_a.phone]
    assert service.send_due(session=session, settings=settings, sender=sms) == (0, 0)  # once


class _Killed(BaseException):
    """The process dies while the gateway call is in flight (a deploy's SIGKILL, an OOM kill)."""


class _Refusing:
    def send(self, phone: str, text: str) -> bool:
        return False


class _Dying:
    def send(self, phone: str, text: str) -> bool:
        raise _Killed


def test_a_last_try_cut_off_by_a_dead_process_is_sent_after_its_hold(session: Session, world: World,
                                                                     settings: Settings, sms: LoggingSender) -> None:
    """Regression: the claim of the last try left a `failed` row with every try counted and a hold, which
    neither the periodic run (tries left?) nor a resend (no retry time?) ever picked up: if the process died
    during that try, the household was never texted. The claim now marks the row queued."""
    settings = settings.model_copy(update={"proactive_sms_max_attempts": 2, "proactive_sms_retry_backoff_s": 60})
    notice = make_notice(session, world.building_a)
    now = datetime.now(UTC)
    service.send(session=session, settings=settings, sender=_Refusing(), notice=notice, now=now)  # try 1 fails
    with pytest.raises(_Killed):  # try 2, the last, is claimed, then the process dies
        service.send_due(session=session, settings=settings, sender=_Dying(), now=now + timedelta(minutes=5))
    session.rollback()
    row = session.exec(select(NoticeDelivery).where(NoticeDelivery.notice_id == notice.id)).one()
    assert (row.status, row.attempts) == (DeliveryStatus.queued, 2)  # held for the sender that claimed it
    assert service.send_due(session=session, settings=settings, sender=sms, now=now + timedelta(minutes=30)) == (0, 0)
    assert service.send_due(session=session, settings=settings, sender=sms, now=now + timedelta(hours=2)) == (1, 0)
    assert [phone for phone, _ in sms.sent] == [world.household_a.phone]
    assert reread(session, NoticeDelivery, row.id).status == DeliveryStatus.sent


def test_the_periodic_run_does_not_plan_notices_that_reached_households_or_are_old(
        session: Session, world: World, settings: Settings, sms: LoggingSender) -> None:
    """Regression: notices sent before migration 0009 have no delivery rows; the recovery of a crashed send
    took them for unplanned and texted every household again. Only a notice that reached nobody, marked sent
    within a day, is planned."""
    now = datetime.now(UTC)
    old = make_notice(session, world.building_a)
    assert service._mark_sent(session, old, now - timedelta(days=40))
    reached = make_notice(session, world.building_a)
    assert service._mark_sent(session, reached, now - timedelta(hours=1))
    reached.sent_count = 3  # what a send before 0009 recorded
    session.add(reached)
    session.commit()
    assert service.send_due(session=session, settings=settings, sender=sms) == (0, 0)
    assert sms.sent == [] and count_rows(session, NoticeDelivery) == 0


def test_a_notice_whose_filling_is_over_is_refused(client: TestClient, session: Session, world: World,
                                                   sms: LoggingSender) -> None:
    """Regression: a notice for a filling already over was drafted and sent; residents were texted last season's
    dates (the SMS gives no year) as if they were ahead."""
    h = world.headers(world.supervisor)
    target = {"target": "building", "building_id": str(world.building_a.id)}
    over = {"water_fill_start": local(-400, 8).isoformat(), "water_fill_end": local(-400, 17).isoformat()}
    just_over = {"water_fill_start": (datetime.now(UTC) - timedelta(hours=9)).isoformat(),
                 "water_fill_end": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()}
    for window in (over, just_over):
        assert_error(client.post(API, json=target | window, headers=h), 422, "fill_window_past")
    r = client.post(API, json=target | over, headers=h)
    assert f"{local(-400, 17):%Y-%m-%d %H:%M}" in r.json()["detail"]["message"]  # when it ended, with the year
    assert count_rows(session, Notice) == 0
    # Under way (started, not ended) is still worth telling.
    under_way = {"water_fill_start": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
                 "water_fill_end": (datetime.now(UTC) + timedelta(hours=7)).isoformat()}
    assert client.post(API, json=target | under_way, headers=h).status_code == 201


def test_a_notice_window_of_years_or_a_filling_a_year_ahead_is_refused(client: TestClient, session: Session,
                                                                        world: World) -> None:
    """Regression: a filling that began decades ago and ends tomorrow, or one more than a season ahead, was
    drafted; its SMS, which gives the dates without a year, read as this autumn's."""
    h = world.headers(world.supervisor)
    target = {"target": "building", "building_id": str(world.building_a.id)}
    decades = {"water_fill_start": "2001-10-01T08:00:00+08:00", "water_fill_end": local(1, 17).isoformat()}
    assert_error(client.post(API, json=target | decades, headers=h), 422, "validation_error")
    far = {"water_fill_start": local(400, 8).isoformat(), "water_fill_end": local(401, 17).isoformat()}
    r = client.post(API, json=target | far, headers=h)
    assert_error(r, 422, "fill_window_far")
    assert f"{local(400, 8):%Y-%m-%d}" in r.json()["detail"]["message"]
    assert count_rows(session, Notice) == 0
    weeks = {"water_fill_start": local(30, 8).isoformat(), "water_fill_end": local(80, 17).isoformat()}
    assert client.post(API, json=target | weeks, headers=h).status_code == 201


def test_a_notice_is_not_sent_or_resent_once_its_filling_is_over(client: TestClient, session: Session, world: World,
                                                                 settings: Settings, sms: LoggingSender) -> None:
    """A draft (or an older notice) whose filling ended meanwhile: send and resend are refused, nothing moves."""
    h = world.headers(world.supervisor)
    now = datetime.now(UTC)
    stale = make_notice(session, world.building_a, water_fill_start=now - timedelta(days=2),
                        water_fill_end=now - timedelta(days=2) + timedelta(hours=8))
    before = db_state(session)
    for params in ({}, {"resend": "true"}):
        assert_error(client.post(f"{API}/{stale.id}/send", params=params, headers=h), 422, "fill_window_past")
    assert sms.sent == [] and db_state(session) == before
    assert reread(session, Notice, stale.id).sent_at is None


def test_retries_stop_once_the_filling_is_over(client: TestClient, session: Session, world: World,
                                               settings: Settings) -> None:
    """Regression: the periodic run retried a failed notice SMS until it went through, after the filling."""
    settings.proactive_sms_retry_backoff_s = 0
    notice = make_notice(session, station=world.station)
    a, b = world.household_a.phone, world.household_b.phone
    flaky = _Flaky(bad={b})
    client.app.state.sms_sender = flaky  # type: ignore[attr-defined]
    assert client.post(f"{API}/{notice.id}/send", headers=world.headers(world.supervisor)).json()["sent_count"] == 1
    flaky.bad.clear()
    after = notice.water_fill_end + timedelta(minutes=1)
    session.expire_all()  # the send above was another session's
    assert service.send_due(session=session, settings=settings, sender=flaky, now=after) == (0, 0)
    assert Counter(flaky.calls) == {a: 1, b: 1}  # B was not texted about a filling that is over
    [row] = _deliveries(session, notice, DeliveryStatus.skipped)
    assert (row.phone, row.reason, row.next_attempt_at) == (b, "event_passed", None)
    assert service.send_due(session=session, settings=settings, sender=flaky, now=after) == (0, 0)
    assert len(flaky.calls) == 2 and reread(session, Notice, notice.id).sent_count == 1


class _Texts(_Flaky):
    """`_Flaky` that also keeps each message's text."""

    def __init__(self, bad: set[str | None]) -> None:
        super().__init__(bad)
        self.texts: list[tuple[str, str]] = []

    def send(self, phone: str, text: str) -> bool:
        self.texts.append((phone, text))
        return super().send(phone, text)


def test_a_retry_follows_the_household_as_it_is_now(client: TestClient, session: Session, world: World,
                                                     settings: Settings) -> None:
    """Regression: the evaluation run retried with the phone and text of the first send: it texted the number
    the office had removed (with the resident's name and address), and a home suspended since with the
    normal wording."""
    settings.proactive_sms_retry_backoff_s = 0
    h = world.headers(world.supervisor)
    removed, suspended = make_notice(session, world.building_b), make_notice(session, world.building_a)
    old_b, phone_a = world.household_b.phone, world.household_a.phone
    flaky = _Texts({old_b, phone_a})
    client.app.state.sms_sender = flaky  # type: ignore[attr-defined]
    for notice in (removed, suspended):
        assert client.post(f"{API}/{notice.id}/send", headers=h).json()["sent_count"] == 0
    assert client.patch(f"/api/v1/households/{world.household_b.id}", json={"phone": None}, headers=h).is_success
    assert client.patch(f"/api/v1/households/{world.household_a.id}", json={"heating_status": "suspended"},
                        headers=h).is_success
    flaky.bad.clear()
    assert client.post("/api/v1/proactive/run", headers=h).is_success
    assert flaky.calls.count(old_b) == 1
    assert "您家已办理停暖" in [t for p, t in flaky.texts if p == phone_a][-1]
    skipped = client.get(f"{API}/{removed.id}/deliveries", params={"status": "skipped"}, headers=h).json()
    assert [d["reason"] for d in skipped["data"]] == ["no_phone"]


def test_a_send_cut_off_before_its_count_is_counted_by_the_next_run(client: TestClient, session: Session,
                                                                     world: World, settings: Settings,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a process killed after the last SMS of a send and before its recount left `sent_count` 0
    for good: nothing was due any more, so no run came back to the notice."""
    from api.notices import deliveries

    class Killed(BaseException):
        pass

    notice = make_notice(session, station=world.station)
    sms, real, done = LoggingSender(), deliveries.send_one, []

    def send_one(*args: object, **kw: object) -> object:
        done.append(real(*args, **kw))  # type: ignore[arg-type]
        if len(done) == 2:
            raise Killed()
        return done[-1]

    monkeypatch.setattr(deliveries, "send_one", send_one)
    with pytest.raises(Killed):
        service.send(session=session, settings=settings, sender=sms, notice=reread(session, Notice, notice.id))
    monkeypatch.undo()
    h = world.headers(world.supervisor)
    assert client.post("/api/v1/proactive/run", headers=h).is_success
    assert client.get(f"{API}/{notice.id}", headers=h).json()["sent_count"] == 2 == len(sms.sent)


def test_a_gateway_that_drops_repeated_refs_still_texts_a_corrected_number(session: Session, world: World,
                                                                            settings: Settings) -> None:
    """Regression: `ref` was the delivery's id, kept when the office corrected the number: a gateway that
    drops repeats of a ref (what the docs advise after a timeout) dropped the message to the right number."""
    import json

    import httpx

    from api.notices.sms import HttpSender

    seen: set[str] = set()
    delivered: list[str] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.read())
        if body["ref"] in seen:
            return httpx.Response(200, json={"ok": True, "duplicate": True})
        seen.add(body["ref"])
        delivered.append(body["phone"])
        raise httpx.ReadTimeout("slow answer", request=request)  # taken, but the answer came too late

    sender = HttpSender("http://gw/sms", "k", transport=httpx.MockTransport(gateway))
    notice = make_notice(session, world.building_a)
    service.send(session=session, settings=settings, sender=sender, notice=reread(session, Notice, notice.id))
    failed = session.exec(select(NoticeDelivery).where(NoticeDelivery.notice_id == notice.id)).one()
    assert failed.status == DeliveryStatus.failed and "timed out" in (failed.reason or "")
    world.household_a.phone = "13900009999"
    session.add(world.household_a)
    session.commit()
    service.send(session=session, settings=settings, sender=sender, notice=reread(session, Notice, notice.id),
                 resend=True)
    assert "13900009999" in delivered


@pytest.mark.parametrize("extra", [{"service_phone": " "}, {"service_phone": "call us"}, {"title": "   "},
                                   {"title": "\u200b"}, {"bleed_instructions": "   "},
                                   {"bleed_instructions": "\u200b\u200d"}])
def test_a_blank_title_or_hotline_is_refused(client: TestClient, session: Session, world: World,
                                             extra: dict[str, str]) -> None:
    """Regression: accepted, they went into every SMS ("请拨打供暖服务热线 。"); so did blank bleeding
    instructions (left out, the default text is used)."""
    body = {"target": "building", "building_id": str(world.building_a.id)} | FILL | extra
    assert_error(client.post(API, json=body, headers=world.headers(world.supervisor)), 422, "validation_error")
    assert count_rows(session, Notice) == 0


def test_no_retry_texts_residents_in_the_quiet_hours(session: Session, world: World, settings: Settings) -> None:
    """Regression: the periodic run retried failed SMS at any hour (a resident texted at 03:00). With
    STEWARD_SMS_QUIET_HOURS the retry waits for the morning; the office's own send goes at once."""
    from api.proactive import service as proactive

    quiet = settings.model_copy(update={"sms_quiet_hours": "21:00-08:00", "proactive_sms_retry_backoff_s": 0})
    notice = make_notice(session, world.building_a, water_fill_start=local(10, 8), water_fill_end=local(10, 17))
    flaky = _Flaky(bad={world.household_a.phone})
    service.send(session=session, settings=quiet, sender=flaky, notice=reread(session, Notice, notice.id),
                 now=local(1, 23, 50))  # the office sends at night: it goes (and fails)
    assert flaky.calls == [world.household_a.phone]
    flaky.bad.clear()
    proactive.run(session=session, settings=quiet, sender=flaky, now=local(2, 3, 0))
    assert len(flaky.calls) == 1  # 03:00: held
    proactive.run(session=session, settings=quiet, sender=flaky, now=local(2, 8, 30))
    assert len(flaky.calls) == 2 and reread(session, Notice, notice.id).sent_count == 1
    assert not proactive.quiet_hours(quiet, local(2, 12, 0)) and proactive.quiet_hours(quiet, local(2, 21, 0))
    assert not proactive.quiet_hours(settings, local(2, 3, 0))  # none by default


def test_a_long_retry_run_of_a_notice_stops_at_the_quiet_hours_and_at_the_fillings_end(
        session: Session, world: World, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): the periodic run asked once, at its start, whether it was in the quiet hours and
    whether the filling was over; a backlog on a slow gateway texted on past 21:00 and past the filling's
    end. Both are asked before each SMS."""
    from api.db import utcnow as real_utcnow
    from api.notices import deliveries
    from api.proactive import service as proactive

    for i in range(6):
        make_household(session, world.building_a, unit="8", room=f"80{i}", phone=f"1370000000{i}")
    quiet = settings.model_copy(update={"sms_quiet_hours": "21:00-08:00", "proactive_sms_retry_backoff_s": 0})
    offset = {"t": timedelta(0)}
    monkeypatch.setattr(deliveries, "utcnow", lambda: real_utcnow() + offset["t"])

    def backlog(end: datetime, failed_at: datetime) -> Notice:
        notice = make_notice(session, world.building_a, water_fill_start=end - timedelta(hours=9), water_fill_end=end)
        service.send(session=session, settings=quiet, sender=_Flaky(bad=set(_phones(session, world))),
                     notice=reread(session, Notice, notice.id), now=failed_at)
        return notice

    first = backlog(local(10, 17), local(3, 15))
    gateway = SlowGateway(local(3, 20, 58), offset)
    proactive.run(session=session, settings=quiet, sender=gateway, now=gateway.start)
    assert len(gateway.at) == 2 and not any(proactive.quiet_hours(quiet, at) for at in gateway.at)
    assert reread(session, Notice, first.id).sent_count == 2  # the rest still due, for the morning
    for row in session.exec(select(NoticeDelivery).where(NoticeDelivery.notice_id == first.id)).all():
        session.delete(row)
    session.delete(reread(session, Notice, first.id))
    session.commit()

    offset["t"] = timedelta(0)
    second = backlog(local(12, 17), local(12, 10))
    gateway = SlowGateway(local(12, 16, 58), offset)
    proactive.run(session=session, settings=quiet, sender=gateway, now=gateway.start)
    assert len(gateway.at) == 2 and all(at < local(12, 17) for at in gateway.at)
    rows = session.exec(select(NoticeDelivery).where(NoticeDelivery.notice_id == second.id)).all()
    assert {r.reason for r in rows if r.status == DeliveryStatus.skipped} == {"event_passed"}
    assert not [r for r in rows if r.status == DeliveryStatus.failed]


def test_a_retry_run_keeps_one_clock_from_notice_to_notice(
        session: Session, world: World, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A regression (review): each notice of the periodic run started its clock again at the run's start. A
    backlog on a slow gateway from 20:57 stopped at 21:00 in the first notice, and the second texted residents
    at 21:00, 21:01, 21:02; from 16:57, the second announced a filling that had ended at 17:00 as to come."""
    from api.db import utcnow as real_utcnow
    from api.notices import deliveries
    from api.proactive import service as proactive

    for i in range(3):
        make_household(session, world.building_a, unit="8", room=f"80{i}", phone=f"1370000000{i}")
    quiet = settings.model_copy(update={"sms_quiet_hours": "21:00-08:00", "proactive_sms_retry_backoff_s": 0})
    offset = {"t": timedelta(0)}
    monkeypatch.setattr(deliveries, "utcnow", lambda: real_utcnow() + offset["t"])

    def backlogs(end: datetime, failed_at: datetime) -> list[Notice]:
        """Two notices whose first send failed for every household (more than three each)."""
        out = []
        for _ in range(2):
            notice = make_notice(session, world.building_a, water_fill_start=end - timedelta(hours=9),
                                 water_fill_end=end)
            service.send(session=session, settings=quiet, sender=_Flaky(bad=set(_phones(session, world))),
                         notice=reread(session, Notice, notice.id), now=failed_at)
            out.append(notice)
        return out

    evening = backlogs(local(10, 17), local(3, 15))
    gateway = SlowGateway(local(3, 20, 57), offset)
    proactive.run(session=session, settings=quiet, sender=gateway, now=gateway.start)
    assert len(gateway.at) == 3 and not any(proactive.quiet_hours(quiet, at) for at in gateway.at)
    assert sorted(reread(session, Notice, n.id).sent_count for n in evening) == [0, 3]  # the rest wait

    offset["t"] = timedelta(0)
    ending = backlogs(local(12, 17), local(12, 10))
    gateway = SlowGateway(local(12, 16, 57), offset)
    proactive.run(session=session, settings=quiet, sender=gateway, now=gateway.start)
    assert len(gateway.at) == 3 and all(at < local(12, 17) for at in gateway.at)
    rows = session.exec(select(NoticeDelivery).where(col(NoticeDelivery.notice_id).in_([n.id for n in ending]))).all()
    assert {r.reason for r in rows if r.status == DeliveryStatus.skipped} == {"event_passed"}
    assert not [r for r in rows if r.status == DeliveryStatus.failed]


def _phones(session: Session, world: World) -> list[str]:
    return [p for p in session.exec(select(Household.phone).where(Household.building_id == world.building_a.id))
            if p is not None]


def test_a_resend_does_not_text_a_final_failure_the_notice_no_longer_reaches(
        client: TestClient, session: Session, world: World, settings: Settings) -> None:
    """Regression: a household whose SMS had failed for good and whose building then moved to another station
    kept its `failed` row (only rows still due were given up), and `resend=true` texted it the old station's
    dates."""
    settings.proactive_sms_max_attempts = 1  # one refusal is final
    notice = make_notice(session, station=world.station)
    b = world.household_b.phone
    flaky = _Flaky(bad={b})
    client.app.state.sms_sender = flaky  # type: ignore[attr-defined]
    office = world.headers(world.supervisor)
    assert client.post(f"{API}/{notice.id}/send", headers=office).status_code == 200
    assert flaky.calls.count(b) == 1
    other = make_station(session, name="东郊换热站")
    moved = client.patch(f"/api/v1/buildings/{world.building_b.id}", json={"station_id": str(other.id)},
                         headers=office)
    assert moved.status_code == 200, moved.text
    flaky.bad.clear()
    assert client.post(f"{API}/{notice.id}/send", params={"resend": "true"}, headers=office).status_code == 200
    assert flaky.calls.count(b) == 1  # not texted again
    row = session.exec(select(NoticeDelivery).where(NoticeDelivery.notice_id == notice.id,
                                                    NoticeDelivery.household_id == world.household_b.id)).one()
    session.refresh(row)
    assert (row.status, row.reason) == (DeliveryStatus.skipped, "not_targeted")


def test_two_resends_after_a_corrected_number_text_it_once(session: Session, world: World, engine: Engine,
                                                             settings: Settings, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Regression: a plan wrote the changes it had worked out from its own read of the deliveries, whatever had
    happened to them since. Notices have no send lease, so two resends (or the evaluation runs of several
    server processes) plan at once: the one that read first re-queued, with no attempts, the delivery the other
    had just sent to the corrected number, and sent it again."""
    settings.proactive_sms_max_attempts = 1
    notice = make_notice(session, world.building_b)
    flaky = _Flaky(bad={world.household_b.phone})
    service.send(session=session, settings=settings, sender=flaky, notice=reread(session, Notice, notice.id))
    world.household_b.phone = "13900009999"
    session.add(world.household_b)
    session.commit()
    flaky.bad.clear()
    render, other_ran = service.messages, []

    def render_while_another_resends(**kw: object) -> object:
        out = render(**kw)  # type: ignore[arg-type]
        if not other_ran:  # the second resend runs whole while the first renders its messages
            other_ran.append(True)
            with Session(engine, expire_on_commit=False) as other:
                service.send(session=other, settings=settings, sender=flaky, notice=reread(other, Notice, notice.id),
                             resend=True)
        return out

    monkeypatch.setattr(service, "messages", render_while_another_resends)
    with Session(engine, expire_on_commit=False) as first:
        service.send(session=first, settings=settings, sender=flaky, notice=reread(first, Notice, notice.id),
                     resend=True)
    assert other_ran and flaky.calls == ["13800000002", "13900009999"]
    assert [(d.phone, d.status, d.attempts) for d in _deliveries(session, notice)] == [
        ("13900009999", DeliveryStatus.sent, 1)]
    assert reread(session, Notice, notice.id).sent_count == 1


def test_a_gateway_error_page_with_nul_characters_fails_one_message_not_the_send(
        client: TestClient, session: Session, world: World) -> None:
    """Regression: the reason of a failure quotes the gateway's answer, and one in UTF-16 (or binary) carries NUL
    characters, which a text column refuses. The result's commit failed: the send answered 422
    `validation_error` after the first refusal, the rest of the notice was not sent, and the refused delivery
    stayed held (`queued`, no reason) to be retried and fail the same way."""
    import httpx

    from api.notices.sms import HttpSender

    b = world.household_b.phone

    def gateway(request: httpx.Request) -> httpx.Response:
        if f'"{b}"' in request.read().decode():
            return httpx.Response(503, content="Service Unavailable".encode("utf-16-le"))
        return httpx.Response(200, json={"ok": True})

    client.app.state.sms_sender = HttpSender("http://gw/sms", "k",  # type: ignore[attr-defined]
                                             transport=httpx.MockTransport(gateway))
    notice = make_notice(session, station=world.station)
    r = client.post(f"{API}/{notice.id}/send", headers=world.headers(world.supervisor))
    assert r.status_code == 200, r.text
    assert r.json()["sent_count"] == 1
    failed = _deliveries(session, notice, DeliveryStatus.failed)
    assert [(d.phone, d.attempts, d.reason) for d in failed] == [
        (b, 1, "gateway answered HTTP 503: Service Unavailable")]
    assert failed[0].next_attempt_at is not None  # retried by the evaluation run


def test_a_number_corrected_while_its_sms_is_in_flight_gets_the_notice(session: Session, world: World,
                                                                        engine: Engine, settings: Settings) -> None:
    """Regression: a send recorded its result on the delivery whatever had happened to it during the gateway
    call. A resend (or an evaluation run) planning meanwhile starts a delivery whose number the office
    corrected over (the message in flight went to the old number); the first send then wrote `sent` on it, so
    the corrected number was never texted and the deliveries list said it had been."""
    settings.proactive_sms_retry_backoff_s = 0
    building = make_building(session, world.station)
    # Sent in address order: room 101 (refused the first time), then room 102 (in flight).
    refused = make_household(session, building, unit="1", room="101", phone="13800000101")
    corrected = make_household(session, building, unit="1", room="102", phone="13800000102")
    notice = make_notice(session, building)
    first_in_flight, other_planned, first_done = threading.Event(), threading.Event(), threading.Event()
    old, new, b = corrected.phone, "13900009999", refused.phone
    calls: list[tuple[str, str]] = []

    class Gateway:
        def send(self, phone: str, text: str) -> bool:
            who = threading.current_thread().name
            calls.append((who, phone))
            if who == "first" and phone == b:
                return False  # due again at once (no backoff): the second send texts it first
            if who == "first" and phone == old:
                first_in_flight.set()
                assert other_planned.wait(10)  # the second send planned while this message was in flight
            if who == "second" and phone == b:
                other_planned.set()
                assert first_done.wait(10)  # ... and reaches room 102 after the first send recorded its result
            return True

    def send(resend: bool) -> None:
        with Session(engine, expire_on_commit=False) as own:
            service.send(session=own, settings=settings, sender=Gateway(), notice=reread(own, Notice, notice.id),
                         resend=resend)

    first = threading.Thread(target=send, args=(False,), name="first")
    first.start()
    assert first_in_flight.wait(10)
    corrected.phone = new  # the office corrects the number the first send is texting right now
    session.add(corrected)
    session.commit()
    second = threading.Thread(target=send, args=(True,), name="second")
    second.start()
    first.join(10)
    first_done.set()
    second.join(10)
    assert Counter(phone for _, phone in calls) == {b: 2, old: 1, new: 1}  # the corrected number texted, once
    rows = {d.household_id: d for d in _deliveries(session, notice)}
    assert (rows[corrected.id].phone, rows[corrected.id].status) == (new, DeliveryStatus.sent)
    assert reread(session, Notice, notice.id).sent_count == 2


def test_a_conditional_write_of_a_synced_row_takes_the_change_sequence_before_the_row(
        session: Session, world: World) -> None:
    """Regression (review): `write_if` (a notice's `sent_at`, a campaign's send lease) locked the row with its
    UPDATE and took the change sequence at the flush after it, the opposite of a sync push's order: on
    PostgreSQL the two could deadlock."""
    from sqlalchemy import event

    from api.notices import deliveries

    notice = make_notice(session, world.building_a)
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement.split()[1].strip('"') if statement.startswith("UPDATE") else "")

    event.listen(session.get_bind(), "before_cursor_execute", seen)
    try:
        assert deliveries.write_if(session, notice, lambda t: t.c.sent_at.is_(None), sent_at=datetime.now(UTC))
    finally:
        event.remove(session.get_bind(), "before_cursor_execute", seen)
    updates = [name for name in statements if name]
    assert updates.index("sync_state") < updates.index("notices"), updates
    assert reread(session, Notice, notice.id).sent_at is not None


def test_a_sender_does_not_text_a_number_another_plan_corrected_after_it_read_the_rows(
        session: Session, world: World, engine: Engine, settings: Settings) -> None:
    """Regression (review): two senders of one notice (a resend, and an evaluation run of another server
    process). While the first texts room 101, the second plans: room 102's number was corrected, and its
    delivery (queued, 0 attempts) holds the new one. The first then claimed room 102 with the phone it had
    read (the claim checked status and attempts only) and texted the removed number."""
    building = make_building(session, world.station)
    first = make_household(session, building, unit="1", room="101", phone="13800000101")
    corrected = make_household(session, building, unit="1", room="102", phone="13800000102")
    notice = make_notice(session, building)
    old, new = corrected.phone, "13900009999"
    calls: list[str] = []

    class Gateway:
        def send(self, phone: str, text: str) -> bool:
            calls.append(phone)
            if phone == first.phone:  # in flight: the office corrects 102, another sender plans
                with Session(engine, expire_on_commit=False) as other:
                    h = other.get(Household, corrected.id)
                    assert h is not None
                    h.phone = new
                    other.add(h)
                    other.commit()
                    service._plan(other, settings, reread(other, Notice, notice.id))
            return True

    with Session(engine, expire_on_commit=False) as own:
        service.send(session=own, settings=settings, sender=Gateway(), notice=reread(own, Notice, notice.id))
    assert old not in calls, calls  # the removed number was texted (with the resident's name and address)
    delivery = session.exec(select(NoticeDelivery).where(NoticeDelivery.household_id == corrected.id)).one()
    session.refresh(delivery)
    assert (delivery.phone, delivery.status) == (new, DeliveryStatus.queued)  # for the sender that planned it
