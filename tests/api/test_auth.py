"""Sign-in, tokens and role checks."""

from __future__ import annotations

from datetime import timedelta

import jwt
from fastapi.testclient import TestClient
from sqlmodel import Session

from api.db import utcnow
from api.settings import Settings
from api.users.models import Role
from tests.utils.factories import PASSWORD, auth, make_user


def test_sign_in_returns_a_bearer_token_that_opens_the_api(client: TestClient, session: Session) -> None:
    user = make_user(session, Role.supervisor)
    r = client.post("/api/v1/auth/token", data={"username": user.username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["role"] == "supervisor"
    # RFC 6749 5.1: no cache on the way keeps the token (the answer had no Cache-Control at all)
    assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["username"] == user.username
    assert "password_hash" not in me.json()


def test_wrong_password_and_unknown_user_get_the_same_401(client: TestClient, session: Session) -> None:
    user = make_user(session)
    wrong = client.post("/api/v1/auth/token", data={"username": user.username, "password": "nope-nope"})
    unknown = client.post("/api/v1/auth/token", data={"username": "ghost", "password": PASSWORD})
    for r in (wrong, unknown):
        assert r.status_code == 401
        assert r.json()["detail"]["code"] == "invalid_credentials"


def test_disabled_user_cannot_sign_in_or_use_an_old_token(client: TestClient, session: Session,
                                                          settings: Settings) -> None:
    user = make_user(session)
    headers = auth(settings, user)
    user.active = False
    session.add(user)
    session.commit()
    # The right password and a wrong one get the same answer: no confirmation of a guess (it said inactive_user).
    right = client.post("/api/v1/auth/token", data={"username": user.username, "password": PASSWORD})
    wrong = client.post("/api/v1/auth/token", data={"username": user.username, "password": PASSWORD + "x"})
    assert right.status_code == wrong.status_code == 401 and right.json() == wrong.json()
    assert right.json()["detail"]["code"] == "invalid_credentials"
    r = client.get("/api/v1/auth/me", headers=headers)
    assert r.status_code == 401 and r.json()["detail"]["code"] == "inactive_user"


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    r = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_a_new_password_ends_the_sessions_signed_in_before(client: TestClient, session: Session,
                                                           settings: Settings) -> None:
    """Regression (review): after a handheld was lost, the admin's password reset left its token working for the
    rest of its 12 hours."""
    admin, steward = make_user(session, Role.admin), make_user(session, Role.steward)
    lost, kept = sign_in(client, steward.username), sign_in(client, steward.username)
    office = auth(settings, admin)
    r = client.patch(f"/api/v1/users/{steward.id}", json={"phone": "13800000001"}, headers=office)
    assert r.status_code == 200, r.text
    assert client.get("/api/v1/auth/me", headers=kept).status_code == 200  # a profile edit signs nobody out
    r = client.patch(f"/api/v1/users/{steward.id}", json={"password": "a-new-password"}, headers=office)
    assert r.status_code == 200, r.text
    for headers in (lost, kept):
        r = client.get("/api/v1/auth/me", headers=headers)
        assert r.status_code == 401 and r.json()["detail"]["code"] == "token_revoked", r.text
    fresh = sign_in(client, steward.username, "a-new-password")
    assert client.get("/api/v1/auth/me", headers=fresh).status_code == 200
    assert client.get("/api/v1/auth/me", headers=office).status_code == 200  # the admin's own session goes on


def test_a_disabled_account_enabled_again_does_not_bring_old_tokens_back(client: TestClient, session: Session,
                                                                        settings: Settings) -> None:
    """Regression (review): disabling a lost handheld's account refused its token, and enabling the account
    again made the token work again."""
    admin, steward = make_user(session, Role.admin), make_user(session, Role.steward)
    lost = sign_in(client, steward.username)
    office = auth(settings, admin)
    for active in (False, True):
        r = client.patch(f"/api/v1/users/{steward.id}", json={"active": active}, headers=office)
        assert r.status_code == 200, r.text
    r = client.get("/api/v1/auth/me", headers=lost)
    assert r.status_code == 401 and r.json()["detail"]["code"] == "token_revoked"
    assert client.get("/api/v1/auth/me", headers=sign_in(client, steward.username)).status_code == 200


def test_a_token_signed_before_the_epoch_existed_still_works(client: TestClient, session: Session,
                                                             settings: Settings) -> None:
    """Tokens signed before migration 0017 carry no epoch: they count as epoch 0, so the upgrade signs nobody
    out, and they end with the first new password like any other."""
    user = make_user(session)
    old = jwt.encode({"sub": str(user.id), "role": "steward", "exp": utcnow() + timedelta(hours=1),
                      "typ": "access"}, settings.secret_key, algorithm="HS256")
    headers = {"Authorization": f"Bearer {old}"}
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200
    user.token_epoch += 1
    session.add(user)
    session.commit()
    assert client.get("/api/v1/auth/me", headers=headers).json()["detail"]["code"] == "token_revoked"


def test_missing_forged_and_expired_tokens_are_refused(client: TestClient, session: Session,
                                                        settings: Settings) -> None:
    user = make_user(session)
    assert client.get("/api/v1/auth/me").json()["detail"]["code"] == "not_authenticated"
    forged = jwt.encode({"sub": str(user.id), "role": "admin", "exp": utcnow() + timedelta(hours=1),
                         "typ": "access"}, "another-key-another-key-another-key", algorithm="HS256")
    r = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and r.json()["detail"]["code"] == "invalid_token"
    expired = jwt.encode({"sub": str(user.id), "role": "steward", "exp": utcnow() - timedelta(seconds=5),
                          "typ": "access"}, settings.secret_key, algorithm="HS256")
    r = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and r.json()["detail"]["code"] == "token_expired"


def test_role_comes_from_the_database_not_the_token(client: TestClient, session: Session,
                                                     settings: Settings) -> None:
    steward = make_user(session, Role.steward)
    token = jwt.encode({"sub": str(steward.id), "role": "admin", "exp": utcnow() + timedelta(hours=1),
                        "typ": "access"}, settings.secret_key, algorithm="HS256")
    r = client.get("/api/v1/users", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and r.json()["detail"]["code"] == "role_required"


def test_only_admins_manage_users(client: TestClient, session: Session, settings: Settings) -> None:
    admin = make_user(session, Role.admin)
    supervisor = make_user(session, Role.supervisor)
    body = {"username": "newsteward", "password": "long-enough-pw", "role": "steward"}
    assert client.post("/api/v1/users", json=body, headers=auth(settings, supervisor)).status_code == 403
    r = client.post("/api/v1/users", json=body, headers=auth(settings, admin))
    assert r.status_code == 201, r.text
    again = client.post("/api/v1/users", json=body, headers=auth(settings, admin))
    assert again.status_code == 409 and again.json()["detail"]["code"] == "already_exists"


def test_a_user_name_is_one_name_whatever_its_case(client: TestClient, session: Session) -> None:
    """Regression: `ALICE` could be created next to `alice` (a look-alike account sharing her lockout)."""
    admin = make_user(session, Role.admin)
    token = client.post("/api/v1/auth/token", data={"username": admin.username, "password": PASSWORD}).json()
    h = {"Authorization": f"Bearer {token['access_token']}"}
    body = {"password": "a-long-password", "role": "supervisor", "full_name": "Alice"}
    assert client.post("/api/v1/users", json=body | {"username": "Alice"}, headers=h).status_code == 201
    for variant in ("alice", "ALICE", "aLiCe"):
        r = client.post("/api/v1/users", json=body | {"username": variant}, headers=h)
        assert r.status_code == 409 and r.json()["detail"]["code"] == "already_exists", r.text
    # kept as typed, signed in with any case
    signed = client.post("/api/v1/auth/token", data={"username": "ALICE", "password": "a-long-password"})
    assert signed.status_code == 200, signed.text
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {signed.json()['access_token']}"})
    assert me.json()["username"] == "Alice"
