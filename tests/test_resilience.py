"""Hostile servers, crashes and signals never cost a task (real processes, real databases)."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import httpx
import pytest
import stamina

from sync.archive.models import SyncRun
from sync.archive.store import Store
from sync.config import SourceSettings
from sync.errors import ConfigError, ServerError
from sync.jobs import pipeline
from sync.server.client import connect
from sync.simulator import Faults, Simulator, SimulatorServer

from .helpers import (
    assert_archive_equals_truth,
    count,
    fresh_database,
    last_run,
    migrated,
    sim_transport,
    source_for,
    tasksync,
    write_config,
)


def test_chaos_backfill_and_sweep_equal_truth(db_url_sp: str) -> None:
    """10% 429, 5% 5xx HTML, 2% truncated, 2% slow, arrivals while walking: archive == truth."""
    store = migrated(db_url_sp)
    faults = Faults(rate_limit=0.10, server_error=0.05, truncated=0.02, slow=0.02, slow_s=0.01)
    sim = Simulator(2_500, seed=11, faults=faults, arrivals_per_request=0.7)
    src = source_for("http://sim.test", retry_attempts=10)
    client = connect(src, transport=sim_transport(sim))
    first = pipeline.backfill(store, client, src)
    assert first.outcome == "ok" and first.retries > 0
    sim.arrivals_per_request = 0
    pipeline.sweep(store, client, src)
    assert_archive_equals_truth(store, sim)
    store.dispose()


def test_retry_after_is_honoured() -> None:
    """With real waiting on, a 429 with Retry-After: 1 delays the retry by about a second."""
    stamina.set_testing(False)
    replies = [
        httpx.Response(429, headers={"Retry-After": "1"}),
        httpx.Response(200, json={"content": [], "last": True, "totalElements": 0}),
    ]
    client = connect(
        source_for("http://mj.test"),
        transport=httpx.MockTransport(lambda req: replies.pop(0)),
        wait_initial=0.01,
        wait_max=0.02,
    )
    t0 = time.monotonic()
    client.query_page(0, 10)
    assert time.monotonic() - t0 >= 0.95 and client.retries == 1


def test_failed_run_keeps_what_it_committed_and_next_run_resumes(sqlite_store: Store) -> None:
    """A server that dies mid-walk: the run is `failed` with the error, pages kept, resumable."""
    sim = Simulator(1_000)
    src = source_for("http://sim.test", retry_attempts=2)
    client = connect(src, transport=sim_transport(sim))
    sim.on_request = lambda s: setattr(s.faults, "server_error", 1.0) if s.requests >= 4 else None
    with pytest.raises(ServerError):
        pipeline.backfill(sqlite_store, client, src)
    run = last_run(sqlite_store)
    assert run["outcome"] == "failed" and "502" in run["error"] and run["inserted"] == 400
    assert sqlite_store.checkpoint("main", "backfill") is not None
    sim.on_request = None
    sim.faults.server_error = 0.0
    before = sim.query_requests
    again = pipeline.backfill(sqlite_store, client, src)
    assert again.outcome == "ok" and again.inserted == 600
    assert sim.query_requests - before <= 6 + 2  # the rest, plus the head pass
    assert_archive_equals_truth(sqlite_store, sim)


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [1, 4])
def test_kill_9_backfill_resumes_to_truth(db_url_sp: str, tmp_path: Path, concurrency: int) -> None:
    """SIGKILL at random points; each resume ends equal to the truth, re-fetching at most the
    page being written plus what was read ahead (concurrency - 1 pages)."""
    store = migrated(db_url_sp)
    sim = Simulator(4_000, seed=5)
    rng = random.Random(1234)
    kill_at = sorted(rng.sample(range(3, 36), 4))
    arrived = 0
    with SimulatorServer(sim) as server:
        cfg = write_config(
            tmp_path / "tasksync.toml",
            db_url_sp,
            server.url,
            max_requests_per_second=60,
            concurrency=concurrency,
        )
        for point in kill_at:
            proc = tasksync("--config", str(cfg), "backfill", cwd=tmp_path)
            while sim.query_requests < point and proc.poll() is None:
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            sim.arrive(15)  # tasks arrive while nothing runs
            arrived += 15
        proc = tasksync("--config", str(cfg), "backfill", cwd=tmp_path)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert_archive_equals_truth(store, sim)
    pages = -(-len(sim.alive) // 100)
    per_kill = concurrency  # the page being written + (concurrency - 1) read ahead
    bound = pages + per_kill * len(kill_at) + -(-arrived // 100) + 2
    assert sim.query_requests <= bound, (sim.query_requests, bound, str(sim.page_log))
    assert count(store, SyncRun, outcome="running") == len(kill_at)  # the killed ones say so
    store.dispose()


@pytest.mark.slow
def test_sigterm_backfill_exits_0_interrupted_then_resumes(sqlite_url: str, tmp_path: Path) -> None:
    """SIGTERM finishes the page, commits, records `interrupted`, exits 0; the next run resumes."""
    store = migrated(sqlite_url)
    sim = Simulator(3_000)
    with SimulatorServer(sim) as server:
        cfg = write_config(
            tmp_path / "tasksync.toml", sqlite_url, server.url, max_requests_per_second=20
        )
        proc = tasksync("--config", str(cfg), "backfill", cwd=tmp_path)
        while sim.query_requests < 5:
            time.sleep(0.01)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and time.monotonic() - t0 < 5, err
        run = last_run(store)
        assert run["outcome"] == "interrupted" and 0 < run["inserted"] < 3_000
        proc = tasksync("--config", str(cfg), "backfill", cwd=tmp_path)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert_archive_equals_truth(store, sim)


def test_database_lost_mid_run_fails_cleanly(tmp_path: Path) -> None:
    """PostgreSQL connection killed mid-run: the run fails with one line, nothing half-written."""
    with fresh_database("postgresql", tmp_path) as url:
        store = migrated(url)
        sim = Simulator(2_000)
        src = source_for("http://sim.test")
        client = connect(src, transport=sim_transport(sim))

        def kill_backends(s: Simulator) -> None:
            if s.query_requests == 6:
                import psycopg

                dbname = url.rsplit("/", 1)[1]
                with psycopg.connect(
                    host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
                ) as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (dbname,),
                    )

        sim.on_request = kill_backends
        try:
            pipeline.backfill(store, client, src)
        except Exception as exc:
            from sync.errors import DatabaseError

            assert isinstance(exc, DatabaseError), repr(exc)
            assert "\n" not in str(exc)
        else:
            pytest.fail("the backfill did not notice its connections being killed")
        sim.on_request = None
        store.dispose()
        store = Store(url)
        # Whole pages only: a multiple of the page size was stored, and the next run completes.
        assert count_tasks(store) % 100 == 0
        pipeline.backfill(store, client, src)
        assert_archive_equals_truth(store, sim)
        store.dispose()


def count_tasks(store: Store) -> int:
    from sync.archive.models import Task

    return count(store, Task)


def test_sqlite_reader_does_not_block_writer(sqlite_store: Store) -> None:
    """A long read transaction (someone running `tasksync query`) does not stop a backfill."""
    import sqlite3

    path = sqlite_store.url.database
    assert path is not None
    reader = sqlite3.connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM tasks").fetchone()
    sim = Simulator(500)
    src = source_for("http://sim.test")
    report = pipeline.backfill(sqlite_store, connect(src, transport=sim_transport(sim)), src)
    reader.rollback()
    reader.close()
    assert report.outcome == "ok" and report.inserted == 500


def test_bad_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    """ca_bundle must be a readable PEM file; TLS verification has no off switch."""
    with pytest.raises(ValueError, match="CA bundle"):
        SourceSettings(name="a", base_url="https://x", ca_bundle=tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="ca_bundle"):
        connect(SourceSettings(name="a", base_url="https://x", ca_bundle=junk))
    assert "verify" not in SourceSettings.model_fields
