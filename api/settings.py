"""One settings object for the whole service, read from `STEWARD_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me-before-production"


class Settings(BaseSettings):
    """Service configuration; every field maps to `STEWARD_<NAME>` (see README)."""

    model_config = SettingsConfigDict(env_prefix="STEWARD_", env_file=".env", extra="ignore")

    env: Literal["dev", "production"] = Field("dev", description="`production` enforces a real secret key.")
    data_dir: Path = Field(Path("./data"), description="Embedded database, blobs and models live here.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite at <data_dir>/steward.db.")
    db_pool_size: int = Field(10, ge=1, description="PostgreSQL connection pool size per process.")
    secret_key: str = Field(DEV_SECRET_KEY, description="Signs access tokens; required outside dev.")
    jwt_algorithm: str = "HS256"
    access_token_minutes: int = Field(12 * 60, ge=1, description="Token lifetime: one steward shift.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest JSON request body (413 beyond).")
    demo: bool = Field(False, description="Create demo data at start when the database is empty.")
    demo_password: str = Field("steward-demo", description="Password of the demo users.")
    timezone: str = Field("Asia/Shanghai", description="Local time zone for resident-facing text.")
    service_phone: str = Field("96133", description="Hotline number printed in resident notices.")
    sms_sender: Literal["log"] = Field("log", description="Which SMS sender notices use.")
    sla_hours_urgent: float = Field(2, gt=0)
    sla_hours_high: float = Field(8, gt=0)
    sla_hours_normal: float = Field(24, gt=0)
    sla_hours_low: float = Field(72, gt=0)
    log_level: str = "info"

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.env != "dev" and self.secret_key == DEV_SECRET_KEY:
            raise ValueError(
                "STEWARD_SECRET_KEY is the development default; set a long random value "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`) outside dev mode"
            )
        if self.env != "dev" and len(self.secret_key) < 32:
            raise ValueError("STEWARD_SECRET_KEY must be at least 32 characters outside dev mode")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL, with the SQLite default and the psycopg 3 driver filled in."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'steward.db'}"
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return url

    def sla_hours(self, priority: str) -> float:
        """Hours a work order of this priority may stay open before its SLA is breached."""
        return float(getattr(self, f"sla_hours_{priority}"))


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
