"""Room records: one open room per work order, also when two requests open it at the same moment; the relay's
periodic access check."""

from __future__ import annotations

import uuid
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from api.db import utcnow
from api.errors import Unauthorized
from api.settings import Settings
from api.work_orders.models import WorkOrder
from tests.utils.factories import World, auth
from video import service
from video.models import CloseReason, RoomCreate, RoomState, VideoRoom


def _room(order: WorkOrder, state: RoomState = RoomState.open) -> VideoRoom:
    now = utcnow()
    return VideoRoom(work_order_id=order.id, state=state, created_at=now, expires_at=now + timedelta(hours=1),
                     close_reason=CloseReason.closed if state == RoomState.closed else None)


def test_the_database_holds_one_open_room_per_work_order(session: Session, order: WorkOrder) -> None:
    session.add_all([_room(order, RoomState.closed), _room(order, RoomState.closed), _room(order)])
    session.commit()  # closed rooms are history: as many as there were calls
    session.add(_room(order))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()


def test_a_room_opened_meanwhile_by_another_request_is_the_one_answered(
        session: Session, engine: Engine, world: World, order: WorkOrder, video_settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = service._open_room
    looks: list[int] = []

    def racing(s: Session, work_order_id: object) -> VideoRoom | None:
        looks.append(1)
        if len(looks) == 1:  # our look finds none; right after it, another request opens the room
            with Session(engine) as other:
                other.add(_room(order))
                other.commit()
            return None
        return real(s, work_order_id)  # type: ignore[arg-type]

    monkeypatch.setattr(service, "_open_room", racing)
    room, created = service.create_room(session=session, settings=video_settings, user=world.steward_a,
                                        data=RoomCreate(work_order_id=order.id), worker="w1")
    assert created is False and len(looks) == 2
    rooms = session.exec(select(VideoRoom).where(VideoRoom.work_order_id == order.id)).all()
    assert [r.id for r in rooms] == [room.id] and room.state == RoomState.open


def test_the_access_check_ends_closed_orders_calls_and_revokes_accounts_that_lost_access(
        session: Session, world: World, order: WorkOrder) -> None:
    """Regression: credentials were checked at connect only, so a disabled steward, a steward the order left
    (reassigned outside their grid) or a demoted supervisor stayed in the call; a cancelled order's call went on.
    The relay's periodic check answers for every call at once."""
    from api.users.models import Role as UserRole
    from api.work_orders.models import Status
    from tests.utils.factories import make_work_order
    from video.models import Role
    from video.relay import Seat

    cancelled = make_work_order(session, world.household_a, status=Status.cancelled, assignee=world.steward_a)
    elsewhere = make_work_order(session, world.household_b, status=Status.assigned, assignee=world.steward_b)
    disabled = world.steward_b
    disabled.active = False
    demoted = world.supervisor
    demoted.role = UserRole.steward
    session.add_all([disabled, demoted])
    session.commit()
    stays = {Seat(world.steward_a.id, order.id, Role.steward, 0), Seat(world.admin.id, order.id, Role.supervisor, 0),
             Seat(world.admin.id, elsewhere.id, Role.steward, 0)}
    leaves = {Seat(world.steward_a.id, elsewhere.id, Role.steward, 0),  # outside their grid, not theirs
              Seat(disabled.id, elsewhere.id, Role.steward, 0),
              Seat(demoted.id, order.id, Role.supervisor, 0), Seat(uuid.uuid4(), order.id, Role.steward, 0)}
    gone = uuid.uuid4()  # a work order deleted meanwhile
    verdict = service.audit_rooms(session=session, work_order_ids={order.id, cancelled.id, elsewhere.id, gone},
                                  seats=stays | leaves)
    assert verdict.revoked == leaves
    assert order.id not in verdict.closed_orders and elsewhere.id not in verdict.closed_orders
    assert verdict.closed_orders == {cancelled.id, gone}


def test_a_new_password_drops_the_seat_its_old_token_joined_with(session: Session, world: World,
                                                                 order: WorkOrder) -> None:
    """Regression (review): a password reset (a lost handheld) ends the old token everywhere at once, and the
    relay's periodic check let the handheld already in a call stay in it (it dropped disabled accounts only).
    A seat remembers the token epoch it joined with; a rejoin with the new password keeps its place."""
    from video.models import Role
    from video.relay import Seat

    before = Seat(world.steward_a.id, order.id, Role.steward, world.steward_a.token_epoch)
    assert service.audit_rooms(session=session, work_order_ids={order.id}, seats={before}).revoked == set()
    world.steward_a.token_epoch += 1  # a new password (`api.users.service.update_user`)
    session.add(world.steward_a)
    session.commit()
    after = Seat(world.steward_a.id, order.id, Role.steward, world.steward_a.token_epoch)
    verdict = service.audit_rooms(session=session, work_order_ids={order.id}, seats={before, after})
    assert verdict.revoked == {before}


def test_joining_takes_an_access_token_as_every_route_does(session: Session, settings: Settings, world: World,
                                                           order: WorkOrder) -> None:
    """Regression (review): the relay read access tokens on its own: a signed token whose `sub` is not an id
    answered 500, and a steward's token from before a password reset still joined calls."""
    room = _room(order)
    session.add(room)
    session.commit()
    bad = jwt.encode({"sub": "not-an-id", "role": "steward", "exp": utcnow() + timedelta(hours=1), "typ": "access"},
                     settings.secret_key, algorithm="HS256")
    token = auth(settings, world.steward_a)["Authorization"].removeprefix("Bearer ")
    admitted = service.admit(session=session, settings=settings, room_id=room.id, token=token, role=None)
    assert admitted.user_id == world.steward_a.id and admitted.epoch == world.steward_a.token_epoch
    world.steward_a.token_epoch += 1  # a new password (`api.users.service.update_user`)
    session.add(world.steward_a)
    session.commit()
    for credential, code in ((bad, "invalid_token"), (token, "token_revoked")):
        with pytest.raises(Unauthorized) as refused:
            service.admit(session=session, settings=settings, room_id=room.id, token=credential, role=None)
        assert refused.value.code == code


def test_a_crashed_calls_packets_stay_when_their_note_cannot_be_written(
        session: Session, engine: Engine, world: World, order: WorkOrder, video_settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): at start, a disk still full deleted a crashed call's packet file: `recover` answered
    a note it could not write as one with nothing that decodes. Now the file stays for the next start, which
    saves it."""
    from tests.video.test_recording import _speak, notes_cannot_be_written
    from video.recording import PacketRecorder

    room = _room(order, RoomState.closed)
    room.worker, room.created_by_id, room.close_reason = "w1", world.steward_a.id, CloseReason.lost
    session.add(room)
    session.commit()
    directory = service.recordings_dir(video_settings)
    directory.mkdir(parents=True)
    recorder = PacketRecorder(directory / f"{room.id}.ogg", keep_packets=True)
    _speak(tuple(put for _, put in (recorder.taps(), recorder.taps())), 1.0)
    assert recorder.stop() is not None
    (directory / f"{room.id}.ogg").unlink()  # killed before the mix-down: the packet file only
    notes_cannot_be_written(monkeypatch)
    crashed = service.left_by_a_crash(video_settings)
    assert crashed == [room.id]
    assert service.save_crashed_recordings(engine, video_settings, crashed, worker="w1") == []
    assert sorted(p.name for p in directory.iterdir()) == [f"{room.id}.webm"]
    monkeypatch.undo()  # space again: the next start
    crashed = service.left_by_a_crash(video_settings)
    notes = service.save_crashed_recordings(engine, video_settings, crashed, worker="w1")
    assert len(notes) == 1 and list(directory.iterdir()) == []
    session.refresh(room)
    assert room.recording_note_id == notes[0]
