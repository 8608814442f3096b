"""ICE servers handed to clients (STUN as given, TURN with coturn's time-limited REST credentials), and join tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid

import jwt
import pytest

from api.errors import Unauthorized
from api.settings import Settings
from video.tokens import JOIN_TYPE, decode_join_token, ice_servers


def test_no_servers_configured_means_none(video_settings: Settings):
    assert ice_servers(video_settings, ttl_s=60) == []


def test_turn_credentials_are_derived_from_the_shared_secret(video_settings: Settings):
    settings = video_settings.model_copy(update={
        "video_ice_servers": "stun:turn.example.cn:3478, turn:turn.example.cn:3478?transport=udp,"
                             "turns:turn.example.cn:5349",
        "video_turn_secret": "coturn-static-auth-secret"})
    stun, turn = ice_servers(settings, ttl_s=3600)
    assert stun.urls == ["stun:turn.example.cn:3478"] and stun.username is None
    assert turn.urls == ["turn:turn.example.cn:3478?transport=udp", "turns:turn.example.cn:5349"]
    expiry, name = turn.username.split(":")  # type: ignore[union-attr]
    assert name == "steward" and 3590 <= int(expiry) - time.time() <= 3601
    expected = hmac.new(b"coturn-static-auth-secret", turn.username.encode(), hashlib.sha1).digest()  # type: ignore[union-attr]
    assert turn.credential == base64.b64encode(expected).decode()


@pytest.mark.parametrize("claims", [{"exp": "tomorrow"}, {"exp": 10**20}, {"sub": 12345}, {"sub": "not-an-id"}])
def test_a_signed_join_token_with_claims_of_the_wrong_kind_is_invalid_not_a_500(video_settings: Settings,
                                                                                claims: dict[str, object]):
    """Regression (review): a join token signed with the key but with an `exp` that is text or too large for a
    date answered 500 where the link's expiry does not matter (hanging up)."""
    good = {"sub": str(uuid.uuid4()), "exp": int(time.time()) + 600, "typ": JOIN_TYPE, "role": "resident"}
    token = jwt.encode(good | claims, video_settings.secret_key, algorithm=video_settings.jwt_algorithm)
    with pytest.raises(Unauthorized) as refused:
        decode_join_token(settings=video_settings, token=token, expired_too=True)
    assert refused.value.code == "invalid_token"
