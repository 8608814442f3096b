"""A deterministic demo district modelled on Jinan: stations -> buildings -> households, stewards'
grids, and the open work orders, visits and readings of a winter week.

Same seed and `as_of`, same rows (ids included). Password hashes are salted, so they differ.
"""

from __future__ import annotations

import random
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Table, func, insert, select

from api.fieldwork.models import Reading, Visit, VisitResult
from api.network.models import Building, HeatingStatus, Household, Station
from api.security import hash_password
from api.users.models import GridBuilding, Role, User
from api.work_orders.models import Category, Priority, Source, Status, WorkOrder, WorkOrderEvent

DISTRICTS = {
    "历下区": ["燕子山小区", "文化东路小区", "山大南路小区", "洪家楼小区", "甸柳庄", "和平新村", "燕山新居",
              "千佛山花园",
              "解放东路小区", "东方花园", "佛山苑", "羊头峪小区"],
    "市中区": ["舜玉小区", "七里山小区", "英雄山小区", "玉函小区", "八里洼小区", "领秀城", "鲁能康桥", "阳光舜城",
              "泉景四季", "郎茂山小区"],
    "槐荫区": ["段店小区", "匡山小区", "西苑小区", "振兴街小区", "裕园小区", "阳光新路小区"],
    "天桥区": ["北园小区", "水屯小区", "蓝翔路小区", "工人新村", "无影山小区", "堤口路小区"],
    "历城区": ["全福小区", "花园小区", "黄台小区", "二环东路小区", "祝舜小区", "鲍山花园"],
}
SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许傅沈曾彭吕苏卢蒋蔡贾丁魏薛叶阎"
GIVEN = "秀英桂兰玉梅凤芝淑珍国强建华志刚俊杰德明文静海燕丽娟振东立新家豪子涵雨轩欣怡浩然春生秋菊"
ROOMS = ("living_room", "bedroom", "second_bedroom", "kitchen")
CATEGORY_WEIGHTS = {Category.not_warm: 50, Category.air_lock: 15, Category.leak: 10, Category.valve: 8,
                    Category.noise: 7, Category.billing: 6, Category.other: 4}
OPEN_WEIGHTS = {Status.new: 20, Status.assigned: 35, Status.in_progress: 30, Status.waiting_resident: 15}
DESCRIPTIONS = {
    Category.not_warm: "住户反映家中不热，室温约{t}度，暖气片摸着温乎。",
    Category.air_lock: "暖气片上热下凉，疑似有空气，需上门排气。",
    Category.leak: "暖气片排气阀滴水，住户已用盆接着。",
    Category.valve: "户内阀门拧不动，需要协助开阀。",
    Category.noise: "管道夜间有流水声和敲击声。",
    Category.billing: "住户咨询报停和缴费面积。",
    Category.other: "住户来电咨询供暖时间。",
}
BATCH = 5000


class DemoError(Exception):
    """The demo data cannot be created (for instance, the database is not empty)."""


def default_as_of() -> datetime:
    """Today at 08:00 Beijing time, so demo SLAs look current."""
    now = datetime.now(UTC) + timedelta(hours=8)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _weighted(rng: random.Random, weights: dict[Any, int]) -> Any:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), BATCH):
        yield rows[start:start + BATCH]


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


def generate(engine: Engine, *, households: int, stewards: int, password: str, seed: int,
             as_of: datetime | None = None, progress: bool = False, history: int = 0) -> dict[str, Any]:
    """Fill an empty database with a district; returns a JSON-ready summary.

    `history` adds, per household, that many past (closed) work orders, each with a visit and two
    readings: a denser district for benchmarks. 0 (the default) leaves the district exactly as before.
    """
    if len(password) < 8:
        raise DemoError("The demo password must have at least 8 characters.")
    with engine.connect() as conn:
        if conn.execute(select(func.count()).select_from(_table(Station))).scalar_one():
            raise DemoError("The database already has stations; demo data goes into an empty database.")
        if conn.execute(select(func.count()).select_from(_table(User))).scalar_one():
            raise DemoError("The database already has users; demo data goes into an empty database.")
    as_of = as_of or default_as_of()
    rng = random.Random(seed)
    rows = _build(rng, households=households, stewards=stewards, as_of=as_of)
    users = rows.pop("users")
    pw_hash = hash_password(password)
    for user in users:
        user["password_hash"] = pw_hash
    order = [(User, users)] + [(m, rows[m.__tablename__]) for m in (
        Station, Building, Household, GridBuilding, WorkOrder, WorkOrderEvent, Visit, Reading)]
    total = sum(len(r) for _, r in order)
    done = 0
    extra = 0
    with engine.begin() as conn:
        for model, table_rows in order:
            for chunk in _chunks(table_rows):
                conn.execute(insert(_table(model)), list(chunk))
                done += len(chunk)
                if progress:
                    print(f"\rdemo-data: {done}/{total} rows", end="", flush=True, file=sys.stderr)
        if history:
            extra = _insert_history(conn, rows, users, seed=seed, as_of=as_of, per_household=history,
                                    progress=progress)
    if progress:
        print(file=sys.stderr)  # stdout holds only the JSON summary
    grid_of: dict[uuid.UUID, list[str]] = {}
    for g in rows["grid_buildings"]:
        grid_of.setdefault(g["user_id"], []).append(str(g["building_id"]))
    return {
        "seed": seed,
        "as_of": as_of.isoformat(),
        "password": password,
        "stations": len(rows["stations"]),
        "buildings": len(rows["buildings"]),
        "households": len(rows["households"]),
        "work_orders": len(rows["work_orders"]),
        "visits": len(rows["visits"]),
        "readings": len(rows["readings"]),
        "history_rows": extra,
        "users": [{"id": str(u["id"]), "username": u["username"], "role": u["role"].value,
                   "grid": grid_of.get(u["id"], [])} for u in users],
    }


def _insert_history(conn: Any, rows: dict[str, list[dict[str, Any]]], users: list[dict[str, Any]], *, seed: int,
                    as_of: datetime, per_household: int, progress: bool) -> int:
    """Past, closed work orders with a visit and two readings each, inserted household by household so
    memory stays flat. Its own random stream: the base district does not change with `history`."""
    rng = random.Random(seed * 1_000_003 + per_household)
    steward_of = {g["building_id"]: g["user_id"] for g in rows["grid_buildings"]}
    supervisor_id = users[1]["id"]
    tables = [_table(m) for m in (WorkOrder, Visit, Reading)]
    batch: list[list[dict[str, Any]]] = [[], [], []]
    written = 0

    def flush() -> None:
        nonlocal written
        for table, table_rows in zip(tables, batch, strict=True):
            if table_rows:
                conn.execute(insert(table), table_rows)
                written += len(table_rows)
                table_rows.clear()
        if progress:
            print(f"\rdemo-data: {written} history rows", end="", flush=True, file=sys.stderr)

    for h in rows["households"]:
        steward = steward_of.get(h["building_id"])
        for _ in range(per_household):
            created = as_of - timedelta(days=rng.randint(15, 400), seconds=rng.randint(0, 86400))
            arrived = created + timedelta(hours=rng.randint(1, 20))
            left = arrived + timedelta(minutes=rng.randint(10, 60))
            category = _weighted(rng, CATEGORY_WEIGHTS)
            oid, vid = _uuid(rng), _uuid(rng)
            stamp = {"version": 1, "created_at": created, "updated_at": left}
            batch[0].append(stamp | {
                "id": oid, "household_id": h["id"], "source": Source.hotline, "category": category,
                "description": DESCRIPTIONS[category].format(t=rng.randint(12, 17)), "priority": Priority.normal,
                "caller_phone": h["phone"], "status": Status.closed, "assignee_id": steward,
                "created_by_id": supervisor_id, "sla_due_at": created + timedelta(hours=24), "resolved_at": left,
                "closed_at": left + timedelta(days=1)})
            batch[1].append(stamp | {
                "id": vid, "household_id": h["id"], "work_order_id": oid, "steward_id": steward or supervisor_id,
                "arrived_at": arrived, "left_at": left, "indoor_temp_c": round(rng.uniform(14, 19), 1),
                "actions": "检查户内阀门，暖气片排气", "result": VisitResult.resolved})
            for visit_id, taken in ((vid, arrived), (None, left + timedelta(days=1))):
                batch[2].append(stamp | {
                    "id": _uuid(rng), "household_id": h["id"], "taken_at": taken, "room": rng.choice(ROOMS),
                    "temp_c": round(rng.gauss(19.5, 1.5), 1), "visit_id": visit_id, "taken_by_id": steward})
        if len(batch[2]) >= BATCH:
            flush()
    flush()
    return written


def _stamp(as_of: datetime, rng: random.Random, days: float) -> datetime:
    return as_of - timedelta(seconds=rng.randint(0, int(days * 86400)))


def _build(rng: random.Random, *, households: int, stewards: int, as_of: datetime) -> dict[str, list[dict[str, Any]]]:
    season_start = as_of - timedelta(days=14)
    base = {"version": 1, "created_at": season_start, "updated_at": season_start}
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in (
        "stations", "buildings", "households", "grid_buildings", "work_orders", "work_order_events", "visits",
        "readings")}
    communities = [(d, c) for d, names in DISTRICTS.items() for c in names]
    # Buildings and households, community by community, each community fed by its own station.
    made = 0
    round_no = 0
    while made < households:
        for district, name in communities:
            if made >= households:
                break
            community = name if round_no == 0 else f"{name}{round_no + 1}期"
            sid = _uuid(rng)
            out["stations"].append(base | {
                "id": sid, "code": f"HS-{len(out['stations']) + 1:04d}", "name": f"{community}换热站",
                "district": district, "address": f"济南市{district}{community}内", "capacity_mw": round(
                    rng.uniform(4, 20), 1)})
            for number in range(1, rng.randint(8, 20) + 1):
                if made >= households:
                    break
                high_rise = rng.random() < 0.3
                floors = rng.choice((18, 26, 33)) if high_rise else rng.choice((5, 6, 7))
                units = rng.randint(1, 2) if high_rise else rng.randint(2, 4)
                bid = _uuid(rng)
                out["buildings"].append(base | {
                    "id": bid, "station_id": sid, "community": community, "number": str(number),
                    "address": f"济南市{district}{community}{number}号楼", "floors": floors, "units": units})
                for unit in range(1, units + 1):
                    for floor in range(1, floors + 1):
                        for door in (1, 2):
                            if made >= households:
                                break
                            out["households"].append(base | {
                                "id": _uuid(rng), "building_id": bid, "unit": str(unit),
                                "room": f"{floor}{door:02d}",
                                "resident_name": rng.choice(SURNAMES) + "".join(rng.sample(GIVEN, rng.randint(1, 2))),
                                "phone": f"1{rng.choice('3589')}{rng.randint(0, 999_999_999):09d}",
                                "area_m2": round(rng.uniform(45, 145), 1),
                                "heating_status": HeatingStatus.suspended if rng.random() < 0.05
                                else HeatingStatus.normal,
                                "sensitive": rng.random() < 0.08})
                            made += 1
        round_no += 1
    # Users: one admin, one supervisor, and stewards with contiguous grids of buildings.
    users = [base | {"id": _uuid(rng), "username": "admin", "full_name": "系统管理员", "phone": "",
                     "role": Role.admin, "active": True},
             base | {"id": _uuid(rng), "username": "supervisor", "full_name": "客服主管", "phone": "",
                     "role": Role.supervisor, "active": True}]
    buildings = out["buildings"]
    steward_ids = []
    for k in range(stewards):
        uid = _uuid(rng)
        steward_ids.append(uid)
        users.append(base | {"id": uid, "username": f"steward{k + 1:02d}",
                             "full_name": rng.choice(SURNAMES) + "师傅",
                             "phone": f"139{rng.randint(0, 99_999_999):08d}",
                             "role": Role.steward, "active": True})
        lo, hi = len(buildings) * k // stewards, len(buildings) * (k + 1) // stewards
        out["grid_buildings"] += [{"user_id": uid, "building_id": b["id"], "assigned_at": season_start}
                                  for b in buildings[lo:hi]]
    steward_of = {g["building_id"]: g["user_id"] for g in out["grid_buildings"]}
    supervisor_id = users[1]["id"]
    # Open work orders for about 2 % of households, with their timeline, visits and readings.
    for h in out["households"]:
        if rng.random() < 0.1:
            out["readings"].append(base | {
                "id": _uuid(rng), "household_id": h["id"], "taken_at": _stamp(as_of, rng, 7),
                "room": rng.choice(ROOMS), "temp_c": round(rng.gauss(20.5, 1.8), 1), "visit_id": None,
                "taken_by_id": steward_of.get(h["building_id"])})
        if rng.random() >= 0.02:
            continue
        category = _weighted(rng, CATEGORY_WEIGHTS)
        status = _weighted(rng, OPEN_WEIGHTS)
        priority = Priority.high if category == Category.leak or (
            h["sensitive"] and category == Category.not_warm) else Priority.normal
        created = _stamp(as_of, rng, 2)
        oid = _uuid(rng)
        assignee = steward_of.get(h["building_id"]) if status != Status.new else None
        out["work_orders"].append(base | {
            "id": oid, "household_id": h["id"], "source": Source.hotline if rng.random() < 0.85 else Source.visit,
            "category": category, "description": DESCRIPTIONS[category].format(t=rng.randint(12, 17)),
            "priority": priority, "caller_phone": h["phone"], "status": status, "assignee_id": assignee,
            "created_by_id": supervisor_id, "created_at": created, "updated_at": created,
            "sla_due_at": created + timedelta(hours=8 if priority == Priority.high else 24),
            "resolved_at": None, "closed_at": None})
        out["work_order_events"].append({"id": _uuid(rng), "work_order_id": oid, "at": created,
                                         "actor_id": supervisor_id, "kind": "created", "from_status": None,
                                         "to_status": Status.new, "assignee_id": None, "note": ""})
        if assignee is None:
            continue
        out["work_order_events"].append({"id": _uuid(rng), "work_order_id": oid, "at": created + timedelta(minutes=5),
                                         "actor_id": supervisor_id, "kind": "assigned", "from_status": Status.new,
                                         "to_status": Status.assigned, "assignee_id": assignee, "note": ""})
        if status in (Status.in_progress, Status.waiting_resident):
            arrived = created + timedelta(minutes=rng.randint(30, 180))
            vid = _uuid(rng)
            temp = round(rng.uniform(14, 18), 1)
            out["visits"].append(base | {
                "id": vid, "household_id": h["id"], "work_order_id": oid, "steward_id": assignee,
                "arrived_at": arrived, "left_at": arrived + timedelta(minutes=rng.randint(10, 40)),
                "indoor_temp_c": temp, "actions": "检查户内阀门，暖气片排气", "result": VisitResult.follow_up,
                "created_at": arrived, "updated_at": arrived})
            out["readings"].append(base | {
                "id": _uuid(rng), "household_id": h["id"], "taken_at": arrived, "room": "living_room",
                "temp_c": temp, "visit_id": vid, "taken_by_id": assignee, "created_at": arrived,
                "updated_at": arrived})
            out["work_order_events"].append({"id": _uuid(rng), "work_order_id": oid, "at": arrived,
                                             "actor_id": assignee, "kind": "status", "from_status": Status.assigned,
                                             "to_status": Status.in_progress, "assignee_id": None, "note": ""})
    out["users"] = users
    return out
