"""Database URLs: the SQLite one built from a path, and any one as a user may see it (never with a password)."""

from __future__ import annotations

import re
from pathlib import Path

# A password in a URL's user info (`scheme://user:secret@host`), and in its query: libpq takes `password` and
# `sslpassword` (the client key's) there too; any key naming a password is masked, not only `password`.
_USERINFO_PASSWORD = re.compile(r"://([^:/@\s]*):[^@\s]+@")
_QUERY_PASSWORD = re.compile(r"([?&][^=&\s]*password[^=&\s]*=)[^&\s]*", re.IGNORECASE)


def sqlite_url(path: Path) -> str:
    """The URL of the SQLite database file at `path`, quoted so that every path survives: pasted in as it is, a
    `?` in it began a query (the database was created beside the data directory) and `%41` was decoded."""
    # Only the two characters SQLAlchemy reads in a URL's database part (it ends at `?`, `%XX` is decoded), not
    # all that `URL.render_as_string` quotes: the URL of any other path (`/srv/供热/data`) stays its own text,
    # which code that reads the path from the text (api/db.py make_engine, for the directory) still gets right.
    return "sqlite:///" + str(path).replace("%", "%25").replace("?", "%3F")


def hide_passwords(text: str) -> str:
    """`text` (a command line, a URL) with the passwords of the database URLs in it masked as `***`."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"://\1:***@", text))


def shown_url(url: str) -> str:
    """A database URL as a user may see it: without its password, in the user info or the query. Raises
    `ArgumentError` or `ValueError` for a URL SQLAlchemy cannot read."""
    from sqlalchemy.engine import make_url

    return _QUERY_PASSWORD.sub(r"\1***", make_url(url).render_as_string(hide_password=True))
