"""users: a user name is one name whatever its case (unique index on lower(username))

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 11:30:00.000000

`Admin` could be created next to `admin`: a look-alike account, and the two shared one sign-in lockout
(it counts by the lower-cased name). Names stay as typed; sign-in and the taken-name check compare them
lower-cased, which this index serves. A database that already holds two such names cannot be upgraded
until one is renamed: the upgrade stops and names them.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    clashes = op.get_bind().execute(sa.text(
        "SELECT lower(username), count(*) FROM users GROUP BY lower(username) HAVING count(*) > 1")).all()
    if clashes:
        names = ", ".join(f"{name} ({count} users)" for name, count in clashes)
        raise RuntimeError(f"User names that differ only in case: {names}. Rename all but one of each "
                           "(PATCH is not allowed to rename; use SQL: UPDATE users SET username = ... WHERE id = ...) "
                           "and run `steward db upgrade` again.")
    op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_username_lower", table_name="users")
