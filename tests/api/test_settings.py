"""Settings: defaults that work out of the box, and refusal of the dev secret outside dev mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from api.settings import DEV_SECRET_KEY, Settings


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
    with pytest.raises(ValidationError, match="32 characters"):
        Settings(env="production", secret_key="short")
    assert Settings(env="production", secret_key="x" * 40).env == "production"


def test_sla_hours_follow_priority() -> None:
    settings = Settings(sla_hours_urgent=1, sla_hours_low=100)
    assert settings.sla_hours("urgent") == 1
    assert settings.sla_hours("low") == 100


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`STEWARD_{name.upper()}`" not in readme]
    assert missing == [], f"add these settings to the README configuration table: {missing}"
