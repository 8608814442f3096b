"""Settings: defaults that work out of the box, and refusal of the dev secret outside dev mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from api.settings import DEV_SECRET_KEY, Settings, unknown_variables


def test_defaults_give_an_embedded_sqlite_database_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'steward.db'}"


def test_environment_variables_use_the_steward_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEWARD_DATABASE_URL", "postgres://u:p@db:5432/steward")
    monkeypatch.setenv("STEWARD_PORT", "9001")
    settings = Settings()
    assert settings.resolved_database_url == "postgresql+psycopg://u:p@db:5432/steward"
    assert settings.port == 9001


def test_production_refuses_the_development_secret() -> None:
    with pytest.raises(ValidationError, match="STEWARD_SECRET_KEY"):
        Settings(env="production", secret_key=DEV_SECRET_KEY)
    with pytest.raises(ValidationError, match="32 bytes for HS256"):
        Settings(env="production", secret_key="short")
    assert Settings(env="production", secret_key="x" * 40).env == "production"


def test_production_key_is_as_long_as_the_hash() -> None:
    """Regression: HS512 took a 40-character key, under RFC 7518's 64 bytes; PyJWT warned at every token."""
    with pytest.raises(ValidationError, match="64 bytes for HS512"):
        Settings(env="production", secret_key="x" * 40, jwt_algorithm="HS512")
    with pytest.raises(ValidationError, match="48 bytes for HS384"):
        Settings(env="production", secret_key="x" * 47, jwt_algorithm="HS384")
    assert Settings(env="production", secret_key="x" * 64, jwt_algorithm="HS512").jwt_algorithm == "HS512"
    # Bytes, not characters: 16 Chinese characters are 48 bytes in UTF-8.
    assert Settings(env="production", secret_key="暖" * 16, jwt_algorithm="HS384").jwt_algorithm == "HS384"


def test_production_refuses_the_demo_accounts() -> None:
    """The demo's accounts share the password the README prints: production started with them."""
    with pytest.raises(ValidationError, match="STEWARD_DEMO_PASSWORD"):
        Settings(env="production", secret_key="x" * 40, demo=True)
    assert Settings(env="production", secret_key="x" * 40, demo=True, demo_password="a-pilot-secret").demo
    assert Settings(env="dev", demo=True).demo


@pytest.mark.parametrize(("name", "value"), [("log_level", "loud"), ("jwt_algorithm", "RS256"),
                                             ("jwt_algorithm", "none"), ("timezone", "Mars/Base"),
                                             # every call failed at connect as the client's invalid_sdp:
                                             ("video_ice_servers", "stun:stun.example.cn:3478?transport=udp"),
                                             ("video_ice_servers", "turn.example.cn:3478"),
                                             # every notice made without its own number answered 500:
                                             ("service_phone", "0531-96133 转 8001 (24h)"),
                                             ("service_phone", "")]
                         # past C's ssize_t every gzip body, call upload or blob overflowed (a 500):
                         + [(name, "99999999999999999999") for name in ("max_body_bytes", "audio_max_bytes",
                                                                         "blob_max_bytes")])
def test_values_that_would_fail_at_first_use_are_refused_at_start(name: str, value: str) -> None:
    """Regression: each was accepted, then failed later: uvicorn's traceback (log level), a 500 on every
    sign-in (an asymmetric or `none` algorithm with a shared secret), a 500 on the first notice (zone, or a
    hotline number a notice may not print)."""
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})


def test_an_empty_path_setting_means_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: STEWARD_BLOB_DIR= put blobs in the working directory, STEWARD_SPEECH_GLOSSARY= read `.`."""
    monkeypatch.setenv("STEWARD_BLOB_DIR", "")
    monkeypatch.setenv("STEWARD_SPEECH_GLOSSARY", " ")
    settings = Settings()
    assert settings.blob_dir is None and settings.speech_glossary is None
    assert Settings(log_level="WARNING", jwt_algorithm="HS512").log_level == "warning"


def test_sla_hours_follow_priority() -> None:
    settings = Settings(sla_hours_urgent=1, sla_hours_low=100)
    assert settings.sla_hours("urgent") == 1
    assert settings.sla_hours("low") == 100


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`STEWARD_{name.upper()}`" not in readme]
    assert missing == [], f"add these settings to the README configuration table: {missing}"


def test_good_ice_servers_pass() -> None:
    urls = "stun:turn.example.cn:3478, turn:turn.example.cn:3478?transport=udp,turns:turn.example.cn:5349"
    assert Settings(video_ice_servers=urls, video_turn_secret="coturn-secret").video_ice_servers == urls
    assert Settings(video_ice_servers="stun:turn.example.cn:3478").video_turn_secret == ""  # STUN needs none


@pytest.mark.parametrize("urls", ["stun:turn.example.cn:3478,turn:turn.example.cn:3478?transport=udp",
                                  "turns:turn.example.cn:5349"])
def test_a_turn_server_without_the_turn_secret_is_refused(urls: str) -> None:
    """Regression: accepted, and every browser was then handed a TURN entry without username and credential,
    which it refuses outright (Chromium: InvalidAccessError): no steward or resident could join any call."""
    with pytest.raises(ValidationError, match="STEWARD_VIDEO_TURN_SECRET is empty"):
        Settings(video_ice_servers=urls)


@pytest.mark.parametrize("value", ["nginx", "10.0.0.0/33", "proxy.internal:8080", "10.0.0.1/24", "127.0.0.1,*"])
def test_forwarded_allow_ips_that_can_never_match_are_refused(value: str) -> None:
    """Regression: uvicorn keeps an entry that is not an IP address or (strict) network as a literal that no
    TCP peer's address equals, so the proxy was silently not trusted and every sign-in counted against its
    one address; `*` in a list is such a literal too."""
    with pytest.raises(ValidationError, match="forwarded_allow_ips"):
        Settings(forwarded_allow_ips=value)


@pytest.mark.parametrize(("value", "kept"), [("127.0.0.1", "127.0.0.1"), (" * ", "*"), ("", ""),
                                             ("10.0.0.5, 172.18.0.0/16,::1,", "10.0.0.5,172.18.0.0/16,::1"),
                                             ("fd00::/8", "fd00::/8")])
def test_forwarded_allow_ips_take_addresses_networks_or_a_lone_star(value: str, kept: str) -> None:
    assert Settings(forwarded_allow_ips=value).forwarded_allow_ips == kept


@pytest.mark.parametrize("name", ["video_public_url", "video_worker_url"])
@pytest.mark.parametrize("value", ["steward.example.cn", "steward.example.cn:8443/relay", "ftp://steward.example.cn",
                                   "https://"])
def test_video_urls_without_a_scheme_are_refused(name: str, value: str) -> None:
    """Regression: `steward.example.cn` was accepted, and every join link texted to residents was relative
    (`steward.example.cn/join/<token>`), which phones do not open."""
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})
    assert getattr(Settings(**{name: "https://steward.example.cn/relay/1"}), name) == "https://steward.example.cn/relay/1"


def test_the_shutdown_grace_has_bounds() -> None:
    """`steward serve` cuts open requests this long after SIGTERM: under compose's stop_grace_period (60 s)."""
    assert Settings().shutdown_grace_s == 20
    for bad in (0, 3601):
        with pytest.raises(ValidationError, match="shutdown_grace_s"):
            Settings(shutdown_grace_s=bad)


@pytest.mark.parametrize(("name", "value"), [
    ("STEWARD_ACCESS_TOKEN_MINUTES", "10000000000"), ("STEWARD_SLA_HOURS_URGENT", "1e8"),
    ("STEWARD_SLA_HOURS_LOW", "inf"), ("STEWARD_VIDEO_ROOM_MAX_MINUTES", "nan"),
    ("STEWARD_SYNC_TOMBSTONE_RETENTION_DAYS", "1e9"),
    ("STEWARD_SLA_HOURS_BY_CATEGORY", '{"leak": {"urgent": 1e9}}'),
])
def test_a_duration_that_would_overflow_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Regression: these passed `gt=0`, and every sign-in (token expiry) or new work order (SLA due time) was
    then a 500 (OverflowError); durations are bounded at ten years, inf and nan refused."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=r"ten years|finite number"):
        Settings()


def test_ten_years_is_still_a_duration() -> None:
    assert Settings(sync_tombstone_retention_days=3650, access_token_minutes=60).sync_tombstone_retention_days == 3650


def test_an_empty_data_dir_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `STEWARD_DATA_DIR=` put the database in the working directory; README says ./data."""
    monkeypatch.setenv("STEWARD_DATA_DIR", "")
    monkeypatch.delenv("STEWARD_DATABASE_URL", raising=False)
    assert Settings().resolved_database_url == "sqlite:///data/steward.db"


def test_the_sqlite_url_holds_the_data_dir_whatever_its_name(tmp_path: Path) -> None:
    """Regression: the data directory was pasted into the URL unquoted: a `?` in it began a query and `%41` was
    read as `A`; the URL of a plain path stays as it was."""
    from sqlalchemy.engine import make_url

    for name in ("q?x", "pct%41", "sp ace", "供热 #1"):
        url = Settings(data_dir=tmp_path / name).resolved_database_url
        assert make_url(url).database == str(tmp_path / name / "steward.db") and not make_url(url).query
    assert Settings(data_dir=tmp_path / "供热 #1").resolved_database_url == f"sqlite:///{tmp_path}/供热 #1/steward.db"


def test_a_short_demo_password_is_refused_with_the_settings() -> None:
    with pytest.raises(ValidationError, match="demo_password"):
        Settings(demo_password="pilot1")


def test_a_setting_that_is_not_json_is_named_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: pydantic-settings' error named the field (`sla_hours_by_category`) and its source, not the
    variable to fix, though the README promises one line naming the setting."""
    from pydantic_settings import SettingsError

    from api.settings import describe_problem

    monkeypatch.setenv("STEWARD_SLA_HOURS_BY_CATEGORY", "{bad")
    with pytest.raises(SettingsError) as caught:
        Settings()
    assert describe_problem(caught.value) == "STEWARD_SLA_HOURS_BY_CATEGORY: not valid JSON (write it as a JSON " \
                                             "object or list)"


@pytest.mark.parametrize(("overrides", "named"), [
    # Regression (review): each was accepted, then every sign-in answered 500 (an integer the database could
    # not hold; an empty HMAC key).
    ({"login_rate_per_minute": 10**20}, "login_rate_per_minute"),
    ({"login_max_failures": 10**20}, "login_max_failures"),
    ({"login_max_failures_per_ip": 10**19}, "login_max_failures_per_ip"),
    ({"secret_key": ""}, "secret_key"),
    # a retry wait that doubles past ten years overflowed the date it became at the last tries
    ({"proactive_sms_retry_backoff_s": 30 * 86400, "proactive_sms_max_attempts": 20}, "PROACTIVE_SMS_RETRY_BACKOFF_S"),
    ({"speech_retry_backoff_s": 40_000, "speech_max_attempts": 20}, "SPEECH_RETRY_BACKOFF_S"),
])
def test_settings_that_failed_at_use_are_refused_at_start(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(**overrides)  # type: ignore[arg-type]


def test_an_empty_host_is_the_default_not_every_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): `STEWARD_HOST=` made uvicorn listen on 0.0.0.0 and [::]: a dev server, signing with
    the published key, open to the network."""
    monkeypatch.setenv("STEWARD_HOST", " ")
    assert Settings().host == "127.0.0.1"
    assert Settings(env="dev", speech_retry_backoff_s=30, speech_max_attempts=20).speech_max_attempts == 20


def test_a_misspelt_variable_is_named_with_the_setting_it_may_mean() -> None:
    """Regression (review): pydantic ignores unknown `STEWARD_*` names, so `STEWARD_FORWARDED_ALLOW_IP` left the
    proxy untrusted (and the per-address sign-in lockout on the proxy's own address) without a word."""
    lines = unknown_variables(["STEWARD_FORWARDED_ALLOW_IP", "STEWARD_LOGIN_MAX_FAILURE", "STEWARD_NONSENSE",
                               "STEWARD_PORT", "STEWARD_TEST_POSTGRES_URL", "STEWARD_BENCH_POSTGRES_URL", "PATH"])
    assert lines == ["STEWARD_FORWARDED_ALLOW_IP is not a setting and is ignored: did you mean "
                     "STEWARD_FORWARDED_ALLOW_IPS?",
                     "STEWARD_LOGIN_MAX_FAILURE is not a setting and is ignored: did you mean "
                     "STEWARD_LOGIN_MAX_FAILURES?",
                     "STEWARD_NONSENSE is not a setting and is ignored (README lists the settings)."]


def test_a_bad_setting_served_by_uvicorn_directly_does_not_print_the_secrets(tmp_path: Path) -> None:
    """Regression (review): `uvicorn api.main:app` reads the settings without the CLI's wording of errors, and
    pydantic's error quoted the input: a production secret key too short printed every value set, the key
    among them, and a database URL with two `@` printed its password."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    for bad in ({"STEWARD_ENV": "production", "STEWARD_SECRET_KEY": "hunter2-TopSecretKey"},
                {"STEWARD_DATABASE_URL": "postgresql://steward:p@ssDbSecret@db/steward"}):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")} | bad | {"PYTHONPATH": str(root)}
        r = subprocess.run([sys.executable, "-c", "import api.main"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode != 0 and "ValidationError" in r.stderr, r.stderr[-2000:]
        assert "TopSecretKey" not in r.stderr and "ssDbSecret" not in r.stderr, r.stderr[-2000:]
