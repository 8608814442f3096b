"""The app factory's own routes: health probe and Prometheus metrics."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
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


def test_the_served_app_freezes_its_startup_heap_and_hands_the_interpreter_over_sooner(tmp_path: Path) -> None:
    # uvicorn's `api.main:app` moves the objects built at startup out of the collector's sight, so a full
    # collection during a push does not walk them all again (it cost 73-85 ms per collection). It also sets the
    # thread switch interval from STEWARD_THREAD_SWITCH_MS (Python's own default is 5 ms).
    code = "import gc, sys, api.main; print(gc.get_freeze_count(), sys.getswitchinterval())"
    env = os.environ | {"STEWARD_DATA_DIR": str(tmp_path), "STEWARD_DATABASE_URL": f"sqlite:///{tmp_path}/s.db"}
    answers = []
    for interval in (None, "2.5"):
        run_env = env | ({"STEWARD_THREAD_SWITCH_MS": interval} if interval else {})
        out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True,
                             timeout=120, check=True)
        frozen, switch = out.stdout.split()
        assert int(frozen) > 10_000  # every module, route and mapper of the app
        answers.append(float(switch))
    assert answers == [0.001, 0.0025]


def test_a_thread_switch_interval_out_of_range_is_refused() -> None:
    for value in (0, -1, 101):
        with pytest.raises(ValidationError, match="thread_switch_ms"):
            Settings(thread_switch_ms=value)


def test_an_app_built_by_the_factory_leaves_the_collector_alone(engine: Engine, settings: Settings) -> None:
    before = gc.get_freeze_count()
    create_app(settings, engine=engine, sms_sender=LoggingSender())
    assert gc.get_freeze_count() == before  # tests and tools build many apps: their garbage stays collectable


def test_production_with_the_logging_sms_sender_warns_that_no_resident_is_texted(
        engine: Engine, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """The default sender (`log`) marks every notice and campaign message sent and only logs it: a production
    server left on it told the office its notices went out. It says so at start; dev and the gateway do not."""
    caplog.set_level(logging.WARNING, logger="steward")
    create_app(settings.model_copy(update={"env": "production"}), engine=engine)
    assert [r.getMessage() for r in caplog.records if "STEWARD_SMS_SENDER=log" in r.getMessage()]
    caplog.clear()
    create_app(settings, engine=engine)  # dev
    create_app(settings.model_copy(update={"env": "production", "sms_sender": "http",
                                           "sms_http_url": "https://sms.example/send"}), engine=engine)
    create_app(settings.model_copy(update={"env": "production"}), engine=engine, sms_sender=LoggingSender())
    assert not [r for r in caplog.records if "STEWARD_SMS_SENDER" in r.getMessage()]
