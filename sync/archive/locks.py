"""One writer per source, across processes and hosts: a PostgreSQL advisory lock, a MariaDB
GET_LOCK (named per database), or on SQLite a lease row renewed by a heartbeat. `hold` takes a
source's lock for a run; every write of the run checks it inside its own transaction
(`Database.guarded`), so nothing is written after the lock was lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy import exc as sa_exc

from sync.archive.engine import Database
from sync.archive.models import Lease
from sync.archive.urls import scrub
from sync.errors import DatabaseError, LockHeld

log = logging.getLogger("tasksync.store")

LEASE_SECONDS = 60.0


@contextlib.contextmanager
def hold(db: Database, source: str, now: datetime | None = None) -> Iterator[None]:
    """Hold the writer lock of a source for the duration of a run, or raise LockHeld."""
    lock = WriterLock(db, source)
    lock.acquire(now or datetime.now(UTC))
    db.held[source] = lock
    try:
        yield
    finally:
        db.held.pop(source, None)
        lock.release()


def lease_holder(db: Database, source: str) -> dict[str, Any] | None:
    """Who holds (or last held) the writer lock of a source."""
    q = select(Lease.holder, Lease.host, Lease.pid, Lease.acquired_at, Lease.expires_at)
    with db.engine.connect() as conn:
        row = conn.execute(q.where(Lease.source == source)).first()
    if row is None:
        return None
    return dict(zip(("holder", "host", "pid", "since", "expires_at"), row, strict=True))


class WriterLock:
    """One writer per source: advisory lock (PostgreSQL), GET_LOCK (MariaDB), lease (SQLite).

    The PostgreSQL and MariaDB locks live on a connection held for the run, so a crashed
    holder releases them as soon as its connection drops. SQLite has no such thing: a lease
    row with an expiry, extended by a heartbeat thread, is taken over once it has expired.
    """

    def __init__(self, db: Database, source: str) -> None:
        self.db = db
        self.source = source
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.key = int.from_bytes(
            hashlib.blake2b(f"tasksync:{source}".encode(), digest_size=8).digest(),
            "big",
            signed=True,
        )
        # GET_LOCK names are server-wide: two archives in different databases of one MariaDB
        # server must not block each other. (PostgreSQL advisory locks are per database.)
        scope = f"{db.url.database}:{source}".encode()
        self.name = "tasksync:" + hashlib.blake2b(scope, digest_size=16).hexdigest()
        self.conn: Connection | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.renewed = 0.0  # monotonic time of the last successful lease write (SQLite)
        self.lost = False
        self.backend: Any = None  # server session id of the lock's connection

    def _held(self) -> LockHeld:
        info = lease_holder(self.db, self.source)
        if info:
            who = (
                f"host {info['host']} pid {info['pid']} since {info['since']:%Y-%m-%d %H:%M:%S} UTC"
            )
        else:
            who = "another process"
        return LockHeld(f"source {self.source!r} is being synced by {who}; skipped")

    def acquire(self, now: datetime) -> None:
        db = self.db
        try:
            if db.dialect == "sqlite":
                self._take_lease(now, require_free=True)
                self._beat = threading.Thread(target=self._heartbeat, daemon=True)
                self._beat.start()
                return
            self.conn = db.engine.connect()
            if db.dialect == "postgresql":
                got = self.conn.exec_driver_sql(
                    "SELECT pg_try_advisory_lock(%s)", (self.key,)
                ).scalar()
            else:
                got = self.conn.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (self.name,)).scalar()
            if got:
                self.backend = self.conn.exec_driver_sql(
                    "SELECT pg_backend_pid()"
                    if db.dialect == "postgresql"
                    else "SELECT CONNECTION_ID()"
                ).scalar()
            self.conn.commit()
            if not got:
                self._drop_connection()
                raise self._held()
            self._take_lease(now, require_free=False)
        except sa_exc.SQLAlchemyError as exc:
            self._drop_connection()
            raise db.db_error(exc, "taking the writer lock") from None

    def _drop_connection(self) -> None:
        """Close the lock's session for real (never back to the pool), so the server releases
        a session lock even if unlocking failed."""
        if self.conn is not None:
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                self.conn.invalidate()
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                self.conn.close()
            self.conn = None

    def verify(self, conn: Connection) -> None:
        """Raise DatabaseError if the lock may have been lost (its session died, or the lease
        was taken over), so a run never writes without holding it. Checked from the writing
        transaction itself: if the check passes, the write is covered."""
        try:
            if self.db.dialect == "postgresql":
                held = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = %s AND classid = %s AND objid = %s AND objsubid = 1",
                    (self.backend, (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF),
                ).scalar()
                if held:
                    return
                raise DatabaseError(
                    f"source {self.source!r}: lost the writer lock (its database session ended)"
                )
            if self.db.dialect != "sqlite":
                if conn.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (self.name,)).scalar() == (
                    self.backend
                ):
                    return
                raise DatabaseError(
                    f"source {self.source!r}: lost the writer lock (its database session ended)"
                )
            if not self.lost and time.monotonic() - self.renewed < LEASE_SECONDS / 2:
                return  # renewed recently: nobody else can have taken an unexpired lease
            holder = conn.execute(select(Lease.holder).where(Lease.source == self.source)).scalar()
        except sa_exc.SQLAlchemyError as exc:
            raise self.db.db_error(exc, "checking the writer lock") from None
        if holder != self.holder:
            raise DatabaseError(f"source {self.source!r}: the writer lease was taken over")

    def _take_lease(self, now: datetime, require_free: bool) -> None:
        values = dict(
            source=self.source,
            holder=self.holder,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            acquired_at=now,
            heartbeat_at=now,
            expires_at=now + timedelta(seconds=LEASE_SECONDS),
        )
        conn = self.db.engine.connect().execution_options(sqlite_immediate=True)
        with conn, conn.begin():
            row = conn.execute(
                select(Lease.holder, Lease.expires_at, Lease.host, Lease.pid).where(
                    Lease.source == self.source
                )
            ).first()
            if (
                row is not None
                and require_free
                and row.expires_at > now
                and row.holder != self.holder
                and not _dead_here(row.host, row.pid)
            ):
                raise self._held()
            conn.execute(delete(Lease).where(Lease.source == self.source))
            conn.execute(insert(Lease).values(**values))
        self.renewed = time.monotonic()

    def _heartbeat(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 4):
            now = datetime.now(UTC)
            try:
                with self.db.write() as conn:
                    done = conn.execute(
                        update(Lease)
                        .where(Lease.source == self.source, Lease.holder == self.holder)
                        .values(heartbeat_at=now, expires_at=now + timedelta(seconds=LEASE_SECONDS))
                    )
                if done.rowcount == 1:
                    self.renewed = time.monotonic()
                else:
                    self.lost = True
            except sa_exc.SQLAlchemyError as exc:
                log.warning(
                    "source %s: lease heartbeat failed: %s",
                    self.source,
                    scrub(str(exc), self.db.url),
                )

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        with contextlib.suppress(sa_exc.SQLAlchemyError), self.db.write() as conn:
            conn.execute(
                delete(Lease).where(Lease.source == self.source, Lease.holder == self.holder)
            )
        if self.conn is not None:
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                if self.db.dialect == "postgresql":
                    self.conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (self.key,))
                else:
                    self.conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (self.name,))
                self.conn.commit()
            self._drop_connection()


def _dead_here(host: str, pid: int) -> bool:
    """A lease holder on this host whose process is gone (crashed, kill -9) holds nothing."""
    if host != socket.gethostname()[:255] or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
