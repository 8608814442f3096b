"""The crash-durability driver: simulated handhelds sync against `steward serve` on PostgreSQL while the server
is killed with SIGKILL at random points and started again.

Devices behave like the app (sync/simulator.py): a lost answer is retried with the same cursor and the same
mutation ids, more edits pile up while the server is down, a cursor is kept only after its page is applied.
An office user edits households over the REST API at the same time. Checked:

- after every kill, in one snapshot once PostgreSQL has ended the dead server's sessions: for each device
  with committed last mutation id L, every mutation <= L is applied (rows exist, a visit's `actions` is the
  last value written <= L, the work order's timeline has exactly one status event per status mutation <= L)
  and none > L is, so no push is half-applied;
- the next acknowledged push answers `duplicate` exactly for the mutations <= L (they were applied, their
  answer was lost) and `applied` for the others: nothing is applied twice, nothing is lost;
- at the end: every mutation acknowledged, each row created once (unique markers), every device's replica
  equals what a fresh device of the same user receives.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import Engine, text
from sqlmodel import Session

from api.db import make_engine
from api.settings import Settings
from api.users.models import Role
from api.work_orders.models import Status
from sync.simulator import Handheld
from tests.stress.conftest import ServerProcess, checker_engine, wait_for_no_other_sessions
from tests.utils.factories import auth, make_building, make_household, make_station, make_user, make_work_order

HOUSEHOLDS_PER_GRID = 4


@dataclass
class Phone:
    """A device and what the checks need to know about its user."""

    handheld: Handheld
    steward_id: uuid.UUID
    households: list[str]
    order_id: str
    floor: int = 0  # the committed last mutation id read after the latest kill
    statuses: Counter[str] = field(default_factory=Counter)


@dataclass
class Report:
    """The figures of one run."""

    seed: int
    devices: int
    kills: int = 0
    kills_during_push: int = 0
    kills_during_pull: int = 0
    restart_seconds: list[float] = field(default_factory=list)
    lost_answers: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # why answers were lost: connection errors, 5xx
    mutations: int = 0
    duplicates: int = 0  # applied before the kill, answer lost, resent: answered duplicate
    prefix_checks: int = 0  # mutations checked against the database after kills
    office_edits: int = 0
    pulled_pages: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["lost_answers"] = dict(self.lost_answers)
        out["failures"] = dict(self.failures)
        out["restart_seconds_max"] = round(max(self.restart_seconds, default=0), 2)
        out.pop("restart_seconds")
        return out


def seed(settings: Settings, devices: int) -> tuple[list[tuple[uuid.UUID, list[str], str, str]], str]:
    """One building, four households and one assigned work order per steward; the office user's token."""
    engine = make_engine(settings)
    out = []
    with Session(engine, expire_on_commit=False) as session:
        station = make_station(session)
        for _ in range(devices):
            building = make_building(session, station)
            households = [make_household(session, building) for _ in range(HOUSEHOLDS_PER_GRID)]
            steward = make_user(session, Role.steward, grid=[building])
            order = make_work_order(session, households[0], status=Status.assigned, assignee=steward)
            token = auth(settings, steward)["Authorization"].removeprefix("Bearer ")
            out.append((steward.id, [str(h.id) for h in households], str(order.id), token))
        office = auth(settings, make_user(session, Role.supervisor))["Authorization"].removeprefix("Bearer ")
    engine.dispose()
    return out, office


def _now() -> str:
    return datetime.now(UTC).isoformat()


def edit(phone: Phone, rng: random.Random) -> None:
    """One local edit, as a steward makes them in the field; markers make every write unique."""
    dev = phone.handheld
    marker = f"{dev.name}-m{dev.next_mutation_id}"
    own_visits = [v for v in dev.rows["visits"] if dev.rows["visits"][v].get("actions", "").startswith(dev.name)]
    order = dev.rows["work_orders"].get(phone.order_id)
    roll = rng.random()
    if roll < 0.1 and order is not None:
        target = "waiting_resident" if order["status"] == "in_progress" else "in_progress"
        dev.update("work_orders", phone.order_id, status=target)
    elif roll < 0.3 and own_visits:
        dev.update("visits", rng.choice(own_visits), actions=marker)
    elif roll < 0.5:
        dev.create("visits", household_id=rng.choice(phone.households), arrived_at=_now(), actions=marker)
    else:
        dev.create("readings", household_id=rng.choice(phone.households), taken_at=_now(), room=marker,
                   temp_c=round(rng.uniform(12, 24), 1))


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(min(0.5, 0.03 * 2 ** attempt))


async def push_until_acknowledged(phone: Phone, rng: random.Random, report: Report, *, offline_edits: bool) -> None:
    """Push the queue until it is empty; while the server is down, keep editing now and then."""
    attempt = 0
    while phone.handheld.queue:
        answer = await phone.handheld.push()
        if answer is None:
            if offline_edits and rng.random() < 0.3:
                edit(phone, rng)
            await _backoff(attempt)
            attempt += 1
            continue
        attempt = 0
        for result in answer["results"]:
            expected = "duplicate" if result["mutation_id"] <= phone.floor else "applied"
            assert result["status"] == expected, (phone.handheld.name, result, phone.floor)
            phone.statuses[result["status"]] += 1
            report.duplicates += result["status"] == "duplicate"


async def pull_until_done(phone: Phone, *, limit: int, first: bool = False) -> None:
    attempt = 0
    done = await (phone.handheld.first_sync(limit=limit) if first else phone.handheld.pull(limit=limit))
    while not done:  # the cursor of the last applied page is kept: go on from there
        await _backoff(attempt)
        attempt += 1
        done = await phone.handheld.pull(limit=limit)


async def device_loop(phone: Phone, rng: random.Random, stop: asyncio.Event, report: Report) -> None:
    await pull_until_done(phone, limit=20, first=True)
    while not stop.is_set():
        for _ in range(rng.randint(1, 4)):
            edit(phone, rng)
        await push_until_acknowledged(phone, rng, report, offline_edits=True)
        await pull_until_done(phone, limit=20, first=rng.random() < 0.05)  # now and then a reinstall
        await asyncio.sleep(rng.uniform(0, 0.03))


async def office_loop(http: httpx.AsyncClient, token: str, households: list[str], rng: random.Random,
                      stop: asyncio.Event, report: Report) -> None:
    """The office corrects phone numbers meanwhile (server-side writes that devices must pull)."""
    headers = {"Authorization": f"Bearer {token}"}
    while not stop.is_set():
        household = rng.choice(households)
        body = {"phone": f"138{rng.randrange(10 ** 8):08d}"}
        for attempt in range(100):
            try:
                response = await http.patch(f"/api/v1/households/{household}", json=body, headers=headers)
            except httpx.TransportError:
                await _backoff(attempt)
                continue
            if response.status_code < 500:
                assert response.status_code == 200, response.text
                report.office_edits += 1
                break
            report.failures[f"http_{response.status_code}"] += 1
            await _backoff(attempt)
        await asyncio.sleep(rng.uniform(0.05, 0.2))


def check_prefix(engine: Engine, phones: list[Phone]) -> int:
    """In one snapshot: each device's committed mutations are all applied and the others not at all.
    Sets each phone's floor; returns how many mutations were checked."""
    checked = 0
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        last = {str(c): m for c, m in conn.execute(text("SELECT client_id, last_mutation_id FROM sync_clients"))}
        for phone in phones:
            dev, sid = phone.handheld, phone.steward_id
            floor = last.get(dev.client_id, 0)
            assert floor >= phone.floor, (dev.name, floor, phone.floor)
            readings = {str(r) for r in conn.execute(text("SELECT id FROM readings WHERE taken_by_id = :s"),
                                                     {"s": sid}).scalars()}
            visits = {str(i): a for i, a in conn.execute(text("SELECT id, actions FROM visits WHERE steward_id = :s"),
                                                         {"s": sid})}
            status, events = conn.execute(text(
                "SELECT w.status, (SELECT count(*) FROM work_order_events e WHERE e.work_order_id = w.id "
                "AND e.kind = 'status' AND e.actor_id = :s) FROM work_orders w WHERE w.id = :w"),
                {"s": sid, "w": phone.order_id}).one()
            expected_visits: dict[str, str] = {}
            expected_status, status_mutations, created_readings = "assigned", 0, set()
            for m in dev.made:
                if m["mutation_id"] > floor:
                    break
                checked += 1
                if m["table"] == "readings":
                    created_readings.add(m["id"])
                elif m["table"] == "visits":
                    expected_visits[m["id"]] = m["fields"]["actions"]
                else:
                    expected_status, status_mutations = m["fields"]["status"], status_mutations + 1
            assert readings == created_readings, (dev.name, floor, readings ^ created_readings)
            assert visits == expected_visits, (dev.name, floor)
            assert (status, events) == (expected_status, status_mutations), (dev.name, floor)
            phone.floor = floor
    return checked


async def chaos(server: ServerProcess, engine: Engine, phones: list[Phone], kills: int, rng: random.Random,
                report: Report) -> None:
    """Kill the server at random points (half of the kills while a push is on the wire), check, restart."""
    for k in range(kills):
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        if k % 2:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any(p.handheld.in_flight == "push" for p in phones):
                await asyncio.sleep(0.001)
            # Anywhere in a push's life, its commit and the answer's way back included.
            pushes = sorted(t for p in phones for t in p.handheld.stats.latencies.get("push", [])[-50:])
            await asyncio.sleep(rng.uniform(0, 1.2 * pushes[len(pushes) // 2] if pushes else 0.02))
        flying = {p.handheld.in_flight for p in phones}
        server.kill()
        report.kills += 1
        report.kills_during_push += "push" in flying
        report.kills_during_pull += "pull" in flying or "first_sync_page" in flying
        await asyncio.to_thread(wait_for_no_other_sessions, engine)
        report.prefix_checks += await asyncio.to_thread(check_prefix, engine, phones)
        report.restart_seconds.append(await asyncio.to_thread(server.start))


async def run(settings: Settings, server: ServerProcess, *, devices: int, kills: int, seed_value: int) -> Report:
    """The whole scenario; raises AssertionError on the first broken promise."""
    began = time.monotonic()
    rng = random.Random(seed_value)
    report = Report(seed=seed_value, devices=devices)
    users, office_token = seed(settings, devices)
    engine = checker_engine(settings)
    server.start()
    limits = httpx.Limits(max_connections=devices + 2)
    try:
        async with httpx.AsyncClient(base_url=server.base, timeout=30, limits=limits) as http:
            phones = [Phone(Handheld(http, token, name=f"d{i}", push_batch=50), sid, households, order)
                      for i, (sid, households, order, token) in enumerate(users)]
            stop = asyncio.Event()
            everyone = [h for _, hs, _, _ in users for h in hs]
            workers = [asyncio.create_task(device_loop(p, random.Random(rng.random()), stop, report)) for p in phones]
            workers.append(asyncio.create_task(office_loop(http, office_token, everyone, random.Random(rng.random()),
                                                           stop, report)))
            chaos_task = asyncio.create_task(chaos(server, engine, phones, kills, rng, report))
            # A failing device or check ends the run at once instead of after the last kill.
            pending = {*workers, chaos_task}
            while not chaos_task.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            stop.set()
            for task in asyncio.as_completed(workers):
                await task
            # The server stays up now: every device drains its queue and catches up.
            for phone in phones:
                await push_until_acknowledged(phone, rng, report, offline_edits=False)
            for phone in phones:
                await pull_until_done(phone, limit=50)
            report.prefix_checks += check_prefix(engine, phones)
            await final_checks(http, engine, phones, report)
    finally:
        engine.dispose()
    for phone in phones:
        report.lost_answers.update(phone.handheld.lost)
        for kinds in phone.handheld.stats.errors.values():
            report.failures.update(kinds)
        report.pulled_pages += len(phone.handheld.stats.latencies.get("pull", []))
        report.pulled_pages += len(phone.handheld.stats.latencies.get("first_sync_page", []))
    report.seconds = round(time.monotonic() - began, 1)
    return report


async def final_checks(http: httpx.AsyncClient, engine: Engine, phones: list[Phone], report: Report) -> None:
    """Everything acknowledged once, every row created once, every replica equal to the server's view."""
    with engine.connect() as conn:
        for column, table in (("room", "readings"), ("actions", "visits")):
            twice = conn.execute(text(f"SELECT {column}, count(*) FROM {table} GROUP BY {column} "
                                      "HAVING count(*) > 1")).all()
            assert twice == [], f"{table} created more than once: {twice[:5]}"
        last = {str(c): m for c, m in conn.execute(text("SELECT client_id, last_mutation_id FROM sync_clients"))}
    for phone in phones:
        dev = phone.handheld
        made = [m["mutation_id"] for m in dev.made]
        report.mutations += len(made)
        assert dev.queue == [] and sorted(dev.results) == made, dev.name
        assert last[dev.client_id] == made[-1], (dev.name, last[dev.client_id], made[-1])
        assert sum(phone.statuses.values()) == len(made), (dev.name, phone.statuses)  # one answer per mutation
        fresh = Handheld(http, dev.token, name=f"fresh-{dev.name}")
        assert await fresh.pull(limit=1000)
        for table, rows in fresh.rows.items():
            assert dev.rows[table] == rows, f"{dev.name}: replica of {table} differs from the server"
