"""Fault tests against real processes on PostgreSQL: a scratch database, and `steward serve` / `steward worker`
as child processes that the tests kill with SIGKILL and start again.

Without `STEWARD_TEST_POSTGRES_URL` these tests are skipped, except in CI (`CI=1`), where that is a failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from api import migrate
from api.db import make_engine
from api.settings import Settings
from tests.conftest import POSTGRES_URL, TEST_SECRET, create_postgres_database, drop_postgres_database, make_settings

STEWARD = str(Path(sys.executable).with_name("steward"))


def require_postgres() -> None:
    """Skip without PostgreSQL; in CI a missing server is a failure, not a skip."""
    if POSTGRES_URL:
        return
    if os.environ.get("CI"):
        pytest.fail("CI=1 but STEWARD_TEST_POSTGRES_URL is not set: the stress tests need PostgreSQL")
    pytest.skip("set STEWARD_TEST_POSTGRES_URL to run the crash tests on PostgreSQL")


@pytest.fixture
def pg_settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings for a fresh, migrated PostgreSQL database of this test (dropped afterwards)."""
    require_postgres()
    url = create_postgres_database()
    settings = make_settings(url, tmp_path / "data", blob_dir=tmp_path / "blobs")
    engine = make_engine(settings)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    yield settings
    drop_postgres_database(url)


def checker_engine(settings: Settings) -> Engine:
    """An engine without a pool, so that between two kills the only session on the database is ours."""
    return create_engine(settings.resolved_database_url, poolclass=NullPool,
                         connect_args={"application_name": "stress-check"})


def wait_for_no_other_sessions(engine: Engine, timeout: float = 20.0) -> None:
    """After a kill, wait until PostgreSQL has ended the dead process's sessions (and rolled back whatever
    they had not committed), so that what we read next cannot change under us."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            others = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                       "AND pid <> pg_backend_pid()")).scalar_one()
        if others == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{others} session(s) of a killed process still open after {timeout} s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a child `steward` process on this test's database."""
    return os.environ | {"STEWARD_DATABASE_URL": settings.database_url, "STEWARD_DATA_DIR": str(settings.data_dir),
                         "STEWARD_BLOB_DIR": str(settings.blob_dir or ""), "STEWARD_SECRET_KEY": TEST_SECRET,
                         "STEWARD_ENV": "dev", "STEWARD_LOG_LEVEL": "warning"} | extra


class ServerProcess:
    """`steward serve` on a free port, started again on the same port after each kill."""

    def __init__(self, settings: Settings, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = process_env(settings, **env)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log = settings.data_dir / "server.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait for /healthz; returns the seconds it took."""
        began = time.monotonic()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([STEWARD, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        while time.monotonic() - began < timeout:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the server did not answer /healthz within {timeout} s: {self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, open transactions are cut off."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Child processes a test starts; whatever is still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
