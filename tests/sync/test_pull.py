"""Pull: scope from the token, bounded pages, resumable cursors, deltas and routed deletes."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlmodel import Session

from api.db import utcnow
from api.fieldwork.models import Reading, Visit
from api.work_orders.models import Status
from sync.models import MAX_LIMIT
from tests.sync.conftest import District, autocommit, server_rows
from tests.sync.device import Device
from tests.utils.factories import make_reading, make_visit, make_work_order

T0 = "2026-12-01T08:00:00+00:00"


def _ids(device: Device) -> dict[str, set[str]]:
    return {table: set(rows) for table, rows in device.rows.items()}


def test_a_first_sync_brings_exactly_the_callers_scope(district: District, device: Callable[..., Device]) -> None:
    d = district
    steward = device(d.steward1)
    assert steward.pull() == 1
    s = {str(x.id) for x in (d.station, d.station2)}
    assert _ids(steward) == {
        "stations": s, "buildings": {str(d.b1.id)}, "households": {str(d.h1a.id), str(d.h1b.id)},
        "work_orders": {str(d.wo1.id)}, "visits": {str(d.visit1.id)}, "readings": {str(d.reading1.id)},
        "notes": {str(d.note1.id)}, "notices": {str(d.notice1.id)}, "notice_campaigns": set(),
        "campaign_deliveries": set()}
    other = device(d.steward2)
    other.pull()
    assert _ids(other) == {
        "stations": s, "buildings": {str(d.b2.id)}, "households": {str(d.h2a.id)}, "work_orders": {str(d.wo2.id)},
        "visits": set(), "readings": set(), "notes": set(), "notices": set(), "notice_campaigns": set(),
        "campaign_deliveries": set()}
    office = device(d.supervisor)
    office.pull()
    assert _ids(office)["households"] == {str(h.id) for h in (d.h1a, d.h1b, d.h2a, d.h3a)}
    assert _ids(office)["notices"] == {str(d.notice1.id), str(d.notice2.id)}
    record = office.rows["work_orders"][str(d.wo1.id)]
    assert record["version"] == d.wo1.version and record["status"] == "assigned"
    assert "seq" not in record and "field_versions" not in record and "origin_client_id" not in record


def test_small_pages_bring_the_same_rows_as_one_big_page(client: TestClient, district: District,
                                                         device: Callable[..., Device]) -> None:
    one = device(district.supervisor)
    assert one.pull(limit=MAX_LIMIT) == 1
    paged = device(district.supervisor)
    pages = paged.pull(limit=3)
    total = sum(len(rows) for rows in one.rows.values())
    assert pages == -(-total // 3)  # ceil: every page but the last is full
    assert paged.rows == one.rows


def test_many_changes_of_one_transaction_page_without_loss(client: TestClient, district: District,
                                                            device: Callable[..., Device]) -> None:
    author = device(district.steward1, "author")
    reader = device(district.steward1, "reader")
    reader.pull()
    for n in range(23):  # one push: 23 rows share one change sequence number
        author.create("readings", household_id=str(district.h1a.id), taken_at=T0, temp_c=10 + n)
    author.push()
    assert reader.pull(limit=4) == 6
    assert len(reader.rows["readings"]) == 24
    assert reader.rows == server_rows(client, district.headers(district.steward1))


def test_an_interrupted_first_sync_resumes_and_sees_what_changed_meanwhile(
        client: TestClient, district: District, device: Callable[..., Device]) -> None:
    office = district.headers(district.supervisor)
    writer = device(district.steward1, "writer")
    writer.pull()
    d = device(district.steward1, "slow")
    for _ in range(3):
        assert d.pull_page(limit=2)["has_more"]
    saved = d.cursor
    # the connection drops; meanwhile rows already sent, not yet sent, and new ones change
    client.patch(f"/api/v1/households/{district.h1a.id}", json={"resident_name": "改名"}, headers=office)
    client.patch(f"/api/v1/visits/{district.visit1.id}", json={"actions": "later"}, headers=office)
    writer.delete("readings", str(district.reading1.id))
    new_visit = writer.create("visits", household_id=str(district.h1b.id), arrived_at=T0)
    writer.push()
    # a page whose answer is lost: the device did not store its cursor, so it asks again
    lost = d.http.get("/api/v1/sync/pull", params={"schema_version": 1, "cursor": saved, "limit": 2},
                      headers=d.headers)
    assert lost.status_code == 200
    d.cursor = saved
    d.pull(limit=2)
    truth = server_rows(client, district.headers(district.steward1))
    assert d.rows == truth
    assert new_visit in d.rows["visits"] and str(district.reading1.id) not in d.rows["readings"]
    assert d.rows["households"][str(district.h1a.id)]["resident_name"] == "改名"


def test_asking_again_with_the_same_cursor_gives_the_same_page(district: District,
                                                               device: Callable[..., Device]) -> None:
    d = device(district.supervisor)
    d.pull_page(limit=4)
    cursor = d.cursor
    first = d.pull_page(limit=4)
    d.cursor = cursor
    assert d.pull_page(limit=4) == first


def test_a_delta_brings_only_what_changed(client: TestClient, district: District,
                                          device: Callable[..., Device]) -> None:
    d = device(district.steward1)
    d.pull()
    quiet = d.pull_page()
    assert not quiet["has_more"] and not quiet["reset"]
    assert all(not c["upserts"] and not c["deletes"] for c in quiet["changes"].values())
    client.patch(f"/api/v1/households/{district.h1b.id}", json={"phone": "13911112222"},
                 headers=district.headers(district.supervisor))
    client.patch(f"/api/v1/households/{district.h2a.id}", json={"phone": "13933334444"},  # not in scope
                 headers=district.headers(district.supervisor))
    page = d.pull_page()
    changed = {t: [r["id"] for r in c["upserts"]] for t, c in page["changes"].items() if c["upserts"]}
    assert changed == {"households": [str(district.h1b.id)]}
    assert d.rows["households"][str(district.h1b.id)]["phone"] == "13911112222"


def test_deletes_reach_the_devices_that_saw_the_row_only(client: TestClient, district: District,
                                                         device: Callable[..., Device]) -> None:
    phone = device(district.steward1, "phone")
    tablet = device(district.steward1, "tablet")
    neighbour = device(district.steward2, "neighbour")
    office = device(district.supervisor, "office")
    for d in (phone, tablet, neighbour, office):
        d.pull()
    phone.delete("readings", str(district.reading1.id))
    phone.delete("notes", str(district.note1.id))
    phone.push()
    tablet_page, neighbour_page, office_page = tablet.pull_page(), neighbour.pull_page(), office.pull_page()
    assert tablet_page["changes"]["readings"]["deletes"] == [str(district.reading1.id)]
    assert tablet_page["changes"]["notes"]["deletes"] == [str(district.note1.id)]
    assert office_page["changes"]["readings"]["deletes"] == [str(district.reading1.id)]
    assert all(not c["deletes"] for c in neighbour_page["changes"].values())
    # the author does not get its own deletes back
    assert all(not c["deletes"] for c in phone.pull_page()["changes"].values())


def test_a_forged_or_damaged_cursor_is_refused(client: TestClient, district: District,
                                               device: Callable[..., Device]) -> None:
    d = device(district.steward1)
    d.pull()
    assert d.cursor is not None
    for bad in (d.cursor[:-3], d.cursor[:10] + ("A" if d.cursor[10] != "A" else "B") + d.cursor[11:], "%%%",
                "e30"):
        response = client.get("/api/v1/sync/pull", params={"schema_version": 1, "cursor": bad},
                              headers=d.headers)
        assert response.status_code == 400, bad
        assert response.json()["detail"]["code"] == "invalid_cursor"


def test_a_cursor_of_another_user_or_role_starts_over(client: TestClient, district: District,
                                                      device: Callable[..., Device]) -> None:
    one = device(district.steward1)
    one.pull()
    other = device(district.steward2, cursor=one.cursor)
    first = other.pull_page()
    assert first["reset"]
    other.pull()
    assert other.rows == server_rows(client, district.headers(district.steward2))
    # a steward promoted to supervisor sees the whole district from the next pull on
    client.patch(f"/api/v1/users/{district.steward1.id}", json={"role": "supervisor"},
                 headers=district.headers(district.admin))
    assert one.pull_page()["reset"]
    one.pull()
    assert len(one.rows["households"]) == 4


@pytest.mark.parametrize("limit", [0, MAX_LIMIT + 1, -5])
def test_limit_is_bounded(client: TestClient, district: District, limit: int) -> None:
    response = client.get("/api/v1/sync/pull", params={"schema_version": 1, "limit": limit},
                          headers=district.headers(district.steward1))
    assert response.status_code == 422


def test_an_unknown_cursor_position_from_another_database_starts_over(client: TestClient, district: District,
                                                                      device: Callable[..., Device]) -> None:
    from sync import cursor as cursors

    d = device(district.steward1)
    d.pull()
    assert d.cursor is not None
    state = cursors.decode(d.cursor, district.settings.secret_key)
    d.cursor = cursors.encode(state.with_(seq=state.seq + 1000, scope_seq=state.seq + 1000),
                              district.settings.secret_key)
    assert d.pull_page()["reset"]


def _database_id(engine: Engine) -> int:
    from sync import tracking

    with Session(engine) as session:
        return tracking.database_id(session)


def test_a_cursor_issued_by_another_database_or_before_a_restore_starts_over(
        client: TestClient, district: District, device: Callable[..., Device], engine: Engine) -> None:
    """Regression: only a position beyond this database's head was noticed, so a cursor from another
    database sharing the secret key (or from this one before a backup was restored over it, then written
    past that position) was read as a position here: rows kept that the server no longer had, changes
    skipped. Every cursor now carries the database's identity."""
    from sync import cursor as cursors

    d = device(district.steward1)
    d.pull()
    assert d.cursor is not None
    state = cursors.decode(d.cursor, district.settings.secret_key)
    assert state.database == _database_id(engine) != 0
    same = d.cursor
    d.cursor = cursors.encode(state.with_(database=state.database + 1), district.settings.secret_key)
    assert d.pull_page()["reset"]
    d.cursor = same
    assert not d.pull_page()["reset"]
    old_format = cursors.encode(state.with_(database=0), district.settings.secret_key)  # before this field
    d.cursor = old_format
    assert not d.pull_page()["reset"]
    assert cursors.decode(d.cursor, district.settings.secret_key).database == state.database  # now carries it
    # `steward db restored` after restoring a backup: every device starts over.
    from typer.testing import CliRunner

    from api.cli import app
    from api.settings import get_settings

    get_settings.cache_clear()  # the command reads its settings from this environment, not an earlier test's
    engine.dispose()  # as a stopped server: SQLite's last connection checkpoints and removes the -wal file
    try:
        result = CliRunner().invoke(app, ["db", "restored"], env={
            "STEWARD_DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "STEWARD_SECRET_KEY": district.settings.secret_key})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert _database_id(engine) != state.database
    d.cursor = same
    page = d.pull_page()
    assert page["reset"] and cursors.decode(page["cursor"], district.settings.secret_key).database == \
        _database_id(engine)


def test_rows_written_by_the_rest_api_carry_the_change_sequence(client: TestClient, district: District,
                                                                device: Callable[..., Device]) -> None:
    d = device(district.steward1)
    d.pull()
    created = client.post("/api/v1/readings", json={"household_id": str(district.h1a.id), "taken_at": T0,
                                                    "temp_c": 21.0}, headers=district.headers(district.steward1))
    assert created.status_code == 201, created.text
    page = d.pull_page()
    assert [r["id"] for r in page["changes"]["readings"]["upserts"]] == [created.json()["id"]]
    assert uuid.UUID(created.json()["id"])


def test_snapshot_pages_split_one_households_rows_without_loss(client: TestClient, district: District,
                                                               device: Callable[..., Device]) -> None:
    author = device(district.steward1, "author")
    for n in range(17):  # big tables page by (household, id): many rows of one household span pages
        author.create("readings", household_id=str(district.h1a.id if n % 3 else district.h1b.id),
                      taken_at=T0, temp_c=10 + n)
        author.create("visits", household_id=str(district.h1b.id), arrived_at=T0, actions=f"v{n}")
    author.push()
    whole = device(district.steward1, "whole")
    whole.pull(limit=MAX_LIMIT)
    for limit in (1, 2, 5):
        paged = device(district.steward1, f"paged{limit}")
        paged.pull(limit=limit)
        assert paged.rows == whole.rows
    assert len(whole.rows["readings"]) == 18 and len(whole.rows["visits"]) == 18


def test_a_stewards_own_rows_outside_the_grid_page_after_the_grids_rows(
        session: Session, client: TestClient, district: District, device: Callable[..., Device]) -> None:
    d = district
    outside = [d.h2a, d.h3a]
    own: dict[str, set[str]] = {"work_orders": set(), "visits": set(), "readings": set()}
    for n in range(4):
        household = outside[n % 2]
        order = make_work_order(session, household, status=Status.assigned, assignee=d.steward1)
        visit = Visit(household_id=household.id, work_order_id=order.id, steward_id=d.steward1.id,
                      arrived_at=utcnow(), actions=f"outside {n}")
        reading = Reading(household_id=household.id, taken_at=utcnow(), temp_c=15 + n, taken_by_id=d.steward1.id)
        session.add_all([visit, reading])
        session.commit()
        own["work_orders"].add(str(order.id))
        own["visits"].add(str(visit.id))
        own["readings"].add(str(reading.id))
    whole = device(d.steward1, "whole")
    assert whole.pull(limit=MAX_LIMIT) == 1
    for table, ids in own.items():
        assert ids <= set(whole.rows[table]), table
    assert whole.rows == server_rows(client, d.headers(d.steward1))
    for limit in (1, 2, 3, 7):
        paged = device(d.steward1, f"paged{limit}")
        paged.pull(limit=limit)
        assert paged.rows == whole.rows, limit


def test_a_cursor_of_the_previous_format_still_resumes(client: TestClient, district: District,
                                                       device: Callable[..., Device]) -> None:
    import orjson

    from sync import cursor as cursors

    d = device(district.steward1)
    d.pull_page(limit=2)
    assert d.cursor is not None
    state = cursors.decode(d.cursor, district.settings.secret_key)
    assert state.phase == cursors.SNAPSHOT and state.phase_part == 0
    fields = [1, state.user_id.hex, int(state.office), None if state.client_id is None else state.client_id.hex,
              state.seq, state.table, None, state.scope_seq,
              state.phase, state.phase_seq, state.phase_table, state.phase_row.hex if state.phase_row else None,
              state.phase_key.hex if state.phase_key else None]
    payload = orjson.dumps(fields)
    old = base64.urlsafe_b64encode(payload + cursors._mac(district.settings.secret_key, payload)).rstrip(b"=")
    assert cursors.decode(old.decode(), district.settings.secret_key) == state.with_(database=0)  # no identity yet
    d.cursor = old.decode()
    d.pull()
    assert d.resets == 0
    assert d.rows == server_rows(client, district.headers(district.steward1))


def test_later_snapshot_pages_start_from_their_place_in_the_grid(client: TestClient, district: District,
                                                                 device: Callable[..., Device],
                                                                 engine: Engine) -> None:
    # Regression: each page of a big table took the grid's whole key list, and SQLite walked every key before
    # the page again on every page (at 200,000 households a snapshot's 65th page of readings took 17.7 ms
    # instead of 2.9). PostgreSQL walks the grid's keys from the page's start (a LATERAL join).
    author = device(district.steward1, "author")
    for n in range(6):
        author.create("readings", household_id=str((district.h1a, district.h1b)[n % 2].id), taken_at=T0,
                      temp_c=10 + n)
    author.push()
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        paged = device(district.steward1, "paged")
        paged.pull(limit=2)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len(paged.rows["readings"]) == 7  # with the district's own reading
    later = [s for s in statements if "FROM readings" in s and "(readings.household_id, readings.id) >" in s]
    assert later, "no page of readings resumed inside the table"
    for statement in later:
        if engine.dialect.name == "sqlite":
            assert "households.id >= ?" in statement  # the grid's households from the page's key on
        else:
            assert "LATERAL" in statement


def test_a_page_comes_gzipped_to_a_device_that_accepts_it(client: TestClient, district: District) -> None:
    """A first sync over a weak link: the same page, a fraction of the bytes (docs/sync-protocol.md)."""
    headers = district.headers(district.steward1)
    params = {"schema_version": 1}
    plain = client.get("/api/v1/sync/pull", params=params, headers=headers | {"accept-encoding": "identity"})
    packed = client.get("/api/v1/sync/pull", params=params, headers=headers | {"accept-encoding": "gzip"})
    assert plain.status_code == packed.status_code == 200
    assert "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip"
    assert int(packed.headers["content-length"]) < len(plain.content) / 2
    assert packed.json()["changes"] == plain.json()["changes"] and packed.json()["changes"]["households"]["upserts"]


@pytest.mark.parametrize("row_by_row", [True, False], ids=["row_by_row", "grid_set"])
def test_a_stewards_delta_is_the_same_whichever_way_visibility_is_tested(
        row_by_row: bool, client: TestClient, district: District, device: Callable[..., Device], engine: Engine,
        session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """A short delta tests each row's household against the grid one by one, a long one against the grid's
    household set built once (sync/pull.py ROW_BY_ROW_BELOW); both must see exactly the same rows: in the
    grid, the steward's own outside it, nothing else."""
    from sync import pull as pull_module

    monkeypatch.setattr(pull_module, "ROW_BY_ROW_BELOW", 10**9 if row_by_row else 0)
    phone = device(district.steward1)
    phone.pull()
    d, s1, s2 = district, district.steward1, district.steward2
    expected: set[str] = set()
    for i in range(6):
        mine_outside = make_reading(session, d.h3a, s1, temp_c=10 + i)  # own, outside the grid
        in_grid = make_reading(session, d.h1b, s2, temp_c=20 + i)  # someone else's, in the grid
        make_reading(session, d.h2a, s2, temp_c=30 + i)  # neither
        expected |= {str(mine_outside.id), str(in_grid.id)}
    visit = make_visit(session, d.h2a, s1)  # own visit outside the grid
    make_visit(session, d.h3a, s2)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        before = {row_id for row_id in phone.rows["readings"]}
        phone.pull()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert set(phone.rows["readings"]) - before == expected
    assert str(visit.id) in phone.rows["visits"]
    assert phone.rows == server_rows(client, d.headers(d.steward1))
    delta = [s for s in statements if "FROM readings" in s and "ORDER BY readings.seq" in s]
    assert delta and all(("EXISTS" in s) == row_by_row for s in delta), delta


# The service's own threads (api/proactive/worker.py, speech/worker.py, api/db.py, video/recording.py).
BACKGROUND_THREADS = ("proactive-", "speech-", "sqlite-", "recorder-")


def test_a_pull_reads_outside_a_transaction(client: TestClient, district: District, engine: Engine,
                                            device: Callable[..., Device]) -> None:
    """A pull only reads, each statement correct on its own snapshot: on PostgreSQL it saves the `BEGIN` and
    the `ROLLBACK` of a transaction, two round trips per pull. A push still writes in one transaction."""
    d = district
    steward = device(d.steward1)
    steward.pull()
    seen: list[tuple[str, bool, str]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name.startswith(BACKGROUND_THREADS):
            return  # another test's worker on the shared engine: not this pull's (the listener is engine-wide)
        seen.append((statement.split(None, 1)[0].upper(), autocommit(conn), " ".join(statement.split())[:120]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        steward.pull()
        pulled = list(seen)
        seen.clear()
        steward.update("work_orders", str(d.wo1.id), status=Status.in_progress.value)
        steward.push()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert pulled and {verb for verb, _, _ in pulled} == {"SELECT"}
    # The statements named, should another thread's one ever be caught here (seen once, in a loaded run, before
    # the background threads were left out).
    assert all(autocommit for _, autocommit, _ in pulled), [text for _, autocommit, text in pulled if not autocommit]
    assert any(verb == "UPDATE" for verb, _, _ in seen) and not any(autocommit for _, autocommit, _ in seen)


def test_a_snapshot_that_did_not_continue_the_devices_cursor_says_reset(client: TestClient, district: District,
                                                                        device: Callable[..., Device]) -> None:
    """Regression: a push sent without the optional cursor answers a snapshot cursor; the pull that took it
    said `reset: false`, so the device kept a reading deleted meanwhile and the households of a building that
    had left its grid (names and phone numbers) for good. Every snapshot's first page now says reset."""
    d = district
    phone = device(d.steward1, "phone")
    phone.pull()
    assert str(d.reading1.id) in phone.rows["readings"] and str(d.h1a.id) in phone.rows["households"]
    office = device(d.supervisor, "office")
    office.pull()
    office.delete("readings", str(d.reading1.id))
    assert office.push()["results"][0]["status"] == "applied"
    moved = client.put(f"/api/v1/users/{d.steward1.id}/grid", json={"building_ids": [str(d.b2.id)]},
                       headers=d.headers(d.admin))
    assert moved.status_code == 200, moved.text
    answer = client.post("/api/v1/sync/push", json={"client_id": phone.client_id, "schema_version": 1,
                                                    "mutations": []}, headers=phone.headers)
    phone.cursor = answer.json()["cursor"]
    phone.pull()
    assert phone.resets == 1
    assert str(d.reading1.id) not in phone.rows["readings"] and str(d.h1a.id) not in phone.rows["households"]
    assert phone.rows == server_rows(client, d.headers(d.steward1))
