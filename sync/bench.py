"""`steward bench sync`: the offline-sync benchmark of issue 3, on SQLite and PostgreSQL side by side.

For each backend: seed a district with the demo generator (dense history, so one steward's grid of about
5,000 households holds about 50,000 records), then measure against a raw indexed SELECT + orjson:
first sync of the grid (all pages, in process and over HTTP against a real uvicorn server), delta pulls
with 10 changed rows from many concurrent devices, push throughput in batches, and the server's memory.
Prints a table and writes the numbers as JSON under bench/results/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from api.bench_options import database_errors, writable_directory
from api.urls import hide_passwords, sqlite_url

SECRET = "bench-secret-key-bench-secret-key-bench-secret"
HOUSEHOLDS_PER_GRID = 5000
PUSH_WARMUP_BATCHES = 1  # untimed push batches before the timed ones (see `_push_batches`)


def _rss_kib(pid: int) -> dict[str, int]:
    """Current and peak resident memory of a process (KiB), from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _median(fn: Any, runs: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Backend:
    """One database for the run: created empty, migrated, seeded, dropped at the end."""

    def __init__(self, name: str, url: str, workdir: Path) -> None:
        from api.db import create_database
        from api.settings import Settings

        self.name = name
        self.admin_url = ""
        if name == "postgresql":
            self.admin_url = Settings(database_url=url).resolved_database_url
            self.url = create_database(self.admin_url, "steward_bench")
        else:
            self.url = sqlite_url(workdir / "steward.db")
        self.settings = Settings(database_url=self.url, data_dir=workdir, secret_key=SECRET)

    def drop(self) -> None:
        if self.name != "postgresql":
            return
        from sqlalchemy.engine import make_url

        from api.db import drop_database

        drop_database(self.admin_url, str(make_url(self.url).database))


def baseline_queries(dialect: str) -> dict[str, str]:
    """Per synced table, the raw SELECT of a steward's (`:u`) grid: the rows a first sync sends."""
    from sync.registry import TABLES

    def in_(column: str, subquery: str) -> str:
        # PostgreSQL plans `x IN (SELECT ...) OR y = :u` as a filter over the whole table (a hashed subplan cannot
        # feed an index scan); `= ANY(ARRAY(...))` lets it OR two index scans, as an indexed SELECT should. The
        # ratios published before 2026-12-02 were against that slower whole-table baseline.
        return f"{column} IN {subquery}" if dialect == "sqlite" else f"{column} = ANY(ARRAY{subquery})"

    grid = "(SELECT building_id FROM grid_buildings WHERE user_id = :u)"
    households = f"(SELECT id FROM households WHERE {in_('building_id', grid)})"
    stations = f"(SELECT station_id FROM buildings WHERE {in_('id', grid)})"
    campaigns = f"(SELECT id FROM notice_campaigns WHERE {in_('station_id', stations)})"
    where = {"stations": "1 = 1", "buildings": in_("id", grid), "households": in_("building_id", grid),
             "work_orders": f"{in_('household_id', households)} OR assignee_id = :u",
             "visits": f"{in_('household_id', households)} OR steward_id = :u",
             "readings": f"{in_('household_id', households)} OR taken_by_id = :u",
             "notes": f"{in_('household_id', households)} OR owner_id = :u",
             "notices": f"{in_('building_id', grid)} OR {in_('station_id', stations)}",
             "notice_campaigns": in_("station_id", stations),
             "campaign_deliveries": f"{in_('household_id', households)} AND {in_('campaign_id', campaigns)}"}
    return {spec.name: f"SELECT {', '.join(spec.column_names)} FROM {spec.name} WHERE {where[spec.name]}"
            for spec in TABLES}


def _baseline(engine: Any, user_id: uuid.UUID) -> tuple[int, int]:
    """The same rows with one raw indexed SELECT per table, serialised with orjson."""
    import orjson
    from sqlalchemy import text

    from sync.registry import TABLES

    uid = user_id.hex if engine.dialect.name == "sqlite" else str(user_id)
    queries = baseline_queries(engine.dialect.name)
    records = size = 0
    with engine.connect() as conn:
        for spec in TABLES:
            names = spec.column_names
            rows = conn.execute(text(queries[spec.name]), {"u": uid}).all()
            size += len(orjson.dumps([dict(zip(names, row, strict=True)) for row in rows]))
            records += len(rows)
    return records, size


def _service_first_sync(engine: Any, settings: Any, user: Any, limit: int) -> tuple[int, int, int]:
    """All pages of a first sync through the pull service, in process (records, bytes, pages)."""
    import orjson
    from sqlmodel import Session

    from sync.pull import pull

    cursor, records, size, pages = None, 0, 0, 0
    while True:
        with Session(engine) as session:
            page = pull(session=session, settings=settings, user=user, cursor=cursor, limit=limit)
        size += len(orjson.dumps(page))
        records += sum(len(c["upserts"]) + len(c["deletes"]) for c in page["changes"].values())
        pages += 1
        cursor = page["cursor"]
        if not page["has_more"]:
            return records, size, pages


class Server:
    """`uvicorn api.main:app` in a child process, configured like production for this database."""

    def __init__(self, backend: Backend, workers: int) -> None:
        self.port = _free_port()
        # Without the periodic proactive evaluation (docs/proactive.md): its first run, 30 s after the start,
        # fell in the middle of the pushes and stalled one batch by about 1 s. A district this size runs it
        # from cron (`steward proactive run`), not inside the API servers.
        env = os.environ | {"STEWARD_DATABASE_URL": backend.url, "STEWARD_SECRET_KEY": SECRET,
                            "STEWARD_DATA_DIR": str(backend.settings.data_dir), "STEWARD_ENV": "dev",
                            "STEWARD_PROACTIVE_INTERVAL_MINUTES": "0"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers), "--log-level", "warning", "--no-access-log"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.base = f"http://127.0.0.1:{self.port}"
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError("the benchmark server did not start")

    def memory(self) -> dict[str, int]:
        """RSS of the server and its workers (KiB): current and peak."""
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        total = {"VmRSS": 0, "VmHWM": 0}
        for pid in pids:
            for key, value in _rss_kib(pid).items():
                total[key] += value
        return {"rss_kib": total["VmRSS"], "peak_kib": total["VmHWM"]}

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _http_first_sync(base: str, headers: dict[str, str], limit: int,
                     encoding: str = "identity") -> tuple[int, int, int, str, int]:
    """All pages over HTTP, accepting `encoding` (identity or gzip): records, JSON bytes, pages, the last cursor
    and the bytes that crossed the wire."""
    import httpx
    import orjson

    cursor, records, size, pages, wire = None, 0, 0, 0, 0
    with httpx.Client(base_url=base, headers=headers | {"Accept-Encoding": encoding}, timeout=120) as client:
        while True:
            params: dict[str, Any] = {"schema_version": 1, "limit": limit}
            if cursor:
                params["cursor"] = cursor
            response = client.get("/api/v1/sync/pull", params=params)
            response.raise_for_status()
            size += len(response.content)
            wire += response.num_bytes_downloaded
            page = orjson.loads(response.content)
            records += sum(len(c["upserts"]) + len(c["deletes"]) for c in page["changes"].values())
            pages += 1
            cursor = page["cursor"]
            if not page["has_more"]:
                return records, size, pages, cursor, wire


def _change_rows(engine: Any, visit_ids: list[uuid.UUID], tag: str) -> None:
    """Ten office edits in the steward's grid, one transaction (as the REST API would make them)."""
    from sqlmodel import Session

    from api.fieldwork.models import Visit

    with Session(engine) as session:
        for visit_id in visit_ids:
            visit = session.get(Visit, visit_id)
            assert visit is not None
            visit.actions = f"bench {tag}"
            session.add(visit)
        session.commit()


async def _burst(base: str, headers: dict[str, str], cursor: str, devices: int) -> tuple[list[float], str, int]:
    """`devices` pulls at once from the same position; their latencies, the next cursor, rows seen."""
    import httpx
    import orjson

    limits = httpx.Limits(max_connections=devices, max_keepalive_connections=devices)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120, limits=limits) as client:
        async def one() -> tuple[float, bytes]:
            start = time.perf_counter()
            response = await client.get("/api/v1/sync/pull", params={"schema_version": 1, "cursor": cursor})
            response.raise_for_status()
            return time.perf_counter() - start, response.content

        await asyncio.gather(*(client.get("/healthz") for _ in range(devices)))  # open the connections
        results = await asyncio.gather(*(one() for _ in range(devices)))
    page = orjson.loads(results[0][1])
    rows = sum(len(c["upserts"]) for c in page["changes"].values())
    return [r[0] for r in results], page["cursor"], rows


def _server_seconds(response: Any) -> float:
    """The server's own time for a request, from its `Server-Timing: app;dur=<ms>` header."""
    for metric in response.headers.get("server-timing", "").split(","):
        name, _, params = metric.strip().partition(";")
        if name == "app" and params.startswith("dur="):
            return float(params[4:]) / 1000
    raise RuntimeError("the server sent no Server-Timing header")


async def _steady(base: str, headers: dict[str, str], cursor: str, devices: int, period: float, duration: float
                  ) -> tuple[list[float], list[float]]:
    """`devices` devices, each pulling from `cursor` every `period` seconds (random phase), for `duration`:
    the latencies the devices saw, and the server's own time for the same requests (Server-Timing)."""
    import random

    import httpx

    limits = httpx.Limits(max_connections=devices, max_keepalive_connections=devices)
    latencies: list[float] = []
    server: list[float] = []
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120, limits=limits) as client:
        async def device(phase: float) -> None:
            await asyncio.sleep(phase)
            end = time.monotonic() + duration
            while time.monotonic() < end:
                start = time.perf_counter()
                response = await client.get("/api/v1/sync/pull", params={"schema_version": 1, "cursor": cursor})
                response.raise_for_status()
                latencies.append(time.perf_counter() - start)
                server.append(_server_seconds(response))
                await asyncio.sleep(max(0.0, period - (time.perf_counter() - start)))

        rng = random.Random(1)
        await asyncio.gather(*(device(rng.uniform(0, period)) for _ in range(devices)))
    return latencies, server


@dataclass
class _Pushes:
    """The timed batches of one kind of ids."""

    seconds: float = 0.0
    mutations: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    each: list[float] = field(default_factory=list)  # seconds per batch: one slow batch (a checkpoint) shows here

    def result(self, batch: int) -> dict[str, Any]:
        median = _percentile(self.each, 0.5)
        return {"mutations": self.mutations, "batch": batch, "warmup_batches": PUSH_WARMUP_BATCHES,
                "seconds": round(self.seconds, 3), "batch_ms": [round(t * 1000, 1) for t in self.each],
                "mutations_per_s": round(self.mutations / self.seconds),
                # the typical batch, unmoved by a stall of the machine (one 1 s batch in 40 has been seen)
                "median_batch_ms": round(median * 1000, 1),
                "mutations_per_s_at_median_batch": round(batch / median), "statuses": self.statuses}


def _push_batches(base: str, headers: dict[str, str], households: list[str], visits: dict[str, int],
                  batches: int, size: int, warmup: int = PUSH_WARMUP_BATCHES, *,
                  random_ids: tuple[bool, ...] = (False,)) -> dict[bool, _Pushes]:
    """Sequential pushes of `size` mutations: 80 % new readings, 20 % visit edits. The first `warmup` batches
    are not timed: a worker's first push compiles and prepares its statements (about 0.2 s, once per
    process), which says nothing about its rate. New rows get time-ordered UUIDv7 ids, as the protocol asks
    of devices, or random UUIDv4 ids (a device that ignores that): batch i takes `random_ids[i % n]`, so two
    kinds alternate batch by batch and share the same moment of the server (one after the other, the second
    ran on a warmer server). The timed batches, by kind."""
    import httpx
    import orjson

    from api.db import new_id

    client_id, mutation_id = str(uuid.uuid4()), 0
    timed = {kind: _Pushes() for kind in random_ids}
    visit_ids = list(visits)
    with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        for batch in range(warmup + batches * len(random_ids)):
            kind = random_ids[batch % len(random_ids)]
            mutations: list[dict[str, Any]] = []
            for n in range(size):
                mutation_id += 1
                if n % 5 == 4:
                    visit = visit_ids[(batch * size + n) % len(visit_ids)]
                    mutations.append({"mutation_id": mutation_id, "table": "visits", "op": "update", "id": visit,
                                      "base_version": visits[visit], "fields": {"actions": f"push {mutation_id}"}})
                else:
                    mutations.append({"mutation_id": mutation_id, "table": "readings", "op": "upsert",
                                      "id": str(uuid.uuid4() if kind else new_id()), "base_version": None,
                                      "fields": {"household_id": households[n % len(households)],
                                                 "taken_at": "2026-12-01T08:00:00+00:00", "temp_c": 19.5}})
            body = orjson.dumps({"client_id": client_id, "schema_version": 1, "mutations": mutations})
            start = time.perf_counter()
            response = client.post("/api/v1/sync/push", content=body, headers={"content-type": "application/json"})
            took = time.perf_counter() - start
            response.raise_for_status()
            pushes = timed[kind] if batch >= warmup else None
            if pushes is not None:
                pushes.each.append(took)
                pushes.seconds += took
                pushes.mutations += size
            for result, m in zip(orjson.loads(response.content)["results"], mutations, strict=True):
                if pushes is not None:
                    pushes.statuses[result["status"]] = pushes.statuses.get(result["status"], 0) + 1
                if m["table"] == "visits" and result["version"]:
                    visits[m["id"]] = result["version"]
    return timed


def run_backend(backend: Backend, *, households: int, history: int, devices: int, rounds: int, batches: int,
                batch_size: int, workers: int, period: float, duration: float, log: Any) -> dict[str, Any]:
    """Seed, measure, and return the numbers of one backend."""
    from sqlmodel import Session, col, select

    from api import migrate
    from api.db import make_engine
    from api.demo import generate
    from api.fieldwork.models import Visit
    from api.network.models import Household
    from api.security import create_access_token
    from api.users.models import GridBuilding, User

    engine = make_engine(backend.settings)
    # Other work on the machine skews every number: the load average is kept with the results.
    out: dict[str, Any] = {"backend": backend.name, "load_average_at_start": list(os.getloadavg())}
    try:
        migrate.upgrade(engine)
        log(f"[{backend.name}] seeding {households} households (history {history})...")
        start = time.perf_counter()
        summary = generate(engine, households=households, stewards=max(1, households // HOUSEHOLDS_PER_GRID),
                           password="bench-password", seed=1, history=history)
        out["seed_seconds"] = round(time.perf_counter() - start, 1)
        if backend.name == "postgresql":
            # What autovacuum does shortly after a bulk load (statistics for the planner, the visibility
            # map): done now, so it does not run in the middle of a measurement.
            from sqlalchemy import text
            from sqlalchemy.exc import DBAPIError

            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
                # The seeding wrote about 0.5 GB of WAL: PostgreSQL's checkpoint of it otherwise runs for a
                # minute in the middle of the measurements (it took delta p95 from 19 to 69 ms). CHECKPOINT
                # needs the pg_checkpoint role (PostgreSQL 15+) or a superuser; .ci/run grants it.
                try:
                    conn.execute(text("CHECKPOINT"))
                    out["checkpoint_after_seed"] = True
                except DBAPIError:
                    out["checkpoint_after_seed"] = False
                    log(f"[{backend.name}] cannot CHECKPOINT (GRANT pg_checkpoint TO the benchmark's role): the "
                        "checkpoint of the seeding's writes may overlap the measurements")
        out["district"] = {k: summary[k] for k in ("stations", "buildings", "households", "work_orders", "visits",
                                                    "readings", "history_rows")}
        with Session(engine) as session:
            user = session.exec(select(User).where(User.username == "steward01")).one()
            grid = select(GridBuilding.building_id).where(GridBuilding.user_id == user.id)
            grid_households = [str(h) for h in session.exec(
                select(Household.id).where(col(Household.building_id).in_(grid))).all()]
            visit_rows = session.exec(select(Visit.id, Visit.version).where(
                col(Visit.household_id).in_(select(Household.id).where(col(Household.building_id).in_(grid))))
            ).all()
        out["grid_households"] = len(grid_households)
        base_s, (records, size) = _median(lambda: _baseline(engine, user.id), 3)
        out["baseline"] = {"records": records, "bytes": size, "seconds": round(base_s, 3)}
        log(f"[{backend.name}] baseline: {records} records in {base_s:.3f} s")
        for limit in (1000, 5000):
            secs, (n, b, pages) = _median(lambda lim=limit: _service_first_sync(engine, backend.settings, user, lim),
                                          3)
            out[f"first_sync_in_process_{limit}"] = {"records": n, "bytes": b, "pages": pages,
                                                     "seconds": round(secs, 3), "ratio": round(secs / base_s, 2)}
            log(f"[{backend.name}] first sync in process, limit {limit}: {secs:.3f} s")
        token, _ = create_access_token(settings=backend.settings, user_id=user.id, role=user.role.value)
        headers = {"Authorization": f"Bearer {token}"}
        server = Server(backend, workers)
        try:
            out["server_memory_start"] = server.memory()
            cursor = ""
            # As plain JSON (the comparison with the baseline), and gzipped as a handheld asks for it:
            # fewer bytes on a weak link for the server's and the device's CPU (docs/sync-protocol.md).
            for encoding, key in (("gzip", "first_sync_http_gzip"), ("identity", "first_sync_http")):
                for limit in (1000, 5000):
                    secs, (n, b, pages, cursor, wire) = _median(
                        lambda lim=limit, enc=encoding: _http_first_sync(server.base, headers, lim, enc), 3)
                    out[f"{key}_{limit}"] = {"records": n, "bytes": b, "wire_bytes": wire, "pages": pages,
                                             "seconds": round(secs, 3), "ratio": round(secs / base_s, 2)}
                    log(f"[{backend.name}] first sync over HTTP ({encoding}), limit {limit}: {secs:.3f} s, "
                        f"{wire / 1e6:.1f} MB on the wire")
            out["server_memory_after_first_sync"] = server.memory()
            changed = [v[0] for v in visit_rows[:10]]
            single, burst, seen = [], [], set()
            for r in range(rounds):
                _change_rows(engine, changed, f"{r}")
                one, _, rows = asyncio.run(_burst(server.base, headers, cursor, 1))
                single += one
                latencies, cursor, rows = asyncio.run(_burst(server.base, headers, cursor, devices))
                burst += latencies
                seen.add(rows)
            _change_rows(engine, changed, "steady")
            steady, steady_server = asyncio.run(_steady(server.base, headers, cursor, devices, period, duration))
            out["delta_10_rows"] = {
                "devices": devices, "rounds": rounds, "rows_per_pull": sorted(seen),
                "p50_ms": round(_percentile(burst, 0.5) * 1000, 1),
                "p95_ms": round(_percentile(burst, 0.95) * 1000, 1),
                "max_ms": round(max(burst) * 1000, 1),
                "single_device_p50_ms": round(_percentile(single, 0.5) * 1000, 1),
                "single_device_p95_ms": round(_percentile(single, 0.95) * 1000, 1),
                "steady": {"period_s": period, "duration_s": duration, "pulls": len(steady),
                           "pulls_per_s": round(len(steady) / duration, 1),
                           "p50_ms": round(_percentile(steady, 0.5) * 1000, 1),
                           "p95_ms": round(_percentile(steady, 0.95) * 1000, 1),
                           "max_ms": round(max(steady) * 1000, 1),
                           # The same requests timed inside the server (Server-Timing): what is left once the
                           # benchmark's own devices, on the same cores, are taken out.
                           "server_p50_ms": round(_percentile(steady_server, 0.5) * 1000, 1),
                           "server_p95_ms": round(_percentile(steady_server, 0.95) * 1000, 1)}}
            log(f"[{backend.name}] delta with {devices} devices: {out['delta_10_rows']}")
            out["server_memory_after_delta"] = server.memory()
            visits = {str(v[0]): v[1] for v in visit_rows[10:] or visit_rows}
            pushes = _push_batches(server.base, headers, grid_households, visits, batches, batch_size,
                                   random_ids=(False, True))
            for key, kind in (("push", False), ("push_random_ids", True)):
                out[key] = pushes[kind].result(batch_size)
                log(f"[{backend.name}] {key}: {out[key]['mutations_per_s']} mutations/s {out[key]['statuses']}, "
                    f"ms per batch {out[key]['batch_ms']}")
            out["server_memory_end"] = server.memory()
            out["load_average_at_end"] = list(os.getloadavg())
        finally:
            server.close()
    finally:
        engine.dispose()
    return out


def _table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'backend':<11} {'measure':<36} {'records':>8} {'MB':>7} {'seconds':>8} {'x baseline':>10} "
             f"{'MB on the wire':>14}"]
    for r in results:
        rows = [("raw SELECT + orjson (baseline)", r["baseline"])]
        rows += [(f"first sync, in process, limit {n}", r[f"first_sync_in_process_{n}"]) for n in (1000, 5000)]
        rows += [(f"first sync, HTTP, limit {n}", r[f"first_sync_http_{n}"]) for n in (1000, 5000)]
        rows += [(f"first sync, HTTP gzip, limit {n}", r[f"first_sync_http_gzip_{n}"]) for n in (1000, 5000)
                 if f"first_sync_http_gzip_{n}" in r]
        for label, m in rows:
            ratio = f"{m['ratio']:.2f}" if "ratio" in m else "1.00"
            wire = f"{m['wire_bytes'] / 1e6:>14.1f}" if "wire_bytes" in m else ""
            lines.append(f"{r['backend']:<11} {label:<36} {m['records']:>8} {m['bytes'] / 1e6:>7.1f} "
                         f"{m['seconds']:>8.3f} {ratio:>10} {wire}".rstrip())
        d = r["delta_10_rows"]
        lines.append(f"{r['backend']:<11} delta pull, 10 rows, one device: p50 {d['single_device_p50_ms']} ms, "
                     f"p95 {d['single_device_p95_ms']} ms")
        st = d["steady"]
        lines.append(f"{r['backend']:<11} delta pull, 10 rows, {d['devices']} devices each every {st['period_s']} s "
                     f"({st['pulls_per_s']} pulls/s): p50 {st['p50_ms']} ms, p95 {st['p95_ms']} ms"
                     + (f" (in the server: p50 {st['server_p50_ms']} ms, p95 {st['server_p95_ms']} ms)"
                        if "server_p95_ms" in st else ""))
        lines.append(f"{r['backend']:<11} delta pull, 10 rows, {d['devices']} devices at the same instant: "
                     f"p50 {d['p50_ms']} ms, p95 {d['p95_ms']} ms, max {d['max_ms']} ms")
        for key, ids in (("push", "UUIDv7 ids"), ("push_random_ids", "random UUIDv4 ids")):
            if key in r:
                p = r[key]
                lines.append(f"{r['backend']:<11} push, batches of {p['batch']}, {ids}: {p['mutations_per_s']} "
                             f"mutations/s ({p['mutations']} in {p['seconds']} s; median batch "
                             f"{p['median_batch_ms']} ms, {p['mutations_per_s_at_median_batch']}/s, slowest "
                             f"{max(p['batch_ms'])} ms)")
        m0, m1, m2 = r["server_memory_start"], r["server_memory_after_first_sync"], r["server_memory_end"]
        lines.append(f"{r['backend']:<11} server RSS: {m0['rss_kib'] // 1024} MiB at start, peak "
                     f"{m1['peak_kib'] // 1024} MiB after first syncs, {m2['peak_kib'] // 1024} MiB at the end")
    return "\n".join(lines)


def bench_sync(
    households: Annotated[int, typer.Option(min=100, help="District size (households).")] = 200_000,
    history: Annotated[int, typer.Option(min=0, help="Past work orders per household (each with a visit and "
                                                     "two readings): 2 gives ~50,000 records per grid.")] = 2,
    postgres_url: Annotated[str, typer.Option(envvar="STEWARD_BENCH_POSTGRES_URL",
                                              help="PostgreSQL server (a scratch database is created on it).")] = "",
    sqlite: Annotated[bool, typer.Option(help="Also run on SQLite.")] = True,
    devices: Annotated[int, typer.Option(min=1, help="Concurrent devices for the delta pull.")] = 100,
    rounds: Annotated[int, typer.Option(min=1, help="Delta rounds (each: 10 changes, then every device pulls).")]
    = 5,
    batches: Annotated[int, typer.Option(min=1, help="Timed push batches per kind of ids, UUIDv7 and random "
                                                   "UUIDv4 taking turns (after one untimed). 40 x 500 is about "
                                                   "4 s: long enough for a rate, not a warm-up.")] = 40,
    batch_size: Annotated[int, typer.Option(min=1, max=1000, help="Mutations per push.")] = 500,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
    period: Annotated[float, typer.Option(min=0.05, help="Steady delta test: seconds between a device's pulls.")]
    = 2.0,
    duration: Annotated[float, typer.Option(min=1, help="Steady delta test: seconds.")] = 10.0,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON goes.")] = Path("bench/results"),
) -> None:
    """Measure first sync, delta pulls, push throughput and memory; print a table, write JSON."""
    backends = (["sqlite"] if sqlite else []) + (["postgresql"] if postgres_url else [])
    if not backends:
        raise typer.BadParameter("nothing to run: give --postgres-url (or STEWARD_BENCH_POSTGRES_URL) or --sqlite")

    writable_directory(out_dir, "--out-dir")

    def log(message: str) -> None:
        typer.echo(message, err=True)

    results = []
    with contextlib.ExitStack() as stack:
        # Every database made before any is measured: a PostgreSQL URL that cannot be used was reported only after
        # the whole SQLite run (minutes).
        made = []
        for name in backends:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="steward-bench-"))
            with database_errors(postgres_url):
                backend = Backend(name, postgres_url, Path(workdir))
            stack.callback(backend.drop)
            made.append(backend)
        for backend in made:
            results.append(run_backend(backend, households=households, history=history, devices=devices,
                                       rounds=rounds, batches=batches, batch_size=batch_size, workers=workers,
                                       period=period, duration=duration, log=log))
    table = _table(results)
    typer.echo(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"sync-{households}-{stamp}.json"
    # The command line as given, `--postgres-url` included: its password masked (the results are committed).
    path.write_text(json.dumps({"command": hide_passwords(" ".join(sys.argv)), "at": stamp,
                                "households": households, "history": history, "workers": workers, "machine": {
                                    "cpus": os.cpu_count(), "python": platform.python_version(),
                                    "platform": platform.platform()}, "results": results, "table": table},
                               indent=2, ensure_ascii=False))
    typer.echo(f"written to {path}")
