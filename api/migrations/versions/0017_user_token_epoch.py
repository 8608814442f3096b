"""users: the token epoch, so that a new password or a disabled account ends the sessions signed in before

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 19:00:00.000000

An access token lasted until it expired whatever happened to the account, except while it was disabled: a
password reset after a handheld was lost left its token working, and so did disabling the account and enabling
it again. Tokens now carry `users.token_epoch`, which those changes move on. Tokens signed before this upgrade
carry none and count as epoch 0, so nobody is signed out by the upgrade itself.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("token_epoch", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN token_epoch")  # in place on both databases (SQLite 3.35+)
