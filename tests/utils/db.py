"""Emptying the test database between tests."""

from __future__ import annotations

from sqlalchemy import Engine, text

from api.tables import metadata

_NON_EMPTY = " UNION ALL ".join(
    f"SELECT '{t.name}' WHERE EXISTS (SELECT 1 FROM \"{t.name}\")" for t in metadata.sorted_tables
)


def wipe(engine: Engine) -> None:
    """Delete every row, children first, from the tables that have any.

    A PostgreSQL TRUNCATE of all the tables took 150-280 ms here (new files for every table and index), and the
    `engine` fixture wipes twice a test: 7-10 minutes of the suite. Finding the few tables a test wrote to and
    deleting their rows takes 1-5 ms."""
    with engine.begin() as conn:
        non_empty = {name for (name,) in conn.execute(text(_NON_EMPTY))}
        for table in reversed(metadata.sorted_tables):
            if table.name in non_empty:
                conn.execute(table.delete())
