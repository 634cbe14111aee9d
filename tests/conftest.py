"""Real-database fixtures. Every test gets its own freshly created database (PostgreSQL,
MariaDB) or file (SQLite), migrated by Alembic, named after this run so runs never meet.

On a machine without PostgreSQL or MariaDB those tests skip with the reason; under CI=true an
unreachable server fails them instead.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import stamina

from sync import schema
from sync.config import SourceSettings
from sync.schema import migrations_dir
from sync.simulator import Simulator, SimulatorServer
from sync.store import Store

RUN = f"tsync_{os.getpid()}_{uuid.uuid4().hex[:6]}"
COUNTER = itertools.count()
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_HOST = os.environ.get("TASKSYNC_TEST_PG_HOST", "127.0.0.1")
PG_USER = os.environ.get("TASKSYNC_TEST_PG_USER", "postgres")
MY_HOST = os.environ.get("TASKSYNC_TEST_MARIADB_HOST", "127.0.0.1")
MY_USER = os.environ.get("TASKSYNC_TEST_MARIADB_USER", "root")
_reachable: dict[str, str | None] = {}

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    """Retries happen, but without sleeping (stamina's testing mode)."""
    stamina.set_testing(True, attempts=6)
    yield
    stamina.set_testing(False)


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(
        host=PG_HOST, user=PG_USER, dbname="postgres", autocommit=True, connect_timeout=3
    )


def _my_admin() -> Any:
    import pymysql

    return pymysql.connect(
        host=MY_HOST, user=MY_USER, password="", connect_timeout=3, autocommit=True
    )


def _require(kind: str) -> None:
    if kind == "sqlite":
        return
    if kind not in _reachable:
        try:
            (_pg_admin if kind == "postgresql" else _my_admin)().close()
            _reachable[kind] = None
        except Exception as exc:
            _reachable[kind] = (
                f"{kind} at {PG_HOST if kind == 'postgresql' else MY_HOST} "
                f"unreachable: {str(exc).splitlines()[0]}"
            )
    reason = _reachable[kind]
    if reason:
        if CI:
            pytest.fail(f"CI=true requires {kind}: {reason}")
        pytest.skip(reason)


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A new, empty database of `kind`; dropped afterwards."""
    _require(kind)
    name = f"{RUN}_{next(COUNTER)}"
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / (name + '.db')}"
        return
    if kind == "postgresql":
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}/{name}"
        finally:
            with _pg_admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    conn = _my_admin()
    try:
        conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        yield f"mysql+pymysql://{MY_USER}@{MY_HOST}/{name}?charset=utf8mb4"
    finally:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=[BACKENDS[0], BACKENDS[1]])
def db_url_sp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty SQLite or PostgreSQL database (for the heavier property tests)."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=[BACKENDS[1], BACKENDS[2]])
def server_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty PostgreSQL or MariaDB database (connection-bound locks)."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    with fresh_database("sqlite", tmp_path) as url:
        yield url


def migrated(url: str) -> Store:
    store = Store(url)
    schema.upgrade(store)
    return store


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated archive on each backend."""
    s = migrated(db_url)
    yield s
    s.dispose()


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    s = migrated(sqlite_url)
    yield s
    s.dispose()


@pytest.fixture
def serve() -> Iterator[Callable[[Simulator], SimulatorServer]]:
    """Start simulators on loopback ports; all stopped at the end of the test."""
    servers: list[SimulatorServer] = []

    def start(sim: Simulator) -> SimulatorServer:
        server = SimulatorServer(sim).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


def source_for(url: str, **kw: Any) -> SourceSettings:
    """A source pointed at `url` with test-friendly limits."""
    opts: dict[str, Any] = {
        "name": "main",
        "base_url": url,
        "max_requests_per_second": 10_000,
        "timeout_s": 5,
    }
    opts.update(kw)
    return SourceSettings(**opts)


# pytest-alembic: the migrations under test, against each backend.
@pytest.fixture
def alembic_config() -> dict[str, Any]:
    return {"script_location": str(migrations_dir())}


@pytest.fixture
def alembic_engine(db_url: str) -> Iterator[Any]:
    s = Store(db_url)
    yield s.engine
    s.dispose()
