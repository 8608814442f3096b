"""`steward bench load`: many simulated handhelds (sync/simulator.py, httpx async) doing sync cycles against a
real `uvicorn` server on PostgreSQL.

Each device is one steward of a demo district. It first syncs its grid, then runs a fixed number of cycles:
a pause (think time), a delta pull, a push of a few mutations (new readings, new visits, edits of its own
visits) and, now and then, a full first sync again (a reinstalled app). Latency per operation, throughput and
errors go to bench/results/load-<time>.json with the machine and its load average.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from api.bench_options import database_errors, writable_directory
from api.urls import hide_passwords
from sync.bench import Backend, Server, _percentile
from sync.simulator import FIRST_SYNC, PULL, PUSH, Handheld, ProtocolError, Stats

FIRST_SYNC_TOTAL = "first_sync"  # all pages of one first sync, as the steward waits for it


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _edits(dev: Handheld, rng: random.Random, count: int, households: list[str]) -> None:
    """`count` field edits: 70 % readings, 15 % new visits, 15 % edits of the device's own visits."""
    for _ in range(count):
        roll = rng.random()
        own = [v for v, row in dev.rows["visits"].items() if row.get("actions", "").startswith("load ")]
        if roll < 0.15 and own:
            dev.update("visits", rng.choice(own), actions=f"load edit {dev.next_mutation_id}",
                       indoor_temp_c=round(rng.uniform(14, 24), 1))
        elif roll < 0.3:
            dev.create("visits", household_id=rng.choice(households), arrived_at=_now(),
                       actions=f"load visit {dev.next_mutation_id}")
        else:
            dev.create("readings", household_id=rng.choice(households), taken_at=_now(),
                       temp_c=round(rng.uniform(12, 24), 1))


async def _first_sync(dev: Handheld, limit: int) -> bool:
    start = time.perf_counter()
    ok = await dev.first_sync(limit=limit)
    if ok:
        dev.stats.record(FIRST_SYNC_TOTAL, time.perf_counter() - start)
    return ok


async def _device(dev: Handheld, rng: random.Random, *, cycles: int, think_s: float, max_mutations: int,
                  resync: float, limit: int, statuses: Counter[str], failures: list[str], tick: Any) -> None:
    await asyncio.sleep(rng.uniform(0, think_s))  # devices do not all wake up in the same instant
    try:
        await _first_sync(dev, limit)
        households = list(dev.rows["households"])
        for _ in range(cycles):
            await asyncio.sleep(rng.uniform(0, 2 * think_s))
            await dev.pull()
            if households:
                _edits(dev, rng, rng.randint(1, max_mutations), households)
            answer = await dev.push()
            if answer is not None:
                statuses.update(r["status"] for r in answer["results"])
            if rng.random() < resync:
                await _first_sync(dev, limit)
            tick()
    except ProtocolError as exc:  # counted in the stats; the device stops, as an app would show an error
        failures.append(str(exc))


def _summary(stats: Stats, seconds: float) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    for op in sorted(set(stats.latencies) | set(stats.errors)):
        lat = stats.latencies.get(op, [])
        errors = stats.errors.get(op, Counter())
        entry: dict[str, Any] = {"count": len(lat), "errors": sum(errors.values()), "error_kinds": dict(errors),
                                 "per_s": round(len(lat) / seconds, 1)}
        if lat:
            entry |= {f"p{q}_ms": round(_percentile(lat, q / 100) * 1000, 1) for q in (50, 95, 99)}
            entry["max_ms"] = round(max(lat) * 1000, 1)
        ops[op] = entry
    return ops


async def _run(base: str, tokens: list[str], *, cycles: int, think_s: float, max_mutations: int, resync: float,
               limit: int, seed: int, tick: Any) -> dict[str, Any]:
    import httpx

    stats, statuses, failures = Stats(), Counter[str](), list[str]()
    rng = random.Random(seed)
    # Idle connections are dropped well before uvicorn's 5 s keep-alive ends, or a request sent just as the
    # server closes one is lost (a ReadError that is the client's doing, not the server's).
    limits = httpx.Limits(max_connections=len(tokens), max_keepalive_connections=len(tokens), keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        devices = [Handheld(http, token, name=f"load{i}", stats=stats) for i, token in enumerate(tokens)]
        start = time.perf_counter()
        await asyncio.gather(*(_device(d, random.Random(rng.random()), cycles=cycles, think_s=think_s,
                                       max_mutations=max_mutations, resync=resync, limit=limit, statuses=statuses,
                                       failures=failures, tick=tick) for d in devices))
        seconds = time.perf_counter() - start
    requests = sum(len(stats.latencies.get(op, [])) for op in (PULL, PUSH, FIRST_SYNC))
    return {"seconds": round(seconds, 2), "requests": requests, "requests_per_s": round(requests / seconds, 1),
            "cycles_per_s": round(len(tokens) * cycles / seconds, 1),
            "mutations_acknowledged": sum(statuses.values()),
            "mutations_per_s": round(sum(statuses.values()) / seconds, 1), "push_statuses": dict(statuses),
            "errors": stats.error_count(), "failures": failures[:20], "operations": _summary(stats, seconds),
            "unpushed_at_end": sum(len(d.queue) for d in devices)}


def _table(result: dict[str, Any]) -> str:
    lines = [f"{'operation':<16} {'count':>7} {'errors':>6} {'per s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
             f"{'max ms':>8}"]
    for op, m in result["operations"].items():
        lines.append(f"{op:<16} {m['count']:>7} {m['errors']:>6} {m['per_s']:>7} {m.get('p50_ms', '-'):>8} "
                     f"{m.get('p95_ms', '-'):>8} {m.get('p99_ms', '-'):>8} {m.get('max_ms', '-'):>8}")
    lines.append(f"{result['requests']} requests in {result['seconds']} s ({result['requests_per_s']}/s), "
                 f"{result['mutations_acknowledged']} mutations ({result['mutations_per_s']}/s), "
                 f"{result['errors']} errors")
    return "\n".join(lines)


def bench_load(
    devices: Annotated[int, typer.Option(min=1, help="Concurrent simulated handhelds (one steward each).")] = 200,
    cycles: Annotated[int, typer.Option(min=1, help="Sync cycles per device (pull, push; sometimes a first sync).")]
    = 8,
    households: Annotated[int, typer.Option(min=100, help="District size; split into one grid per device.")] = 20_000,
    history: Annotated[int, typer.Option(min=0, help="Past work orders per household (each with a visit and two "
                                                     "readings).")] = 1,
    think_ms: Annotated[float, typer.Option(min=0, help="Mean pause between a device's cycles (uniform 0..2x).")]
    = 10_000,
    mutations: Annotated[int, typer.Option(min=1, max=1000, help="At most this many mutations per push.")] = 5,
    resync: Annotated[float, typer.Option(min=0, max=1, help="Chance per cycle of a full first sync again.")] = 0.02,
    limit: Annotated[int, typer.Option(min=1, max=5000, help="Page size of first syncs.")] = 1000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed of the devices' behaviour.")] = 1,
    postgres_url: Annotated[str, typer.Option(envvar="STEWARD_BENCH_POSTGRES_URL",
                                              help="PostgreSQL server (a scratch database is created on it).")] = "",
    out_dir: Annotated[Path, typer.Option(help="Where the JSON goes.")] = Path("bench/results"),
) -> None:
    """Simulated handhelds syncing at once: throughput, latency per operation, errors; prints a table, writes JSON."""
    from sqlalchemy import text
    from sqlmodel import Session, select

    from api import migrate
    from api.db import make_engine
    from api.demo import generate
    from api.security import create_access_token
    from api.users.models import Role, User

    if not postgres_url:
        raise typer.BadParameter("give --postgres-url (or STEWARD_BENCH_POSTGRES_URL): the load runs on PostgreSQL")
    writable_directory(out_dir, "--out-dir")
    load_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="steward-load-") as workdir:
        with database_errors(postgres_url):
            backend = Backend("postgresql", postgres_url, Path(workdir))
        try:
            engine = make_engine(backend.settings)
            try:
                migrate.upgrade(engine)
                typer.echo(f"seeding {households} households for {devices} stewards...", err=True)
                district = generate(engine, households=households, stewards=devices, password="load-password",
                                    seed=1, history=history)
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text("VACUUM ANALYZE"))
                with Session(engine) as session:
                    stewards = session.exec(select(User).where(User.role == Role.steward)
                                            .order_by(User.username)).all()
                    tokens = [create_access_token(settings=backend.settings, user_id=u.id, role=u.role.value)[0]
                              for u in stewards]
            finally:
                engine.dispose()
            server = Server(backend, workers)
            try:
                memory_start = server.memory()
                with typer.progressbar(length=devices * cycles, label="sync cycles", file=sys.stderr) as bar:
                    result = asyncio.run(_run(server.base, tokens, cycles=cycles, think_s=think_ms / 1000,
                                              max_mutations=mutations, resync=resync, limit=limit, seed=seed,
                                              tick=lambda: bar.update(1)))
                memory_end = server.memory()
            finally:
                server.close()
        finally:
            backend.drop()
    pull = result["operations"].get(PULL, {})
    result["goals"] = {"zero_errors": result["errors"] == 0 and not result["failures"],
                       "p95_pull_under_100_ms": pull.get("p95_ms", float("inf")) < 100}
    result["server_memory"] = {"start": memory_start, "end": memory_end}
    table = _table(result)
    typer.echo(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"load-{stamp}.json"
    path.write_text(json.dumps({
        "command": hide_passwords(" ".join(sys.argv)), "at": stamp,
        "parameters": {"devices": devices, "cycles": cycles, "households": households, "history": history,
                       "think_ms": think_ms, "mutations": mutations, "resync": resync, "limit": limit,
                       "workers": workers, "seed": seed},
        "district": {k: district[k] for k in ("stations", "buildings", "households", "work_orders", "visits",
                                              "readings", "history_rows")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_start": load_start, "load_average_at_end": list(os.getloadavg())},
        "result": result, "table": table}, indent=2, ensure_ascii=False))
    typer.echo(f"written to {path}")
    if result["failures"]:
        raise typer.Exit(1)
