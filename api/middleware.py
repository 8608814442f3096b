"""ASGI middleware: request body limits and gzip request bodies, and Prometheus request metrics."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body


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
        coding = _content_coding(scope)
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
            if message["type"] != "http.request":
                return  # the client went away before the body was complete: nobody to answer
            parts.append(message.get("body", b""))
            received += len(parts[-1])
            if received > limit:
                await self._refuse(send, 413, "payload_too_large", self._message(limit))
                return
            if not message.get("more_body", False):
                break
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = decoder.decompress(b"".join(parts), limit + 1)
        except zlib.error:
            body = None
        if body is not None and len(body) > limit:
            await self._refuse(send, 413, "payload_too_large", self._message(limit) + " (after gzip decoding)")
            return
        if body is None or not decoder.eof or decoder.unused_data:
            await self._refuse(send, 400, "invalid_encoding",
                               "The request body is not one complete gzip stream, as its Content-Encoding says.")
            return
        headers = [(name, value) for name, value in scope["headers"]
                   if name not in (b"content-encoding", b"content-length")]
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


def _content_coding(scope: Scope) -> str | None:
    """The request body's Content-Encoding, lower case; None when absent or `identity`."""
    for name, value in scope["headers"]:
        if name == b"content-encoding":
            coding = value.decode("latin-1").strip().lower()
            return None if coding in ("", "identity") else coding
    return None


class MetricsMiddleware:
    """Count requests and time them by route template, method and status; tell the client the server's time.

    Every answer carries `Server-Timing: app;dur=<ms>` (W3C Server Timing: browsers' developer tools show
    it), the time from the request reaching the app to the answer starting, so a slow request can be told
    apart from a slow network or a busy client.
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
            self.requests.labels(scope["method"], template, str(status)).inc()
            self.latency.labels(scope["method"], template).observe(time.perf_counter() - start)


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
