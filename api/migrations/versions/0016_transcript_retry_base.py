"""transcripts: the attempts made before a supervisor's last retry

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 18:30:00.000000

A retry set `attempts` back to 0, and `attempts` is also what a worker's outcome is written against: a worker
presumed dead at attempt 1 matched the retried job's first attempt and wrote its stale text over the new
run's. `attempts` now only grows; the budget of the retried job counts from `retry_base`.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("transcripts", sa.Column("retry_base", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    # Below 0016 the count starts again from the retry, as it did then.
    op.execute("UPDATE transcripts SET attempts = attempts - retry_base")
    # In place on both databases (SQLite 3.35+): a batch copy of the table would drop the search index's
    # triggers on it.
    op.execute("ALTER TABLE transcripts DROP COLUMN retry_base")
