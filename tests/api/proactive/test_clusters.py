"""Complaint clustering: a riser, building or station over its threshold opens exactly one proactive order."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from api.db import utcnow
from api.network.models import HeatingStatus, Household
from api.notes.models import Note, NoteKind
from api.notices.sms import LoggingSender
from api.proactive import clusters, service
from api.proactive.models import ProactiveKind, ProactiveMember, ProactiveOrder
from api.settings import Settings
from api.work_orders.models import Category, Source, Status, WorkOrder
from speech.models import Transcript, TranscriptState
from tests.api.proactive.helpers import API
from tests.speech.service_helpers import make_transcript
from tests.utils.factories import World, make_household, make_note, make_work_order


def _proactive(session: Session) -> list[WorkOrder]:
    session.expire_all()
    return list(session.exec(select(WorkOrder).where(WorkOrder.source == Source.proactive)).all())


def _riser(session: Session, world: World, n: int, unit: str = "2") -> list[Household]:
    return [make_household(session, world.building_a, unit=unit, room=f"{unit}0{i}") for i in range(1, n + 1)]


def _transcribed(session: Session, world: World, household: Household, categories: str,
                 kind: NoteKind = NoteKind.call_recording) -> Note:
    """A hotline call at the household (or a steward's voice note there), transcribed and tagged (a note's
    transcript row follows the note)."""
    owner = world.supervisor if kind == NoteKind.call_recording else world.steward_a
    note = make_note(session, owner, kind=kind, household_id=household.id)
    transcript = session.get(Transcript, note.id) or Transcript(id=note.id)
    transcript.sqlmodel_update({"status": TranscriptState.transcribed, "text": "暖气不热", "categories": categories})
    session.add(transcript)
    session.commit()
    return note


def _run(client: TestClient, world: World) -> dict[str, int]:
    r = client.post(f"{API}/run", headers=world.headers(world.supervisor))
    assert r.status_code == 200, r.text
    body: dict[str, int] = r.json()
    return body


def test_a_riser_over_its_threshold_opens_exactly_one_order(client: TestClient, session: Session,
                                                             world: World) -> None:
    homes = _riser(session, world, 4)
    first = make_work_order(session, homes[0], category=Category.not_warm)
    make_work_order(session, homes[0], category=Category.air_lock)  # the same home again: still one household
    make_work_order(session, homes[1], category=Category.not_warm)
    assert _run(client, world)["clusters_opened"] == 0 and _proactive(session) == []
    third = make_work_order(session, homes[2], category=Category.leak)
    report = _run(client, world)
    assert report["clusters_opened"] == 1
    [order] = _proactive(session)
    assert order.status == Status.assigned and order.assignee_id == world.steward_a.id
    assert order.priority.value == "urgent"  # a leak among the complaints
    assert order.category == Category.not_warm and "2单元立管" in order.description
    assert "单元单元" not in order.description and "号楼号楼" not in order.description
    assert _run(client, world)["clusters_opened"] == 0 and len(_proactive(session)) == 1
    late = make_work_order(session, homes[3], category=Category.not_warm)
    assert _run(client, world)["members_linked"] == 1 and len(_proactive(session)) == 1
    r = client.get(f"{API}/orders", params={"open": True}, headers=world.headers(world.supervisor))
    [row] = r.json()["data"]
    assert row["kind"] == "riser" and row["work_order_id"] == str(order.id) and row["open"] is True
    assert set(row["member_work_order_ids"]) >= {str(first.id), str(third.id), str(late.id)}
    assert len(row["member_work_order_ids"]) == 5 and row["signal_count"] == 5
    # The steward it was given to sees it; a steward of another grid does not.
    assert client.get(f"{API}/orders/{row['id']}", headers=world.headers(world.steward_a)).status_code == 200
    assert client.get(f"{API}/orders/{row['id']}", headers=world.headers(world.steward_b)).status_code == 404


def test_tagged_call_transcripts_count_and_old_complaints_do_not_reopen(client: TestClient, session: Session,
                                                                         world: World) -> None:
    homes = _riser(session, world, 5, unit="3")
    make_work_order(session, homes[0], category=Category.not_warm)
    make_work_order(session, homes[1], category=Category.noise)
    note = _transcribed(session, world, homes[2], ",not_warm,leak,")
    _transcribed(session, world, homes[3], ",billing,")
    assert _run(client, world)["clusters_opened"] == 1
    [order] = _proactive(session)
    row = session.exec(select(ProactiveOrder)).one()
    members = session.exec(select(ProactiveMember).where(ProactiveMember.proactive_order_id == row.id)).all()
    assert {m.transcript_id for m in members} - {None} == {note.id}
    # Resolving the order frees the group; the complaints it already answered never count again.
    order.status = Status.cancelled
    session.add(order)
    session.commit()
    report = _run(client, world)
    assert report["closed"] == 1 and report["clusters_opened"] == 0
    for home in homes[2:5]:
        make_work_order(session, home, category=Category.not_warm)
    assert _run(client, world)["clusters_opened"] == 1 and len(_proactive(session)) == 2


def test_a_building_made_only_of_an_open_riser_adds_nothing_and_old_complaints_leave_the_window(
        client: TestClient, session: Session, world: World, settings: Settings) -> None:
    settings.proactive_cluster_building_threshold = 3
    homes = _riser(session, world, 3)
    for home in homes:
        make_work_order(session, home, category=Category.not_warm)
    assert _run(client, world)["clusters_opened"] == 1  # the riser; the building is the same three homes
    assert session.exec(select(ProactiveOrder.kind)).all() == [ProactiveKind.riser]
    other = _riser(session, world, 3, unit="5")
    for home in other:
        make_work_order(session, home, category=Category.not_warm,
                        created_at=utcnow() - timedelta(hours=settings.proactive_cluster_window_hours + 1))
    assert _run(client, world)["clusters_opened"] == 0  # outside the sliding window


def _two_at_once(engine: Engine, evaluate: Callable[[Session], object]) -> list[object]:
    """Run `evaluate` in two threads at once, each with its own session; what each returned (any exception
    fails the test)."""
    start = threading.Barrier(2)
    results: list[object] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with Session(engine, expire_on_commit=False) as s:
                start.wait()
                results.append(evaluate(s))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    return results


@pytest.mark.parametrize("attempt", range(3))
def test_two_concurrent_evaluations_open_one_order_on_postgresql(engine: Engine, session: Session, world: World,
                                                                  settings: Settings, attempt: int,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer; evaluations in one process take turns (service._sqlite_turn)")
    homes = _riser(session, world, 3)
    for home in homes:
        make_work_order(session, home, category=Category.not_warm)
    # Both evaluations decide to open the group before either writes: the constraint must settle it.
    both_decided = threading.Barrier(2, timeout=30)
    outcomes: list[object] = []
    real_open = clusters._open_group

    def racing_open(*args: object, **kw: object) -> object:
        both_decided.wait()
        row = real_open(*args, **kw)  # type: ignore[arg-type]
        outcomes.append(row)
        return row

    monkeypatch.setattr(clusters, "_open_group", racing_open)

    def evaluate(s: Session) -> object:
        assert len(clusters.signals(s, settings, utcnow())) == 3  # both read the group before either opens it
        return clusters.evaluate_clusters(session=s, settings=settings, now=utcnow())

    reports = _two_at_once(engine, evaluate)
    assert sorted(r[0] for r in reports) == [0, 1]  # type: ignore[index]
    assert len(outcomes) == 2 and sum(o is None for o in outcomes) == 1  # the loser hit the unique open_key
    assert len(_proactive(session)) == 1
    assert session.exec(select(func.count()).select_from(ProactiveMember)).one() == 3


def test_the_loser_of_a_race_opens_no_wider_group_of_the_same_households_on_postgresql(
        engine: Engine, session: Session, world: World, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): five complaints of one riser (riser threshold 3, building 5) open the riser's order
    only, one evaluation at a time. Two at once: the one that lost the riser's insert had read `covered` before
    the winner committed, went on to the building, the same five households, and opened a second order."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer; evaluations in one process take turns (service._sqlite_turn)")
    for home in _riser(session, world, 5):
        make_work_order(session, home, category=Category.not_warm)
    both_decided = threading.Barrier(2, timeout=30)
    real_open, first = clusters._open_group, set()

    def racing_open(*args: object, **kw: object) -> object:
        if threading.get_ident() not in first:  # the riser: both decide before either writes
            first.add(threading.get_ident())
            both_decided.wait()
        return real_open(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(clusters, "_open_group", racing_open)
    _two_at_once(engine, lambda s: clusters.evaluate_clusters(session=s, settings=settings, now=utcnow()))
    session.expire_all()
    assert [r.kind for r in session.exec(select(ProactiveOrder)).all()] == [ProactiveKind.riser]
    assert session.exec(select(func.count()).select_from(ProactiveMember)).one() == 5


def test_the_run_service_reports_what_it_did(session: Session, world: World, settings: Settings) -> None:
    homes = _riser(session, world, 3)
    for home in homes:
        make_work_order(session, home, category=Category.leak)
    report = service.run(session=session, settings=settings, sender=LoggingSender())
    assert report.clusters_opened == 1 and report.revisits_opened == 0 and report.deliveries_sent == 0


@pytest.mark.parametrize("draft_fields", [{"status": Status.cancelled}, {"category": Category.other}],
                         ids=["cancelled", "recategorised"])
def test_a_call_counts_only_through_its_work_order(client: TestClient, session: Session, world: World,
                                                   settings: Settings, draft_fields: dict[str, object]) -> None:
    """Regression: a hotline call whose draft order the office cancelled or re-categorised still counted
    by its own tags, so two real complaints and a dismissed call opened a riser order."""
    homes = _riser(session, world, 3)
    make_work_order(session, homes[0], category=Category.not_warm)
    make_work_order(session, homes[1], category=Category.not_warm)
    draft = make_work_order(session, homes[2], source=Source.hotline,
                            **({"category": Category.not_warm} | draft_fields))  # type: ignore[arg-type]
    note = _transcribed(session, world, homes[2], ",not_warm,")
    transcript = session.get(Transcript, note.id)
    assert transcript is not None
    transcript.draft_work_order_id = draft.id
    session.add(transcript)
    session.commit()
    assert [s.transcript_id for s in clusters.signals(session, settings, utcnow()) if s.transcript_id] == []
    assert _run(client, world)["clusters_opened"] == 0 and _proactive(session) == []


def test_a_reopened_order_holds_its_group_again(client: TestClient, session: Session, world: World) -> None:
    """Regression: resolving a proactive order released its group for good, so after the office reopened the
    order (resolved -> in progress) new complaints from the same riser opened a second proactive order next to
    it. The reopened order holds the group again and the new complaints are linked to it. (Six households in one
    building also reach the building threshold: complaints linked to an open riser order in the same run did
    not count as covered, and a building order opened next to it.)"""
    homes = _riser(session, world, 6, unit="4")
    for home in homes[:3]:
        make_work_order(session, home, category=Category.not_warm)
    assert _run(client, world)["clusters_opened"] == 1
    [order] = _proactive(session)
    order.status = Status.resolved
    session.add(order)
    session.commit()
    assert _run(client, world)["closed"] == 1
    order = session.get(WorkOrder, order.id)
    assert order is not None
    order.status = Status.in_progress  # the radiators went cold again
    session.add(order)
    session.commit()
    for home in homes[3:]:
        make_work_order(session, home, category=Category.not_warm)
    report = _run(client, world)
    assert (report["clusters_opened"], report["members_linked"]) == (0, 3)
    assert [o.id for o in _proactive(session)] == [order.id]
    row = session.exec(select(ProactiveOrder)).one()
    assert row.open_key == f"riser:{row.group_key}" and row.closed_at is None


def test_complaints_made_after_the_order_was_resolved_count_again(session: Session, world: World,
                                                                  settings: Settings) -> None:
    """Regression: a released group remembered when the evaluation noticed the order was finished, not when it
    was, and complaints made in between (still cold after the repair) were dropped for good."""
    t0 = utcnow() - timedelta(hours=3)
    homes = _riser(session, world, 3, unit="5")
    for i, home in enumerate(homes):
        make_work_order(session, home, category=Category.not_warm, created_at=t0 + timedelta(minutes=i))
    assert service.run(session=session, settings=settings, sender=LoggingSender(),
                       now=t0 + timedelta(minutes=5)).clusters_opened == 1
    [order] = _proactive(session)
    order.status, order.resolved_at = Status.resolved, t0 + timedelta(minutes=20)
    session.add(order)
    session.commit()
    for i, home in enumerate(homes):  # still cold
        make_work_order(session, home, category=Category.not_warm, created_at=t0 + timedelta(minutes=25 + i))
    report = service.run(session=session, settings=settings, sender=LoggingSender(), now=t0 + timedelta(minutes=30))
    assert (report.closed, report.clusters_opened) == (1, 1)
    assert len(_proactive(session)) == 2


def test_a_steward_sees_only_the_member_ids_of_their_scope(client: TestClient, session: Session, world: World,
                                                           settings: Settings) -> None:
    """Regression: a station's group spans grids, and the order listed every member's id to the steward it
    was given to, ids of other stewards' work orders included (404 for them anywhere else)."""
    tight = settings.model_copy(update={"proactive_cluster_riser_threshold": 2,
                                        "proactive_cluster_building_threshold": 2,
                                        "proactive_cluster_station_threshold": 3})
    second = make_household(session, world.building_a, unit="2", room="201")
    mine = [make_work_order(session, h, category=Category.leak) for h in (world.household_a, second)]
    theirs = make_work_order(session, world.household_b, category=Category.leak)
    service.run(session=session, settings=tight, sender=LoggingSender())
    body = client.get(f"{API}/orders", params={"kind": "station"}, headers=world.headers(world.steward_a)).json()
    [station] = body["data"]
    assert set(station["member_work_order_ids"]) == {str(o.id) for o in mine}
    assert station["signal_count"] == 3  # the group's size is not an id
    office = client.get(f"{API}/orders/{station['id']}", headers=world.headers(world.supervisor)).json()
    assert set(office["member_work_order_ids"]) == {str(o.id) for o in [*mine, theirs]}


def test_suspended_homes_not_warm_calls_do_not_count_their_leaks_do(client: TestClient, session: Session,
                                                                    world: World, settings: Settings) -> None:
    """Regression: 报停 (heating suspended) homes are cold on purpose; their "not warm" and air-lock calls and
    call transcripts made up riser clusters ("请整体排查") with one real complaint. A leak there still counts:
    it is what their filling notice asks them to report."""
    homes = _riser(session, world, 4)
    for home in homes[:3]:
        home.heating_status = HeatingStatus.suspended
        session.add(home)
    session.commit()
    make_work_order(session, homes[0], category=Category.not_warm)
    make_work_order(session, homes[1], category=Category.air_lock)
    _transcribed(session, world, homes[2], ",not_warm,air_lock,")
    make_work_order(session, homes[3], category=Category.not_warm)
    assert [s.household_id for s in clusters.signals(session, settings, utcnow())] == [homes[3].id]
    assert _run(client, world)["clusters_opened"] == 0 and _proactive(session) == []
    leak = make_work_order(session, homes[0], category=Category.leak)
    call = _transcribed(session, world, homes[1], ",not_warm,leak,")
    assert _run(client, world)["clusters_opened"] == 1
    row = session.exec(select(ProactiveOrder)).one()
    members = session.exec(select(ProactiveMember).where(ProactiveMember.proactive_order_id == row.id)).all()
    assert {m.work_order_id or m.transcript_id for m in members} >= {leak.id, call.id}
    assert {m.household_id for m in members} == {homes[0].id, homes[1].id, homes[3].id}


def test_a_stewards_voice_notes_are_no_complaint(client: TestClient, session: Session, world: World,
                                                 settings: Settings) -> None:
    """Regression (review): every tagged transcript at a household counted, whatever its note's kind, so a
    steward dictating visit notes at three homes of a riser ("已排气，暖气不热的问题解决了", tagged not_warm)
    opened a riser order as if three residents had called."""
    homes = _riser(session, world, 4)
    for home in homes[:3]:
        _transcribed(session, world, home, ",not_warm,air_lock,", kind=NoteKind.voice_note)
    call = _transcribed(session, world, homes[3], ",not_warm,")
    assert [s.transcript_id for s in clusters.signals(session, settings, utcnow())] == [call.id]
    assert _run(client, world)["clusters_opened"] == 0 and _proactive(session) == []



def _noise_calls(session: Session, world: World, homes: list[Household]) -> list[Transcript]:
    """A hotline call about banging pipes at each home (noise: no draft work order)."""
    return [make_transcript(session, world.supervisor, "暖气管子一直响", categories=("noise",),
                            kind=NoteKind.call_recording, household_id=home.id) for home in homes]


def _correct_to_a_leak(client: TestClient, world: World, call: Transcript) -> uuid.UUID:
    """The supervisor reviews the call: the pipes leak. The correction opens the call's draft work order."""
    r = client.patch(f"/api/v1/transcripts/{call.id}", json={"segments": [{"index": 0, "text": "暖气管子漏水了"}]},
                     headers=world.headers(world.supervisor))
    assert r.status_code == 200, r.text
    assert r.json()["draft_work_order_id"] is not None
    return uuid.UUID(r.json()["draft_work_order_id"])


def test_a_grouped_call_its_correction_gave_a_draft_is_not_linked_again(client: TestClient, session: Session,
                                                                         world: World, settings: Settings) -> None:
    """Regression (review): a call grouped into an open order, which a correction then gave a draft work
    order, counted only through that draft from then on, which the order had not grouped: the same complaint
    was linked a second time."""
    calls = _noise_calls(session, world, _riser(session, world, 3))
    assert _run(client, world)["clusters_opened"] == 1
    row = session.exec(select(ProactiveOrder)).one()
    draft = _correct_to_a_leak(client, world, calls[0])
    # one complaint: the draft with its call, made when the call was
    [signal] = [s for s in clusters.signals(session, settings, utcnow()) if s.work_order_id == draft]
    note = session.get(Note, calls[0].id)
    assert note is not None and (signal.transcript_id, signal.at) == (calls[0].id, note.recorded_at)
    assert _run(client, world)["members_linked"] == 0
    assert session.exec(select(func.count()).select_from(ProactiveMember)
                        .where(ProactiveMember.proactive_order_id == row.id)).one() == 3


def test_calls_a_finished_order_answered_do_not_open_another_once_corrected(client: TestClient, session: Session,
                                                                            world: World) -> None:
    """Regression (review): the calls a finished riser order had grouped, corrected later so that each got a
    draft work order dated now, counted again through those drafts (not grouped by any order, and newer than
    the group's closing): a second riser order opened for the same three complaints."""
    calls = _noise_calls(session, world, _riser(session, world, 3))
    assert _run(client, world)["clusters_opened"] == 1
    [order] = _proactive(session)
    order.status, order.resolved_at = Status.resolved, utcnow()  # the riser is repaired
    session.add(order)
    session.commit()
    assert _run(client, world)["closed"] == 1
    for call in calls:
        _correct_to_a_leak(client, world, call)
    assert _run(client, world)["clusters_opened"] == 0
    assert len(_proactive(session)) == 1
