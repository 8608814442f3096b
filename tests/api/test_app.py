"""The app factory's own routes: health probe and Prometheus metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine

from api import __version__
from api.app import create_app
from api.notices.sms import LoggingSender
from api.settings import Settings


def test_healthz_reports_the_database_and_version(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok", "version": __version__}


def test_healthz_is_503_when_the_database_is_unreachable(settings: Settings) -> None:
    broken: Engine = create_engine("sqlite:////nonexistent-dir/for/sure/steward.db")
    app = create_app(settings, engine=broken, sms_sender=LoggingSender())
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/healthz")
    broken.dispose()
    assert r.status_code == 503
    assert r.json() == {"status": "error", "database": "unreachable", "version": __version__}


def test_metrics_is_prometheus_text_and_counts_each_request(engine: Engine, settings: Settings) -> None:
    app = create_app(settings, engine=engine, sms_sender=LoggingSender())
    with TestClient(app) as client:
        for _ in range(3):
            client.get("/healthz")
        r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'steward_http_requests_total{method="GET",route="/healthz",status="200"} 3.0' in r.text
    assert 'steward_http_request_seconds_count{method="GET",route="/healthz"} 3.0' in r.text


def test_each_app_counts_only_its_own_requests(engine: Engine, settings: Settings) -> None:
    first = create_app(settings, engine=engine, sms_sender=LoggingSender())
    with TestClient(first) as client:
        client.get("/healthz")
    with TestClient(create_app(settings, engine=engine, sms_sender=LoggingSender())) as client:
        text = client.get("/metrics").text
    assert 'route="/healthz"' not in text
