"""`steward bench video`: how many rooms one relay process holds on this machine.

Each stage runs N rooms, each with one publisher (the resident: 640x480 at 24 fps plus a tone) and two
subscribers (the steward, who also talks, and a watching supervisor), all aiortc clients on loopback.
The server is a real `uvicorn api.main:app` process on a throwaway SQLite database; the clients run in
separate processes (one per core) so that a client's GIL is not what is measured. Per stage it reports
server CPU (total, per room, per subscriber stream), delivered fps per subscriber, frame latency
through the relay (from stamps written into the frames' pixels), and server memory per room; stages grow
until a subscriber drops below the fps floor. Clients share the machine with the server, so the largest
N is a floor for the relay alone; the CPU per stream is what sizes a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Annotated, Any

import typer

FPS = 24
FPS_FLOOR = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class RoomTicket:
    room_id: str
    join_token: str
    steward_token: str
    supervisor_token: str


# --- the server process -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu_s(pid: int, tid: int | None = None) -> float:
    """CPU seconds of a process, or of one of its threads."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _seed(env: dict[str, str], rooms: int) -> tuple[list[str], str, str]:
    """A migrated database with one steward, a supervisor and `rooms` open work orders."""
    from sqlmodel import Session

    from api import migrate
    from api.db import make_engine, utcnow
    from api.network.models import Building, Household, Station
    from api.security import create_access_token, hash_password
    from api.settings import Settings
    from api.users.models import GridBuilding, Role, User
    from api.work_orders.models import Category, Status, WorkOrder

    settings = Settings(data_dir=Path(env["STEWARD_DATA_DIR"]), database_url=env["STEWARD_DATABASE_URL"])
    engine = make_engine(settings)
    migrate.upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        station = Station(code="HS-BENCH", name="压测换热站", district="历下区")
        session.add(station)
        session.flush()
        building = Building(station_id=station.id, community="压测小区", number="1")
        session.add(building)
        session.flush()
        password = hash_password("bench-password")
        steward = User(username="bench-steward", role=Role.steward, password_hash=password)
        supervisor = User(username="bench-supervisor", role=Role.supervisor, password_hash=password)
        session.add_all([steward, supervisor])
        session.flush()
        session.add(GridBuilding(user_id=steward.id, building_id=building.id))
        orders = []
        for i in range(rooms):
            household = Household(building_id=building.id, unit="1", room=str(100 + i), resident_name="住户",
                                  phone="13800000000", area_m2=80)
            session.add(household)
            session.flush()
            order = WorkOrder(household_id=household.id, category=Category.air_lock, status=Status.in_progress,
                              assignee_id=steward.id, sla_due_at=utcnow() + timedelta(hours=8))
            session.add(order)
            orders.append(order)
        session.commit()
        tokens = [create_access_token(settings=settings, user_id=u.id, role=u.role.value)[0]
                  for u in (steward, supervisor)]
        order_ids = [str(o.id) for o in orders]
    engine.dispose()
    return order_ids, tokens[0], tokens[1]


# --- client processes ---------------------------------------------------------------------------------


def _client_process(base_url: str, tickets: list[RoomTicket], conn: Connection) -> None:
    """Join the given rooms, then answer `mark` (counters now) and `stop` commands from the parent."""
    try:
        asyncio.run(_client_main(base_url, tickets, conn))
    except Exception as exc:  # tell the parent rather than leave it waiting
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


async def _client_main(base_url: str, tickets: list[RoomTicket], conn: Connection) -> None:
    import httpx

    from video.clients import Participant

    loop = asyncio.get_running_loop()
    subscribers: list[Participant] = []
    everyone: list[Participant] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        for t in tickets:
            resident = Participant(role="resident", video=True, audio=True, fps=FPS, decode_stamps=False)
            steward = Participant(role="steward", audio=True)
            supervisor = Participant(role="supervisor", receive_audio=1, receive_video=1)
            for participant, token in ((resident, t.join_token), (steward, t.steward_token),
                                       (supervisor, t.supervisor_token)):
                r = await participant.join(http, t.room_id, token)
                if r.status_code != 200:
                    raise RuntimeError(f"join failed: {r.status_code} {r.text}")
                everyone.append(participant)
            subscribers += [steward, supervisor]
        for participant in everyone:
            await participant.connected(timeout=30)
        conn.send({"ready": True})
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "mark":
                conn.send({"at": time.monotonic(), "cpu_s": time.process_time(), "subscribers": [
                    {"stamped": v.stamped, "latencies": len(v.latencies_ms)}
                    for s in subscribers for v in s.tracks("video")]})
            elif command == "latencies":
                conn.send([v.latencies_ms for s in subscribers for v in s.tracks("video")])
            else:
                break
        for participant in everyone:
            await participant.close()
    conn.send({"closed": True})


# --- one stage ------------------------------------------------------------------------------------------


def _stage(base_url: str, server_pid: int, tickets: list[RoomTicket], *, clients: int, warmup: float,
           seconds: float, rss_idle: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    groups = [tickets[i::clients] for i in range(clients) if tickets[i::clients]]
    pipes, procs = [], []
    for group in groups:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_client_process, args=(base_url, group, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for pipe in pipes:
            reply = pipe.recv()
            if "error" in reply:
                raise RuntimeError(reply["error"])
        time.sleep(warmup)
        # the main thread runs the event loop: all RTP, SRTP, ICE and Python-side media work
        cpu0, loop0, t0 = _proc_cpu_s(server_pid), _proc_cpu_s(server_pid, server_pid), time.monotonic()
        marks0 = _mark(pipes)
        time.sleep(seconds)
        cpu1, loop1, t1 = _proc_cpu_s(server_pid), _proc_cpu_s(server_pid, server_pid), time.monotonic()
        marks1 = _mark(pipes)
        rss_during = _proc_rss_mb(server_pid)
        latencies: list[float] = []
        for pipe, m0 in zip(pipes, marks0, strict=True):
            pipe.send("latencies")
            for per_track, before in zip(pipe.recv(), m0["subscribers"], strict=True):
                latencies += per_track[before["latencies"]:]
        fps = []
        client_cpu = 0.0
        for m0, m1 in zip(marks0, marks1, strict=True):
            span = m1["at"] - m0["at"]
            client_cpu += (m1["cpu_s"] - m0["cpu_s"]) / span
            fps += [(b["stamped"] - a["stamped"]) / span for a, b in zip(m0["subscribers"], m1["subscribers"],
                                                                        strict=True)]
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    rooms = len(tickets)
    server_cores = (cpu1 - cpu0) / (t1 - t0)
    latencies.sort()
    return {
        "rooms": rooms,
        "subscriber_streams": 2 * rooms,
        "server_cpu_cores": round(server_cores, 3),
        "server_event_loop_cores": round((loop1 - loop0) / (t1 - t0), 3),
        "server_cpu_per_room_pct": round(100 * server_cores / rooms, 1),
        "server_cpu_per_subscriber_stream_pct": round(100 * server_cores / (2 * rooms), 1),
        "client_cpu_cores": round(client_cpu, 3),
        "fps_min": round(min(fps), 1),
        "fps_mean": round(statistics.fmean(fps), 1),
        "latency_ms_p50": round(latencies[len(latencies) // 2], 1) if latencies else None,
        "latency_ms_p95": round(latencies[int(len(latencies) * 0.95)], 1) if latencies else None,
        "server_rss_mb": round(rss_during, 1),
        # against the server's RSS before any room: memory earlier stages freed may not go back to the OS
        "server_rss_mb_per_room": round((rss_during - rss_idle) / rooms, 1),
        "holds_floor": min(fps) >= FPS_FLOOR,
    }


def _mark(pipes: list[Connection]) -> list[dict[str, Any]]:
    for pipe in pipes:
        pipe.send("mark")
    return [pipe.recv() for pipe in pipes]


# --- the command ----------------------------------------------------------------------------------------


def run_bench(stages: list[int], *, warmup: float, seconds: float, clients: int,
              shared_encoding: bool = True) -> dict[str, Any]:
    """Start a server, run each stage until one misses the fps floor; the summary."""
    import httpx

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="steward-bench-video-") as tmp:
        port = _free_port()
        env = {**os.environ, "STEWARD_DATA_DIR": tmp, "STEWARD_DATABASE_URL": f"sqlite:///{tmp}/steward.db",
               "STEWARD_SPEECH_QUEUE": "off", "STEWARD_VIDEO_ICE_SERVERS": "", "STEWARD_VIDEO_WORKER_ID": "bench",
               "STEWARD_VIDEO_MAX_ROOMS": str(max(stages) + 1), "STEWARD_VIDEO_ROOM_IDLE_CLOSE_S": "600",
               "STEWARD_PORT": str(port), "STEWARD_LOG_LEVEL": "warning",
               "STEWARD_VIDEO_SHARED_ENCODING": "true" if shared_encoding else "false"}
        order_ids, steward_token, supervisor_token = _seed(env, max(stages))
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                                   "--port", str(port), "--log-level", "warning"], env=env)
        base_url = f"http://127.0.0.1:{port}"
        results = []
        try:
            with httpx.Client(base_url=base_url, timeout=30) as http:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if http.get("/healthz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the server did not start")
                    time.sleep(0.2)
                rss_idle = _proc_rss_mb(server.pid)
                auth = {"Authorization": f"Bearer {steward_token}"}
                for n in stages:
                    tickets = []
                    for order_id in order_ids[:n]:
                        r = http.post("/api/v1/video/rooms", json={"work_order_id": order_id}, headers=auth)
                        r.raise_for_status()
                        body = r.json()
                        tickets.append(RoomTicket(body["room_id"], body["join_url"].rsplit("/join/", 1)[1],
                                                  steward_token, supervisor_token))
                    typer.echo(f"stage: {n} room(s)...", err=True)
                    result = _stage(base_url, server.pid, tickets, clients=clients, warmup=warmup, seconds=seconds,
                                    rss_idle=rss_idle)
                    typer.echo(f"  {json.dumps(result)}", err=True)
                    results.append(result)
                    for t in tickets:
                        http.post(f"/api/v1/video/rooms/{t.room_id}/close", headers=auth).raise_for_status()
                    time.sleep(1)
                    if not result["holds_floor"]:
                        break
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    holding = [r["rooms"] for r in results if r["holds_floor"]]
    return {
        "benchmark": "video",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "setup": {"publisher": f"640x480@{FPS} VP8 + Opus tone", "subscribers_per_room": 2,
                  "fps_floor": FPS_FLOOR, "warmup_s": warmup, "measure_s": seconds, "client_processes": clients,
                  "transport": "loopback (the machine's own address), no STUN/TURN",
                  "recording": "on (default)",
                  "shared_encoding": shared_encoding},
        # other work on the machine skews every number: the 1-minute load average before and after
        "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "server_rss_mb_idle": round(rss_idle, 1),
        "stages": results,
        "largest_rooms_holding_floor": max(holding) if holding else 0,
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """The results as the Markdown table docs/video.md (and README) show."""
    lines = ["| rooms | subscriber streams | server CPU (cores) | of which event loop | per subscriber stream | "
             "min / mean fps | latency p50 / p95 (ms) | server RSS per room (MB) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["stages"]:
        lines.append(f"| {r['rooms']} | {r['subscriber_streams']} | {r['server_cpu_cores']:.2f} | "
                     f"{r['server_event_loop_cores']:.2f} | "
                     f"{r['server_cpu_per_subscriber_stream_pct']:.1f} % | {r['fps_min']:.1f} / {r['fps_mean']:.1f} | "
                     f"{r['latency_ms_p50']} / {r['latency_ms_p95']} | {r['server_rss_mb_per_room']:.1f} |")
    return "\n".join(lines)


def bench_video(
    rooms: Annotated[str, typer.Option(help="Comma-separated room counts, run in order until one misses the "
                                            "fps floor.")] = "1,2,3,4,5,6,8",
    seconds: Annotated[float, typer.Option(min=2, help="Measuring window per stage.")] = 10,
    warmup: Annotated[float, typer.Option(min=0, help="Seconds between joining and measuring.")] = 4,
    clients: Annotated[int, typer.Option(min=1, help="Client processes.")] = max(1, min(4, os.cpu_count() or 1)),
    shared_encoding: Annotated[bool, typer.Option(help="One VP8 encoding per published video (the default) "
                                                       "or one per subscriber.")] = True,
    out: Annotated[Path, typer.Option(help="Where the results JSON goes.")] = Path("bench/results"),
) -> None:
    """Video relay capacity: N rooms x (1 publisher 640x480@24 + 2 subscribers) on loopback."""
    stages = sorted({int(n) for n in rooms.split(",") if n.strip()})
    if not stages or stages[0] < 1:
        raise typer.BadParameter("give room counts >= 1, e.g. 1,2,4")
    summary = run_bench(stages, warmup=warmup, seconds=seconds, clients=clients, shared_encoding=shared_encoding)
    out.mkdir(parents=True, exist_ok=True)
    variant = "" if shared_encoding else "-per-subscriber"
    path = out / f"video{variant}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    typer.echo(markdown_table(summary))
    typer.echo(f"\nlargest N holding >= {FPS_FLOOR:.0f} fps for every subscriber: "
               f"{summary['largest_rooms_holding_floor']}; results in {path}")
