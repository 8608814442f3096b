"""Blobs: hash-verified upload, idempotent PUT, ranged GET, resumable PATCH, size limit."""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.app import create_app
from api.settings import Settings
from tests.sync.conftest import District

URL = "/api/v1/blobs/{}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def photo() -> bytes:
    return os.urandom(300_000)


@pytest.fixture
def headers(district: District) -> dict[str, str]:
    return district.headers(district.steward1)


def test_put_verifies_the_hash_and_is_idempotent(client: TestClient, headers: dict[str, str], photo: bytes) -> None:
    sha = _sha(photo)
    assert client.head(URL.format(sha), headers=headers).status_code == 404
    assert client.put(URL.format(sha), content=photo, headers=headers).status_code == 201
    assert client.put(URL.format(sha), content=photo, headers=headers).status_code == 200
    head = client.head(URL.format(sha), headers=headers)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(photo))
    got = client.get(URL.format(sha), headers=headers)
    assert got.status_code == 200 and got.content == photo
    assert got.headers["etag"] == f'"{sha}"'


def test_a_body_that_does_not_match_its_name_is_refused(client: TestClient, headers: dict[str, str],
                                                        photo: bytes, settings: Settings) -> None:
    wrong = _sha(b"something else")
    response = client.put(URL.format(wrong), content=photo, headers=headers)
    assert response.status_code == 400
    assert response.json()["detail"]["code"] == "hash_mismatch"
    assert client.head(URL.format(wrong), headers=headers).status_code == 404
    assert client.get(URL.format(wrong), headers=headers).status_code == 404
    leftovers = [p for p in (settings.data_dir / "blobs").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []


def test_ranges_are_served(client: TestClient, headers: dict[str, str], photo: bytes) -> None:
    sha = _sha(photo)
    client.put(URL.format(sha), content=photo, headers=headers)
    for header, (start, end) in {"bytes=0-99": (0, 99), "bytes=1000-": (1000, len(photo) - 1),
                                 "bytes=-500": (len(photo) - 500, len(photo) - 1),
                                 f"bytes=299990-{10**9}": (299_990, len(photo) - 1),
                                 "bytes=0-": (0, len(photo) - 1)}.items():  # a player's first ask: 206 too
        got = client.get(URL.format(sha), headers=headers | {"Range": header})
        assert got.status_code == 206, header
        assert got.content == photo[start:end + 1]
        assert got.headers["content-range"] == f"bytes {start}-{end}/{len(photo)}"
    bad = client.get(URL.format(sha), headers=headers | {"Range": f"bytes={len(photo)}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(photo)}"
    # a multi-range or malformed header is ignored: the whole blob
    assert client.get(URL.format(sha), headers=headers | {"Range": "bytes=0-1,5-9"}).content == photo
    assert client.get(URL.format(sha), headers=headers | {"Range": "lines=1-2"}).status_code == 200


def test_a_range_with_an_if_range_of_other_bytes_gets_the_whole_blob(client: TestClient, headers: dict[str, str],
                                                                    photo: bytes) -> None:
    """Regression: `If-Range` was ignored, so a client resuming a download of other bytes (another tag, a weak
    one, a date) got a 206 to splice onto them; RFC 9110 says the whole representation, 200."""
    sha = _sha(photo)
    client.put(URL.format(sha), content=photo, headers=headers)
    for validator in ('"not-the-etag"', f'W/"{sha}"', "Sat, 05 Dec 2026 05:00:00 GMT", f'"{_sha(b"other")}"'):
        got = client.get(URL.format(sha), headers=headers | {"Range": "bytes=0-9", "If-Range": validator})
        assert got.status_code == 200 and got.content == photo, validator
        assert "content-range" not in got.headers, validator
    same = client.get(URL.format(sha), headers=headers | {"Range": "bytes=0-9", "If-Range": f'"{sha}"'})
    assert same.status_code == 206 and same.content == photo[:10]


def _chunks(data: bytes, size: int) -> Iterator[tuple[int, bytes]]:
    for start in range(0, len(data), size):
        yield start, data[start:start + size]


def test_a_partial_upload_resumes_where_it_stopped(client: TestClient, headers: dict[str, str],
                                                   photo: bytes) -> None:
    sha = _sha(photo)
    chunks = list(_chunks(photo, 64_000))
    first = client.patch(URL.format(sha), content=chunks[0][1],
                         headers=headers | {"Upload-Offset": "0", "Upload-Length": str(len(photo))})
    assert first.status_code == 204 and first.headers["upload-offset"] == "64000"
    client.patch(URL.format(sha), content=chunks[1][1], headers=headers | {"Upload-Offset": "64000"})
    # the link drops; the device asks where the upload stands
    head = client.head(URL.format(sha), headers=headers)
    assert head.status_code == 404  # not readable until complete
    assert head.headers["upload-offset"] == "128000" and head.headers["upload-length"] == str(len(photo))
    assert client.get(URL.format(sha), headers=headers).status_code == 404
    # resending an old chunk is refused with the right offset
    stale = client.patch(URL.format(sha), content=chunks[1][1], headers=headers | {"Upload-Offset": "64000"})
    assert stale.status_code == 409 and stale.headers["upload-offset"] == "128000"
    assert stale.json()["detail"]["code"] == "offset_mismatch"
    for offset, chunk in chunks[2:]:
        response = client.patch(URL.format(sha), content=chunk, headers=headers | {"Upload-Offset": str(offset)})
    assert response.status_code == 201
    assert client.get(URL.format(sha), headers=headers).content == photo
    again = client.patch(URL.format(sha), content=b"", headers=headers | {"Upload-Offset": "0"})
    assert again.status_code == 200 and again.headers["upload-offset"] == str(len(photo))


def test_a_resumable_upload_with_wrong_bytes_is_discarded(client: TestClient, headers: dict[str, str],
                                                          photo: bytes) -> None:
    sha = _sha(photo)
    corrupted = photo[:-1] + bytes([photo[-1] ^ 1])
    client.patch(URL.format(sha), content=corrupted[:1000],
                 headers=headers | {"Upload-Offset": "0", "Upload-Length": str(len(photo))})
    last = client.patch(URL.format(sha), content=corrupted[1000:], headers=headers | {"Upload-Offset": "1000"})
    assert last.status_code == 400 and last.json()["detail"]["code"] == "hash_mismatch"
    assert "upload-offset" not in client.head(URL.format(sha), headers=headers).headers
    # starting over at offset 0 works
    client.patch(URL.format(sha), content=photo, headers=headers | {"Upload-Offset": "0",
                                                                    "Upload-Length": str(len(photo))})
    assert client.get(URL.format(sha), headers=headers).content == photo


def test_resumable_upload_needs_its_headers(client: TestClient, headers: dict[str, str], photo: bytes) -> None:
    sha = _sha(photo)
    assert client.patch(URL.format(sha), content=photo, headers=headers).json()["detail"]["code"] == \
        "offset_required"
    no_length = client.patch(URL.format(sha), content=photo, headers=headers | {"Upload-Offset": "0"})
    assert no_length.status_code == 400 and no_length.json()["detail"]["code"] == "length_required"
    too_much = client.patch(URL.format(sha), content=photo + b"x",
                            headers=headers | {"Upload-Offset": "0", "Upload-Length": str(len(photo))})
    assert too_much.status_code == 400 and too_much.json()["detail"]["code"] == "length_exceeded"
    assert client.patch(URL.format(sha), content=b"", headers=headers | {"Upload-Offset": "-3"}).status_code == 400
    # Regression: `int` read these as numbers (3_0 as 30); they are not the plain digits the header takes.
    for value in ("3_0", "+30", "1e3", " 3 0"):
        odd = client.patch(URL.format(sha), content=photo, headers=headers | {"Upload-Offset": "0",
                                                                              "Upload-Length": value})
        assert odd.status_code == 400 and odd.json()["detail"]["code"] == "invalid_header", value


def test_blobs_over_the_size_limit_are_refused(settings: Settings, engine: Engine, district: District) -> None:
    small = settings.model_copy(update={"blob_max_bytes": 1000, "max_body_bytes": 1024})
    data = os.urandom(1001)
    sha = _sha(data)
    headers = district.headers(district.steward1)
    with TestClient(create_app(small, engine=engine)) as client:
        response = client.put(URL.format(sha), content=data, headers=headers)
        assert response.status_code == 413 and response.json()["detail"]["code"] == "payload_too_large"

        def stream() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
            yield data[:600]
            yield data[600:]

        assert client.put(URL.format(sha), content=stream(), headers=headers).status_code == 413
        declared = client.patch(URL.format(sha), content=b"",
                                headers=headers | {"Upload-Offset": "0", "Upload-Length": "1001"})
        assert declared.status_code == 413
        # the blob limit, not the JSON body limit (1 KiB here), applies to blobs
        ok = data[:1000]
        assert client.put(URL.format(_sha(ok)), content=ok, headers=headers).status_code == 201
        assert client.head(URL.format(sha), headers=headers).status_code == 404


def test_blobs_need_a_signed_in_user_and_a_hash_name(client: TestClient, headers: dict[str, str]) -> None:
    sha = _sha(b"x")
    assert client.put(URL.format(sha), content=b"x").status_code == 401
    assert client.get(URL.format(sha)).status_code == 401
    assert client.put(URL.format("ABC"), content=b"x", headers=headers).status_code == 422
    assert client.get(URL.format(sha.upper()), headers=headers).status_code == 422


def test_openapi_documents_what_blob_routes_answer(client: TestClient, headers: dict[str, str]) -> None:
    """Regression (found by the fuzz tests): GET was documented as JSON but answers bytes; PUT's 200 for a
    blob already stored was undocumented; HEAD's 404 carried no content type while the 4xx are documented
    as JSON."""
    paths = client.get("/openapi.json").json()["paths"]["/api/v1/blobs/{sha256}"]
    assert set(paths["get"]["responses"]["200"]["content"]) == {"application/octet-stream"}
    assert set(paths["get"]["responses"]["206"]["content"]) == {"application/octet-stream"}
    assert {"200", "201"} <= set(paths["put"]["responses"])
    missing = client.head(URL.format("0" * 64), headers=headers)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"


def test_blobs_go_as_stored_even_to_clients_that_accept_gzip(client: TestClient, headers: dict[str, str]) -> None:
    """A blob's bytes and ranges are those of the stored file (a resumed download asks for byte ranges of
    it), also for a blob that would compress well; an upload that says it is encoded is refused."""
    text = b"reading 18.5C; " * 20_000
    sha = _sha(text)
    assert client.put(URL.format(sha), content=text, headers=headers).status_code == 201
    whole = client.get(URL.format(sha), headers=headers | {"accept-encoding": "gzip"})
    assert whole.status_code == 200 and "content-encoding" not in whole.headers
    assert whole.headers["content-length"] == str(len(text)) and whole.content == text
    part = client.get(URL.format(sha), headers=headers | {"accept-encoding": "gzip", "Range": "bytes=100-199"})
    assert part.status_code == 206 and "content-encoding" not in part.headers and part.content == text[100:200]
    other = b"signature " * 1000
    r = client.put(URL.format(_sha(other)), content=gzip.compress(other),
                   headers=headers | {"content-encoding": "gzip"})
    assert r.status_code == 415 and r.json()["detail"]["code"] == "unsupported_encoding"
    assert client.head(URL.format(_sha(other)), headers=headers).status_code == 404


def test_listeners_hear_of_each_upload_that_completes_a_blob(client: TestClient, headers: dict[str, str],
                                                             photo: bytes) -> None:
    """A whole PUT and the last chunk of a resumable upload complete a blob; a repeated PUT, a chunk short of
    the end and a refused body do not. A listener that fails is logged and the upload still succeeds."""
    heard: list[str] = []
    blobs = client.app.state.blobs  # type: ignore[attr-defined]

    def failing(sha256: str) -> None:
        raise RuntimeError("listener down")

    blobs.listeners += [failing, heard.append]
    try:
        whole = hashlib.sha256(photo).hexdigest()
        assert client.put(URL.format(whole), content=photo, headers=headers).status_code == 201
        assert client.put(URL.format(whole), content=photo, headers=headers).status_code == 200
        assert client.put(URL.format("0" * 64), content=photo, headers=headers).status_code == 400
        resumed = photo[::-1]
        sha = hashlib.sha256(resumed).hexdigest()
        first = client.patch(URL.format(sha), content=resumed[:1000],
                             headers=headers | {"Upload-Offset": "0", "Upload-Length": str(len(resumed))})
        assert first.status_code == 204 and heard == [whole]
        last = client.patch(URL.format(sha), content=resumed[1000:], headers=headers | {"Upload-Offset": "1000"})
        assert last.status_code == 201
    finally:
        del blobs.listeners[-2:]
    assert heard == [whole, sha]


def test_a_full_disk_is_503_storage_full_and_leaves_nothing(client: TestClient, headers: dict[str, str],
                                                            photo: bytes, settings: Settings,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): an OSError from the disk (full, or remounted read-only) was a 500; the device
    must keep the photo and retry later, as for any 503."""
    import errno

    def full(self: object, sha256: str, path: os.PathLike[str]) -> None:  # the local disk, or the staging
        raise OSError(errno.ENOSPC, "No space left on device")              # area before the bucket

    monkeypatch.setattr(type(client.app.state.blobs.store), "store", full)  # type: ignore[attr-defined]
    sha = _sha(photo)
    r = client.put(URL.format(sha), content=photo, headers=headers)
    assert r.status_code == 503 and r.headers["retry-after"] == "300"
    assert r.json()["detail"]["code"] == "storage_full"
    monkeypatch.undo()
    assert client.head(URL.format(sha), headers=headers).status_code == 404
    leftovers = [p for p in (settings.data_dir / "blobs").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []
    assert client.put(URL.format(sha), content=photo, headers=headers).status_code == 201  # space freed: retried


def test_an_upload_offset_or_length_too_long_for_any_file_is_answered_as_such(client: TestClient,
                                                                             headers: dict[str, str]) -> None:
    """Regression (review): a number of 19 digits or more was `400 invalid_header` ("must be a non-negative
    integer", which it is). A far offset is a wrong one (409 with the offset to resume from); a declared length
    past every limit is 413."""
    data = b"x" * 100
    url = f"/api/v1/blobs/{_sha(data)}"
    assert client.patch(url, content=data[:10], headers=headers | {"Upload-Offset": "0",
                                                                     "Upload-Length": "100"}).status_code == 204
    far = client.patch(url, content=data[10:], headers=headers | {"Upload-Offset": "9" * 19})
    assert far.status_code == 409 and far.headers["Upload-Offset"] == "10", far.text
    padded = client.patch(url, content=data[10:], headers=headers | {"Upload-Offset": "0" * 20 + "10"})
    assert padded.status_code == 201, padded.text  # leading zeros are still the number; the upload is complete
    assert client.get(url, headers=headers).content == data
    huge = client.patch(f"/api/v1/blobs/{'f' * 64}", content=b"x",
                        headers=headers | {"Upload-Offset": "0", "Upload-Length": "9" * 19})
    assert huge.status_code == 413 and huge.json()["detail"]["code"] == "payload_too_large", huge.text
