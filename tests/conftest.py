"""Fixtures (the helpers they use are in helpers.py): a freshly created, migrated database on
each backend, simulators on loopback ports, tasksync run in-process, and no process left
behind by a test; and the coverage floor's one condition (below).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stamina

from sync.archive.schema import migrations_dir
from sync.archive.store import Store
from sync.cli import main
from sync.simulator import Simulator, SimulatorServer

from .helpers import BACKENDS, CI, LAUNCHED, Run, fresh_database, migrated, unreachable
from .offline.sitecustomize import install as stay_offline

stay_offline()  # no test reaches past loopback (tests/offline/sitecustomize.py)

NO_FLOOR = pytest.StashKey[str]()


def pytest_sessionstart(session: pytest.Session) -> None:
    """The coverage floor was measured with every database suite run. On a machine where
    PostgreSQL or MariaDB is unreachable (and CI is not set) their tests skip, so the floor
    is not applied there, and the summary says why; under CI=true it always is."""
    config = session.config
    cov = config.pluginmanager.getplugin("_cov")  # pytest-cov, when --cov is given
    if CI or cov is None or not getattr(cov.options, "cov_fail_under", None):
        return
    missing = [r for kind in ("postgresql", "mariadb") if (r := unreachable(kind))]
    if missing:
        cov.options.cov_fail_under = 0
        config.stash[NO_FLOOR] = "; ".join(missing)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if NO_FLOOR in config.stash:
        terminalreporter.write_line(
            f"coverage floor not applied: {config.stash[NO_FLOOR]} (their tests skipped)"
        )


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    """Retries happen, but without sleeping (stamina's testing mode)."""
    stamina.set_testing(True, attempts=6)
    yield
    stamina.set_testing(False)


@pytest.fixture(autouse=True)
def _reap_processes() -> Iterator[None]:
    """A failed test must not leave tasksync processes (daemons above all) behind."""
    yield
    while LAUNCHED:
        proc = LAUNCHED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


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


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Run:
    """Run `tasksync ARGS` in-process from tmp_path, with `env` added to the environment and
    no TASKSYNC_CONFIG or TASKSYNC_DATABASE_URL; return (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    for var in ("TASKSYNC_CONFIG", "TASKSYNC_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    root = logging.getLogger()
    # The CLI points the root logger at this test's captured stderr: put it back afterwards.
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)

    def go(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return go


# pytest-alembic: the migrations under test, against each backend.
@pytest.fixture
def alembic_config() -> dict[str, Any]:
    return {"script_location": str(migrations_dir())}


@pytest.fixture
def alembic_engine(db_url: str) -> Iterator[Any]:
    s = Store(db_url)
    yield s.engine
    s.dispose()
