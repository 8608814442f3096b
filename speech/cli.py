"""`steward transcribe FILE...`: transcribe recordings on this machine, offline."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from api.settings import Settings, describe_problem, get_settings


class EngineOption(StrEnum):
    faster_whisper = "faster-whisper"
    openai_whisper = "openai-whisper"


def _timestamp(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):02d}:{rest:05.2f}"


def transcript_json(file: str, transcript: Any, *, redact: bool) -> dict[str, Any]:
    """The CLI's JSON object for one transcribed file (with `redact`, numbers masked as the API masks them
    for users without the view_pii right: a number split between two segments is masked in both)."""
    from speech.pipeline import segment_separator
    from speech.redact import redact_joined, redact_parts

    texts = [s.text for s in transcript.segments]
    text = transcript.text
    if redact:
        separator = segment_separator(transcript.language)
        texts, text = redact_parts(texts, separator), redact_joined(texts, separator)
    return {"file": file, "engine": transcript.engine, "model": transcript.model, "language": transcript.language,
            "duration": transcript.duration, "text": text,
            "segments": [{"start": round(s.start, 2), "end": round(s.end, 2), "text": shown}
                         for s, shown in zip(transcript.segments, texts, strict=True)]}


def printable(text: str) -> str:
    """Text as it can be printed and put in JSON: a file name's bytes that are not UTF-8 (a recording named
    in GBK on Windows) come back from the OS as lone surrogates, which no strict UTF-8 stream takes; they
    are shown as `\\xNN` instead."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def transcribe(
    # readable=False: an unreadable file is one file's error line, not a usage error that costs the others
    files: Annotated[list[Path], typer.Argument(help="Audio files (wav, mp3, m4a, ogg/opus, amr, webm).",
                                                show_default=False, readable=False)],
    engine: Annotated[EngineOption | None, typer.Option(help="Speech engine (default: STEWARD_WHISPER_ENGINE).")]
    = None,
    model: Annotated[str | None, typer.Option(help="Model directory or .pt file (default: the bundled base).")]
    = None,
    language: Annotated[str | None, typer.Option(help="Language code (default: STEWARD_SPEECH_LANGUAGE).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file, one per line.")] = False,
    redact: Annotated[bool, typer.Option("--redact", help="Mask phone and ID numbers.")] = False,
) -> None:
    """Transcribe recordings; with --json, one JSON line per file. Exit code 1 if any file failed."""
    from speech.audio import AudioDecodeError, decode_audio
    from speech.model_store import ModelError
    from speech.pipeline import build_pipeline

    try:
        settings: Settings = get_settings()
    except ValueError as exc:
        typer.secho(f"Configuration error: {describe_problem(exc)}", fg="red", err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:  # a `.env` this user may not read
        typer.secho(f"Configuration error: cannot read {exc.filename or 'the settings'}: {exc.strerror or exc}",
                    fg="red", err=True)
        raise typer.Exit(2) from exc
    try:
        pipeline = build_pipeline(settings, engine=engine.value if engine else None, model=model, language=language)
    except (ModelError, RuntimeError, ValueError) as exc:  # a missing model, an unknown language
        typer.secho(f"Cannot transcribe: {printable(str(exc))}", fg="red", err=True)
        raise typer.Exit(2) from exc
    except Exception as exc:  # a model directory whose files do not parse (a git-lfs pointer for tokenizer.json)
        which = printable(model or settings.whisper_model or "(the bundled base model)")
        typer.secho(f"Cannot transcribe: cannot load the model {which}: {type(exc).__name__}: "
                    f"{printable(str(exc))}", fg="red", err=True)
        raise typer.Exit(2) from exc

    failed = 0
    with _Output(total=len(files), quiet=as_json) as out:
        for file in files:
            name = printable(str(file))
            try:
                transcript = pipeline.run(decode_audio(file, max_duration_s=settings.speech_max_duration_s))
            except Exception as exc:  # one file's failure, whatever it is, must not cost the others their lines
                failed += 1
                error = printable(str(exc) if isinstance(exc, AudioDecodeError)
                                  else f"{file}: {type(exc).__name__}: {exc}")
                if as_json:
                    out.line(json.dumps({"file": name, "error": error}, ensure_ascii=False))
                else:
                    out.line(f"error: {error}", err=True)
            else:
                data = transcript_json(name, transcript, redact=redact)
                out.line(json.dumps(data, ensure_ascii=False) if as_json else _readable(data))
            out.advance()
    pipeline.close()
    if failed:
        raise typer.Exit(1)


def _readable(data: dict[str, Any]) -> str:
    lines = [f"== {data['file']} ({data['duration']:.1f} s, {data['engine']}, {data['model']})"]
    lines += [f"[{_timestamp(s['start'])} -> {_timestamp(s['end'])}] {s['text']}" for s in data["segments"]]
    if not data["segments"]:
        lines.append("(no speech)")
    return "\n".join(lines)


class _Output:
    """Lines to stdout, plus a progress bar over files unless quiet (on the terminal that shows it)."""

    def __init__(self, *, total: int, quiet: bool) -> None:
        self._progress: Any = None
        self._total = total
        self._quiet = quiet

    def __enter__(self) -> _Output:
        if not self._quiet:
            from rich.console import Console
            from rich.progress import Progress

            # On a terminal the bar shares stdout with the text (rich keeps them apart); when stdout is
            # piped the bar goes to stderr so that the text stays clean.
            console = Console(file=sys.stdout if sys.stdout.isatty() else sys.stderr)
            self._progress = Progress(console=console, transient=True, redirect_stdout=False, redirect_stderr=False)
            self._progress.start()
            self._task = self._progress.add_task("transcribing", total=self._total)
        return self

    def line(self, text: str, *, err: bool = False) -> None:
        progress = self._progress
        if progress is not None and (progress.console.file is (sys.stderr if err else sys.stdout)
                                     or (err and sys.stderr.isatty() and progress.console.is_terminal)):
            # Through the bar's console, which prints above the bar: an error line written to a terminal's
            # stderr beside a live bar on its stdout was glued to the bar ("━━━ 0% -:--:--error: ...").
            progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            typer.echo(text, err=err)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=16, help="Jobs at once in this process (each uses "
                                                                 "STEWARD_WHISPER_THREADS cores).")] = 1,
) -> None:
    """Run transcription jobs from the PostgreSQL queue until stopped (run several, on several machines)."""
    from api.security import install_log_redaction
    from api.startup import speech_problem
    from speech.worker import queue_mode, run_worker

    install_log_redaction()  # as in `steward serve`: no tokens or phone numbers in the worker's logs
    try:
        settings = get_settings()
    except ValueError as exc:
        typer.secho(f"Configuration error: {describe_problem(exc)}", fg="red", err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:  # a `.env` this user may not read
        typer.secho(f"Configuration error: cannot read {exc.filename or 'the settings'}: {exc.strerror or exc}",
                    fg="red", err=True)
        raise typer.Exit(2) from exc
    problem = speech_problem(settings)
    if problem:  # now, rather than in every job
        typer.secho(problem, fg="red", err=True)
        raise typer.Exit(2)
    from api.cli import _database, _require_schema  # here: api.cli imports this module
    from api.security import configure_logging

    configure_logging(settings.log_level)
    with _database(settings) as engine:  # a database it cannot use: one line, exit 2, as every command
        with engine.connect():  # now, not after procrastinate's pool waited 30 s and failed with a traceback
            pass
        if queue_mode(settings, engine) != "procrastinate":
            if engine.dialect.name == "postgresql":
                typer.secho(f"`steward worker` runs the procrastinate queue, but STEWARD_SPEECH_QUEUE is "
                            f"{settings.speech_queue!r}: set it to `procrastinate` (or `auto`).", fg="red", err=True)
            else:
                typer.secho("`steward worker` needs PostgreSQL (STEWARD_DATABASE_URL); with SQLite, `steward "
                            "serve` transcribes in-process.", fg="red", err=True)
            raise typer.Exit(2)
        _require_schema(engine)  # an unmigrated database was a 215-line traceback from procrastinate
        run_worker(settings, engine, concurrency=concurrency)
