"""The archive's schema on a live database: Alembic upgrade, downgrade, current and check
(from any install: the migrations ship inside the package), its size on disk and `db vacuum`,
and logins that may only read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, inspect
from sqlalchemy import exc as sa_exc

from sync.archive.engine import Database
from sync.errors import ConfigError, DatabaseError, printable


def migrations_dir() -> Path:
    """The Alembic script folder: the installed `sync.migrations`, or the checkout's."""
    spec = importlib.util.find_spec("sync.migrations")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent
    return Path(__file__).resolve().parents[2] / "migrations"


def _alembic(conn: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    """Migrate up to `revision` in one transaction."""
    from alembic import command
    from alembic.util import CommandError

    _name_given(revision)
    try:
        with db.write() as conn:
            command.upgrade(_alembic(conn), revision)
    except CommandError as exc:
        raise ConfigError(
            f"cannot upgrade to {printable(revision, 80)!r}: {printable(exc)}"
        ) from None
    except sa_exc.SQLAlchemyError as exc:
        raise db.db_error(exc, "migrating") from None


def downgrade(db: Database, revision: str) -> None:
    """Migrate down to `revision` (a revision id, or base)."""
    from alembic import command
    from alembic.util import CommandError

    _name_given(revision)
    if current(db) is None:
        raise ConfigError(
            f"database {db.display_url} has no tasksync revision: nothing to downgrade"
        )
    try:
        with db.write() as conn:
            command.downgrade(_alembic(conn), revision)
    except CommandError as exc:
        raise ConfigError(
            f"cannot downgrade to {printable(revision, 80)!r}: {printable(exc)}"
        ) from None
    except sa_exc.SQLAlchemyError as exc:
        raise db.db_error(exc, "migrating") from None


def _name_given(revision: str) -> None:
    if not revision.strip():
        raise ConfigError("a revision is needed (a revision id, head or base)")


def require_sqlite_file(url: str) -> None:
    """A SQLite archive must exist before anything but `db upgrade` opens it (opening one
    creates it, empty); other databases are unaffected."""
    from sync.archive.urls import normalize_url, redacted_url

    u = normalize_url(url)
    path = u.database
    if (
        u.get_backend_name() != "sqlite"
        or not path
        or path == ":memory:"
        or path.startswith("file:")
    ):
        return
    if not Path(path).exists():
        raise DatabaseError(
            f"database {redacted_url(url)}: no such file; `tasksync db upgrade` creates it"
        )


def current(db: Database) -> str | None:
    """The database's revision (None before the first upgrade)."""
    from alembic.runtime.migration import MigrationContext

    try:
        with db.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except sa_exc.SQLAlchemyError as exc:
        raise db.db_error(exc, "reading the schema revision") from None


def head() -> str:
    """The newest revision this tasksync knows."""
    from alembic.script import ScriptDirectory

    newest = ScriptDirectory.from_config(_alembic()).get_current_head()
    assert newest is not None
    return newest


def check(db: Database) -> list[str]:
    """Differences between the models and the database (empty when in step)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from sync.archive.models import Base

    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return [str(d) for d in compare_metadata(ctx, Base.metadata)]


def require_current(db: Database) -> None:
    """Refuse to run against a database that is not migrated to head."""
    at, newest = current(db), head()
    if at != newest:
        raise DatabaseError(
            f"database {db.display_url} is at schema revision {at or 'none'}, "
            f"tasksync needs {newest}: run `tasksync db upgrade`"
        )


def grant_reader(
    db: Database, name: str, password: str | None, *, host: str = "%", execute: bool = True
) -> list[str]:
    """Create (or update) a login that can only read the archive's tables and views; the
    statements (the password shown as '***'), run unless `execute` is False. Re-run it after
    `db upgrade` adds tables."""
    from sync.archive.readonly import grant_reader_sql, with_password

    try:
        with db.engine.connect() as conn:
            insp = inspect(conn)
            tables = set(insp.get_table_names()) - {"alembic_version"}
            relations = sorted(tables) + sorted(insp.get_view_names())
            exists = db.dialect == "postgresql" and bool(
                conn.exec_driver_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).first()
            )
        sql = grant_reader_sql(
            db.dialect,
            name,
            db.url.database or "",
            relations,
            exists=exists,
            password=password,
            host=host,
        )
        if execute:
            with db.write() as conn:
                for stmt in sql:
                    filled = with_password(stmt, password, db.dialect)
                    conn.exec_driver_sql(filled.replace("%", "%%"))
    except sa_exc.DBAPIError as exc:
        raise db.db_error(exc, "granting read access") from None
    return sql


ARCHIVE_TABLES = (
    "tasks",
    "task_events",
    "sync_runs",
    "sync_checkpoints",
    "sync_leases",
    "task_images",
)
SQLITE_PAGE = 8192  # engine.py gives new files this page size; `vacuum` moves old ones to it


def archive_bytes(db: Database) -> int:
    """Bytes the archive takes on disk, as its database counts them: the SQLite file (after a
    WAL checkpoint); PostgreSQL's tables with their indexes and TOAST; MariaDB's tablespace
    files as allocated (page compression punches holes, so file lengths overstate them)."""
    try:
        with db.engine.connect() as conn:
            if db.dialect == "sqlite":
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
                return int(pages * conn.exec_driver_sql("PRAGMA page_size").scalar_one())
            names = ", ".join(f"'{t}'" for t in ARCHIVE_TABLES)
            if db.dialect == "postgresql":
                sql = (
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace "
                    f"AND c.relname IN ({names})"
                )
                return int(conn.exec_driver_sql(sql).scalar_one())
            # Pages still in the buffer pool are not in the files yet: write them out first.
            conn.exec_driver_sql(f"FLUSH TABLES {', '.join(ARCHIVE_TABLES)} FOR EXPORT")
            conn.exec_driver_sql("UNLOCK TABLES")
            files = ", ".join(f"concat(DATABASE(), '/', '{t}')" for t in ARCHIVE_TABLES)
            got = conn.exec_driver_sql(
                "SELECT sum(ALLOCATED_SIZE) FROM information_schema.INNODB_SYS_TABLESPACES "
                f"WHERE NAME IN ({files})"
            ).scalar()
            if got is None:  # MySQL: no such view; the tables' own figures
                got = conn.exec_driver_sql(
                    "SELECT sum(data_length + index_length) FROM information_schema.TABLES "
                    f"WHERE table_schema = DATABASE() AND table_name IN ({names})"
                ).scalar()
            return int(got or 0)
    except sa_exc.DBAPIError as exc:
        raise db.db_error(exc, "measuring the archive") from None


def vacuum(db: Database) -> None:
    """Give the space freed inside the archive back to the filesystem, and compact it:
    SQLite `VACUUM` (moving an older file to 8 KiB pages), PostgreSQL `VACUUM FULL`,
    MariaDB `OPTIMIZE TABLE`. It rewrites the tables and blocks writes while it runs."""
    if db.dialect == "sqlite":
        _vacuum_sqlite(db)
        return
    try:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if db.dialect == "postgresql":
                conn.exec_driver_sql(f"VACUUM (FULL, ANALYZE) {', '.join(ARCHIVE_TABLES)}")
            else:
                conn.exec_driver_sql(f"OPTIMIZE TABLE {', '.join(ARCHIVE_TABLES)}").all()
    except sa_exc.DBAPIError as exc:
        raise db.db_error(exc, "vacuuming") from None


def _vacuum_sqlite(db: Database) -> None:
    """VACUUM on a connection of its own, outside any transaction; an older file moves to
    8 KiB pages on the way (the page size of a WAL file is fixed, so WAL is left meanwhile)."""
    import sqlite3

    db.engine.dispose()  # the pool's connections would keep the file in WAL mode
    try:
        conn = sqlite3.connect(db.url.database or "", timeout=30, isolation_level=None)
        try:
            if conn.execute("PRAGMA page_size").fetchone()[0] != SQLITE_PAGE:
                conn.execute("PRAGMA journal_mode=DELETE").fetchall()
                conn.execute(f"PRAGMA page_size={SQLITE_PAGE}")
                conn.execute("VACUUM")
                conn.execute("PRAGMA journal_mode=WAL").fetchall()
            else:
                conn.execute("VACUUM")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise db.db_error(exc, "vacuuming") from None
