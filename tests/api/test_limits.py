"""Abuse limits: every one is a setting with a sane default, documented in docs/security.md, and answered
in the one error shape (413 for sizes, 422 for page bounds, 429 with Retry-After for rates). Sign-in
throttling has its own file (test_security_login.py); video room limits are tested in tests/video."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.app import MULTIPART_ALLOWANCE, create_app
from api.settings import Settings
from speech.models import Transcript
from tests.utils.asserts import assert_error, count_rows
from tests.utils.factories import World

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
API = "/api/v1"
# Every abuse limit, as named in docs/security.md's limits table.
LIMITS = ("max_body_bytes", "blob_max_bytes", "audio_max_bytes", "page_max_limit", "sync_push_max_mutations",
          "login_rate_per_minute", "login_max_failures", "login_max_failures_per_ip", "login_failure_window_s",
          "login_lockout_s", "video_max_rooms", "video_max_participants", "video_room_max_minutes",
          "video_join_token_minutes")


@pytest.fixture
def small(settings: Settings) -> Settings:
    return settings.model_copy(update={"audio_max_bytes": 4096, "page_max_limit": 20, "speech_queue": "off"})


@pytest.fixture
def api(small: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(small, engine=engine), raise_server_exceptions=False) as client:
        yield client


def _metadata() -> dict[str, str]:
    return {"metadata": json.dumps({"caller_phone": "13800138000", "started_at": "2026-11-29T08:00:00+08:00",
                                    "agent": "agent-07"})}


def test_every_limit_is_a_documented_setting_with_its_default() -> None:
    text = DOC.read_text()
    defaults = Settings()
    for name in LIMITS:
        value = getattr(defaults, name)
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        row = re.search(rf"^\| `STEWARD_{name.upper()}` \| `([^`]+)` \|", text, re.M)
        assert row is not None, f"docs/security.md has no limits row for STEWARD_{name.upper()}"
        assert row.group(1) == shown, f"STEWARD_{name.upper()}: documented {row.group(1)}, default {shown}"


def test_a_call_recording_over_the_audio_limit_is_413_and_nothing_is_stored(api: TestClient, world: World,
                                                                            session) -> None:
    headers = world.headers(world.supervisor)
    over = api.post(f"{API}/calls", headers=headers, data=_metadata(),
                    files={"audio": ("call.wav", b"R" * 4097, "audio/wav")})
    assert_error(over, 413, "payload_too_large")
    # a body far beyond the limit is refused on its declared length, before it is read
    huge = api.post(f"{API}/calls", headers=headers, data=_metadata(),
                    files={"audio": ("call.wav", b"R" * (4096 + MULTIPART_ALLOWANCE + 1), "audio/wav")})
    assert_error(huge, 413, "payload_too_large")
    assert count_rows(session, Transcript) == 0
    fits = api.post(f"{API}/calls", headers=headers, data=_metadata(),
                    files={"audio": ("call.wav", b"R" * 4096, "audio/wav")})
    assert fits.status_code == 202, fits.text


def test_a_streamed_call_upload_over_the_limit_is_413(api: TestClient, world: World) -> None:
    """Without a Content-Length the middleware counts the bytes as they arrive."""
    boundary = "xyz"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n"
            f"{_metadata()['metadata']}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; "
            f"filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n").encode() + b"R" * (4096 + MULTIPART_ALLOWANCE)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    content_type = {"content-type": f"multipart/form-data; boundary={boundary}"}
    r = api.post(f"{API}/calls", content=chunks(), headers=world.headers(world.supervisor) | content_type)
    assert_error(r, 413, "payload_too_large")


@pytest.mark.parametrize("path", ["/households", "/work-orders", "/visits", "/transcripts", "/video/snapshots",
                                  "/users", "/sync/conflicts"])
def test_page_size_is_bounded_by_the_setting(api: TestClient, world: World, path: str) -> None:
    headers = world.headers(world.admin)
    assert api.get(f"{API}{path}", params={"limit": 20}, headers=headers).status_code == 200
    assert_error(api.get(f"{API}{path}", params={"limit": 21}, headers=headers), 422, "validation_error")
    assert_error(api.get(f"{API}{path}", params={"limit": 0}, headers=headers), 422, "validation_error")
    assert_error(api.get(f"{API}{path}", params={"offset": 10_000_001}, headers=headers), 422, "validation_error")


def test_the_default_page_bound_is_500(client: TestClient, world: World) -> None:
    headers = world.headers(world.admin)
    assert client.get(f"{API}/households", params={"limit": 500}, headers=headers).status_code == 200
    assert_error(client.get(f"{API}/households", params={"limit": 501}, headers=headers), 422, "validation_error")


def test_sync_pull_pages_are_bounded(client: TestClient, world: World) -> None:
    headers = world.headers(world.steward_a)
    r = client.get(f"{API}/sync/pull", params={"schema_version": 1, "limit": 10**9}, headers=headers)
    assert_error(r, 422, "validation_error")
