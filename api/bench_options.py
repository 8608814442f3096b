"""Checks the `steward bench` commands share, made before a benchmark of many minutes rather than after it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer


def usage_error(message: str) -> typer.Exit:
    typer.secho(message, fg="red", err=True)
    return typer.Exit(2)


def writable_directory(out: Path, option: str = "--out") -> None:
    """Create `out` if needed and check it takes files: now, not after the run (a typo cost the whole run)."""
    if out.exists() and not out.is_dir():
        raise usage_error(f"{option} {out} is a file; give the directory the results go into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a regular file in the way, a read-only file system
        raise usage_error(f"{option} {out}: cannot use it as the results directory: {exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise usage_error(f"{option} {out}: the results directory is not writable")


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """A benchmark database that cannot be reached or created, a URL that is none, or one of a database without
    a driver here (`mysql://`): one line (exit 2) naming it without its password, instead of a 450-line (or,
    for the driver, 64-line) traceback."""
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from api.urls import shown_url

    def shown() -> str:
        try:
            return shown_url(url)
        except (ArgumentError, ValueError):
            return "the given URL"

    try:
        yield
    except (ArgumentError, DBAPIError, ValueError) as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        raise usage_error(f"Cannot use the benchmark database {shown()}: {reason}") from exc
    except ImportError as exc:  # as `steward db` commands (api/cli.py `_database_errors`)
        raise usage_error(f"Cannot use the benchmark database {shown()}: use PostgreSQL ({exc})") from exc
