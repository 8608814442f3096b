"""`steward proactive run`: one evaluation from the command line (for cron)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from api.cli import app
from api.db import make_engine
from api.settings import get_settings
from api.work_orders.models import Category, Source, WorkOrder
from tests.utils.factories import make_building, make_household, make_user, make_work_order

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("STEWARD_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_proactive_run_opens_a_cluster_order_and_reports_it(data_dir: Path) -> None:
    refused = runner.invoke(app, ["proactive", "run"])
    assert refused.exit_code == 2 and "steward db upgrade" in refused.output
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    engine = make_engine(get_settings())
    with Session(engine, expire_on_commit=False) as session:
        building = make_building(session)
        steward = make_user(session, grid=[building])
        for room in ("101", "102", "103"):
            make_work_order(session, make_household(session, building, unit="1", room=room),
                            category=Category.not_warm)
    result = runner.invoke(app, ["proactive", "run"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"closed": 0, "clusters_opened": 1, "members_linked": 0,
                                         "revisits_opened": 0, "deliveries_sent": 0, "deliveries_failed": 0}
    with Session(engine) as session:
        order = session.exec(select(WorkOrder).where(WorkOrder.source == Source.proactive)).one()
        assert order.assignee_id == steward.id
    engine.dispose()
