"""`tasksync run` as a real process: scheduling, one writer per source, outages, metrics."""

from __future__ import annotations

import itertools
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from sync.archive.models import SyncRun
from sync.archive.store import Store
from sync.errors import LockHeld
from sync.simulator import Faults, Simulator, SimulatorServer

from .helpers import (
    TcpProxy,
    assert_archive_equals_truth,
    daemon_config,
    fresh_database,
    migrated,
    stop_daemon,
    tasksync,
    wait_for,
)

pytestmark = pytest.mark.slow


def runs(store: Store) -> list[SyncRun]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(*SyncRun.__table__.c).order_by(SyncRun.id)).all())  # type: ignore[arg-type]


def test_daemon_keeps_archive_equal_to_truth(sqlite_url: str, tmp_path: Path) -> None:
    """On a 1 s interval the daemon follows arrivals and status changes; SIGTERM exits 0."""
    store = migrated(sqlite_url)
    sim = Simulator(800, arrivals_per_request=2, updates_per_request=3)
    with SimulatorServer(sim) as server:
        cfg = daemon_config(tmp_path / "d.toml", sqlite_url, server.url)
        proc = tasksync("--config", str(cfg), "run", cwd=tmp_path, log=tmp_path / "d.log")
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
                tasksync(
                    "--config",
                    str(daemon_config(tmp_path / f"d{i}.toml", url, server.url, every="1s")),
                    "run",
                    cwd=tmp_path,
                    log=tmp_path / f"d{i}.log",
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
            cfg = daemon_config(tmp_path / "d.toml", via_proxy, server.url)
            proc = tasksync("--config", str(cfg), "run", cwd=tmp_path, log=tmp_path / "d.log")
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
        cfg = daemon_config(
            tmp_path / "d.toml", sqlite_url, server.url, extra=f"\n[metrics]\nport = {port}\n"
        )
        proc = tasksync("--config", str(cfg), "run", cwd=tmp_path, log=tmp_path / "d.log")

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
        cfg = daemon_config(
            tmp_path / "d.toml", sqlite_url, server.url, every="1h", max_requests_per_second=10
        )
        proc = tasksync("--config", str(cfg), "run", cwd=tmp_path, log=tmp_path / "d.log")
        wait_for(lambda: sim.query_requests >= 3, 30, "the first sync to be under way")
        assert stop_daemon(proc) < 5
    assert runs(store)[-1].outcome == "interrupted"


def test_turns_run_a_due_sweep_after_the_current_run_and_say_overlaps_once(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """In one daemon, a sweep that falls due while a sync of its source runs is started as
    soon as that sync ends (its delay measured), never skipped; sync ticks that meet a busy
    source are counted and logged once."""
    import logging
    import threading

    from sync.config import Settings, SourceSettings
    from sync.jobs.scheduler import Daemon

    store = migrated(sqlite_url)
    src = SourceSettings(name="main", base_url="http://127.0.0.1:9")
    daemon = Daemon(Settings(sources=[src]), store)
    ran: list[tuple[str, str]] = []
    release = threading.Event()

    def fake_run(s: SourceSettings, kind: str) -> None:
        ran.append((threading.current_thread().name, kind))
        if kind == "sync" and len(ran) == 1:
            release.wait(5)

    daemon._run = fake_run  # type: ignore[method-assign]
    first = threading.Thread(target=daemon._job, args=(src, "sync"), name="first")
    first.start()
    wait_for(lambda: len(ran) == 1, 5, "the first sync to start")
    with caplog.at_level(logging.INFO, logger="tasksync"):
        daemon._job(src, "sweep")  # falls due while the sync runs: returns at once
        for _ in range(3):
            daemon._job(src, "sync")  # overlapping ticks
        assert ran == [("first", "sync")]
        time.sleep(1.1)
        release.set()
        first.join(5)
    assert ran == [("first", "sync"), ("first", "sweep")]
    said = [r.getMessage() for r in caplog.records if "tick came while" in r.getMessage()]
    assert len(said) == 1
    text = daemon.metrics.registry
    assert (
        text.get_sample_value("tasksync_ticks_overlapped_total", {"source": "main", "kind": "sync"})
        == 3
    )
    assert (
        text.get_sample_value(
            "tasksync_run_delay_seconds_count", {"source": "main", "kind": "sweep"}
        )
        == 1
    )
    assert (
        text.get_sample_value("tasksync_run_delay_seconds_sum", {"source": "main", "kind": "sweep"})
        or 0
    ) >= 1.0
    daemon._job(src, "sync")  # the source is free again: a plain sync
    assert ran[-1][1] == "sync"
    store.dispose()


def test_daemon_with_syncs_longer_than_their_interval_runs_every_sweep(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Syncs that take longer than the 1 s interval run back to back, yet every sweep that
    falls due runs (none skipped for the daemon's own lock); a second daemon and a manual sync
    on the same database still skip with the holder named (exit 3)."""
    store = migrated(sqlite_url)
    # Pages take 0.6 s: a sync (two pages) outlasts its 1 s interval, a sweep takes ~2.5 s.
    sim = Simulator(350, arrivals_per_request=0.5, faults=Faults(slow=1.0, slow_s=0.6))
    with SimulatorServer(sim) as server:
        cfg = daemon_config(tmp_path / "d.toml", sqlite_url, server.url, sweep_every="4s")
        proc = tasksync("--config", str(cfg), "run", cwd=tmp_path, log=tmp_path / "d.log")
        wait_for(lambda: any(r.kind == "sweep" for r in runs(store)), 30, "a first sweep")
        time.sleep(20)  # five more sweeps fall due, while syncs run back to back
        window_end = datetime.now(UTC)
        mine = [r for r in runs(store) if r.pid == proc.pid]
        other = tasksync("--config", str(cfg), "run", cwd=tmp_path, log=tmp_path / "other.log")
        manual: list[tuple[int, str]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(code == 3 for code, _ in manual):
            got = tasksync("--config", str(cfg), "sync", cwd=tmp_path)
            _, err = got.communicate(timeout=60)
            manual.append((got.returncode, err))
        wait_for(
            lambda: "is being synced by host" in (tmp_path / "other.log").read_text(),
            30,
            "the second daemon to meet the lock",
        )
        stop_daemon(other)
        stop_daemon(proc)
    log = (tmp_path / "d.log").read_text()
    sweeps = [r.started_at for r in mine if r.kind == "sweep"]
    syncs = [r for r in mine if r.kind == "sync" and r.outcome == "ok"]
    # A sweep falls due every 4 s (+ up to 2 s of jitter); at worst it waits for a sync
    # (~1.5 s) and the sweep before it (~2.5 s): no gap between sweeps may be longer.
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise([*sweeps, window_end])]
    assert len(sweeps) >= 4 and max(gaps) < 11, gaps
    assert syncs and min(r.duration_s or 0 for r in syncs) > 1.0  # longer than the interval
    assert f"pid {proc.pid} since" not in log  # never skipped for its own lock
    assert log.count("tick came while") <= 2  # once per kind at most
    assert "maximum number of running instances" not in log
    assert any(code == 3 and "is being synced by host" in err for code, err in manual)
    done = sorted((r for r in runs(store) if r.finished_at), key=lambda r: r.started_at)
    for a, b in itertools.pairwise(done):
        assert b.started_at >= a.finished_at, (a, b)


def test_the_archived_gauge_does_not_count_the_archive_on_every_sync(
    sqlite_url: str, serve: Any
) -> None:
    """`tasksync_tasks_archived` stays exact while a sync no longer pays for counting the whole
    archive: counted at the first run and after sweeps, carried forward by what syncs insert."""
    from sync.config import Settings, SourceSettings
    from sync.jobs.scheduler import Daemon

    store = migrated(sqlite_url)
    sim = Simulator(300, seed=5)
    src = SourceSettings(name="main", base_url=serve(sim).url, max_requests_per_second=1000)
    daemon = Daemon(Settings(sources=[src]), store)
    counted: list[str] = []
    real_count = store.count_tasks

    def spy(source: str, *, present_only: bool = False) -> int:
        counted.append(source)
        return real_count(source, present_only=present_only)

    store.count_tasks = spy  # type: ignore[method-assign]

    def gauge() -> float | None:
        return daemon.metrics.registry.get_sample_value(
            "tasksync_tasks_archived", {"source": "main"}
        )

    daemon._run(src, "sync")
    assert counted == ["main"] and gauge() == 300
    for _ in range(5):
        sim.arrive(7)
        daemon._run(src, "sync")
    assert counted == ["main"], "a sync counted the whole archive"
    assert gauge() == real_count("main", present_only=True) == 335
    sim.expire(10)
    daemon._run(src, "sweep")  # reads everything anyway: the gauge is counted afresh
    assert gauge() == real_count("main", present_only=True) == 325
    store.dispose()
