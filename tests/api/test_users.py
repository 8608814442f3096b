"""Users and stewards' grids (administration); sign-in itself is in test_auth."""

from __future__ import annotations

import contextlib
import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from api.errors import Conflict
from api.users import service
from api.users.models import GridBuilding, Role, User, UserUpdate
from tests.utils.asserts import assert_error, count_rows, db_state, reread
from tests.utils.factories import PASSWORD, World, make_building, make_household, make_user, random_id

API = "/api/v1"


def _grid(client: TestClient, w: World, user: User) -> list[str]:
    r = client.get(f"{API}/users/{user.id}/grid", headers=w.headers(w.admin))
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == str(user.id)
    return sorted(r.json()["building_ids"])


def _visible_households(client: TestClient, w: World, user: User) -> set[str]:
    body = client.get(f"{API}/households", headers=w.headers(user)).json()
    assert body["count"] == len(body["data"])
    return {h["id"] for h in body["data"]}


def test_admin_creates_a_steward_with_a_grid(client: TestClient, session: Session, world: World) -> None:
    grid = sorted([str(world.building_a.id), str(world.building_b.id)])
    r = client.post(f"{API}/users", json={"username": "zhang.wei", "password": "long-enough-pw", "role": "steward",
                                          "full_name": "张伟", "grid": [*grid, grid[0]]},
                    headers=world.headers(world.admin))
    assert r.status_code == 201, r.text
    user = r.json()
    assert (user["role"], user["active"], user["version"]) == ("steward", True, 1)
    assert "password" not in user and "password_hash" not in user
    created = reread(session, User, user["id"])
    assert _grid(client, world, created) == grid
    assert _visible_households(client, world, created) == {str(world.household_a.id), str(world.household_b.id)}
    me = client.get(f"{API}/auth/me/grid", headers=world.headers(created)).json()
    assert sorted(me["building_ids"]) == grid


def test_usernames_are_checked(client: TestClient, session: Session, world: World) -> None:
    """Regression: the username pattern was silently ignored (`regex=` is not a SQLModel Field option)."""
    h = world.headers(world.admin)
    for name in ("zhang wei", "张伟", "a/b", "ab"):
        r = client.post(f"{API}/users", json={"username": name, "password": "long-enough-pw", "role": "supervisor"},
                        headers=h)
        assert_error(r, 422, "validation_error")
    assert count_rows(session, User) == 4


def test_a_password_of_spaces_alone_is_refused(client: TestClient, session: Session, world: World) -> None:
    """Regression: eight spaces passed the length rule, on create and on change; spaces inside still count."""
    h = world.headers(world.admin)
    r = client.post(f"{API}/users", json={"username": "blank.pw", "password": " " * 8, "role": "supervisor"},
                    headers=h)
    assert_error(r, 422, "validation_error")
    assert "only spaces" in r.json()["detail"]["message"]
    assert count_rows(session, User) == 4
    before = db_state(session)
    r = client.patch(f"{API}/users/{world.steward_b.id}", json={"password": "\t \u3000     "}, headers=h)
    assert_error(r, 422, "validation_error")
    assert db_state(session) == before
    r = client.patch(f"{API}/users/{world.steward_b.id}", json={"password": " two words "}, headers=h)
    assert r.status_code == 200, r.text
    token = client.post(f"{API}/auth/token", data={"username": world.steward_b.username, "password": " two words "})
    assert token.status_code == 200


@pytest.mark.parametrize("role", ["supervisor", "admin"])
def test_only_stewards_have_a_grid(client: TestClient, session: Session, world: World, role: str) -> None:
    h = world.headers(world.admin)
    r = client.post(f"{API}/users", json={"username": "office1", "password": "long-enough-pw", "role": role,
                                          "grid": [str(world.building_a.id)]}, headers=h)
    assert_error(r, 422, "grid_for_non_steward")
    assert count_rows(session, User) == 4
    office = world.supervisor if role == "supervisor" else world.admin
    before = db_state(session)
    for ids in ([str(world.building_a.id)], []):
        r = client.put(f"{API}/users/{office.id}/grid", json={"building_ids": ids}, headers=h)
        assert_error(r, 422, "grid_for_non_steward")
    assert db_state(session) == before


def test_put_grid_replaces_it_and_changes_what_the_steward_sees(client: TestClient, session: Session,
                                                                world: World) -> None:
    steward = world.steward_a
    building_c = make_building(session, world.station)
    household_c = make_household(session, building_c)
    assert _visible_households(client, world, steward) == {str(world.household_a.id)}
    r = client.put(f"{API}/users/{steward.id}/grid",
                   json={"building_ids": [str(world.building_b.id), str(building_c.id)]},
                   headers=world.headers(world.admin))
    assert r.status_code == 200, r.text
    expected = sorted([str(world.building_b.id), str(building_c.id)])
    assert sorted(r.json()["building_ids"]) == expected == _grid(client, world, steward)
    assert _visible_households(client, world, steward) == {str(world.household_b.id), str(household_c.id)}
    assert_error(client.get(f"{API}/households/{world.household_a.id}", headers=world.headers(steward)), 404,
                 "not_found")
    # Steward B keeps building B: grids may overlap.
    assert _grid(client, world, world.steward_b) == [str(world.building_b.id)]
    r = client.put(f"{API}/users/{steward.id}/grid", json={"building_ids": []}, headers=world.headers(world.admin))
    assert r.status_code == 200 and r.json()["building_ids"] == []
    assert _visible_households(client, world, steward) == set()


def test_put_grid_with_a_missing_building_changes_nothing(client: TestClient, session: Session,
                                                          world: World) -> None:
    before = db_state(session)
    r = client.put(f"{API}/users/{world.steward_a.id}/grid",
                   json={"building_ids": [str(world.building_b.id), random_id()]}, headers=world.headers(world.admin))
    assert_error(r, 404, "not_found")
    assert db_state(session) == before
    assert _grid(client, world, world.steward_a) == [str(world.building_a.id)]


def test_a_steward_promoted_to_supervisor_loses_the_grid(client: TestClient, session: Session,
                                                         world: World) -> None:
    r = client.patch(f"{API}/users/{world.steward_a.id}", json={"role": "supervisor"},
                     headers=world.headers(world.admin))
    assert r.status_code == 200 and r.json()["role"] == "supervisor" and r.json()["version"] == 2
    assert count_rows(session, GridBuilding) == 1  # steward B's
    # The new role applies to the old token at once: the whole district is visible.
    assert len(_visible_households(client, world, world.steward_a)) == 2


def test_profile_updates_bump_the_version_and_password_changes_apply(client: TestClient, session: Session,
                                                                     world: World) -> None:
    h = world.headers(world.admin)
    r = client.patch(f"{API}/users/{world.steward_b.id}", json={"full_name": "李娜", "phone": "13700000000",
                                                                "password": "a-new-long-password"}, headers=h)
    assert r.status_code == 200, r.text
    assert (r.json()["full_name"], r.json()["version"]) == ("李娜", 2)
    token = client.post(f"{API}/auth/token", data={"username": world.steward_b.username, "password": PASSWORD})
    assert_error(token, 401, "invalid_credentials")
    token = client.post(f"{API}/auth/token", data={"username": world.steward_b.username,
                                                   "password": "a-new-long-password"})
    assert token.status_code == 200
    r = client.patch(f"{API}/users/{world.steward_b.id}", json={"active": False}, headers=h)
    assert r.status_code == 200 and r.json()["active"] is False
    assert_error(client.get(f"{API}/auth/me", headers=world.headers(world.steward_b)), 401, "inactive_user")


def test_list_users_by_role_and_name(client: TestClient, session: Session, world: World) -> None:
    make_user(session, Role.steward, username="aaa-first")
    h = world.headers(world.admin)
    every = client.get(f"{API}/users", headers=h).json()
    assert every["count"] == 5
    assert [u["username"] for u in every["data"]] == sorted(u["username"] for u in every["data"])
    assert every["data"][0]["username"] == "aaa-first"
    stewards = client.get(f"{API}/users", params={"role": "steward"}, headers=h).json()
    assert stewards["count"] == 3 and {u["role"] for u in stewards["data"]} == {"steward"}
    page = client.get(f"{API}/users", params={"role": "steward", "limit": 2, "offset": 2}, headers=h).json()
    assert page["count"] == 3 and len(page["data"]) == 1
    assert_error(client.get(f"{API}/users", params={"role": "mayor"}, headers=h), 422, "validation_error")


@pytest.mark.parametrize(("method", "suffix", "body"), [("GET", "", None), ("PATCH", "", {"full_name": "x"}),
                                                         ("GET", "/grid", None),
                                                         ("PUT", "/grid", {"building_ids": []})])
def test_missing_users_are_404(client: TestClient, world: World, method: str, suffix: str,
                               body: dict[str, object] | None) -> None:
    r = client.request(method, f"{API}/users/{random_id()}{suffix}", json=body, headers=world.headers(world.admin))
    assert_error(r, 404, "not_found")


def test_grid_size_is_bounded(client: TestClient, session: Session, world: World) -> None:
    before = db_state(session)
    r = client.put(f"{API}/users/{world.steward_a.id}/grid", json={"building_ids": [random_id()] * 5001},
                   headers=world.headers(world.admin))
    assert_error(r, 422, "validation_error")
    # Creating a steward too (a review: a grid of any length was taken there, 26,000 ids read before a 404)
    r = client.post(f"{API}/users", json={"username": "big_grid", "password": PASSWORD, "role": "steward",
                                          "grid": [str(random_id())] * 5001}, headers=world.headers(world.admin))
    assert_error(r, 422, "validation_error")
    assert db_state(session) == before


@pytest.mark.parametrize("body", [{"role": "steward"}, {"role": "supervisor"}, {"active": False},
                                  {"role": "admin", "active": False}])
def test_the_last_active_admin_stays_one(client: TestClient, session: Session, world: World,
                                         body: dict[str, object]) -> None:
    """Regression: the only admin could demote or disable themselves, and then nobody could manage users."""
    before = db_state(session)
    r = client.patch(f"{API}/users/{world.admin.id}", json=body, headers=world.headers(world.admin))
    assert_error(r, 409, "last_admin")
    assert db_state(session) == before
    # A disabled admin does not count: the only active one is still the last.
    make_user(session, Role.admin, active=False)
    assert_error(client.patch(f"{API}/users/{world.admin.id}", json=body, headers=world.headers(world.admin)),
                 409, "last_admin")
    # With a second active admin, the change is allowed, and the second is then the last.
    second = make_user(session, Role.admin)
    r = client.patch(f"{API}/users/{world.admin.id}", json=body, headers=world.headers(world.admin))
    assert r.status_code == 200, r.text
    assert_error(client.patch(f"{API}/users/{second.id}", json=body, headers=world.headers(second)),
                 409, "last_admin")


def test_two_admins_demoting_themselves_at_once_leave_one(engine: Engine, session: Session, world: World,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression guard for the race: each demotion counted the other admin, still an admin when it looked.

    Each count waits up to a second for the other one: without the row locks (PostgreSQL) or the count
    inside the write transaction (SQLite), both counts see two admins and both demotions commit."""
    second = make_user(session, Role.admin)
    counted = threading.Barrier(2, timeout=1)
    count = service._count_active_admins

    def count_then_wait(s: Session) -> int:
        n = count(s)
        with contextlib.suppress(threading.BrokenBarrierError):
            counted.wait()
        return n

    monkeypatch.setattr(service, "_count_active_admins", count_then_wait)
    outcomes: list[str] = []

    def demote(user_id: object) -> None:
        with Session(engine, expire_on_commit=False) as s:
            user = s.get(User, user_id)
            assert user is not None
            try:
                service.update_user(session=s, user=user, data=UserUpdate(role=Role.steward))
                outcomes.append("demoted")
            except Conflict as exc:
                outcomes.append(exc.code)

    threads = [threading.Thread(target=demote, args=(u.id,)) for u in (world.admin, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["demoted", "last_admin"]
    session.rollback()
    admins = session.exec(select(User).where(User.role == Role.admin)).all()
    assert len(admins) == 1


def test_two_grid_replacements_at_once_leave_one_of_them(engine: Engine, session: Session, world: World,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: both read the empty grid, then each inserted its own building: the steward ended with the
    union, a building neither admin gave. Each now reads the grid under the user's row lock."""
    steward = world.steward_a
    session.exec(GridBuilding.__table__.delete().where(GridBuilding.user_id == steward.id))  # type: ignore[attr-defined]
    session.commit()
    read = threading.Barrier(2, timeout=1)
    get_grid = service.get_grid

    def read_then_wait(*, session: Session, user: User) -> list[object]:
        ids = get_grid(session=session, user=user)
        with contextlib.suppress(threading.BrokenBarrierError):  # with the lock, the other never gets here
            read.wait()
        return ids  # type: ignore[return-value]

    monkeypatch.setattr(service, "get_grid", read_then_wait)
    answers: list[object] = []

    def put(building_id: object) -> None:
        with Session(engine, expire_on_commit=False) as s:
            user = s.get(User, steward.id)
            assert user is not None
            answers.append(service.set_grid(session=s, user=user, building_ids=[building_id]))  # type: ignore[list-item]

    threads = [threading.Thread(target=put, args=(b.id,)) for b in (world.building_a, world.building_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    session.rollback()
    final = set(session.exec(select(GridBuilding.building_id).where(GridBuilding.user_id == steward.id)).all())
    assert final in ({world.building_a.id}, {world.building_b.id}), (final, answers)
    assert len(answers) == 2 and set(answers[-1]) == final, answers  # the last to finish wins  # type: ignore[call-overload]


def test_a_grid_is_not_given_to_a_steward_demoted_meanwhile(engine: Engine, world: World) -> None:
    """Regression: the role was checked on the row read before the lock, so a grid set from that copy after a
    demotion committed gave a supervisor grid rows (back in force, unseen, if they were made a steward again)."""
    steward_id = world.steward_a.id
    with Session(engine, expire_on_commit=False) as put:
        stale = service.get_user(session=put, id=steward_id)
        with Session(engine, expire_on_commit=False) as patch:
            service.update_user(session=patch, user=service.get_user(session=patch, id=steward_id),
                                data=UserUpdate(role=Role.supervisor))
        put.commit()
        with pytest.raises(Exception, match="Only stewards have a grid"):
            service.set_grid(session=put, user=stale, building_ids=[world.building_b.id])
    with Session(engine) as check:
        assert check.exec(select(GridBuilding).where(GridBuilding.user_id == steward_id)).all() == []


@pytest.mark.parametrize("change", [{"active": False}, {"role": "supervisor"}], ids=["disabled", "demoted"])
def test_a_steward_who_leaves_hands_their_open_orders_back(client: TestClient, session: Session, world: World,
                                                           change: dict[str, object]) -> None:
    """Regression: a disabled or demoted steward kept their open orders: nobody could work them (orders go to
    active stewards) and the office could not take them back. They go back to `new`, unassigned, each with a
    `released` line; finished orders keep their steward."""
    from api.work_orders.models import Status, WorkOrder
    from tests.utils.factories import make_work_order

    steward = world.steward_a
    open_orders = [make_work_order(session, world.household_a, status=s, assignee=steward)
                   for s in (Status.assigned, Status.in_progress, Status.waiting_resident)]
    done = make_work_order(session, world.household_a, status=Status.resolved, assignee=steward)
    others = make_work_order(session, world.household_b, status=Status.assigned, assignee=world.steward_b)
    r = client.patch(f"{API}/users/{steward.id}", json=change, headers=world.headers(world.admin))
    assert r.status_code == 200, r.text
    for order in open_orders:
        row = reread(session, WorkOrder, order.id)
        assert (row.status, row.assignee_id, row.version) == (Status.new, None, 2)
        [*_, last] = client.get(f"{API}/work-orders/{order.id}/events", headers=world.headers(world.admin)).json()
        assert (last["kind"], last["assignee_id"], last["to_status"]) == ("released", str(steward.id), "new")
        assert last["actor_id"] == str(world.admin.id)
    assert reread(session, WorkOrder, done.id).assignee_id == steward.id
    assert reread(session, WorkOrder, others.id).assignee_id == world.steward_b.id
    # the office gives them to someone else as any new order
    r = client.post(f"{API}/work-orders/{open_orders[0].id}/assign", json={"assignee_id": str(world.steward_b.id)},
                    headers=world.headers(world.supervisor))
    assert r.status_code == 200 and r.json()["status"] == "assigned", r.text
    # Regression: reopening the finished one gave it back, in progress, to the steward who had left.
    r = client.post(f"{API}/work-orders/{done.id}/transitions", json={"status": "in_progress"},
                    headers=world.headers(world.supervisor))
    assert r.status_code == 200, r.text
    # one write, one version (review: the steward's lookup flushed the order midway, and it went up by two)
    assert (r.json()["status"], r.json()["assignee_id"], r.json()["version"]) == ("new", None, done.version + 1)
    [*_, reopened, released] = client.get(f"{API}/work-orders/{done.id}/events",
                                          headers=world.headers(world.admin)).json()
    assert (reopened["kind"], reopened["to_status"]) == ("status", "in_progress")
    assert (released["kind"], released["assignee_id"], released["to_status"]) == ("released", str(steward.id), "new")


def test_a_user_change_decides_on_the_row_as_it_is_now(engine: Engine, world: World) -> None:
    """Regression (review): `update_user` decided from the copy of the user its request had read, unlocked.
    With changes committed in between, disabling a supervisor who had been made the only admin meanwhile
    passed the last-admin check; a phone edit deleted the grid of a user made a steward meanwhile; and
    disabling them left them their open orders."""
    from api.work_orders.models import Status, WorkOrder
    from tests.utils.factories import make_work_order

    sup_id, admin_id = world.supervisor.id, world.admin.id

    def meanwhile(change: UserUpdate, then: object = None) -> None:
        with Session(engine, expire_on_commit=False) as other:
            user = service.update_user(session=other, user=service.get_user(session=other, id=sup_id), data=change)
            if callable(then):
                then(other, user)

    with Session(engine, expire_on_commit=False) as request:  # PATCH {active: false} read a supervisor
        stale = service.get_user(session=request, id=sup_id)
        request.commit()
        meanwhile(UserUpdate(role=Role.admin))
        with Session(engine, expire_on_commit=False) as other:  # the first admin steps down: S is the only one
            service.update_user(session=other, user=service.get_user(session=other, id=admin_id),
                                data=UserUpdate(role=Role.supervisor))
        with pytest.raises(Conflict):
            service.update_user(session=request, user=stale, data=UserUpdate(active=False))

    with Session(engine, expire_on_commit=False) as request:  # PATCH {phone} read an admin
        stale = service.get_user(session=request, id=sup_id)
        request.commit()
        with Session(engine, expire_on_commit=False) as other:  # another admin again, then S a steward with a grid
            service.update_user(session=other, user=service.get_user(session=other, id=admin_id),
                                data=UserUpdate(role=Role.admin))
        meanwhile(UserUpdate(role=Role.steward),
                  lambda other, user: service.set_grid(session=other, user=user, building_ids=[world.building_a.id]))
        service.update_user(session=request, user=stale, data=UserUpdate(phone="13900000000"))
    with Session(engine) as check:
        assert check.exec(select(GridBuilding.building_id).where(GridBuilding.user_id == sup_id)).all() == [
            world.building_a.id]

    with Session(engine, expire_on_commit=False) as request:  # PATCH {active: false}, read a steward...
        stale = service.get_user(session=request, id=sup_id)
        request.commit()
        order = make_work_order(request, world.household_a, status=Status.assigned,  # ...given an order meanwhile
                                assignee=request.get(User, sup_id))
        request.expire_all()
        stale.role = Role.supervisor  # the copy as read before they became a steward
        service.update_user(session=request, user=stale, data=UserUpdate(active=False))
    with Session(engine) as check:
        released = check.get(WorkOrder, order.id)
        assert released is not None and (released.status, released.assignee_id) == (Status.new, None)


def test_a_name_with_a_non_ascii_capital_stored_before_the_name_rule_signs_in(client: TestClient,
                                                                               session: Session) -> None:
    """Regression (review): on SQLite, whose lower() folds ASCII only, the stored name lowered there never
    matched the typed one lowered by Python: such an account (stored before the name pattern held) could not
    sign in with its exact name."""
    user = make_user(session, Role.steward, username="Łukasz.Lü")
    r = client.post("/api/v1/auth/token", data={"username": user.username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    r = client.post("/api/v1/auth/token", data={"username": "ŁUKASZ.LÜ".replace("Ü", "ü"), "password": PASSWORD})
    assert r.status_code == 200, r.text  # ASCII letters in any case, as for every name


def test_a_name_stored_before_the_name_rule_is_listed_and_edited(client: TestClient, session: Session,
                                                                  world: World) -> None:
    """Regression (review): the answer's model checked the create rules on the way out, so one name stored
    before the pattern held (`zhang wei`) made the whole users list a 500, and a PATCH of that user a 500 after
    its change was committed."""
    legacy = make_user(session, Role.steward, username="zhang wei", full_name="张伟")
    admin = world.headers(world.admin)
    listed = client.get("/api/v1/users", headers=admin)
    assert listed.status_code == 200 and "zhang wei" in [u["username"] for u in listed.json()["data"]], listed.text
    assert client.get(f"/api/v1/users/{legacy.id}", headers=admin).json()["username"] == "zhang wei"
    r = client.patch(f"/api/v1/users/{legacy.id}", json={"full_name": "张伟（西区）"}, headers=admin)
    assert r.status_code == 200 and r.json()["full_name"] == "张伟（西区）", r.text
    me = client.get("/api/v1/auth/me", headers=world.headers(legacy))
    assert me.status_code == 200 and me.json()["username"] == "zhang wei", me.text


@pytest.mark.parametrize("field", ["full_name", "phone", "role", "active", "password"])
def test_null_for_a_user_field_is_refused_not_a_silent_no_change(client: TestClient, session: Session, world: World,
                                                                 field: str) -> None:
    """Regression (review): `{"role": null, "active": null}` answered 200 and changed nothing; work orders refuse
    null (leave a field out to keep it)."""
    before = db_state(session)
    r = client.patch(f"/api/v1/users/{world.steward_a.id}", json={field: None}, headers=world.headers(world.admin))
    assert_error(r, 422, "validation_error")
    assert db_state(session) == before


def test_names_and_numbers_are_stored_without_invisible_characters(client: TestClient, world: World) -> None:
    """Regression: a full name of zero-width characters and spaces was stored as typed (and signed residents'
    campaign SMS with nothing); a phone of words was taken. Full-width brackets in a name stay as typed."""
    admin = world.headers(world.admin)
    body = {"username": "zhangsan", "password": "correct horse", "role": "steward",
            "full_name": "\u200b \u3000\u2060", "phone": " \u200b"}
    r = client.post("/api/v1/users", json=body, headers=admin)
    assert r.status_code == 201, r.text
    assert (r.json()["full_name"], r.json()["phone"]) == ("", "")
    r = client.patch(f"/api/v1/users/{world.steward_a.id}",
                     json={"full_name": "  张\u200b师傅  （西区）", "phone": " 138-0000-1111\u200b "}, headers=admin)
    assert r.status_code == 200, r.text
    assert (r.json()["full_name"], r.json()["phone"]) == ("张师傅 （西区）", "138-0000-1111")
    for phone in ("call me maybe", "12", "+"):
        assert_error(client.patch(f"/api/v1/users/{world.steward_a.id}", json={"phone": phone}, headers=admin),
                     422, "validation_error")


@pytest.mark.parametrize("flag", ["false", 0])
def test_active_is_a_json_boolean(client: TestClient, session: Session, world: World, flag: object) -> None:
    """Regression (review): `{"active": "false"}` disabled the steward and released their orders."""
    r = client.patch(f"{API}/users/{world.steward_b.id}", json={"active": flag}, headers=world.headers(world.admin))
    assert_error(r, 422, "validation_error")
    assert reread(session, User, world.steward_b.id).active


def test_a_password_reset_holds_against_a_sign_in_upgrading_the_old_hash_at_that_moment(
        client: TestClient, session: Session, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): a sign-in that upgrades a hash made with older argon2 settings wrote a fresh hash of
    the password it verified over the row it had read; a reset committed between the two was undone (the old
    password, a lost handheld's, signed in again and the new one was refused)."""
    from argon2 import PasswordHasher

    old, new = "old-password-1", "new-password-2"
    legacy = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(old)
    steward = make_user(session, Role.steward, password_hash=legacy)
    assert service.needs_rehash(legacy)
    verified, reset_done = threading.Event(), threading.Event()
    real_verify = service.verify_password

    def verify_then_wait(hashed: str, password: str) -> bool:  # the sign-in between its check and its rehash
        ok = real_verify(hashed, password)
        if password == old and not verified.is_set():
            verified.set()
            reset_done.wait(5)
        return ok

    def sign_in(password: str) -> int:
        return client.post("/api/v1/auth/token", data={"username": steward.username, "password": password}
                           ).status_code

    monkeypatch.setattr(service, "verify_password", verify_then_wait)
    signing_in = threading.Thread(target=sign_in, args=(old,))
    signing_in.start()
    try:
        assert verified.wait(5)
        reset = client.patch(f"/api/v1/users/{steward.id}", json={"password": new},
                             headers=world.headers(world.admin))
        assert reset.status_code == 200, reset.text
    finally:
        reset_done.set()
        signing_in.join()
    monkeypatch.setattr(service, "verify_password", real_verify)
    assert (sign_in(old), sign_in(new)) == (401, 200)


def test_a_hash_made_with_older_settings_is_upgraded_at_the_next_sign_in(client: TestClient, session: Session
                                                                         ) -> None:
    from argon2 import PasswordHasher

    legacy = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("old-password-1")
    steward = make_user(session, Role.steward, password_hash=legacy)
    r = client.post("/api/v1/auth/token", data={"username": steward.username, "password": "old-password-1"})
    assert r.status_code == 200, r.text
    stored = reread(session, User, steward.id).password_hash
    assert stored != legacy and not service.needs_rehash(stored)
