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


def test_make_run_leaves_host_and_port_to_the_settings_unless_given(tmp_path: Path) -> None:
    """Regression: `make run` passed --host 127.0.0.1 --port 8000 itself, so STEWARD_HOST/STEWARD_PORT in .env
    (which the README says is read) were overridden. `make -n` prints the command without running it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_") and k not in ("HOST", "PORT")}

    def serve_line(*args: str) -> str:
        out = subprocess.run(["make", "-n", "run", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True).stdout
        return next(line for line in out.splitlines() if "steward serve" in line)

    assert "--host" not in serve_line() and "--port" not in serve_line()  # steward serve reads .env itself
    assert serve_line("HOST=0.0.0.0", "PORT=18999").split()[-4:] == ["--host", "0.0.0.0", "--port", "18999"]


def test_make_run_ignores_host_and_port_from_the_environment() -> None:
    """Regression: make takes environment variables as its own, so a `PORT` a hosting platform exports (or the
    `HOST` tcsh sets) became --port/--host and silently overrode STEWARD_PORT/STEWARD_HOST."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")} | {"HOST": "buildbox", "PORT": "3000"}

    def serve_line(*args: str) -> str:
        out = subprocess.run(["make", "-n", "run", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True).stdout
        return next(line for line in out.splitlines() if "steward serve" in line)

    assert "--host" not in serve_line() and "--port" not in serve_line()
    assert serve_line("PORT=18999").split()[-2:] == ["--port", "18999"] and "--host" not in serve_line("PORT=18999")
