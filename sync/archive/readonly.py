"""`tasksync query`: one read-only statement, enforced by the database, with a timeout.

Threat model: the text is hostile (a user or a script pasting SQL) and the login may be the
archive's owner, even a superuser. What stops a write is the database, not a guess at the text:

* exactly one statement reaches the server: PostgreSQL through the extended query protocol
  (which refuses several statements), MariaDB without multi-statements, SQLite's `execute`;
* on a connection of its own, opened for this statement and closed after it (so no lock or
  session state outlives it), in a read-only transaction (PostgreSQL: also the session
  default; SQLite: a read-only file handle with `query_only` and an authorizer);
* with a statement timeout that the server enforces (`statement_timeout`,
  `max_statement_time`; SQLite's progress handler), so a runaway query stops there too;
* rows streamed to the caller (server-side cursor, single-row mode), never fetched whole.

A read-only transaction still lets a privileged login reach outside the archive (PostgreSQL
`COPY ... TO PROGRAM`, `lo_export`, MariaDB `SELECT ... INTO OUTFILE`, `LOAD_FILE`, the writer's
advisory locks). For PostgreSQL and MariaDB the statement is therefore parsed by a real SQL
parser (sqlglot) first: it must be one SELECT, VALUES, TABLE, SHOW or EXPLAIN of those, with no
INTO, no row locks and no call to a function that touches files, programs, locks or other
sessions; anything the parser cannot read is refused. The complete answer is least privilege:
`[query] url` with a login made by `tasksync db grant-reader`.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from sync.errors import ConfigError, DatabaseError, QueryRefused, printable

# sqlglot warns on stderr when it reads EXPLAIN or SHOW as a plain command: expected here.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

# PRAGMAs whose argument names a table or index to describe, not a value to set.
READ_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "foreign_key_list"}

_ALLOWED_SQLITE = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}

# Functions a read-only transaction does not stop from reaching outside the archive: files,
# programs, other sessions, the writer's locks, settings. Matched by name prefix.
DENIED_FUNCTIONS = {
    "postgres": (
        "pg_advisory",
        "pg_try_advisory",
        "lo_",
        "dblink",
        "pg_read_",
        "pg_ls_",
        "pg_stat_file",
        "pg_file_",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_switch_wal",
        "pg_create_",
        "pg_drop_replication",
        "pg_replication_",
        "pg_logical_",
        "pg_promote",
        "pg_notify",
        "set_config",
        "query_to_xml",
        "cursor_to_xml",
    ),
    "mysql": (
        "load_file",
        "get_lock",
        "release_lock",
        "release_all_locks",
        "sys_exec",
        "sys_eval",
        "master_pos_wait",
        "source_pos_wait",
    ),
}
DIALECT_NAMES = {"postgres": "PostgreSQL", "mysql": "MariaDB/MySQL"}


def _first_line(exc: BaseException) -> str:
    return printable((str(exc).strip().splitlines() or [type(exc).__name__])[0], 200)


def check_statement(sql: str, dialect: str) -> None:
    """Refuse anything but one read statement (PostgreSQL and MariaDB/MySQL), parsed by
    sqlglot for that dialect. `dialect` is SQLAlchemy's name (postgresql, mysql, mariadb)."""
    import sqlglot
    from sqlglot.errors import SqlglotError

    read = "postgres" if dialect == "postgresql" else "mysql"
    try:
        statements = [s for s in sqlglot.parse(sql, read=read) if s is not None]
    except SqlglotError as exc:
        raise QueryRefused(
            f"query refused: not readable as one {DIALECT_NAMES[read]} read statement "
            f"({_first_line(exc)})"
        ) from None
    if not statements:
        raise QueryRefused("query refused: empty statement")
    if len(statements) > 1:
        raise QueryRefused("query refused: only one statement at a time")
    _check_tree(statements[0], read)


def _check_tree(root: Any, read: str) -> None:
    from sqlglot import exp

    if isinstance(root, exp.Command):
        word = str(root.this).upper()
        if word == "SHOW":
            return
        if word == "EXPLAIN":
            check_statement(_explained(str(root.expression.this), read), read)
            return
        raise QueryRefused(f"query refused: {word} is not a read-only statement")
    reads = (exp.Select, exp.SetOperation, exp.Values, exp.Subquery, exp.Show, exp.Describe)
    values = isinstance(root, exp.Anonymous) and root.name.upper() == "VALUES"
    if not isinstance(root, reads) and not values:
        raise QueryRefused(
            f"query refused: {_verb(root)} is not a read-only statement "
            "(tasksync query runs SELECT, WITH ... SELECT, VALUES, TABLE, SHOW, EXPLAIN)"
        )
    denied = DENIED_FUNCTIONS[read]
    for node in root.walk():
        if isinstance(node, exp.Into):
            raise QueryRefused("query refused: SELECT ... INTO writes; only plain reads run")
        if isinstance(node, exp.Lock):
            raise QueryRefused("query refused: FOR UPDATE/SHARE locks rows; only plain reads run")
        if isinstance(node, exp.DML | exp.DDL | exp.Command | exp.Set):
            raise QueryRefused(f"query refused: {node.key.upper()} inside a read is not allowed")
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name.startswith(denied):
                raise QueryRefused(
                    f"query refused: {name}() reaches outside the archive (files, programs, "
                    "locks or other sessions)"
                )


def _verb(root: Any) -> str:
    """The statement's first word as written (sqlglot may file it under another kind)."""
    words = root.sql().split()
    return printable(words[0].upper() if words else root.key.upper(), 40)


def _explained(rest: str, read: str) -> str:
    """The statement an EXPLAIN describes: its options (a parenthesized list, ANALYZE,
    VERBOSE) skipped with sqlglot's tokenizer, so quotes cannot hide anything."""
    from sqlglot.dialects.dialect import Dialect
    from sqlglot.tokens import TokenType  # type: ignore[attr-defined]

    tokens = Dialect.get_or_raise(read).tokenize(rest)
    i, depth = 0, 0
    if tokens and tokens[0].token_type == TokenType.L_PAREN:
        for i, tok in enumerate(tokens):  # noqa: B007 - the index is used after the loop
            depth += {TokenType.L_PAREN: 1, TokenType.R_PAREN: -1}.get(tok.token_type, 0)
            if depth == 0:
                break
        i += 1
    while i < len(tokens) and tokens[i].text.upper() in ("ANALYZE", "ANALYSE", "VERBOSE"):
        i += 1
    return rest[tokens[i].start :] if i < len(tokens) else ""


def sqlite_authorizer(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
) -> int:
    """Allow reads only: no ATTACH, no writing PRAGMA, no DML or DDL of any kind."""
    if action in _ALLOWED_SQLITE:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg2 is None or (arg1 or "").lower() in READ_PRAGMAS):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


Rows = tuple[list[str], Iterator[tuple[Any, ...]]]


def _timed_out(timeout_s: float) -> DatabaseError:
    return DatabaseError(f"query stopped after its timeout of {timeout_s:g} s (--timeout)")


@contextlib.contextmanager
def run(url: str, sql: str, timeout_s: float) -> Iterator[Rows]:
    """Run one read-only statement on a connection of its own; yield its column names and
    an iterator over its rows (streamed). The connection is closed when the block ends."""
    from sync.archive.urls import normalize_url

    u = normalize_url(url)
    dialect = u.get_backend_name()
    if dialect == "sqlite":
        with _sqlite(u.database or "", sql, timeout_s) as rows:
            yield rows
        return
    check_statement(sql, dialect)
    with _server(u, dialect, sql, timeout_s) as rows:
        yield rows


@contextlib.contextmanager
def _sqlite(path: str, sql: str, timeout_s: float) -> Iterator[Rows]:
    if path in ("", ":memory:"):
        raise ConfigError("tasksync query needs a SQLite file, not :memory:")
    if not Path(path).exists():
        raise DatabaseError(f"database file {path} not found")
    if Path(path).is_dir():
        raise ConfigError(f"database file {path} is a folder, not a SQLite file")
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    deadline = time.monotonic() + timeout_s
    con = sqlite3.connect(uri, uri=True, timeout=min(10.0, timeout_s))
    try:
        try:
            con.execute("PRAGMA query_only = ON")
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"database file {path}: {_first_line(exc)}") from None
        con.set_authorizer(sqlite_authorizer)
        con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)

        def rows(cur: sqlite3.Cursor) -> Generator[tuple[Any, ...]]:
            try:
                yield from cur
            except sqlite3.OperationalError as exc:
                if "interrupted" in str(exc):
                    raise _timed_out(timeout_s) from None
                raise DatabaseError(f"query failed: {_first_line(exc)}") from None

        try:
            cur = con.execute(sql)
        except sqlite3.ProgrammingError as exc:  # several statements, among others
            raise QueryRefused(f"query refused: {_first_line(exc)}") from None
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "not authorized" in text or "readonly" in text:
                raise QueryRefused(f"query refused: {_first_line(exc)}") from None
            if "interrupted" in text:
                raise _timed_out(timeout_s) from None
            raise DatabaseError(f"query failed: {_first_line(exc)}") from None
        if cur.description is None:  # nothing to read: empty, only comments, or not a query
            raise QueryRefused("query refused: not a statement that returns rows")
        it = rows(cur)
        try:
            yield [d[0] for d in cur.description], it
        finally:
            it.close()  # before the connection closes, not whenever it is collected
    finally:
        con.close()


@contextlib.contextmanager
def _server(url: Any, dialect: str, sql: str, timeout_s: float) -> Iterator[Rows]:
    from sqlalchemy import create_engine
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.pool import NullPool

    from sync.archive.urls import redacted_url, scrub

    ms = max(1, int(timeout_s * 1000))
    if dialect == "postgresql":
        # Read-only as the session's default too: a COMMIT inside cannot open a writable one.
        options = f"-c default_transaction_read_only=on -c statement_timeout={ms}"
        connect_args: dict[str, Any] = {"options": options}
    else:
        connect_args = {"client_flag": 0, "local_infile": False}  # no multi-statements
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    where = redacted_url(url.render_as_string(hide_password=False))  # ?password= too
    try:
        try:
            raw = engine.raw_connection()
        except Exception as exc:  # the driver's own errors: the pool does not wrap them
            orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
            raise DatabaseError(
                f"database {where}: connecting failed: {scrub(str(orig), url)}"
            ) from None
        try:
            conn = raw.driver_connection
            run_one = _postgresql if dialect == "postgresql" else _mariadb
            with run_one(conn, sql, timeout_s) as rows:
                yield rows
        finally:
            with contextlib.suppress(Exception):
                raw.invalidate()  # really closed: no state of this session outlives it
    finally:
        engine.dispose()


@contextlib.contextmanager
def _postgresql(conn: Any, sql: str, timeout_s: float) -> Iterator[Rows]:
    import psycopg

    conn.rollback()  # whatever SQLAlchemy ran on connect: read_only applies from here on
    conn.read_only = True

    def fail(exc: Exception) -> Exception:
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return _timed_out(timeout_s)
        if isinstance(
            exc,
            psycopg.errors.ReadOnlySqlTransaction
            | psycopg.errors.InsufficientPrivilege
            | psycopg.errors.SyntaxError,
        ):
            return QueryRefused(f"query refused: {_first_line(exc)}")
        return DatabaseError(f"query failed: {_first_line(exc)}")

    cols = _pg_columns(conn, sql)
    cur = conn.cursor()
    stream = cur.stream(sql)  # the extended protocol: one statement, rows as they come

    def rows() -> Iterator[tuple[Any, ...]]:
        try:
            yield from stream
        except psycopg.Error as exc:
            raise fail(exc) from None

    yield cols, rows()


def _pg_columns(conn: Any, sql: str) -> list[str]:
    """The statement's column names, from the server's own parse (Parse + Describe of the
    unnamed statement): known before any row, even when there are none. The parse alone
    refuses several statements."""
    from psycopg import pq

    pg = conn.pgconn
    res = pg.prepare(b"", sql.encode(conn.info.encoding))
    if res.status != pq.ExecStatus.COMMAND_OK:
        message = res.error_message.decode(errors="replace").removeprefix("ERROR:").strip()
        if res.error_field(pq.DiagnosticField.SQLSTATE) == b"42601" and "multiple" in message:
            raise QueryRefused("query refused: only one statement at a time")
        raise DatabaseError(f"query failed: {printable(message.splitlines()[0], 200)}")
    desc = pg.describe_prepared(b"")
    return [desc.fname(i).decode(errors="replace") for i in range(desc.nfields)]


@contextlib.contextmanager
def _mariadb(conn: Any, sql: str, timeout_s: float) -> Iterator[Rows]:
    import pymysql

    def fail(exc: Exception) -> Exception:
        code = exc.args[0] if exc.args else 0
        if code in (1969, 3024, 1317):  # max_statement_time / max_execution_time / killed
            return _timed_out(timeout_s)
        if code in (1792, 1044, 1045, 1142, 1143, 1227):
            return QueryRefused(f"query refused: {_first_line(exc)}")
        return DatabaseError(f"query failed: {_first_line(exc)}")

    try:
        with conn.cursor() as setup:
            setup.execute("SELECT VERSION()")
            if "mariadb" in str(setup.fetchone()[0]).lower():
                setup.execute(f"SET SESSION max_statement_time = {timeout_s:.3f}")
            else:
                setup.execute(f"SET SESSION max_execution_time = {max(1, int(timeout_s * 1000))}")
            setup.execute("SET SESSION TRANSACTION READ ONLY")
            setup.execute("START TRANSACTION READ ONLY")
        cur = conn.cursor(pymysql.cursors.SSCursor)  # unbuffered: rows streamed
        cur.execute(sql)
    except pymysql.Error as exc:
        raise fail(exc) from None
    done = False

    def rows() -> Iterator[tuple[Any, ...]]:
        nonlocal done
        try:
            yield from cur
        except pymysql.Error as exc:
            raise fail(exc) from None
        done = True

    try:
        yield [d[0] for d in cur.description or []], rows()
    finally:
        if not done:
            # Left early (a closed pipe, Ctrl-C): the connection is closed, not drained row by
            # row, and PyMySQL must not try to read the rest from it when the result is freed.
            result = getattr(cur, "_result", None)
            if result is not None:
                result.unbuffered_active = False


def query_all(
    url: str, sql: str, timeout_s: float = 30.0
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """`run`, with every row collected (for small results: tests, the README's examples)."""
    with run(url, sql, timeout_s) as (cols, rows):
        return cols, list(rows)


READER_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,62}"  # whole (fullmatch): no trailing newline
READER_HOST = r"[A-Za-z0-9_.%:\-]{1,255}"  # a MariaDB host pattern: nothing to escape
PASSWORD_MARK = "'***'"


def with_password(stmt: str, password: str | None, dialect: str) -> str:
    """A grant statement with the password placeholder replaced by the quoted password."""
    if password is None or PASSWORD_MARK not in stmt:
        return stmt
    quoted = password.replace("'", "''")
    if dialect != "postgresql":
        quoted = password.replace("\\", "\\\\").replace("'", "''")
    return stmt.replace(PASSWORD_MARK, f"'{quoted}'")


def grant_reader_sql(
    dialect: str,
    name: str,
    database: str,
    relations: list[str],
    *,
    exists: bool,
    password: str | None,
    host: str = "%",
) -> list[str]:
    """The statements that make `name` a login that can read the archive's tables and views
    and nothing else. `password` None leaves the login's password as it is (PostgreSQL trust,
    peer or certificate authentication need none). `exists`: the PostgreSQL role exists.
    The password appears as the placeholder `PASSWORD_MARK`: `with_password` fills it in for
    running, and what is shown keeps the placeholder."""
    import re

    if not re.fullmatch(READER_NAME, name):
        raise ConfigError(
            f"reader name {printable(name, 80)!r}: letters, digits and _ only (at most 63)"
        )
    if not re.fullmatch(READER_HOST, host):
        raise ConfigError(
            f"--host {printable(host, 80)!r}: a host name, address or pattern "
            "(letters, digits, . - _ : and %)"
        )
    if password is not None and not password.isprintable():
        raise ConfigError("the reader's password contains control characters")
    if dialect == "postgresql":
        pw = "" if password is None else f" PASSWORD {PASSWORD_MARK}"
        out = [f'{"ALTER" if exists else "CREATE"} ROLE "{name}" LOGIN{pw}']
        out += [
            f'ALTER ROLE "{name}" SET default_transaction_read_only = on',
            f'GRANT CONNECT ON DATABASE "{database}" TO "{name}"',
            f'GRANT USAGE ON SCHEMA public TO "{name}"',
        ]
        out += [f'GRANT SELECT ON TABLE "{r}" TO "{name}"' for r in relations]
        return out
    if dialect in ("mysql", "mariadb"):
        user = f"'{name}'@'{host}'"
        pw = "" if password is None else f" IDENTIFIED BY {PASSWORD_MARK}"
        out = [f"CREATE USER IF NOT EXISTS {user}{pw}"]
        if pw:  # an existing user gets the new password too
            out.append(f"ALTER USER {user}{pw}")
        out += [f"GRANT SELECT ON `{database}`.`{r}` TO {user}" for r in relations]
        return out
    raise ConfigError(
        "SQLite has no logins: give the reader read access to the file only; "
        "tasksync query opens it read-only anyway"
    )
