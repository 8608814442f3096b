"""Helpers for tests that start a real `steward serve` process."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_healthy(base: str, server: subprocess.Popen[bytes], *, timeout: float = 60, step: float = 0.1) -> None:
    """Until `base`/healthz answers 200; fails if the process exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
        time.sleep(step)
