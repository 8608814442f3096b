"""Routes for blobs: PUT, HEAD, GET (with Range) and PATCH (resumable) at /blobs/{sha256}."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import Response, StreamingResponse

from api.deps import StreamingUser
from api.errors import BadRequest
from sync.blobs.service import Blobs, etag

router = APIRouter(prefix="/blobs", tags=["blobs"])
Sha = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex SHA-256 of the content.")]


def get_blobs(request: Request) -> Blobs:
    blobs: Blobs = request.app.state.blobs
    return blobs


BlobsDep = Annotated[Blobs, Depends(get_blobs)]


_DIGITS = re.compile(r"[0-9]+")
_HUGE = 10**18  # past any size limit and any offset: a longer number is answered as too large / mismatched


def _int_header(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    # ASCII digits only: `int` also reads 3_0, +30 and other scripts' digits.
    if not _DIGITS.fullmatch(value.strip()):
        raise BadRequest(f"{name} must be a non-negative integer.", code="invalid_header")
    digits = value.strip().lstrip("0") or "0"
    return _HUGE if len(digits) > 18 else int(digits)


BINARY: dict[str, Any] = {"application/octet-stream": {}}


@router.put("/{sha256}", status_code=201, response_class=Response,
            responses={201: {"description": "Stored."}, 200: {"description": "Already stored."}})
async def put_blob(sha256: Sha, request: Request, blobs: BlobsDep, _: StreamingUser) -> Response:
    """Upload a whole blob; 201 when new, 200 when it was already there."""
    declared = _int_header(request.headers.get("content-length"), "Content-Length")
    created = await blobs.put(sha256, request.stream(), declared)
    if created:
        await blobs.completed(sha256)
    return Response(status_code=201 if created else 200, headers={"ETag": etag(sha256)})


@router.patch("/{sha256}", status_code=204, response_class=Response,
              responses={201: {"description": "Completed and verified by this chunk."},
                         200: {"description": "The blob was already stored."}})
async def append_blob(sha256: Sha, request: Request, blobs: BlobsDep, _: StreamingUser,
                      upload_offset: Annotated[str | None, Header()] = None,
                      upload_length: Annotated[str | None, Header()] = None) -> Response:
    """Append a chunk at Upload-Offset; 204 with the new offset, 201 once complete and verified."""
    offset = _int_header(upload_offset, "Upload-Offset")
    if offset is None:
        raise BadRequest("Send the Upload-Offset header (HEAD tells where the upload stands).",
                         code="offset_required")
    length = _int_header(upload_length, "Upload-Length")
    new_offset, state = await blobs.append(sha256, offset, length, request.stream())
    if state == "completed":
        await blobs.completed(sha256)
    status = {"partial": 204, "completed": 201, "stored": 200}[state]
    return Response(status_code=status, headers={"Upload-Offset": str(new_offset)})


@router.head("/{sha256}", response_class=Response, responses={200: {"description": "Stored; its size."}})
def head_blob(sha256: Sha, blobs: BlobsDep, _: StreamingUser) -> Response:
    """200 with the size when complete; 404 otherwise, with Upload-Offset during a resumable upload."""
    size = blobs.store.claim(sha256)
    if size is not None:
        return Response(status_code=200, headers={"Content-Length": str(size), "Upload-Offset": str(size),
                                                  "ETag": etag(sha256), "Accept-Ranges": "bytes"})
    partial = blobs.partial(sha256)
    if partial is not None:
        return Response(status_code=404, media_type="application/json",
                        headers={"Upload-Offset": str(partial[0]), "Upload-Length": str(partial[1])})
    # The content type a GET's 404 would carry (HEAD answers the same headers without the body).
    return Response(status_code=404, media_type="application/json")


@router.get("/{sha256}", response_class=Response,
            responses={200: {"content": BINARY, "description": "The bytes."},
                       206: {"content": BINARY, "description": "The requested byte range."}})
def get_blob(sha256: Sha, blobs: BlobsDep, _: StreamingUser, range: Annotated[str | None, Header()] = None,
             if_range: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """The blob's bytes; one byte range (`Range: bytes=a-b`) is answered 206, unless `If-Range` names
    another entity tag (then 200 with every byte)."""
    read = blobs.read(sha256, range, if_range=if_range)
    headers = read.headers() | {"Cache-Control": "private, max-age=31536000, immutable"}
    return StreamingResponse(read.chunks, status_code=read.status_code, headers=headers,
                             media_type="application/octet-stream")
