"""Request body limits, per-route request metrics and the answer to a request cut at shutdown."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator

from fastapi.testclient import TestClient
from httpx import Response
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.types import Receive, Scope, Send

from api.app import create_app
from api.middleware import CutAtShutdown
from api.network.models import Station
from api.notices.sms import LoggingSender
from api.settings import Settings
from tests.utils.asserts import assert_error, count_rows
from tests.utils.factories import World, make_station, random_id

API = "/api/v1"


def _station_body(size: int) -> bytes:
    """A station JSON body of exactly `size` bytes (padded in the address)."""
    base = {"code": "HS-BIG", "name": "大站", "address": ""}
    empty = len(json.dumps(base).encode())
    return json.dumps(base | {"address": "x" * (size - empty)}).encode()


def _chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


def test_a_declared_length_over_the_limit_is_413(client: TestClient, session: Session, world: World,
                                                 settings: Settings) -> None:
    body = _station_body(settings.max_body_bytes + 1)
    r = client.post(f"{API}/stations", content=body, headers=world.headers(world.supervisor)
                    | {"content-type": "application/json"})
    assert_error(r, 413, "payload_too_large")
    assert count_rows(session, Station) == 1


def test_a_streamed_body_over_the_limit_is_413(client: TestClient, session: Session, world: World,
                                               settings: Settings) -> None:
    """Regression: without Content-Length the limit tripped inside FastAPI's body parsing and came out
    as a 400 `bad_request`."""
    body = _station_body(settings.max_body_bytes + 1)
    r = client.post(f"{API}/stations", content=_chunks(body), headers=world.headers(world.supervisor)
                    | {"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_error(r, 413, "payload_too_large")
    assert count_rows(session, Station) == 1


def test_bodies_up_to_the_limit_pass_streamed_or_not(client: TestClient, session: Session, world: World,
                                                     settings: Settings) -> None:
    # The address is capped at 200 characters, so a 201 would mean the limit let the body through;
    # a 422 proves it reached validation.
    body = _station_body(settings.max_body_bytes)
    headers = world.headers(world.supervisor) | {"content-type": "application/json"}
    assert_error(client.post(f"{API}/stations", content=body, headers=headers), 422, "validation_error")
    assert_error(client.post(f"{API}/stations", content=_chunks(body), headers=headers), 422, "validation_error")
    small = json.dumps({"code": "HS-S", "name": "小站"}).encode()
    assert client.post(f"{API}/stations", content=_chunks(small, 7), headers=headers).status_code == 201
    assert count_rows(session, Station) == 2


def _requests_total(client: TestClient) -> dict[tuple[str, str, str], float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    counts = {}
    for family in families:
        if family.name == "steward_http_requests":
            for sample in family.samples:
                if sample.name == "steward_http_requests_total":
                    counts[(sample.labels["method"], sample.labels["route"], sample.labels["status"])] = sample.value
    return counts


def test_metrics_count_requests_by_full_route_template(engine: Engine, settings: Settings, session: Session,
                                                      world: World) -> None:
    """Regression: the route label lost the `/api/v1` prefix (`/households/{id}`), because FastAPI hands
    middleware the route of the included router."""
    app = create_app(settings, engine=engine, sms_sender=LoggingSender())
    with TestClient(app, raise_server_exceptions=False) as client:
        h = world.headers(world.supervisor)
        for hh in (world.household_a, world.household_b):
            assert client.get(f"{API}/households/{hh.id}", headers=h).status_code == 200
        assert client.get(f"{API}/households/{random_id()}", headers=h).status_code == 404
        assert client.get(f"{API}/work-orders/{random_id()}/events", headers=h).status_code == 404
        assert client.get("/healthz").status_code == 200
        assert client.get("/no/such/route").status_code == 404
        counts = _requests_total(client)
    assert counts[("GET", "/api/v1/households/{id}", "200")] == 2
    assert counts[("GET", "/api/v1/households/{id}", "404")] == 1
    assert counts[("GET", "/api/v1/work-orders/{id}/events", "404")] == 1
    assert counts[("GET", "/healthz", "200")] == 1
    assert counts[("GET", "unmatched", "404")] == 1
    assert not any(str(hh) in route for _, route, _ in counts for hh in (world.household_a.id, world.household_b.id))


def test_an_unreadable_content_length_is_400(client: TestClient) -> None:
    r = client.post("/api/v1/work-orders", content=b"{}", headers={"Content-Length": "abc",
                                                                    "Content-Type": "application/json"})
    assert_error(r, 400, "bad_request")


def test_upload_paths_have_their_own_body_limits() -> None:
    from api.middleware import BodyLimitMiddleware

    async def app(scope: object, receive: object, send: object) -> None:  # pragma: no cover - never called
        return None

    limits = BodyLimitMiddleware(app, max_bytes=1024, prefix_limits=((f"{API}/blobs", 10_000), (f"{API}/calls", 5_000)),
                                 exempt_prefixes=("/internal",))
    assert limits.limit_for(f"{API}/stations") == 1024
    assert limits.limit_for(f"{API}/blobs/{'a' * 64}") == 10_000
    assert limits.limit_for(f"{API}/calls") == 5_000
    assert limits.limit_for("/internal/x") is None


def _gzip_post(client: TestClient, world: World, body: bytes, **headers: str) -> Response:
    return client.post(f"{API}/stations", content=body, headers=world.headers(world.supervisor)
                       | {"content-type": "application/json", "content-encoding": "gzip"} | headers)


def test_a_gzip_request_body_is_decoded(client: TestClient, session: Session, world: World) -> None:
    body = json.dumps({"code": "HS-GZ", "name": "压缩站", "address": "东路" * 100}).encode()
    r = _gzip_post(client, world, gzip.compress(body))
    assert r.status_code == 201, r.text
    assert r.json()["code"] == "HS-GZ" and r.json()["address"] == "东路" * 100
    # The same in chunks, without a declared length, and with the older x-gzip name.
    body = json.dumps({"code": "HS-GZ2", "name": "压缩站二"}).encode()
    r = _gzip_post(client, world, _chunks(gzip.compress(body), 5), **{"content-encoding": "x-gzip"})
    assert r.status_code == 201, r.text
    assert count_rows(session, Station) == 3


def test_a_gzip_body_that_decodes_past_the_limit_is_413(client: TestClient, session: Session, world: World,
                                                        settings: Settings) -> None:
    """A gzip bomb: a few KB on the wire, more than the body limit once decoded."""
    bomb = gzip.compress(_station_body(settings.max_body_bytes + 1))
    assert len(bomb) < 10_000
    assert_error(_gzip_post(client, world, bomb), 413, "payload_too_large")
    assert_error(_gzip_post(client, world, _chunks(bomb, 1000)), 413, "payload_too_large")
    # Exactly at the limit decodes and reaches validation (the address is capped at 200 characters).
    assert_error(_gzip_post(client, world, gzip.compress(_station_body(settings.max_body_bytes))), 422,
                 "validation_error")
    assert count_rows(session, Station) == 1


def test_a_body_that_is_not_the_gzip_it_claims_is_400(client: TestClient, session: Session, world: World) -> None:
    whole = gzip.compress(json.dumps({"code": "HS-X", "name": "站"}).encode())
    for body in (b'{"code": "HS-X", "name": "plain"}', whole[:-6], whole + b"trailing", whole + whole[:5]):
        assert_error(_gzip_post(client, world, body), 400, "invalid_encoding")
    assert count_rows(session, Station) == 1


def test_a_gzip_body_of_several_members_is_decoded(client: TestClient, session: Session, world: World) -> None:
    """Regression: RFC 1952 allows members back to back (gzip.decompress reads them); only the first was."""
    body = json.dumps({"code": "HS-MM", "name": "多段"}).encode()
    r = _gzip_post(client, world, gzip.compress(body[:10]) + gzip.compress(body[10:]))
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "多段" and count_rows(session, Station) == 2


def test_content_encoding_without_a_body_changes_nothing(client: TestClient, world: World, session: Session) -> None:
    """Regression: a stray Content-Encoding on a GET (or an empty POST) was refused with 400/415."""
    h = world.headers(world.supervisor)
    assert client.get("/healthz", headers={"content-encoding": "gzip"}).status_code == 200
    assert client.get(f"{API}/stations", headers=h | {"content-encoding": "br"}).status_code == 200
    missing = f"{API}/blobs/{'a' * 64}"
    assert_error(client.get(missing, headers=h | {"content-encoding": "gzip"}), 404, "not_found")
    # An empty body said to be gzip is an empty body: the route's own answer (here: no JSON object).
    assert_error(_gzip_post(client, world, b""), 422, "validation_error")
    assert count_rows(session, Station) == 1


def test_codings_on_several_header_lines_are_read_together(client: TestClient, session: Session,
                                                           world: World) -> None:
    """Regression: only the first Content-Encoding line was read, so `identity` + `gzip` sent gzip bytes to the
    JSON parser and `gzip` + `gzip` decoded once."""
    body = json.dumps({"code": "HS-2L", "name": "两行"}).encode()
    h = list((world.headers(world.supervisor) | {"content-type": "application/json"}).items())
    r = client.post(f"{API}/stations", content=gzip.compress(body),
                    headers=[*h, ("content-encoding", "identity"), ("content-encoding", "gzip")])
    assert r.status_code == 201, r.text
    r = client.post(f"{API}/stations", content=gzip.compress(gzip.compress(body)),
                    headers=[*h, ("content-encoding", "gzip"), ("content-encoding", "gzip")])
    assert_error(r, 415, "unsupported_encoding")
    assert count_rows(session, Station) == 2


def test_a_client_gone_during_a_gzip_body_is_not_a_server_error(engine: Engine, settings: Settings) -> None:
    """Regression: the gzip path answered nothing when the client went away mid-body, and the metrics counted
    a 500 (a false page for every push dropped on a weak link); it now ends like a plain body's request."""
    app = create_app(settings, engine=engine, sms_sender=LoggingSender())
    compressed = gzip.compress(b'{"code": "HS-GONE", "name": "' + b"b" * 5000 + b'"}')

    async def post(headers: list[tuple[bytes, bytes]], first: bytes) -> list[int]:
        messages = [{"type": "http.request", "body": first, "more_body": True}, {"type": "http.disconnect"}]
        statuses: list[int] = []

        async def receive() -> dict[str, object]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))  # type: ignore[call-overload]

        path = f"{API}/stations"
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"), *headers], "client": ("10.0.0.9", 1),
                 "server": ("test", 80), "state": {}}
        await app(scope, receive, send)  # type: ignore[arg-type]
        return statuses

    with TestClient(app) as client:
        plain = asyncio.run(post([], b'{"code": "HS-GO'))
        packed = asyncio.run(post([(b"content-encoding", b"gzip")], compressed[:20]))
        counts = _requests_total(client)
    assert packed == plain
    assert not any(status.startswith("5") for (_, _, status) in counts), counts
    assert counts[("POST", "/api/v1/stations", plain_status := next(iter(
        s for (m, r, s) in counts if r == "/api/v1/stations")))] == 2, (plain_status, counts)


def test_other_content_codings_are_415(client: TestClient, session: Session, world: World) -> None:
    body = json.dumps({"code": "HS-BR", "name": "站"}).encode()
    for coding in ("br", "deflate", "zstd", "gzip, br"):
        assert_error(_gzip_post(client, world, body, **{"content-encoding": coding}), 415, "unsupported_encoding")
    r = _gzip_post(client, world, body, **{"content-encoding": "identity"})
    assert r.status_code == 201, r.text
    assert count_rows(session, Station) == 2


def test_json_responses_are_gzipped_for_clients_that_accept_it(client: TestClient, session: Session,
                                                               world: World) -> None:
    for i in range(40):
        make_station(session, code=f"HS-{i:03}", name=f"站{i}", address="北京路" * 20)
    h = world.headers(world.supervisor)
    plain = client.get(f"{API}/stations?limit=100", headers=h | {"accept-encoding": "identity"})
    packed = client.get(f"{API}/stations?limit=100", headers=h | {"accept-encoding": "gzip"})
    assert plain.status_code == packed.status_code == 200
    assert "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip" and "accept-encoding" in packed.headers["vary"].lower()
    assert int(packed.headers["content-length"]) < len(plain.content) / 4
    assert packed.json() == plain.json()  # httpx decodes it
    # Refused gzip (q=0) or not named: plain; any case and a quality above 0: gzip.
    for refused in ("gzip;q=0", "identity, gzip; q=0.0", "deflate", "br"):
        r = client.get(f"{API}/stations?limit=100", headers=h | {"accept-encoding": refused})
        assert r.status_code == 200 and "content-encoding" not in r.headers, refused
    for accepted in ("GZip", "br;q=1.0, gzip;q=0.5"):
        r = client.get(f"{API}/stations?limit=100", headers=h | {"accept-encoding": accepted})
        assert r.headers.get("content-encoding") == "gzip", accepted
    # Small answers (one packet) go as they are.
    small = client.get(f"{API}/stations/{world.station.id}", headers=h | {"accept-encoding": "gzip"})
    assert small.status_code == 200 and "content-encoding" not in small.headers


def test_gzip_level_0_never_compresses(engine: Engine, settings: Settings, session: Session, world: World) -> None:
    for i in range(40):
        make_station(session, code=f"HS-{i:03}", name=f"站{i}", address="北京路" * 20)
    app = create_app(settings.model_copy(update={"gzip_level": 0}), engine=engine, sms_sender=LoggingSender())
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get(f"{API}/stations?limit=100", headers=world.headers(world.supervisor) | {"accept-encoding": "gzip"})
    assert r.status_code == 200 and "content-encoding" not in r.headers and r.json()["count"] == 41


def test_every_answer_tells_the_servers_own_time(client: TestClient, world: World, settings: Settings) -> None:
    """`Server-Timing: app;dur=<ms>` on answers of every kind, refusals of the middleware included."""
    h = world.headers(world.supervisor)
    answers = [client.get(f"{API}/stations", headers=h), client.get(f"{API}/households/{random_id()}", headers=h),
               client.get("/healthz"), client.get("/no/such/route"),
               client.post(f"{API}/stations", content=_station_body(settings.max_body_bytes + 1),
                           headers=h | {"content-type": "application/json"})]
    assert [r.status_code for r in answers] == [200, 404, 200, 404, 413]
    for r in answers:
        name, _, duration = r.headers["server-timing"].partition(";dur=")
        assert name == "app" and 0 <= float(duration) < 60_000, r.headers["server-timing"]


def test_gzipped_pages_have_a_weak_etag_and_no_byte_ranges(client: TestClient) -> None:
    """Regression: the console's and the video pages' files kept their strong ETag and `Accept-Ranges` when
    gzipped, so a download resumed with `If-Range` appended plain bytes to gzipped ones."""
    for path in ("/console", "/console/static/console.js", "/video/static/video.js"):
        plain = client.get(path, headers={"accept-encoding": "identity"})
        packed = client.get(path, headers={"accept-encoding": "gzip"})
        assert plain.status_code == packed.status_code == 200, path
        assert packed.headers["content-encoding"] == "gzip" and packed.content == plain.content, path
        assert plain.headers["etag"].startswith('"') and plain.headers["accept-ranges"] == "none", path  # served whole
        assert packed.headers["etag"] == f"W/{plain.headers['etag']}" and "accept-ranges" not in packed.headers
        resumed = client.get(path, headers={"accept-encoding": "gzip", "range": "bytes=100-",
                                            "if-range": packed.headers["etag"]})
        assert resumed.status_code == 200 and resumed.content == plain.content, path  # the whole, not a range


def test_accepts_gzip_reads_the_quality() -> None:
    from api.middleware import accepts_gzip

    assert accepts_gzip("gzip") and accepts_gzip("gzip, deflate, br") and accepts_gzip("GZIP;Q=0.1")
    assert not accepts_gzip("") and not accepts_gzip("gzip;q=0") and not accepts_gzip("x-gzip")
    assert not accepts_gzip("gzip;q=zero") and not accepts_gzip("identity") and not accepts_gzip("*")


def _cut(method: str, messages: list[dict[str, object]]) -> tuple[int, dict[bytes, bytes], dict[str, object]]:
    """Run `method` through CutAtShutdown around an app that reads what the client sends and then works on
    (a route's worker thread), and cancel it the way uvicorn does when the shutdown grace ends."""
    answer: list[dict[str, object]] = []
    reading = list(messages)

    async def receive() -> dict[str, object]:
        if reading:
            return reading.pop(0)
        await asyncio.sleep(3600)  # the rest of the body has not arrived
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        answer.append(message)

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["more_body"]:
            pass
        await asyncio.sleep(3600)  # the whole body is here: the route is working (and may commit)

    async def scenario() -> None:
        length = sum(len(m.get("body", b"")) for m in messages)  # type: ignore[arg-type, misc]
        headers = [(b"content-length", str(length + 100).encode())] if length else []
        scope = {"type": "http", "method": method, "path": f"{API}/stations", "headers": headers}
        task = asyncio.ensure_future(CutAtShutdown(route)(scope, receive, send))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        task.cancel()
        await task

    asyncio.run(scenario())
    start, body = answer
    return int(start["status"]), dict(start["headers"]), json.loads(body["body"])  # type: ignore[arg-type, call-overload]


def test_a_request_cut_at_shutdown_is_told_to_retry_only_when_that_is_safe() -> None:
    """Regression: every cut request was told "send the request again" with Retry-After, though a write whose
    body had arrived may already be committed by its route's thread (a second work order on the retry)."""
    whole = [{"type": "http.request", "body": b"{}", "more_body": False}]
    status, headers, body = _cut("GET", whole)
    assert status == 503 and headers[b"retry-after"] == b"5" and body["detail"]["code"] == "shutting_down"
    assert "send the request again" in body["detail"]["message"]
    # a write still receiving its body had not reached its route: sending it again is safe
    status, headers, body = _cut("POST", [{"type": "http.request", "body": b"{", "more_body": True}])
    assert status == 503 and headers[b"retry-after"] == b"5" and body["detail"]["code"] == "shutting_down"
    # a write whose body had arrived: the outcome is unknown, and no Retry-After invites a blind retry
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        status, headers, body = _cut(method, whole)
        assert status == 503 and b"retry-after" not in headers and body["detail"]["code"] == "shutting_down"
        assert "may or may not have been applied" in body["detail"]["message"], body
    # Regression (review): a write that takes no body (POST /notices/{id}/send) never reads one, and was told to
    # send again while its thread went on texting.
    status, headers, body = _cut("POST", [{"type": "http.request", "body": b"", "more_body": False}])
    assert status == 503 and b"retry-after" not in headers, headers
    assert "may or may not have been applied" in body["detail"]["message"], body


def test_made_up_methods_share_one_metrics_label(engine: Engine, settings: Settings) -> None:
    """Regression (review): the raw method was a label, so 2,000 made-up methods grew /metrics from 1.8 KB to
    3.1 MB (bounded under uvicorn's parser today, not under another)."""
    app = create_app(settings, engine=engine, sms_sender=LoggingSender())
    with TestClient(app, raise_server_exceptions=False) as client:
        for n in range(20):
            client.request(f"BREW{n}", "/healthz")
        counts = _requests_total(client)
    assert not any(method.startswith("BREW") for method, _, _ in counts)
    assert sum(v for (method, _, _), v in counts.items() if method == "OTHER") == 20


def test_a_gzip_body_of_very_many_members_is_refused_quickly(client: TestClient, session: Session,
                                                             world: World) -> None:
    """Regression (review): each member's decoder copied the rest of the body, so 1 MiB of 52,000 empty members
    held the event loop for seconds, before any sign-in. More than MAX_GZIP_MEMBERS is refused (clients send one)."""
    from api.middleware import MAX_GZIP_MEMBERS, _gunzip

    body = json.dumps({"code": "HS-MANY", "name": "多段"}).encode()
    members = [gzip.compress(body[i:i + 1], mtime=0) for i in range(len(body))]
    assert len(members) < MAX_GZIP_MEMBERS
    assert _gunzip(b"".join(members), 1 << 20) == body
    many = gzip.compress(b"", mtime=0) * ((1 << 20) // 20)
    assert_error(_gzip_post(client, world, many), 400, "invalid_encoding")
    assert_error(_gzip_post(client, world, gzip.compress(b"", mtime=0) * (MAX_GZIP_MEMBERS + 1)), 400,
                 "invalid_encoding")
    assert count_rows(session, Station) == 1


def test_a_form_field_decoded_to_a_lone_surrogate_is_422(client: TestClient) -> None:
    """Regression (review): Starlette decodes multipart fields with the charset the request names; utf-7's
    `+2AA-` is a lone surrogate, which the database driver cannot encode: sign-in answered 500 to anyone."""
    body = (b'--b\r\nContent-Disposition: form-data; name="username"\r\n\r\n+2AA-\r\n'
            b'--b\r\nContent-Disposition: form-data; name="password"\r\n\r\nwhatever1\r\n--b--\r\n')
    r = client.post(f"{API}/auth/token", content=body,
                    headers={"content-type": "multipart/form-data; boundary=b; charset=utf-7"})
    assert_error(r, 422, "validation_error")
