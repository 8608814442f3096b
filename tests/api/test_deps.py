"""The request session under load: more simultaneous requests than database connections must queue, not
deadlock. (Found by `steward bench load`: with 200 handhelds the server stopped answering for good, every
worker thread waiting for a connection held by a request that waited for a thread.)"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from sqlmodel import Session

from api.settings import Settings
from api.users.models import Role
from tests.stress.conftest import ServerProcess
from tests.utils.factories import auth, make_building, make_household, make_station, make_user

REQUESTS = 100  # far more than the connections (2 on PostgreSQL here, 15 for SQLite) and the 40 threads


async def _burst(base: str, headers: dict[str, str], path: str, params: dict[str, object]) -> Counter[object]:
    limits = httpx.Limits(max_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30, limits=limits) as http:
        async def one() -> object:
            try:
                return (await http.get(path, params=params)).status_code
            except httpx.HTTPError as exc:
                return type(exc).__name__
        return Counter(await asyncio.gather(*(one() for _ in range(REQUESTS))))


@pytest.mark.slow
def test_a_burst_larger_than_the_connection_pool_is_served(session: Session, settings: Settings) -> None:
    building = make_building(session, make_station(session))
    for _ in range(3):
        make_household(session, building)
    headers = auth(settings, make_user(session, Role.steward, grid=[building]))
    server = ServerProcess(settings, STEWARD_DB_POOL_SIZE="1", STEWARD_SPEECH_QUEUE="off")
    server.start()
    try:
        # A list route (its answer is validated in a worker thread after the route returned) and the sync pull.
        for path, params in (("/api/v1/households", {}), ("/api/v1/sync/pull", {"schema_version": 1})):
            assert asyncio.run(_burst(server.base, headers, path, params)) == {200: REQUESTS}, path
    finally:
        server.stop()
