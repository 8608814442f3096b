"""ASGI middleware: request body limits and gzip request bodies, Prometheus request metrics, and the answer to a
request cut at shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware, GZipResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body

log = logging.getLogger(__name__)


class BodyLimitMiddleware:
    """Refuse request bodies over the limit with 413, whether or not they declare a length; decode gzip bodies.

    The limit is `max_bytes`, or that of the first matching `prefix_limits` entry (uploads of blobs and call
    recordings are larger than JSON bodies); paths under an `exempt_prefixes` entry are not limited here.

    A JSON body may come gzip-compressed (`Content-Encoding: gzip`: a handheld pushing a batch over a weak
    link): it is decoded here, and the limit holds for both the bytes sent and the decoded body, so a small
    gzip bomb is a 413 like a large body. Uploads (`prefix_limits` paths) are stored and hashed as sent, so
    an encoded upload is refused with 415, as is any coding other than gzip.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, prefix_limits: Sequence[tuple[str, int]] = (),
                 exempt_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.prefix_limits = tuple(prefix_limits)
        self.exempt_prefixes = exempt_prefixes

    def limit_for(self, path: str) -> int | None:
        """The body limit of a request path; None when it is exempt."""
        if path.startswith(self.exempt_prefixes):
            return None
        return next((limit for prefix, limit in self.prefix_limits if path.startswith(prefix)), self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit_for(scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await self._refuse(send, 400, "bad_request", "The Content-Length header is not a number.")
                    return
                if declared > limit:
                    await self._refuse(send, 413, "payload_too_large", self._message(limit))
                    return
        coding = _content_coding(scope) if _has_body(scope) else None  # a GET's stray header changes nothing
        if coding is not None:
            upload = any(scope["path"].startswith(prefix) for prefix, _ in self.prefix_limits)
            if coding not in GZIP_CODINGS or upload:
                what = "an upload" if upload else "a request body"
                await self._refuse(send, 415, "unsupported_encoding",
                                   f"Content-Encoding {coding!r} is not accepted for {what}; "
                                   + ("send the bytes as they are." if upload else "send gzip or no encoding."))
                return
            await self._gunzip(scope, receive, send, limit)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException, because FastAPI turns any other error raised while it reads the
                    # body into a 400 "error parsing the body".
                    raise HTTPException(413, detail=error_body("payload_too_large", self._message(limit))["detail"])
            return message

        await self.app(scope, limited_receive, send)

    async def _gunzip(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Read the whole gzip body (at most `limit` bytes), decode it (at most `limit` bytes) and hand the
        app the plain body, as if it had been sent that way."""
        parts: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: the app hears it as with a plain body
                await self.app(scope, _replay(message), send)
                return
            parts.append(message.get("body", b""))
            received += len(parts[-1])
            if received > limit:
                await self._refuse(send, 413, "payload_too_large", self._message(limit))
                return
            if not message.get("more_body", False):
                break
        try:
            body = _gunzip(b"".join(parts), limit)
        except zlib.error:
            await self._refuse(send, 400, "invalid_encoding", "The request body is not complete gzip (of at most "
                               f"{MAX_GZIP_MEMBERS} members), as its Content-Encoding says.")
            return
        if body is None:
            await self._refuse(send, 413, "payload_too_large", self._message(limit) + " (after gzip decoding)")
            return
        headers = [(name, value) for name, value in scope["headers"]
                   if name not in (b"content-encoding", b"content-length", b"transfer-encoding")]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def decoded_receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": headers}, decoded_receive, send)

    @staticmethod
    def _message(limit: int) -> str:
        return f"The request body is larger than {limit} bytes."

    async def _refuse(self, send: Send, status: int, code: str, message: str) -> None:
        body = json.dumps(error_body(code, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


GZIP_CODINGS = ("gzip", "x-gzip")


def _replay(message: Message) -> Receive:
    """A `receive` that answers `message` (a disconnect) to whoever asks."""

    async def receive() -> Message:
        return message

    return receive


# Gzip members one body may have. Each member's decoder hands back a copy of the bytes after it: a 1 MiB body of
# 52,000 empty members took 3 s of the event loop, before any sign-in. Clients send one member.
MAX_GZIP_MEMBERS = 64


def _gunzip(data: bytes, limit: int) -> bytes | None:
    """Decode gzip `data`, every member of it (RFC 1952 allows several back to back, `MAX_GZIP_MEMBERS` here);
    None when it decodes to more than `limit` bytes. zlib.error when it is not complete gzip."""
    out: list[bytes] = []
    size = 0
    for _ in range(MAX_GZIP_MEMBERS):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = decoder.decompress(data, limit - size + 1)
        size += len(chunk)
        if size > limit:
            return None
        if not decoder.eof:
            raise zlib.error("truncated gzip stream")
        out.append(chunk)
        data = decoder.unused_data
        if not data:
            return b"".join(out)
    raise zlib.error(f"more than {MAX_GZIP_MEMBERS} gzip members")


def _content_coding(scope: Scope) -> str | None:
    """The request body's Content-Encoding, lower case, all header lines together (`gzip, br` for two
    codings); None when absent or `identity`."""
    codings = [coding for name, value in scope["headers"] if name == b"content-encoding"
               for coding in (part.strip().lower() for part in value.decode("latin-1").split(","))
               if coding not in ("", "identity")]
    return ", ".join(codings) or None


def _has_body(scope: Scope) -> bool:
    """Whether the request says it carries a body (a length above 0, or chunks)."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
    return False


class GZipResponses(GZipMiddleware):
    """Starlette's gzip of responses, with what HTTP asks of a compressed representation: a strong ETag
    names one encoding, so a gzipped answer's ETag is made weak (`W/`) and its `Accept-Ranges` dropped (a
    range of the plain bytes must not be resumed onto gzipped ones, docs/sync-protocol.md); and a client that
    refuses gzip (`gzip;q=0`) is not sent it, one that writes `GZip` is (Starlette looks for the word `gzip`
    only). The compressing itself is Starlette's (`GZipResponder`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not accepts_gzip(Headers(scope=scope).get("accept-encoding", "")):
            await self.app(scope, receive, send)
            return

        async def send_encoded(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=list(message.get("headers", ())))
                if headers.get("content-encoding") == "gzip":
                    etag = headers.get("etag")
                    if etag and not etag.startswith("W/"):
                        headers["etag"] = f"W/{etag}"
                    if "accept-ranges" in headers:
                        del headers["accept-ranges"]
                    message = {**message, "headers": headers.raw}
            await send(message)

        responder = GZipResponder(self.app, self.minimum_size, compresslevel=self.compresslevel,
                                  thread_minimum_size=self.thread_minimum_size,
                                  exclude_content_types=self.exclude_content_types)
        await responder(scope, receive, send_encoded)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding value lists gzip with a quality above 0 (`gzip`, `GZip;q=0.5`; not
    `gzip;q=0`, not absent)."""
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() != "gzip":
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


class MetricsMiddleware:
    """Count requests and time them by route template, method and status; tell the client the server's time.

    Every answer of the app carries `Server-Timing: app;dur=<ms>` (W3C Server Timing: browsers' developer
    tools show it), the time from the request reaching the app to the answer starting, so a slow request can
    be told apart from a slow network or a busy client. (A crash's 500 is written by Starlette's outermost
    handler, outside this middleware, and has none.)
    """

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter("steward_http_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=registry)
        self.latency = Histogram("steward_http_request_seconds", "HTTP request latency", ["method", "route"],
                                 registry=registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                spent = f"app;dur={(time.perf_counter() - start) * 1000:.1f}".encode()
                message = {**message, "headers": [*message.get("headers", ()), (b"server-timing", spent)]}
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            template = route_template(scope)
            # A made-up method is one label, not one each: every distinct label value is a series kept for ever
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.requests.labels(method, template, str(status)).inc()
            self.latency.labels(method, template).observe(time.perf_counter() - start)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The full path template of the matched route (`/api/v1/work-orders/{id}`), or `unmatched`.

    FastAPI may hand over the route of an included router, whose `path` lacks the prefixes it was
    included under; those are the part of the request path before the route's own match.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not template:
        return "unmatched"
    regex = getattr(route, "path_regex", None)
    path = scope.get("path", "")
    if regex is None or regex.match(path):
        return str(template)
    for i, char in enumerate(path):
        if char == "/" and regex.match(path[i:]):
            return path[:i] + template
    return str(template)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CutAtShutdown:
    """Answer a request that the shutdown cuts (still running when STEWARD_SHUTDOWN_GRACE_S ends: uvicorn
    cancels it) with 503 `shutting_down` in the one error shape, and log one line. Before, the cancellation
    passed every handler: uvicorn answered a plain-text 500 and logged a 70-line traceback for each. A request
    whose answer had already started is cut as it is (nothing else can be said).

    Only a request that is safe to send again gets `Retry-After`: a GET/HEAD/OPTIONS, or a write cut while the
    body it declared was still arriving (the route had not started). Any other write (its whole body arrived,
    or it has none, as a notice's send) may have been committed by its route's worker thread, which the
    cancellation does not stop; its client is told the outcome is unknown, so that it looks before it sends
    the write again."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        body_read = False

        async def counted() -> Message:
            nonlocal body_read
            message = await receive()
            body_read = body_read or (message["type"] == "http.request" and not message.get("more_body", False))
            return message

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except asyncio.CancelledError:
            if started:
                raise
            # A write still receiving the body it declared has not reached its route; a route that takes no body
            # (a notice's send) never reads it, so a write without one may be well under way.
            retry = scope.get("method") in SAFE_METHODS or (_has_body(scope) and not body_read)
            log.warning("%s %s cut by the shutdown: answered 503 (%s)", scope.get("method"), scope.get("path"),
                        "safe to send again" if retry else "outcome unknown")
            message = ("The server is restarting; send the request again." if retry else
                       "The server restarted while handling this request; it may or may not have been applied. "
                       "Check before sending it again.")
            body = json.dumps(error_body("shutting_down", message)).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       *([(b"retry-after", b"5")] if retry else []), (b"connection", b"close")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
