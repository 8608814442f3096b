"""video: at most one open room per work order (a partial unique index)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 11:15:00.000000

`create_room` reuses an open room of the work order, but two requests at once could both find none and
both insert (PostgreSQL: two transactions; SQLite: two deferred ones): the steward and the resident could
land in different rooms. The index makes the second insert fail; the service then answers the first's
room. Rooms left open twice by that race before this revision are closed (`lost`), all but the newest.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "state = 'open'"


def upgrade() -> None:
    op.execute(sa.text(f"""
        UPDATE video_rooms SET state = 'closed', close_reason = 'lost', closed_at = CURRENT_TIMESTAMP
        WHERE {_OPEN} AND EXISTS (
            SELECT 1 FROM video_rooms AS newer
            WHERE newer.work_order_id = video_rooms.work_order_id AND newer.state = 'open'
              AND (newer.created_at > video_rooms.created_at
                   OR (newer.created_at = video_rooms.created_at AND newer.id > video_rooms.id)))
    """))
    op.create_index("uq_video_rooms_open_work_order", "video_rooms", ["work_order_id"], unique=True,
                    sqlite_where=sa.text(_OPEN), postgresql_where=sa.text(_OPEN))


def downgrade() -> None:
    op.drop_index("uq_video_rooms_open_work_order", table_name="video_rooms")
