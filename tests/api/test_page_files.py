"""The web pages' own files are served whole: a Range header is ignored, never a plain-text 400/416."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

FILES = ("/console", "/console/static/console.js", "/video", "/video/room/01a22f2a-4e54-7050-9a67-8d55f75bd628",
         "/join/not-checked-by-the-page", "/video/static/video.js")


@pytest.mark.parametrize("path", FILES)
def test_a_range_header_is_ignored(client: TestClient, path: str) -> None:
    """Regression (review): Starlette's FileResponse answered `bytes=x-y` and `items=0-1` with 400 and
    `bytes=99999999-` with 416, in plain text, outside the one error shape."""
    whole = client.get(path)
    assert whole.status_code == 200 and len(whole.content) > 100
    assert whole.headers.get("accept-ranges", "none") == "none"  # none offered (gzip answers drop the header)
    for header in ({"Range": "bytes=x-y"}, {"Range": "items=0-1"}, {"Range": "bytes=99999999-"},
                   {"Range": "bytes=0-9"}, {"Range": "bytes=0-9", "If-Range": whole.headers["etag"]}):
        r = client.get(path, headers=header)
        assert r.status_code == 200, (header, r.status_code, r.text[:80])
        assert r.content == whole.content and "content-range" not in r.headers
    head = client.head(path, headers={"Range": "bytes=x-y"})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(whole.content))
