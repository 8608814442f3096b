"""The pull cursor: where a device stands in the change stream, signed so it cannot be forged.

Opaque to devices: base64url of a compact JSON array and a truncated HMAC-SHA256 under the service's
secret key. Positions are "the last item delivered"; ids are compared as UUIDs (byte order), the same
order as PostgreSQL's `uuid` and SQLite's hex strings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass, replace
from typing import Any

import orjson

from api.errors import BadRequest

FORMAT = 3  # 2 added `phase_part`, 3 `database`; older cursors still decode (part 0, database unknown)
_MAC_BYTES = 12
DELTA = "d"  # ordinary changes, after position (seq, table, row)
SNAPSHOT = "s"  # every visible row, table by table, then the delta from `seq`
SCOPE = "x"  # rows related to scope events up to `phase_seq`, then back to the delta
END_OF_SEQ = 1 << 8  # a table index after every table: "all of this seq delivered"


class InvalidCursor(BadRequest):
    code = "invalid_cursor"


@dataclass(frozen=True)
class Cursor:
    user_id: uuid.UUID
    office: bool
    client_id: uuid.UUID | None
    # Delta position: the last (seq, table index, row id) delivered; row None = nothing of that table yet.
    seq: int
    table: int
    row: uuid.UUID | None
    # Scope events with seq <= scope_seq are already reflected on the device.
    scope_seq: int
    phase: str = DELTA
    phase_seq: int = 0  # SCOPE: the newest scope event being applied
    phase_table: int = 0  # SNAPSHOT/SCOPE: position inside the phase: table, then (key, row) within it
    phase_row: uuid.UUID | None = None
    phase_key: uuid.UUID | None = None  # the paging key (household, building) of phase_row, where used
    # SNAPSHOT of a steward: 0 = the grid's rows of phase_table (paged by key, row), 1 = the steward's own
    # rows outside the grid (few; paged by row alone, so their query runs once per table, not per page).
    phase_part: int = 0
    # The identity of the database that issued it (`sync.tracking.database_id`; 0: unknown, an older format).
    database: int = 0

    def with_(self, **changes: Any) -> Cursor:
        return replace(self, **changes)


def _hex(value: uuid.UUID | None) -> str | None:
    return value.hex if value is not None else None


def _uuid(value: Any) -> uuid.UUID | None:
    return uuid.UUID(hex=value) if value is not None else None


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:_MAC_BYTES]


def encode(cursor: Cursor, secret: str) -> str:
    """The opaque string a device stores."""
    payload = orjson.dumps([FORMAT, cursor.user_id.hex, int(cursor.office), _hex(cursor.client_id), cursor.seq,
                            cursor.table, _hex(cursor.row), cursor.scope_seq, cursor.phase, cursor.phase_seq,
                            cursor.phase_table, _hex(cursor.phase_row), _hex(cursor.phase_key), cursor.phase_part,
                            cursor.database])
    return base64.urlsafe_b64encode(payload + _mac(secret, payload)).rstrip(b"=").decode()


def decode(text: str, secret: str) -> Cursor:
    """The cursor, or `InvalidCursor` if it was not made by this server (or was damaged)."""
    bad = InvalidCursor("The cursor is damaged or was not issued by this server; pull without a cursor to "
                        "start a fresh sync.")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise bad from exc
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, _mac(secret, payload)):
        raise bad
    try:
        fields = orjson.loads(payload)
        if fields[0] == 1:  # before `phase_part`: a position among the grid's rows
            fields = [2, *fields[1:], 0]
        if fields[0] == 2:  # before `database`: issued by this database or another, we cannot tell
            fields = [FORMAT, *fields[1:], 0]
        (fmt, user, office, client, seq, table, row, scope_seq, phase, phase_seq, phase_table,
         phase_row, phase_key, phase_part, database) = fields
        if fmt != FORMAT or phase not in (DELTA, SNAPSHOT, SCOPE) or phase_part not in (0, 1):
            raise ValueError(fmt)
        return Cursor(user_id=uuid.UUID(hex=user), office=bool(office), client_id=_uuid(client), seq=int(seq),
                      table=int(table), row=_uuid(row), scope_seq=int(scope_seq), phase=phase,
                      phase_seq=int(phase_seq), phase_table=int(phase_table), phase_row=_uuid(phase_row),
                      phase_key=_uuid(phase_key), phase_part=int(phase_part), database=int(database))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise bad from exc
