"""`tasksync query` as a hostile user would try it, on every database: nothing it sends can
write, write files, run programs, hold the writer's lock or run past its timeout."""

from __future__ import annotations

import os
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text

from sync.archive import readonly
from sync.archive.store import Store
from sync.errors import DatabaseError, QueryRefused

from .helpers import MY_HOST, PG_HOST, sim_transport

MARK = Path("/tmp") / f"tasksync-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _url(store: Store) -> str:
    return store.url.render_as_string(hide_password=False)


def snapshot(store: Store) -> tuple[Any, ...]:
    """Everything a write could change: tables and views, their row counts, a checksum."""
    insp = inspect(store.engine)
    tables = sorted(insp.get_table_names())
    with store.engine.connect() as conn:
        counts = tuple(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in tables)
        statuses = tuple(
            conn.execute(text("SELECT id, status, progress FROM tasks ORDER BY id")).all()
        )
    return tuple(tables), tuple(sorted(insp.get_view_names())), counts, statuses


@pytest.fixture
def archive(store: Store) -> Iterator[Store]:
    """A small real archive on each database."""
    from sync.jobs import pipeline
    from sync.server.client import connect
    from sync.simulator import Simulator

    from .helpers import source_for

    sim = Simulator(120, seed=3)
    src = source_for("http://sim.test")
    pipeline.backfill(store, connect(src, transport=sim_transport(sim)), src)
    yield store
    MARK.unlink(missing_ok=True)


HOSTILE = {
    "postgresql": [
        "SELECT $$;$$; DELETE FROM tasks",
        "SELECT $x$ $$ ; $x$; COMMIT; DELETE FROM tasks",
        "SELECT E'\\';' ; COMMIT; UPDATE tasks SET status = 'X'",
        "/* /* */ ; COMMIT; */ DELETE FROM tasks",
        "SELECT 1; COMMIT; CREATE TABLE pwned (x int)",
        "COMMIT",
        f"COPY tasks TO PROGRAM 'touch {MARK}'",
        f"COPY (SELECT 1) TO '{MARK}'",
        f"SELECT lo_export(lo_from_bytea(0, 'x'), '{MARK}')",
        "SELECT pg_advisory_lock(1)",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SELECT * INTO pwned FROM tasks",
        "WITH d AS (DELETE FROM tasks RETURNING id) SELECT * FROM d",
        "SELECT * FROM tasks FOR UPDATE",
        "DO $$BEGIN DELETE FROM tasks; END$$",
        "EXPLAIN ANALYZE DELETE FROM tasks",
        "SET default_transaction_read_only = off",
        "SELECT pg_read_file('/etc/hostname')",
    ],
    "mysql": [
        f"SELECT 'x'INTO OUTFILE '{MARK}'",
        f"SELECT (1)INTO DUMPFILE '{MARK}'",
        f"SELECT * FROM tasks INTO OUTFILE '{MARK}'",
        "SELECT LOAD_FILE('/etc/hostname')",
        "SELECT GET_LOCK('anything', 0)",
        "SELECT 1; DELETE FROM tasks",
        "DELETE FROM tasks",
        "SELECT 1 FOR UPDATE",
        "LOCK TABLES tasks WRITE",
        "HANDLER tasks OPEN",
        "CREATE TABLE pwned (x int)",
        "SET SESSION TRANSACTION READ WRITE",
        "SELECT * FROM tasks /*! ; DELETE FROM tasks */",
    ],
    "sqlite": [
        "DELETE FROM tasks",
        "SELECT 1; DELETE FROM tasks",
        f"ATTACH DATABASE '{MARK}' AS x",
        "PRAGMA query_only = OFF",
        "PRAGMA journal_mode = DELETE",
        "WITH x AS (SELECT 1) DELETE FROM tasks",
        f"VACUUM INTO '{MARK}'",
        "CREATE TEMP TABLE t AS SELECT 1",
        "SELECT load_extension('/tmp/x')",
    ],
}


def cli(*args: str) -> int:
    """Run `tasksync ARGS` in-process; the exit code."""
    from sync.cli import main

    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _dialect(store: Store) -> str:
    return "mysql" if store.dialect in ("mysql", "mariadb") else store.dialect


def _try(store: Store, sql: str, timeout_s: float = 10) -> Exception | None:
    try:
        with readonly.run(_url(store), sql, timeout_s) as (_cols, rows):
            list(rows)
    except (QueryRefused, DatabaseError) as exc:
        return exc
    return None


def test_query_refuses_every_hostile_statement(archive: Store) -> None:
    """Hidden semicolons, COMMIT, COPY TO PROGRAM, INTO OUTFILE, LOAD_FILE, the writer's lock:
    each refused (exit-2 error) and the archive, the server's files and the lock untouched."""
    before = snapshot(archive)
    for sql in HOSTILE[_dialect(archive)]:
        err = _try(archive, sql)
        assert isinstance(err, QueryRefused | DatabaseError), sql
        assert "\n" not in str(err)
        assert snapshot(archive) == before, sql
        assert not MARK.exists(), sql
    with archive.lock("main"):  # nothing a query did holds the writer's lock
        pass


@pytest.mark.parametrize(
    "sql",
    [
        "VALUES (1)",
        "SELECT(1)",
        "select*from tasks",
        "SELECT 'a;b', '--', '/* x */' AS c",
        "WITH t AS (SELECT id FROM tasks) SELECT count(*) FROM t",
        "EXPLAIN SELECT * FROM tasks",
    ],
)
def test_query_runs_legitimate_reads(archive: Store, sql: str) -> None:
    """Reads the old text guard refused now run on every database."""
    if sql == "VALUES (1)" and archive.dialect != "sqlite":
        sql = "VALUES (1)" if archive.dialect == "postgresql" else "SELECT 1"
    with readonly.run(_url(archive), sql, 10) as (cols, rows):
        assert cols and list(rows)


FRAGMENTS = [
    "SELECT 1",
    "SELECT id FROM tasks",
    ";",
    "$$",
    "$q$",
    "'",
    "''",
    "E'\\''",
    '"',
    "`",
    "/*",
    "*/",
    "--",
    "#",
    "\n",
    "COMMIT",
    "DELETE FROM tasks",
    "UPDATE tasks SET status = 'X'",
    "DROP TABLE tasks",
    "CREATE TABLE pwned (x int)",
    "INSERT INTO sync_runs (source) VALUES ('x')",
    f"COPY tasks TO PROGRAM 'touch {MARK}'",
    f"INTO OUTFILE '{MARK}'",
    "SET default_transaction_read_only = off",
    "SELECT pg_advisory_lock(1)",
    "SELECT GET_LOCK('x', 0)",
    "BEGIN",
    "(",
    ")",
]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(parts=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=9))
def test_query_mixtures_never_change_the_archive(archive: Store, parts: list[str]) -> None:
    """Statements mixing quotes, dollar quotes, comments, semicolons and writes: whatever
    runs or is refused, the archive is unchanged and nothing was written on the server."""
    before = snapshot(archive)
    _try(archive, " ".join(parts), timeout_s=5)
    assert snapshot(archive) == before
    assert not MARK.exists()


RUNAWAY = {
    "postgresql": [
        "SELECT pg_sleep(3600)",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
    ],
    "mysql": [
        "SELECT SLEEP(3600)",
        "SELECT count(*) FROM information_schema.COLUMNS a, information_schema.COLUMNS b, "
        "information_schema.COLUMNS c",
    ],
    "sqlite": [
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    ],
}


def _server_busy(store: Store, marker: str) -> list[Any]:
    """Statements still running on the server whose text contains `marker`."""
    with store.engine.connect() as conn:
        if store.dialect == "postgresql":
            q = "SELECT query FROM pg_stat_activity WHERE state = 'active' AND query LIKE :m"
        elif store.dialect == "sqlite":
            return []
        else:
            q = "SELECT info FROM information_schema.PROCESSLIST WHERE info LIKE :m"
        return [
            r[0]
            for r in conn.execute(text(q), {"m": f"%{marker}%"})
            if "PROCESSLIST" not in r[0] and "pg_stat_activity" not in r[0]
        ]


def test_runaway_query_stops_at_its_timeout_and_leaves_nothing_running(store: Store) -> None:
    """pg_sleep(3600), SLEEP(3600), an endless recursive CTE: stopped by the server within the
    timeout, and no server-side work is left running afterwards."""
    for sql in RUNAWAY[_dialect(store)]:
        marked = f"{sql} /* runaway-{uuid.uuid4().hex[:6]} */"
        t0 = time.monotonic()
        err = _try(store, marked, timeout_s=1)
        took = time.monotonic() - t0
        assert isinstance(err, DatabaseError) and "timeout of 1 s" in str(err), (sql, err)
        assert took < 6, (sql, took)
        time.sleep(0.3)
        assert _server_busy(store, marked[-16:-3]) == [], sql


def test_query_streams_rows_in_bounded_memory(store: Store) -> None:
    """A million rows are streamed, not fetched whole: memory stays small while reading."""
    n = 1_000_000
    sql = {
        "postgresql": f"SELECT g, 'row number ' || g FROM generate_series(1, {n}) g",
        "sqlite": f"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < {n}) "
        "SELECT n, 'row number ' || n FROM r",
        "mysql": "SELECT a.ORDINAL_POSITION, 'row' FROM information_schema.COLUMNS a, "
        "information_schema.COLUMNS b LIMIT 1000000",
    }[_dialect(store)]
    tracemalloc.start()
    try:
        seen = 0
        with readonly.run(_url(store), sql, 120) as (_cols, rows):
            for _ in rows:
                seen += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen >= 100_000
    assert peak < 30 << 20, f"peak {peak >> 20} MB for {seen} rows"


def test_query_text_is_parsed_not_guessed() -> None:
    """The guard is a real parser: quoting it does not understand is refused, not trusted."""
    readonly.check_statement("SELECT $tag$ ; DELETE $tag$", "postgresql")
    with pytest.raises(QueryRefused, match="one statement"):
        readonly.check_statement("SELECT $tag$ x $tag$; DELETE FROM t", "postgresql")
    with pytest.raises(QueryRefused, match="not readable"):
        readonly.check_statement("SELECT 'x'INTO OUTFILE '/tmp/f'", "mysql")


@pytest.fixture
def reader_name() -> Iterator[str]:
    name = f"reader_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    yield name


def _drop_reader(store: Store, name: str) -> None:
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.exec_driver_sql(f'DROP OWNED BY "{name}"')
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{name}"')
        else:
            conn.exec_driver_sql(f"DROP USER IF EXISTS '{name}'@'%%'")


def test_grant_reader_makes_a_login_that_can_only_read(
    archive: Store,
    reader_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tasksync db grant-reader NAME`: a login that reads every archive table and view, and
    that the database itself stops from writing; `--print` changes nothing."""
    if archive.dialect == "sqlite":
        assert cli("--db", _url(archive), "db", "grant-reader", reader_name) == 2
        return
    monkeypatch.setenv("READER_PW", "pw-Reader-1%")
    try:
        assert cli("--db", _url(archive), "db", "grant-reader", reader_name, "--print") == 0
        with pytest.raises(DatabaseError):  # --print created nothing: the login does not exist
            Store(_reader_url(archive, reader_name)).ping()
        args = ["--db", _url(archive), "db", "grant-reader", reader_name]
        assert cli(*args, "--password-env", "READER_PW") == 0
        printed = capsys.readouterr()
        assert "GRANT SELECT" in printed.out and "pw-Reader" not in printed.out + printed.err
        reader = _reader_url(archive, reader_name)
        with readonly.run(reader, "SELECT count(*) FROM tasks", 10) as (_c, rows):
            assert list(rows) == [(120,)]
        with readonly.run(reader, "SELECT count(*) FROM daily_stats", 10) as (_c, rows):
            assert list(rows)
        before = snapshot(archive)
        direct = Store(reader).engine
        for sql in ("DELETE FROM tasks", "CREATE TABLE pwned (x int)"):
            refused = r"(?i)denied|read-only|permission"
            with pytest.raises(Exception, match=refused), direct.begin() as conn:
                conn.exec_driver_sql(sql)
        direct.dispose()
        assert snapshot(archive) == before
    finally:
        _drop_reader(archive, reader_name)


def _reader_url(store: Store, name: str) -> str:
    db = store.url.database
    if store.dialect == "postgresql":
        return f"postgresql+psycopg://{name}:pw-Reader-1%25@{PG_HOST}/{db}"
    return f"mysql+pymysql://{name}:pw-Reader-1%25@{MY_HOST}/{db}?charset=utf8mb4"


def test_query_uses_the_query_url_and_timeout_from_config(
    archive: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """[query] url and timeout_s are used; --timeout overrides; a bad --timeout is exit 2."""
    cfg = tmp_path / "q.toml"
    cfg.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path}/nope.db"\n\n'
        f'[query]\nurl = "{_url(archive)}"\ntimeout_s = 7\n'
    )
    assert (
        cli("--config", str(cfg), "query", "SELECT count(*) AS n FROM tasks", "--format", "csv")
        == 0
    )
    assert capsys.readouterr().out.splitlines() == ["n", "120"]
    for bad in ("0", "-1", "inf", "nan"):
        assert cli("--config", str(cfg), "query", "SELECT 1", "--timeout", bad) == 2, bad


@pytest.mark.parametrize(
    ("name", "host"),
    [("bob\n", "%"), ("bob", "a\\"), ("bob", "a' IDENTIFIED BY 'x"), ("bob", "")],
)
def test_grant_reader_refuses_names_and_hosts_that_would_break_quoting(
    name: str, host: str
) -> None:
    """A reader name with a trailing newline, or a MariaDB host with a backslash or quote
    (which would end the quoted host early and leave the password outside any quotes) is a
    one-line ConfigError, before any statement is built."""
    from sync.errors import ConfigError

    with pytest.raises(ConfigError):
        readonly.grant_reader_sql(
            "mariadb", name, "test", ["tasks"], exists=False, password="s3cret", host=host
        )
