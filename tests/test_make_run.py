"""`make run` sets up, migrates an embedded SQLite database and serves /healthz (the real server process)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_make_run_serves_healthz_on_an_empty_data_dir(tmp_path: Path) -> None:
    port = _free_port()
    env = os.environ | {"STEWARD_DATA_DIR": str(tmp_path / "data"), "PORT": str(port)}
    env.pop("STEWARD_DATABASE_URL", None)
    proc = subprocess.Popen(["make", "run", f"PORT={port}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        deadline = time.monotonic() + 180
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert health is not None, f"server did not come up; exit={proc.poll()}"
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "database": "ok", "version": health.json()["version"]}
        assert (tmp_path / "data" / "steward.db").exists()
        spec = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).json()
        assert "/api/v1/auth/token" in spec["paths"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    # On an empty database the server says how to create the first admin.
    assert "create-user" in output
