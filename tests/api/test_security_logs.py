"""Secrets and personal data: production refuses a default secret key, and logs never hold tokens,
passwords or unmasked phone numbers. A real uvicorn server (so its access log is part of it) serves a
realistic session while every log record of the process, at DEBUG, is captured and scanned."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine
from sqlmodel import Session

from api.app import create_app
from api.notices.sms import LoggingSender
from api.security import redact_log_text
from api.settings import DEV_SECRET_KEY, Settings
from api.work_orders.models import Status
from tests.utils.factories import PASSWORD, World, make_notice, make_work_order
from tests.utils.server import wait_healthy

ROOT = Path(__file__).resolve().parents[2]
STEWARD = str(Path(sys.executable).with_name("steward"))
API = "/api/v1"
MOBILE = re.compile(r"(?<![0-9])1[3-9][0-9]{9}(?![0-9])")


def _serve_env(tmp_path: Path, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
    return base | {"STEWARD_DATA_DIR": str(tmp_path), "STEWARD_PORT": str(_free_port())} | env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("key", [None, DEV_SECRET_KEY, "too-short-for-production"])
def test_steward_serve_refuses_production_without_a_real_secret_key(tmp_path: Path, key: str | None) -> None:
    env = _serve_env(tmp_path, STEWARD_ENV="production") | ({"STEWARD_SECRET_KEY": key} if key else {})
    done = subprocess.run([STEWARD, "serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "STEWARD_SECRET_KEY" in done.stderr + done.stdout
    assert not (tmp_path / "steward.db").exists()  # refused before touching anything


def test_a_real_key_passes_the_secret_check(tmp_path: Path) -> None:
    """The same start with a long random key gets past the key and stops at the next check (schema)."""
    env = _serve_env(tmp_path, STEWARD_ENV="production", STEWARD_SECRET_KEY="k" * 48)
    done = subprocess.run([STEWARD, "serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "steward db upgrade" in done.stderr, done.stderr
    assert "STEWARD_SECRET_KEY" not in done.stderr


def test_the_masking_rules() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcdefghijklmnopqrstuv"
    assert redact_log_text(f"GET /join/{token} HTTP/1.1") == "GET /join/[token] HTTP/1.1"
    assert redact_log_text("Authorization: Bearer abc.def") == "Authorization: Bearer [token]"
    assert redact_log_text("username=a&password=hunter22&x=1") == "username=a&password=[redacted]&x=1"
    assert redact_log_text('{"password": "hunter22"}') == '{"password": "[redacted]"}'
    assert redact_log_text("sms to 13812345678: 您好") == "sms to 138****5678: 您好"
    assert redact_log_text("call 0531-88886666 now") == "call 0531-****6666 now"
    assert redact_log_text("room 5 took 1732931234567 ms") == "room 5 took 1732931234567 ms"


@pytest.fixture
def server(settings: Settings, engine: Engine) -> Iterator[str]:
    """The app under a real uvicorn with access logs on, in a thread; its base URL."""
    app = create_app(settings.model_copy(update={"speech_queue": "off", "video_ice_servers": "",
                                                 "video_worker_id": "logs"}),
                     engine=engine, sms_sender=LoggingSender())
    config = uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_config=None, log_level="debug",
                            access_log=True, lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}"
    srv.should_exit = True
    thread.join(30)


def test_logs_of_a_realistic_session_hold_no_secret_and_no_phone_number(
        server: str, world: World, session: Session, caplog: pytest.LogCaptureFixture) -> None:
    phones = ["13912345678", "13712345670", "13612345671", "15900001111"]
    caplog.set_level(logging.DEBUG)
    order = make_work_order(session, world.household_a, status=Status.in_progress, assignee=world.steward_a,
                            caller_phone=phones[3])
    notice = make_notice(session, world.building_a)
    secrets: list[str] = [PASSWORD, "wrong-password-123"]
    with httpx.Client(base_url=server, timeout=30) as http:
        assert http.post(f"{API}/auth/token", data={"username": world.admin.username,
                                                    "password": "wrong-password-123"}).status_code == 401
        tokens = {}
        for user in (world.admin, world.supervisor, world.steward_a):
            r = http.post(f"{API}/auth/token", data={"username": user.username, "password": PASSWORD})
            assert r.status_code == 200, r.text
            tokens[user.role.value if user is not world.steward_a else "steward"] = r.json()["access_token"]
        secrets += list(tokens.values())
        admin, office, steward = ({"Authorization": f"Bearer {tokens[k]}"} for k in ("admin", "supervisor", "steward"))
        assert http.get(f"{API}/auth/me", headers=steward).status_code == 200
        # a token in the query string is not a way to sign in (422: no route takes it), and is masked in the log
        assert http.get(f"{API}/auth/me", params={"access_token": tokens["steward"]}).status_code in (401, 422)
        r = http.post(f"{API}/households", headers=office, json={
            "building_id": str(world.building_a.id), "unit": "3", "room": "502", "resident_name": "赵大妈",
            "phone": phones[0], "area_m2": 76})
        assert r.status_code == 201, r.text
        r = http.post(f"{API}/work-orders", headers=office, json={
            "household_id": r.json()["id"], "category": "not_warm", "caller_phone": phones[1],
            "description": f"住户来电 {phones[1]}，家里不热"})
        assert r.status_code == 201, r.text
        assert http.post(f"{API}/users", headers=admin, json={"username": "newsteward", "password": "s3cret-pass-99",
                                                              "role": "steward", "phone": phones[2]}).status_code == 201
        secrets.append("s3cret-pass-99")
        meta = {"caller_phone": phones[2], "started_at": "2026-11-29T08:00:00+08:00", "agent": "agent-01"}
        r = http.post(f"{API}/calls", headers=office, data={"metadata": json.dumps(meta)},
                      files={"audio": ("call.wav", b"RIFF not really a wav", "audio/wav")})
        assert r.status_code == 202, r.text
        pull = http.get(f"{API}/sync/pull", headers=steward, params={"schema_version": 1})
        assert pull.status_code == 200
        assert http.post(f"{API}/sync/push", headers=steward, json={
            "schema_version": 1, "client_id": "6f1c1d1e-0000-4000-8000-000000000001", "mutations": [
                {"mutation_id": 1, "table": "readings", "op": "create", "id": "6f1c1d1e-0000-4000-8000-0000000000aa",
                 "fields": {"household_id": str(world.household_a.id), "taken_at": "2026-11-29T08:00:00+08:00",
                            "temp_c": 16.5, "room": f"客厅 {phones[3]}"}}]}).status_code == 200
        assert http.post(f"{API}/notices/{notice.id}/send", headers=office).status_code == 200
        room = http.post(f"{API}/video/rooms", headers=steward, json={"work_order_id": str(order.id)}).json()
        join_token = room["join_url"].rsplit("/", 1)[1]
        secrets.append(join_token)
        assert http.get(f"/join/{join_token}").status_code == 200
        assert http.get(f"{API}/video/join/{join_token}").status_code == 200
        # errors: a bad token, a validation error echoing a phone, a missing row, malformed JSON
        assert http.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {tokens['admin']}x"}).status_code == 401
        assert http.patch(f"{API}/households/{world.household_a.id}", headers=office,
                          json={"phone": phones[0] + "-ext-0000000000"}).status_code == 422
        assert http.get(f"{API}/work-orders/{world.household_b.id}", headers=steward).status_code == 404
        assert http.post(f"{API}/stations", headers=office | {"content-type": "application/json"},
                         content=b'{"code": "13812345678"').status_code == 400
    logging.getLogger("steward.test").exception("boom", exc_info=RuntimeError(f"caller {phones[0]} token "
                                                                               f"{tokens['admin']}"))
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    text = "\n".join(formatter.format(record) for record in caplog.records)
    # not vacuous: the access log, the SMS log and the error log all wrote here
    assert '"GET /join/[token] HTTP/1.1" 200' in text
    assert "sms to 138****0001" in text and "boom" in text and "RuntimeError: caller 139****5678" in text
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"secrets in the logs: {[s[:12] + '...' for s in leaked]}"
    assert not MOBILE.findall(text), f"unmasked phone numbers in the logs: {set(MOBILE.findall(text))}"


def test_a_message_that_is_not_text_is_masked_too(caplog: pytest.LogCaptureFixture) -> None:
    """Regression: `log.warning(exc)` (the message an exception, not a string) was logged unmasked."""
    from api.security import install_log_redaction

    install_log_redaction()
    with caplog.at_level(logging.WARNING, logger="steward.test"):
        logging.getLogger("steward.test").warning(ValueError("resident 13812345678 refused"))
        logging.getLogger("steward.test").warning(404)  # not text, nothing to mask: kept as it was
    assert "13812345678" not in caplog.text and "resident 138****5678 refused" in caplog.text
    assert caplog.records[1].msg == 404


@pytest.mark.parametrize("line", [
    '"GET /api/v1/transcripts?q=%E5%9B%9E%E7%94%B513912345678 HTTP/1.1" 200',  # 回电13912345678, encoded
    '"GET /api/v1/households?q=139%201234%205678 HTTP/1.1" 200',  # 139 1234 5678
    '"GET /api/v1/households?q=110101%2019900307%204512 HTTP/1.1" 200',  # an ID number in groups
    'segments: [{"text": "\\u56de\\u753513912345678"}]',  # JSON's escapes: a hex digit ran into the number
])
def test_encoded_and_escaped_numbers_are_masked(line: str) -> None:
    """Regression: uvicorn logs query strings percent-encoded and JSON escapes non-ASCII text; the masking
    rules need a non-digit before a number, so both ways got numbers through whole."""
    masked = redact_log_text(line)
    assert "*" in masked and not re.search(r"1391234|19900307", masked.replace(" ", "")), masked


def test_the_log_sender_shows_no_message_text_and_masks_any_number(caplog: pytest.LogCaptureFixture) -> None:
    """Regression: it logged every SMS at INFO, with the resident's name and address, and a local or `+86`
    number whole (the text rules need a mobile's or an area code's form)."""
    caplog.set_level(logging.INFO, logger="steward.sms")
    sender = LoggingSender()
    for phone in ("88886666", "+86 531 8888 6666", "13912345678"):
        sender.send(phone, "【注水通知】尊敬的王秀兰住户（燕子山小区1号楼2单元501室）")
    assert "王秀兰" not in caplog.text and "燕子山" not in caplog.text
    assert "sms to ****6666" in caplog.text and "sms to 139****5678" in caplog.text
    assert not re.search(r"8888 ?6666|13912345678", caplog.text), caplog.text


def test_service_loggers_get_a_handler_at_the_configured_level(tmp_path: Path) -> None:
    """Regression: uvicorn configures only its own loggers, so the service's INFO lines (the log SMS sender's
    included) were printed nowhere under `steward serve`."""
    code = ("import logging; from api.security import configure_logging; configure_logging('info'); "
            "logging.getLogger('steward.sms').info('sms to 138****0001'); logging.getLogger('x').debug('hidden')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "INFO steward.sms: sms to 138****0001" in done.stderr and "hidden" not in done.stderr, done.stderr


def test_every_process_that_serves_the_app_configures_its_logging(tmp_path: Path) -> None:
    """Regression: `steward serve --workers N` configured logging only in the parent, and uvicorn's spawned
    workers only uvicorn's own loggers, so the service's lines were printed nowhere. `api.main` (what each
    worker imports) configures it now, and once only where `steward serve` already did (one worker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")} | {
        "STEWARD_DATA_DIR": str(tmp_path), "STEWARD_DATABASE_URL": f"sqlite:///{tmp_path}/s.db",
        "STEWARD_LOG_LEVEL": "info"}
    said = "logging.getLogger('steward.sms').info('sms to 13812345678'); logging.getLogger('x').debug('hidden')"
    worker = f"import logging, api.main; {said}"  # a spawned worker: nothing configured before the import
    parent = ("import logging, uvicorn; from api.security import configure_logging; configure_logging('info'); "
              f"uvicorn.Config('api.main:app', log_level='info'); import api.main; {said}")  # --workers 1
    for code in (worker, parent):
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("INFO steward.sms: sms to 138****5678") == 1, done.stderr
        assert "hidden" not in done.stderr and "13812345678" not in done.stderr


@pytest.mark.slow
def test_service_logs_survive_several_workers(database_url: str, world: World, session: Session,
                                              tmp_path: Path) -> None:
    """The same under a real `steward serve --workers 2` (PostgreSQL: SQLite takes one process): the log SMS
    sender's line of a notice sent through a worker reaches stderr."""
    if not database_url.startswith("postgresql"):
        pytest.skip("--workers needs PostgreSQL")
    notice = make_notice(session, building=world.building_a)
    env = _serve_env(tmp_path, STEWARD_DATABASE_URL=database_url, STEWARD_SECRET_KEY=world.settings.secret_key,
                     STEWARD_SPEECH_QUEUE="off", STEWARD_PROACTIVE_INTERVAL_MINUTES="0", STEWARD_LOG_LEVEL="info")
    base = f"http://127.0.0.1:{env['STEWARD_PORT']}"
    log = (tmp_path / "serve.log").open("w+")
    server = subprocess.Popen([STEWARD, "serve", "--workers", "2"], env=env, cwd=tmp_path, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        wait_healthy(base, server, timeout=120, step=0.2)
        answer = httpx.post(f"{base}{API}/notices/{notice.id}/send", headers=world.headers(world.admin), timeout=30)
        assert answer.status_code == 200, answer.text
        time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
    log.seek(0)
    output = log.read()
    assert "Application startup complete" in output  # the workers' uvicorn lines are there
    assert "steward.sms: sms to 138****0001" in output, output


def test_a_cron_command_prints_nothing_when_all_is_well(tmp_path: Path) -> None:
    """Regression: `steward proactive run` printed alembic's three INFO lines ("Context impl SQLiteImpl...")
    on every run: under cron, a mail every run."""
    env = {**os.environ, "STEWARD_DATA_DIR": str(tmp_path), "STEWARD_SECRET_KEY": "k" * 40}
    env.pop("STEWARD_DATABASE_URL", None)
    steward = Path(sys.executable).with_name("steward")
    assert subprocess.run([steward, "db", "upgrade"], capture_output=True, env=env, timeout=120).returncode == 0
    done = subprocess.run([steward, "proactive", "run"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "alembic" not in done.stderr and "Context impl" not in done.stderr, done.stderr


def test_database_errors_carry_no_values(tmp_path: Path) -> None:
    """Regression: an error's text carried the statement's values, so a transcript that failed to save was
    logged, and kept as a failure reason stewards read, with its text and numbers."""
    from sqlalchemy import text

    from api.db import make_engine
    from speech.jobs import failure_reason
    from tests.conftest import make_settings

    engine = make_engine(make_settings(f"sqlite:///{tmp_path / 'x.db'}", tmp_path))
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, said TEXT)"))
            conn.execute(text("INSERT INTO t VALUES (1, 'x')"))
        with pytest.raises(Exception) as caught, engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1, :said)"), {"said": "王秀兰回电13912345678"})
    finally:
        engine.dispose()
    assert "13912345678" not in str(caught.value) and "王秀兰" not in str(caught.value)
    reason = failure_reason(caught.value)
    assert reason.startswith("IntegrityError: UNIQUE constraint failed") and "INSERT" not in reason
