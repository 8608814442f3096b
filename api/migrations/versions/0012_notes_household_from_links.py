"""notes: store the household that a note's visit or work order names (notes pushed through sync lacked it)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 01:40:00.000000

REST stored the household a note's links name; sync's create did not, so a voice note pushed from a handheld
with only a visit (or work order) had no household: the grid's other stewards, and its next steward, could
not see it. This fills it in from the visit, else the work order, and stamps the changed notes with a new
change sequence number (and version) so that the next pull brings them to every device that may now see
them.
"""
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    missing = ("household_id IS NULL AND (visit_id IS NOT NULL OR work_order_id IS NOT NULL)")
    if not bind.execute(sa.text(f"SELECT 1 FROM notes WHERE {missing} LIMIT 1")).first():
        return
    seq = bind.execute(sa.text("UPDATE sync_state SET value = value + 1 WHERE name = 'seq' RETURNING value")).scalar()
    if seq is None:  # every write of a note takes a number from the counter, so it exists; be safe anyway
        seq = 1
        bind.execute(sa.text("INSERT INTO sync_state (name, value, updated_at) VALUES ('seq', 1, :now)"),
                     {"now": datetime.now(UTC)})
    bind.execute(sa.text(
        f"UPDATE notes SET household_id = COALESCE("
        f"(SELECT household_id FROM visits WHERE visits.id = notes.visit_id), "
        f"(SELECT household_id FROM work_orders WHERE work_orders.id = notes.work_order_id)), "
        f"seq = :seq, version = version + 1 WHERE {missing}"), {"seq": seq})


def downgrade() -> None:
    pass  # the filled-in households are right under the older code too
