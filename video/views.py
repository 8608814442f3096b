"""Routes of the video API (`/api/v1/video/...`), and the lifespan that runs this process's relay.

Media routes are async (aiortc lives on the event loop); their database work runs in the thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.db import utcnow
from api.deps import (
    CurrentUser,
    OfficeUser,
    PageDep,
    SessionDep,
    SettingsDep,
    StreamingUser,
    TokenDep,
    in_short_session,
    known_query_parameters,
)
from api.errors import Conflict, DomainError, NotFound, Unavailable
from api.settings import Settings
from video import service, tokens
from video.blobs import read_blob
from video.models import (
    CloseReason,
    ConnectAnswer,
    ConnectRequest,
    JoinInfo,
    RelayMode,
    Role,
    RoomCreate,
    RoomCreated,
    RoomPublic,
    RoomState,
    SnapshotPublic,
    VideoRoom,
)
from video.pages import router as pages_router
from video.recording import CallRecorder, PacketRecorder
from video.relay import Room, RoomManager, Seat, Verdict
from video.snapshot import encode_jpeg

log = logging.getLogger(__name__)

T = TypeVar("T")

API_PREFIX = "/api/v1/video"


class RelayUnavailable(DomainError):
    status_code, code = 503, "relay_unavailable"


def _manager(request: Request) -> RoomManager:
    manager: RoomManager | None = getattr(request.app.state, "video_rooms", None)
    if manager is None:
        raise RelayUnavailable(getattr(request.app.state, "video_relay_off", None)
                               or "The video relay is not running in this process (app started without lifespan).")
    return manager


def _ice(settings: Settings) -> list[Any]:
    return tokens.ice_servers(settings, ttl_s=settings.video_room_max_minutes * 60)


def _public_base(settings: Settings, request: Request) -> str:
    return (settings.video_public_url or str(request.base_url)).rstrip("/")


def _room_public(row: VideoRoom, room: Room | None, settings: Settings) -> RoomPublic:
    participants = [p.public() for p in room.participants.values()] if room and not room.closed else []
    # A room whose close is under way here (peers hung up, the recording being saved) reads closed at once,
    # with its reason; closed_at and the recording's note follow once the close is written.
    ending = row.state == RoomState.open and room is not None and room.closed
    return RoomPublic(id=row.id, work_order_id=row.work_order_id, state=RoomState.closed if ending else row.state,
                      worker=row.worker, worker_url=row.worker_url,
                      created_at=row.created_at, expires_at=row.expires_at, closed_at=row.closed_at,
                      close_reason=room.close_reason if ending and room else row.close_reason,
                      recording_note_id=row.recording_note_id,
                      participants=participants, ice_servers=_ice(settings))


def _host(manager: RoomManager, settings: Settings, row: VideoRoom) -> Room:
    """The live room, once here; a new relay room when the row is new."""
    room = manager.get(row.id)
    if room is not None:
        return room
    room = Room(id=row.id, work_order_id=row.work_order_id, expires_at=row.expires_at,
                max_participants=settings.video_max_participants,
                connect_timeout_s=settings.video_connect_timeout_s, ice_servers=_ice(settings),
                shared_encoding=settings.video_shared_encoding, relay_mode=RelayMode(settings.video_relay_mode))
    if settings.video_record_audio:
        # Before the room is hosted: a recorder that cannot start left a hosted room whose calls ran unrecorded.
        directory = service.recordings_dir(settings)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # A file made and removed: a directory that is there but cannot be written (read-only) passed the
            # mkdir, and the call was hosted and ran unrecorded (the recorder opens its file at the first sound).
            with tempfile.TemporaryFile(dir=directory):
                pass
            path = directory / f"{row.id}.ogg"
            recorder = PacketRecorder(path) if room.forward else CallRecorder(path)  # forward: Opus packets
        except OSError as exc:
            log.error("video room %s cannot be recorded: %s", row.id, exc)
            raise Unavailable(f"The call cannot be recorded: {directory} is not a writable directory ({exc.strerror})."
                              " Nothing was started; ask IT to check STEWARD_DATA_DIR.",
                              code="recording_unavailable") from exc
        room.recorder = recorder
        for role in (Role.resident, Role.steward):
            decoded, encoded = recorder.taps()
            room.slot(role, "audio").add_tap(decoded, encoded)
    manager.add(room)
    return room


def _live(manager: RoomManager, row: VideoRoom) -> Room:
    """The live room of an open row, or 409 saying why there is none."""
    if row.state != RoomState.open:
        raise Conflict("The video call has ended; start a new one.", code="room_closed")
    room = manager.get(row.id)
    if manager.closing(row.id) is not None or (room is not None and room.closed):
        raise Conflict("The video call has ended; start a new one.", code="room_closed")
    if room is None:
        raise Conflict("The video call was interrupted (the relay restarted); start a new one.",
                       code="room_lost")
    return room


def _pinned_here(request: Request, settings: Settings, row: VideoRoom) -> None:
    """Rooms are pinned to the relay worker that created them: a request for a room hosted elsewhere is
    redirected there (307 keeps the method and body), or refused when that worker has no URL."""
    if row.state != RoomState.open or row.worker == service.worker_name(settings):
        return
    if not row.worker_url:
        raise Conflict(f"This call is relayed by worker {row.worker!r}, which has no STEWARD_VIDEO_WORKER_URL.",
                       code="room_elsewhere")
    target = row.worker_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    # api.errors answers a dict detail in the one error shape, keeping the Location header.
    detail = {"code": "room_elsewhere", "message": f"This call is relayed by {target}."}
    raise StarletteHTTPException(status.HTTP_307_TEMPORARY_REDIRECT, headers={"Location": target},
                                 detail=detail)  # type: ignore[arg-type]


def _relay_url(settings: Settings, row: VideoRoom) -> str:
    return "" if row.worker == service.worker_name(settings) else row.worker_url


async def _short(request: Request, work: Callable[..., T], **kwargs: Any) -> T:
    """`work(session=..., **kwargs)` in a short session of its own (`in_short_session`), for the routes that
    await the relay: a call's close, a peer connection's set-up, a picture. Requests that awaited it holding
    their session (a slot, and a connection idle in transaction) held the pool: every other request waited
    for a slot, and a close, which saves the call on a connection of its own, failed after the pool's
    timeout (the call answered `open`, and was later closed as `lost`)."""
    return await in_short_session(request, request.app.state.engine, lambda session: work(session=session, **kwargs))


router = APIRouter(prefix=API_PREFIX, tags=["video"], dependencies=[Depends(known_query_parameters)])


@router.post("/rooms", response_model=RoomCreated, status_code=status.HTTP_201_CREATED,
             responses={200: {"model": RoomCreated,
                              "description": "The work order's open room, with a fresh join link."}})
async def create_room(request: Request, response: Response, body: RoomCreate, settings: SettingsDep,
                      user: StreamingUser) -> RoomCreated:
    """Open a video call about a work order (or return its open one) with a join link for the resident."""
    manager = _manager(request)
    worker = service.worker_name(settings)
    while True:
        # One opening at a time in this process: between a new row's commit and its hosting below, another
        # request for the same order would find it open and not relayed, and close it as lost. The relay's
        # capacity is reserved before the row is written (a refused room left a closed row behind).
        async with manager.opening:
            row, created = await _short(request, service.create_room, settings=settings, user=user, data=body,
                                        worker=worker, reserve=manager.reserve)
            here = not created and row.worker == worker
            # Being closed right now (hanging up, its recording saved): a new call follows it. Checked first:
            # a closing room stays among the manager's rooms until its peers hung up, and was answered
            # (200, a fresh link to a dead call).
            closing = manager.closing(row.id) if here else None
            if closing is None:
                if here and manager.get(row.id) is None:
                    # open in the database but not relayed here: the process that had it died
                    await _short(request, service.mark_closed, room_id=row.id, reason=CloseReason.lost)
                    row, created = await _short(request, service.create_room, settings=settings, user=user,
                                                data=body, worker=worker, reserve=manager.reserve)
                if created:
                    try:
                        _host(manager, settings, row)
                    except DomainError:
                        await _short(request, service.mark_closed, room_id=row.id, reason=CloseReason.closed)
                        raise
                else:
                    response.status_code = status.HTTP_200_OK
                    room = manager.get(row.id)
                    if room is not None:  # a fresh link: the empty room waits for it afresh
                        room.link_issued()
                break
        # Awaited outside the lock, then looked at again: a long call's mix-down held up opening calls for every
        # other work order. Awaited holding no session either (`_short`).
        await asyncio.shield(closing)
    token, expires_at = tokens.create_join_token(settings=settings, room_id=row.id, room_expires_at=row.expires_at)
    join_url = f"{_public_base(settings, request)}/join/{token}"
    return RoomCreated(room_id=row.id, join_url=join_url, sms_text=service.sms_text(settings, join_url, expires_at),
                       expires_at=expires_at, room_expires_at=row.expires_at, ice_servers=_ice(settings),
                       relay_url=_relay_url(settings, row))


@router.get("/rooms/{id}", response_model=RoomPublic)
async def get_room(request: Request, id: uuid.UUID, session: SessionDep, settings: SettingsDep,
                   user: CurrentUser) -> RoomPublic:
    """A room's state and who is in it."""
    row = await run_in_threadpool(service.get_room, session=session, user=user, id=id)
    _pinned_here(request, settings, row)
    if row.state != RoomState.open:  # a closed call's record: any process answers, relay or not
        return _room_public(row, None, settings)
    manager = _manager(request)
    return _room_public(row, manager.get(row.id) or manager.ending(row.id), settings)


@router.post("/rooms/{id}/close", response_model=RoomPublic)
async def close_room(request: Request, id: uuid.UUID, settings: SettingsDep, user: StreamingUser) -> RoomPublic:
    """End the call for everyone (idempotent); its recording becomes a note on the work order."""
    row = await _short(request, service.get_room, user=user, id=id)
    _pinned_here(request, settings, row)
    if row.state != RoomState.open:  # closing is idempotent, on any process
        return _room_public(row, None, settings)
    if await _manager(request).close(row.id, CloseReason.closed) is None:
        await _short(request, service.mark_closed, room_id=row.id, reason=CloseReason.closed)
    row = await _short(request, service.get_room, user=user, id=id)
    return _room_public(row, None, settings)


@router.post("/rooms/{id}/connect", response_model=ConnectAnswer)
async def connect(request: Request, id: uuid.UUID, body: ConnectRequest, settings: SettingsDep,
                  token: TokenDep) -> ConnectAnswer:
    """Join with an SDP offer (ICE candidates gathered, no trickle); the answer carries all of ours.
    The resident authenticates with the join token, stewards and supervisors with their access token.
    The peer connection is set up holding no database session (`_short`)."""
    admission = await _short(request, service.admit, settings=settings, room_id=id, token=token, role=body.role)
    _pinned_here(request, settings, admission.room)
    room = _live(_manager(request), admission.room)
    participant, answer = await room.connect(role=admission.role, user_id=admission.user_id, offer=body.sdp,
                                             epoch=admission.epoch)
    return ConnectAnswer(sdp=answer, participant_id=participant.id)


@router.post("/rooms/{id}/leave", status_code=status.HTTP_204_NO_CONTENT)
async def leave(request: Request, id: uuid.UUID, participant_id: uuid.UUID, settings: SettingsDep,
                token: TokenDep) -> Response:
    """Hang up one participant (the page calls it when closed); the room stays open for the others. Their peer
    connection is closed holding no database session (`_short`)."""
    admission = await _short(request, service.admit, settings=settings, room_id=id, token=token, role=None,
                             joining=False)
    _pinned_here(request, settings, admission.room)
    room = _manager(request).get(admission.room.id)
    participant = room.participants.get(participant_id) if room else None
    if participant is not None and (participant.user_id == admission.user_id):
        await room.remove(participant)  # type: ignore[union-attr]
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/rooms/{id}/snapshot", response_model=SnapshotPublic, status_code=status.HTTP_201_CREATED)
async def snapshot(request: Request, id: uuid.UUID, settings: SettingsDep, user: StreamingUser) -> Any:
    """Grab the resident's latest camera frame as a JPEG and keep it on the work order. The picture (up to
    5 s) is awaited holding no database session (`_short`)."""
    row = await _short(request, service.get_room, user=user, id=id)
    _pinned_here(request, settings, row)
    room = _live(_manager(request), row)
    frame = await room.slot(Role.resident, "video").fresh_frame()  # forward mode decodes only on demand
    if room.closed:  # the call ended while the picture was awaited
        raise Conflict("The video call has ended; start a new one.", code="room_closed")
    if frame is None:
        raise Conflict("No picture from the resident: wait until their camera shows in the call.", code="no_video")
    jpeg = await asyncio.to_thread(encode_jpeg, frame)  # type: ignore[arg-type]
    return await _short(request, service.save_snapshot, settings=settings, room=row, user=user, jpeg=jpeg,
                        width=frame.width, height=frame.height)  # type: ignore[union-attr]


@router.get("/relay", response_model=dict[str, Any])
async def relay_stats(request: Request, _: OfficeUser, reset: bool = False) -> dict[str, Any]:
    """This relay process: mode, rooms, per-slot counters, and how long frames spend in the relay (from a
    publisher's complete encoded frame to a subscriber's sender), over the samples since the last reset."""
    return _manager(request).stats(reset=reset)


@router.get("/snapshots", response_model=dict[str, Any])
def list_snapshots(session: SessionDep, user: CurrentUser, page: PageDep, work_order_id: uuid.UUID | None = None,
                   room_id: uuid.UUID | None = None) -> dict[str, Any]:
    rows, count = service.list_snapshots(session=session, user=user, page=page, work_order_id=work_order_id,
                                         room_id=room_id)
    return {"data": [SnapshotPublic.model_validate(r, from_attributes=True) for r in rows], "count": count}


@router.get("/snapshots/{id}/image", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}, "description": "The JPEG."}})
def snapshot_image(id: uuid.UUID, session: SessionDep, settings: SettingsDep, user: CurrentUser) -> Response:
    row = service.get_snapshot(session=session, user=user, id=id)
    image = read_blob(settings, row.sha256)
    if image is None:
        raise NotFound("The snapshot's image is missing from the blob store.", code="blob_missing")
    return Response(image, media_type="image/jpeg",
                    headers={"Content-Disposition": f'inline; filename="{row.id}.jpg"'})


@router.get("/join/{token}", response_model=JoinInfo)
def join_info(request: Request, token: str, session: SessionDep, settings: SettingsDep,
              in_call: Annotated[bool, Query(description="The page asks during its call: the link's expiry does not "
                                                         "end the call (connecting again still needs a valid link)."
                                             )] = False) -> JoinInfo:
    """What the resident page needs before asking for the camera (401 expired/forged, 409 ended)."""
    row = service.join_room(session=session, settings=settings, token=token, expired_too=in_call)
    claims = tokens.decode_join_token(settings=settings, token=token, expired_too=in_call)
    if in_call:  # during the call only the hosting worker knows it is ending: the page follows the 307 there
        _pinned_here(request, settings, row)
    manager: RoomManager | None = getattr(request.app.state, "video_rooms", None)
    if row.state != RoomState.open or (manager is not None and manager.closing(row.id) is not None):
        raise Conflict("The video call has ended.", code="room_closed")  # or is ending here, the call saved
    expired = claims.expires_at <= utcnow()  # only with in_call: no ICE servers (TURN credentials) for it
    return JoinInfo(room_id=row.id, state=row.state, expires_at=claims.expires_at,
                    ice_servers=[] if expired else _ice(settings), relay_url=_relay_url(settings, row))


KEPT_RETRY_S = 60.0  # how often recordings kept after a failed save are tried again


def _audit(engine: Any, work_order_ids: set[uuid.UUID], seats: set[Seat]) -> Verdict:
    with Session(engine) as session:
        return service.audit_rooms(session=session, work_order_ids=work_order_ids, seats=seats)


MULTI_WORKER = ("Video calls need one `steward serve` process per port, each with its own STEWARD_VIDEO_WORKER_ID "
                "and STEWARD_VIDEO_WORKER_URL; this server runs several (--workers), which cannot be told apart "
                "(docs/video.md, Scale-out).")


async def _close_lost_rooms(engine: Any, settings: Settings, worker: str) -> None:
    """Close, as lost, the rooms a previous process of this relay's name (or URL) left open."""
    try:
        lost = await asyncio.to_thread(service.close_lost_rooms, engine, worker=worker,
                                       url=settings.video_worker_url)
        if lost:
            log.warning("%d video room(s) left open by a previous process were closed", lost)
    except Exception as exc:  # the service must start with its database down
        log.warning("could not close lost video rooms at start: %s", exc)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run this process's relay: rooms left open by a dead predecessor are closed and the recordings it left
    saved (or removed), recordings kept after a failed save are saved, a reaper and the access check run, and
    every room is closed at shutdown."""
    settings: Settings = app.state.settings
    engine = app.state.engine
    worker = service.worker_name(settings)
    if settings.serve_workers > 1:
        # `steward serve --workers N`: N processes on one port under one relay name, none reachable on its own. Each
        # took the others' calls for its own: a `POST /rooms` that landed on a sibling closed the live call as
        # lost, and a worker that uvicorn started again closed every sibling's calls (and saved the recordings
        # they were still writing). Such a process relays nothing; rooms of its name are a stopped server's.
        app.state.video_rooms = None
        app.state.video_relay_off = MULTI_WORKER
        log.warning("video calls are off: this server runs %d worker processes on one port (docs/video.md)",
                    settings.serve_workers)
        await _close_lost_rooms(engine, settings, worker)
        yield
        return

    def announce(note_id: uuid.UUID) -> None:
        try:
            from speech.worker import notify_queued

            notify_queued(app.state, note_id)
        except ImportError:
            pass

    async def on_close(room: Room) -> None:
        recorder = room.recorder
        reason = room.close_reason or CloseReason.closed
        try:  # the row first: every worker then sees the call ended while its recording is mixed down
            await asyncio.to_thread(service.record_close, engine, room_id=room.id, reason=reason)
        except Exception:  # the database down: `persist_close` below tries again
            log.exception("recording the close of video room %s failed", room.id)
        try:
            recording = await asyncio.to_thread(recorder.stop) if recorder is not None else None
        except Exception:  # the row is closed all the same (it stayed open, a call that had ended)
            log.exception("stopping the recorder of video room %s failed", room.id)
            recording = None
        note_id = await asyncio.to_thread(service.persist_close, engine, app.state.settings, room_id=room.id,
                                          reason=reason, recording=recording)
        if note_id is not None:
            announce(note_id)

    async def audit(work_order_ids: set[uuid.UUID], seats: set[Seat]) -> Verdict:
        return await asyncio.to_thread(_audit, engine, work_order_ids, seats)

    async def save_kept(crashed: list[uuid.UUID]) -> None:
        try:  # in the background: mixing down an hour-long call takes ~36 s
            for note_id in await asyncio.to_thread(service.save_crashed_recordings, engine, settings, crashed,
                                                   worker=worker, url=settings.video_worker_url):
                announce(note_id)
        except Exception as exc:  # the database down: they stay for the next start
            log.warning("could not save the video recordings left by the previous process: %s", exc)
        while True:
            try:
                for note_id in await asyncio.to_thread(service.save_kept_recordings, engine, app.state.settings,
                                                       worker=worker, url=settings.video_worker_url):
                    announce(note_id)
            except Exception as exc:  # the database down: next time
                log.warning("could not look at kept video recordings: %s", exc)
            await asyncio.sleep(KEPT_RETRY_S)

    manager = RoomManager(max_rooms=settings.video_max_rooms, idle_close_s=settings.video_room_idle_close_s,
                          on_close=on_close, audit=audit)
    await _close_lost_rooms(engine, settings, worker)
    crashed = await asyncio.to_thread(service.left_by_a_crash, settings)  # before this process hosts a call
    manager.start()
    app.state.video_rooms = manager
    kept = asyncio.create_task(save_kept(crashed), name="video-kept-recordings")
    try:
        yield
    finally:
        kept.cancel()
        await asyncio.gather(kept, return_exceptions=True)
        await manager.aclose()
        app.state.video_rooms = None


# What api/app.py includes: the API, the pages, and the relay's lifespan.
video_router = APIRouter(lifespan=lifespan)
video_router.include_router(router)
video_router.include_router(pages_router)
