"""One settings object for the whole service, read from `STEWARD_*` environment variables."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.schemas import HOTLINE_PATTERN

DEMO_PASSWORD = "steward-demo"  # printed in README.md: refused outside dev mode
DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me-before-production"
PRIORITIES = ("urgent", "high", "normal", "low")
# Heating-season SLA hours by work-order category; categories not listed use `sla_hours_<priority>`.
DEFAULT_SLA_TABLE: dict[str, dict[str, float]] = {
    "leak": {"urgent": 1, "high": 4, "normal": 8, "low": 24},  # water on the floor does not wait
    "not_warm": {"urgent": 2, "high": 6, "normal": 24, "low": 48},
    "air_lock": {"urgent": 2, "high": 8, "normal": 24, "low": 48},
    "billing": {"urgent": 24, "high": 48, "normal": 72, "low": 120},  # office work, not a cold home
}


# The units of duration settings, by the end of their names (`sla_hours_*` are hours too).
_DURATION_UNITS = (("_s", 1), ("_minutes", 60), ("_hours", 3600), ("_days", 86400))


# The largest byte limit a setting takes (1 TiB): beyond C's ssize_t (2**63) a limit passed validation and every
# gzip body or call upload then overflowed (a 500).
MAX_BYTES = 1 << 40


class Settings(BaseSettings):
    """Service configuration; every field maps to `STEWARD_<NAME>` (see README)."""

    # allow_inf_nan: an `inf` SLA or lifetime passed `gt=0` and then overflowed at the first use (a 500).
    # hide_input_in_errors: a bad value's error quoted the input, and with a model-level error all of them:
    # `uvicorn api.main:app` (no CLI to word the error) printed the secret key and the database password.
    model_config = SettingsConfigDict(env_prefix="STEWARD_", env_file=".env", extra="ignore", allow_inf_nan=False,
                                      hide_input_in_errors=True)

    env: Literal["dev", "production"] = Field("dev", description="`production` enforces a real secret key.")
    data_dir: Path = Field(Path("./data"), description="Embedded database, blobs and models live here.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite at <data_dir>/steward.db.")
    db_pool_size: int = Field(10, ge=1, description="PostgreSQL connection pool size per process.")
    sqlite_checkpoint_interval_s: float = Field(
        1.0, ge=0, description="SQLite: how often a background thread of `steward serve` copies the write-ahead "
                               "log into the database (a PASSIVE checkpoint), so that a request's commit does "
                               "not; 0 leaves it to SQLite, in the committing request, every 1000 pages.")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="SQLite: FULL syncs the write-ahead log to disk at every commit (about 0.4 ms), so "
                            "a push the server acknowledged survives a power cut; NORMAL does not (only a "
                            "crash of the process), and the handheld has already dropped what it pushed.")
    # Not empty even in dev (a blank `.env` line): every sign-in failed with a 500 (an empty HMAC key).
    secret_key: str = Field(DEV_SECRET_KEY, min_length=1, description="Signs access tokens; required outside dev.")
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = Field(
        "HS256", description="HMAC algorithm of access tokens (the key is a shared secret: HS* only).")
    access_token_minutes: int = Field(12 * 60, ge=1, description="Token lifetime: one steward shift.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    serve_workers: int = Field(1, ge=1, description="Processes serving this port, as `steward serve --workers` "
                                                    "tells them (set it yourself for `uvicorn --workers`): beyond "
                                                    "1 none of them relays video calls (docs/video.md).")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=MAX_BYTES,
                                description="Largest JSON request body, after gzip decoding (413 beyond).")
    gzip_level: int = Field(1, ge=0, le=9, description="gzip level of responses to clients that accept gzip "
                                                       "(0: never compress); 1, nginx's default, is the cheapest.")
    thread_switch_ms: float = Field(1.0, gt=0, le=100, description="The served process's thread switch interval "
                                    "(Python's `sys.setswitchinterval`, 5 ms by default): how long a thread "
                                    "holding the interpreter runs before one waiting for it gets a turn. A request's "
                                    "work runs in a pool thread while the event loop reads and answers the others; "
                                    "at 5 ms each hand-over could wait that long (docs/reliability.md).")
    # Abuse limits (docs/security.md); login throttling state lives in the database, shared by all processes.
    # At most a million: larger counts overflowed the database's integer where they are bound (every sign-in a 500).
    login_rate_per_minute: int = Field(60, ge=1, le=1_000_000, description="Sign-in attempts per client address "
                                                                          "per minute (429 beyond, with Retry-After).")
    login_max_failures: int = Field(5, ge=1, le=1_000_000, description="Failed sign-ins for one user name within "
                                                         "STEWARD_LOGIN_FAILURE_WINDOW_S before it is locked.")
    login_max_failures_per_ip: int = Field(50, ge=1, le=1_000_000, description="Failed sign-ins from one client "
                                                                              "address within the window before "
                                                                              "that address is locked.")
    login_failure_window_s: float = Field(900, gt=0, description="Window in which failed sign-ins are counted.")
    login_lockout_s: float = Field(900, gt=0, description="How long a locked user name or address is refused "
                                                          "(429 with Retry-After), even with the right password.")
    page_max_limit: int = Field(500, ge=1, le=100_000, description="Largest `limit` of a list page (422 beyond).")
    audio_max_bytes: int = Field(64 * 1024 * 1024, ge=1024, le=MAX_BYTES,
                                 description="Largest hotline call recording upload (413 beyond).")
    demo: bool = Field(False, description="Create demo data at start when the database is empty.")
    demo_password: str = Field(DEMO_PASSWORD, min_length=8, description="Password of the demo users (outside dev "
                               "mode it must be changed from the published default).")
    timezone: str = Field("Asia/Shanghai", description="Local time zone for resident-facing text.")
    service_phone: str = Field("96133", max_length=20, pattern=HOTLINE_PATTERN,
                               description="Hotline number printed in resident notices.")
    sms_sender: Literal["log", "http"] = Field("log", description="Which SMS sender notices and campaigns use: "
                                                                  "`log` (writes to the log) or `http` (a gateway).")
    sms_http_url: str = Field("", description="`http` sender: the gateway URL that takes a JSON POST per message.")
    sms_http_key: str = Field("", description="`http` sender: API key, sent as `Authorization: Bearer <key>`.")
    sms_http_timeout_s: float = Field(10, gt=0, description="`http` sender: seconds to wait for the gateway.")
    sla_hours_urgent: float = Field(2, gt=0)
    sla_hours_high: float = Field(8, gt=0)
    sla_hours_normal: float = Field(24, gt=0)
    sla_hours_low: float = Field(72, gt=0)
    sla_hours_by_category: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_SLA_TABLE.items()},
        description="Heating-season SLA hours per category and priority (JSON); a missing entry falls back to "
                    "`STEWARD_SLA_HOURS_<PRIORITY>`.")
    sla_sensitive_factor: float = Field(0.5, gt=0, le=1, description="SLA hours are multiplied by this for "
                                                                      "sensitive households.")
    proactive_interval_minutes: float = Field(15, ge=0, description="How often `steward serve` evaluates clusters, "
                                                                    "revisits and campaign retries; 0 turns it off.")
    proactive_cluster_window_hours: float = Field(48, gt=0, description="Sliding window of complaint clustering.")
    proactive_cluster_riser_threshold: int = Field(3, ge=2, description="Complaining households on one unit riser "
                                                                        "that open a proactive work order.")
    proactive_cluster_building_threshold: int = Field(5, ge=2, description="Complaining households in one building "
                                                                           "that open a proactive work order.")
    proactive_cluster_station_threshold: int = Field(12, ge=2, description="Complaining households on one station "
                                                                           "that open a proactive work order.")
    proactive_revisit_days: float = Field(7, gt=0, description="Sensitive households get a revisit work order when "
                                                               "no visit with a temperature reading happened in "
                                                               "this many days (in season).")
    proactive_sms_max_attempts: int = Field(3, ge=1, le=20, description="Tries of one campaign SMS before it stays "
                                                                        "`failed`.")
    proactive_sms_retry_backoff_s: float = Field(300, ge=0, description="Wait before retrying a failed campaign SMS; "
                                                                        "doubles each time.")
    sms_quiet_hours: str = Field("", pattern=r"^$|^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$",
                                 description="Local hours (STEWARD_TIMEZONE) in which the periodic run retries no "
                                             "SMS, e.g. `21:00-08:00`; empty: none. The office's own sends go at once.")
    forwarded_allow_ips: str = Field("127.0.0.1", description="IP addresses or networks (comma-separated), or `*` "
                                     "alone, of the reverse proxies whose X-Forwarded-For `steward serve` trusts "
                                     "for the client's address (sign-in limits count per address).")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    shutdown_grace_s: int = Field(20, ge=1, le=3600, description="`steward serve`, when stopped (SIGTERM, "
                                    "Ctrl-C): how long open requests may still run before they are cut and the "
                                    "app's own shutdown (closing video calls, saving their recordings) starts.")
    whisper_engine: Literal["faster-whisper", "openai-whisper"] = Field(
        "faster-whisper", description="Speech engine: CTranslate2 (default) or the PyTorch reference.")
    whisper_model: str = Field("", description="Model directory (faster-whisper) or .pt file (openai-whisper); "
                                               "empty means the bundled Whisper base.")
    whisper_device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Where Whisper runs.")
    whisper_compute_type: str = Field("int8", description="CTranslate2 compute type (int8, float32, float16...).")
    whisper_beam_size: int = Field(5, ge=1, le=10, description="Beam width of the decoder.")
    whisper_threads: int = Field(0, ge=0, description="CPU threads per transcription; 0 means all cores.")
    speech_language: str = Field("zh", description="Language of calls and notes (Whisper language code).")
    speech_glossary: Path | None = Field(None, description="Glossary TOML file; empty means the bundled "
                                                           "heating glossary.")
    speech_queue: Literal["auto", "embedded", "procrastinate", "off"] = Field(
        "auto", description="Transcription jobs: `embedded` (worker threads inside `steward serve`), "
                            "`procrastinate` (`steward worker` processes, PostgreSQL), `auto` (embedded on SQLite, "
                            "else procrastinate), `off`.")
    speech_workers: int = Field(1, ge=0, le=16, description="Embedded mode: transcription threads in `steward serve`.")
    speech_max_attempts: int = Field(3, ge=1, le=20, description="Tries of a transcription before it is `failed`.")
    speech_max_duration_s: float = Field(4 * 3600, gt=0, description="Longest recording transcribed, in seconds; "
                                                                     "longer audio fails as undecodable (a few MB "
                                                                     "of AMR can hold hours, decoded to GBs).")
    speech_retry_backoff_s: float = Field(30, ge=0, description="Wait before the first retry; doubles each time.")
    speech_stalled_after_s: float = Field(60, gt=0, description="A worker silent this long is dead; its job is "
                                                                "retried.")
    speech_draft_work_orders: bool = Field(True, description="A call tagged leak or not_warm opens a work order "
                                                             "(status new) for its household.")
    sync_tombstone_retention_days: float = Field(30, gt=0, description="How long deletes are kept for offline "
                                                 "devices; an older cursor gets a full resync.")
    sync_conflict_retention_days: float = Field(365, gt=0, description="A conflict line reviewed longer ago than "
                                                "this is deleted; lines nobody has reviewed are kept.")
    sync_purge_interval_minutes: float = Field(60, gt=0, description="How often pulls purge expired tombstones "
                                                                     "and reviewed conflict lines.")
    sync_push_max_mutations: int = Field(1000, ge=1, description="Largest push batch (413 beyond).")
    blob_max_bytes: int = Field(100 * 1024 * 1024, ge=1, le=MAX_BYTES,
                                description="Largest blob (photo, recording) in bytes.")
    blob_partial_ttl_hours: float = Field(168, gt=0, description="An unfinished resumable upload untouched this "
                                                                "long is deleted (the device starts it again).")
    blob_dir: Path | None = Field(None, description="Where blobs are stored; empty means <data_dir>/blobs.")
    blob_store: Literal["local", "s3"] = Field("local", description="`local`: blobs in STEWARD_BLOB_DIR; `s3`: in "
                                                                   "an S3-compatible bucket (partial uploads are "
                                                                   "still staged in STEWARD_BLOB_DIR).")
    s3_bucket: str = Field("", description="Blob bucket when STEWARD_BLOB_STORE=s3 (required then). Credentials "
                                           "come from boto3's standard chain (AWS_ACCESS_KEY_ID/"
                                           "AWS_SECRET_ACCESS_KEY, a profile, an instance role), never from here.")
    s3_prefix: str = Field("", description="Key prefix of blobs in the bucket, e.g. `steward/blobs/`.")
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint (MinIO, Ceph, Aliyun OSS...); empty "
                                                 "means AWS S3.")
    s3_region: str = Field("", description="Region of the bucket; empty means boto3's default (AWS_DEFAULT_REGION).")
    video_public_url: str = Field("", description="Base URL of residents' join links (HTTPS in production: phones "
                                                  "only open the camera on secure pages); empty means the URL the "
                                                  "request came in on.")
    video_join_token_minutes: float = Field(30, gt=0, description="Lifetime of a resident's join link.")
    video_room_max_minutes: float = Field(60, gt=0, description="A video room closes after this long, whatever "
                                                                "happens in it.")
    video_room_idle_close_s: float = Field(120, gt=0, description="A video room nobody is connected to closes "
                                                                  "after this long.")
    video_connect_timeout_s: float = Field(30, gt=0, description="A video participant not connected this long "
                                                                 "after its answer is dropped.")
    video_max_participants: int = Field(4, ge=2, le=16, description="Participants per video room (409 beyond).")
    video_max_rooms: int = Field(8, ge=1, description="Open video rooms per relay process (429 beyond).")
    video_ice_servers: str = Field("", description="Comma-separated STUN/TURN URLs for clients and the relay "
                                                   "(e.g. `stun:turn.example.cn:3478,turn:turn.example.cn:3478`); "
                                                   "empty works on a LAN and on loopback.")
    video_turn_secret: str = Field("", description="coturn's `static-auth-secret`: time-limited TURN credentials "
                                                   "are derived from it.")
    video_relay_mode: Literal["forward", "transcode"] = Field(
        "forward", description="`forward`: send subscribers the publisher's encoded VP8/Opus frames as they "
                               "came (no decoding or encoding, except for snapshots and a subscriber on another "
                               "codec; the recording is mixed down after the call); `transcode`: decode every "
                               "published track and encode it again.")
    video_shared_encoding: bool = Field(True, description="When transcoding: encode each published video once for "
                                                          "all its VP8 subscribers (less CPU; one bitrate for all) "
                                                          "instead of once per subscriber.")
    video_record_audio: bool = Field(True, description="Record a video call's audio (both sides) into a "
                                                       "`call_recording` note queued for transcription.")
    video_worker_id: str = Field("", description="Name of this relay worker; rooms are pinned to the worker that "
                                                 "created them. Empty means `<hostname>:<port>`.")
    video_worker_url: str = Field("", description="Base URL at which this relay worker is reached directly, for "
                                                  "requests another worker redirects here; empty means single worker.")
    console_low_logprob: float = Field(-0.8, le=0, description="Supervisor console: a transcript segment whose "
                                                               "average log-probability is below this is marked "
                                                               "low-confidence.")
    console_high_no_speech: float = Field(0.5, ge=0, le=1, description="Supervisor console: a segment whose "
                                                                       "no-speech probability is above this is marked "
                                                                       "low-confidence.")
    console_refresh_s: float = Field(5, ge=1, le=300, description="Supervisor console: how often the dashboard "
                                                                  "polls for fresh figures.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("blob_dir", "speech_glossary", mode="before")
    @classmethod
    def _empty_path(cls, value: object) -> object:
        """An empty path setting means "the default", as documented (pydantic would read it as `.`)."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("host", mode="before")
    @classmethod
    def _empty_host(cls, value: object) -> object:
        """Empty is the default 127.0.0.1: uvicorn reads an empty host as every interface."""
        return "127.0.0.1" if isinstance(value, str) and not value.strip() else value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _empty_data_dir(cls, value: object) -> object:
        """Empty is the default `./data`, not the working directory (the database landed there)."""
        return Path("./data") if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url")
    @classmethod
    def _one_at_sign(cls, value: str) -> str:
        """A password holding `@` must be written `%40`: unencoded, the URL's host began after the first `@`, and
        the rest of the password was printed as a host name in errors."""
        netloc = value.partition("://")[2].partition("/")[0]
        if netloc.count("@") > 1:
            raise ValueError("the URL has more than one `@` before the host: write an `@` in the user name or "
                             "password as %40 (the URL itself is not shown: it holds a password)")
        return value

    @field_validator("video_ice_servers")
    @classmethod
    def _ice_urls(cls, value: str) -> str:
        """Every entry a STUN/TURN URL the relay can use (aiortc's own parser): a malformed one was dropped
        without a word, or failed every call at connect time as the client's `invalid_sdp`."""
        from aiortc.rtcicetransport import parse_stun_turn_uri

        for url in (u.strip() for u in value.split(",") if u.strip()):
            try:
                parse_stun_turn_uri(url)
            except ValueError as exc:
                raise ValueError(f"{url!r} is not a STUN or TURN URL ({exc}); write e.g. "
                                 "stun:turn.example.cn:3478 or turn:turn.example.cn:3478?transport=udp") from exc
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        """`*` alone, or IP addresses and networks as uvicorn parses them (`ipaddress`, strict): anything else
        it keeps as a literal that only a peer name equal to it matches, and `steward serve` listens on TCP,
        where every peer is an IP address. A proxy's host name (`nginx`) or a mistyped network was accepted
        and never trusted: every sign-in counted against the proxy's one address."""
        import ipaddress

        entries = [e.strip() for e in value.split(",") if e.strip()]
        if entries == ["*"]:
            return "*"
        for entry in entries:
            if entry == "*":
                raise ValueError("`*` trusts every address: write it alone, not in a list")
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or network (e.g. 172.18.0.5 or 172.18.0.0/16; "
                                 "a host name is never matched: give the proxy's address as the service sees "
                                 "it)") from exc
            if "/" in entry and not _is_strict_network(entry):
                raise ValueError(f"{entry!r} has host bits set, which uvicorn does not read as a network: "
                                 f"write {network}")
        return ",".join(entries)

    @field_validator("video_public_url", "video_worker_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        """A base URL with its scheme: `steward.example.cn` made every join link texted to residents relative
        (`steward.example.cn/join/...`), which phones do not open."""
        from urllib.parse import urlsplit

        if value:
            parts = urlsplit(value.strip())
            if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
                raise ValueError("must start with https:// (or http://) and name the host, e.g. "
                                 "https://steward.example.cn")
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Asia/Shanghai)") from exc
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.env != "dev" and self.secret_key == DEV_SECRET_KEY:
            raise ValueError(
                "STEWARD_SECRET_KEY is the development default; set a long random value "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`) outside dev mode"
            )
        if self.env != "dev":
            # RFC 7518 3.2: an HMAC key at least as long as the hash (PyJWT warns below it at every signature).
            need = int(self.jwt_algorithm[2:]) // 8
            if len(self.secret_key.encode("utf-8", "surrogatepass")) < need:
                raise ValueError(f"STEWARD_SECRET_KEY must be at least {need} bytes for {self.jwt_algorithm} "
                                 "outside dev mode (32 for HS256, 48 for HS384, 64 for HS512)")
        if self.env != "dev" and self.demo and self.demo_password == DEMO_PASSWORD:
            # The demo's accounts (admin, supervisor, steward01...) would share the password the README prints.
            raise ValueError("STEWARD_DEMO=1 with the published demo password creates an admin anyone can sign "
                             "in as; outside dev mode set STEWARD_DEMO_PASSWORD to a secret of your own, or "
                             "unset STEWARD_DEMO")
        if self.sms_sender == "http" and not self.sms_http_url.startswith(("http://", "https://")):
            raise ValueError("STEWARD_SMS_SENDER=http needs STEWARD_SMS_HTTP_URL (http:// or https://)")
        if self.blob_store == "s3" and not self.s3_bucket:
            raise ValueError("STEWARD_BLOB_STORE=s3 needs STEWARD_S3_BUCKET (the bucket that holds the blobs); "
                             "credentials come from boto3's standard chain (AWS_ACCESS_KEY_ID...)")
        if self.s3_endpoint_url and not self.s3_endpoint_url.startswith(("http://", "https://")):
            # boto3 refused it deep inside the app's start-up, as a 213-line traceback
            raise ValueError(f"STEWARD_S3_ENDPOINT_URL must start with https:// (or http://), e.g. "
                             f"https://{self.s3_endpoint_url}")
        if not self.video_turn_secret and any(
                url.strip().lower().startswith(("turn:", "turns:")) for url in self.video_ice_servers.split(",")):
            # Browsers refuse a TURN entry without credentials outright (Chromium: "InvalidAccessError: Both
            # username and credential are required..."): no steward or resident could join any call.
            raise ValueError("STEWARD_VIDEO_ICE_SERVERS names a TURN server (turn:/turns:) but "
                             "STEWARD_VIDEO_TURN_SECRET is empty: set it to coturn's static-auth-secret, or list "
                             "only stun: URLs")
        self._check_sla_table()
        self._check_durations()
        for backoff, attempts in (("proactive_sms_retry_backoff_s", "proactive_sms_max_attempts"),
                                  ("speech_retry_backoff_s", "speech_max_attempts")):
            # doubled at each try: the last wait overflowed the date it became (a 500, a worker's crash)
            if getattr(self, backoff) * 2 ** (getattr(self, attempts) - 1) > 10 * 365 * 86400:
                raise ValueError(f"STEWARD_{backoff.upper()} doubles at each of STEWARD_{attempts.upper()} tries, "
                                 f"and the last wait would pass ten years: lower one of them")
        return self

    def _check_durations(self) -> None:
        """Every duration at most ten years: longer ones overflowed where they became a date (a token's expiry,
        an SLA's due time: every sign-in or new work order a 500)."""
        longest_s = 10 * 365 * 86400
        for name, value in self:
            unit = next((unit for suffix, unit in _DURATION_UNITS if name.endswith(suffix)), None)
            if name.startswith("sla_hours_") and isinstance(value, (int, float)):
                unit = 3600
            if unit is not None and isinstance(value, (int, float)) and value * unit > longest_s:
                raise ValueError(f"STEWARD_{name.upper()}={value:g} is more than ten years")
        for category, row in self.sla_hours_by_category.items():
            if any(hours * 3600 > longest_s for hours in row.values()):
                raise ValueError(f"STEWARD_SLA_HOURS_BY_CATEGORY[{category!r}]: more than ten years")

    def _check_sla_table(self) -> None:
        from api.work_orders.models import Category  # here, not at the top: that module imports this one

        for category, row in self.sla_hours_by_category.items():
            if category not in Category.__members__:
                raise ValueError(f"STEWARD_SLA_HOURS_BY_CATEGORY: unknown category {category!r}; "
                                 f"known: {', '.join(Category.__members__)}")
            for priority, hours in row.items():
                if priority not in PRIORITIES or not hours > 0:
                    raise ValueError(f"STEWARD_SLA_HOURS_BY_CATEGORY[{category!r}]: give positive hours for "
                                     f"{', '.join(PRIORITIES)} (got {priority!r}: {hours!r})")

    @property
    def resolved_database_url(self) -> str:
        """The database URL, with the SQLite default and the psycopg 3 driver filled in."""
        from api.urls import sqlite_url

        url = self.database_url or sqlite_url(self.data_dir / "steward.db")
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return url

    def sla_hours(self, priority: str, *, category: str | None = None, sensitive: bool = False) -> float:
        """Hours a work order may stay open before its SLA is breached: the category table, else the
        priority's default, shortened for sensitive households."""
        hours = self.sla_hours_by_category.get(category or "", {}).get(priority)
        if hours is None:
            hours = getattr(self, f"sla_hours_{priority}")
        return float(hours) * (self.sla_sensitive_factor if sensitive else 1.0)


def _is_strict_network(text: str) -> bool:
    """Whether `text` is a network as uvicorn reads one (`ipaddress.ip_network`, strict: no host bits)."""
    import ipaddress

    try:
        ipaddress.ip_network(text)
    except ValueError:
        return False
    return True


# STEWARD_* variables of the test suite, benchmarks and CI, not of the service.
_TOOL_PREFIXES = ("STEWARD_TEST_", "STEWARD_BENCH_", "STEWARD_FUZZ_", "STEWARD_SCOPE_FUZZ_", "STEWARD_STRESS_",
                  "STEWARD_CI_")


def unknown_variables(names: Iterable[str]) -> list[str]:
    """A line for each `STEWARD_*` name that is no setting, with the setting it may have meant: pydantic ignores
    them, so a typo (`STEWARD_FORWARDED_ALLOW_IP`) left the default in force without a word."""
    known = [f"STEWARD_{name.upper()}" for name in Settings.model_fields]
    lines = []
    for name in sorted({n.upper() for n in names}):
        if not name.startswith("STEWARD_") or name in known or name.startswith(_TOOL_PREFIXES):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        lines.append(f"{name} is not a setting and is ignored" + (f": did you mean {close[0]}?" if close else
                                                                   " (README lists the settings)."))
    return lines


def describe_problem(exc: ValueError) -> str:
    """A settings error as one line naming each variable and what is wrong, never the values: pydantic's own
    message quotes the input, which printed the secret key and the SMS gateway's key to the terminal."""
    if not isinstance(exc, ValidationError):
        # pydantic-settings' own (a complex setting that is not JSON) names the field, not the variable
        parsed = re.fullmatch(r'error parsing value for field "(\w+)" from source "\w+"', str(exc))
        if parsed:
            return f"STEWARD_{parsed.group(1).upper()}: not valid JSON (write it as a JSON object or list)"
        return str(exc)
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        names = ".".join(str(part) for part in error["loc"])
        where = f"STEWARD_{names.upper()}: " if names else ""
        problems.append(f"{where}{error['msg']}")
    return "; ".join(problems)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
