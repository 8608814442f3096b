"""The video pages' handlers: the lobby, room and join pages get the console's kind of headers (they share
its origin and its token in sessionStorage), and their scripts are files the CSP allows, never inline."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

PAGES = ("/video", "/video/room/01a22f2a-4e54-7050-9a67-8d55f75bd628", "/join/not-checked-by-the-page")


def test_the_pages_forbid_framing_and_any_script_but_their_own(client: TestClient) -> None:
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        csp = dict(part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";"))
        assert csp["script-src"] == "'self'" and csp["frame-ancestors"] == "'none'", csp
        assert csp["connect-src"] == "'self'" and "mediastream:" in csp["media-src"].split(), csp
        assert "unsafe" not in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer" and r.headers["cache-control"] == "no-store"
        assert r.headers["x-content-type-options"] == "nosniff"


def test_every_script_of_the_pages_is_a_served_file(client: TestClient) -> None:
    for path in PAGES:
        html = client.get(path).text
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
        assert len(scripts) == 2, path  # the shared client, then the page's own
        for attrs, body in scripts:
            assert body.strip() == "", f"inline script in {path}"
            src = re.search(r'src="([^"]+)"', attrs)
            assert src is not None and src.group(1).startswith("/video/static/"), attrs
            js = client.get(src.group(1))
            assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript"), src
            assert js.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r"\son[a-z]+\s*=", html), f"inline event handler in {path}"


def test_an_unknown_asset_is_a_404(client: TestClient) -> None:
    assert client.get("/video/static/nope.js").status_code == 404
    assert client.get("/video/static/room.html").status_code == 404


def test_head_of_a_page_answers_like_get_without_a_body(client: TestClient) -> None:
    """Uptime checkers and proxies probe pages with HEAD; it used to answer 405."""
    for path in (*PAGES, "/video/static/join.js"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers["content-length"] == str(len(got.content)), path


def test_a_room_link_with_a_mangled_id_still_gets_the_page(client: TestClient) -> None:
    """Regression: a room link cut short in a chat answered a raw JSON 422; the page now loads and shows the
    API's answer for that id (the API keeps its 422 in the one error shape)."""
    r = client.get("/video/room/01a22f2a-4e54-7050")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'src="/video/static/room.js"' in r.text
