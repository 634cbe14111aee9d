"""Backups of the archive (`tasksync db backup`): an online, consistent copy of a SQLite file,
and for PostgreSQL and MariaDB the dump command to run.

The SQLite copy is made with SQLite's online backup API in a single step: one read
transaction, so the copy is the archive as of one moment, while the daemon goes on writing
(the archive is in WAL mode: readers never block writers). It is written beside its target
under a temporary name, checked (`PRAGMA quick_check`), turned into a self-contained file
(journal_mode DELETE) and only then linked to its name, which fails if that name exists: an
existing file is never overwritten and a half-written copy never carries the name.

This module never writes to the archive and never runs another program.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from sync.errors import ConfigError, DatabaseError


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    tasks: int
    seconds: float


def _refuse_existing(dest: Path) -> None:
    if dest.exists() or dest.is_symlink():
        raise ConfigError(f"{dest} exists; a backup never overwrites a file: choose a new name")


def backup_sqlite(source: Path, dest: Path) -> BackupResult:
    """Copy the SQLite archive at `source` to the new file `dest`, consistently, online."""
    t0 = time.monotonic()
    _refuse_existing(dest)
    if not dest.parent.is_dir():
        raise ConfigError(f"{dest.parent} is not a folder; create it first")
    if not source.is_file():
        raise DatabaseError(f"{source}: no such archive file")
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise DatabaseError(f"{source}: cannot open it: {exc}") from None
    try:
        try:
            src.execute("PRAGMA busy_timeout=30000")
            dst = sqlite3.connect(tmp)
        except sqlite3.Error as exc:
            raise DatabaseError(f"{tmp}: cannot create it: {exc}") from None
        try:
            src.backup(dst)  # pages=-1: every page in one step, one read transaction
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal
            check = dst.execute("PRAGMA quick_check").fetchone()[0]
            tasks = _count_tasks(dst)
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"backup of {source} failed: {exc}") from None
        finally:
            dst.close()
        if check != "ok":
            raise DatabaseError(f"backup of {source}: the copy failed its check: {check}")
        try:
            os.link(tmp, dest)  # fails if dest appeared meanwhile: never overwrite
        except FileExistsError:
            _refuse_existing(dest)
            raise
    finally:
        src.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return BackupResult(dest, dest.stat().st_size, tasks, time.monotonic() - t0)


def _count_tasks(conn: sqlite3.Connection) -> int:
    try:
        return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet: a copy all the same
        return 0


def dump_command(url: str, dest: str) -> list[str]:
    """The command that makes a consistent dump of a PostgreSQL or MariaDB archive, password
    left out (it comes from PGPASSWORD/~/.pgpass, or MYSQL_PWD/~/.my.cnf)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "postgresql":
        cmd = ["pg_dump", "--format=custom", f"--file={dest}"]
        if u.host:
            cmd.append(f"--host={u.host}")
        if u.port:
            cmd.append(f"--port={u.port}")
        if u.username:
            cmd.append(f"--username={u.username}")
        return [*cmd, f"--dbname={u.database}"]
    if backend in ("mysql", "mariadb"):
        cmd = ["mariadb-dump", "--single-transaction", "--routines", "--triggers"]
        if u.host:
            cmd.append(f"--host={u.host}")
        if u.port:
            cmd.append(f"--port={u.port}")
        if u.username:
            cmd.append(f"--user={u.username}")
        return [*cmd, f"--result-file={dest}", "--databases", str(u.database)]
    raise ConfigError(f"no backup method for a {backend} database")
