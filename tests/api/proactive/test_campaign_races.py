"""Campaign sends racing each other, outliving their lease, and a corrected phone number: never a second SMS."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from api.db import utcnow
from api.errors import Conflict
from api.notices import deliveries
from api.proactive import campaigns
from api.proactive.models import Campaign, CampaignDelivery, DeliveryStatus
from api.settings import Settings
from tests.api.proactive.helpers import API, create_campaign, reread
from tests.utils.factories import World, make_household


class Recorder:
    """Accepts every message and remembers the phone; `hook` runs inside a given call (1-based)."""

    def __init__(self, hook: dict[int, object] | None = None) -> None:
        self.calls: list[str] = []
        self.hook = hook or {}
        self.lock = threading.Lock()

    def send(self, phone: str, text: str) -> bool:
        with self.lock:
            self.calls.append(phone)
            n = len(self.calls)
        action = self.hook.get(n)
        if callable(action):
            action()
        return True


def _send_in_new_session(engine: Engine, settings: Settings, sender: Recorder, campaign_id: uuid.UUID,
                         now: datetime | None = None) -> object:
    """One send in its own session (another request or process); its result, or the error code."""
    with Session(engine, expire_on_commit=False) as other:
        row = other.get(Campaign, campaign_id)
        assert row is not None
        try:
            return campaigns.send(session=other, settings=settings, sender=sender, campaign=row, now=now)
        except Conflict as exc:
            return exc.code


def test_two_sends_at_once_text_each_household_once(client: TestClient, engine: Engine, session: Session,
                                                     world: World, settings: Settings) -> None:
    """Regression: the lease was read, then written; two sends that both read it free both sent everything."""
    campaign_id = uuid.UUID(str(create_campaign(client, world)["id"]))
    barrier = threading.Barrier(2)
    answered = threading.Event()
    # The first message waits until the other send has answered, so the two sends overlap for sure.
    sender = Recorder({1: lambda: answered.wait(5)})
    results: list[object] = []

    def one() -> None:
        with Session(engine, expire_on_commit=False) as other:
            row = other.get(Campaign, campaign_id)
            assert row is not None
            barrier.wait()
            try:
                results.append(campaigns.send(session=other, settings=settings, sender=sender, campaign=row))
            except Conflict as exc:
                results.append(exc.code)
            finally:
                answered.set()

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == [(2, 0), "send_in_progress"]
    assert Counter(sender.calls) == {"13800000001": 1, "13800000002": 1}
    assert reread(session, campaign_id).sending_until is None  # the winner released its lease


def test_a_send_that_outlives_its_lease_is_not_repeated(client: TestClient, engine: Engine, session: Session,
                                                        world: World, settings: Settings) -> None:
    """Regression: the due list was read once and the lease never renewed, so a second sender that took the
    expired lease sent every household the first one had not reached yet, and then the first sent them too."""
    for i in range(3):
        make_household(session, world.building_a, phone=f"1390000000{i}")
    campaign_id = uuid.UUID(str(create_campaign(client, world)["id"]))
    t0 = utcnow()
    inner = Recorder()
    taken_over: list[object] = []
    # 11 minutes pass during the first message (a hung gateway); the periodic run of another process starts.
    outer = Recorder({1: lambda: taken_over.append(_send_in_new_session(
        engine, settings, inner, campaign_id, now=t0 + timedelta(minutes=11)))})
    with Session(engine, expire_on_commit=False) as s:
        row = s.get(Campaign, campaign_id)
        assert row is not None
        campaigns.send(session=s, settings=settings, sender=outer, campaign=row, now=t0)
    assert taken_over == [(4, 0)]  # everyone but the message in flight
    assert Counter(outer.calls + inner.calls) == {p: 1 for p in outer.calls + inner.calls}
    assert len(outer.calls + inner.calls) == 5
    final = reread(session, campaign_id)
    assert (final.sent_count, final.pending_count, final.status) == (5, 0, "completed")


def test_a_long_send_renews_its_lease(client: TestClient, engine: Engine, session: Session, world: World,
                                      settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a send longer than the ten-minute lease lost it, and a second sender started over."""
    for i in range(3):
        make_household(session, world.building_a, phone=f"1390000000{i}")
    campaign_id = uuid.UUID(str(create_campaign(client, world)["id"]))
    t0 = utcnow()
    clock = {"now": t0}
    monkeypatch.setattr(deliveries, "utcnow", lambda: clock["now"])

    def four_minutes() -> None:
        clock["now"] += timedelta(minutes=4)

    second: list[object] = []
    sender = Recorder({1: four_minutes, 2: four_minutes, 3: four_minutes,
                       # 12 minutes in: another process tries to send the campaign.
                       4: lambda: second.append(_send_in_new_session(engine, settings, Recorder(), campaign_id,
                                                                     now=clock["now"]))})
    with Session(engine, expire_on_commit=False) as s:
        row = s.get(Campaign, campaign_id)
        assert row is not None
        assert campaigns.send(session=s, settings=settings, sender=sender, campaign=row, now=t0) == (5, 0)
    assert second == ["send_in_progress"]
    assert sorted(Counter(sender.calls).values()) == [1] * 5


def test_a_corrected_phone_number_is_tried_again(client: TestClient, session: Session, world: World,
                                                 settings: Settings) -> None:
    """Regression: a delivery that used up its tries on a wrong number kept them after the number was fixed,
    so the household was never texted."""
    settings.proactive_sms_max_attempts = 2
    settings.proactive_sms_retry_backoff_s = 0
    calls: list[str] = []

    class WrongNumber:
        def send(self, phone: str, text: str) -> bool:
            calls.append(phone)
            return phone != "13800000002"

    client.app.state.sms_sender = WrongNumber()  # type: ignore[attr-defined]
    campaign = create_campaign(client, world)
    h = world.headers(world.supervisor)
    for _ in range(2):
        r = client.post(f"{API}/campaigns/{campaign['id']}/send", headers=h)
    assert (r.json()["status"], r.json()["failed_count"]) == ("completed", 1)
    world.household_b.phone = "13900009999"
    session.add(world.household_b)
    session.commit()
    r = client.post(f"{API}/campaigns/{campaign['id']}/send", headers=h)
    assert (r.json()["sent_count"], r.json()["failed_count"], r.json()["status"]) == (2, 0, "completed")
    assert sorted(calls) == ["13800000001", "13800000002", "13800000002", "13900009999"]
    row = session.exec(select(CampaignDelivery).where(CampaignDelivery.household_id == world.household_b.id)).one()
    session.refresh(row)
    assert (row.status, row.phone, row.attempts) == (DeliveryStatus.sent, "13900009999", 1)


def test_a_calendar_fix_racing_the_first_send_leaves_the_campaign_as_it_was_texted(
        client: TestClient, engine: Engine, session: Session, world: World, settings: Settings,
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the calendar's PUT read the draft campaigns without a lock and wrote their dates at commit;
    a send that claimed the campaign in between texted the old dates, and the PUT then wrote the new dates
    over the campaign already sending. The drafts are locked now: the claim waits, the send texts the new
    dates, and the campaign says what the residents were told."""
    import time

    from sqlalchemy import text

    from tests.api.proactive.helpers import SEASON, TZ, calendar_body, day_text, local

    if backend != "postgresql":
        pytest.skip("needs two writers at once")
    campaign_id = uuid.UUID(str(create_campaign(client, world)["id"]))
    read_drafts, claimed = threading.Event(), threading.Event()

    def claimed_or_blocked() -> None:  # the send claimed the campaign, or waits on a lock to
        deadline = time.monotonic() + 10
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            while not claimed.is_set() and time.monotonic() < deadline:
                if conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND wait_event_type = 'Lock'")).scalar_one():
                    return
                time.sleep(0.01)

    real_dates, real_plan = campaigns._event_dates, campaigns._plan

    def dates_after_the_send_moved(calendar: object, kind: object) -> object:  # the drafts were read
        read_drafts.set()
        claimed_or_blocked()
        return real_dates(calendar, kind)  # type: ignore[arg-type]

    def plan_after_claim(s: Session, st: Settings, campaign: Campaign) -> None:
        claimed.set()
        real_plan(s, st, campaign)

    monkeypatch.setattr(campaigns, "_event_dates", dates_after_the_send_moved)
    monkeypatch.setattr(campaigns, "_plan", plan_after_claim)
    out: dict[str, object] = {}

    def send() -> None:
        assert read_drafts.wait(10)
        out["send"] = _send_in_new_session(engine, settings, Recorder(), campaign_id)

    thread = threading.Thread(target=send)
    thread.start()
    put = client.put(f"{API}/stations/{world.station.id}/calendars/{SEASON}", json=calendar_body(local(31, 8)),
                     headers=world.headers(world.supervisor))
    thread.join(30)
    assert put.status_code == 200, put.text
    assert out["send"] == (2, 0)
    campaign = reread(session, campaign_id)
    texts = session.exec(select(CampaignDelivery.text).where(CampaignDelivery.campaign_id == campaign_id)).all()
    told = day_text(campaign.event_start.astimezone(TZ))
    assert told == day_text(local(31, 8))  # the new dates: the send waited for the correction
    assert len(texts) == 2 and all(told in t for t in texts), (told, texts)


def test_a_calendar_correction_racing_a_new_campaign_moves_its_dates_too(
        client: TestClient, engine: Engine, session: Session, world: World, settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a calendar correction committing between a campaign creation's read of the calendar and its
    insert moved the drafts it saw, not the new one, which then announced the superseded dates. The correction
    now waits for the creation (the calendar is locked as it is read) and moves the new draft too."""
    from api.proactive.models import SeasonCalendar, SeasonCalendarPut
    from tests.api.proactive.helpers import SEASON, calendar_body, local

    h = world.headers(world.supervisor)
    url = f"{API}/stations/{world.station.id}/calendars/{SEASON}"
    assert client.put(url, json=calendar_body(), headers=h).status_code == 200
    fixed = SeasonCalendarPut.model_validate(calendar_body(local(31, 8)))
    real, outcome = campaigns._refuse_past, []

    def correct() -> None:
        with Session(engine, expire_on_commit=False) as other:
            try:
                campaigns.put_calendar(session=other, settings=settings, user=world.supervisor,
                                       station_id=world.station.id, season=SEASON, data=fixed)
                outcome.append("corrected")
            except Exception as exc:  # the test reports it
                outcome.append(repr(exc))

    corrector = threading.Thread(target=correct)

    def correction_during_the_creation(*args: object, **kwargs: object) -> None:
        corrector.start()  # another supervisor's PUT, between the creation's read and its insert
        corrector.join(1.0)  # before the fix it committed at once; now it waits for the creation's commit
        real(*args, **kwargs)

    monkeypatch.setattr(campaigns, "_refuse_past", correction_during_the_creation)
    r = client.post(f"{API}/campaigns", json={"station_id": str(world.station.id), "season": SEASON,
                                              "kind": "water_fill"}, headers=h)
    corrector.join(30)
    assert r.status_code == 201, r.json()
    assert outcome == ["corrected"]
    session.expire_all()
    calendar = session.exec(select(SeasonCalendar).where(SeasonCalendar.station_id == world.station.id)).one()
    draft = session.get(Campaign, uuid.UUID(r.json()["id"]))
    assert draft is not None and calendar.water_fill_start == fixed.water_fill_start
    assert draft.event_start == calendar.water_fill_start, (draft.event_start, calendar.water_fill_start)
