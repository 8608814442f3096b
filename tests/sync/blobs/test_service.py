"""Uploads as a weak link delivers them: chunks that stall, senders that vanish mid-body, chunks that overrun
the declared length, and the byte ranges a reader may ask for. Against the service itself (local store), so
each request's body can be held back or cut exactly where the test wants."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.requests import ClientDisconnect

from api.errors import BadRequest, Conflict
from sync.blobs.service import Blobs, ClientGone, OffsetMismatch, RangeNotSatisfiable, _locked, parse_range
from sync.blobs.storage import LocalBlobStore

DATA = os.urandom(1000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def blobs(tmp_path: Path) -> Blobs:
    return Blobs(store=LocalBlobStore(tmp_path / "store"), staging=tmp_path / "staging", max_bytes=10_000)


async def body(*parts: bytes, hold: asyncio.Event | None = None, vanish: bool = False,
               delivered: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """The parts, then (with `hold`) silence until it is set, then the end or (with `vanish`) a dropped link.
    `delivered` is set once the parts are read (the request is past its checks, waiting on the network)."""
    for part in parts:
        yield part
    if delivered is not None:
        delivered.set()
    if hold is not None:
        await hold.wait()
    if vanish:
        raise ClientDisconnect()


def leftovers(blobs: Blobs) -> list[str]:
    return sorted(p.name for p in (blobs.staging / "tmp").iterdir())


def test_a_chunk_stalled_on_a_dead_link_blocks_no_retry(blobs: Blobs) -> None:
    async def scenario() -> None:
        hold = asyncio.Event()
        stalled = asyncio.create_task(blobs.append(SHA, 0, len(DATA), body(DATA[:300], hold=hold, vanish=True)))
        await asyncio.sleep(0.05)  # the stalled request has its 300 bytes and waits for more
        assert await blobs.append(SHA, 0, len(DATA), body(DATA[:600])) == (600, "partial")  # the retry
        assert await blobs.append(SHA, 600, None, body(DATA[600:])) == (1000, "completed")
        hold.set()  # the dead link is finally noticed
        with pytest.raises((ClientGone, Conflict)):
            await stalled
        assert blobs.store.exists(SHA) == 1000 and blobs.partial(SHA) is None

    asyncio.run(scenario())
    assert leftovers(blobs) == []


def test_a_late_chunk_at_an_offset_the_upload_has_left_is_dropped(blobs: Blobs) -> None:
    async def scenario() -> None:
        await blobs.append(SHA, 0, len(DATA), body(DATA[:300]))
        hold = asyncio.Event()
        late = asyncio.create_task(blobs.append(SHA, 300, None, body(DATA[300:500], hold=hold)))
        await asyncio.sleep(0.05)
        assert await blobs.append(SHA, 300, None, body(DATA[300:700])) == (700, "partial")
        hold.set()
        with pytest.raises(OffsetMismatch) as refused:
            await late
        assert refused.value.headers == {"Upload-Offset": "700"}
        assert blobs.partial(SHA) == (700, 1000)

    asyncio.run(scenario())
    assert leftovers(blobs) == []


def test_a_late_first_chunk_does_not_rewind_the_upload(blobs: Blobs) -> None:
    """Regression (review): a first chunk that arrived whole after the device's retry had moved the upload on
    replaced the upload with its own bytes (only one whose sender vanished was dropped), and the device's next
    chunk was refused: it had to send everything again."""
    async def scenario() -> None:
        hold, delivered = asyncio.Event(), asyncio.Event()
        late = asyncio.create_task(blobs.append(SHA, 0, len(DATA), body(DATA[:300], hold=hold, delivered=delivered)))
        await asyncio.wait_for(delivered.wait(), 30)
        assert await blobs.append(SHA, 0, len(DATA), body(DATA[:300])) == (300, "partial")  # the device's retry
        assert await blobs.append(SHA, 300, None, body(DATA[300:800])) == (800, "partial")
        hold.set()
        with pytest.raises(OffsetMismatch) as refused:
            await late
        assert refused.value.headers == {"Upload-Offset": "800"}
        assert blobs.partial(SHA) == (800, 1000)
        assert await blobs.append(SHA, 800, None, body(DATA[800:])) == (1000, "completed")

    asyncio.run(scenario())
    assert leftovers(blobs) == []


def test_a_first_chunk_again_restarts_an_upload_nobody_moved_on(blobs: Blobs) -> None:
    async def scenario() -> None:
        assert await blobs.append(SHA, 0, len(DATA), body(DATA[:500])) == (500, "partial")
        assert await blobs.append(SHA, 0, len(DATA), body(DATA[:200])) == (200, "partial")
        assert blobs.partial(SHA) == (200, 1000)
        assert await blobs.append(SHA, 200, None, body(DATA[200:])) == (1000, "completed")

    asyncio.run(scenario())


def test_the_bytes_of_a_sender_that_vanished_are_kept_for_the_resume(blobs: Blobs) -> None:
    async def scenario() -> None:
        with pytest.raises(ClientGone):
            await blobs.append(SHA, 0, len(DATA), body(DATA[:300], vanish=True))
        assert blobs.partial(SHA) == (300, 1000)  # what HEAD answers
        with pytest.raises(ClientGone):
            await blobs.append(SHA, 300, None, body(DATA[300:450], vanish=True))
        assert blobs.partial(SHA) == (450, 1000)
        assert await blobs.append(SHA, 450, None, body(DATA[450:])) == (1000, "completed")

    asyncio.run(scenario())
    assert blobs.store.exists(SHA) == 1000 and leftovers(blobs) == []


def test_a_chunk_that_overruns_the_declared_length_leaves_the_upload_as_it_was(blobs: Blobs) -> None:
    async def scenario() -> None:
        await blobs.append(SHA, 0, len(DATA), body(DATA[:400]))
        with pytest.raises(BadRequest) as refused:
            await blobs.append(SHA, 400, None, body(DATA[400:700], DATA[700:] + b"extra"))
        assert refused.value.code == "length_exceeded"
        assert blobs.partial(SHA) == (400, 1000)  # none of the refused chunk was appended
        assert await blobs.append(SHA, 400, None, body(DATA[400:])) == (1000, "completed")

    asyncio.run(scenario())
    assert leftovers(blobs) == []


def test_a_later_chunk_may_not_change_the_declared_length(blobs: Blobs) -> None:
    async def scenario() -> None:
        await blobs.append(SHA, 0, len(DATA), body(DATA[:400]))
        with pytest.raises(Conflict) as refused:
            await blobs.append(SHA, 400, 2000, body(DATA[400:]))
        assert refused.value.code == "length_mismatch"
        assert await blobs.append(SHA, 400, len(DATA), body(DATA[400:])) == (1000, "completed")  # same: fine

    asyncio.run(scenario())


def test_a_whole_upload_removes_a_partial_one_of_the_same_bytes(blobs: Blobs) -> None:
    async def scenario() -> None:
        await blobs.append(SHA, 0, len(DATA), body(DATA[:400]))
        assert await blobs.put(SHA, body(DATA), len(DATA)) is True
        assert blobs.partial(SHA) is None
        assert not any((blobs.staging / "partial").iterdir())
        assert await blobs.append(SHA, 400, None, body(DATA[400:])) == (1000, "stored")

    asyncio.run(scenario())


@pytest.mark.parametrize("then", ["patch", "put"])
def test_a_whole_upload_while_a_chunk_is_appended_leaves_no_partial_upload(
        blobs: Blobs, monkeypatch: pytest.MonkeyPatch, then: str) -> None:
    """Regression (review): a PUT that stored the blob while a chunk of its resumable upload was being
    appended could not remove the upload (its lock was held), and nothing removed it later: the next chunk or
    PUT answered "already stored" and the partial file stayed until it expired a week later."""
    import threading

    from sync.blobs import service

    appending, release = threading.Event(), threading.Event()
    append_file = service._append_file

    def held_append(data: Path, chunk: Path) -> None:  # a large chunk being written (a busy disk)
        appending.set()
        release.wait(30)
        append_file(data, chunk)

    monkeypatch.setattr(service, "_append_file", held_append)

    async def scenario() -> None:
        await blobs.append(SHA, 0, len(DATA), body(DATA[:300]))
        chunk = asyncio.create_task(blobs.append(SHA, 300, None, body(DATA[300:600])))
        assert await asyncio.to_thread(appending.wait, 30)
        assert await blobs.put(SHA, body(DATA), len(DATA)) is True  # while the chunk holds the upload's lock
        release.set()
        assert await chunk == (600, "partial")
        if then == "patch":
            assert await blobs.append(SHA, 600, None, body(DATA[600:])) == (1000, "stored")
        else:
            assert await blobs.put(SHA, body(DATA), len(DATA)) is False

    asyncio.run(scenario())
    assert blobs.partial(SHA) is None and list((blobs.staging / "partial").iterdir()) == []


def test_a_chunk_that_finds_its_blob_stored_leaves_no_files(blobs: Blobs) -> None:
    """Regression (review): a chunk whose blob another request completed while its body arrived answered
    "already stored" and left the upload's lock file behind."""
    async def scenario() -> None:
        await blobs.append(SHA, 0, len(DATA), body(DATA[:300]))
        hold, delivered = asyncio.Event(), asyncio.Event()
        late = asyncio.create_task(blobs.append(SHA, 300, None, body(DATA[300:600], hold=hold,
                                                                     delivered=delivered)))
        await asyncio.wait_for(delivered.wait(), 30)
        assert await blobs.put(SHA, body(DATA), len(DATA)) is True
        hold.set()
        assert await late == (1000, "stored")

    asyncio.run(scenario())
    assert list((blobs.staging / "partial").iterdir()) == [] and leftovers(blobs) == []


def test_a_whole_upload_cut_off_stores_nothing(blobs: Blobs) -> None:
    async def scenario() -> None:
        with pytest.raises(ClientGone):
            await blobs.put(SHA, body(DATA[:500], vanish=True), len(DATA))

    asyncio.run(scenario())
    assert blobs.store.exists(SHA) is None and leftovers(blobs) == []


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=0-9", (0, 9)), ("bytes=990-", (990, 999)), ("bytes=-10", (990, 999)), ("bytes=-5000", (0, 999)),
    ("bytes=5-5000", (5, 999)), (" bytes=1-2 ", (1, 2)),
    ("Bytes=0-9", (0, 9)), ("BYTES=-10", (990, 999)),  # Regression: range units are case-insensitive (RFC 9110)
    # Regression: numbers of over 4,300 digits made int() raise, and the GET answered 500.
    ("bytes=0-" + "9" * 5000, (0, 999)), ("bytes=-" + "9" * 5000, (0, 999)),
    # Regression (review): zeros in front of 19 or more digits read as a position past any blob (416, or
    # the whole blob for an end).
    ("bytes=" + "0" * 19 + "-1", (0, 1)), ("bytes=0-" + "0" * 19 + "5", (0, 5)),
    ("bytes=-" + "0" * 30 + "7", (993, 999)),
    # not a single byte range in the syntax of RFC 9110: ignored, the whole blob is sent
    (None, None), ("", None), ("bytes=", None), ("bytes=-", None), ("bytes=0-1,5-6", None), ("items=0-1", None),
    ("bytes=1_0-20", None), ("bytes=+1-2", None), ("bytes=0--1", None), ("bytes=abc", None), ("bytes=１-２", None),
])
def test_a_range_is_one_byte_range_in_the_rfc_syntax_or_ignored(header: str | None,
                                                                 expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=-0", 1000), ("bytes=1000-", 1000), ("bytes=5-2", 1000),
                                              ("bytes=0-", 0), ("bytes=-1", 0), ("bytes=" + "1" * 5000 + "-", 1000)])
def test_an_unsatisfiable_range_is_416_with_the_size(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as refused:
        parse_range(header, size)
    assert refused.value.headers == {"Content-Range": f"bytes */{size}"}


def _age(paths: list[Path], seconds: float) -> None:
    for path in paths:
        then = time.time() - seconds
        os.utime(path, (then, then))


def test_abandoned_uploads_and_temporary_files_expire(blobs: Blobs) -> None:
    other = os.urandom(500)
    other_sha = hashlib.sha256(other).hexdigest()
    asyncio.run(blobs.append(SHA, 0, len(DATA), body(DATA[:400])))
    asyncio.run(blobs.append(other_sha, 0, len(other), body(other[:100])))
    stale_tmp, fresh_tmp = blobs.staging / "tmp" / "stale", blobs.staging / "tmp" / "fresh"
    stale_tmp.write_bytes(b"x")
    fresh_tmp.write_bytes(b"x")
    week = blobs.partial_ttl_s
    data = blobs.staging / "partial" / SHA
    _age([data, data.with_suffix(".length"), stale_tmp], week + 60)
    assert blobs.expire_partials() == 1
    assert blobs.partial(SHA) is None and blobs.partial(other_sha) == (100, 500)  # the live one stays
    assert sorted(p.name for p in (blobs.staging / "partial").iterdir() if p.name.startswith(SHA)) == []
    assert leftovers(blobs) == ["fresh"]


def test_the_leftovers_of_an_upload_killed_as_it_completed_expire(blobs: Blobs,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a process killed between storing the completed blob and removing the upload's files
    left `.length` and `.lock` without a data file, which the expiry (going by data files) never deleted."""
    from sync.blobs import service

    asyncio.run(blobs.append(SHA, 0, len(DATA), body(DATA[:400])))

    def killed(_: Path) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(service, "_remove_partial", killed)
    with pytest.raises(SystemExit):
        asyncio.run(blobs.append(SHA, 400, None, body(DATA[400:])))
    monkeypatch.undo()
    assert blobs.store.exists(SHA) == len(DATA)
    data = blobs.staging / "partial" / SHA
    left = sorted(p.name for p in (blobs.staging / "partial").iterdir())
    assert left == [f"{SHA}.length", f"{SHA}.lock"]
    assert blobs.expire_partials() == 0  # younger than the time to live: kept
    _age([data.with_suffix(".length"), data.with_suffix(".lock")], blobs.partial_ttl_s + 60)
    blobs.expire_partials()
    assert list((blobs.staging / "partial").iterdir()) == []


def test_an_upload_being_appended_to_does_not_expire(blobs: Blobs) -> None:
    asyncio.run(blobs.append(SHA, 0, len(DATA), body(DATA[:400])))
    data = blobs.staging / "partial" / SHA
    _age([data, data.with_suffix(".length")], blobs.partial_ttl_s + 60)
    with _locked(data):
        assert blobs.expire_partials() == 0
    assert blobs.partial(SHA) == (400, 1000)


def test_starting_an_upload_sweeps_at_most_once_an_hour(blobs: Blobs) -> None:
    other = os.urandom(500)
    other_sha = hashlib.sha256(other).hexdigest()
    asyncio.run(blobs.append(SHA, 0, len(DATA), body(DATA[:400])))  # the process's first start sweeps
    data = blobs.staging / "partial" / SHA
    _age([data, data.with_suffix(".length")], blobs.partial_ttl_s + 60)
    asyncio.run(blobs.append(other_sha, 0, len(other), body(other[:100])))
    assert blobs.partial(SHA) == (400, 1000)  # not again within the hour
    blobs._expired_at -= 3601
    asyncio.run(blobs.append(other_sha, 0, len(other), body(other[:100])))
    assert blobs.partial(SHA) is None and blobs.partial(other_sha) == (100, 500)


def test_a_blob_deleted_between_its_size_and_its_read_is_a_404(blobs: Blobs,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the local store opened the file on the first chunk, after the 200 had gone out: a blob the
    sweep (or a refused call's take-back) deleted in between broke the answer mid-stream. It is opened with
    the answer now: once open it reads to its end, and a file gone before that is a 404, as on S3."""
    from api.errors import NotFound

    asyncio.run(blobs.put(SHA, body(DATA), len(DATA)))
    read = blobs.read(SHA, None)
    blobs.store.delete(SHA)
    assert b"".join(read.chunks) == DATA
    monkeypatch.setattr(blobs.store, "exists", lambda sha256: len(DATA))  # its size read, then it was swept
    with pytest.raises(NotFound):
        blobs.read(SHA, None)
