"""Sensitive-household revisits around visits, SLA hours by category and sensitivity, breaches and the summary."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from api.app import create_app
from api.db import utcnow
from api.deps import Page
from api.network.models import HeatingStatus
from api.notices.sms import LoggingSender
from api.proactive import service
from api.proactive.models import ProactiveKind, ProactiveOrder
from api.proactive.worker import Evaluator
from api.settings import Settings
from api.work_orders.models import Category, Priority, Source, Status, WorkOrder
from tests.api.proactive.helpers import API, make_calendar
from tests.utils.factories import (
    World,
    make_building,
    make_household,
    make_reading,
    make_visit,
    make_work_order,
)


def _revisits(session: Session) -> list[WorkOrder]:
    session.expire_all()
    ids = select(ProactiveOrder.work_order_id).where(ProactiveOrder.kind == ProactiveKind.revisit)
    return list(session.exec(select(WorkOrder).where(WorkOrder.id.in_(ids))).all())  # type: ignore[attr-defined]


def _run(client: TestClient, world: World) -> int:
    r = client.post(f"{API}/run", headers=world.headers(world.supervisor))
    assert r.status_code == 200, r.text
    return int(r.json()["revisits_opened"])


def test_a_sensitive_household_without_a_measured_visit_gets_one_revisit(client: TestClient, session: Session,
                                                                          world: World) -> None:
    make_calendar(session, world.station)
    elder = make_household(session, world.building_a, sensitive=True, resident_name="刘奶奶")
    make_household(session, world.building_a, sensitive=True, heating_status=HeatingStatus.suspended)
    make_household(session, world.building_b, sensitive=False)
    assert _run(client, world) == 1
    [order] = _revisits(session)
    assert order.household_id == elder.id and order.source == Source.proactive and order.category == Category.other
    assert order.assignee_id == world.steward_a.id and "刘奶奶" in order.description
    assert _run(client, world) == 0  # open: not again
    order.status = Status.cancelled
    session.add(order)
    session.commit()
    assert _run(client, world) == 0  # one per period, even when the last one was cancelled


def test_a_revisit_names_the_address_as_residents_write_it(client: TestClient, session: Session,
                                                           world: World) -> None:
    """Regression: a building entered as "3号楼" and a unit as "2单元" read "3号楼号楼2单元单元501室室" in the
    revisit order (the SMS texts had been fixed; the work orders built the address by hand)."""
    make_calendar(session, world.station)
    building = make_building(session, world.station, community="燕子山小区", number="3号楼")
    make_household(session, building, unit="2单元", room="501室", sensitive=True)
    session.commit()
    assert _run(client, world) == 1
    [order] = _revisits(session)
    assert "敏感户燕子山小区3号楼2单元501室" in order.description, order.description


@pytest.mark.parametrize(("visit", "expected"), [
    ({"indoor_temp_c": 19.5}, 0),  # measured this week: no revisit
    ({}, 1),  # a visit without a temperature does not count
    ({"indoor_temp_c": 19.5, "days_ago": 8}, 1),  # measured, but before the weekly period
    ({"reading": True}, 0),  # a reading taken during the visit counts
])
def test_revisits_are_scheduled_around_an_existing_visit(client: TestClient, session: Session, world: World,
                                                         visit: dict[str, object], expected: int) -> None:
    make_calendar(session, world.station)
    elder = make_household(session, world.building_a, sensitive=True)
    visit = dict(visit)  # the parameters are shared by both backends' runs
    days_ago = float(visit.pop("days_ago", 1))  # type: ignore[arg-type]
    reading = visit.pop("reading", False)
    row = make_visit(session, elder, world.steward_a, arrived_at=utcnow() - timedelta(days=days_ago), **visit)
    if reading:
        make_reading(session, elder, world.steward_a, visit_id=row.id, temp_c=18.0)
    assert _run(client, world) == expected


def test_no_revisits_out_of_season(client: TestClient, session: Session, world: World) -> None:
    make_calendar(session, world.station, in_season=False)
    make_household(session, world.building_a, sensitive=True)
    assert _run(client, world) == 0


def test_sla_hours_come_from_the_category_table_and_are_shorter_for_sensitive_homes() -> None:
    settings = Settings()
    assert settings.sla_hours("urgent", category="leak") == 1
    assert settings.sla_hours("normal", category="leak", sensitive=True) == 4
    assert settings.sla_hours("high", category="valve") == settings.sla_hours_high  # not in the table
    assert settings.sla_hours("high") == 8
    custom = Settings(sla_hours_by_category={"noise": {"low": 200}}, sla_sensitive_factor=0.25)
    assert custom.sla_hours("low", category="noise", sensitive=True) == 50
    assert custom.sla_hours("low", category="leak") == 72  # a custom table replaces the default one


def test_a_work_order_for_a_sensitive_home_gets_the_shorter_sla(client: TestClient, session: Session,
                                                                world: World, settings: Settings) -> None:
    elder = make_household(session, world.building_a, sensitive=True)
    r = client.post("/api/v1/work-orders", json={"household_id": str(elder.id), "category": "leak",
                                                 "priority": "high"}, headers=world.headers(world.supervisor))
    assert r.status_code == 201, r.text
    order = session.get(WorkOrder, uuid.UUID(r.json()["id"]))
    assert order is not None
    assert order.sla_due_at - order.created_at == timedelta(hours=2)  # leak/high 4 h, halved


def test_breaches_are_listed_and_counted_in_the_summary(client: TestClient, session: Session, world: World) -> None:
    now = utcnow()
    late = make_work_order(session, world.household_a, sla_due_at=now - timedelta(hours=3))
    make_work_order(session, world.household_a, sla_due_at=now + timedelta(hours=1))  # due soon
    resolved_late = make_work_order(session, world.household_b, status=Status.resolved,
                                    sla_due_at=now - timedelta(hours=5), resolved_at=now - timedelta(hours=1))
    make_work_order(session, world.household_b, status=Status.resolved, sla_due_at=now,
                    resolved_at=now - timedelta(hours=1))  # in time
    h = world.headers(world.supervisor)
    r = client.get(f"{API}/sla/breaches", headers=h)
    assert r.status_code == 200, r.text
    [row] = r.json()["data"]
    assert row["work_order_id"] == str(late.id) and 179 <= row["overdue_minutes"] <= 181
    every = client.get(f"{API}/sla/breaches", params={"state": "all"}, headers=h).json()
    assert [b["work_order_id"] for b in every["data"]] == [str(late.id), str(resolved_late.id)]  # open first
    assert every["data"][1]["overdue_minutes"] == 240
    summary = client.get(f"{API}/summary", headers=h).json()
    assert (summary["sla_open_overdue"], summary["sla_due_within_2h"], summary["sla_resolved_late"]) == (1, 1, 1)
    assert summary["clusters_open"] == {"riser": 0, "building": 0, "station": 0} and summary["revisits_open"] == 0
    # A steward counts only their grid.
    mine = client.get(f"{API}/summary", headers=world.headers(world.steward_b)).json()
    assert (mine["sla_open_overdue"], mine["sla_resolved_late"]) == (0, 1)
    assert client.get(f"{API}/sla/breaches", headers=world.headers(world.steward_b)).json()["count"] == 0


def test_a_breach_outside_the_stewards_grid_does_not_tell_the_household_sensitive(
        client: TestClient, session: Session, world: World) -> None:
    """Regression: an order assigned to a steward for a household outside their grid showed that household's
    `sensitive` flag, which GET /households/{id} refuses them."""
    world.household_b.sensitive = True
    session.add(world.household_b)
    session.commit()
    order = make_work_order(session, world.household_b, status=Status.in_progress, assignee=world.steward_a,
                            sla_due_at=utcnow() - timedelta(hours=1))
    [row] = client.get(f"{API}/sla/breaches", headers=world.headers(world.steward_a)).json()["data"]
    assert row["work_order_id"] == str(order.id) and row["sensitive"] is None
    [row] = client.get(f"{API}/sla/breaches", headers=world.headers(world.steward_b)).json()["data"]
    assert row["sensitive"] is True
    [row] = client.get(f"{API}/sla/breaches", headers=world.headers(world.supervisor)).json()["data"]
    assert row["sensitive"] is True
    assert client.get(f"/api/v1/households/{world.household_b.id}",
                      headers=world.headers(world.steward_a)).status_code == 404


def test_resolved_and_all_breaches_are_listed_most_overdue_first(client: TestClient, session: Session,
                                                                  world: World) -> None:
    """Regression: `state=resolved` and `all` were sorted by due time, so an order 10 minutes late came before
    one 47 hours late; docs/proactive.md says most overdue first (`all`: the open ones, then the resolved)."""
    now = utcnow()
    slightly = make_work_order(session, world.household_a, status=Status.resolved, sla_due_at=now - timedelta(days=3),
                               resolved_at=now - timedelta(days=3) + timedelta(minutes=10))
    badly = make_work_order(session, world.household_a, status=Status.resolved, sla_due_at=now - timedelta(days=2),
                            resolved_at=now - timedelta(hours=1))
    open_late = make_work_order(session, world.household_a, sla_due_at=now - timedelta(hours=5))
    h = world.headers(world.supervisor)
    resolved = client.get(f"{API}/sla/breaches", params={"state": "resolved"}, headers=h).json()["data"]
    assert [(b["work_order_id"], b["overdue_minutes"]) for b in resolved] == [(str(badly.id), 47 * 60),
                                                                              (str(slightly.id), 10)]
    every = client.get(f"{API}/sla/breaches", params={"state": "all"}, headers=h).json()["data"]
    assert [b["work_order_id"] for b in every] == [str(open_late.id), str(badly.id), str(slightly.id)]
    paged = [client.get(f"{API}/sla/breaches", params={"state": "all", "limit": 1, "offset": i}, headers=h)
             .json()["data"][0]["work_order_id"] for i in range(3)]
    assert paged == [b["work_order_id"] for b in every]



def test_the_pages_of_all_breaches_keep_their_order_as_time_passes(session: Session, world: World) -> None:
    """Regression (review): `state=all` ranked open and resolved orders together by lateness until the
    request's time; an open order's grows every minute and a resolved one's does not, so the page asked two
    minutes later was cut from another order: it repeated the resolved order and the open one was never
    listed."""
    t0 = utcnow()
    resolved = make_work_order(session, world.household_a, status=Status.resolved, sla_due_at=t0 - timedelta(hours=3),
                               resolved_at=t0 - timedelta(hours=2))  # 60 minutes late
    still_open = make_work_order(session, world.household_b, sla_due_at=t0 - timedelta(minutes=59))

    def page(offset: int, minutes: int) -> list[uuid.UUID]:
        one = Page.__new__(Page)  # without a request: offset and limit are all a query reads
        one.offset, one.limit = offset, 1
        rows, count = service.breaches(session=session, user=world.supervisor, page=one, state="all",
                                       now=t0 + timedelta(minutes=minutes))
        assert count == 2
        return [b.work_order_id for b in rows]

    seen = page(0, 0) + page(1, 2)  # the next page, two minutes later
    assert len(set(seen)) == 2, "one row came twice, the other never"
    assert seen == [still_open.id, resolved.id]  # the open one first


def test_the_summary_counts_open_proactive_orders_and_campaigns(client: TestClient, session: Session,
                                                               world: World) -> None:
    make_calendar(session, world.station)
    make_household(session, world.building_a, sensitive=True)
    for room in ("301", "302", "303"):
        home = make_household(session, world.building_b, unit="3", room=room)
        make_work_order(session, home, category=Category.leak, priority=Priority.normal)
    assert client.post(f"{API}/run", headers=world.headers(world.supervisor)).status_code == 200
    summary = client.get(f"{API}/summary", headers=world.headers(world.supervisor)).json()
    assert summary["clusters_open"]["riser"] == 1 and summary["revisits_open"] == 1
    assert summary["campaigns"] == {"draft": 0, "sending": 0, "completed": 0}


def test_the_served_app_evaluates_periodically_and_a_test_app_does_not(engine: Engine, session: Session,
                                                                       world: World, settings: Settings) -> None:
    assert create_app(settings, engine=engine).state.proactive_background is False
    make_calendar(session, world.station)
    make_household(session, world.building_a, sensitive=True)
    evaluator = Evaluator(engine, settings, LoggingSender(), interval_s=3600, first_delay_s=0)
    evaluator.start()
    try:
        for _ in range(200):
            if evaluator.runs:
                break
            time.sleep(0.05)
    finally:
        evaluator.close()
        evaluator.close()
    assert evaluator.runs == 1 and len(_revisits(session)) == 1
    app: FastAPI = create_app(settings.model_copy(update={"proactive_interval_minutes": 60}), engine=engine,
                              background=True)
    with TestClient(app):
        assert app.state.proactive_evaluator is not None
    assert not app.state.proactive_evaluator._thread.is_alive()


def _rows_read(engine: Engine, stmt: str, params: object) -> int:
    """Rows a plan reads from tables and indexes (kept plus removed by a filter), by EXPLAIN ANALYZE."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + stmt, params)
        plan = cur.fetchone()[0][0]["Plan"]  # type: ignore[index]
    finally:
        raw.close()

    def walk(node: dict) -> int:  # type: ignore[type-arg]
        own = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * node.get("Actual Loops", 1)
        return (own if "Relation Name" in node else 0) + sum(walk(child) for child in node.get("Plans", []))

    return walk(plan)


@pytest.mark.parametrize("path", ["/proactive/sla/breaches?limit=10", "/console/dashboard"])
def test_the_late_open_orders_are_found_without_reading_every_closed_one(
        client: TestClient, session: Session, engine: Engine, world: World, backend: str, path: str) -> None:
    """Regression: the breach lists (the dashboard polls one every few seconds) filtered open orders past
    their due time through the index on sla_due_at alone: PostgreSQL read every closed order ever due
    (598,200 rows to list 3 on a district with 600,000 closed orders). Status and due time are one index."""
    from sqlalchemy import event, text

    if backend != "postgresql":
        pytest.skip("counts the rows a plan reads with EXPLAIN ANALYZE (PostgreSQL)")
    session.execute(text("""
        INSERT INTO work_orders (household_id, source, category, description, priority, id, version, created_at,
                                 updated_at, status, sla_due_at, resolved_at, closed_at, seq)
        SELECT :hh, 'hotline', 'not_warm', '', 'normal', gen_random_uuid(), 1, now() - g * interval '1 hour',
               now() - g * interval '1 hour', 'closed', now() - g * interval '1 hour' + interval '1 day',
               now() - g * interval '1 hour' + interval '2 hours', now() - g * interval '1 hour' + interval '3 hours', 0
        FROM generate_series(30, 30029) g"""), {"hh": world.household_a.id})  # past seasons, closed in time
    session.execute(text("""
        INSERT INTO work_orders (household_id, source, category, description, priority, id, version, created_at,
                                 updated_at, status, sla_due_at, seq)
        SELECT :hh, 'hotline', 'not_warm', '', 'normal', gen_random_uuid(), 1, now(), now(), 'assigned',
               now() + interval '20 hours', 0
        FROM generate_series(1, 600) g"""), {"hh": world.household_b.id})  # this season's open ones, not yet due
    session.commit()
    for _ in range(3):  # this morning's late ones
        make_work_order(session, world.household_b, status=Status.assigned, assignee=world.steward_b,
                        sla_due_at=utcnow() - timedelta(hours=1))
    with engine.connect() as conn:
        conn.execute(text("ANALYZE work_orders"))
        conn.commit()
    seen: list[tuple[str, object]] = []

    def record(conn: object, cursor: object, stmt: str, params: object, *args: object) -> None:
        seen.append((stmt, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        r = client.get(f"/api/v1{path}", headers=world.headers(world.supervisor))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert r.status_code == 200, r.text
    lists = [(s, p) for s, p in seen if "ORDER BY work_orders.sla_due_at" in s]
    assert lists, "no breach list query seen"
    for stmt, params in lists:
        read = _rows_read(engine, stmt, params)
        assert read < 1000, f"{read} rows read to list 3 late orders: {' '.join(stmt.split())[:200]}"
