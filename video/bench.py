"""`steward bench video`: forward and transcode relay modes side by side, on this machine.

Each stage runs N rooms, each with one publisher (the resident: 640x480 at 24 fps VP8 plus an Opus tone)
and K subscribers of its camera (the steward, who also talks, and K-1 watching supervisors), all aiortc
clients on loopback. The server is a real `uvicorn api.main:app` process on a throwaway SQLite database
(recording on, as by default), started once per mode; the clients run in separate processes.

What the clients cost is kept small, since they share the cores with the server: publishers send a
10 s loop of VP8 frames encoded once (a keyframe request restarts the loop at its keyframe), and
subscribers count the complete frames their receivers reassemble without decoding them. One probe room
is live: its publisher encodes stamped frames as they are drawn and its steward decodes them, which gives
the end-to-end latency (client encode, relay, client decode) and shows the stream decodes.

Per stage and mode: server CPU (total, per subscriber stream), delivered fps per subscriber stream,
relay latency (the server's own measure, `GET /api/v1/video/relay`: from a publisher's complete encoded
frame to a subscriber's sender), end-to-end latency, server memory, and the 1-minute load average.
Stages grow until a subscriber drops below the fps floor; the largest stage that held it gives the most
480p subscriber streams this machine carries in that mode (a floor for the relay alone: the clients run
on the same cores).
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

from api.bench_options import writable_directory
from api.urls import sqlite_url

FPS = 24
FPS_FLOOR = 20.0
LOOP_SECONDS = 10
MODES = ("transcode", "forward")  # the default run; "transcode-per-subscriber" is aiortc's usual one encoding
ALL_MODES = (*MODES, "transcode-per-subscriber")  # per subscriber (as its MediaRelay), for reference
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class RoomTicket:
    room_id: str
    join_token: str
    steward_token: str
    supervisor_tokens: tuple[str, ...]
    probe: bool = False


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


def _seed(env: dict[str, str], rooms: int, supervisors: int) -> tuple[list[str], str, list[str]]:
    """A migrated database with one steward, `supervisors` supervisors and `rooms` open work orders."""
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
        watchers = [User(username=f"bench-supervisor-{i}", role=Role.supervisor, password_hash=password)
                    for i in range(supervisors)]
        session.add_all([steward, *watchers])
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
                  for u in (steward, *watchers)]
        order_ids = [str(o.id) for o in orders]
    engine.dispose()
    return order_ids, tokens[0], tokens[1:]


# --- client processes ---------------------------------------------------------------------------------


def _client_process(base_url: str, tickets: list[RoomTicket], loop: list[bytes], conn: Connection) -> None:
    """Join the given rooms, then answer `mark` (counters now) and `stop` commands from the parent."""
    try:
        asyncio.run(_client_main(base_url, tickets, loop, conn))
    except Exception as exc:  # tell the parent rather than leave it waiting
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


async def _client_main(base_url: str, tickets: list[RoomTicket], loop_frames: list[bytes],
                       conn: Connection) -> None:
    import httpx

    from video.clients import Participant

    loop = asyncio.get_running_loop()
    subscribers: list[Participant] = []
    probes: list[Participant] = []
    everyone: list[Participant] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        for t in tickets:
            # the probe room draws, encodes and decodes live; the others replay encoded frames, count frames
            resident = Participant(role="resident", video=True, audio=True, fps=FPS, decode=False,
                                   video_loop=None if t.probe else loop_frames)
            steward = Participant(role="steward", audio=True, decode=t.probe)
            watchers = [Participant(role="supervisor", receive_audio=1, receive_video=1, decode=False)
                        for _ in t.supervisor_tokens]
            joins = [(resident, t.join_token), (steward, t.steward_token), *zip(watchers, t.supervisor_tokens,
                                                                                 strict=True)]
            for participant, token in joins:
                r = await participant.join(http, t.room_id, token)
                if r.status_code != 200:
                    raise RuntimeError(f"join failed: {r.status_code} {r.text}")
                everyone.append(participant)
            subscribers += [steward, *watchers]
            if t.probe:
                probes.append(steward)
        for participant in everyone:
            await participant.connected(timeout=60)
        conn.send({"ready": True})
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "mark":
                conn.send({"at": time.monotonic(), "cpu_s": time.process_time(),
                           "frames": [e.frames - e.placeholders for s in subscribers
                                      for e in s.encoded_tracks("video")],
                           "latencies": sum(len(v.latencies_ms) for p in probes for v in p.tracks("video"))})
            elif command == "latencies":
                conn.send([x for p in probes for v in p.tracks("video") for x in v.latencies_ms])
            else:
                break
        for participant in everyone:
            await participant.close()
    conn.send({"closed": True})


# --- one stage ------------------------------------------------------------------------------------------


def _stage(base_url: str, server_pid: int, tickets: list[RoomTicket], *, clients: int, warmup: float,
           seconds: float, rss_idle: float, loop: list[bytes], http: Any, office: dict[str, str]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    groups = [tickets[i::clients] for i in range(clients) if tickets[i::clients]]
    pipes, procs = [], []
    load_before = os.getloadavg()[0]
    for group in groups:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_client_process, args=(base_url, group, loop, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for pipe in pipes:
            reply = pipe.recv()
            if "error" in reply:
                raise RuntimeError(reply["error"])
        time.sleep(warmup)
        http.get("/api/v1/video/relay", params={"reset": "true"}, headers=office).raise_for_status()
        # the main thread runs the event loop: all RTP, SRTP, ICE and Python-side media work
        cpu0, loop0, t0 = _proc_cpu_s(server_pid), _proc_cpu_s(server_pid, server_pid), time.monotonic()
        marks0 = _mark(pipes)
        time.sleep(seconds)
        cpu1, loop1, t1 = _proc_cpu_s(server_pid), _proc_cpu_s(server_pid, server_pid), time.monotonic()
        marks1 = _mark(pipes)
        relay = http.get("/api/v1/video/relay", params={"reset": "true"}, headers=office).json()
        rss_during = _proc_rss_mb(server_pid)
        latencies: list[float] = []
        for pipe, m0 in zip(pipes, marks0, strict=True):
            pipe.send("latencies")
            latencies += pipe.recv()[m0["latencies"]:]
        fps = []
        client_cpu = 0.0
        for m0, m1 in zip(marks0, marks1, strict=True):
            span = m1["at"] - m0["at"]
            client_cpu += (m1["cpu_s"] - m0["cpu_s"]) / span
            fps += [(b - a) / span for a, b in zip(m0["frames"], m1["frames"], strict=True)]
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    rooms, streams = len(tickets), len(fps)
    server_cores = (cpu1 - cpu0) / (t1 - t0)
    latencies.sort()
    return {
        "rooms": rooms,
        "subscriber_streams": streams,
        "server_cpu_cores": round(server_cores, 3),
        "server_event_loop_cores": round((loop1 - loop0) / (t1 - t0), 3),
        "server_cpu_per_room_pct": round(100 * server_cores / rooms, 2),
        "server_cpu_per_subscriber_stream_pct": round(100 * server_cores / streams, 2),
        "client_cpu_cores": round(client_cpu, 3),
        "fps_min": round(min(fps), 1),
        "fps_mean": round(statistics.fmean(fps), 1),
        "relay_latency_ms_p50": relay["latency_ms"]["p50"],
        "relay_latency_ms_p95": relay["latency_ms"]["p95"],
        "relay_latency_samples": relay["latency_ms"]["count"],
        "latency_ms_p50": round(latencies[len(latencies) // 2], 1) if latencies else None,
        "latency_ms_p95": round(latencies[int(len(latencies) * 0.95)], 1) if latencies else None,
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
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


def _run_mode(mode: str, stages: list[int], *, subscribers: list[int], warmup: float, seconds: float, clients: int,
              loop: list[bytes]) -> dict[str, Any]:
    """Start a server in `mode`; for each number of subscribers per room, run each stage until one misses the
    fps floor; that mode's results."""
    import httpx

    relay_mode, shared_encoding = mode.removesuffix("-per-subscriber"), not mode.endswith("-per-subscriber")
    with tempfile.TemporaryDirectory(prefix="steward-bench-video-") as tmp:
        port = _free_port()
        env = {**os.environ, "STEWARD_DATA_DIR": tmp, "STEWARD_DATABASE_URL": sqlite_url(Path(tmp) / "steward.db"),
               "STEWARD_SPEECH_QUEUE": "off", "STEWARD_VIDEO_ICE_SERVERS": "", "STEWARD_VIDEO_WORKER_ID": "bench",
               "STEWARD_VIDEO_MAX_ROOMS": str(max(stages) + 1), "STEWARD_VIDEO_ROOM_IDLE_CLOSE_S": "600",
               "STEWARD_VIDEO_MAX_PARTICIPANTS": str(max(subscribers) + 1), "STEWARD_VIDEO_CONNECT_TIMEOUT_S": "120",
               "STEWARD_PORT": str(port), "STEWARD_LOG_LEVEL": "warning", "STEWARD_VIDEO_RELAY_MODE": relay_mode,
               "STEWARD_VIDEO_SHARED_ENCODING": "true" if shared_encoding else "false"}
        # one supervisor at least: the relay statistics are for the office
        order_ids, steward_token, supervisor_tokens = _seed(env, max(stages), max(1, max(subscribers) - 1))
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                                   "--port", str(port), "--log-level", "warning"], env=env)
        base_url = f"http://127.0.0.1:{port}"
        results: list[dict[str, Any]] = []
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
                office = {"Authorization": f"Bearer {supervisor_tokens[0]}"}
                for k, n in ((k, n) for k in subscribers for n in stages):
                    if results and results[-1]["subscribers_per_room"] == k and not results[-1]["holds_floor"]:
                        continue  # this many subscribers per room already starved with fewer rooms
                    opened = time.monotonic()
                    tickets = []
                    for i, order_id in enumerate(order_ids[:n]):
                        r = http.post("/api/v1/video/rooms", json={"work_order_id": order_id}, headers=auth)
                        r.raise_for_status()
                        body = r.json()
                        tickets.append(RoomTicket(body["room_id"], body["join_url"].rsplit("/join/", 1)[1],
                                                  steward_token, tuple(supervisor_tokens[:k - 1]),
                                                  probe=i == 0))
                    typer.echo(f"{mode}: {n} room(s) x {k} subscribers...", err=True)
                    result = {"subscribers_per_room": k} | _stage(
                        base_url, server.pid, tickets, clients=clients, warmup=warmup, seconds=seconds,
                        rss_idle=rss_idle, loop=loop, http=http, office=office)
                    results.append(result)
                    # Closing costs too: peer connections torn down and, in forward mode, the recording mixed
                    # down (decoded, mixed, encoded) once instead of during the call. Each close waits for it.
                    closing, cpu_close = time.monotonic(), _proc_cpu_s(server.pid)
                    for t in tickets:
                        http.post(f"/api/v1/video/rooms/{t.room_id}/close", headers=auth).raise_for_status()
                    result["room_lifetime_s"] = round(closing - opened, 1)
                    result["close_cpu_s_per_room"] = round((_proc_cpu_s(server.pid) - cpu_close) / n, 3)
                    typer.echo(f"  {json.dumps(result)}", err=True)
                    time.sleep(1)
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    holding = [r["subscriber_streams"] for r in results if r["holds_floor"]]
    return {"server_rss_mb_idle": round(rss_idle, 1), "stages": results,
            "largest_streams_holding_floor": max(holding) if holding else 0,
            "marginal_cpu_per_subscriber_stream": _marginal(results)}


def _marginal(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What one more subscriber stream costs the server: for each room count measured with several numbers of
    subscribers per room, the least-squares slope of server cores over subscriber streams (in % of a core).

    The average (server cores / streams) also spreads each room's own costs over its subscribers: the
    publisher's stream received and decrypted, the recording, and in transcode modes the decoding; the slope
    leaves them out. Stages that missed the fps floor are left out too (a starved server saves CPU)."""
    out = []
    for rooms in sorted({s["rooms"] for s in stages}):
        points = [(s["subscriber_streams"], s["server_cpu_cores"]) for s in stages
                  if s["rooms"] == rooms and s["holds_floor"]]
        if len({x for x, _ in points}) < 2:
            continue
        slope = statistics.linear_regression([float(x) for x, _ in points], [y for _, y in points]).slope
        out.append({"rooms": rooms, "subscribers_per_room": sorted(x // rooms for x, _ in points),
                    "pct_of_a_core": round(100 * slope, 2)})
    return out


def run_bench(stages: list[int], *, modes: list[str], subscribers: list[int], warmup: float, seconds: float,
              clients: int) -> dict[str, Any]:
    """Every mode in turn on the same stages; the summary, with forward's CPU per stream against transcode's."""
    from video.clients import encode_loop

    load_before = os.getloadavg()
    loop = encode_loop(LOOP_SECONDS, FPS)
    by_mode = {mode: _run_mode(mode, stages, subscribers=subscribers, warmup=warmup, seconds=seconds,
                               clients=clients, loop=loop) for mode in modes}
    comparison: list[dict[str, Any]] = []
    marginal: list[dict[str, Any]] = []  # what one more subscriber stream costs, forward against transcoding
    if "forward" in by_mode:
        # Against both transcoding variants: the shared encoding (this relay's transcode mode) and one
        # encoding per subscriber (what aiortc's MediaRelay does, the cost issue 8 starts from).
        named = [(mode, name) for mode, name in (("transcode", "transcode"),
                                                  ("transcode-per-subscriber", "transcode_per_subscriber"))
                 if mode in by_mode]
        baselines = {name: {(r["rooms"], r["subscribers_per_room"]): r for r in by_mode[mode]["stages"]}
                     for mode, name in named}
        for r in by_mode["forward"]["stages"]:
            row: dict[str, Any] = {"rooms": r["rooms"], "subscribers_per_room": r["subscribers_per_room"]}
            for name, stages_of in baselines.items():
                t = stages_of.get((r["rooms"], r["subscribers_per_room"]))
                if t is None or not (t["holds_floor"] and r["holds_floor"]):  # a starved stage compares nothing
                    continue
                row[f"forward_over_{name}_cpu_per_stream"] = round(
                    r["server_cpu_per_subscriber_stream_pct"] / t["server_cpu_per_subscriber_stream_pct"], 3)
                # with what closing cost (forward: the recording's mix-down) spread over the rooms' lifetime
                row[f"forward_over_{name}_including_close"] = round(_with_close(r) / _with_close(t), 3)
            if len(row) > 2:
                comparison.append(row)
        forward = {m["rooms"]: m["pct_of_a_core"] for m in by_mode["forward"]["marginal_cpu_per_subscriber_stream"]}
        for rooms, pct in forward.items():
            row = {"rooms": rooms, "forward_pct_of_a_core": pct}
            for mode, name in named:
                base = {m["rooms"]: m["pct_of_a_core"] for m in by_mode[mode]["marginal_cpu_per_subscriber_stream"]}
                if base.get(rooms, 0) > 0:
                    row[f"{name}_pct_of_a_core"] = base[rooms]
                    row[f"forward_over_{name}"] = round(pct / base[rooms], 3)
            if len(row) > 2:
                marginal.append(row)
    return {
        "benchmark": "video",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "setup": {"publisher": f"640x480@{FPS} VP8 + Opus tone", "subscribers_per_room": subscribers,
                  "fps_floor": FPS_FLOOR, "warmup_s": warmup, "measure_s": seconds, "client_processes": clients,
                  "transport": "loopback (the machine's own address), no STUN/TURN",
                  "recording": os.environ.get("STEWARD_VIDEO_RECORD_AUDIO", "true"),
                  "modes": {"forward": "encoded frames forwarded (STEWARD_VIDEO_RELAY_MODE=forward)",
                            "transcode": "decode once, one shared VP8 encoding (STEWARD_VIDEO_RELAY_MODE=transcode)",
                            "transcode-per-subscriber": "decode once, one encoding per subscriber "
                                                        "(transcode with STEWARD_VIDEO_SHARED_ENCODING=false)"},
                  "clients": f"publishers replay a {LOOP_SECONDS} s VP8 loop (one live probe room); subscribers "
                             "count reassembled frames without decoding (the probe's steward decodes)"},
        # other work on the machine skews every number: the 1-minute load average before and after
        "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "modes": by_mode,
        "comparison": comparison,
        "marginal_comparison": marginal,
    }


def _with_close(stage: dict[str, Any]) -> float:
    """A stage's server cores, plus its rooms' closing CPU spread over their lifetime."""
    return float(stage["server_cpu_cores"] + stage["rooms"] * stage["close_cpu_s_per_room"] / stage["room_lifetime_s"])


def markdown_table(summary: dict[str, Any]) -> str:
    """The results as the Markdown table docs/video.md (and README) show: one row per mode and stage."""
    lines = ["| mode | rooms | subscribers per room | subscriber streams | server CPU (cores) | per subscriber stream "
             "| min / mean fps | relay latency p50 / p95 (ms) | end-to-end p50 (ms) | RSS per room (MB) | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, result in summary["modes"].items():
        for r in result["stages"]:
            load = "-".join(f"{x:.1f}" for x in r["load_average_1m"])
            lines.append(f"| {mode} | {r['rooms']} | {r['subscribers_per_room']} | {r['subscriber_streams']} | "
                         f"{r['server_cpu_cores']:.2f} | "
                         f"{r['server_cpu_per_subscriber_stream_pct']:.2f} % | {r['fps_min']:.1f} / "
                         f"{r['fps_mean']:.1f} | {r['relay_latency_ms_p50']} / {r['relay_latency_ms_p95']} | "
                         f"{r['latency_ms_p50']} | {r['server_rss_mb_per_room']:.1f} | {load} |")
    return "\n".join(lines)


def bench_video(
    rooms: Annotated[str, typer.Option(help="Comma-separated room counts, run in order until one misses the "
                                            "fps floor.")] = "1,2,4,6,8,12,16",
    subscribers: Annotated[str, typer.Option(help="Subscribers of each room's camera (the steward and K-1 "
                                                  "supervisors), 1..15; several, comma-separated (e.g. 1,6), also "
                                                  "measure what one more subscriber stream costs.")] = "2",
    modes: Annotated[str, typer.Option(help="Comma-separated relay modes, run one after the other: forward, "
                                            "transcode, transcode-per-subscriber.")] = ",".join(MODES),
    seconds: Annotated[float, typer.Option(min=2, help="Measuring window per stage.")] = 10,
    warmup: Annotated[float, typer.Option(min=0, help="Seconds between joining and measuring.")] = 4,
    clients: Annotated[int, typer.Option(min=1, help="Client processes.")] = max(1, min(4, os.cpu_count() or 1)),
    out: Annotated[Path, typer.Option(help="Where the results JSON goes.")] = Path("bench/results"),
) -> None:
    """Video relay, forward vs transcode: N rooms x (1 publisher 640x480@24 + K subscribers) on loopback."""
    try:
        stages = sorted({int(n) for n in rooms.split(",") if n.strip()})
    except ValueError:  # `--rooms a` was a traceback
        stages = []
    if not stages or stages[0] < 1:
        raise typer.BadParameter("give room counts >= 1, e.g. 1,2,4")
    try:
        ks = sorted({int(k) for k in subscribers.split(",") if k.strip()})
    except ValueError:
        ks = []
    if not ks or not 1 <= ks[0] <= ks[-1] <= 15:
        raise typer.BadParameter("give subscribers per room between 1 and 15, e.g. 2 or 1,6")
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    if not chosen or set(chosen) - set(ALL_MODES):
        raise typer.BadParameter(f"modes are {', '.join(ALL_MODES)}")
    writable_directory(out)
    summary = run_bench(stages, modes=chosen, subscribers=ks, warmup=warmup, seconds=seconds,
                        clients=clients)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"video-modes-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    typer.echo(markdown_table(summary))
    for mode, result in summary["modes"].items():
        typer.echo(f"{mode}: largest number of subscriber streams holding >= {FPS_FLOOR:.0f} fps: "
                   f"{result['largest_streams_holding_floor']}")
    baselines = (("transcode", "transcode's (shared encoding)"),
                 ("transcode_per_subscriber", "per-subscriber transcoding's"))
    for c in summary["comparison"]:
        for name, label in baselines:
            if f"forward_over_{name}_cpu_per_stream" in c:
                typer.echo(f"{c['rooms']} room(s) x {c['subscribers_per_room']}: forward uses "
                           f"{c[f'forward_over_{name}_cpu_per_stream']:.3f} of {label} server CPU per subscriber "
                           f"stream ({c[f'forward_over_{name}_including_close']:.3f} counting what closing the rooms "
                           "cost, spread over their lifetime)")
    for c in summary["marginal_comparison"]:
        for name, label in baselines:
            if f"forward_over_{name}" in c:
                typer.echo(f"{c['rooms']} room(s), one more subscriber stream: forward "
                           f"{c['forward_pct_of_a_core']:.2f} % of a core, {label} {c[f'{name}_pct_of_a_core']:.2f} %: "
                           f"{c[f'forward_over_{name}']:.3f}")
    typer.echo(f"results in {path}")
