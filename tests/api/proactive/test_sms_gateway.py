"""The HTTP SMS gateway sender, against a real local HTTP server and httpx's MockTransport."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from api.notices.sms import HttpSender, LoggingSender, deliver, make_sender
from api.proactive.models import CampaignDelivery, DeliveryStatus
from api.settings import Settings
from tests.api.proactive.helpers import API, create_campaign
from tests.utils.factories import World


class FakeGateway:
    """A local SMS gateway: records each POST; phones in `refuse` get HTTP 500 until `heal()`."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.refuse: set[str] = set()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                gateway.auth.append(self.headers.get("Authorization"))
                if body["phone"] in gateway.refuse:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"upstream carrier down")
                    return
                gateway.received.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sms"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    g = FakeGateway()
    yield g
    g.close()


def test_a_campaign_goes_out_through_the_http_gateway_and_retries_its_failures(
        client: TestClient, session: Session, world: World, settings: Settings, gateway: FakeGateway) -> None:
    settings.proactive_sms_retry_backoff_s = 0
    sender = make_sender(Settings(sms_sender="http", sms_http_url=gateway.url, sms_http_key="k-123"))
    assert isinstance(sender, HttpSender)
    client.app.state.sms_sender = sender  # type: ignore[attr-defined]
    gateway.refuse = {"13800000002"}
    campaign = create_campaign(client, world)
    h = world.headers(world.supervisor)
    first = client.post(f"{API}/campaigns/{campaign['id']}/send", headers=h).json()
    assert first["sent_count"] == 1 and first["failed_count"] == 1 and first["status"] == "sending"
    assert [m["phone"] for m in gateway.received] == ["13800000001"]
    assert set(gateway.auth) == {"Bearer k-123"}
    failed = session.exec(select(CampaignDelivery).where(CampaignDelivery.status == DeliveryStatus.failed)).one()
    assert "HTTP 500" in (failed.reason or "") and "carrier down" in (failed.reason or "")
    gateway.refuse = set()
    second = client.post(f"{API}/campaigns/{campaign['id']}/send", headers=h).json()
    assert second["sent_count"] == 2 and second["status"] == "completed"
    assert [m["phone"] for m in gateway.received] == ["13800000001", "13800000002"]
    assert gateway.received[1]["ref"] == f"{failed.id}:{failed.phone}" and "注水" in gateway.received[1]["text"]
    sender.close()
    sender.close()  # idempotent


def test_http_sender_reports_refusals_and_unreachable_gateways() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        if body["phone"] == "1":
            return httpx.Response(200, json={"ok": False, "error": "blacklisted number"})
        if body["phone"] == "2":
            raise httpx.ConnectTimeout("timed out", request=request)
        return httpx.Response(202, text="accepted")

    sender = HttpSender("https://sms.example.cn/send", "secret", transport=httpx.MockTransport(handler))
    assert deliver(sender, "1", "t", ref="r1") == deliver(sender, "1", "t")
    refused = deliver(sender, "1", "t")
    assert not refused.ok and "blacklisted number" in refused.reason
    unreachable = deliver(sender, "2", "t")
    assert not unreachable.ok and "ConnectTimeout" in unreachable.reason
    assert deliver(sender, "3", "短信").ok and sender.send("3", "x") is True and sender.send("1", "x") is False
    assert seen[0].headers["Authorization"] == "Bearer secret"
    assert json.loads(seen[0].content) == {"phone": "1", "text": "t", "ref": "r1"}
    assert deliver(LoggingSender(), "4", "t").ok


def test_the_http_sender_needs_a_url() -> None:
    with pytest.raises(ValueError, match="STEWARD_SMS_HTTP_URL"):
        Settings(sms_sender="http")
    with pytest.raises(ValueError, match="unknown category"):
        Settings(sla_hours_by_category={"flood": {"urgent": 1}})
    with pytest.raises(ValueError, match="positive hours"):
        Settings(sla_hours_by_category={"leak": {"asap": 1}})


def test_the_logging_sender_keeps_only_its_last_messages() -> None:
    """Regression: `log`, the default sender, kept every message it wrote in a list for the life of the process
    (a season's notices to a district are millions). It keeps the last `KEPT`, the newest last."""
    sender = LoggingSender()
    for n in range(LoggingSender.KEPT + 5):
        assert sender.send(f"138{n:08d}", f"message {n}")
    assert len(sender.sent) == LoggingSender.KEPT
    assert sender.sent[0] == ("13800000005", "message 5")
    assert sender.sent[-1] == (f"138{LoggingSender.KEPT + 4:08d}", f"message {LoggingSender.KEPT + 4}")
