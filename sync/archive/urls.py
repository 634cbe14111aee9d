"""Database URLs: which dialects and drivers tasksync supports (`check_database_url`), the
drivers it picks for bare dialect names (`normalize_url`), and the secrets a URL carries,
hidden (`redacted_url`) or scrubbed from an error message (`scrub`).

A leaf: it imports nothing of tasksync but the errors, so the settings can check a URL
without loading the archive; SQLAlchemy is imported only when a URL is looked at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sync.errors import ConfigError, printable

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

# Dialects and the drivers tasksync installs and is tested with.
DRIVERS = {
    "sqlite": {"pysqlite"},
    "postgresql": {"psycopg"},
    "mysql": {"pymysql"},
    "mariadb": {"pymysql"},
}
# Query-string keys of a database URL that carry a secret (hidden like the password).
SECRET_URL_KEYS = {"password", "passwd", "sslpassword", "sslkey_password"}


def check_database_url(v: str) -> str:
    """A SQLAlchemy URL of a dialect and driver tasksync supports."""
    # Imported here: loading the settings has no use for SQLAlchemy.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(v)
    except ArgumentError:
        raise ValueError("not a database URL (e.g. sqlite:///tasksync.db)") from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in DRIVERS or (driver and driver not in DRIVERS[backend]):
        supported = "sqlite, postgresql (psycopg), mysql or mariadb (pymysql)"
        raise ValueError(f"unsupported database {url.drivername!r}; tasksync supports {supported}")
    if url.host and "@" in url.host:
        raise ValueError("an '@' in the user name or password must be written %40")
    if backend != "sqlite" and not url.database:
        raise ValueError(f"the URL names no database ({backend}://USER@HOST/DATABASE)")
    if backend == "sqlite" and url.query:
        raise ValueError("a SQLite URL takes no ?options")
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        raise ValueError("an in-memory SQLite database keeps nothing: name a file (sqlite:///F)")
    return v


def redacted_url(url: str) -> str:
    """A database URL with its password (and any secret query parameter) replaced by ***."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    hidden = {k: "***" for k in u.query if k.lower() in SECRET_URL_KEYS}
    if hidden:
        u = u.update_query_dict(hidden)
    return u.render_as_string(hide_password=True)


def normalize_url(url: str) -> URL:
    """Pick our drivers for bare dialect names and make MySQL/MariaDB speak utf8mb4."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except sa_exc.ArgumentError:
        raise ConfigError(f"not a database URL: {url!r}") from None
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    elif u.drivername in ("mysql", "mariadb"):
        u = u.set(drivername=f"{u.drivername}+pymysql")
    if u.get_backend_name() in ("mysql", "mariadb") and "charset" not in u.query:
        u = u.update_query_dict({"charset": "utf8mb4"})
    return u


def scrub(text: str, url: URL) -> str:
    """An error message with the database password removed, cut to its first line."""
    line = (text.strip().splitlines() or [""])[0]
    secrets = [str(url.password)] if url.password else []
    secrets += [str(v) for k, v in url.query.items() if k.lower() in SECRET_URL_KEYS and v]
    for secret in secrets:
        line = line.replace(secret, "***")
    return printable(line, 500)
