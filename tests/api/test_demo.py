"""The demo district is deterministic for a seed and realistic in shape."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from api import migrate
from api.db import make_engine
from api.demo import DemoError, generate
from api.network.models import Building, Household
from api.tables import metadata
from api.users.models import GridBuilding, Role, User
from api.work_orders.models import OPEN_STATUSES, WorkOrder
from tests.conftest import make_settings

AS_OF = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


def _dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    def norm(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, uuid.UUID):
            return str(v)
        if isinstance(v, float):
            return round(v, 6)
        return v

    out = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            cols = [c for c in table.columns if c.name != "password_hash"]
            rows = conn.execute(select(*cols)).all()
            out[table.name] = sorted(tuple(norm(v) for v in row) for row in rows)
    return out


def _fresh_sqlite(tmp_path: Path, name: str) -> Engine:
    engine = make_engine(make_settings(f"sqlite:///{tmp_path / name / 'steward.db'}", tmp_path))
    migrate.upgrade(engine)
    return engine


def test_same_seed_gives_the_same_district_on_every_backend(engine: Engine, tmp_path: Path) -> None:
    reference = _fresh_sqlite(tmp_path, "ref")
    a = generate(reference, households=600, stewards=3, password="demo-pass-1", seed=42, as_of=AS_OF)
    b = generate(engine, households=600, stewards=3, password="demo-pass-1", seed=42, as_of=AS_OF)
    assert a == b
    assert _dump(reference) == _dump(engine)
    reference.dispose()


def test_another_seed_gives_another_district(tmp_path: Path) -> None:
    one, two = _fresh_sqlite(tmp_path, "one"), _fresh_sqlite(tmp_path, "two")
    generate(one, households=300, stewards=2, password="demo-pass-1", seed=1, as_of=AS_OF)
    generate(two, households=300, stewards=2, password="demo-pass-1", seed=2, as_of=AS_OF)
    assert _dump(one)["households"] != _dump(two)["households"]
    one.dispose()
    two.dispose()


def test_district_shape(engine: Engine) -> None:
    summary = generate(engine, households=1500, stewards=4, password="demo-pass-1", seed=7, as_of=AS_OF)
    assert summary["households"] == 1500
    roles = [u["role"] for u in summary["users"]]
    assert roles.count("steward") == 4 and roles.count("admin") == 1 and roles.count("supervisor") == 1
    with Session(engine) as session:
        buildings = session.exec(select(Building)).scalars().all()
        grid = session.exec(select(GridBuilding)).scalars().all()
        # Every building is in exactly one steward's grid.
        assert sorted(g.building_id for g in grid) == sorted(b.id for b in buildings)
        stewards = session.exec(select(User).where(User.role == Role.steward)).scalars().all()
        assert {g.user_id for g in grid} == {s.id for s in stewards}
        orders = session.exec(select(WorkOrder)).scalars().all()
        assert orders and all(o.status in OPEN_STATUSES for o in orders)
        steward_of = {g.building_id: g.user_id for g in grid}
        households = {h.id: h for h in session.exec(select(Household)).scalars().all()}
        for order in orders:
            if order.assignee_id is not None:
                assert order.assignee_id == steward_of[households[order.household_id].building_id]
    listed = {u["username"]: set(u["grid"]) for u in summary["users"]}
    assert listed["admin"] == set()
    assert sum(len(g) for g in listed.values()) == summary["buildings"]


def test_refuses_a_database_that_already_has_data(engine: Engine) -> None:
    generate(engine, households=50, stewards=1, password="demo-pass-1", seed=1, as_of=AS_OF)
    with pytest.raises(DemoError, match="empty database"):
        generate(engine, households=50, stewards=1, password="demo-pass-1", seed=1, as_of=AS_OF)
