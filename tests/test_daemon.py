"""`tasksync run` as a real process: scheduling, one writer per source, outages, metrics."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from sync.errors import LockHeld
from sync.models import SyncRun
from sync.simulator import Simulator, SimulatorServer
from sync.store import Store

from .conftest import fresh_database, migrated
from .helpers import TcpProxy, assert_archive_equals_truth

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent


def daemon_config(
    tmp_path: Path, url: str, db: str, name: str = "d.toml", extra: str = "", every: str = "1s"
) -> Path:
    path = tmp_path / name
    path.write_text(
        f'[database]\nurl = "{db}"\n\n[[sources]]\nname = "main"\nbase_url = "{url}"\n'
        f"max_requests_per_second = 200\nretry_attempts = 2\nretry_budget_s = 2\ntimeout_s = 2\n"
        f'\n[schedule]\nevery = "{every}"\nsweep_every = "1h"\nshutdown_timeout_s = 10\n{extra}'
    )
    return path


STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _reap_daemons() -> Iterator[None]:
    """A failed test must not leave daemons behind."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_daemon(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "sync", "--config", str(cfg), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cfg.parent,
        )
    STARTED.append(proc)
    return proc


def stop_daemon(proc: subprocess.Popen[bytes], bound: float = 15) -> float:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=bound + 5) == 0
    return time.monotonic() - t0


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def runs(store: Store) -> list[SyncRun]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(*SyncRun.__table__.c).order_by(SyncRun.id)).all())  # type: ignore[arg-type]


def test_daemon_keeps_archive_equal_to_truth(sqlite_url: str, tmp_path: Path) -> None:
    """On a 1 s interval the daemon follows arrivals and status changes; SIGTERM exits 0."""
    store = migrated(sqlite_url)
    sim = Simulator(800, arrivals_per_request=2, updates_per_request=3)
    with SimulatorServer(sim) as server:
        proc = start_daemon(daemon_config(tmp_path, server.url, sqlite_url), tmp_path / "d.log")
        wait_for(lambda: sum(r.outcome == "ok" for r in runs(store)) >= 4, 30, "four runs")
        sim.arrivals_per_request = sim.updates_per_request = 0
        done = len(runs(store))
        wait_for(lambda: sum(r.outcome == "ok" for r in runs(store)[done:]) >= 2, 30, "quiet run")
        assert stop_daemon(proc) < 10
    assert_archive_equals_truth(store, sim)
    log = (tmp_path / "d.log").read_text()
    assert "run source=main kind=sync outcome=ok" in log and "Traceback" not in log


@pytest.mark.parametrize(
    "kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
def test_two_daemons_one_writer_per_source(kind: str, tmp_path: Path) -> None:
    """Two daemons on one database: runs of a source never overlap, and both did work."""
    with fresh_database(kind, tmp_path) as url:
        store = migrated(url)
        sim = Simulator(3_000, arrivals_per_request=1, updates_per_request=1)
        with SimulatorServer(sim) as server:
            procs = [
                start_daemon(
                    daemon_config(tmp_path, server.url, url, f"d{i}.toml", every="1s"),
                    tmp_path / f"d{i}.log",
                )
                for i in range(2)
            ]
            wait_for(
                lambda: len({r.pid for r in runs(store)}) == 2 and len(runs(store)) >= 8,
                60,
                "both daemons to run",
            )
            # Their own races are frequent but not certain: hold the lock across a few ticks,
            # so each daemon meets a holder at least once and says who it is.
            wait_for(lambda: _hold_lock(store, 2.5), 30, "a turn at the lock")
            for p in procs:
                stop_daemon(p)
        done = [r for r in runs(store) if r.finished_at is not None]
        assert len({r.pid for r in done}) == 2
        for a, b in itertools.pairwise(sorted(done, key=lambda r: r.started_at)):
            assert b.started_at >= a.finished_at, (a, b)
        for i in range(2):  # a daemon that loses a race says who won
            assert "is being synced by host" in (tmp_path / f"d{i}.log").read_text()
        store.dispose()


def _hold_lock(store: Store, seconds: float) -> bool:
    """Hold the source's writer lock for `seconds`; False if a daemon has it right now."""
    try:
        with store.lock("main"):
            time.sleep(seconds)
    except LockHeld:
        time.sleep(0.05)
        return False
    return True


def test_daemon_survives_database_and_server_outages(tmp_path: Path) -> None:
    """Database cut and restored, server failing for a while: still running, then caught up."""
    with fresh_database("postgresql", tmp_path) as url:
        store = migrated(url)
        proxy = TcpProxy(5432).start()
        via_proxy = url.replace("@127.0.0.1/", f"@127.0.0.1:{proxy.port}/") + "?connect_timeout=2"
        sim = Simulator(500, arrivals_per_request=1)
        with SimulatorServer(sim) as server:
            proc = start_daemon(daemon_config(tmp_path, server.url, via_proxy), tmp_path / "d.log")
            wait_for(lambda: sum(r.outcome == "ok" for r in runs(store)) >= 2, 30, "first runs")
            proxy.stop()  # the database goes away
            time.sleep(4)
            assert proc.poll() is None
            proxy.start()  # and comes back on the same port
            wait_for(lambda: runs(store)[-1].outcome == "ok", 30, "recovery after the database")
            sim.faults.server_error = 1.0  # the server fails for a while
            time.sleep(15)
            assert proc.poll() is None
            assert any(r.outcome == "failed" and "502" in (r.error or "") for r in runs(store))
            sim.faults.server_error = 0.0
            sim.arrivals_per_request = 0
            n = len(runs(store))
            wait_for(lambda: any(r.outcome == "ok" for r in runs(store)[n:]), 30, "recovery")
            stop_daemon(proc)
        log = (tmp_path / "d.log").read_text()
        assert "failed: database" in log and "Traceback" not in log
        assert_archive_equals_truth(store, sim)
        proxy.stop()
        store.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_endpoint_counters_move(sqlite_url: str, tmp_path: Path) -> None:
    """`curl` of /metrics shows run counters and the last success time moving."""
    migrated(sqlite_url)
    port = free_port()
    sim = Simulator(300, arrivals_per_request=1)
    with SimulatorServer(sim) as server:
        cfg = daemon_config(tmp_path, server.url, sqlite_url, extra=f"\n[metrics]\nport = {port}\n")
        proc = start_daemon(cfg, tmp_path / "d.log")

        def ok_runs() -> float:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return -1
            for line in text.splitlines():
                if line.startswith('tasksync_runs_total{kind="sync",outcome="ok",source="main"}'):
                    return float(line.split()[-1])
            return 0

        wait_for(lambda: ok_runs() >= 1, 30, "a first counted run")
        first = ok_runs()
        wait_for(lambda: ok_runs() > first, 30, "the counter to move")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        assert "tasksync_last_success_timestamp_seconds" in text
        assert 'tasksync_tasks_archived{source="main"}' in text
        stop_daemon(proc)


def test_sigterm_during_long_run_exits_0_within_bound(sqlite_url: str, tmp_path: Path) -> None:
    """SIGTERM mid-walk: the run finishes its page, is recorded interrupted, exit 0 quickly."""
    store = migrated(sqlite_url)
    sim = Simulator(20_000)
    with SimulatorServer(sim) as server:
        cfg = daemon_config(tmp_path, server.url, sqlite_url, every="1h")
        cfg.write_text(
            cfg.read_text().replace("max_requests_per_second = 200", "max_requests_per_second = 10")
        )
        proc = start_daemon(cfg, tmp_path / "d.log")
        wait_for(lambda: sim.query_requests >= 3, 30, "the first sync to be under way")
        assert stop_daemon(proc) < 5
    assert runs(store)[-1].outcome == "interrupted"
