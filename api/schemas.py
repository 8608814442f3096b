"""Field types shared by the request and response schemas."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, ConfigDict, StringConstraints
from sqlmodel import SQLModel


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # 9999-12-31T23:00-14:00 has no UTC equivalent
        raise ValueError("the timestamp is out of range once converted to UTC") from exc


_NUMERIC = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*\Z")


def _not_a_number(value: object) -> object:
    """Refuse a Unix time (a JSON number or a string of digits): pydantic reads one as UTC, guessing seconds or
    milliseconds, so a mistyped `"2026010112"` was stored as a day in 2034."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMERIC.match(value)):
        raise ValueError("a timestamp is an ISO 8601 string with a time zone (2026-11-01T08:00:00+08:00), not a "
                         "number of seconds")
    return value


# A timestamp that must carry a zone on the way in and is held (and answered) in UTC from then on,
# so a row reads the same right after it is created as it does from the database later.
UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_not_a_number), AfterValidator(_to_utc)]

def clean_label(value: object) -> object:
    """A name or number that identifies something (a station code, a community, a building number, a unit,
    a room), as people type it: Unicode NFKC (a Chinese IME's full-width `３号楼` is `3号楼`), without
    invisible format characters (zero-width spaces), spaces at the ends or runs of spaces. Two households at
    "1 单元 501" and "１ 单元 ５０１ " were two rows, and texted twice; a name of spaces passed `min_length`."""
    if not isinstance(value, str):
        return value
    text = unicodedata.normalize("NFKC", value)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return " ".join(text.split())


def strip_text(value: object) -> object:
    """Text shown to residents as typed, less invisible format characters and spaces at the ends (a title of
    spaces then fails `min_length`)."""
    if not isinstance(value, str):
        return value
    return "".join(ch for ch in value if unicodedata.category(ch) != "Cf").strip()


HOTLINE_PATTERN = r"^\+?[0-9][0-9\- ]{2,19}$"  # a service number in residents' SMS: 96133, 0531-96133

SHA256_PATTERN = r"^[0-9a-f]{64}$"
# A blob's name: its SHA-256 in lower-case hex, as the blob store (`sync/blobs`) names it.
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN, min_length=64, max_length=64)]


class RequestBody(SQLModel):
    """The base of every request body: a field the route does not take is refused (422 naming it), as sync
    push refuses it. Ignored, a misspelt `base_version` skipped the version check, `{"status": ...}` in a
    PATCH answered 200 and changed nothing, and `assignee` on a create left the order unassigned."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]


V = TypeVar("V")


def not_null(value: V | None) -> V:
    """For PATCH fields whose column cannot be empty: leave the field out to keep it, never send null."""
    if value is None:
        raise ValueError("may be left out to keep the current value, but cannot be null")
    return value
