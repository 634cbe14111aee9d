"""One writer per source: database locks on every backend, and how a dead holder lets go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from sync.archive import schema
from sync.archive.locks import WriterLock
from sync.archive.models import Lease
from sync.archive.store import Store
from sync.errors import LockHeld

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def put_lease(store: Store, holder: str, host: str, pid: int, expires_at: datetime) -> None:
    """A lease row as another process would have left it."""
    with store.engine.begin() as conn:
        conn.execute(
            insert(Lease).values(
                source="main",
                holder=holder,
                host=host,
                pid=pid,
                acquired_at=NOW,
                heartbeat_at=NOW,
                expires_at=expires_at,
            )
        )


def test_lock_excludes_a_second_writer_and_names_the_holder(store: Store, db_url: str) -> None:
    """While one handle holds a source, another gets LockHeld naming host, pid and since."""
    other = Store(db_url)
    with store.lock("main"):
        with pytest.raises(LockHeld, match=r"by host .+ pid \d+ since"), other.lock("main"):
            pass
        with other.lock("second-source"):  # other sources are independent
            pass
    with other.lock("main"):  # released: free again
        pass
    other.dispose()


def test_connection_lock_released_when_holder_connection_dies(server_db_url: str) -> None:
    """PostgreSQL/MariaDB: a holder whose connection drops (crash) frees the lock at once."""
    store = Store(server_db_url)
    schema.upgrade(store)
    lock = WriterLock(store, "main")
    lock.acquire(NOW)
    assert lock.conn is not None
    lock.conn.invalidate()  # what a crashed process's connection amounts to
    other = Store(server_db_url)
    with other.lock("main"):
        pass
    other.dispose()
    store.dispose()


def test_sqlite_expired_lease_is_taken_over(sqlite_store: Store) -> None:
    """A lease not renewed (its holder died elsewhere) is taken over once it expires."""
    put_lease(
        sqlite_store,
        holder="elsewhere:1:x",
        host="elsewhere",
        pid=1,
        expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    with sqlite_store.lock("main"):
        pass


def test_sqlite_live_lease_elsewhere_blocks(sqlite_store: Store) -> None:
    """A lease held from another host and not expired blocks, naming that host."""
    put_lease(
        sqlite_store,
        holder="h2:42:x",
        host="h2",
        pid=42,
        expires_at=datetime.now(UTC) + timedelta(minutes=1),
    )
    with pytest.raises(LockHeld, match="host h2 pid 42"), sqlite_store.lock("main"):
        pass


def test_sqlite_lease_of_dead_local_process_is_taken_over(sqlite_store: Store) -> None:
    """On the same host, a lease whose process no longer exists (kill -9) is free at once."""
    import socket
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    put_lease(
        sqlite_store,
        holder="dead",
        host=socket.gethostname(),
        pid=proc.pid,
        expires_at=datetime.now(UTC) + timedelta(minutes=1),
    )
    with sqlite_store.lock("main"):
        pass
