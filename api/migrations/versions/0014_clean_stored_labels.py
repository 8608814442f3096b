"""network: clean the names and numbers stored before input was cleaned

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 06:00:00.000000

Since 2026-12-01 the API stores station codes, names and districts, building communities and numbers, and
household units, rooms and resident names as `api.schemas.clean_label` makes them (Unicode NFKC: a Chinese
IME's full-width `５０１` is `501`; no invisible format characters; single spaces, none at the ends). Rows
stored before kept `５０１ `: a search for `501` missed them, a second household at `501` was accepted beside
them, and an SMS read `３号楼 号楼`. This cleans them the same way (the function is copied here, as a
migration must not change with the code) and stamps the changed rows with a new change sequence number, so
that the next pull brings them to every device.

A row whose cleaned key would equal another row's (`１`/`501 ` beside `1`/`501` in one building: two rows for
one flat, made before the cleaning) is left as it is, and the upgrade logs how many and their ids: the office
merges them by hand (move the work orders and visits to one, then correct the other's room). So is a row
whose required name or number would clean to nothing (a unit typed as a lone full-width space, `\u3000`):
the API refuses an empty one, and every list holding the row would fail; the office corrects it. (Until
2026-12-04 this migration wrote the empty value; no release carried that version.) So is a row whose value
would clean longer than its column (NFKC writes `⑴` as `(1)`: a room `1201⑴⑵⑶` of 7 characters becomes 13,
over the 10 of the column): PostgreSQL refused the update and the whole upgrade failed, and SQLite stored it
and every list holding the household answered 500. (Until 2026-12-06 this migration wrote it.)
"""
import logging
import unicodedata
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

# table, the columns cleaned, the columns of its unique key (None: no key), the columns that may not be empty
TABLES = (("stations", ("code", "name", "district"), ("code",), ("code", "name")),
          ("buildings", ("community", "number"), ("community", "number"), ("community", "number")),
          ("households", ("unit", "room", "resident_name"), ("building_id", "unit", "room"), ("unit", "room")))
# the columns' lengths at this revision (0001)
LENGTHS = {"code": 32, "name": 100, "district": 50, "community": 100, "number": 20, "unit": 10, "room": 10,
           "resident_name": 100}


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    text = unicodedata.normalize("NFKC", value)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return " ".join(text.split())


def upgrade() -> None:
    bind = op.get_bind()
    now = datetime.now(UTC)
    seq = None
    for table, columns, key, required in TABLES:
        names = sorted({"id", *columns, *key})
        rows = [dict(r._mapping) for r in bind.execute(sa.text(f"SELECT {', '.join(names)} FROM {table}"))]
        cleaned = [{**row, **{c: _clean(row[c]) for c in columns}} for row in rows]
        keys = Counter(tuple(c[k] for k in key) for c in cleaned)
        changed, kept, blank, long = [], [], [], []
        for row, new in zip(rows, cleaned, strict=True):
            if all(new[c] == row[c] for c in columns):
                continue
            if any(not new[c] for c in required):
                blank.append(row["id"])
            elif any(new[c] is not None and len(new[c]) > LENGTHS[c] for c in columns):
                long.append(row["id"])
            elif keys[tuple(new[k] for k in key)] > 1:
                kept.append(row["id"])
            else:
                changed.append(new)
        if kept:
            log.warning("%s: %d rows left as stored: cleaned, each would equal another row's %s (merge them by "
                        "hand): %s", table, len(kept), "/".join(key), ", ".join(str(i) for i in kept[:50]))
        if blank:
            log.warning("%s: %d rows left as stored: cleaned, their %s would be empty (correct them by hand): %s",
                        table, len(blank), "/".join(required), ", ".join(str(i) for i in blank[:50]))
        if long:
            log.warning("%s: %d rows left as stored: cleaned, a value would be longer than its column (correct them "
                        "by hand): %s", table, len(long), ", ".join(str(i) for i in long[:50]))
        if not changed:
            continue
        if seq is None:  # one change sequence number for every row this migration writes, as 0012
            seq = bind.execute(sa.text(
                "UPDATE sync_state SET value = value + 1 WHERE name = 'seq' RETURNING value")).scalar()
            if seq is None:
                seq = 1
                bind.execute(sa.text("INSERT INTO sync_state (name, value, updated_at) VALUES ('seq', 1, :now)"),
                             {"now": now})
        # No update meets the unique index half-way: a row whose raw key equals another's cleaned one is clean
        # already (cleaning twice changes nothing), so it counted as a clash above and neither row changes.
        sets = ", ".join(f"{c} = :{c}" for c in columns)
        statement = sa.text(f"UPDATE {table} SET {sets}, seq = :seq, version = version + 1, updated_at = :now "
                            f"WHERE id = :id")
        for new in changed:
            bind.execute(statement, {**{c: new[c] for c in columns}, "id": new["id"], "seq": seq, "now": now})
        log.info("%s: cleaned %d stored names and numbers", table, len(changed))


def downgrade() -> None:
    pass  # the cleaned values are what the API now stores; there is nothing to take back
