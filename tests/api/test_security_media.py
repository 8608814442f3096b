"""Bad media through every upload path: hotline call audio (`POST /calls`), voice notes (a blob plus a note,
as a handheld sends them), and blobs themselves (photos, signatures). Zero-length, truncated, huge,
wrong-extension and random-bytes files get a clear 4xx, or a transcription job that ends `failed` with a
reason; never a 500 and never a job left in the queue. (Video snapshots are grabbed by the server from the
live call; nothing uploads one.)

Jobs run through each backend's real queue (the embedded worker on SQLite, procrastinate on PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from api.app import create_app
from api.db import utcnow
from api.settings import Settings
from speech.models import Transcript, TranscriptState
from tests.speech.conftest import FIXTURES, speech_data_dir  # noqa: F401 (the session's assembled model)
from tests.speech.service_helpers import bundled_model_dir, clear_procrastinate, wait_until_done
from tests.utils.asserts import assert_error
from tests.utils.factories import World, make_world

API = "/api/v1"
WAV = (FIXTURES / "valve_bleeding.wav").read_bytes()
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6300010000000500010d0a2db40000000049454e44ae426082")
# name -> (file name, bytes): every one of them is stored, then its job must end with an answer.
BAD_AUDIO: dict[str, tuple[str, bytes]] = {
    "random bytes": ("call.wav", os.urandom(8000)),
    "text named .mp3": ("call.mp3", "这不是录音。".encode() * 50),
    "an image named .wav": ("call.wav", PNG),
    "a wav cut inside its header": ("call.wav", WAV[:30]),
    "a wav header with no samples": ("call.wav", WAV[:44]),
    "a wav cut in the middle": ("call.wav", WAV[: len(WAV) // 3]),
    "an ogg with a wav body": ("call.ogg", b"OggS" + WAV[4:20] + os.urandom(2000)),
}


@pytest.fixture
def media_settings(settings: Settings, speech_data_dir: Path, tmp_path: Path) -> Settings:  # noqa: F811
    return settings.model_copy(update={"whisper_model": bundled_model_dir(speech_data_dir),
                                       "blob_dir": tmp_path / "blobs", "speech_retry_backoff_s": 0.2,
                                       "audio_max_bytes": 256 * 1024})


@pytest.fixture
def world(session: Session, media_settings: Settings) -> World:
    return make_world(session, media_settings)


@pytest.fixture
def api(media_settings: Settings, engine: Engine) -> Iterator[TestClient]:
    clear_procrastinate(engine)
    with TestClient(create_app(media_settings, engine=engine), raise_server_exceptions=False) as client:
        yield client


def post_call(api: TestClient, world: World, name: str, data: bytes, content_type: str = "audio/wav") -> Any:
    meta = {"caller_phone": "13800138000", "started_at": "2026-11-29T08:00:00+08:00", "agent": "agent-07",
            "household_id": str(world.household_a.id)}
    return api.post(f"{API}/calls", headers=world.headers(world.supervisor), data={"metadata": json.dumps(meta)},
                    files={"audio": (name, data, content_type)})


def assert_ended_with_an_answer(engine: Engine, settings: Settings, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """Every job leaves the queue (wait_until_done fails if one is still queued/running), and a failed one
    says why."""
    wait_until_done(engine, settings, ids, timeout=240)
    with Session(engine) as session:
        rows = {i: session.get(Transcript, i) for i in ids}
    for transcript in rows.values():
        assert transcript is not None
        assert transcript.status in (TranscriptState.failed, TranscriptState.transcribed), transcript.status
        if transcript.status == TranscriptState.failed:
            assert transcript.failure_reason and len(transcript.failure_reason) > 10, transcript
    return rows


def test_bad_call_recordings_get_a_4xx_or_a_failed_job_with_a_reason(api: TestClient, world: World,
                                                                      engine: Engine,
                                                                      media_settings: Settings) -> None:
    assert_error(post_call(api, world, "call.wav", b""), 422, "empty_audio")
    assert_error(post_call(api, world, "call.wav", b"R" * (256 * 1024 + 1)), 413, "payload_too_large")
    no_metadata = api.post(f"{API}/calls", headers=world.headers(world.supervisor), data={"metadata": "{}"},
                           files={"audio": ("call.wav", WAV, "audio/wav")})
    assert_error(no_metadata, 422, "invalid_metadata")
    queued = {}
    for case, (name, data) in BAD_AUDIO.items():
        r = post_call(api, world, name, data)
        assert r.status_code == 202, (case, r.text)
        queued[uuid.UUID(r.json()["id"])] = case
    rows = assert_ended_with_an_answer(engine, media_settings, list(queued))
    outcome = {queued[i]: (t.status.value, t.failure_reason) for i, t in rows.items()}
    for case in ("random bytes", "text named .mp3", "an image named .wav", "a wav cut inside its header",
                 "a wav header with no samples", "an ogg with a wav body"):
        status, reason = outcome[case]
        assert status == "failed" and reason.startswith("undecodable audio"), (case, outcome[case])
        assert str(media_settings.blob_dir) not in reason, f"the reason leaks a server path: {reason}"
    # a truncated but readable recording is transcribed as far as it goes
    assert outcome["a wav cut in the middle"][0] == "transcribed", outcome["a wav cut in the middle"]


def _put_blob(api: TestClient, headers: dict[str, str], data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    r = api.put(f"{API}/blobs/{sha}", content=data, headers=headers)
    assert r.status_code in (200, 201), r.text
    return sha


def test_bad_voice_notes_from_a_handheld_end_failed_with_a_reason(api: TestClient, world: World, engine: Engine,
                                                                  media_settings: Settings) -> None:
    headers = world.headers(world.steward_a)
    notes = {}
    for case, data in {"zero-length": b"", "random bytes": os.urandom(3000), "an image": PNG,
                       "a truncated wav": WAV[:100]}.items():
        sha = _put_blob(api, headers, data)
        r = api.post(f"{API}/notes", headers=headers, json={
            "household_id": str(world.household_a.id), "audio_sha256": sha, "duration_s": 3,
            "recorded_at": utcnow().isoformat()})
        assert r.status_code == 201, r.text
        notes[uuid.UUID(r.json()["id"])] = case
    rows = assert_ended_with_an_answer(engine, media_settings, list(notes))
    for note_id, transcript in rows.items():
        note = api.get(f"{API}/notes/{note_id}", headers=headers).json()
        if notes[note_id] == "a truncated wav":  # 56 bytes of samples: readable, so transcribed (to nothing)
            assert transcript.status == TranscriptState.transcribed and note["transcript_status"] == "done"
            continue
        assert transcript.status == TranscriptState.failed, (notes[note_id], transcript)
        assert transcript.failure_reason.startswith("undecodable audio"), (notes[note_id], transcript.failure_reason)
        assert note["transcript_status"] == "failed"


def test_bad_blobs_get_a_clear_answer(api: TestClient, world: World, media_settings: Settings) -> None:
    """Blobs are stored as bytes (photos are not decoded on the server); what can go wrong is the transfer."""
    headers = world.headers(world.steward_a)
    photo = os.urandom(50_000)
    sha = hashlib.sha256(photo).hexdigest()
    assert_error(api.put(f"{API}/blobs/{sha}", content=photo[:20_000], headers=headers), 400, "hash_mismatch")
    assert api.head(f"{API}/blobs/{sha}", headers=headers).status_code == 404  # nothing half-written
    empty = _put_blob(api, headers, b"")
    got = api.get(f"{API}/blobs/{empty}", headers=headers)
    assert got.status_code == 200 and got.content == b""
    assert_error(api.get(f"{API}/blobs/{empty}", headers=headers | {"Range": "bytes=0-10"}), 416,
                 "range_not_satisfiable")
    # a resumable upload whose chunks do not add up to the declared hash is discarded
    start = api.patch(f"{API}/blobs/{sha}", content=photo[:10_000],
                      headers=headers | {"Upload-Offset": "0", "Upload-Length": str(len(photo))})
    assert start.status_code == 204
    end = api.patch(f"{API}/blobs/{sha}", content=os.urandom(40_000),
                    headers=headers | {"Upload-Offset": "10000"})
    assert_error(end, 400, "hash_mismatch")
    assert api.head(f"{API}/blobs/{sha}", headers=headers).status_code == 404
    big = os.urandom(media_settings.blob_max_bytes // 1000 + 1)  # sized by the setting, not the default 100 MB
    small = TestClient(create_app(media_settings.model_copy(update={"blob_max_bytes": len(big) - 1}),
                                  engine=api.app.state.engine), raise_server_exceptions=False)  # type: ignore[attr-defined]
    with small:
        r = small.put(f"{API}/blobs/{hashlib.sha256(big).hexdigest()}", content=big, headers=headers)
        assert_error(r, 413, "payload_too_large")
