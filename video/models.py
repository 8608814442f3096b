"""Video rooms and their snapshots (tables), and the request/response schemas of the video API."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal

from sqlalchemy import Index, text
from sqlmodel import Field, SQLModel

from api.db import new_id, ts_field
from api.schemas import RequestBody


class RoomState(StrEnum):
    open = "open"
    closed = "closed"


class Role(StrEnum):
    """What a participant does in a room: the resident shows the radiator, the steward guides, a
    supervisor watches."""

    resident = "resident"
    steward = "steward"
    supervisor = "supervisor"


class RelayMode(StrEnum):
    """How the relay gets a publisher's media to subscribers (STEWARD_VIDEO_RELAY_MODE)."""

    forward = "forward"  # encoded frames as they came (decoding only for the recorder, snapshots, other codecs)
    transcode = "transcode"  # decode once, encode again (once shared, or per subscriber)


class CloseReason(StrEnum):
    closed = "closed"  # someone closed it through the API, or its work order was closed or cancelled
    empty = "empty"  # nobody connected for STEWARD_VIDEO_ROOM_IDLE_CLOSE_S (since the last leave or link)
    max_duration = "max_duration"
    shutdown = "shutdown"  # the relay process stopped with the room open
    lost = "lost"  # found open at start: its relay process died


class VideoRoom(SQLModel, table=True):
    """A call about one work order. Media state lives in the relay process named by `worker`."""

    __tablename__ = "video_rooms"
    # One open room per work order, also when two requests open it at once (the second gets the first's).
    __table_args__ = (Index("uq_video_rooms_open_work_order", "work_order_id", unique=True,
                            sqlite_where=text("state = 'open'"), postgresql_where=text("state = 'open'")),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    work_order_id: uuid.UUID = Field(foreign_key="work_orders.id", index=True, ondelete="CASCADE")
    created_by_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    state: RoomState = Field(default=RoomState.open, index=True)
    worker: str = Field(default="", max_length=200, index=True)
    worker_url: str = Field(default="", max_length=500)  # where that worker is reached directly
    created_at: datetime = ts_field(default_now=True)
    expires_at: datetime = ts_field()
    closed_at: datetime | None = ts_field(nullable=True)
    close_reason: CloseReason | None = None
    recording_note_id: uuid.UUID | None = Field(default=None, foreign_key="notes.id", ondelete="SET NULL")


class VideoSnapshot(SQLModel, table=True):
    """A JPEG of the resident's camera, kept as evidence on the work order (image in the blob store)."""

    __tablename__ = "video_snapshots"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    room_id: uuid.UUID = Field(foreign_key="video_rooms.id", index=True, ondelete="CASCADE")
    work_order_id: uuid.UUID = Field(foreign_key="work_orders.id", index=True, ondelete="CASCADE")
    sha256: str = Field(max_length=64, index=True)
    width: int
    height: int
    size_bytes: int
    taken_by_id: uuid.UUID | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    taken_at: datetime = ts_field(default_now=True)


# --- schemas ---------------------------------------------------------------------------------------------


class RoomCreate(RequestBody):
    work_order_id: uuid.UUID


class IceServer(SQLModel):
    """One entry of `RTCConfiguration.iceServers`, as browsers take it."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class RoomCreated(SQLModel):
    room_id: uuid.UUID
    join_url: str
    sms_text: str
    expires_at: datetime  # when the join link stops working
    room_expires_at: datetime
    ice_servers: list[IceServer]
    relay_url: str  # base URL of the relay worker hosting the room ("" means this one)


class ParticipantPublic(SQLModel):
    id: uuid.UUID
    role: Role
    user_id: uuid.UUID | None
    state: str  # the peer connection's state: new, connecting, connected...
    joined_at: datetime
    connected_at: datetime | None


class RoomPublic(SQLModel):
    id: uuid.UUID
    work_order_id: uuid.UUID
    state: RoomState
    worker: str
    worker_url: str
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None
    close_reason: CloseReason | None
    recording_note_id: uuid.UUID | None
    participants: list[ParticipantPublic]
    ice_servers: list[IceServer]


class JoinInfo(SQLModel):
    """What the resident page needs before it asks for the camera."""

    room_id: uuid.UUID
    state: RoomState
    expires_at: datetime
    ice_servers: list[IceServer]
    relay_url: str


class ConnectRequest(RequestBody):
    sdp: str = Field(min_length=1, max_length=64 * 1024)
    type: Literal["offer"]
    role: Role | None = None  # defaults from the credential: resident for a join token, else steward


class ConnectAnswer(SQLModel):
    sdp: str
    type: Literal["answer"] = "answer"
    participant_id: uuid.UUID


class SnapshotPublic(SQLModel):
    id: uuid.UUID
    room_id: uuid.UUID
    work_order_id: uuid.UUID
    sha256: str
    width: int
    height: int
    size_bytes: int
    taken_by_id: uuid.UUID | None
    taken_at: datetime
