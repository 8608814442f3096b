"""The web pages' own files (the console, the video lobby, room and join pages), served whole."""

from __future__ import annotations

import os
from collections.abc import Mapping

from starlette.responses import FileResponse
from starlette.types import Receive, Scope, Send


class PageFile(FileResponse):
    """A page or script served whole, ignoring `Range` and `If-Range`. Starlette's `FileResponse` answers a
    malformed range (`bytes=x-y`, another unit, which RFC 9110 says to ignore) with a 400 and an
    unsatisfiable one with a 416, both in plain text, outside the service's one error shape; a few
    kilobytes of page gain nothing from ranges, so none are offered (`Accept-Ranges: none`)."""

    def __init__(self, path: str | os.PathLike[str], *, media_type: str, headers: Mapping[str, str]) -> None:
        super().__init__(path, media_type=media_type, headers={**headers, "Accept-Ranges": "none"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(name, value) for name, value in scope.get("headers", ()) if name not in (b"range", b"if-range")]
        await super().__call__({**scope, "headers": headers}, receive, send)
