"""The command line: one clear line and the documented exit code for every bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sync.archive.models import Task
from sync.simulator import Faults, Simulator, SimulatorServer

from .helpers import ROOT, Run, count, tasksync, write_config


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param(
            '[[sources]]\nname = "a"\nbase_url = "http://x"\ncolour = 1\n',
            ["unknown key", "sources[0].colour"],
            id="unknown-key",
        ),
        pytest.param(
            '[[sources]]\nname = "a"\nbase_url = "http://x"\npage_size = "big"\n',
            ["sources[0].page_size", "integer"],
            id="wrong-type",
        ),
        pytest.param(
            '[[sources]]\nname = "a"\n', ["missing required key", "base_url"], id="missing-key"
        ),
        pytest.param("[database\n", ["not valid TOML"], id="bad-toml"),
        pytest.param(
            '[[sources]]\nname = "a"\nbase_url = "http://x"\npage_size = 500\n',
            ["page_size", "100"],
            id="out-of-range",
        ),
    ],
)
def test_bad_config_exits_2_with_one_line(
    run: Run, tmp_path: Path, text: str, words: list[str]
) -> None:
    """Unknown key, wrong type, missing key: exit 2, one line naming the key and the file."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    code, _out, err = run("--config", str(cfg), "config", "check")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(cfg) in lines[0], err
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in err


def test_missing_config_file_is_exit_2(run: Run) -> None:
    """A --config that does not exist is named."""
    code, _, err = run("--config", "nope.toml", "config", "check")
    assert code == 2 and "nope.toml" in err


def test_config_example_loads_and_check_redacts(run: Run, tmp_path: Path) -> None:
    """config.example.toml is valid; config check shows where the token is from, not it."""
    example = ROOT / "config.example.toml"
    code, out, err = run(
        "--config",
        str(example),
        "--db",
        "postgresql://u:hunter2@db/x",
        "config",
        "check",
        env={"TASKSYNC_TOKEN": "canary-token-123"},
    )
    assert code == 0, err
    assert "canary-token-123" not in out + err and "hunter2" not in out + err
    assert "***" in out and "TASKSYNC_TOKEN" in out


def test_config_check_missing_token_env_is_exit_2(run: Run, tmp_path: Path) -> None:
    """A token_env that is not set is a config error at check time."""
    cfg = write_config(tmp_path / "c.toml", "sqlite:///a.db", "http://x", token_env="NOPE_T")
    code, _, err = run("--config", str(cfg), "config", "check")
    assert code == 2 and "NOPE_T" in err


def test_db_flag_beats_env_beats_file(run: Run, tmp_path: Path) -> None:
    """--db > TASKSYNC_DATABASE_URL > config file."""
    cfg = write_config(tmp_path / "c.toml", "sqlite:///file.db", "http://x")
    _, out, _ = run(
        "--config", str(cfg), "config", "check", env={"TASKSYNC_DATABASE_URL": "sqlite:///env.db"}
    )
    assert "env.db" in out
    _, out, _ = run("--config", str(cfg), "--db", "sqlite:///flag.db", "config", "check")
    assert "flag.db" in out


def test_unreachable_server_exits_1_one_line(run: Run, tmp_path: Path) -> None:
    """Nothing listening: one line naming the URL, exit 1, and the run is recorded failed."""
    cfg = write_config(
        tmp_path / "c.toml", "sqlite:///a.db", "http://127.0.0.1:9", retry_attempts=2, timeout_s=2
    )
    assert run("--config", str(cfg), "db", "upgrade")[0] == 0
    code, _, err = run("--config", str(cfg), "backfill")
    assert code == 1
    assert "unreachable" in err and "127.0.0.1:9" in err and "Traceback" not in err
    code, out, _ = run("--config", str(cfg), "status")
    assert code == 0 and "failed" in out


def test_html_reply_exits_1_one_line(run: Run, tmp_path: Path) -> None:
    """A proxy's HTML page: exit 1, one line with the URL, status and content type."""
    sim = Simulator(10, faults=Faults(html=1.0))
    with SimulatorServer(sim) as server:
        cfg = write_config(tmp_path / "c.toml", "sqlite:///a.db", server.url)
        run("--config", str(cfg), "db", "upgrade")
        code, _, err = run("--config", str(cfg), "sync", "--sweep")
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert "text/html" in line and "200" in line and server.url in line and "not JSON" in line


def test_refused_token_exits_2_and_never_prints_it(run: Run, tmp_path: Path) -> None:
    """A wrong token: exit 2, 'refused the token', and the token itself nowhere."""
    sim = Simulator(10, token="right-token")
    with SimulatorServer(sim) as server:
        cfg = write_config(tmp_path / "c.toml", "sqlite:///a.db", server.url, token_env="MJ_TOKEN")
        run("--config", str(cfg), "db", "upgrade")
        code, out, err = run("--config", str(cfg), "backfill", env={"MJ_TOKEN": "wrong-canary"})
        assert code == 2 and "refused the token" in err
        assert "wrong-canary" not in out + err
        code, _, err = run("--config", str(cfg), "backfill", env={"MJ_TOKEN": "right-token"})
        assert code == 0, err


def test_backfill_before_upgrade_says_run_db_upgrade(run: Run, tmp_path: Path) -> None:
    """An unmigrated database: exit 1 and the fix, `tasksync db upgrade`."""
    cfg = write_config(tmp_path / "c.toml", "sqlite:///a.db", "http://127.0.0.1:9")
    code, _, err = run("--config", str(cfg), "backfill")
    assert code == 1 and "tasksync db upgrade" in err


def test_unreachable_database_exits_1(run: Run, tmp_path: Path) -> None:
    """A database nobody listens on: one line naming it, password hidden."""
    cfg = write_config(
        tmp_path / "c.toml",
        "postgresql+psycopg://u:s3cretpw@127.0.0.1:9/x?connect_timeout=2",
        "http://x",
    )
    code, _, err = run("--config", str(cfg), "backfill")
    assert code == 1 and "127.0.0.1:9" in err and "s3cretpw" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM tasks",
        "delete from tasks where 1=1",
        "SELECT 1; DELETE FROM tasks",
        "UPDATE tasks SET status = 'X'",
        "DROP TABLE tasks",
        "ATTACH DATABASE 'x.db' AS x",
        "PRAGMA query_only = OFF",
        "PRAGMA journal_mode = DELETE",
        "INSERT INTO sync_runs (source) VALUES ('x')",
        "/* sneaky */ DELETE FROM tasks",
        "WITH x AS (SELECT 1) DELETE FROM tasks",
    ],
)
def test_query_refuses_writes_on_sqlite(run: Run, tmp_path: Path, sql: str) -> None:
    """tasksync query refuses every write, deletes nothing, exits 2."""
    db = f"sqlite:///{tmp_path / 'a.db'}"
    with SimulatorServer(Simulator(30)) as server:
        cfg = write_config(tmp_path / "c.toml", db, server.url)
        run("--config", str(cfg), "db", "upgrade")
        assert run("--config", str(cfg), "backfill")[0] == 0
    code, _, err = run("--config", str(cfg), "query", sql)
    assert code == 2 and "refused" in err, err
    from sync.archive.store import Store

    assert count(Store(db), Task) == 30
    assert not (tmp_path / "x.db").exists()


def test_query_formats(run: Run, tmp_path: Path) -> None:
    """--format table, csv and json all render the same rows."""
    db = f"sqlite:///{tmp_path / 'a.db'}"
    run("--db", db, "db", "upgrade")
    q = "SELECT 1 AS one, 'é' AS two"
    assert "one  two" in run("--db", db, "query", q)[1]
    assert run("--db", db, "query", q, "--format", "csv")[1].splitlines() == ["one,two", "1,é"]
    assert '"two": "é"' in run("--db", db, "query", q, "--format", "json")[1]


MANY_ROWS = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) "
    "SELECT i, 'a row long enough to fill the pipe' AS t FROM n"
)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["query", MANY_ROWS], id="query-table"),
        pytest.param(["query", MANY_ROWS, "--format", "csv"], id="query-csv"),
        pytest.param(["query", MANY_ROWS, "--format", "json"], id="query-json"),
        pytest.param(["export"], id="export"),
    ],
)
def test_output_piped_into_head_ends_quietly(tmp_path: Path, args: list[str]) -> None:
    """`tasksync query|export … | head -1`: the reader leaving ends the command with exit 0,
    nothing on stderr (no traceback, no 'Exception ignored')."""
    db = tmp_path / "a.db"
    demo = tasksync("demo", "--path", str(db), "--tasks", "1000", cwd=tmp_path)
    assert demo.wait(timeout=120) == 0, demo.communicate()[1]
    proc = tasksync("--db", f"sqlite:///{db}", *args, cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read()
    assert first and proc.wait(timeout=60) == 0, err
    assert err == ""


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_report_to_a_reader_that_left_ends_quietly(tmp_path: Path, fmt: str) -> None:
    """`tasksync report | head -0`: the pipe is closed before the report is written; exit 0
    and nothing on stderr."""
    db = tmp_path / "a.db"
    demo = tasksync("demo", "--path", str(db), "--tasks", "300", cwd=tmp_path)
    assert demo.wait(timeout=120) == 0, demo.communicate()[1]
    proc = tasksync("--db", f"sqlite:///{db}", "report", "--format", fmt, cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    assert err == ""


def test_cli_subprocess_error_has_no_traceback(tmp_path: Path) -> None:
    """The installed entry point maps errors to exit codes without a traceback."""
    proc = tasksync("status", cwd=tmp_path, env={"TASKSYNC_CONFIG": str(tmp_path / "missing.toml")})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in err and "missing.toml" in err


def test_json_log_format_one_record_per_run(run: Run, tmp_path: Path) -> None:
    """--log-format json: every log line is a JSON object; the run line carries its counts."""
    import json

    with SimulatorServer(Simulator(150)) as server:
        cfg = write_config(tmp_path / "c.toml", f"sqlite:///{tmp_path / 'a.db'}", server.url)
        run("--config", str(cfg), "db", "upgrade")
        code, _, err = run("--config", str(cfg), "--log-format", "json", "sync")
    assert code == 0, err
    records = [json.loads(line) for line in err.strip().splitlines()]
    runs = [r for r in records if r["msg"].startswith("run ")]
    assert len(runs) == 1
    assert (runs[0]["source"], runs[0]["kind"], runs[0]["outcome"], runs[0]["inserted"]) == (
        "main",
        "sync",
        "ok",
        150,
    )


def test_several_sources_name_each_failing_source_once(run: Run, tmp_path: Path) -> None:
    """With two sources, each error line names its source once (not 'source a: source a:')."""
    cfg = tmp_path / "two.toml"
    db = f"sqlite:///{tmp_path / 'a.db'}"
    cfg.write_text(
        f'[database]\nurl = "{db}"\n'
        + "".join(
            f'\n[[sources]]\nname = "{n}"\nbase_url = "http://127.0.0.1:9"\n'
            "retry_attempts = 1\ntimeout_s = 1\n"
            for n in ("a", "b")
        )
    )
    assert run("--config", str(cfg), "db", "upgrade")[0] == 0
    code, _, err = run("--config", str(cfg), "sync")
    assert code == 1
    for name in ("a", "b"):
        lines = [ln for ln in err.splitlines() if f"source {name}:" in ln]
        assert lines and all(ln.count(f"source {name}") == 1 for ln in lines), err


@pytest.mark.parametrize(
    ("url", "code"),
    [("http://127.0.0.1:abc", 2), ("http://u:p@127.0.0.1:9", 2)],
    ids=["bad-port", "credentials"],
)
def test_bad_base_url_is_a_config_error(run: Run, tmp_path: Path, url: str, code: int) -> None:
    """A base_url with a bad port or credentials is exit 2 for every command, not exit 1."""
    cfg = write_config(tmp_path / "c.toml", "sqlite:///a.db", url)
    for args in (["config", "check"], ["backfill"], ["status"]):
        got, _, err = run("--config", str(cfg), *args)
        assert got == code and "base_url" in err and "Traceback" not in err, (args, err)


def test_unsupported_database_url_is_a_config_error(run: Run) -> None:
    """An unsupported database URL is exit 2 naming it, not an internal error."""
    for url in ("oracle://u@h/x", "mysql+mysqldb://u@h/x", "sqlite+foo:///x.db"):
        code, _, err = run("--db", url, "db", "upgrade")
        assert code == 2 and err.startswith("tasksync: error: --db: unsupported database"), err


def test_report_html_never_overwrites_the_archive(run: Run, tmp_path: Path) -> None:
    """`report --html ARCHIVE` is refused with exit 2 and the archive stays a database."""
    db = tmp_path / "a.db"
    assert run("--db", f"sqlite:///{db}", "db", "upgrade")[0] == 0
    code, _, err = run("--db", f"sqlite:///{db}", "report", "--html", str(db))
    assert code == 2 and "SQLite database" in err
    assert db.read_bytes()[:16] == b"SQLite format 3\x00"
    assert run("--db", f"sqlite:///{db}", "status", "--no-server")[0] == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(["query", "--timeout", "1e12", "SELECT 1"], "--timeout", id="timeout-huge"),
        pytest.param(["query", "--timeout", "nan", "SELECT 1"], "not a number", id="timeout-nan"),
        pytest.param(["query", ""], "refused", id="query-empty"),
        pytest.param(["query", "  -- only a comment"], "refused", id="query-comment"),
        pytest.param(["db", "upgrade", "nosuchrev"], "nosuchrev", id="upgrade-unknown-revision"),
        pytest.param(
            ["report", "--since", "0001-01-01", "--tz", "Asia/Tokyo"], "--since", id="since-edge"
        ),
        pytest.param(
            ["report", "--until", "9999-12-31T23:00:00", "--tz", "America/New_York"],
            "--until",
            id="until-edge",
        ),
        pytest.param(["demo", "--tasks", "-5"], "--tasks", id="demo-tasks"),
        pytest.param(["simulate", "--port", "99999"], "--port", id="simulate-port"),
        pytest.param(["simulate", "--arrivals", "nan"], "--arrivals", id="simulate-nan"),
        pytest.param(["--config", "", "status"], "--config", id="empty-config"),
        pytest.param(["--db", "", "status"], "--db", id="empty-db"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    run: Run, tmp_path: Path, args: list[str], words: str
) -> None:
    """Out-of-range, empty or unknown flag values: exit 2 and one line naming the flag,
    never an internal error."""
    db = f"sqlite:///{tmp_path / 'a.db'}"
    assert run("--db", db, "db", "upgrade")[0] == 0
    code, _, err = run(*args, env={"TASKSYNC_DATABASE_URL": db})
    assert code == 2 and words in err and "internal" not in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) <= 3  # click adds a usage hint


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_query_against_an_unreachable_server_database_is_one_line(run: Run, kind: str) -> None:
    """`query` on a database server nobody listens on: exit 1, the URL named, no password."""
    url = (
        "postgresql://u:s3cretpw@127.0.0.1:9/x?connect_timeout=2"
        if kind == "postgresql"
        else "mysql+pymysql://u:s3cretpw@127.0.0.1:9/x?connect_timeout=2"
    )
    code, _, err = run("--db", url, "query", "SELECT 1")
    assert code == 1 and "connecting failed" in err and "127.0.0.1:9" in err, err
    assert "s3cretpw" not in err and "internal" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_mistyped_sqlite_path_is_not_created(run: Run, tmp_path: Path) -> None:
    """Commands that read or sync an archive never create an empty SQLite file at a mistyped
    path (only `db upgrade` creates one); a folder given as the file is one line too."""
    cfg = write_config(tmp_path / "c.toml", f"sqlite:///{tmp_path / 'typo.db'}", "http://x")
    for args in (["status", "--no-server"], ["sync"], ["report"], ["export"]):
        code, _, err = run("--config", str(cfg), *args)
        assert code == 1 and "no such file" in err and "db upgrade" in err, (args, err)
        assert not (tmp_path / "typo.db").exists()
    code, _, err = run("--db", f"sqlite:///{tmp_path}", "query", "SELECT 1")
    assert code == 2 and "folder" in err and "internal" not in err, err


def test_query_json_keeps_repeated_columns_and_writes_valid_json(run: Run, tmp_path: Path) -> None:
    """JSON output: a repeated column name does not swallow the earlier value, and values
    JSON cannot hold (infinities, NaN) are strings, so the output always parses."""
    import json

    db = f"sqlite:///{tmp_path / 'a.db'}"
    run("--db", db, "db", "upgrade")
    sql = "SELECT 1 AS a, 2 AS a, 3 AS a_2, 1e999 AS x, -1e999 AS y, NULL AS z"
    code, out, err = run("--db", db, "query", sql, "--format", "json")
    assert code == 0, err
    assert json.loads(out) == [
        {"a": 1, "a_3": 2, "a_2": 3, "x": "Infinity", "y": "-Infinity", "z": None}
    ]


def test_demo_never_replaces_an_archive_or_another_file(run: Run, tmp_path: Path) -> None:
    """`demo --path` recreates an earlier demo's file, but refuses (exit 2, untouched) a real
    archive holding other sources' tasks, a non-SQLite file and a name ending in .html."""
    real = tmp_path / "archive.db"
    with SimulatorServer(Simulator(30)) as server:
        cfg = write_config(tmp_path / "c.toml", f"sqlite:///{real}", server.url)
        assert run("--config", str(cfg), "db", "upgrade")[0] == 0
        assert run("--config", str(cfg), "backfill")[0] == 0
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for path in (real, notes, tmp_path / "page.html"):
        code, _, err = run("demo", "--tasks", "10", "--path", str(path))
        assert code == 2 and "--path" in err, err
    from sync.archive.store import Store

    store = Store(f"sqlite:///{real}")
    assert count(store, Task) == 30
    store.dispose()
    assert notes.read_text() == "mine"
    demo = tmp_path / "demo.db"
    for _ in range(2):  # a demo's own file is replaced
        assert run("demo", "--tasks", "10", "--path", str(demo))[0] == 0


@pytest.mark.parametrize("api", ["plus", "novicezk"])
def test_demo_archives_the_simulator_and_answers_sensibly(
    run: Run, tmp_path: Path, api: str
) -> None:
    """The quick start: `tasksync demo` archives every task the simulator holds, syncs the
    new ones, writes its page and prints answers a newcomer can believe (no task that queued
    for weeks because the demo woke it up)."""
    code, out, err = run("demo", "--tasks", "2000", "--api", api)
    assert code == 0, err
    assert f"backfill ({api}): 2000 tasks" in out and out.count("sync:") == 3
    assert "Median queue and run time on" in out and "Status history of task" in out
    assert (tmp_path / "tasksync-demo.html").read_text().count("<svg") >= 4
    from sqlalchemy import text

    from sync.archive.store import Store

    store = Store(f"sqlite:///{tmp_path / 'tasksync-demo.db'}")
    with store.engine.connect() as conn:
        n, longest = conn.execute(text("SELECT count(*), max(queue_ms) FROM tasks")).one()
    store.dispose()
    assert n == 2025
    assert longest < 3_600_000, f"a demo task queued {longest / 3.6e6:.0f} hours"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@127.0.0.1:9/x?password=s3cretpw&connect_timeout=2",
        "mysql+pymysql://u@127.0.0.1:9/x?passwd=s3cretpw&connect_timeout=2",
    ],
)
def test_query_never_prints_a_password_in_the_url_query(run: Run, url: str) -> None:
    """`query` hides a password given as a URL parameter like every other command."""
    code, out, err = run("--db", url, "query", "SELECT 1")
    assert code == 1 and "connecting failed" in err, err
    assert "s3cretpw" not in out + err


@pytest.mark.parametrize(
    "args",
    [
        ["db", "current"],
        ["db", "check"],
        ["db", "downgrade", "base"],
        ["db", "grant-reader", "bob", "--print"],
    ],
)
def test_db_commands_never_create_a_sqlite_file(run: Run, tmp_path: Path, args: list[str]) -> None:
    code, _, err = run("--db", f"sqlite:///{tmp_path / 'typo.db'}", *args)
    assert code == 1 and "no such file" in err, err
    assert not (tmp_path / "typo.db").exists()


def test_downgrade_leaves_a_database_tasksync_never_made_alone(run: Run, tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE mine (x)")
    con.commit()
    code, _, err = run("--db", f"sqlite:///{other}", "db", "downgrade", "base")
    assert code == 2 and "no tasksync revision" in err, err
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    con.close()
    assert names == {"mine"}


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_ids_from_a_special_file_is_refused_at_once(run: Run, tmp_path: Path, special: str) -> None:
    """`--ids-from /dev/zero` or a FIFO: exit 2 at once, not a hang that fills memory."""
    import os

    path = special
    if special == "fifo":
        path = str(tmp_path / "f")
        os.mkfifo(path)
    cfg = write_config(tmp_path / "c.toml", f"sqlite:///{tmp_path / 'a.db'}", "http://x", api="ids")
    assert run("--config", str(cfg), "db", "upgrade")[0] == 0
    code, _, err = run("--config", str(cfg), "sync", "--ids-from", path)
    assert code == 2 and "not a regular file" in err, err


def test_ids_from_is_refused_where_it_would_be_ignored(run: Run, tmp_path: Path) -> None:
    """`--ids-from` on a server with a list, or with `--sweep`: exit 2, not silently unused."""
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\n")
    with SimulatorServer(Simulator(10)) as server:
        cfg = write_config(tmp_path / "c.toml", f"sqlite:///{tmp_path / 'a.db'}", server.url)
        assert run("--config", str(cfg), "db", "upgrade")[0] == 0
        code, _, err = run("--config", str(cfg), "sync", "--ids-from", str(ids))
        assert code == 2 and "--ids-from is for servers without a task list" in err, err
        code, _, err = run("--config", str(cfg), "backfill", "--ids-from", str(ids))
        assert code == 2 and "--ids-from" in err, err
    code, _, err = run("--config", str(cfg), "sync", "--sweep", "--ids-from", "nosuch.txt")
    assert code == 2 and "not with --sweep" in err, err


def test_output_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """`tasksync db current > /dev/full`: exit 1 and one line saying why, no traceback."""
    db = tmp_path / "a.db"
    assert tasksync("--db", f"sqlite:///{db}", "db", "upgrade", cwd=tmp_path).wait(60) == 0
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "sync", "--db", f"sqlite:///{db}", "db", "current"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
        )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == "tasksync: error: No space left on device"


def test_images_verify_says_what_is_wrong_with_the_folder(run: Run, tmp_path: Path) -> None:
    """`[images] dir` that is a file: exit 2 naming it, for verify and for the daemon."""
    cfg = write_config(
        tmp_path / "c.toml",
        f"sqlite:///{tmp_path / 'a.db'}",
        "http://127.0.0.1:9",
        extra='\n[images]\nenabled = true\ndir = "/dev/null"\n',
    )
    assert run("--config", str(cfg), "db", "upgrade")[0] == 0
    for args in (["images", "verify"], ["images", "fetch"], ["run"]):
        code, _, err = run("--config", str(cfg), *args)
        assert code == 2 and "/dev/null" in err and "internal" not in err, (args, err)
