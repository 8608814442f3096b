"""sync: drop the single-column indexes that the (key, id) paging indexes already cover

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 04:50:00.000000

`ix_households_building_id`, `ix_work_orders_household_id`, `ix_visits_household_id` and
`ix_readings_household_id` are prefixes of the composite paging indexes of 0002 (`..._id`): every lookup
by the key alone uses the composite one, and each insert (a reading from every push) maintained one index
more than needed.
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DROPPED = (("households", "building_id"), ("work_orders", "household_id"), ("visits", "household_id"),
            ("readings", "household_id"))


def upgrade() -> None:
    for table, column in _DROPPED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_{column}")


def downgrade() -> None:
    for table, column in reversed(_DROPPED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(f"ix_{table}_{column}", [column], unique=False)
