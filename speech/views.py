"""Routes: hotline calls in, transcripts out (list, search, read, listen, correct, approve, retry)."""

from __future__ import annotations

import json
import uuid
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Request, UploadFile, status
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.deps import (
    CurrentUser,
    EngineDep,
    OfficeUser,
    PageDep,
    SessionDep,
    SettingsDep,
    StreamingUser,
    in_short_session,
)
from api.errors import NotFound, PayloadTooLarge, Unprocessable
from api.users.models import User
from speech import service
from speech.models import (
    CallMetadata,
    CallQueued,
    RevisionPublic,
    TranscriptApprove,
    TranscriptDetail,
    TranscriptsPublic,
    TranscriptState,
    TranscriptUpdate,
)
from speech.worker import lifespan, notify_queued
from sync.blobs.service import Blobs

calls_router = APIRouter(prefix="/calls", tags=["speech"])
router = APIRouter(prefix="/transcripts", tags=["speech"])


@calls_router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=CallQueued)
async def post_call(request: Request, session: SessionDep, settings: SettingsDep, user: OfficeUser,
                    audio: Annotated[UploadFile, File(description="The recording (wav, mp3, m4a, ogg, amr, webm).")],
                    metadata: Annotated[str, Form(description="JSON: caller_phone, started_at, agent, optional "
                                                             "household_id and work_order_id.")]):
    """Upload a hotline recording; it is transcribed in the background."""
    form = await request.form()  # parsed once already, for the parameters: cached
    if extra := sorted(set(form.keys()) - {"audio", "metadata"}):
        # `household_id` sent beside `metadata` instead of inside it: the call was stored without its household.
        raise Unprocessable(f"Unknown form field(s) {', '.join(map(repr, extra))}: a call takes `audio` and "
                            "`metadata` (household_id, work_order_id... go inside the metadata JSON).",
                            code="invalid_metadata")
    if repeated := [name for name in ("audio", "metadata") if len(form.getlist(name)) > 1]:
        raise Unprocessable(f"The form carries {repeated[0]!r} more than once: a call is one recording with its "
                            "metadata.", code="invalid_metadata")
    try:
        meta = CallMetadata.model_validate(json.loads(metadata))
    except RecursionError as exc:  # json gives up on deep nesting this way, not with a ValueError
        raise Unprocessable("metadata is nested too deeply to be call metadata JSON.",
                            code="invalid_metadata") from exc
    except (ValueError, ValidationError) as exc:
        raise Unprocessable(f"metadata is not valid call metadata JSON: {exc}", code="invalid_metadata") from exc
    data = await audio.read(settings.audio_max_bytes + 1)
    if len(data) > settings.audio_max_bytes:
        raise PayloadTooLarge(f"The recording is larger than {settings.audio_max_bytes} bytes.")
    # Storing (fsync), probing and committing block, and a defer may wait on PostgreSQL: off the event loop,
    # which otherwise stood still for every other request while SQLite's write lock was held elsewhere.
    def store() -> CallQueued:
        transcript = service.create_call(session=session, settings=settings, user=user, metadata=meta, audio=data)
        notify_queued(request.app.state, transcript.id)
        return CallQueued(id=transcript.id, status=transcript.status)

    return await run_in_threadpool(store)


@router.get("", response_model=TranscriptsPublic)
def list_transcripts(session: SessionDep, settings: SettingsDep, user: CurrentUser, page: PageDep,
                     status: TranscriptState | None = None, category: str | None = None,
                     date_from: date | None = None, date_to: date | None = None, steward_id: uuid.UUID | None = None,
                     work_order_id: uuid.UUID | None = None,
                     q: Annotated[str | None, Query(json_schema_extra={"maxLength": 200})] = None):
    rows, count = service.list_transcripts(session=session, settings=settings, user=user, page=page, status=status,
                                           category=category, date_from=date_from, date_to=date_to,
                                           steward_id=steward_id, work_order_id=work_order_id, q=q)
    return {"data": service.present_page(session, user, rows), "count": count}


@router.get("/{id}", response_model=TranscriptDetail)
def get_transcript(id: uuid.UUID, session: SessionDep, user: CurrentUser):
    return service.present(session, user, service.get(session=session, user=user, id=id), detail=True)


# What `_sniff` can answer, for the OpenAPI document.
AUDIO: dict[str, Any] = {t: {} for t in ("audio/wav", "audio/ogg", "audio/mpeg", "audio/amr", "audio/webm", "audio/mp4",
                                         "application/octet-stream")}


@router.get("/{id}/audio", response_class=Response,
            responses={200: {"content": AUDIO, "description": "The recording."},
                       206: {"content": AUDIO, "description": "The requested byte range."}})
async def get_audio(id: uuid.UUID, request: Request, engine: EngineDep, user: StreamingUser,
                    range: Annotated[str | None, Header()] = None,
                    if_range: Annotated[str | None, Header()] = None) -> Response:
    """The recording; `Range: bytes=...` is honoured so a player can start from a segment (unless `If-Range`
    names another entity tag). The database is read in a short session of its own: a slow listener holds no
    connection while the bytes flow."""
    return await _audio(id, request, engine, user, range, if_range, body=True)


@router.head("/{id}/audio", response_class=Response, include_in_schema=False)
async def head_audio(id: uuid.UUID, request: Request, engine: EngineDep, user: StreamingUser,
                     range: Annotated[str | None, Header()] = None,
                     if_range: Annotated[str | None, Header()] = None) -> Response:
    """GET's status and headers without the body: players and download tools ask for the size first."""
    return await _audio(id, request, engine, user, range, if_range, body=False)


async def _audio(id: uuid.UUID, request: Request, engine: Engine, user: User, range: str | None,
                 if_range: str | None, *, body: bool) -> Response:
    from api.notes.models import Note

    def find(session: Session) -> Note | None:
        transcript = service.get(session=session, user=user, id=id)
        return session.get(Note, transcript.id)

    note = await in_short_session(request, engine, find)
    blobs: Blobs = request.app.state.blobs
    size = blobs.store.exists(note.audio_sha256) if note else None
    if note is None or size is None:
        raise NotFound("The recording's audio has not been uploaded yet.", code="audio_missing")
    media_type, suffix = _sniff(b"".join(blobs.store.open_range(note.audio_sha256, 0, min(size, 12) - 1)))
    # The blob store answers the range: a malformed one is ignored, an unsatisfiable one is a 416 in the one
    # error shape (Starlette's FileResponse answered both in plain text).
    read = blobs.read(note.audio_sha256, range, if_range=if_range, body=body)
    headers = read.headers() | {"Content-Disposition": f'attachment; filename="{id}{suffix}"'}
    if not body:
        return Response(status_code=read.status_code, headers=headers, media_type=media_type)
    return StreamingResponse(read.chunks, status_code=read.status_code, headers=headers, media_type=media_type)


@router.patch("/{id}", response_model=TranscriptDetail)
def patch_transcript(id: uuid.UUID, data: TranscriptUpdate, session: SessionDep, settings: SettingsDep,
                     user: OfficeUser):
    """Correct segment texts (supervisors); each edit is kept in the revision history."""
    transcript = service.get(session=session, user=user, id=id)
    transcript = service.update(session=session, settings=settings, user=user, transcript=transcript, data=data)
    return service.present(session, user, transcript, detail=True)


@router.get("/{id}/revisions", response_model=list[RevisionPublic])
def list_revisions(id: uuid.UUID, session: SessionDep, user: CurrentUser):
    transcript = service.get(session=session, user=user, id=id)
    return service.present_revisions(session=session, user=user, transcript=transcript)


@router.post("/{id}/approve", response_model=TranscriptDetail)
def approve_transcript(id: uuid.UUID, session: SessionDep, user: OfficeUser, body: TranscriptApprove | None = None):
    """Mark it reviewed; with `base_revision`, only if that is still the text (409 `stale_revision`)."""
    transcript = service.approve(session=session, user=user, transcript=service.get(session=session, user=user, id=id),
                                 base_revision=body.base_revision if body is not None else None)
    return service.present(session, user, transcript, detail=True)


@router.post("/{id}/retry", response_model=TranscriptDetail)
def retry_transcript(id: uuid.UUID, request: Request, session: SessionDep, user: OfficeUser):
    """Queue a failed transcript again (supervisors), with a fresh count of attempts."""
    transcript = service.retry(session=session, user=user, transcript=service.get(session=session, user=user, id=id))
    notify_queued(request.app.state, transcript.id)
    return service.present(session, user, transcript, detail=True)


_SIGNATURES = ((b"RIFF", "audio/wav", ".wav"), (b"OggS", "audio/ogg", ".ogg"), (b"ID3", "audio/mpeg", ".mp3"),
               (b"#!AMR", "audio/amr", ".amr"), (b"\x1aE\xdf\xa3", "audio/webm", ".webm"))


def _sniff(head: bytes) -> tuple[str, str]:
    """Media type and file suffix from the recording's first 12 bytes (blobs are stored without a name)."""
    for magic, media_type, suffix in _SIGNATURES:
        if head.startswith(magic):
            return media_type, suffix
    if head[4:8] == b"ftyp":
        return "audio/mp4", ".m4a"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # an MPEG audio frame: MP3 without ID3
        return ("audio/aac", ".aac") if head[1] & 0x06 == 0 else ("audio/mpeg", ".mp3")
    return "application/octet-stream", ""


# What api/app.py includes: both routers, and the lifespan that runs the embedded worker.
speech_router = APIRouter(lifespan=lifespan)
speech_router.include_router(calls_router)
speech_router.include_router(router)
