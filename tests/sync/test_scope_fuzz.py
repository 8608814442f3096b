"""Random scope changes (grids replaced, orders reassigned, buildings moved between stations, roles and
accounts switched off and on, office deletes, stewards' own writes) with handhelds pulling part-way in small
pages: at the end each steward's handheld holds exactly what a new handheld of that steward receives. A
seeded run per parameter; STEWARD_SCOPE_FUZZ_SEEDS sets how many: 3 in `make test`, 30 in `.ci/run` (40 per
backend passed when the test was written)."""

from __future__ import annotations

import os
import random
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from api.db import utcnow
from api.settings import Settings
from tests.sync.conftest import build_district, server_rows
from tests.sync.device import Device
from tests.utils.db import wipe

SEEDS = int(os.environ.get("STEWARD_SCOPE_FUZZ_SEEDS", "3"))


def _diff(dev: Device, truth: dict[str, dict[str, dict[str, object]]]) -> dict[str, tuple[list[str], ...]]:
    """Per table: rows the handheld has that it should not, rows it lacks, rows it holds stale."""
    out = {}
    for t in truth:
        a, b = dev.rows[t], truth[t]
        extra, missing = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        stale = sorted(k for k in set(a) & set(b) if a[k] != b[k])
        if extra or missing or stale:
            out[t] = (extra, missing, stale)
    return out


@pytest.mark.parametrize("seed", range(SEEDS))
def test_handhelds_hold_their_scope_after_random_changes(client: TestClient, engine: Engine, settings: Settings,
                                                        seed: int) -> None:
    rng = random.Random(seed)
    wipe(engine)
    with Session(engine, expire_on_commit=False) as session:
        d = build_district(session, settings)
    admin, office = d.headers(d.admin), d.headers(d.supervisor)
    stewards = [d.steward1, d.steward2]
    devs = [Device(http=client, headers=d.headers(s), name=f"s{i}") for i, s in enumerate(stewards)]
    offdev = Device(http=client, headers=office, name="office")
    for dev in [*devs, offdev]:
        dev.pull()
    buildings = [d.b1, d.b2, d.b3]
    stations = [d.station, d.station2]
    households = [d.h1a, d.h1b, d.h2a, d.h3a]
    orders = [str(d.wo1.id), str(d.wo2.id), str(d.wo3.id)]
    log = []
    for _step in range(35):
        op = rng.choice(["grid", "grid", "assign", "assign", "station", "note", "delete", "pull", "pull",
                         "visit", "order", "notice", "role", "active", "gridvisit", "sdelete"])
        log.append(op)
        if op == "grid":
            s = rng.choice(stewards)
            g = [str(b.id) for b in buildings if rng.random() < 0.5]
            r = client.put(f"/api/v1/users/{s.id}/grid", json={"building_ids": g}, headers=admin)
            assert r.status_code == 200, r.text
        elif op == "assign":
            o = rng.choice(orders)
            s = rng.choice(stewards)
            client.post(f"/api/v1/work-orders/{o}/assign", json={"assignee_id": str(s.id)}, headers=office)
        elif op == "station":
            b = rng.choice(buildings)
            client.patch(f"/api/v1/buildings/{b.id}", json={"station_id": str(rng.choice(stations).id)},
                         headers=office)
        elif op == "note":
            body = {"audio_sha256": "b" * 64, "duration_s": 4, "recorded_at": "2026-12-01T08:00:00+00:00"}
            if rng.random() < 0.5:
                body["work_order_id"] = rng.choice(orders)
            else:
                body["household_id"] = str(rng.choice(households).id)
            r = client.post("/api/v1/notes", json=body, headers=office)
            assert r.status_code == 201, r.text
        elif op == "order":
            r = client.post("/api/v1/work-orders", json={"household_id": str(rng.choice(households).id),
                            "category": "not_warm", "description": "x", "source": "hotline"}, headers=office)
            assert r.status_code == 201, r.text
            orders.append(r.json()["id"])
        elif op == "delete":
            offdev.pull()
            tbl = rng.choice(["notes", "visits", "readings"])
            ids = sorted(offdev.rows[tbl])
            if ids:
                offdev.delete(tbl, rng.choice(ids))
                offdev.push()
        elif op == "visit":
            i = rng.randrange(2)
            dev = devs[i]
            dev.pull()
            hs = sorted({r["household_id"] for r in dev.rows["work_orders"].values()
                         if r["assignee_id"] == str(stewards[i].id) and r["status"] in ("assigned", "in_progress")})
            if hs:
                h = rng.choice(hs)
                wo = next(r["id"] for r in dev.rows["work_orders"].values() if r["household_id"] == h
                          and r["assignee_id"] == str(stewards[i].id) and r["status"] in ("assigned", "in_progress"))
                v = dev.create("visits", household_id=h, work_order_id=wo, arrived_at="2026-12-01T08:00:00+00:00")
                dev.create("readings", household_id=h, taken_at="2026-12-01T08:10:00+00:00", temp_c=15.5,
                           visit_id=v)
                dev.push()
        elif op == "notice":
            now = utcnow()
            if rng.random() < 0.5:
                body = {"target": "building", "building_id": str(rng.choice(buildings).id)}
            else:
                body = {"target": "station", "station_id": str(rng.choice(stations).id)}
            body |= {"title": "t", "water_fill_start": (now + timedelta(days=2)).isoformat(),
                     "water_fill_end": (now + timedelta(days=2, hours=3)).isoformat(), "service_phone": "96133"}
            r = client.post("/api/v1/notices", json=body, headers=office)
            assert r.status_code == 201, r.text
        elif op == "role":
            s = rng.choice(stewards)
            client.patch(f"/api/v1/users/{s.id}", json={"role": "supervisor"}, headers=admin)
            devs[stewards.index(s)].pull_page(limit=2) if rng.random() < 0.5 else None
            r = client.patch(f"/api/v1/users/{s.id}", json={"role": "steward"}, headers=admin)
            assert r.status_code == 200, r.text
        elif op == "active":
            s = rng.choice(stewards)
            client.patch(f"/api/v1/users/{s.id}", json={"active": False}, headers=admin)
            r = client.patch(f"/api/v1/users/{s.id}", json={"active": True}, headers=admin)
            assert r.status_code == 200, r.text
            # disabling ended the steward's sessions (`users.token_epoch`): the handheld signs in again
            s.token_epoch += 1
            devs[stewards.index(s)].headers = d.headers(s)
        elif op == "gridvisit":
            i = rng.randrange(2)
            dev = devs[i]
            dev.pull()
            hs = sorted(dev.rows["households"])
            if hs:
                dev.create("visits", household_id=rng.choice(hs), arrived_at="2026-12-01T08:00:00+00:00")
                dev.create("readings", household_id=rng.choice(hs), taken_at="2026-12-01T08:10:00+00:00", temp_c=15.0)
                dev.push()
        elif op == "sdelete":
            i = rng.randrange(2)
            dev = devs[i]
            own = sorted(k for k, r in dev.rows["visits"].items() if r["steward_id"] == str(stewards[i].id))
            if own:
                dev.delete("visits", rng.choice(own))
                dev.push()
        elif op == "pull":
            dev = rng.choice(devs)
            for _ in range(rng.randrange(1, 4)):
                if not dev.pull_page(limit=rng.randrange(1, 4))["has_more"]:
                    break
    for i, dev in enumerate(devs):
        dev.pull(limit=rng.randrange(1, 6))
        truth = server_rows(client, d.headers(stewards[i]))
        assert _diff(dev, truth) == {}, (i, log)
