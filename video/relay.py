"""Rooms in the relay process: participants' peer connections, who receives whom, limits and reaping.

Every object here has one owner that closes it: the `RoomManager` owns rooms, a `Room` owns its
participants and source slots, a `Participant` owns its peer connection, proxies and drain tasks.
Every `close()` is idempotent, and the manager's `aclose()` (app shutdown) closes everything.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.sdp import SessionDescription

from api.db import utcnow
from api.errors import BadRequest, Conflict, DomainError
from video import aiortc_hooks
from video.aiortc_hooks import EncodedFrame, EncodedTap
from video.forwarding import FORWARDABLE
from video.models import CloseReason, IceServer, ParticipantPublic, RelayMode, Role
from video.proxy import ProxyTrack
from video.recording import Recorder
from video.tracks import SourceSlot, drain

log = logging.getLogger(__name__)

MAX_MEDIA_SECTIONS = 6
# Which publishers each role receives, per kind, in the order of its offer's m-lines: a supervisor's
# page offers two audio and two video m-lines to hear and see both sides.
PLAN: dict[Role, dict[str, tuple[Role, ...]]] = {
    Role.resident: {"audio": (Role.steward,), "video": (Role.steward,)},
    Role.steward: {"audio": (Role.resident,), "video": (Role.resident,)},
    Role.supervisor: {"audio": (Role.resident, Role.steward), "video": (Role.resident, Role.steward)},
}
PUBLISHERS = (Role.resident, Role.steward)
_T = TypeVar("_T")
SDP_ERRORS = (ValueError, KeyError, IndexError, InternalError, InvalidAccessError, InvalidStateError, OperationError)


class TooManyRequests(DomainError):
    status_code, code = 429, "too_many_requests"


def rtc_configuration(servers: list[IceServer]) -> RTCConfiguration:
    """aiortc's configuration; an empty list means host candidates only (no 5 s STUN gathering).

    Max-bundle: every m-line on one transport. aiortc's default (balanced) leaves the second m-line of a
    kind on a transport that bundling then discards, so a supervisor's second video never flowed."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
                                        for s in servers], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


async def _offer_step(step: Awaitable[_T]) -> _T:
    """aiortc taking in the offer or answering it. Whatever it raises there comes from an offer it cannot
    take: besides its own errors it asserts, and an offer missing a section it expected surfaces as an
    AttributeError deep inside `createAnswer`. Bad input, so 400 `invalid_sdp`, not 500."""
    try:
        return await step
    except Exception as exc:
        log.info("SDP offer refused by aiortc: %s: %s", type(exc).__name__, exc)
        raise BadRequest(f"The SDP offer was refused: {type(exc).__name__}: {exc}", code="invalid_sdp") from exc


def check_offer(sdp: str) -> SessionDescription:
    """The parsed offer, or `BadRequest` saying what is wrong with it."""
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # the parser asserts and indexes its way through the text: any failure is the text's
        raise BadRequest(f"The SDP offer cannot be parsed: {type(exc).__name__}: {exc}", code="invalid_sdp") from exc
    media = [m for m in description.media if m.kind in ("audio", "video")]
    if not media:
        raise BadRequest("The SDP offer has no audio or video section; add a transceiver before createOffer().",
                         code="invalid_sdp")
    if len(description.media) > MAX_MEDIA_SECTIONS:
        raise BadRequest(f"The SDP offer has more than {MAX_MEDIA_SECTIONS} media sections.", code="invalid_sdp")
    for m in media:
        if m.ice is None or not (m.ice.usernameFragment and m.ice.password) or not m.dtls or not m.dtls.fingerprints:
            raise BadRequest("The SDP offer lacks ICE credentials or a DTLS fingerprint.", code="invalid_sdp")
        if not m.rtp.codecs:
            raise BadRequest(f"The SDP offer's {m.kind} section lists no codec.", code="invalid_sdp")
    return description


def _prefer_codecs(pc: RTCPeerConnection) -> None:
    # VP8 first (H.264 encodes 3-4x slower in aiortc), Opus only (see ProxyTrack._audio).
    for transceiver in pc.getTransceivers():
        caps = RTCRtpSender.getCapabilities(transceiver.kind)
        if transceiver.kind == "video":
            order = {"video/VP8": 0, "video/rtx": 1, "video/H264": 2}
            codecs = sorted((c for c in caps.codecs if c.mimeType in order), key=lambda c: order[c.mimeType])
        else:
            codecs = [c for c in caps.codecs if c.mimeType == "audio/opus"]
        transceiver.setCodecPreferences(codecs)


def _settle_proxies(participant: Participant, *, forward: bool, shared_encoding: bool) -> None:
    """Once the answer fixed each m-line's codec: proxies on the forwarded codec send packets (in forward
    mode the publisher's, VP8 video and Opus audio; in transcode mode the slot's shared VP8 encoding)."""
    answer = SessionDescription.parse(participant.pc.localDescription.sdp)
    codec = {m.rtp.muxId: m.rtp.codecs[0].mimeType.lower() for m in answer.media if m.rtp.codecs}
    for transceiver in participant.pc.getTransceivers():
        proxy = transceiver.sender.track
        if not isinstance(proxy, ProxyTrack):
            continue
        if codec.get(transceiver.mid or "") == FORWARDABLE[proxy.kind] and (
                forward or (shared_encoding and proxy.kind == "video")):
            proxy.forward(transceiver.sender, packets_only=forward)
        proxy.settled = True


def _tap_receivers(pc: RTCPeerConnection) -> dict[MediaStreamTrack, EncodedTap]:
    """The encoded frames of every received track (before the connection starts receiving)."""
    return {t.receiver.track: aiortc_hooks.tap_receiver(t.receiver) for t in pc.getTransceivers()
            if t.receiver.track is not None}


class Participant:
    """One peer connection in a room."""

    def __init__(self, *, room: Room, role: Role, user_id: uuid.UUID | None, pc: RTCPeerConnection,
                 connect_deadline: float, epoch: int = 0) -> None:
        self.id = uuid.uuid4()
        self.room, self.role, self.user_id, self.pc = room, role, user_id, pc
        self.epoch = epoch  # the account's token epoch at admission (`Seat`)
        self.joined_at = utcnow()
        self.connected_at: datetime | None = None
        self.connect_deadline = connect_deadline
        self.proxies: list[ProxyTrack] = []
        self.published: list[tuple[SourceSlot, MediaStreamTrack]] = []
        self._drains: list[asyncio.Task[None]] = []
        self.ignored_frames = 0  # encoded frames of tracks nobody subscribes to, dropped undecoded
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, slot: SourceSlot, track: MediaStreamTrack, tap: EncodedTap | None = None) -> None:
        slot.attach(track, tap)
        self.published.append((slot, track))

    def drain(self, track: MediaStreamTrack, tap: EncodedTap | None = None) -> None:
        """Drop what a track nobody subscribes to brings (a supervisor's microphone, a resident's extra cameras):
        undecoded when it is tapped (each such stream was decoded to be thrown away: a join link's holder could
        make the relay decode five of them), else read and dropped."""
        if tap is not None:
            tap.set_handler(self._ignore)
        self._drains.append(asyncio.create_task(drain(track), name=f"drain-{self.id}"))

    def _ignore(self, frame: EncodedFrame) -> bool:
        self.ignored_frames += 1
        return False

    def public(self) -> ParticipantPublic:
        return ParticipantPublic(id=self.id, role=self.role, user_id=self.user_id, state=self.pc.connectionState,
                                 joined_at=self.joined_at, connected_at=self.connected_at)

    async def close(self) -> None:
        """Unpublish, stop every proxy and drain, close the peer connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for slot, track in self.published:
            slot.detach(track)
        for proxy in self.proxies:
            proxy.stop()
        for task in self._drains:
            task.cancel()
        try:
            await self.pc.close()
        except Exception:  # closing must finish whatever state the connection was in
            log.exception("closing the peer connection of participant %s failed", self.id)
        await asyncio.gather(*self._drains, return_exceptions=True)


class Room:
    """Participants and the four publishable slots (resident/steward x audio/video) of one call."""

    def __init__(self, *, id: uuid.UUID, work_order_id: uuid.UUID, expires_at: datetime, max_participants: int,
                 connect_timeout_s: float, ice_servers: list[IceServer], shared_encoding: bool = True,
                 relay_mode: RelayMode = RelayMode.forward) -> None:
        self.id, self.work_order_id, self.expires_at = id, work_order_id, expires_at
        # both modes rely on aiortc internals (video/aiortc_hooks.py); without them, plain transcoding
        self.hooks = aiortc_hooks.compatible()
        self.forward = relay_mode == RelayMode.forward and self.hooks
        self.shared_encoding = shared_encoding and self.hooks
        self.max_participants, self.connect_timeout_s = max_participants, connect_timeout_s
        self.ice_servers = ice_servers
        self.slots = {(role, kind): SourceSlot(f"{role.value}-{kind}", kind, forward=self.forward)
                      for role in PUBLISHERS for kind in ("audio", "video")}
        self.participants: dict[uuid.UUID, Participant] = {}
        self.empty_since: float | None = time.monotonic()
        self.closed = False
        self.close_reason: CloseReason | None = None
        self.recorder: Recorder | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Task[None] | None = None

    def slot(self, role: Role, kind: str) -> SourceSlot:
        return self.slots[(role, kind)]

    def _admit(self, role: Role, user_id: uuid.UUID | None) -> Participant | None:
        """The participant a newcomer replaces (a rejoin), or None; raises if it may not join."""
        if self.closed:
            raise Conflict("The video call has ended; start a new one.", code="room_closed")
        same = [p for p in self.participants.values() if p.role == role]
        replaced = None
        if role == Role.resident:
            replaced = same[0] if same else None  # the link is the resident's identity: newest wins
        else:
            replaced = next((p for p in same if p.user_id == user_id), None)
            if role == Role.steward and same and replaced is None:
                raise Conflict("Another steward is already in this call.", code="steward_present")
        if len(self.participants) - (replaced is not None) >= self.max_participants:
            raise Conflict(f"The call already has {self.max_participants} participants.", code="room_full")
        return replaced

    async def connect(self, *, role: Role, user_id: uuid.UUID | None, offer: str, epoch: int = 0
                      ) -> tuple[Participant, str]:
        """Answer an offer: the new participant receives what its role receives and publishes what it
        sends. Nothing is left behind when the offer is refused."""
        description = check_offer(offer)
        self._admit(role, user_id)
        pc = RTCPeerConnection(rtc_configuration(self.ice_servers))
        participant = Participant(room=self, role=role, user_id=user_id, pc=pc, epoch=epoch,
                                  connect_deadline=time.monotonic() + self.connect_timeout_s)
        received: list[MediaStreamTrack] = []
        pc.on("track", received.append)
        taps: dict[MediaStreamTrack, EncodedTap] = {}
        try:
            await _offer_step(pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer")))
            if self.hooks:
                taps = _tap_receivers(pc)
            self._subscribe(participant, description)
            _prefer_codecs(pc)
            await pc.setLocalDescription(await _offer_step(pc.createAnswer()))
            _settle_proxies(participant, forward=self.forward, shared_encoding=self.shared_encoding)
            replaced = self._admit(role, user_id)  # again: the room may have changed while we awaited
        except SDP_ERRORS as exc:
            await participant.close()
            raise BadRequest(f"The SDP offer was refused: {exc}", code="invalid_sdp") from exc
        except BaseException:
            await participant.close()
            raise
        # From the last check on, nothing awaits until the newcomer is in: two rejoins at once, or a close in
        # between, used to pass the check while the replaced one was being closed (two residents in a room;
        # a participant left in a room already closed).
        if replaced is not None:
            self.participants.pop(replaced.id, None)
        self.participants[participant.id] = participant
        self.empty_since = None
        self._publish(participant, received, taps)

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if pc.connectionState == "connected" and participant.connected_at is None:
                participant.connected_at = utcnow()
            elif pc.connectionState in ("failed", "closed"):
                self.spawn(self.remove(participant))

        if replaced is not None:
            await replaced.close()
        return participant, pc.localDescription.sdp

    def _subscribe(self, participant: Participant, description: SessionDescription) -> None:
        wants = {m.rtp.muxId: m.direction in ("sendrecv", "recvonly") for m in description.media}
        next_source = {"audio": 0, "video": 0}
        for transceiver in participant.pc.getTransceivers():
            if not wants.get(transceiver.mid or ""):
                continue
            sources = PLAN[participant.role].get(transceiver.kind, ())
            index = next_source[transceiver.kind]
            next_source[transceiver.kind] += 1
            if index >= len(sources):
                continue
            proxy = self.slot(sources[index], transceiver.kind).subscribe()
            participant.proxies.append(proxy)
            transceiver.sender.replaceTrack(proxy)
            transceiver.direction = "sendrecv"

    def _publish(self, participant: Participant, received: list[MediaStreamTrack],
                 taps: dict[MediaStreamTrack, EncodedTap]) -> None:
        taken: set[str] = set()
        for track in received:
            if participant.role in PUBLISHERS and track.kind not in taken:
                taken.add(track.kind)
                participant.publish(self.slot(participant.role, track.kind), track, taps.get(track))
            else:
                participant.drain(track, taps.get(track))

    def stats(self) -> list[dict[str, object]]:
        """Per publishing slot: codec, frames in, forwarded and decoded, keyframe requests."""
        out: list[dict[str, object]] = []
        for slot in self.slots.values():
            if slot.source is None and not slot.encoded_in and not slot.frames_in:
                continue
            asked, sent = slot.keyframe_requests
            out.append({"slot": slot.name, "codec": slot.source_codec, "encoded_in": slot.encoded_in,
                        "forwarded": slot.frames_forwarded, "decoded": slot.frames_in,
                        "shared_encoded": slot.encoder.frames, "keyframes_asked": asked, "keyframes_sent": sent})
        return out

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a background step owned by the room (kept referenced, cancelled on close)."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def remove(self, participant: Participant) -> None:
        """Take a participant out of the room and close it."""
        if self.participants.pop(participant.id, None) is not None and not self.participants:
            self.empty_since = time.monotonic()
        await participant.close()

    def link_issued(self) -> None:
        """A join link went out: an empty room waits the idle time afresh for whoever holds it (a room nobody
        had joined closed as empty that long after its creation, however new the link)."""
        if self.empty_since is not None:
            self.empty_since = time.monotonic()

    def stale(self, now: float) -> list[Participant]:
        """Participants that never connected in time, or whose connection failed (vanished clients)."""
        return [p for p in self.participants.values()
                if (p.connected_at is None and now > p.connect_deadline)
                or p.pc.connectionState in ("failed", "closed")]

    def due(self, now: float, idle_close_s: float) -> CloseReason | None:
        """Why the room should close by itself now, if it should."""
        if utcnow() >= self.expires_at:
            return CloseReason.max_duration
        if self.empty_since is not None and now - self.empty_since >= idle_close_s:
            return CloseReason.empty
        return None

    async def close(self, reason: CloseReason) -> None:
        """Close every participant and slot (idempotent; concurrent callers wait for the same close)."""
        if self._closing is None:
            self.closed, self.close_reason = True, reason
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        await asyncio.gather(*(self.remove(p) for p in list(self.participants.values())))
        await asyncio.gather(*(slot.close() for slot in self.slots.values()))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


OnClose = Callable[[Room], Awaitable[None]]


@dataclass(frozen=True)
class Seat:
    """An account's place in a call: what the periodic access check asks about."""

    user_id: uuid.UUID
    work_order_id: uuid.UUID
    role: Role
    epoch: int  # the token epoch of the credential it joined with


@dataclass(frozen=True)
class Verdict:
    """The access check's answer: the work orders no longer open (their calls end) and the seats whose
    account may no longer be there (disabled, another role, the order out of its scope)."""

    closed_orders: frozenset[uuid.UUID]
    revoked: frozenset[Seat]


Audit = Callable[[set[uuid.UUID], set[Seat]], Awaitable[Verdict]]
AUDIT_INTERVAL_S = 2.0


class RoomManager:
    """The rooms this process relays, the limit on them, and the reaper that closes idle rooms and drops
    vanished participants."""

    def __init__(self, *, max_rooms: int, idle_close_s: float, on_close: OnClose | None = None,
                 reap_interval_s: float = 1.0, audit: Audit | None = None,
                 audit_interval_s: float = AUDIT_INTERVAL_S) -> None:
        self.max_rooms, self.idle_close_s, self.reap_interval_s = max_rooms, idle_close_s, reap_interval_s
        self.audit_interval_s = audit_interval_s
        self.rooms: dict[uuid.UUID, Room] = {}
        self._on_close = on_close
        self._audit = audit
        self._reaper: asyncio.Task[None] | None = None
        self._auditor: asyncio.Task[None] | None = None
        self._closes: dict[uuid.UUID, asyncio.Task[Room]] = {}  # closes in progress, hook included
        self._ending: dict[uuid.UUID, Room] = {}  # their rooms, for the state and reason while they close
        self.opening = asyncio.Lock()  # create_room's check-then-host, one request at a time

    def reserve(self) -> None:
        """Raise `TooManyRequests` if this process cannot take another room."""
        if len(self.rooms) >= self.max_rooms:
            raise TooManyRequests(f"This relay already runs {self.max_rooms} video calls; try again in a few "
                                  "minutes.", code="too_many_rooms", headers={"Retry-After": "60"})

    def add(self, room: Room) -> Room:
        self.reserve()
        self.rooms[room.id] = room
        return room

    def get(self, room_id: uuid.UUID) -> Room | None:
        return self.rooms.get(room_id)

    def closing(self, room_id: uuid.UUID) -> asyncio.Task[Room] | None:
        """The close of this room in progress (its recording being saved), if any."""
        return self._closes.get(room_id)

    def ending(self, room_id: uuid.UUID) -> Room | None:
        """The room whose close is in progress (already `closed`, with its reason), if any."""
        return self._ending.get(room_id)

    async def close(self, room_id: uuid.UUID, reason: CloseReason) -> Room | None:
        """Close a room and run the close hook once (persisting it, the recording); None if not here. A caller
        that comes while a close runs waits for that close, hook included (a second close used to return at
        once, with the room still open in the database)."""
        task = self._start_close(room_id, reason)
        return await asyncio.shield(task) if task is not None else None

    def _start_close(self, room_id: uuid.UUID, reason: CloseReason) -> asyncio.Task[Room] | None:
        """The close of this room: the one in progress, or one started now (None if the room is not here)."""
        task = self._closes.get(room_id)
        if task is None:
            room = self.rooms.get(room_id)
            if room is None:
                return None
            task = asyncio.ensure_future(self._close(room, reason))
            self._closes[room_id], self._ending[room_id] = task, room

            def done(_: asyncio.Task[Room]) -> None:
                self._closes.pop(room_id, None)
                self._ending.pop(room_id, None)

            task.add_done_callback(done)
        return task

    async def _close(self, room: Room, reason: CloseReason) -> Room:
        try:
            await room.close(reason)
        except Exception:  # a participant or slot that failed to close: the call still ends, and says so
            log.exception("closing room %s failed; it is closed all the same", room.id)
        self.rooms.pop(room.id, None)  # the room must not hold its place, and its row must be closed
        if self._on_close is not None:
            try:
                await self._on_close(room)
            except Exception:
                log.exception("after-close step of room %s failed", room.id)
        return room

    def stats(self, *, reset: bool = False) -> dict[str, Any]:
        """Counters of every open room and the relay latency percentiles (optionally starting afresh)."""
        latencies = sorted(x for room in self.rooms.values() for slot in room.slots.values()
                           for x in slot.latencies_ms)
        if reset:
            for room in self.rooms.values():
                for slot in room.slots.values():
                    slot.latencies_ms.clear()

        def pct(q: float) -> float | None:
            return round(latencies[min(len(latencies) - 1, int(len(latencies) * q))], 2) if latencies else None

        modes = {("forward" if r.forward else "transcode") for r in self.rooms.values()}
        return {"rooms": len(self.rooms), "modes": sorted(modes),
                "latency_ms": {"count": len(latencies), "p50": pct(0.5), "p95": pct(0.95), "max": pct(1.0)},
                "slots": {str(room.id): room.stats() for room in self.rooms.values()}}

    def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_loop(), name="video-reaper")
        if self._auditor is None and self._audit is not None:
            self._auditor = asyncio.create_task(self._audit_loop(), name="video-audit")

    async def reap_once(self) -> None:
        now = time.monotonic()
        for room in list(self.rooms.values()):
            reason = room.due(now, self.idle_close_s)
            if reason is not None:
                if self.closing(room.id) is None:
                    log.info("closing video room %s: %s", room.id, reason.value)
                    # Not awaited: saving a long call's recording takes seconds, and the other rooms' idle
                    # and vanished participants must not wait for it (the manager keeps the task).
                    self._start_close(room.id, reason)
                continue
            for participant in room.stale(now):
                log.info("dropping participant %s (%s) of room %s: %s", participant.id, participant.role.value,
                         room.id, participant.pc.connectionState)
                await room.remove(participant)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval_s)
            try:
                await self.reap_once()
            except Exception:
                log.exception("video reaper step failed")

    async def audit_once(self) -> None:
        """Credentials are checked at connect only: end the calls whose work order is no longer open and drop
        the participants whose account may no longer be there (a disabled steward kept receiving the
        resident's camera). One check for every room."""
        if self._audit is None:
            return
        rooms = [room for room in self.rooms.values() if not room.closed]
        if not rooms:
            return
        seats = {Seat(p.user_id, room.work_order_id, p.role, p.epoch) for room in rooms
                 for p in room.participants.values() if p.user_id is not None}
        verdict = await self._audit({room.work_order_id for room in rooms}, seats)
        for room in rooms:
            if room.closed:
                continue
            if room.work_order_id in verdict.closed_orders:
                log.info("closing video room %s: its work order is no longer open", room.id)
                self._start_close(room.id, CloseReason.closed)  # not awaited, as the reaper's closes
                continue
            for participant in list(room.participants.values()):
                if participant.user_id is not None and Seat(participant.user_id, room.work_order_id,
                                                            participant.role, participant.epoch) in verdict.revoked:
                    log.info("dropping participant %s (%s) of room %s: account %s may no longer be in the call",
                             participant.id, participant.role.value, room.id, participant.user_id)
                    await room.remove(participant)

    async def _audit_loop(self) -> None:
        # A loop of its own: a slow or unreachable database must not hold up the reaper.
        # While it fails (the database is down) it waits longer each time, up to a minute, and says so once a
        # minute at most: every 2 s, an outage wrote 1,800 warnings an hour.
        wait = self.audit_interval_s
        while True:
            await asyncio.sleep(wait)
            try:
                await self.audit_once()
            except Exception as exc:
                if wait == self.audit_interval_s or wait >= 60:
                    log.warning("video access check failed (next try in %.0f s): %s", min(wait * 2, 60), exc)
                wait = min(wait * 2, 60.0)
            else:
                wait = self.audit_interval_s

    async def aclose(self) -> None:
        """Stop the reaper and the access check, and close every room (shutdown). The closes run side by
        side: one after another, N calls' recordings took N mix-downs, past the container's stop timeout."""
        for task in (self._reaper, self._auditor):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._reaper = self._auditor = None
        for room_id in list(self.rooms):
            self._start_close(room_id, CloseReason.shutdown)
        await asyncio.gather(*list(self._closes.values()), return_exceptions=True)
