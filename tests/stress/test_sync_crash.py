"""Crash durability of sync: handhelds push and pull while `steward serve` (PostgreSQL) is killed with SIGKILL
at random points; the checks are in tests/stress/sync_driver.py. The short run is part of the normal suite;
the long one (`-m stress`, at least 20 kills) runs in `.ci/run` after `make test`."""

from __future__ import annotations

import asyncio
import json
import os
import random
from typing import Any

import pytest

from api.settings import Settings
from tests.stress.conftest import ServerProcess
from tests.stress.sync_driver import run


def _seed() -> int:
    return int(os.environ.get("STEWARD_STRESS_SEED") or random.randrange(10 ** 6))


def _run(settings: Settings, *, devices: int, kills: int) -> dict[str, Any]:
    server = ServerProcess(settings, STEWARD_SPEECH_QUEUE="off")
    seed = _seed()
    try:
        report = asyncio.run(run(settings, server, devices=devices, kills=kills, seed_value=seed)).as_dict()
    except BaseException:
        print(f"STEWARD_STRESS_SEED={seed} reproduces this run; server log:\n{server.tail()}")
        raise
    finally:
        server.stop()
    print("sync crash report:", json.dumps(report))
    assert report["kills"] == kills and report["mutations"] > 0
    # Answers were lost only to the kills (refused or cut connections), never to a server error.
    assert not [kind for kind in report["failures"] if kind.startswith("http_")], report["failures"]
    return report


@pytest.mark.slow
def test_sync_survives_server_kills(pg_settings: Settings) -> None:
    report = _run(pg_settings, devices=3, kills=3)
    assert report["prefix_checks"] > 0


@pytest.mark.stress
@pytest.mark.timeout(900)
def test_sync_survives_twenty_five_server_kills(pg_settings: Settings) -> None:
    kills = int(os.environ.get("STEWARD_STRESS_KILLS", "25"))
    report = _run(pg_settings, devices=6, kills=kills)
    assert kills >= 20 and report["kills_during_push"] >= kills // 3  # the kills did land on pushes
