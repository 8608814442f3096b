"""Concurrent writers: a transaction that commits late is never skipped, a push is never applied twice."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from api.db import utcnow
from api.fieldwork.models import Reading, Visit
from tests.sync.conftest import District
from tests.sync.device import Device
from tests.utils.asserts import someone_waits_for_a_lock

T0 = "2026-12-01T08:00:00+00:00"


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # reported by the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_transaction_that_commits_late_is_not_skipped(district: District, device: Callable[..., Device],
                                                        engine: Engine, backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("needs two writers at once, which SQLite does not allow")
    reader = device(district.steward1, "reader")
    reader.pull()
    # T1 writes a reading and stays open, like a slow request.
    slow = Session(engine, expire_on_commit=False)
    late = Reading(household_id=district.h1a.id, taken_at=utcnow(), temp_c=16.0)
    slow.add(late)
    slow.flush()
    # T2, a device's push, starts after T1 and would commit first in a design that numbers rows early.
    pusher = device(district.steward1, "pusher")
    visit = pusher.create("visits", household_id=str(district.h1a.id), arrived_at=T0)
    thread, out = _in_thread(pusher.push)
    thread.join(timeout=1.5)
    assert thread.is_alive(), "the push should wait for the open transaction's number to commit"
    # A pull in between sees neither, and its cursor must not move past T1's number.
    page = reader.pull_page()
    assert not page["changes"]["readings"]["upserts"] and not page["changes"]["visits"]["upserts"]
    slow.commit()
    slow.close()
    thread.join(timeout=30)
    assert not thread.is_alive() and "error" not in out, out
    reader.pull()
    assert str(late.id) in reader.rows["readings"]
    assert visit in reader.rows["visits"]
    with Session(engine) as s:
        pushed = s.get(Visit, uuid.UUID(visit))
        assert pushed is not None and late.seq < pushed.seq


def test_the_same_push_sent_twice_at_once_applies_once(district: District, device: Callable[..., Device],
                                                       engine: Engine) -> None:
    d = device(district.steward1)
    for n in range(20):
        d.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=10 + n)
    body = d.push_body()
    threads = [_in_thread(lambda: d.send(body)) for _ in range(2)]
    answers = []
    for thread, out in threads:
        thread.join(timeout=60)
        assert "error" not in out, out
        answers.append(out["value"])
    statuses = sorted({r["status"] for r in answer["results"]}.pop() for answer in answers)
    assert statuses == ["applied", "duplicate"]
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(Reading)).one() == 21


def test_two_devices_pushing_at_once_both_land_in_order(district: District, device: Callable[..., Device],
                                                        engine: Engine) -> None:
    one, two = device(district.steward1, "one"), device(district.steward1, "two")
    reader = device(district.supervisor, "reader")
    reader.pull()
    for n in range(30):
        one.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=10 + n % 20)
        two.create("readings", household_id=str(district.h1b.id), taken_at=T0, temp_c=10 + n % 20)
    runs = [_in_thread(one.push), _in_thread(two.push)]
    for thread, out in runs:
        thread.join(timeout=60)
        assert "error" not in out, out
    reader.pull(limit=7)
    assert len(reader.rows["readings"]) == 61


@pytest.mark.parametrize("rest_first", [True, False], ids=["rest-holds-the-row", "push-holds-the-sequence"])
def test_a_rest_move_and_a_push_of_the_same_order_at_once_both_answer(
        district: District, device: Callable[..., Device], client: Any, backend: str,
        monkeypatch: pytest.MonkeyPatch, rest_first: bool) -> None:
    """Regression: REST locked the order's row and then (at flush) the change sequence; a push takes the
    sequence first and then writes the row. At the same moment on PostgreSQL they deadlocked, and the REST
    request was killed (503 database_unavailable). REST now takes the sequence first too."""
    import time

    from api.work_orders import service
    from sync import rules

    if backend != "postgresql":
        pytest.skip("needs two writers at once, which SQLite does not allow")
    order = district.wo2  # in progress, assigned to steward2
    first = threading.Event()
    if rest_first:
        real_check = service._check_version

        def slow_check(o: Any, base: Any) -> None:  # REST holds its locks between its checks and its commit
            first.set()
            time.sleep(0.5)
            real_check(o, base)

        monkeypatch.setattr(service, "_check_version", slow_check)
    else:
        real_apply = rules.RULES["work_orders"].apply
        assert real_apply is not None

        def slow_apply(ctx: Any, row: Any, values: Any) -> None:  # the push holds the sequence while applying
            first.set()
            time.sleep(0.5)
            real_apply(ctx, row, values)

        monkeypatch.setitem(rules.RULES, "work_orders", dataclasses.replace(rules.RULES["work_orders"],
                                                                            apply=slow_apply))
    phone = device(district.steward2, "phone")
    body = phone.push_body([{"mutation_id": 1, "table": "work_orders", "op": "update", "id": str(order.id),
                             "base_version": order.version, "fields": {"status": "resolved"}}])

    def rest() -> Any:
        return client.post(f"/api/v1/work-orders/{order.id}/transitions", json={"status": "waiting_resident"},
                           headers=district.headers(district.supervisor))

    first_thread, first_out = _in_thread(rest if rest_first else (lambda: phone.send(body)))
    assert first.wait(10)
    second = phone.send(body) if rest_first else rest()
    first_thread.join(30)
    answer, push = (first_out["value"], second) if rest_first else (second, first_out["value"])
    assert answer.status_code in (200, 409), answer.text
    assert push["results"][0]["status"] in ("applied", "merged", "conflict", "rejected")
    assert push["results"][0].get("reason") not in ("constraint", "server_error"), push


def test_a_grid_change_while_the_steward_pushes_is_not_a_deadlock(
        district: District, device: Callable[..., Device], client: Any, engine: Engine, backend: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: set_grid locked the steward's row and then, at flush, the change sequence (grid rows are
    scope events); a push holding the sequence inserts readings whose foreign key to the steward waits on
    that row. On PostgreSQL they deadlocked and the admin got 503. The grid change takes the sequence first."""
    from sync import rules

    if backend != "postgresql":
        pytest.skip("needs two writers at once")
    push_has_seq = threading.Event()
    real_values = rules.RULES["readings"].create_values
    assert real_values is not None

    def values_while_the_admin_waits(ctx: Any, id: Any, fields: Any) -> Any:  # the push holds the sequence
        push_has_seq.set()
        assert someone_waits_for_a_lock(engine)  # the admin's request is blocked now
        return real_values(ctx, id, fields)

    phone = device(district.steward1, "phone")
    phone.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=17.0)
    phone.push()  # a handheld in use: its sync client row exists already
    phone.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=17.5)
    monkeypatch.setitem(rules.RULES, "readings",
                        dataclasses.replace(rules.RULES["readings"], create_values=values_while_the_admin_waits))
    thread, out = _in_thread(lambda: client.post("/api/v1/sync/push", json=phone.push_body(),
                                                 headers=district.headers(district.steward1)))
    assert push_has_seq.wait(10)
    grid = client.put(f"/api/v1/users/{district.steward1.id}/grid",
                      json={"building_ids": [str(district.b1.id), str(district.b2.id)]},
                      headers=district.headers(district.admin))
    thread.join(30)
    assert "error" not in out, out
    assert out["value"].status_code == 200, out["value"].text
    assert {r["status"] for r in out["value"].json()["results"]} == {"applied"}, out["value"].json()
    assert grid.status_code == 200, grid.text


def test_a_correction_while_the_owner_deletes_the_note_is_not_a_deadlock(
        district: District, device: Callable[..., Device], client: Any, engine: Engine, backend: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a transcript correction wrote the transcript's row and then, at flush, the change sequence
    (the note's masked text is synced); a push deleting the note holds the sequence and its delete cascades to
    the transcript's row. On PostgreSQL they deadlocked: the supervisor got 503, or the device's delete was
    rejected for good ("constraint"). The correction takes the sequence first; a push that still meets a
    deadlock answers 503 as a whole, so the device sends it again."""
    from speech import service as speech_service
    from speech.models import Transcript, TranscriptState

    if backend != "postgresql":
        pytest.skip("needs two writers at once")
    note_id = district.note1.id  # steward1's voice note
    with Session(engine) as s:
        transcript = s.get(Transcript, note_id)
        assert transcript is not None
        transcript.status, transcript.language, transcript.text = TranscriptState.transcribed, "zh", "暖气不热"
        transcript.segments = [{"start": 0.0, "end": 2.0, "text": "暖气不热", "avg_logprob": -0.2,
                                "no_speech_prob": 0.01}]
        s.add(transcript)
        s.commit()
    phone = device(district.steward1, "phone")
    phone.pull()
    phone.delete("notes", str(note_id))
    row_written = threading.Event()
    real_sync_note_text = speech_service._sync_note_text

    def after_the_row(session: Any, transcript: Any, *rest: Any) -> Any:  # the transcript's row is written here
        row_written.set()
        assert someone_waits_for_a_lock(engine)  # the push waits now
        return real_sync_note_text(session, transcript, *rest)

    monkeypatch.setattr(speech_service, "_sync_note_text", after_the_row)
    thread, out = _in_thread(lambda: client.patch(f"/api/v1/transcripts/{note_id}",
                                                  json={"segments": [{"index": 0, "text": "暖气漏水"}]},
                                                  headers=district.headers(district.supervisor)))
    assert row_written.wait(10)
    answer = client.post("/api/v1/sync/push", json=phone.push_body(), headers=district.headers(district.steward1))
    thread.join(30)
    assert "error" not in out, out
    assert out["value"].status_code == 200, out["value"].text
    assert answer.status_code == 200, answer.text
    # The correction committed first and changed the note's text: the delete wins over it (logged as such).
    assert [(r["status"], r["reason"]) for r in answer.json()["results"]] == [("conflict", "delete_wins")]
    with Session(engine) as s:
        assert s.get(Transcript, note_id) is None  # the delete cascaded after the correction committed
