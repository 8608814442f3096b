"""`steward blobs sweep`: blobs that no row names go once older than the grace period, on both stores."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from typer.testing import CliRunner

from api.cli import app
from api.settings import Settings, get_settings
from sync.blobs.service import make_store
from sync.blobs.sweep import sweep
from tests.sync.conftest import District
from tests.sync.device import Device

URL = "/api/v1/blobs/{}"


def _upload(client: TestClient, headers: dict[str, str]) -> str:
    data = os.urandom(3000)
    sha = hashlib.sha256(data).hexdigest()
    assert client.put(URL.format(sha), content=data, headers=headers).status_code == 201
    return sha


def _note(sha: str, visit_id: str) -> dict[str, object]:
    return {"audio_sha256": sha, "duration_s": 2.0, "recorded_at": "2026-12-01T08:00:00+00:00", "visit_id": visit_id}


def _delete_queued_over_an_office_edit(client: TestClient, d: District, headers: dict[str, str], visit: str,
                                       photo: str) -> Device:
    """A phone that put `photo` on the visit, then queued the visit's delete from the version it holds, after
    the office edited the visit: pushed, the delete wins over the edit and logs the whole row."""
    phone = Device(http=client, headers=headers, name="phone")
    phone.pull()
    phone.update("visits", visit, photos=[photo])
    assert phone.push()["results"][0]["status"] == "applied"
    phone.pull()
    office = Device(http=client, headers=d.headers(d.supervisor), name="office")
    office.pull()
    office.update("visits", visit, actions="bled radiators; replaced the valve")
    assert office.push()["results"][0]["status"] == "applied"
    phone.delete("visits", visit)
    return phone


def test_unreferenced_blobs_go_after_the_grace_period(client: TestClient, district: District, engine: Engine,
                                                      settings: Settings) -> None:
    """Regression: nothing ever deleted a blob; a deleted voice note's recording stayed downloadable by any
    signed-in user, and an upload whose row never came kept its disk for ever."""
    d = district
    headers = d.headers(d.steward1)
    kept, orphan, of_deleted = (_upload(client, headers) for _ in range(3))
    phone = Device(http=client, headers=headers, name="phone")
    phone.pull()
    phone.create("notes", **_note(kept, str(d.visit1.id)))
    deleted_note = phone.create("notes", **_note(of_deleted, str(d.visit1.id)))
    assert [r["status"] for r in phone.push()["results"]] == ["applied", "applied"]
    office = Device(http=client, headers=d.headers(d.supervisor), name="office")
    office.pull()
    office.delete("notes", deleted_note)
    assert office.push()["results"][0]["status"] == "applied"
    store = make_store(settings)

    young = sweep(engine, store, grace=timedelta(days=7))  # all three were stored moments ago
    assert (young.stored, young.referenced, young.recent, young.deleted) == (3, 1, 2, 0)
    later = datetime.now(UTC) + timedelta(days=8)
    dry = sweep(engine, store, grace=timedelta(days=7), now=later, dry_run=True)
    assert (dry.deleted, dry.deleted_bytes) == (2, 6000)
    assert all(client.head(URL.format(sha), headers=headers).status_code == 200 for sha in (orphan, of_deleted))
    swept = sweep(engine, store, grace=timedelta(days=7), now=later)
    assert (swept.stored, swept.referenced, swept.recent, swept.deleted) == (3, 1, 0, 2)
    assert client.get(URL.format(kept), headers=headers).status_code == 200
    for sha in (orphan, of_deleted):
        assert client.get(URL.format(sha), headers=headers).status_code == 404
    assert sweep(engine, store, grace=timedelta(days=7), now=later).stored == 1


def test_the_sweep_command_reports_what_it_did(client: TestClient, district: District, settings: Settings,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sha = _upload(client, district.headers(district.steward1))
    for name, value in {"STEWARD_DATABASE_URL": settings.resolved_database_url,
                        "STEWARD_DATA_DIR": str(settings.data_dir), "STEWARD_SECRET_KEY": settings.secret_key,
                        "STEWARD_BLOB_STORE": settings.blob_store}.items():
        monkeypatch.setenv(name, str(value))
    for name in ("s3_bucket", "s3_prefix", "s3_region"):
        if getattr(settings, name, None):
            monkeypatch.setenv(f"STEWARD_{name.upper()}", str(getattr(settings, name)))
    get_settings.cache_clear()
    try:
        dry = CliRunner().invoke(app, ["blobs", "sweep", "--grace-days", "0", "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert json.loads(dry.stdout) | {"stored": 1} == {"stored": 1, "referenced": 0, "recent": 0, "deleted": 1,
                                                         "deleted_bytes": 3000, "dry_run": True}
        assert CliRunner().invoke(app, ["blobs", "sweep", "--grace-days", "0"]).exit_code == 0
        assert make_store(get_settings()).exists(sha) is None
        bad = CliRunner().invoke(app, ["blobs", "sweep", "--grace-days", "-1"])
        assert bad.exit_code == 2
    finally:
        get_settings.cache_clear()


def test_a_store_failing_midway_ends_the_sweep_command_with_what_it_did(
        client: TestClient, district: District, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): a delete the store refused (S3 credentials without s3:DeleteObject, the endpoint
    gone) ended `steward blobs sweep` in a traceback, and nothing told how many blobs it had deleted."""
    from botocore.exceptions import ClientError

    from sync.blobs import service

    shas = [_upload(client, district.headers(district.steward1)) for _ in range(3)]
    for name, value in {"STEWARD_DATABASE_URL": settings.resolved_database_url,
                        "STEWARD_DATA_DIR": str(settings.data_dir), "STEWARD_SECRET_KEY": settings.secret_key,
                        "STEWARD_BLOB_STORE": settings.blob_store}.items():
        monkeypatch.setenv(name, str(value))
    for name in ("s3_bucket", "s3_prefix", "s3_region"):
        if getattr(settings, name, None):
            monkeypatch.setenv(f"STEWARD_{name.upper()}", str(getattr(settings, name)))
    store = make_store(settings)
    deleted: list[str] = []

    def delete(sha: str) -> None:
        if deleted:  # the first delete goes through, then the store refuses
            raise (ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "DeleteObject")
                   if settings.blob_store == "s3" else PermissionError(13, "Permission denied", sha))
        type(store).delete(store, sha)
        deleted.append(sha)

    monkeypatch.setattr(store, "delete", delete)
    monkeypatch.setattr(service, "make_store", lambda _: store)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["blobs", "sweep", "--grace-days", "0"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert json.loads(result.stdout)["deleted"] == 1
    assert "failed during the sweep, after 1 deletions" in result.stderr
    assert [sha for sha in shas if make_store(settings).exists(sha) is None] == deleted


def test_photos_and_signatures_of_visits_are_kept(client: TestClient, district: District, engine: Engine,
                                                  settings: Settings) -> None:
    """Regression: no row could name a photo or a signature, so the sweep deleted every photo a handheld
    uploaded once the grace period was over. A photo taken off a visit goes at the next sweep."""
    d = district
    headers = d.headers(d.steward1)
    first, second, removed, signature, orphan = (_upload(client, headers) for _ in range(5))
    phone = Device(http=client, headers=headers, name="phone")
    phone.pull()
    visit = phone.create("visits", household_id=str(d.h1a.id), arrived_at="2026-11-30T08:00:00+00:00",
                         photos=[first, removed])
    assert phone.push()["results"][0]["status"] == "applied"
    phone.update("visits", visit, photos=[first, second])
    assert phone.push()["results"][0]["status"] == "applied"
    answer = client.patch(f"/api/v1/visits/{visit}", json={"signature_sha256": signature}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["photos"] == [first, second]

    swept = sweep(engine, make_store(settings), grace=timedelta(days=7), now=datetime.now(UTC) + timedelta(days=8))
    assert (swept.stored, swept.referenced, swept.deleted) == (5, 3, 2)
    for sha, status in ((first, 200), (second, 200), (signature, 200), (removed, 404), (orphan, 404)):
        assert client.head(URL.format(sha), headers=headers).status_code == status


def test_a_blob_asked_for_again_starts_its_grace_period_again(client: TestClient, district: District,
                                                              settings: Settings,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a blob stored a month ago whose row never came, uploaded again today (200: already
    stored) by a handheld whose row is still queued, kept its old age and went at tonight's sweep."""
    from sync.blobs import storage

    headers = district.headers(district.steward1)
    sha = _upload(client, headers)
    store = make_store(settings)
    listed = {name: at for name, _, at in store.listing()}
    monkeypatch.setattr(storage, "CLAIM_RENEW_S", -1)  # renew at every claim (S3 times are whole seconds)
    time.sleep(1.1)
    data = next(store.open_range(sha, 0, 2999))
    for claim in (lambda: client.put(URL.format(sha), content=data, headers=headers),
                  lambda: client.head(URL.format(sha), headers=headers)):
        assert claim().status_code == 200
        renewed = {name: at for name, _, at in store.listing()}
        assert renewed[sha] > listed[sha]
        listed = renewed
        time.sleep(1.1)


def test_a_blob_uploaded_again_is_not_swept_within_its_grace_period(tmp_path: Path) -> None:
    """The same on the service (local store): a month old, uploaded again, and the sweep keeps it."""
    import anyio

    from api import migrate
    from api.db import make_engine
    from sync.blobs.service import make_blobs

    settings = Settings(data_dir=tmp_path)
    engine = make_engine(settings)
    migrate.upgrade(engine)
    blobs = make_blobs(settings)
    data = os.urandom(3000)
    sha = hashlib.sha256(data).hexdigest()

    async def body() -> Any:
        yield data

    assert anyio.run(blobs.put, sha, body(), len(data)) is True
    month_ago = time.time() - 30 * 86400
    os.utime(blobs.store.path(sha), (month_ago, month_ago))  # type: ignore[attr-defined]
    assert anyio.run(blobs.put, sha, body(), len(data)) is False
    report = sweep(engine, blobs.store, grace=timedelta(days=7))
    engine.dispose()
    assert report.deleted == 0 and blobs.store.exists(sha) == 3000


def test_a_photo_that_lost_a_conflict_stays_until_the_conflict_is_reviewed(client: TestClient, district: District,
                                                                          engine: Engine, settings: Settings) -> None:
    """Regression: two handhelds each added a photo to one visit; the loser's photo was named only by the
    conflict log a supervisor reviews, and the next sweep deleted it."""
    d = district
    headers = d.headers(d.steward1)
    first, valve, meter = (_upload(client, headers) for _ in range(3))
    visit = str(d.visit1.id)
    phone, tablet = Device(http=client, headers=headers, name="phone"), Device(http=client, headers=headers,
                                                                               name="tablet")
    phone.pull()
    phone.update("visits", visit, photos=[first])
    phone.push()
    tablet.pull()
    phone.update("visits", visit, photos=[first, valve])
    tablet.update("visits", visit, photos=[first, meter])
    assert phone.push()["results"][0]["status"] == "applied"
    assert tablet.push()["results"][0]["status"] == "conflict"
    later = datetime.now(UTC) + timedelta(days=8)
    swept = sweep(engine, make_store(settings), grace=timedelta(days=7), now=later)
    assert swept.deleted == 0 and client.head(URL.format(valve), headers=headers).status_code == 200
    office = d.headers(d.supervisor)
    conflicts = client.get("/api/v1/sync/conflicts", headers=office).json()["data"]
    for conflict in conflicts:
        assert client.post(f"/api/v1/sync/conflicts/{conflict['id']}/review", json={"reviewed": True},
                           headers=office).is_success
    swept = sweep(engine, make_store(settings), grace=timedelta(days=7), now=later)
    assert swept.deleted == 1 and client.head(URL.format(valve), headers=headers).status_code == 404


def test_photos_of_a_visit_a_delete_won_over_stay_until_the_conflict_is_reviewed(
        client: TestClient, district: District, engine: Engine, settings: Settings) -> None:
    """Regression: the delete_wins line kept only the fields the office had changed, so the deleted visit's
    photos were swept while its conflict was unreviewed, and the visit could not be put back. The line holds
    the whole row now."""
    d = district
    headers = d.headers(d.steward1)
    photo = _upload(client, headers)
    visit = str(d.visit1.id)
    phone = _delete_queued_over_an_office_edit(client, d, headers, visit, photo)
    answer = phone.push()["results"][0]
    assert (answer["status"], answer["reason"]) == ("conflict", "delete_wins")
    sup = d.headers(d.supervisor)
    [line] = client.get("/api/v1/sync/conflicts", params={"reviewed": "false"}, headers=sup).json()["data"]
    assert line["server_value"]["photos"] == [photo] and line["server_value"]["actions"].startswith("bled")
    assert line["server_value"]["household_id"] == str(d.visit1.household_id)  # enough to put the visit back
    later = datetime.now(UTC) + timedelta(days=8)
    sweep(engine, make_store(settings), grace=timedelta(days=7), now=later)
    assert client.head(URL.format(photo), headers=headers).status_code == 200
    assert client.post(f"/api/v1/sync/conflicts/{line['id']}/review", json={"reviewed": True},
                       headers=sup).is_success
    sweep(engine, make_store(settings), grace=timedelta(days=7), now=later)
    assert client.head(URL.format(photo), headers=headers).status_code == 404


def test_audio_of_a_note_a_delete_won_over_stays_until_the_conflict_is_reviewed(
        client: TestClient, district: District, engine: Engine, settings: Settings) -> None:
    """Regression: the sweep held only blobs of visit conflicts, so the audio of a voice note deleted after the
    transcription (or the office) changed it was swept while its delete_wins line still said how to put it
    back."""
    d = district
    headers = d.headers(d.steward1)
    audio = _upload(client, headers)
    phone = Device(http=client, headers=headers, name="phone")
    phone.pull()
    note = phone.create("notes", **_note(audio, str(d.visit1.id)))
    assert phone.push()["results"][0]["status"] == "applied"
    phone.pull()
    office = Device(http=client, headers=d.headers(d.supervisor), name="office")
    office.pull()
    office.update("notes", note, duration_s=3.5)
    assert office.push()["results"][0]["status"] == "applied"
    phone.delete("notes", note)
    answer = phone.push()["results"][0]
    assert (answer["status"], answer["reason"]) == ("conflict", "delete_wins")
    sup = d.headers(d.supervisor)
    [line] = client.get("/api/v1/sync/conflicts", params={"reviewed": "false"}, headers=sup).json()["data"]
    assert line["server_value"]["audio_sha256"] == audio
    later = datetime.now(UTC) + timedelta(days=8)
    sweep(engine, make_store(settings), grace=timedelta(days=7), now=later)
    assert client.head(URL.format(audio), headers=headers).status_code == 200
    assert client.post(f"/api/v1/sync/conflicts/{line['id']}/review", json={"reviewed": True},
                       headers=sup).is_success
    sweep(engine, make_store(settings), grace=timedelta(days=7), now=later)
    assert client.head(URL.format(audio), headers=headers).status_code == 404


def test_a_conflict_logged_while_the_sweep_runs_holds_its_photos(client: TestClient, district: District,
                                                                 engine: Engine, settings: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): the sweep read the unreviewed conflicts once, before walking the store. A delete
    that won over an edit, pushed while it ran, took the visit and logged its photos on a line the sweep had
    not read, and a later batch deleted the photo the line names."""
    from sync.blobs import sweep as sweep_module

    d = district
    headers = d.headers(d.steward1)
    _upload(client, headers)  # a blob the sweep looks at first (the batches before the photo's)
    photo = _upload(client, headers)
    visit = str(d.visit1.id)
    phone = _delete_queued_over_an_office_edit(client, d, headers, visit, photo)  # pushed while the sweep runs

    monkeypatch.setattr(sweep_module, "BATCH", 1)
    store = make_store(settings)
    listing = store.listing
    monkeypatch.setattr(store, "listing", lambda: iter(sorted(listing(), key=lambda item: item[0] == photo)))
    pushed: list[dict[str, Any]] = []

    def progress(_: int) -> None:  # after the first batch the phone's delete lands
        if not pushed:
            pushed.append(phone.push()["results"][0])

    later = datetime.now(UTC) + timedelta(days=8)
    report = sweep(engine, store, grace=timedelta(days=7), now=later, progress=progress)
    assert (pushed[0]["status"], pushed[0]["reason"]) == ("conflict", "delete_wins")
    assert (report.stored, report.referenced, report.deleted) == (2, 1, 1)
    assert client.head(URL.format(photo), headers=headers).status_code == 200
    sup = d.headers(d.supervisor)
    [line] = client.get("/api/v1/sync/conflicts", params={"reviewed": "false"}, headers=sup).json()["data"]
    assert line["server_value"]["photos"] == [photo]
    assert client.post(f"/api/v1/sync/conflicts/{line['id']}/review", json={"reviewed": True},
                       headers=sup).is_success
    sweep(engine, make_store(settings), grace=timedelta(days=7), now=later)
    assert client.head(URL.format(photo), headers=headers).status_code == 404
