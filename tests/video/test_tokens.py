"""ICE servers handed to clients: STUN as given, TURN with coturn's time-limited REST credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from api.settings import Settings
from video.tokens import ice_servers


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
