"""Video rooms in the database: who may open, join, watch and close them; snapshots and recordings as
evidence on the work order. Media lives in `video.relay`; these functions are synchronous (routes run
them in a thread)."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Engine, case, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from api import access
from api.db import utcnow
from api.deps import Page, authenticate
from api.errors import Conflict, Forbidden, NotFound, Unauthorized
from api.notes.models import Note, NoteKind, TranscriptStatus
from api.settings import Settings
from api.users.models import Role as UserRole
from api.users.models import User
from api.work_orders import service as work_orders
from api.work_orders.models import OPEN_STATUSES, WorkOrder
from video import tokens
from video.blobs import put_blob
from video.models import CloseReason, Role, RoomCreate, RoomState, VideoRoom, VideoSnapshot
from video.recording import NoteNotWritten, Recording, recover
from video.relay import Seat, Verdict

log = logging.getLogger(__name__)

JOINING_ROLES = (UserRole.steward, UserRole.supervisor, UserRole.admin)  # accounts that may be in a call


def worker_name(settings: Settings) -> str:
    """This relay worker's name, for pinning rooms."""
    return settings.video_worker_id or f"{socket.gethostname()}:{settings.port}"


def sms_text(settings: Settings, join_url: str, expires_at: datetime) -> str:
    """The SMS a steward sends the resident (Chinese; local time)."""
    until = expires_at.astimezone(ZoneInfo(settings.timezone)).strftime("%H:%M")
    return (f"【供暖管家】您好，管家邀请您用手机视频查看暖气情况。请在{until}前用手机浏览器打开链接，"
            f"并允许使用摄像头和麦克风：{join_url} 如有疑问请拨打{settings.service_phone}。")


def _visible_rooms(user: User) -> ColumnElement[bool]:
    return col(VideoRoom.work_order_id).in_(select(WorkOrder.id).where(access.work_order_clause(user)))


def create_room(*, session: Session, settings: Settings, user: User, data: RoomCreate, worker: str,
                reserve: Callable[[], None] | None = None) -> tuple[VideoRoom, bool]:
    """Open a room for an open work order the user may see (stewards and the office); an open room of
    the order is reused. Returns the room and whether it is new. `reserve` raises when the relay cannot
    take a new room: it is called before a new row is written (a refused room left a closed row behind)."""
    order = work_orders.get(session=session, user=user, id=data.work_order_id)
    if order.status not in OPEN_STATUSES:
        raise Conflict(f"The work order is {order.status.value}; video calls are for open work orders.",
                       code="work_order_closed")
    existing = _open_room(session, order.id)
    if existing is not None and not close_if_abandoned(session, existing):
        if existing.worker != worker and existing.expires_at <= utcnow():
            # Past its end, its own relay is closing it (saving the recording): a fresh link to it would be
            # expired on arrival, and a new room cannot open beside it.
            raise Conflict("The work order's last call reached its time limit and is being closed; open a new "
                           "call in a moment.", code="room_closing", headers={"Retry-After": "30"})
        return existing, False
    if reserve is not None:
        reserve()
    now = utcnow()
    room = VideoRoom(work_order_id=order.id, created_by_id=user.id, worker=worker,
                     worker_url=settings.video_worker_url.rstrip("/"), created_at=now,
                     expires_at=now + timedelta(minutes=settings.video_room_max_minutes))
    session.add(room)
    try:
        session.commit()
    except IntegrityError:
        # Another request opened the order's room between our look and our insert (the partial unique
        # index allows one open room per order): everyone joins that one.
        session.rollback()
        existing = _open_room(session, order.id)
        if existing is None:
            raise
        return existing, False
    return room, True


# A room still open this long after its end was abandoned: its relay process is gone (the process that hosts
# a room closes it at `expires_at`, its reaper looking every second). Rooms pinned to a relay name that never
# comes back (a recreated container's new host name) otherwise blocked their work order for good.
ABANDONED_AFTER = timedelta(minutes=5)


def live_clause(now: datetime) -> ColumnElement[bool]:
    """A room still open and not abandoned (SQL): its call may be in progress. The database keeps an abandoned
    room `open` until a request about it closes it (`close_if_abandoned`)."""
    return (col(VideoRoom.state) == RoomState.open) & (col(VideoRoom.expires_at) > now - ABANDONED_AFTER)


def close_if_abandoned(session: Session, room: VideoRoom) -> bool:
    """Close an open room past its end by `ABANDONED_AFTER` as `lost`; whether it was."""
    if room.state != RoomState.open or room.expires_at > utcnow() - ABANDONED_AFTER:
        return False
    room.state, room.closed_at, room.close_reason = RoomState.closed, utcnow(), CloseReason.lost
    session.add(room)
    session.commit()
    return True


def _open_room(session: Session, work_order_id: uuid.UUID) -> VideoRoom | None:
    return session.exec(select(VideoRoom).where(VideoRoom.work_order_id == work_order_id,
                                                VideoRoom.state == RoomState.open)).first()


def get_room(*, session: Session, user: User, id: uuid.UUID) -> VideoRoom:
    """A room of a work order the user may see."""
    room = session.exec(select(VideoRoom).where(VideoRoom.id == id, _visible_rooms(user))).first()
    if room is None:
        raise NotFound(f"No video room with id {id} (or its work order is outside your grid).")
    close_if_abandoned(session, room)
    return room


@dataclass(frozen=True)
class Admission:
    """Who is joining a room, once their credential was checked."""

    room: VideoRoom
    role: Role
    user_id: uuid.UUID | None
    epoch: int = 0  # the account's token epoch the credential carried (a new password or a disable moves it)


def _order_open(session: Session, room: VideoRoom) -> None:
    """Refuse joining the call of a work order that was closed or cancelled (its call ends within seconds)."""
    order = session.get(WorkOrder, room.work_order_id)
    if order is None or order.status not in OPEN_STATUSES:
        status = order.status.value if order is not None else "gone"
        raise Conflict(f"The work order is {status}; its video call has ended.", code="work_order_closed")


def admit(*, session: Session, settings: Settings, room_id: uuid.UUID, token: str | None,
          role: Role | None, joining: bool = True) -> Admission:
    """Check the credential for joining a room: a join token makes the resident; an access token makes a
    steward (stewards and the office) or a watching supervisor (the office). Joining also needs the work
    order open and the join link unexpired (hanging up, `joining=False`, needs neither)."""
    if not token:
        raise Unauthorized("Send a join token or an access token as `Authorization: Bearer ...`.",
                           code="not_authenticated")
    if tokens.peek_type(settings=settings, token=token) == tokens.JOIN_TYPE:
        # Hanging up takes an expired link too: the link limits when a call can be joined, not how long it lasts.
        join = tokens.decode_join_token(settings=settings, token=token, room_id=room_id, expired_too=not joining)
        if role not in (None, Role.resident):
            raise Forbidden("A join link lets its holder in as the resident only.", code="role_not_allowed")
        room = session.get(VideoRoom, join.room_id)
        if room is None:
            raise NotFound("This video call no longer exists.", code="room_not_found")
        if joining:
            _order_open(session, room)
        return Admission(room=room, role=Role.resident, user_id=None)
    user = authenticate(session, settings, token, release=False)  # as every other route signs a user in
    room = get_room(session=session, user=user, id=room_id)
    office = access.is_office(user)
    role = role or (Role.supervisor if office else Role.steward)
    if role == Role.resident:
        raise Forbidden("Residents join with the link from their SMS, not with an account.",
                        code="role_not_allowed")
    if role == Role.supervisor and not office:
        raise Forbidden("Only supervisors and admins may watch calls.", code="role_not_allowed")
    if user.role not in JOINING_ROLES:
        raise Forbidden("This role may not join video calls.", code="role_not_allowed")
    if joining:
        _order_open(session, room)
    return Admission(room=room, role=role, user_id=user.id, epoch=user.token_epoch)


def join_room(*, session: Session, settings: Settings, token: str, expired_too: bool = False) -> VideoRoom:
    """The room a join token opens (for the resident page before it asks for the camera, and while it is in
    the call: then, `expired_too`, the link's expiry does not matter)."""
    claims = tokens.decode_join_token(settings=settings, token=token, expired_too=expired_too)
    room = session.get(VideoRoom, claims.room_id)
    if room is None:
        raise NotFound("This video call no longer exists.", code="room_not_found")
    close_if_abandoned(session, room)  # as every request about a room: the page in a call was sent to a dead relay
    _order_open(session, room)
    return room


def audit_rooms(*, session: Session, work_order_ids: set[uuid.UUID], seats: set[Seat]) -> Verdict:
    """The relay's periodic access check (admit checks once, at connect): which of these work orders are no
    longer open, and which seats' accounts may no longer be in the call: disabled or gone, no longer of a
    role that joins (a supervisor's seat needs the office), signed in with a token a new password revoked
    (`User.token_epoch`), or no longer seeing the order
    (`access.work_order_clause`). Two queries however many calls: the accounts, then the orders with their
    status and whether each steward still sees them."""
    user_ids = {seat.user_id for seat in seats}
    users = {u.id: u for u in session.exec(select(User).where(col(User.id).in_(user_ids)))} if user_ids else {}
    stewards = [u for u in users.values() if not access.is_office(u)]
    sees = [case((access.work_order_clause(u), True), else_=False) for u in stewards]
    rows = session.execute(sa_select(col(WorkOrder.id), col(WorkOrder.status), *sees)
                           .where(col(WorkOrder.id).in_(work_order_ids))).all()
    open_orders = {row[0] for row in rows if row[1] in OPEN_STATUSES}
    seen = {(u.id, row[0]) for row in rows for u, flag in zip(stewards, row[2:], strict=True) if flag}

    def may_stay(seat: Seat) -> bool:
        user = users.get(seat.user_id)
        # The token it joined with still valid: a password reset (a lost handheld) ends that token everywhere
        # else at once, and the handheld already in a call stayed in it.
        return (user is not None and user.active and user.token_epoch == seat.epoch and user.role in JOINING_ROLES
                and (seat.role != Role.supervisor or access.is_office(user))
                and (access.is_office(user) or (user.id, seat.work_order_id) in seen))

    return Verdict(closed_orders=frozenset(work_order_ids - open_orders),
                   revoked=frozenset(seat for seat in seats if not may_stay(seat)))


def mark_closed(*, session: Session, room_id: uuid.UUID, reason: CloseReason) -> VideoRoom | None:
    """Record that a room closed (first close wins)."""
    room = session.get(VideoRoom, room_id)
    if room is None:
        return None
    if room.state == RoomState.open:
        room.state, room.closed_at, room.close_reason = RoomState.closed, utcnow(), reason
        session.commit()
    return room


def close_lost_rooms(engine: Engine, *, worker: str, url: str = "") -> int:
    """At start: rooms this worker had open died with its previous process, under its name or at its URL (a
    worker renamed at the same address, as the default `<hostname>:<port>` is when a container is recreated:
    its old rooms redirected every request to this very worker, which did not host them)."""
    mine = col(VideoRoom.worker) == worker
    if url := url.rstrip("/"):
        mine = or_(mine, col(VideoRoom.worker_url) == url)
    with engine.begin() as conn:
        return conn.execute(update(VideoRoom)
                            .where(col(VideoRoom.state) == RoomState.open, mine)
                            .values(state=RoomState.closed, closed_at=utcnow(), close_reason=CloseReason.lost)
                            ).rowcount


def save_snapshot(*, session: Session, settings: Settings, room: VideoRoom, user: User, jpeg: bytes, width: int,
                  height: int) -> VideoSnapshot:
    """Store a JPEG as a blob and link it to the room's work order."""
    sha256 = put_blob(settings, jpeg)
    snapshot = VideoSnapshot(room_id=room.id, work_order_id=room.work_order_id, sha256=sha256, width=width,
                             height=height, size_bytes=len(jpeg), taken_by_id=user.id)
    session.add(snapshot)
    session.commit()
    return snapshot


def list_snapshots(*, session: Session, user: User, page: Page, work_order_id: uuid.UUID | None = None,
                   room_id: uuid.UUID | None = None) -> tuple[list[VideoSnapshot], int]:
    """Snapshots of work orders the user may see, newest first."""
    stmt = select(VideoSnapshot).where(col(VideoSnapshot.work_order_id).in_(
        select(WorkOrder.id).where(access.work_order_clause(user))))
    if work_order_id is not None:
        stmt = stmt.where(VideoSnapshot.work_order_id == work_order_id)
    if room_id is not None:
        stmt = stmt.where(VideoSnapshot.room_id == room_id)
    return access.paged(session, stmt, page, col(VideoSnapshot.taken_at).desc(), VideoSnapshot.id)


def get_snapshot(*, session: Session, user: User, id: uuid.UUID) -> VideoSnapshot:
    snapshot = session.exec(select(VideoSnapshot).where(
        VideoSnapshot.id == id,
        col(VideoSnapshot.work_order_id).in_(select(WorkOrder.id).where(access.work_order_clause(user))))).first()
    if snapshot is None:
        raise NotFound(f"No snapshot with id {id} (or its work order is outside your grid).")
    return snapshot


def save_recording(*, session: Session, settings: Settings, room_id: uuid.UUID, recording: Recording) -> Note | None:
    """Turn a finished call recording into a `call_recording` note on the work order, queued for
    transcription (the speech package's hook adds the transcript job)."""
    room = session.get(VideoRoom, room_id)
    order = session.get(WorkOrder, room.work_order_id) if room else None
    if room is None or order is None or room.created_by_id is None:
        log.warning("recording of room %s has no work order or owner left; dropped", room_id)
        return None
    sha256 = put_blob(settings, recording.path.read_bytes())
    note = Note(kind=NoteKind.call_recording, owner_id=room.created_by_id, work_order_id=order.id,
                household_id=order.household_id, audio_sha256=sha256,
                duration_s=min(recording.duration_s, 6 * 3600.0), recorded_at=recording.started_at,
                transcript_status=TranscriptStatus.pending)
    session.add(note)
    session.flush()
    _queue_transcript(session, note.id)
    room.recording_note_id = note.id
    session.commit()
    return note


def recordings_dir(settings: Settings) -> Path:
    """Where calls' recordings are written, and kept while they cannot be saved."""
    return settings.data_dir / "video-recordings"


def record_close(engine: Engine, *, room_id: uuid.UUID, reason: CloseReason) -> None:
    """Mark a room closed as its close starts, before its recording is mixed down (~36 s for an hour-long
    call): while the row still said open, another worker answered `POST /rooms` with a fresh join link to the
    call being closed, and its join info called it open. `persist_close` then saves the recording."""
    with Session(engine, expire_on_commit=False) as session:
        mark_closed(session=session, room_id=room_id, reason=reason)


def persist_close(engine: Engine, settings: Settings, *, room_id: uuid.UUID, reason: CloseReason,
                  recording: Recording | None) -> uuid.UUID | None:
    """Record a room's close and turn its recording into a note; the note's id. The file is deleted once the
    note is committed (or the recording dropped). When that fails (blob store or database unreachable) the
    file stays, with `<room_id>.json` beside it saying what it is, and the error is raised;
    `save_kept_recordings` tries again. The file used to be deleted all the same: the call's audio was lost."""
    try:
        with Session(engine, expire_on_commit=False) as session:
            mark_closed(session=session, room_id=room_id, reason=reason)
            note = (save_recording(session=session, settings=settings, room_id=room_id, recording=recording)
                    if recording is not None else None)
    except Exception:
        if recording is not None:
            _keep(recording, room_id, reason)
        raise
    if recording is not None:
        recording.path.unlink(missing_ok=True)
    return note.id if note else None


def _keep(recording: Recording, room_id: uuid.UUID, reason: CloseReason) -> None:
    marker = recording.path.with_suffix(".json")
    if marker.exists():  # kept already: a retry that failed again
        return
    marker.write_text(json.dumps({"room_id": str(room_id), "reason": reason.value,
                                  "started_at": recording.started_at.isoformat(),
                                  "duration_s": recording.duration_s}))
    log.error("the recording of video room %s could not be saved; kept at %s for another try",
              room_id, recording.path)


def _relayed_by(room: VideoRoom, worker: str, url: str) -> bool:
    """Whether this worker relayed the room: under its name, or at its URL (`close_lost_rooms`)."""
    return room.worker == worker or (bool(url) and room.worker_url == url)


def save_kept_recordings(engine: Engine, settings: Settings, *, worker: str, url: str = "") -> list[uuid.UUID]:
    """Try again to save the recordings kept after a failed save (`persist_close`), of the rooms this worker
    relayed, under its name or at its URL as `close_lost_rooms` takes them (at start and every minute, from
    the lifespan); the ids of the notes made. Matched by name only, a worker renamed at its address (a
    recreated container's new host name) skipped its own kept recordings for ever."""
    notes: list[uuid.UUID] = []
    url = url.rstrip("/")
    for marker in sorted(recordings_dir(settings).glob("*.json")):
        path = marker.with_suffix(".ogg")
        try:
            kept = json.loads(marker.read_text())
            room_id, reason = uuid.UUID(kept["room_id"]), CloseReason(kept["reason"])
            recording = Recording(path, datetime.fromisoformat(kept["started_at"]), float(kept["duration_s"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("kept recording %s is unreadable (%s); left for a person to look at", marker, exc)
            continue
        with Session(engine) as session:
            room = session.get(VideoRoom, room_id)
            if room is not None and not _relayed_by(room, worker, url):
                continue  # another worker's room: that worker tries it
            saved = room is not None and room.recording_note_id is not None  # saved, then the files stayed
        if room is None or saved or not path.exists():
            why = "its room is gone" if room is None else "saved already" if saved else "its audio file is missing"
            log.info("dropping kept recording %s: %s", path, why)
            path.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            continue
        try:
            note_id = persist_close(engine, settings, room_id=room_id, reason=reason, recording=recording)
        except Exception as exc:
            log.warning("saving kept recording %s failed again (next try in a minute): %s", path, exc)
            continue
        marker.unlink(missing_ok=True)
        log.info("kept recording %s saved as note %s", path, note_id)
        if note_id is not None:
            notes.append(note_id)
    return notes


def left_by_a_crash(settings: Settings) -> list[uuid.UUID]:
    """The rooms whose recording a process that died mid-call (killed, out of memory, power lost) left behind:
    a forward-mode packet file (`<room>.webm`) or a transcode-mode note being written (`<room>.ogg`), without
    the `.json` of a recording kept after a failed save. Listed at start, before this process hosts a call:
    none of them is one of its own calls. Other workers' calls may be among them (a shared data directory)."""
    directory = recordings_dir(settings)
    rooms: set[uuid.UUID] = set()
    for path in [*directory.glob("*.webm"), *directory.glob("*.ogg")]:
        try:
            room_id = uuid.UUID(path.stem)
        except ValueError:  # not a call's file
            continue
        if not path.with_suffix(".json").exists():
            rooms.add(room_id)
    return sorted(rooms)


def save_crashed_recordings(engine: Engine, settings: Settings, room_ids: list[uuid.UUID], *, worker: str,
                            url: str = "") -> list[uuid.UUID]:
    """The recordings `left_by_a_crash` found, of rooms this worker relayed that are no longer open (closed as
    `lost` at start): the audio they hold is mixed down into the room's note, as at a close, and the files
    deleted (a failed save keeps the note's file for `save_kept_recordings`). A file with no audio that decodes,
    or whose room is gone or has its note, is removed; each is logged. A file whose note cannot be written (a full
    disk) stays as it is, for the next start. The ids of the notes made. They stayed for ever before, neither
    saved nor removed."""
    notes: list[uuid.UUID] = []
    url = url.rstrip("/")
    directory = recordings_dir(settings)
    for room_id in room_ids:
        packets, path = directory / f"{room_id}.webm", directory / f"{room_id}.ogg"
        with Session(engine) as session:
            room = session.get(VideoRoom, room_id)
        if room is not None and (room.state == RoomState.open or not _relayed_by(room, worker, url)):
            continue  # another worker's call, perhaps under way (or not closed yet: the next start's)
        try:
            recording = (recover(packets if packets.exists() else path, path)
                         if room is not None and room.recording_note_id is None else None)
        except NoteNotWritten as exc:  # not the file's fault: it was deleted as if none of it decoded
            log.error("the recording of video room %s, left by a process that died mid-call, cannot be mixed down "
                      "(%s); it stays for the next start", room_id, exc)
            continue
        packets.unlink(missing_ok=True)
        if room is None or recording is None:
            path.unlink(missing_ok=True)
            why = "its room is gone" if room is None else "saved already" if room.recording_note_id else "no audio"
            log.warning("removed the recording of video room %s, left by a process that died mid-call: %s",
                        room_id, why)
            continue
        try:
            note_id = persist_close(engine, settings, room_id=room_id, reason=room.close_reason or CloseReason.lost,
                                    recording=recording)
        except Exception as exc:  # kept, with its .json, for save_kept_recordings
            log.warning("saving the recording of video room %s, left by a process that died mid-call, failed: %s",
                        room_id, exc)
            continue
        log.warning("the recording of video room %s, left by a process that died mid-call, was saved as note %s "
                    "(%.0f s)", room_id, note_id, recording.duration_s)
        if note_id is not None:
            notes.append(note_id)
    return notes


def _queue_transcript(session: Session, note_id: uuid.UUID) -> None:
    # The audio is already stored, so the job need not wait for it (as speech.service.create_call does).
    try:
        from speech.models import Transcript, TranscriptState
    except ImportError:  # speech not installed: the note stays for later transcription
        return
    transcript = session.get(Transcript, note_id)
    if transcript is not None:
        transcript.status = TranscriptState.queued
