"""The speech API on both backends: calls in, transcripts out, correction with history, approval, search,
redaction, audio with Range. Real transcription runs through each backend's queue."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from api.app import create_app
from api.db import utcnow
from api.notes.models import Note, TranscriptStatus
from api.settings import Settings
from api.work_orders.models import WorkOrder
from speech.models import TranscriptState
from sync.tracking import allocate_seq
from tests.speech.conftest import FIXTURES
from tests.speech.service_helpers import (
    bundled_model_dir,
    clear_procrastinate,
    make_transcript,
    post_call,
    wait_until_done,
)
from tests.utils.asserts import assert_error
from tests.utils.factories import World, make_work_order, make_world

LEAK = (FIXTURES / "leak_report.wav").read_bytes()
VALVE = (FIXTURES / "valve_bleeding.wav").read_bytes()


@pytest.fixture
def speech_settings_(settings: Settings, speech_data_dir: Path, tmp_path: Path) -> Settings:
    """The test settings, sharing the session's assembled model, with fast retries."""
    return settings.model_copy(update={"whisper_model": bundled_model_dir(speech_data_dir),
                                       "blob_dir": tmp_path / "blobs", "speech_retry_backoff_s": 0.2})


@pytest.fixture
def world(session: Session, speech_settings_: Settings) -> World:
    return make_world(session, speech_settings_)


@pytest.fixture
def api(speech_settings_: Settings, engine: Engine) -> Iterator[TestClient]:
    clear_procrastinate(engine)
    with TestClient(create_app(speech_settings_, engine=engine), raise_server_exceptions=False) as client:
        yield client


def test_a_call_is_queued_transcribed_tagged_and_searchable(api: TestClient, world: World, engine: Engine,
                                                            speech_settings_: Settings) -> None:
    headers = world.headers(world.supervisor)
    r = post_call(api, headers, VALVE, household_id=str(world.household_a.id))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and set(body) == {"id", "status"}
    wait_until_done(engine, speech_settings_, [uuid.UUID(body["id"])])
    t = api.get(f"/api/v1/transcripts/{body['id']}", headers=headers).json()
    assert t["status"] == "transcribed" and t["kind"] == "call_recording"
    assert (t["engine"], t["model"], t["language"]) == ("faster-whisper", speech_settings_.whisper_model, "zh")
    assert "排气阀" in t["text"] and "进水阀" in t["text"]
    assert t["categories"] == ["air_lock", "valve"]
    assert t["segments"] and t["segments"][0]["start"] == 0.0 and t["segments"][-1]["end"] <= 8.5
    assert (t["caller_phone"], t["agent"]) == ("13800138000", "agent-07")
    assert t["draft_work_order_id"] is None  # air_lock/valve: no draft work order
    found = api.get("/api/v1/transcripts", headers=headers, params={"q": "进水阀"}).json()
    assert [row["id"] for row in found["data"]] == [body["id"]]
    with Session(engine) as session:  # the note that syncs to handhelds carries the transcript too
        note = session.get(Note, uuid.UUID(body["id"]))
        assert note is not None and note.transcript_status == TranscriptStatus.done and "排气阀" in note.transcript_text


def test_a_call_waiting_for_the_database_leaves_other_requests_answered(
        world: World, engine: Engine, speech_settings_: Settings) -> None:
    """Regression (review): the upload route stored, probed and committed on the event loop, so while another
    writer held the database (SQLite's write lock; here the change sequence, which every insert of a note
    takes on both backends) every other request, `/metrics` included, waited behind it."""
    app = create_app(speech_settings_.model_copy(update={"speech_queue": "off"}), engine=engine)
    holder = Session(engine)
    allocate_seq(holder)  # another writer, mid-transaction

    async def main() -> tuple[int, int, bool]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            upload = asyncio.create_task(client.post(
                "/api/v1/calls", headers=world.headers(world.supervisor),
                files={"audio": ("call.wav", LEAK, "audio/wav")},
                data={"metadata": json.dumps({"caller_phone": "13800138000", "agent": "agent-07",
                                              "started_at": "2026-11-29T08:00:00+08:00"})}))
            await asyncio.sleep(0.5)  # the upload is waiting for the database now
            try:
                metrics = await asyncio.wait_for(client.get("/metrics"), 4)
                waiting = not upload.done()
            finally:
                await asyncio.to_thread(holder.rollback)
            return metrics.status_code, (await upload).status_code, waiting

    try:
        assert asyncio.run(main()) == (200, 202, True)
    finally:
        holder.close()


def test_undecodable_audio_fails_fast_with_a_reason(api: TestClient, world: World, engine: Engine,
                                                    speech_settings_: Settings) -> None:
    headers = world.headers(world.supervisor)
    bad = post_call(api, headers, b"RIFF\x00\x00\x00\x00WAVEfmt " + b"\xff" * 300).json()
    good = post_call(api, headers, LEAK).json()
    wait_until_done(engine, speech_settings_, [uuid.UUID(bad["id"]), uuid.UUID(good["id"])])
    failed = api.get(f"/api/v1/transcripts/{bad['id']}", headers=headers).json()
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["failure_reason"].startswith("undecodable audio:")
    assert api.get(f"/api/v1/transcripts/{good['id']}", headers=headers).json()["status"] == "transcribed"
    listed = api.get("/api/v1/transcripts", headers=headers, params={"status": "failed"}).json()
    assert [row["id"] for row in listed["data"]] == [bad["id"]]


def test_call_upload_checks_role_metadata_and_links(api: TestClient, world: World, session: Session) -> None:
    assert post_call(api, world.headers(world.steward_a), LEAK).status_code == 403
    r = api.post("/api/v1/calls", headers=world.headers(world.admin), files={"audio": ("c.wav", LEAK, "audio/wav")},
                 data={"metadata": "{not json"})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "invalid_metadata"
    r = post_call(api, world.headers(world.admin), LEAK, started_at="2026-11-29T08:00:00")  # no time zone
    assert r.status_code == 422
    for blank in ({"caller_phone": "    "}, {"agent": " \u200b "}):  # regression (review): stored blank
        assert_error(post_call(api, world.headers(world.admin), LEAK, **blank), 422, "invalid_metadata")
    order = make_work_order(session, world.household_b)
    r = post_call(api, world.headers(world.admin), LEAK, household_id=str(world.household_a.id),
                  work_order_id=str(order.id))
    assert r.status_code == 422 and r.json()["detail"]["code"] == "household_mismatch"
    assert post_call(api, world.headers(world.admin), b"").status_code == 422


def test_redaction_masks_numbers_for_a_steward_and_not_for_an_admin(api: TestClient, world: World,
                                                                    session: Session) -> None:
    t = make_transcript(session, world.steward_a, "请回电13800138000，身份证370102198507151234。",
                        household_id=world.household_a.id)
    as_admin = api.get(f"/api/v1/transcripts/{t.id}", headers=world.headers(world.admin)).json()
    as_steward = api.get(f"/api/v1/transcripts/{t.id}", headers=world.headers(world.steward_a)).json()
    assert as_admin["text"] == "请回电13800138000，身份证370102198507151234。" and not as_admin["redacted"]
    assert as_steward["text"] == "请回电138****8000，身份证370102***********4。" and as_steward["redacted"]
    assert "13800138000" not in "".join(s["text"] for s in as_steward["segments"])
    # Outside the steward's grid: not found, whatever the id.
    assert api.get(f"/api/v1/transcripts/{t.id}", headers=world.headers(world.steward_b)).status_code == 404


def test_correction_keeps_history_search_finds_the_corrected_word_then_approval_locks(
        api: TestClient, world: World, session: Session) -> None:
    t = make_transcript(session, world.steward_a, "楼道里的立管有意想，", "晚上声音特别大。",
                        household_id=world.household_a.id)
    supervisor = world.headers(world.supervisor)
    assert api.get("/api/v1/transcripts", headers=supervisor, params={"q": "异响"}).json()["count"] == 0
    r = api.patch(f"/api/v1/transcripts/{t.id}", headers=world.headers(world.steward_a),
                  json={"segments": [{"index": 0, "text": "楼道里的立管有异响，"}]})
    assert r.status_code == 403  # stewards read, supervisors correct
    r = api.patch(f"/api/v1/transcripts/{t.id}", headers=supervisor,
                  json={"base_revision": 0, "segments": [{"index": 0, "text": "楼道里的立管有异响，"},
                                                         {"index": 1, "text": "晚上声音特别大。"}]})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "楼道里的立管有异响，晚上声音特别大。" and r.json()["revision"] == 1
    assert r.json()["categories"] == ["noise"]
    for q in ("异响", "管有异响"):  # two characters (scan) and more (trigram index)
        hits = api.get("/api/v1/transcripts", headers=supervisor, params={"q": q}).json()
        assert [row["id"] for row in hits["data"]] == [str(t.id)], q
    stale = api.patch(f"/api/v1/transcripts/{t.id}", headers=supervisor,
                      json={"base_revision": 0, "segments": [{"index": 0, "text": "楼道"}]})
    assert stale.status_code == 409 and stale.json()["detail"]["code"] == "stale_revision"
    history = api.get(f"/api/v1/transcripts/{t.id}/revisions", headers=supervisor).json()
    assert [(h["revision"], h["user_id"], h["changes"]) for h in history] == [
        (1, str(world.supervisor.id),
         [{"index": 0, "before": "楼道里的立管有意想，", "after": "楼道里的立管有异响，"}])]
    # Regression: approving took no revision, so a supervisor approved text corrected by another since they
    # loaded it; with the revision they reviewed, a moved-on transcript is 409 and stays unapproved.
    stale = api.post(f"/api/v1/transcripts/{t.id}/approve", headers=supervisor, json={"base_revision": 0})
    assert stale.status_code == 409 and stale.json()["detail"]["code"] == "stale_revision"
    bad = api.post(f"/api/v1/transcripts/{t.id}/approve", headers=supervisor, json={"base_revison": 1})
    assert bad.status_code == 422
    approved = api.post(f"/api/v1/transcripts/{t.id}/approve", headers=supervisor, json={"base_revision": 1}).json()
    assert approved["status"] == "approved" and approved["approved_by_id"] == str(world.supervisor.id)
    r = api.patch(f"/api/v1/transcripts/{t.id}", headers=supervisor, json={"segments": [{"index": 0, "text": "x"}]})
    assert r.status_code == 409 and r.json()["detail"]["code"] == "invalid_transition"
    with Session(api.app.state.engine) as s:  # type: ignore[attr-defined]
        assert s.get(Note, t.id).transcript_text == "楼道里的立管有异响，晚上声音特别大。"  # type: ignore[union-attr]


def test_filters(api: TestClient, world: World, session: Session) -> None:
    order = make_work_order(session, world.household_a)
    old = make_transcript(session, world.steward_a, "暖气漏水了", categories=("leak",),
                          household_id=world.household_a.id, recorded_at=utcnow() - timedelta(days=10),
                          work_order_id=order.id)
    new = make_transcript(session, world.steward_b, "室内温度达不到标准", categories=("not_warm",),
                          household_id=world.household_b.id, status=TranscriptState.approved)
    headers = world.headers(world.supervisor)

    def ids(**params: object) -> list[str]:
        return [row["id"] for row in api.get("/api/v1/transcripts", headers=headers, params=params).json()["data"]]

    assert ids() == [str(new.id), str(old.id)]  # newest recording first
    assert ids(category="leak") == [str(old.id)]
    assert ids(status="approved") == [str(new.id)]
    assert ids(steward_id=str(world.steward_b.id)) == [str(new.id)]
    assert ids(work_order_id=str(order.id)) == [str(old.id)]
    assert ids(date_from=str((utcnow() - timedelta(days=2)).date())) == [str(new.id)]
    assert ids(date_to=str((utcnow() - timedelta(days=5)).date())) == [str(old.id)]
    steward_view = api.get("/api/v1/transcripts", headers=world.headers(world.steward_a)).json()
    assert [row["id"] for row in steward_view["data"]] == [str(old.id)]  # only the steward's grid


def test_audio_is_served_with_range_requests(api: TestClient, world: World, engine: Engine,
                                             speech_settings_: Settings) -> None:
    headers = world.headers(world.supervisor)
    call = post_call(api, headers, LEAK).json()
    whole = api.get(f"/api/v1/transcripts/{call['id']}/audio", headers=headers)
    assert whole.status_code == 200 and whole.content == LEAK and whole.headers["content-type"] == "audio/wav"
    part = api.get(f"/api/v1/transcripts/{call['id']}/audio", headers=headers | {"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(LEAK)}"
    assert part.content == LEAK[1000:2000]
    # Safari's audio element asks `bytes=0-` and wants a 206 with Content-Range, even for the whole file
    start = api.get(f"/api/v1/transcripts/{call['id']}/audio", headers=headers | {"Range": "bytes=0-"})
    assert start.status_code == 206 and start.content == LEAK
    assert start.headers["content-range"] == f"bytes 0-{len(LEAK) - 1}/{len(LEAK)}"
    wait_until_done(engine, speech_settings_, [uuid.UUID(call["id"])])


def test_a_cold_home_call_opens_a_draft_work_order(world: World, session: Session, engine: Engine,
                                                   speech_settings_: Settings) -> None:
    from speech import jobs
    from speech.engines import Segment
    from speech.pipeline import Transcript as Result

    class Scripted:
        """Stands in for the model: this test is about what happens after transcription."""

        def run(self, audio: object) -> Result:
            return Result(engine="faster-whisper", model="scripted", language="zh", duration=7.2, segments=[
                Segment(start=0, end=7.2, text="我家暖气不热，室内温度达不到标准。", avg_logprob=-0.2,
                        no_speech_prob=0.01)])

    settings = speech_settings_.model_copy(update={"speech_queue": "off"})  # this test runs the job itself
    with TestClient(create_app(settings, engine=engine)) as api:
        headers = world.headers(world.supervisor)
        call = post_call(api, headers, LEAK, household_id=str(world.household_a.id)).json()
        call_id = uuid.UUID(call["id"])
        assert jobs.claim(engine, call_id)
        assert jobs.run(engine, settings, call_id, pipeline=Scripted()) == TranscriptState.transcribed
        t = api.get(f"/api/v1/transcripts/{call_id}", headers=headers).json()
        steward = api.get(f"/api/v1/transcripts/{call_id}", headers=world.headers(world.steward_a)).json()
    assert t["categories"][0] == "not_warm"
    order = session.get(WorkOrder, uuid.UUID(t["draft_work_order_id"]))
    assert order is not None and order.household_id == world.household_a.id
    assert (order.category.value, order.status.value, order.source.value) == ("not_warm", "new", "hotline")
    assert order.description.startswith("[来电转写草稿]") and order.caller_phone == "13800138000"
    assert steward["caller_phone"] == "138****8000"


def _audio_url(session: Session, world: World, settings: Settings) -> str:
    """The audio route of a transcript (steward_a's grid) whose recording, VALVE, is stored."""
    from speech.storage import store_audio

    transcript = make_transcript(session, world.steward_a, "暖气不热", household_id=world.household_a.id)
    note = session.get(Note, transcript.id)
    assert note is not None
    note.audio_sha256 = store_audio(settings, VALVE)
    session.commit()
    return f"/api/v1/transcripts/{transcript.id}/audio"


def test_a_bad_range_on_the_audio_never_gets_a_plain_text_answer(api: TestClient, world: World, session: Session,
                                                                  speech_settings_: Settings) -> None:
    """Regression (found by the fuzz tests): a malformed `Range` got Starlette's plain-text 400; now it is
    ignored (the whole file, as RFC 9110 allows), and an unsatisfiable one is a 416 in the one error shape."""
    from tests.utils.asserts import assert_error

    url, headers = _audio_url(session, world, speech_settings_), world.headers(world.supervisor)
    for malformed in ("", "bytes", "bytes=x-y", "items=0-1", "bytes=0-1,4-5"):
        whole = api.get(url, headers=headers | {"Range": malformed})
        assert whole.status_code == 200 and whole.content == VALVE, malformed
        assert whole.headers["content-type"] == "audio/wav"
    beyond = api.get(url, headers=headers | {"Range": f"bytes={len(VALVE)}-"})
    assert_error(beyond, 416, "range_not_satisfiable")
    assert beyond.headers["content-range"] == f"bytes */{len(VALVE)}"


def test_the_audio_has_an_entity_tag_and_honours_if_range(api: TestClient, world: World, session: Session,
                                                          speech_settings_: Settings) -> None:
    """Regression: the recording had no ETag and `If-Range` was ignored: a player resuming a download made
    before the audio changed hands got a 206 of other bytes. A matching tag resumes; any other gets all."""
    url, headers = _audio_url(session, world, speech_settings_), world.headers(world.supervisor)
    tag = api.get(url, headers=headers).headers["etag"]
    assert tag == f'"{hashlib.sha256(VALVE).hexdigest()}"'
    resumed = api.get(url, headers=headers | {"Range": "bytes=100-199", "If-Range": tag})
    assert resumed.status_code == 206 and resumed.content == VALVE[100:200]
    for validator in ('"other"', f"W/{tag}", "Sat, 05 Dec 2026 05:00:00 GMT"):
        whole = api.get(url, headers=headers | {"Range": "bytes=100-199", "If-Range": validator})
        assert whole.status_code == 200 and whole.content == VALVE, validator


def test_head_on_a_recording_answers_like_get_without_a_body(api: TestClient, world: World, session: Session,
                                                            speech_settings_: Settings) -> None:
    """Regression: HEAD answered 405, so players and download tools that ask for the size first were refused."""
    url, headers = _audio_url(session, world, speech_settings_), world.headers(world.steward_a)
    for extra in ({}, {"Range": "bytes=100-199"}):
        got, head = api.get(url, headers=headers | extra), api.head(url, headers=headers | extra)
        assert head.status_code == got.status_code and head.status_code in (200, 206), extra
        assert head.content == b""
        for name in ("content-type", "content-length", "accept-ranges", "content-disposition"):
            assert head.headers[name] == got.headers[name], (name, extra)
    assert api.head(url, headers=headers | {"Range": "bytes=100-199"}).headers["content-range"] == (
        f"bytes 100-199/{len(VALVE)}")
    assert api.head(url, headers=headers | {"Range": f"bytes={len(VALVE)}-"}).status_code == 416
    other = world.headers(world.steward_b)  # outside their grid: the same 404 as GET
    assert api.head(url, headers=other).status_code == api.get(url, headers=other).status_code == 404


def test_with_the_s3_store_a_call_is_stored_transcribed_and_served_from_the_bucket(
        world: World, engine: Engine, speech_settings_: Settings) -> None:
    """STEWARD_BLOB_STORE=s3: the recording goes to the bucket, the worker decodes a temporary download of it
    (removed afterwards), and the audio route reads ranges from the bucket."""
    import hashlib

    from tests.utils.s3 import PREFIX, S3_SETTINGS, bucket_keys, mock_bucket

    settings = speech_settings_.model_copy(update=S3_SETTINGS)
    headers = world.headers(world.supervisor)
    with mock_bucket() as s3:
        clear_procrastinate(engine)
        with TestClient(create_app(settings, engine=engine), raise_server_exceptions=False) as api:
            r = post_call(api, headers, VALVE, household_id=str(world.household_a.id))
            assert r.status_code == 202, r.text
            assert bucket_keys(s3) == [PREFIX + hashlib.sha256(VALVE).hexdigest()]
            wait_until_done(engine, settings, [uuid.UUID(r.json()["id"])])
            t = api.get(f"/api/v1/transcripts/{r.json()['id']}", headers=headers).json()
            assert t["status"] == "transcribed" and "排气阀" in t["text"], t
            with Session(engine) as session:  # probed from the uploaded bytes, not from a local file
                note = session.get(Note, uuid.UUID(r.json()["id"]))
                assert note is not None and 7.0 < (note.duration_s or 0) < 9.0
            url = f"/api/v1/transcripts/{r.json()['id']}/audio"
            part = api.get(url, headers=headers | {"Range": "bytes=0-99"})
            assert part.status_code == 206 and part.content == VALVE[:100]
            assert part.headers["content-type"] == "audio/wav"
            assert api.get(url, headers=headers).content == VALVE
    assert [p for p in (settings.blob_dir or settings.data_dir).rglob("*") if p.is_file()] == []


def test_date_filters_at_the_ends_of_the_calendar_mean_no_bound(api: TestClient, world: World,
                                                                session: Session) -> None:
    """Regression: date_to=9999-12-31 was a 500 (the day after it overflows) and date_from=0001-01-01 a 422
    blaming NUL characters (its start is before year 1 in UTC): both simply leave that side open."""
    t = make_transcript(session, world.steward_a, "暖气不热", household_id=world.household_a.id)
    headers = world.headers(world.supervisor)
    for params in ({"date_to": "9999-12-31"}, {"date_from": "0001-01-01"},
                   {"date_from": "0001-01-01", "date_to": "9999-12-31"}, {"date_to": "9999-12-30"}):
        r = api.get("/api/v1/transcripts", headers=headers, params=params)
        assert r.status_code == 200, (params, r.text)
        assert [row["id"] for row in r.json()["data"]] == [str(t.id)], params
    assert api.get("/api/v1/transcripts", headers=headers, params={"date_from": "9999-12-31"}).json()["count"] == 0


@pytest.mark.parametrize("q", ["漏水\x00了", "漏\x00", "\x00", "漏水\n了", "漏\x7f"])
def test_a_query_with_control_characters_is_refused_on_both_backends(api: TestClient, world: World,
                                                                     session: Session, q: str) -> None:
    """Regression: NUL in a query of three characters or more was a 500 from SQLite's FTS5 (PostgreSQL cannot
    bind it either); control characters are never in a transcript, so the query is refused."""
    make_transcript(session, world.steward_a, "暖气漏水了", household_id=world.household_a.id)
    r = api.get("/api/v1/transcripts", headers=world.headers(world.supervisor), params={"q": q})
    assert_error(r, 422, "invalid_query")
    r = api.get("/api/v1/transcripts", headers=world.headers(world.supervisor), params={"q": "  漏水了\n"})
    assert r.status_code == 200 and r.json()["count"] == 1  # surrounding white space is trimmed, as before


@pytest.mark.parametrize("metadata", ["[" * 100_000, '{"a":' * 100_000])
def test_deeply_nested_call_metadata_is_invalid_metadata(api: TestClient, world: World, metadata: str) -> None:
    """Regression: json.loads raises RecursionError (not ValueError) on deep nesting, which was a 500."""
    r = api.post("/api/v1/calls", headers=world.headers(world.supervisor),
                 files={"audio": ("c.wav", LEAK, "audio/wav")}, data={"metadata": metadata})
    assert_error(r, 422, "invalid_metadata")


def test_a_start_time_with_no_utc_equivalent_is_invalid_metadata_and_stores_nothing(
        api: TestClient, world: World, session: Session, speech_settings_: Settings) -> None:
    """Regression: 9999-12-31T23:00-05:00 passed validation, the recording was stored, and the commit failed
    (a 422 that left the audio file behind); now it is refused before anything is stored."""
    r = post_call(api, world.headers(world.supervisor), LEAK, started_at="9999-12-31T23:00:00-05:00")
    assert_error(r, 422, "invalid_metadata")
    assert session.exec(select(func.count()).select_from(Note)).one() == 0
    root = Path(speech_settings_.blob_dir)  # type: ignore[arg-type]
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_a_number_split_between_segments_is_masked_in_segments_and_history(api: TestClient, world: World,
                                                                           session: Session) -> None:
    """Regression: each segment was masked alone, so a number that Whisper split between two segments was masked
    in the text but readable, whole, from the segments and from the edit history."""
    t = make_transcript(session, world.steward_a, "请回电138", "0013 8000。", household_id=world.household_a.id)
    supervisor, steward = world.headers(world.supervisor), world.headers(world.steward_a)
    for index, text in ((1, "0013 8001。"), (0, "请回电139")):  # revision 1, then revision 2
        r = api.patch(f"/api/v1/transcripts/{t.id}", headers=supervisor,
                      json={"segments": [{"index": index, "text": text}]})
        assert r.status_code == 200, r.text
    body = api.get(f"/api/v1/transcripts/{t.id}", headers=steward).json()
    assert body["text"] == "请回电139**** 8001。"
    assert [s["text"] for s in body["segments"]] == ["请回电139", "**** 8001。"]
    history = api.get(f"/api/v1/transcripts/{t.id}/revisions", headers=steward).json()
    assert [h["changes"] for h in history] == [
        [{"index": 1, "before": "**** 8000。", "after": "**** 8001。"}],
        [{"index": 0, "before": "请回电138", "after": "请回电139"}]]
    unmasked = api.get(f"/api/v1/transcripts/{t.id}/revisions", headers=supervisor).json()
    assert unmasked[0]["changes"] == [{"index": 1, "before": "0013 8000。", "after": "0013 8001。"}]
    assert [s["text"] for s in api.get(f"/api/v1/transcripts/{t.id}", headers=supervisor).json()["segments"]] == [
        "请回电139", "0013 8001。"]


def test_a_number_moved_between_segments_one_save_at_a_time_stays_masked_in_the_history(
        api: TestClient, world: World, session: Session) -> None:
    """Regression (review): each history entry was masked as the transcript read at that revision. A mobile split
    between two segments, moved into one segment one save at a time, read as no number in between, and the
    steward's history gave both halves back (138 in one entry, 0013 8000 in the next)."""
    t = make_transcript(session, world.steward_a, "请回电138", "0013 8000。", household_id=world.household_a.id)
    supervisor, steward = world.headers(world.supervisor), world.headers(world.steward_a)
    for index, text in ((0, "请回电"), (1, "138 0013 8000。")):
        r = api.patch(f"/api/v1/transcripts/{t.id}", headers=supervisor,
                      json={"segments": [{"index": index, "text": text}]})
        assert r.status_code == 200, r.text
    assert api.get(f"/api/v1/transcripts/{t.id}", headers=steward).json()["text"] == "请回电138 **** 8000。"
    history = api.get(f"/api/v1/transcripts/{t.id}/revisions", headers=steward).json()
    assert [h["changes"] for h in history] == [
        [{"index": 0, "before": "请回电138", "after": "请回电"}],
        [{"index": 1, "before": "**** 8000。", "after": "138 **** 8000。"}]]
    assert "0013" not in str(history)
    unmasked = api.get(f"/api/v1/transcripts/{t.id}/revisions", headers=supervisor).json()
    assert unmasked[1]["changes"][0]["before"] == "0013 8000。"


def test_a_correction_that_breaks_a_numbers_shape_keeps_its_hidden_digits_hidden(
        api: TestClient, world: World, session: Session) -> None:
    """Regression (review): the history hid what any version hid, but GET, the list, the note's synced copy and
    the search did not: a correction dropping one digit of 13800138000 no longer read as a mobile, and the
    steward read (and found by search) the middle digits every earlier version had hidden."""
    t = make_transcript(session, world.steward_a, "请回电13800138000", "谢谢", household_id=world.household_a.id)
    supervisor, steward = world.headers(world.supervisor), world.headers(world.steward_a)
    url = f"/api/v1/transcripts/{t.id}"
    r = api.patch(url, headers=supervisor, json={"segments": [{"index": 0, "text": "请回电1380013800"}]})
    assert r.status_code == 200, r.text
    r = api.patch(url, headers=supervisor, json={"segments": [{"index": 1, "text": "谢谢您"}]})  # and later on
    assert r.status_code == 200, r.text
    body = api.get(url, headers=steward).json()
    assert body["segments"][0]["text"] == "请回电138****800" and body["text"] == "请回电138****800谢谢您"
    listed = api.get("/api/v1/transcripts", headers=steward).json()["data"]
    assert [row["text"] for row in listed if row["id"] == str(t.id)] == [body["text"]]
    assert api.get(f"/api/v1/notes/{t.id}", headers=steward).json()["transcript_text"] == body["text"]
    assert api.get("/api/v1/transcripts", headers=steward, params={"q": "0013"}).json()["count"] == 0
    assert api.get("/api/v1/transcripts", headers=supervisor, params={"q": "0013"}).json()["count"] == 1
    assert api.get(url, headers=supervisor).json()["text"] == "请回电1380013800谢谢您"  # the original is kept


def test_hidden_digits_stay_hidden_when_a_correction_takes_the_number_out_and_a_later_one_puts_it_back(
        api: TestClient, world: World, session: Session) -> None:
    """Regression (review): what earlier versions hid was read from the note's masked copy alone, so a version
    without the number forgot it; typed back by the next correction (a broken shape, no longer a mobile), its
    middle digits were shown to stewards in the text, the segments, the synced copy and found by search."""
    t = make_transcript(session, world.steward_a, "请回电13800138000", "谢谢", household_id=world.household_a.id)
    supervisor, steward = world.headers(world.supervisor), world.headers(world.steward_a)
    url = f"/api/v1/transcripts/{t.id}"
    for index, text in ((0, "请回电1380013800"), (0, "请回电"), (1, "1380013800谢谢")):
        r = api.patch(url, headers=supervisor, json={"segments": [{"index": index, "text": text}]})
        assert r.status_code == 200, r.text
    body = api.get(url, headers=steward).json()
    assert body["text"] == "请回电138****800谢谢" and body["segments"][1]["text"] == "138****800谢谢"
    assert api.get(f"/api/v1/notes/{t.id}", headers=steward).json()["transcript_text"] == body["text"]
    assert api.get("/api/v1/transcripts", headers=steward, params={"q": "0013"}).json()["count"] == 0


def test_a_number_split_between_segments_stays_hidden_when_taken_out_and_typed_back(
        api: TestClient, world: World, session: Session) -> None:
    """Regression (review): a version's hidden digits were read segment by segment, and a mobile Whisper split
    (13800 + 138000) hides pieces of under three digits in each, which named nothing: taken out by one correction
    and typed back by the next (a digit dropped), its middle digits were shown to stewards."""
    t = make_transcript(session, world.steward_a, "请回电13800", "138000谢谢", household_id=world.household_a.id)
    supervisor, steward = world.headers(world.supervisor), world.headers(world.steward_a)
    url = f"/api/v1/transcripts/{t.id}"
    for segments in ([{"index": 0, "text": "请回电"}, {"index": 1, "text": "谢谢"}],
                     [{"index": 1, "text": "1380013800谢谢"}]):
        r = api.patch(url, headers=supervisor, json={"segments": segments})
        assert r.status_code == 200, r.text
    body = api.get(url, headers=steward).json()
    assert body["text"] == "请回电138****800谢谢"
    assert api.get(f"/api/v1/notes/{t.id}", headers=steward).json()["transcript_text"] == body["text"]
    assert api.get("/api/v1/transcripts", headers=steward, params={"q": "0013"}).json()["count"] == 0


def test_hidden_digits_split_between_two_segments_stay_hidden_in_the_segments_and_history(
        api: TestClient, world: World, session: Session) -> None:
    """Regression (review): a mobile Whisper split between two segments, then corrected so that it no longer
    reads as one (a digit dropped): the text kept its hidden digits hidden, but the segments, masked one by one,
    held neither half of the run and gave 0013 back to a steward."""
    t = make_transcript(session, world.steward_a, "请回电1380", "0138000。", household_id=world.household_a.id)
    supervisor, steward = world.headers(world.supervisor), world.headers(world.steward_a)
    url = f"/api/v1/transcripts/{t.id}"
    r = api.patch(url, headers=supervisor, json={"segments": [{"index": 1, "text": "013800。"}]})
    assert r.status_code == 200, r.text
    body = api.get(url, headers=steward).json()
    assert body["text"] == "请回电138****800。"
    assert [s["text"] for s in body["segments"]] == ["请回电138*", "***800。"]
    history = api.get(f"{url}/revisions", headers=steward).json()
    shown = [c[side] for row in history for c in row["changes"] for side in ("before", "after")]
    assert shown and not any("0013" in text or "013800" in text for text in shown), shown
    assert [s["text"] for s in api.get(url, headers=supervisor).json()["segments"]] == ["请回电1380", "013800。"]


def test_a_number_running_into_the_next_segments_digits_is_masked_for_a_steward(api: TestClient, world: World,
                                                                                session: Session) -> None:
    """Regression: the text was masked as one string, where 13800138000 then 3号楼 read as a 12-digit run that
    no rule matches; the steward read the number in the text, and a search for it found the transcript."""
    t = make_transcript(session, world.steward_a, "请回电13800138000", "3号楼漏水", household_id=world.household_a.id)
    supervisor, steward = world.headers(world.supervisor), world.headers(world.steward_a)
    r = api.patch(f"/api/v1/transcripts/{t.id}", headers=supervisor,  # the correction rewrites the masked copy
                  json={"segments": [{"index": 1, "text": "3号楼2单元漏水"}]})
    assert r.status_code == 200, r.text
    body = api.get(f"/api/v1/transcripts/{t.id}", headers=steward).json()
    assert body["text"] == "请回电138****80003号楼2单元漏水"
    assert [s["text"] for s in body["segments"]] == ["请回电138****8000", "3号楼2单元漏水"]
    listed = api.get("/api/v1/transcripts", headers=steward).json()["data"]
    assert [row["text"] for row in listed if row["id"] == str(t.id)] == [body["text"]]
    assert api.get("/api/v1/transcripts", headers=steward, params={"q": "1380013"}).json()["count"] == 0
    assert api.get("/api/v1/transcripts", headers=supervisor, params={"q": "1380013"}).json()["count"] == 1


@pytest.mark.parametrize("via", ["api", "patch"])  # text written by the test helper, or by a correction
def test_search_cannot_reveal_masked_digits_to_a_steward(api: TestClient, world: World, session: Session,
                                                         via: str) -> None:
    """Regression: search ran over the unmasked text, so a steward who reads 回电138****8000 could query
    回电1380, 回电1381... and learn each hidden digit from the count. Without view_pii, a query must also
    match the masked text; count and paging stay those of the matching rows."""
    supervisor, steward = world.headers(world.supervisor), world.headers(world.steward_a)
    numbered = [make_transcript(session, world.steward_a, "请回电13800138000。", household_id=world.household_a.id,
                                recorded_at=utcnow() - timedelta(minutes=i)) for i in range(3)]
    plain = make_transcript(session, world.steward_a, "请回电，暖气不热。", household_id=world.household_a.id)
    if via == "patch":  # a correction rewrites the masked copy too
        for t in numbered:
            r = api.patch(f"/api/v1/transcripts/{t.id}", headers=supervisor,
                          json={"segments": [{"index": 0, "text": "请回电13900139000。"}]})
            assert r.status_code == 200, r.text
    number = "13800138000" if via == "api" else "13900139000"

    def found(headers: dict[str, str], q: str, **paging: int) -> tuple[int, list[str]]:
        body = api.get("/api/v1/transcripts", headers=headers, params={"q": q, **paging}).json()
        return body["count"], [row["id"] for row in body["data"]]

    for guess in "0123456789":  # trigram index (SQLite) and ILIKE (PostgreSQL) alike
        assert found(steward, f"回电{number[:3]}{guess}")[0] == 0, guess
        assert found(steward, f"{number[:3]}{guess}")[0] == 0, guess
    assert found(steward, number)[0] == 0
    assert found(supervisor, number)[0] == 3  # view_pii: the whole text
    ids = [str(t.id) for t in numbered]
    assert found(steward, f"回电{number[:3]}") == (3, ids)  # what the steward can read is still found
    assert found(steward, number[-4:], limit=2) == (3, ids[:2])
    assert found(steward, number[-4:], limit=2, offset=2) == (3, ids[2:])
    assert found(steward, "回电") == (4, [str(plain.id), *ids])  # two characters: the scan path


@pytest.mark.parametrize("category", ["%", "_%", "l__k", "%a%", "lea_", "\\", "LEAK", "Leak", "leak,other"])
def test_the_category_filter_takes_a_category_name_only(api: TestClient, world: World, session: Session,
                                                        category: str) -> None:
    """Regression: the category went into LIKE unescaped, so `%` and `_` matched every transcript; and LIKE
    ignores ASCII case on SQLite, not on PostgreSQL, so `LEAK` found the leaks on one backend only. A name the
    tags cannot hold is refused, naming the ones they can."""
    make_transcript(session, world.steward_a, "暖气漏水了", categories=("leak",), household_id=world.household_a.id)
    headers = world.headers(world.supervisor)
    r = api.get("/api/v1/transcripts", headers=headers, params={"category": category})
    detail = assert_error(r, 422, "invalid_category")
    assert "leak, noise, not_warm, other" in detail["message"]
    assert api.get("/api/v1/transcripts", headers=headers, params={"category": "leak"}).json()["count"] == 1
    assert api.get("/api/v1/transcripts", headers=headers, params={"category": "other"}).json()["count"] == 0


def test_a_failed_transcript_can_be_queued_again_by_a_supervisor(api: TestClient, world: World,
                                                                  session: Session) -> None:
    """A failure is not final for the office: once the cause is fixed (the model, a setting, the audio), a
    supervisor queues the recording again with a fresh count of attempts."""
    t = make_transcript(session, world.steward_a, status=TranscriptState.failed, household_id=world.household_a.id)
    t.sqlmodel_update({"attempts": 3, "failure_reason": "gave up after 3 attempts: RuntimeError: no model"})
    session.commit()
    assert_error(api.post(f"/api/v1/transcripts/{t.id}/retry", headers=world.headers(world.steward_a)), 403,
                 "role_required")
    r = api.post(f"/api/v1/transcripts/{t.id}/retry", headers=world.headers(world.supervisor))
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["attempts"], r.json()["failure_reason"]) == ("queued", 0, None)
    session.expire_all()
    note = session.get(Note, t.id)
    # Queued, and the app's embedded worker may have taken it at once: this test stores no audio, so the worker
    # then sets it waiting for the upload and the note back to `none` (regression: CI saw that race).
    assert note is not None
    assert note.transcript_status in (TranscriptStatus.pending, TranscriptStatus.running, TranscriptStatus.none)
    session.refresh(t)
    assert t.status in (TranscriptState.queued, TranscriptState.running, TranscriptState.waiting_audio)
    again = api.post(f"/api/v1/transcripts/{t.id}/retry", headers=world.headers(world.supervisor))
    assert_error(again, 409, "invalid_transition")


def test_an_edit_naming_a_segment_twice_is_refused(api: TestClient, world: World, session: Session) -> None:
    """Regression: two edits of segment 0 that cancel out were accepted and recorded as revision 1."""
    t = make_transcript(session, world.steward_a, "原文", "第二段", household_id=world.household_a.id)
    headers = world.headers(world.supervisor)
    edits = [{"index": 0, "text": "改"}, {"index": 1, "text": "改"}, {"index": 0, "text": "原文"}]
    r = api.patch(f"/api/v1/transcripts/{t.id}", headers=headers, json={"segments": edits})
    assert_error(r, 422, "duplicate_segment")
    body = api.get(f"/api/v1/transcripts/{t.id}", headers=headers).json()
    assert (body["revision"], body["text"]) == (0, "原文第二段")
    assert api.get(f"/api/v1/transcripts/{t.id}/revisions", headers=headers).json() == []


@pytest.mark.parametrize(("head", "expected"), [
    (b"RIFF\x00\x00\x00\x00WAVE", ("audio/wav", ".wav")), (b"ID3\x04\x00", ("audio/mpeg", ".mp3")),
    (b"\x00\x00\x00\x20ftypM4A ", ("audio/mp4", ".m4a")), (b"OggS\x00\x02", ("audio/ogg", ".ogg")),
    # Regression: an MP3 without an ID3 tag (a bare MPEG frame) and raw AAC (ADTS) were served untyped.
    (b"\xff\xfb\x90\x64\x00", ("audio/mpeg", ".mp3")), (b"\xff\xf1\x50\x80\x02", ("audio/aac", ".aac")),
    (b"hello world!", ("application/octet-stream", "")), (b"", ("application/octet-stream", "")),
])
def test_the_audio_type_is_read_from_the_first_bytes(head: bytes, expected: tuple[str, str]) -> None:
    from speech.views import _sniff

    assert _sniff(head) == expected


def test_a_callers_local_number_is_masked_for_stewards(api: TestClient, world: World, session: Session) -> None:
    """Regression: the caller number went through the text rules, so 88886666 (a local caller ID) and
    `+86 531 ...` were shown whole, with `"redacted": true`."""
    from api.notes.models import NoteKind
    from speech.models import Call

    for phone, masked in (("88886666", "****6666"), ("+86 531 8888 6666", "+86 5** **** 6666")):
        t = make_transcript(session, world.supervisor, "暖气不热", kind=NoteKind.call_recording,
                            household_id=world.household_a.id)
        session.add(Call(id=t.id, caller_phone=phone, agent="agent-07", started_at=utcnow(),
                         created_by_id=world.supervisor.id))
        session.commit()
        steward = api.get(f"/api/v1/transcripts/{t.id}", headers=world.headers(world.steward_a)).json()
        assert (steward["caller_phone"], steward["redacted"]) == (masked, True)
        office = api.get(f"/api/v1/transcripts/{t.id}", headers=world.headers(world.supervisor)).json()
        assert office["caller_phone"] == phone


def test_a_query_longer_than_the_consoles_limit_is_refused(api: TestClient, world: World, session: Session) -> None:
    """Regression: the console took at most 200 characters and the API any number (20,000 were scanned)."""
    make_transcript(session, world.steward_a, "暖气漏水了", household_id=world.household_a.id)
    headers = world.headers(world.supervisor)
    assert_error(api.get("/api/v1/transcripts", headers=headers, params={"q": "漏" * 201}), 422, "invalid_query")
    r = api.get("/api/v1/transcripts", headers=headers, params={"q": "漏" * 200})
    assert r.status_code == 200 and r.json()["count"] == 0
    assert api.get("/api/v1/transcripts", headers=headers, params={"q": f" {'漏水了':>200}"}).json()["count"] == 1


def test_a_correction_is_written_tagged_and_found_like_the_models_text(api: TestClient, world: World,
                                                                        session: Session) -> None:
    """Regression: a correction was stored as typed. From an IME in Traditional or full-width mode, 暖氣不熱
    was tagged `other` and ３号楼５０１室 was not found by a search for 501; and a query was used as typed, so
    暖氣 or ５０１ did not find the text the pipeline wrote in Simplified characters and ASCII digits."""
    t = make_transcript(session, world.steward_a, "三号楼五零一室", "回电13800138000",
                        household_id=world.household_a.id)
    supervisor, steward = world.headers(world.supervisor), world.headers(world.steward_a)
    r = api.patch(f"/api/v1/transcripts/{t.id}", headers=supervisor,
                  json={"segments": [{"index": 0, "text": "３号楼Ｂ座５０１室暖氣不熱，請儘快派人！"}]})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "3号楼B座501室暖气不热，请尽快派人！回电13800138000"
    assert r.json()["categories"] == ["not_warm"]
    history = api.get(f"/api/v1/transcripts/{t.id}/revisions", headers=supervisor).json()
    assert history[0]["changes"][0]["after"] == "3号楼B座501室暖气不热，请尽快派人！"
    for q in ("501室", "５０１", "暖气", "暖氣不熱", "ｂ座", "b座", "Ｂ座５０１"):  # short (scan) and long (index)
        for headers in (supervisor, steward):
            assert api.get("/api/v1/transcripts", headers=headers, params={"q": q}).json()["count"] == 1, q
    # A query is also looked for as typed: text stored before the change (or Cantonese, left Traditional).
    old = make_transcript(session, world.steward_a, "暖氣片漏水", household_id=world.household_a.id)
    for q, found in (("暖氣", {t.id, old.id}), ("暖氣片漏", {old.id})):  # scan and index
        hits = api.get("/api/v1/transcripts", headers=supervisor, params={"q": q}).json()
        assert {uuid.UUID(row["id"]) for row in hits["data"]} == found, q
    # Folding to ASCII did not open a way around the masking: the masked digits are still not found.
    assert api.get("/api/v1/transcripts", headers=steward, params={"q": "１３８００１３８０００"}).json()["count"] == 0


@pytest.mark.parametrize("meta", [{"houshold_id": "household"}, {"started_at": "2099-01-01T00:00:00+08:00"},
                                  {"started_at": "future"}, {"started_at": "1970-01-01T08:00:00+08:00"}])
def test_call_metadata_with_an_unknown_field_or_a_future_start_is_refused(
        api: TestClient, world: World, session: Session, meta: dict[str, str]) -> None:
    """Regression: a misspelt `houshold_id` was ignored (202, the call stored without its household), and a
    call could start decades ahead (it would head every newest-first list); as for visits and readings. A start
    in 1970 (a recorder whose clock was reset) is refused as well."""
    if meta.get("houshold_id"):
        meta = {"houshold_id": str(world.household_a.id)}
    if meta.get("started_at") == "future":  # past the tolerance for a wrong clock or zone
        meta = {"started_at": (utcnow() + timedelta(days=2)).isoformat()}
    detail = assert_error(post_call(api, world.headers(world.supervisor), LEAK, **meta), 422, "invalid_metadata")
    assert ("houshold_id" in detail["message"]) == ("houshold_id" in meta)
    assert session.exec(select(func.count()).select_from(Note)).one() == 0


def test_search_ignores_the_case_of_any_letter_on_both_backends(api: TestClient, world: World,
                                                                 session: Session) -> None:
    """Regression: SQLite's LIKE (short queries, and the masked copy every steward's query must also match)
    folds ASCII letters only, where PostgreSQL's ILIKE and SQLite's FTS5 index fold every letter: on SQLite
    `ｂ座` did not find `Ｂ座` (a text written before corrections were normalised), nor `CAFÉ` "Café"."""
    t = make_transcript(session, world.steward_a, "Ｂ座暖气不热，Café的ΣΊΓΜΑ", household_id=world.household_a.id)
    for q in ("ｂ座", "ｂ座暖气", "CAFÉ", "café的", "é的", "σίγμα"):  # scan and index
        for who in (world.supervisor, world.steward_a):
            hits = api.get("/api/v1/transcripts", params={"q": q}, headers=world.headers(who)).json()
            assert [row["id"] for row in hits["data"]] == [str(t.id)], (q, who.role.value)


@pytest.mark.parametrize("path", ["/api/v1/transcripts", "/api/v1/console/transcripts"])
def test_a_page_of_transcripts_costs_the_same_queries_whatever_its_length(
        client: TestClient, session: Session, engine: Engine, world: World, path: str) -> None:
    """Regression: each transcript of a list page read its note and its call on its own (a page of 500 cost
    1,003 queries). The page's notes and calls are read together; each still shows its own."""
    from sqlalchemy import event

    from speech.models import Call

    def queries_for(limit: int) -> tuple[int, list[dict[str, object]]]:
        seen: list[str] = []

        def record(*args: object) -> None:
            seen.append(str(args[2]))

        event.listen(engine, "before_cursor_execute", record)
        try:
            r = client.get(path, params={"limit": limit}, headers=world.headers(world.steward_a))
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert r.status_code == 200, r.text
        return len(seen), r.json()["data"]

    for i in range(12):
        t = make_transcript(session, world.steward_a, f"{i}号楼暖气不热", household_id=world.household_a.id)
        if i % 2:
            session.add(Call(id=t.id, caller_phone=f"1380013{i:04d}", agent=f"话务员{i}", started_at=utcnow()))
    session.commit()
    few, _ = queries_for(2)
    many, data = queries_for(12)
    assert many == few, (few, many)
    calls = [t for t in data if t["caller_phone"] is not None]
    assert len(data) == 12 and len(calls) == 6
    assert all(t["caller_phone"].startswith("138****") and t["agent"].startswith("话务员") for t in calls)


def test_an_id_number_ending_in_cha_and_a_landline_in_groups_are_masked_for_a_steward(
        api: TestClient, world: World, session: Session) -> None:
    """Regression: the text pipeline writes a spoken ID number's X as 叉 and a landline read out in groups as
    0531，8888，6666; neither matched a masking rule, so stewards read both whole (and found them by q)."""
    from speech.glossary import load_glossary
    from speech.pipeline import postprocess

    spoken = "身份证三七零一零二一九八五零七一五一二三叉，座机零五三一，八八八八，六六六六"
    text = postprocess(spoken, language="zh", glossary=load_glossary(None))
    assert text == "身份证37010219850715123叉，座机0531，8888，6666"
    t = make_transcript(session, world.steward_a, text + "。", household_id=world.household_a.id)
    steward, supervisor = world.headers(world.steward_a), world.headers(world.supervisor)
    shown = api.get(f"/api/v1/transcripts/{t.id}", headers=steward).json()
    assert shown["text"] == "身份证370102***********叉，座机0531，****，6666。" and shown["redacted"]
    for q in ("19850715", "8888"):
        assert api.get("/api/v1/transcripts", headers=steward, params={"q": q}).json()["count"] == 0, q
        assert api.get("/api/v1/transcripts", headers=supervisor, params={"q": q}).json()["count"] == 1, q


@pytest.mark.parametrize("segment", [{"index": 0, "text": "暖气很热", "start": 1.0, "end": 9.0},
                                     {"index": True, "text": "暖气很热"}, {"index": "0", "text": "暖气很热"}])
def test_a_segment_edit_with_a_field_it_does_not_take_or_a_loose_index_is_refused(
        api: TestClient, world: World, session: Session, segment: dict[str, object]) -> None:
    """Regression (review): a segment's `start`/`end` were dropped and the PATCH answered 200 with the text
    saved; `"index": true` edited segment 1."""
    t = make_transcript(session, world.steward_a, "暖气不热", "请尽快来", household_id=world.household_a.id)
    r = api.patch(f"/api/v1/transcripts/{t.id}", headers=world.headers(world.supervisor),
                  json={"segments": [segment]})
    assert_error(r, 422, "validation_error")
    got = api.get(f"/api/v1/transcripts/{t.id}", headers=world.headers(world.supervisor)).json()
    assert [s["text"] for s in got["segments"]] == ["暖气不热", "请尽快来"] and got["revision"] == 0


@pytest.mark.parametrize("base", [True, "1", 1.0])
def test_a_loose_base_revision_is_refused(api: TestClient, world: World, session: Session, base: object) -> None:
    """Regression (review): `"base_revision": true` read as revision 1, so a console that sent a flag
    instead of the revision it showed still edited (or approved) the text someone had changed since."""
    t = make_transcript(session, world.steward_a, "暖气不热", "请尽快来", household_id=world.household_a.id)
    h = world.headers(world.supervisor)
    assert api.patch(f"/api/v1/transcripts/{t.id}", headers=h,
                     json={"segments": [{"index": 0, "text": "暖气不热了"}]}).json()["revision"] == 1
    r = api.patch(f"/api/v1/transcripts/{t.id}", headers=h,
                  json={"segments": [{"index": 1, "text": "明天来"}], "base_revision": base})
    assert_error(r, 422, "validation_error")
    assert_error(api.post(f"/api/v1/transcripts/{t.id}/approve", headers=h, json={"base_revision": base}),
                 422, "validation_error")
    got = api.get(f"/api/v1/transcripts/{t.id}", headers=h).json()
    assert [s["text"] for s in got["segments"]] == ["暖气不热了", "请尽快来"]
    assert (got["revision"], got["status"]) == (1, "transcribed")


def test_a_call_with_a_form_field_beside_the_metadata_or_two_recordings_is_refused(
        api: TestClient, world: World, session: Session) -> None:
    """Regression (review): `household_id` sent as its own form field was ignored (202, the call stored
    without its household), and of two `audio` parts the last one was kept without a word."""
    h = world.headers(world.admin)
    meta = json.dumps({"caller_phone": "13800138000", "started_at": "2026-11-29T08:00:00+08:00", "agent": "a-7"})
    beside = api.post("/api/v1/calls", headers=h, files={"audio": ("c.wav", LEAK, "audio/wav")},
                      data={"metadata": meta, "household_id": str(world.household_a.id)})
    assert "'household_id'" in assert_error(beside, 422, "invalid_metadata")["message"]
    twice = api.post("/api/v1/calls", headers=h, data={"metadata": meta},
                     files=[("audio", ("a.wav", VALVE, "audio/wav")), ("audio", ("b.wav", LEAK, "audio/wav"))])
    assert "'audio' more than once" in assert_error(twice, 422, "invalid_metadata")["message"]
    assert session.exec(select(func.count()).select_from(Note)).one() == 0
    assert post_call(api, h, LEAK, household_id=str(world.household_a.id)).status_code == 202
