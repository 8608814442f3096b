"""The suite's own machinery: the route analysis its apps share (tests/utils/routes.py)."""

from __future__ import annotations

from typing import Any

from fastapi import routing
from fastapi.testclient import TestClient
from sqlmodel import Session

from api import migrate
from api.app import create_app
from api.db import make_engine
from api.notices.sms import LoggingSender
from api.users.models import Role
from sync.views import pull
from tests.conftest import make_settings
from tests.utils.factories import auth, make_user
from tests.utils.routes import share_route_analysis


def test_the_route_analysis_is_shared_by_this_fastapi() -> None:
    """Fails when a FastAPI upgrade renames what tests/utils/routes.py wraps: the suite would still pass, but
    every test would analyse the app's routes again (about 165 ms a test)."""
    assert share_route_analysis() is True
    first = routing._build_dependant_with_parameterless_dependencies(path="/p", call=pull, dependencies=[])
    again = routing._build_dependant_with_parameterless_dependencies(path="/p", call=pull, dependencies=[])
    assert again is first
    assert [param.alias for param in first[0].query_params] == ["schema_version", "cursor", "limit"]


def test_an_endpoint_made_inside_a_function_is_analysed_each_time() -> None:
    def local(limit: int = 1) -> int:
        return limit

    first = routing._build_dependant_with_parameterless_dependencies(path="/l", call=local, dependencies=[])
    again = routing._build_dependant_with_parameterless_dependencies(path="/l", call=local, dependencies=[])
    assert again is not first
    assert [param.alias for param in again[0].query_params] == ["limit"]


def test_two_apps_sharing_the_analysis_each_answer_from_their_own_settings(tmp_path: Any) -> None:
    """The analysis is shared, the apps are not: the same route pages by each app's own limit."""
    answers = []
    for name, largest in (("one", 7), ("two", 9)):
        settings = make_settings(f"sqlite:///{tmp_path}/{name}.db", tmp_path / name, page_max_limit=largest)
        engine = make_engine(settings)
        migrate.upgrade(engine)
        with Session(engine) as session:
            admin = make_user(session, role=Role.admin)
            headers = auth(settings, admin)
        with TestClient(create_app(settings, engine=engine, sms_sender=LoggingSender()),
                        raise_server_exceptions=False) as client:
            answers.append(client.get("/api/v1/stations", params={"limit": "8"}, headers=headers).status_code)
        engine.dispose()
    assert answers == [422, 200]


def test_anyio_s_lazily_imported_modules_are_loaded_before_any_test() -> None:
    """Regression (CI): `anyio._core._fileio` was first imported, and rewritten by pytest, in an app's thread
    during a test's file response, and CPython 3.11 failed to build its AST while another thread built one."""
    import sys

    from tests.utils.imports import LAZY_PACKAGES

    assert "anyio._core._fileio" in sys.modules
    for name in LAZY_PACKAGES:
        package = sys.modules[name]
        assert dir(package), f"{name} no longer lists lazy names: check tests/utils/imports.py against anyio"
        assert all(attr in vars(package) for attr in dir(package)), f"{name} still has names to import lazily"
