"""What `steward serve` does before it listens, on an empty or unmigrated database."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import typer
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from api.db import make_engine
from api.settings import Settings
from api.startup import prepare, speech_problem
from api.users.models import User
from tests.conftest import make_settings


def _users(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(User)).scalar_one())


def test_empty_database_prints_how_to_create_the_first_admin(engine: Engine, settings: Settings,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    prepare(settings)
    assert "steward create-user" in capsys.readouterr().err
    assert _users(engine) == 0


def test_demo_mode_loads_the_demo_district_once(engine: Engine, database_url: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(database_url, tmp_path, demo=True)
    prepare(settings)
    assert "Demo data created" in capsys.readouterr().err
    assert _users(engine) == 6  # admin, supervisor, 4 stewards
    prepare(settings)  # a restart keeps the data and adds nothing
    assert _users(engine) == 6


def test_unmigrated_database_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'new.db'}", tmp_path)
    with pytest.raises(typer.Exit):
        prepare(settings)
    assert "steward db upgrade" in capsys.readouterr().err
    make_engine(settings).dispose()


def test_an_unknown_speech_language_is_refused_at_startup(engine: Engine, database_url: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: `steward serve` started, and then every transcription job failed on the language."""
    with pytest.raises(typer.Exit):
        prepare(make_settings(database_url, tmp_path, speech_language="klingon"))
    assert "STEWARD_SPEECH_LANGUAGE: unknown language 'klingon'" in capsys.readouterr().err
    # Where nothing transcribes, the setting does not matter.
    prepare(make_settings(database_url, tmp_path, speech_language="klingon", speech_queue="off"))


def test_the_procrastinate_queue_on_sqlite_is_refused_at_startup(engine: Engine, database_url: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Regression (review): `steward serve` started with STEWARD_SPEECH_QUEUE=procrastinate on SQLite (only
    `steward worker` refused it); nothing was ever transcribed, and every call upload waited 30 s for a
    PostgreSQL made from the SQLite URL."""
    settings = make_settings(database_url, tmp_path, speech_queue="procrastinate")
    if database_url.startswith("sqlite"):
        with pytest.raises(typer.Exit):
            prepare(settings)
        assert "STEWARD_SPEECH_QUEUE=procrastinate needs PostgreSQL" in capsys.readouterr().err
    else:
        prepare(settings)  # its home
        assert "STEWARD_SPEECH_QUEUE" not in capsys.readouterr().err


def test_a_model_folder_without_model_bin_is_refused(tmp_path: Path) -> None:
    """Regression: only existence was checked, so an empty folder passed and then every job failed."""
    problem = speech_problem(Settings(whisper_model=str(tmp_path), speech_queue="embedded"))
    assert problem == (f"Configuration error: STEWARD_WHISPER_MODEL: {tmp_path} is not a faster-whisper model "
                       "directory (no model.bin in it) (empty: the bundled model)")
    assert speech_problem(Settings(whisper_model="", speech_queue="embedded")) is None


@pytest.mark.parametrize(("content", "said"), [
    ('hotwords = ["暖气", "排气阀"]\n'.encode("gbk"), "is not UTF-8"),
    (b'categories = ["leak"]\n', "[categories] must be a table"),
])
def test_an_unreadable_glossary_is_one_line(tmp_path: Path, content: bytes, said: str) -> None:
    """Regression: a GBK glossary or a list of categories was a traceback, not a configuration error."""
    path = tmp_path / "glossary.toml"
    path.write_bytes(content)
    problem = speech_problem(Settings(speech_glossary=path, speech_queue="embedded"))
    assert problem is not None and problem.startswith("Configuration error: STEWARD_SPEECH_GLOSSARY: ")
    assert said in problem and "\n" not in problem


def test_a_bucket_that_cannot_be_used_is_one_line_at_start(tmp_path: Path) -> None:
    """Regression: a missing bucket, or an endpoint boto3 cannot reach, surfaced at the first upload (a 500)
    or as a traceback of `steward blobs sweep`; `serve` now checks the bucket once, with short timeouts."""
    from api.startup import storage_problem
    from tests.utils.s3 import BUCKET, S3_SETTINGS, mock_bucket

    with mock_bucket():
        assert storage_problem(Settings(data_dir=tmp_path, **S3_SETTINGS)) is None
        missing = storage_problem(Settings(data_dir=tmp_path, **S3_SETTINGS | {"s3_bucket": "no-such-bucket"}))
        assert missing is not None and missing.startswith("Configuration error: STEWARD_S3_BUCKET:")
        assert "no-such-bucket" in missing and "\n" not in missing and BUCKET not in missing


def test_an_endpoint_without_its_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="STEWARD_S3_ENDPOINT_URL must start with https://"):
        Settings(s3_endpoint_url="oss-cn-beijing.aliyuncs.com")


@pytest.mark.parametrize(("compute_type", "said"), [
    ("int9", "unknown compute type 'int9'"), ("float16", "float16 is not supported on STEWARD_WHISPER_DEVICE=cpu")])
def test_an_unusable_whisper_compute_type_is_refused_at_start(compute_type: str, said: str) -> None:
    """Regression: any string was accepted, and CTranslate2 refused it only when a job loaded the model (a
    typo, or the README's "float16 on a GPU" with the default STEWARD_WHISPER_DEVICE=cpu): every job failed."""
    import ctranslate2

    if compute_type in ctranslate2.get_supported_compute_types("cpu"):
        pytest.skip(f"this CPU runs {compute_type}")
    problem = speech_problem(Settings(whisper_compute_type=compute_type, whisper_device="cpu",
                                      speech_queue="embedded"))
    assert problem is not None and problem.startswith("Configuration error: STEWARD_WHISPER_COMPUTE_TYPE: ")
    assert said in problem and "int8" in problem and "\n" not in problem, problem


def test_compute_types_the_device_runs_pass() -> None:
    for compute_type in ("int8", "float32", "default", "auto"):  # `default`/`auto`: CTranslate2 picks
        assert speech_problem(Settings(whisper_compute_type=compute_type, speech_queue="embedded")) is None
    # The PyTorch engine takes no compute type; where nothing transcribes, nothing is checked.
    assert speech_problem(Settings(whisper_compute_type="int9", whisper_engine="openai-whisper",
                                   speech_queue="embedded")) is None
    assert speech_problem(Settings(whisper_compute_type="int9", speech_queue="off")) is None


def test_an_engine_whose_packages_are_missing_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `STEWARD_WHISPER_ENGINE=openai-whisper` without the `openai` extra started, and every job
    then failed on the missing torch; a server whose workers transcribe elsewhere is not asked."""
    monkeypatch.setitem(sys.modules, "torch", None)
    settings = Settings(whisper_engine="openai-whisper", speech_queue="embedded")
    problem = speech_problem(settings)
    assert problem is not None and problem.startswith("Configuration error: STEWARD_WHISPER_ENGINE: ")
    assert "heat-steward[openai]" in problem and "torch not installed" in problem and "\n" not in problem
    assert speech_problem(settings, transcribes_here=False) is None
    assert speech_problem(Settings(speech_queue="embedded")) is None  # faster-whisper is always installed


def test_a_server_that_does_not_transcribe_checks_only_the_name(engine: Engine, database_url: str,
                                                                tmp_path: Path) -> None:
    """`steward serve` with `steward worker` processes (the compose file shares one environment between them)
    must not refuse a GPU worker's float16 because the API's own machine has no GPU; a typo is still a typo."""
    gpu = {"whisper_device": "cuda", "whisper_compute_type": "float16"}
    assert speech_problem(Settings(speech_queue="procrastinate", **gpu), transcribes_here=False) is None
    if not database_url.startswith("sqlite"):  # procrastinate's home (refused on SQLite: the test above)
        prepare(make_settings(database_url, tmp_path, speech_queue="procrastinate", **gpu))
    typo = speech_problem(Settings(speech_queue="procrastinate", whisper_compute_type="int9"), transcribes_here=False)
    assert typo is not None and "STEWARD_WHISPER_COMPUTE_TYPE: unknown compute type 'int9'" in typo


def test_prepare_refuses_an_unusable_compute_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The embedded queue (SQLite's `auto`) transcribes in `steward serve` itself: its hardware is asked."""
    settings = make_settings(f"sqlite:///{tmp_path / 'x.db'}", tmp_path, speech_queue="auto",
                             whisper_compute_type="int9")
    with pytest.raises(typer.Exit):
        prepare(settings)
    assert "STEWARD_WHISPER_COMPUTE_TYPE: unknown compute type 'int9'" in capsys.readouterr().err
