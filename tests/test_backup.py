"""`tasksync db backup`: a SQLite copy taken while another process writes is consistent (each
copy passes integrity_check and holds whole pages of the backfill, with their events); an
existing file is never overwritten; for PostgreSQL and MariaDB the printed dump command really
dumps, and the dump restores to the same rows."""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sync.archive.models import Task
from sync.archive.store import Store
from sync.jobs import pipeline
from sync.server.client import connect
from sync.simulator import Simulator, SimulatorServer

from .helpers import (
    CI,
    MY_HOST,
    MY_USER,
    PG_HOST,
    PG_USER,
    Run,
    migrated,
    sim_transport,
    source_for,
    tasksync,
    write_config,
)

LINE = re.compile(r"^(?P<path>.+): (?P<tasks>[\d,]+) tasks, [\d,.]+ MB, checked, in [\d.]+s\n$")


def counts(path: Path) -> tuple[str, int, int]:
    """integrity_check, tasks, and 'created' events of a SQLite file (opened read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
        created = conn.execute("SELECT count(*) FROM task_events WHERE kind = 'created'")
        return check, tasks, created.fetchone()[0]
    finally:
        conn.close()


def test_backup_sqlite_is_consistent_while_a_backfill_writes(
    run: Run,
    tmp_path: Path,
    sqlite_url: str,
    serve: Callable[[Simulator], SimulatorServer],
) -> None:
    """Copies taken while `tasksync backfill` (another process) writes page after page each
    pass integrity_check and hold whole pages (a multiple of 100 tasks) with exactly one
    'created' event per task; the copy after it ends equals the archive."""
    total = 20_000
    server = serve(Simulator(total, seed=11))
    archive = Path(sqlite_url.removeprefix("sqlite:///"))
    migrated(sqlite_url).dispose()
    cfg = write_config(tmp_path / "c.toml", sqlite_url, server.url, concurrency=1)
    writer = tasksync("--config", str(cfg), "backfill", cwd=tmp_path)

    def live() -> int:
        return counts(archive)[1]

    copies: list[Path] = []
    seen = 0
    while writer.poll() is None:
        now = live()
        if now == seen:
            continue  # a copy only when the archive has grown: each one a new moment
        seen = now
        dest = tmp_path / f"copy{len(copies)}.db"
        code, out, err = run("--db", sqlite_url, "db", "backup", str(dest))
        assert (code, err) == (0, "")
        assert LINE.match(out), out
        copies.append(dest)
    assert writer.wait() == 0, writer.stderr.read() if writer.stderr else ""
    during = [c for c in copies if 0 < counts(c)[1] < total]
    assert len(during) >= 2, f"only {len(during)} copies taken while the backfill wrote"
    for copy in copies:
        check, tasks, created = counts(copy)
        assert (check, tasks % 100, created) == ("ok", 0, tasks), copy
    final = tmp_path / "final.db"
    code, out, _ = run("--db", sqlite_url, "db", "backup", str(final))
    assert code == 0
    assert out == f"{final}: {total:,} tasks, " + out.split(" tasks, ", 1)[1]
    assert counts(final) == ("ok", total, total) == counts(archive)
    conn = sqlite3.connect(final)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file, no -wal
    conn.close()
    assert sorted(p.name for p in tmp_path.glob(".*partial*")) == []


def test_backup_sqlite_never_overwrites(run: Run, tmp_path: Path, sqlite_url: str) -> None:
    """An existing PATH (a file or a dangling link) is refused with exit 2 and left as it was."""
    migrated(sqlite_url).dispose()
    dest = tmp_path / "keep.db"
    dest.write_bytes(b"precious")
    code, out, err = run("--db", sqlite_url, "db", "backup", str(dest))
    assert (code, out) == (2, "")
    assert err == (
        f"tasksync: error: {dest} exists; a backup never overwrites a file: choose a new name\n"
    )
    assert dest.read_bytes() == b"precious"
    link = tmp_path / "link.db"
    link.symlink_to(tmp_path / "nowhere.db")
    code, _, err = run("--db", sqlite_url, "db", "backup", str(link))
    assert code == 2
    assert "exists; a backup never overwrites" in err
    assert not (tmp_path / "nowhere.db").exists()


@pytest.mark.parametrize(
    ("make_args", "code", "message"),
    [
        (
            lambda url, tmp: ["--db", url, "db", "backup", str(tmp / "no" / "b.db")],
            2,
            "{tmp}/no is not a folder; create it first",
        ),
        (
            lambda url, tmp: ["--db", f"sqlite:///{tmp}/missing.db", "db", "backup", "b.db"],
            1,
            "database sqlite:///{tmp}/missing.db: no such file; `tasksync db upgrade` creates it",
        ),
    ],
    ids=["no-folder", "no-archive"],
)
def test_backup_sqlite_errors_are_one_line(
    run: Run,
    tmp_path: Path,
    sqlite_url: str,
    make_args: Callable[[str, Path], list[str]],
    code: int,
    message: str,
) -> None:
    """A missing target folder (exit 2) or archive (exit 1) is one line, and nothing is made."""
    migrated(sqlite_url).dispose()
    before = sorted(tmp_path.iterdir())
    got = run(*make_args(sqlite_url, tmp_path))
    assert got == (code, "", f"tasksync: error: {message.format(tmp=tmp_path)}\n")
    assert sorted(tmp_path.iterdir()) == before


def _need(tool: str) -> None:
    import shutil

    if shutil.which(tool) is None:
        if CI:
            pytest.fail(f"CI=true: {tool} is not installed")
        pytest.skip(f"{tool} is not installed")


def test_backup_server_database_prints_a_dump_command_that_restores(
    run: Run, tmp_path: Path, server_db_url: str
) -> None:
    """PostgreSQL/MariaDB: exit 2 with the dump command (no password); running it dumps the
    archive, and after the database is dropped the dump restores the same rows."""
    store = migrated(server_db_url)
    src = source_for("http://sim.test")
    pipeline.backfill(store, connect(src, transport=sim_transport(Simulator(700, seed=2))), src)
    store.dispose()
    with_password = server_db_url.replace("@", ":s3cret-pw@", 1)
    dump = tmp_path / "archive.dump"
    code, out, err = run("--db", with_password, "db", "backup", str(dump))
    assert code == 2
    assert "s3cret-pw" not in out + err
    assert err.startswith("tasksync: error: a ") and "is backed up with its own dump tool" in err
    cmd = shlex.split(out)
    _need(cmd[0])
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    assert dump.stat().st_size > 10_000
    name = Store(server_db_url).url.database
    if cmd[0] == "pg_dump":
        _need("pg_restore")
        import psycopg

        with psycopg.connect(host=PG_HOST, user=PG_USER, dbname="postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        restore = ["pg_restore", "--create", f"--host={PG_HOST}", f"--username={PG_USER}"]
        subprocess.run(
            [*restore, "--dbname=postgres", str(dump)], check=True, capture_output=True, timeout=120
        )
    else:
        _need("mariadb")
        import pymysql

        conn = pymysql.connect(host=MY_HOST, user=MY_USER, password="", autocommit=True)
        conn.cursor().execute(f"DROP DATABASE `{name}`")
        conn.close()
        with dump.open("rb") as f:
            subprocess.run(
                ["mariadb", f"--host={MY_HOST}", f"--user={MY_USER}"],
                stdin=f,
                check=True,
                capture_output=True,
                timeout=120,
            )
    restored = Store(server_db_url)
    try:
        with restored.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Task)).scalar_one() == 700
    finally:
        restored.dispose()
