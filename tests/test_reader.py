"""The read side's fetch process: long walks read and prepare pages in a child process, over
a real loopback server, into each real database, with the same guarantees as the thread."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from _pytest.logging import LogCaptureHandler

from sync.archive.models import SyncRun, Task, TaskEvent
from sync.archive.store import Store
from sync.errors import AuthRefused
from sync.jobs import pipeline
from sync.server import reader
from sync.server.client import connect
from sync.simulator import Faults, Simulator, SimulatorServer
from sync.tasks.batch import Binder, prepare
from sync.tasks.records import Fingerprint

from .helpers import (
    archive,
    assert_archive_equals_truth,
    count,
    last_run,
    migrated,
    source_for,
    tasksync,
    write_config,
)


@pytest.fixture
def early_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Walks of 5 pages or more move to a fetch process (100 in production)."""
    monkeypatch.setattr(reader, "PROCESS_MIN_PAGES", 5)


def _children(pid: int) -> list[int]:
    """Live fetch processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"sync.server.reader" in cmd:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _used_process(caplog: pytest.LogCaptureFixture) -> bool:
    return any("read by a fetch process" in r.getMessage() for r in caplog.records)


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="tasksync"):
        yield caplog


def test_prepared_page_survives_pickling_without_its_parsed_objects() -> None:
    """What crosses the pipe: fingerprints without the parsed task, rows as bind parameters;
    the parsed task comes back from the canonical JSON, equal to the original."""
    sim = Simulator(5, seed=2)
    tasks = [sim.task(i) for i in range(5)] + ["not a task"]
    batch = prepare(
        Binder("sqlite", ["source", "id"]), "main", tasks, datetime.now(UTC), build_rows=True
    )
    again = pickle.loads(pickle.dumps(batch))
    assert again.rejected == 1 and len(again.rejects) == 1
    for tid, fp in batch.records.items():
        got: Fingerprint = again.records[tid]
        assert (got.id, got.hash, got.text) == (fp.id, fp.hash, fp.text)
        assert got._raw is None and got.raw == fp.raw == sim.task(sim.index_of(tid) or 0)
        assert again.built[tid] == batch.built[tid]


def test_fetch_process_backfill_under_drift_equals_truth(
    store: Store,
    serve: Callable[[Simulator], SimulatorServer],
    early_process: None,
    info_logs: pytest.LogCaptureFixture,
) -> None:
    """Arrivals and removals of already-read tasks while the child reads ahead: the walk steps
    back (discarding what the child read ahead), and after a quiet sweep archive == truth."""
    sim = Simulator(3_000, seed=21, arrivals_per_request=0.8)
    removed: list[str] = []

    def churn(s: Simulator) -> None:
        if s.query_requests % 7 == 3 and len(s.alive) > 200:
            victim = s.alive[-(s.query_requests % 150) - 1]  # among the newest: already read
            removed.append(s.task_id(victim))
            s.remove(victim)

    sim.on_request = churn
    src = source_for(serve(sim).url, concurrency=3, max_requests_per_second=25)
    with connect(src) as client:
        report = pipeline.backfill(store, client, src, fetch_process=True)
        assert report.outcome == "ok" and _used_process(info_logs)
        assert any("drift repairs" in n for n in report.notes), report.notes
        assert report.requests == sim.query_requests  # the child's requests are counted
        sim.on_request = None
        sim.arrivals_per_request = 0
        sweep = pipeline.sweep(store, client, src, fetch_process=True)
    assert sweep.outcome == "ok" and removed
    assert_archive_equals_truth(store, sim)
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(Task.__table__.select().with_only_columns(Task.id))]
    assert len(ids) == len(set(ids))
    assert count(store, TaskEvent, kind="gone") == len(set(removed))


def test_fetch_process_retries_a_hostile_server_quietly(
    sqlite_store: Store,
    serve: Callable[[Simulator], SimulatorServer],
    early_process: None,
    info_logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """429s, HTML 502s and truncated bodies met by the child are retried there, counted in
    the run, and print nothing of their own; the archive still equals the truth."""
    # Only pytest's capture handlers stay (earlier tests may have left stderr handlers), so
    # whatever reaches this process's stderr now comes from the child, which shares it.
    for name in (None, "tasksync", "stamina"):
        logger = logging.getLogger(name)
        keep = [h for h in logger.handlers if isinstance(h, LogCaptureHandler)]
        monkeypatch.setattr(logger, "handlers", keep)
    faults = Faults(rate_limit=0.2, server_error=0.1, truncated=0.05)
    sim = Simulator(2_500, seed=13, faults=faults)
    src = source_for(serve(sim).url, retry_attempts=12, max_requests_per_second=30)
    with connect(src) as client:
        report = pipeline.backfill(sqlite_store, client, src, fetch_process=True)
    assert report.outcome == "ok" and _used_process(info_logs)
    assert report.retries > 2 and report.requests == sim.requests  # faults included
    assert_archive_equals_truth(sqlite_store, sim)
    assert capfd.readouterr().err == ""


def test_nul_characters_are_replaced_on_thread_and_process_pages(
    store: Store,
    serve: Callable[[Simulator], SimulatorServer],
    early_process: None,
    info_logs: pytest.LogCaptureFixture,
) -> None:
    """A page with a NUL escape is cleaned task by task (pages without one skip the scan),
    whether the thread (page 0) or the fetch process (a late page) prepared it."""
    sim = Simulator(1_500, seed=14)
    for i in (1_499, 20):  # newest first: page 0, and page 14
        sim.overrides[i] = {**sim.task(i), "prompt": "nul\x00inside", "properties": {"k\x00": 1}}
    src = source_for(serve(sim).url, max_requests_per_second=15)
    with connect(src) as client:
        report = pipeline.backfill(store, client, src, fetch_process=True)
    assert report.outcome == "ok" and report.inserted == 1_500 and _used_process(info_logs)
    rows = archive(store)
    for i in (1_499, 20):
        row = rows[sim.task_id(i)]
        assert row["prompt"] == "nul\ufffdinside" and "\x00" not in str(row["json"])
        assert row["properties"] == {"k\ufffd": 1}


def test_fetch_process_rebackfill_writes_nothing(
    sqlite_store: Store,
    serve: Callable[[Simulator], SimulatorServer],
    early_process: None,
    info_logs: pytest.LogCaptureFixture,
) -> None:
    """Unchanged pages travel as the server's bytes and are fingerprinted by the parent."""
    sim = Simulator(2_000, seed=8)
    src = source_for(serve(sim).url, max_requests_per_second=15)
    with connect(src) as client:
        pipeline.backfill(sqlite_store, client, src, fetch_process=True)
        events = count(sqlite_store, TaskEvent)
        info_logs.clear()
        again = pipeline.backfill(sqlite_store, client, src, fetch_process=True)
    assert _used_process(info_logs)
    assert (again.inserted, again.changed, again.unchanged) == (0, 0, 2_000)
    assert count(sqlite_store, TaskEvent) == events


def test_fetch_process_error_keeps_its_kind_and_leaves_no_child(
    sqlite_store: Store,
    serve: Callable[[Simulator], SimulatorServer],
    early_process: None,
    info_logs: pytest.LogCaptureFixture,
) -> None:
    """A refused token met by the child is raised in the parent as AuthRefused (exit 2), the
    run is recorded failed, and the child is gone afterwards."""
    sim = Simulator(3_000, seed=9, token="good")
    since: list[int] = []

    def revoke(s: Simulator) -> None:
        # Two requests after the parent switched to the child, so the child meets the 401.
        if not since and _used_process(info_logs):
            since.append(s.query_requests)
        if since and s.query_requests >= since[0] + 2:
            s.token = "revoked"

    sim.on_request = revoke
    src = source_for(serve(sim).url, max_requests_per_second=20)
    with connect(src, token="good") as client, pytest.raises(AuthRefused):
        pipeline.backfill(sqlite_store, client, src, fetch_process=True)
    assert _used_process(info_logs)
    assert last_run(sqlite_store)["outcome"] == "failed"
    assert _children(os.getpid()) == []
    assert 500 <= count(sqlite_store, Task) < 3_000  # the pages before it are kept


def test_fetch_process_that_cannot_start_falls_back_to_a_thread(
    sqlite_store: Store,
    serve: Callable[[Simulator], SimulatorServer],
    early_process: None,
    monkeypatch: pytest.MonkeyPatch,
    info_logs: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(reader.sys, "executable", "/bin/false")
    sim = Simulator(1_000, seed=10)
    src = source_for(serve(sim).url)
    with connect(src) as client:
        report = pipeline.backfill(sqlite_store, client, src, fetch_process=True)
    assert report.outcome == "ok" and report.inserted == 1_000
    assert any("reading on a thread" in r.getMessage() for r in info_logs.records)
    assert_archive_equals_truth(sqlite_store, sim)


@pytest.mark.slow
def test_kill_9_mid_walk_leaves_no_orphan_and_resumes(db_url_sp: str, tmp_path: Path) -> None:
    """SIGKILL of tasksync while its fetch process reads: the child exits on its own within a
    second, and the resumed backfill ends equal to the truth, re-fetching at most the page
    being written, the `concurrency - 1` pages ahead and the one the child was fetching."""
    store = migrated(db_url_sp)
    sim = Simulator(15_000, seed=12)
    kills = 0
    with SimulatorServer(sim) as server:
        cfg = write_config(
            tmp_path / "tasksync.toml", db_url_sp, server.url, max_requests_per_second=80
        )
        for point in (30, 75):
            proc = tasksync("--config", str(cfg), "backfill", cwd=tmp_path)
            children: list[int] = []
            while sim.query_requests < point and proc.poll() is None:
                children = children or _children(proc.pid)
                time.sleep(0.005)
            assert children, "the backfill never started a fetch process"
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            kills += 1
            deadline = time.monotonic() + 3
            while any(_alive(c) for c in children) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(_alive(c) for c in children), "fetch process outlived its parent"
        proc = tasksync("--config", str(cfg), "backfill", cwd=tmp_path)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert_archive_equals_truth(store, sim)
    bound = 150 + kills * (2 + 1) + 2  # concurrency 2: the page, one ahead, one in the child
    assert sim.query_requests <= bound, (sim.query_requests, bound)
    assert count(store, SyncRun, outcome="running") == kills
    store.dispose()


@pytest.mark.slow
def test_sigterm_mid_walk_stops_the_fetch_process_too(sqlite_url: str, tmp_path: Path) -> None:
    """SIGTERM while the fetch process reads: exit 0 within 5 s, the run is `interrupted`,
    the child is gone, and the next backfill re-fetches about one page and completes."""
    store = migrated(sqlite_url)
    sim = Simulator(20_000, seed=15)
    with SimulatorServer(sim) as server:
        cfg = write_config(
            tmp_path / "tasksync.toml", sqlite_url, server.url, max_requests_per_second=60
        )
        proc = tasksync("--config", str(cfg), "backfill", cwd=tmp_path)
        children: list[int] = []
        while not children and proc.poll() is None:
            children = _children(proc.pid)
            time.sleep(0.01)
        while sim.query_requests < 60 and proc.poll() is None:
            time.sleep(0.01)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and time.monotonic() - t0 < 5, err
        assert "pages now read by a fetch process" in err
        assert not any(_alive(c) for c in children)
        run = last_run(store)
        assert run["outcome"] == "interrupted" and 0 < run["inserted"] < 20_000
        before = sim.query_requests
        proc = tasksync("--config", str(cfg), "backfill", cwd=tmp_path)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert_archive_equals_truth(store, sim)
    # 200 pages in all, plus at most the page being written, one ahead and one being fetched
    # when the signal came, plus the head pass.
    assert sim.query_requests <= 200 + 3 + 2, (sim.query_requests, before)
    store.dispose()


def test_fetch_process_reads_with_the_walks_settings(
    sqlite_store: Store,
    serve: Callable[[Simulator], SimulatorServer],
    early_process: None,
    info_logs: pytest.LogCaptureFixture,
) -> None:
    """The settings a walk is given reach the fetch process whole, from the same place the
    thread reads them: a page size other than the client's own is the one every page has."""
    sim = Simulator(3_000, seed=31)
    url = serve(sim).url
    src = source_for(url, page_size=50, max_requests_per_second=20)
    with connect(source_for(url, page_size=100, max_requests_per_second=20)) as client:
        report = pipeline.backfill(sqlite_store, client, src, fetch_process=True)
    assert report.outcome == "ok" and _used_process(info_logs)
    assert report.pages == 60 and sim.page_log == list(range(60))
    assert_archive_equals_truth(sqlite_store, sim)
