"""Database connections: an engine with each dialect's settings (its URL normalised by
`sync.archive.urls`), the write transaction, one-line errors without passwords, and SQLite's
background WAL checkpointer.

`Database` is what every part that talks to the archive holds (the store, the schema
operations, the writer locks); it knows nothing of tasks.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import orjson
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc

from sync.archive.urls import normalize_url, redacted_url, scrub
from sync.errors import ConfigError, DatabaseError

log = logging.getLogger("tasksync.store")

WAL_BACKSTOP_PAGES = 16384  # auto-checkpoint only if the background checkpointer falls behind
WAL_SIZE_LIMIT = 64 << 20  # bytes the SQLite WAL file is cut back to after a checkpoint


def _json_dumps(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()


class Guard(Protocol):
    """A writer lock a run holds on a source (`sync.archive.locks.WriterLock`)."""

    def verify(self, conn: Connection) -> None:
        """Raise unless the lock is still held, inside `conn`'s transaction."""


class Database:
    """A handle on one archive database: its engine, write transactions, errors, and the
    writer locks this process holds on its sources (`sync.archive.locks`)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        self.dialect = self.url.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "json_serializer": _json_dumps}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
            raise ConfigError(f"database URL {self.display_url}: {exc}") from None
        if self.dialect == "sqlite":
            _sqlite_pragmas(self.engine)
        elif self.dialect == "postgresql":
            _pg_async_commit(self.engine)
        database = self.url.database
        self.wal = (
            WalCheckpointer(database)
            if self.dialect == "sqlite" and database and database != ":memory:"
            else None
        )
        self.held: dict[str, Guard] = {}  # sync.archive.locks fills it

    @property
    def display_url(self) -> str:
        return redacted_url(self.url.render_as_string(hide_password=False))

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction. On SQLite it starts with BEGIN IMMEDIATE: a deferred one that
        reads first and then writes fails at once ("database is locked", no busy wait) when
        another connection wrote in between; taking the write lock up front waits instead."""
        with self.engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
            yield conn
        if self.wal is not None:
            self.wal.poke()

    @contextlib.contextmanager
    def guarded(self, source: str) -> Iterator[Connection]:
        """A write transaction for a source's rows that first checks, inside it, that this
        run still holds the source's writer lock (when it holds one): every write of a run
        goes through here, so none happens after the lock was lost."""
        with self.write() as conn:
            if source in self.held:
                self.held[source].verify(conn)
            yield conn

    def db_error(self, exc: BaseException, doing: str) -> DatabaseError:
        """A one-line DatabaseError for `exc` that names the URL and never the password."""
        orig = getattr(exc, "orig", None) or exc
        return DatabaseError(
            f"database {self.display_url}: {doing} failed: {scrub(str(orig), self.url)}"
        )

    def ping(self) -> None:
        """Connect once, or raise a one-line DatabaseError."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa_exc.SQLAlchemyError as exc:
            raise self.db_error(exc, "connecting") from None
        except (ValueError, TypeError, LookupError, AttributeError) as exc:
            # A driver choking on a URL option (MySQL ?charset=bogus, say) before it connects.
            raise DatabaseError(
                f"database {self.display_url}: connecting failed: the URL's options were "
                f"refused ({type(exc).__name__}: {scrub(str(exc), self.url)})"
            ) from None

    def warnings(self) -> list[str]:
        """Settings of the database server that will hurt a long-running archive."""
        if self.dialect != "postgresql":
            return []
        with self.engine.connect() as conn:
            autovacuum = conn.exec_driver_sql("SHOW autovacuum").scalar()
        if autovacuum == "off":
            return [
                f"database {self.display_url}: autovacuum is off, so rows tasksync updates "
                "leave dead versions behind and the archive and its syncs grow slower over "
                "weeks; turn it on, or VACUUM ANALYZE the archive regularly"
            ]
        return []

    def dispose(self) -> None:
        if self.wal is not None:
            self.wal.stop()
        self.engine.dispose()


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL and a busy timeout, so readers never block the writer for long; explicit BEGIN."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # Task rows are about 2 KB: 8 KiB pages hold them without overflow chains and, unlike
        # 16 KiB ones, without leaving a quarter of each page empty (README: Performance).
        # Takes effect only on a new, empty file; `tasksync db vacuum` moves an older one.
        cur.execute("PRAGMA page_size=8192")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        # Commits leave the log to WalCheckpointer's thread; this is only a backstop.
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
        # A backfill grows the WAL to hundreds of MB; without a limit it never shrinks.
        cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class WalCheckpointer:
    """Copies SQLite's write-ahead log into the database file on a background thread.

    A commit that crosses the auto-checkpoint mark otherwise does that copy, and its fsync, on
    the writer's own time: about half of what a page cost to save. Here a passive checkpoint
    (which never blocks readers or writers) runs at most every `interval` seconds after a
    write, and sqlite releases the GIL while it works, so it overlaps with the next page.
    Durability is unchanged: `synchronous=NORMAL` still syncs the log before the file.
    """

    def __init__(self, path: str, interval: float = 0.5) -> None:
        self.path = path
        self.interval = interval
        self.wake = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def poke(self) -> None:
        with self.lock:
            if self.thread is None and not self.stopping:
                self.thread = threading.Thread(target=self._run, name="tasksync-wal", daemon=True)
                self.thread.start()
        self.wake.set()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        except sqlite3.Error as exc:
            log.debug("WAL checkpointer not started: %s", exc)
            return
        try:
            while True:
                self.wake.wait()
                if self.stopping:
                    return
                self.wake.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy or gone: the next poke tries again
                    log.debug("WAL checkpoint skipped: %s", exc)
                time.sleep(self.interval)
        finally:
            conn.close()

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            thread, self.thread = self.thread, None
        self.wake.set()
        if thread is not None:
            thread.join(timeout=self.interval + 5)


def _pg_async_commit(engine: Engine) -> None:
    """synchronous_commit = off: a commit returns before its WAL reaches disk. Atomicity is
    unchanged (rows, events and checkpoint still commit together); a PostgreSQL crash can lose
    the last fraction of a second of commits, which the next run simply fetches again."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
        dbapi_conn.commit()
