"""Fuzzing the API with schemathesis: every operation of `/openapi.json`, with the tokens of each kind of
caller, on both backends. No answer may be a 5xx, and every answer must match what the schema documents
(status code, content type, body schema; errors are the one `{"detail": {"code", "message"}}` shape).

Generated cases are both valid (positive) and invalid (negative) per the schema; path ids are half the time
real ids of a seeded world, so requests get past the 404 into the code behind it. The short variant runs in
the normal suite; `test_fuzz_long` (marked `stress`) runs many more examples. Set STEWARD_FUZZ_REPORT to a
file to get the count of requests and of answers by status (docs/security.md quotes it).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine

from api.app import create_app
from api.notices.sms import LoggingSender
from api.settings import Settings
from tests.api.test_authz_matrix import Fx, build_fx, caller_headers
from tests.conftest import make_settings
from tests.utils.db import wipe

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
ROLES = ("admin", "supervisor", "steward", "resident")
SHORT_EXAMPLES = int(os.environ.get("STEWARD_FUZZ_EXAMPLES", "6"))
LONG_EXAMPLES = int(os.environ.get("STEWARD_FUZZ_LONG_EXAMPLES", "30"))
REPORT = os.environ.get("STEWARD_FUZZ_REPORT", "")
FUZZ_SETTINGS: dict[str, Any] = {
    "speech_queue": "off",  # uploaded calls are stored, not transcribed (speech has its own tests)
    "video_ice_servers": "", "video_worker_id": "fuzz", "video_max_rooms": 256, "video_connect_timeout_s": 2,
    "login_rate_per_minute": 1_000_000,  # the fuzzer signs in far more often than a person; throttling has its tests
}
STATS: Counter[str] = Counter()


def _operation_labels() -> list[str]:
    app = create_app(Settings(database_url="sqlite://"))
    schema = schemathesis.openapi.from_dict(app.openapi())
    return sorted(result.ok().label for result in schema.get_all_operations())


LABELS = _operation_labels()


@dataclass
class FuzzEnv:
    app: FastAPI
    schema: Any
    engine: Engine
    client: Any

    def fresh(self) -> Fx:
        return build_fx(self.engine, self.client, self.app.state.settings, offer_sdp="v=0\r\n")


@pytest.fixture(scope="module")
def fuzz_env(migrated_engine: Engine, database_url: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[FuzzEnv]:
    app = create_app(make_settings(database_url, tmp_path_factory.mktemp("fuzz"), **FUZZ_SETTINGS),
                     engine=migrated_engine, sms_sender=LoggingSender())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    with asgi.get_client(app) as client:  # runs the app's lifespan (video relay) on schemathesis's loop
        yield FuzzEnv(app=app, schema=schema, engine=migrated_engine, client=client)
    asgi.shutdown_lifespans()
    wipe(migrated_engine)  # leave the database empty for the next module
    if REPORT:
        path = Path(REPORT)
        previous = json.loads(path.read_text()) if path.exists() else {}
        merged = Counter(previous) + STATS
        path.write_text(json.dumps(dict(sorted(merged.items())), indent=1))
    STATS.clear()  # one backend's module instance per report merge


def _known_ids(fx: Fx) -> dict[str, list[str]]:
    ids = [fx.order.id, fx.visit.id, fx.reading.id, fx.note.id, fx.notice.id, fx.transcript.id, fx.room_id,
           fx.snapshot.id, fx.station.id, fx.building_a.id, fx.household_a.id, fx.steward_a.id, fx.steward_b.id,
           fx.admin.id]
    return {"id": [str(i) for i in ids], "station_id": [str(fx.station.id)], "sha256": [fx.blob_sha256],
            "token": [fx.join_token]}


def fuzz(env: FuzzEnv, label: str, examples: int, *, derandomize: bool) -> None:
    """Run `examples` generated cases per caller against one operation and check every answer."""
    operation = env.schema.find_operation_by_label(label)
    assert operation is not None, label
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                         operation.as_strategy(GenerationMode.NEGATIVE))
    for role in ROLES:
        fx = env.fresh()
        _fuzz_as(env, strategy, caller_headers(fx, role), _known_ids(fx), examples, derandomize)


def _fuzz_as(env: FuzzEnv, strategy: Any, headers: dict[str, str], known: dict[str, list[str]], examples: int,
             derandomize: bool) -> None:
    backend = env.engine.dialect.name

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy, data=st.data())
    def check(case: Any, data: st.DataObject) -> None:
        for name in list(case.path_parameters or {}):
            if name in known and data.draw(st.booleans(), label=f"real {name}"):
                case.path_parameters[name] = data.draw(st.sampled_from(known[name]), label=name)
        response = case.call(session=env.client, headers=headers)
        STATS[f"{backend} requests"] += 1
        STATS[f"{backend} status {response.status_code}"] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    check()


@pytest.mark.parametrize("label", LABELS)
def test_fuzz(label: str, fuzz_env: FuzzEnv) -> None:
    fuzz(fuzz_env, label, SHORT_EXAMPLES, derandomize=True)


@pytest.mark.stress
@pytest.mark.parametrize("label", LABELS)
def test_fuzz_long(label: str, fuzz_env: FuzzEnv) -> None:
    fuzz(fuzz_env, label, LONG_EXAMPLES, derandomize=False)
