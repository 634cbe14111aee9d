"""Incremental sync and sweeps: request bounds, unfinished re-checks, gone/returned, dry runs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from sync.archive.models import SyncRun, Task, TaskEvent
from sync.archive.store import Store
from sync.errors import MassGoneRefused
from sync.jobs import pipeline
from sync.server.client import Client, connect
from sync.simulator import Simulator

from .helpers import (
    archive,
    assert_archive_equals_truth,
    count,
    events,
    request_bound,
    sim_transport,
    source_for,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def setup(store: Store, sim: Simulator, **kw: object) -> tuple[Client, Callable[..., object]]:
    src = source_for("http://sim.test", **kw)
    client = connect(src, transport=sim_transport(sim))
    return client, src  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("archived", "new", "unfinished"),
    [
        (1_000, 0, 0),
        (1_000, 1, 3),
        (5_000, 100, 50),
        (5_000, 250, 120),
        (20_000, 37, 250),
    ],
)
def test_incremental_request_bound(
    sqlite_store: Store, archived: int, new: int, unfinished: int
) -> None:
    """k new and u unfinished tasks cost at most ceil(k/page)+ceil(u/100)+2 requests."""
    sim = Simulator(archived, unfinished_per_mille=0)
    client, src = setup(sqlite_store, sim)
    pipeline.backfill(sqlite_store, client, src)
    # u unfinished: some arrivals stay unfinished, the rest from the archive's history.
    sim.arrive(new)
    if unfinished > new:
        for i in sim.alive[: unfinished - new]:
            t = dict(sim.task(i), status="IN_PROGRESS", finishTime=None)
            sim.overrides[i] = t
        pipeline.sweep(sqlite_store, client, src)
    sim.arrive(0)
    before = sim.requests
    report = pipeline.incremental(sqlite_store, client, src)
    u = len(sqlite_store.unfinished_ids("main"))
    assert report.requests == sim.requests - before
    assert report.requests <= request_bound(new, max(u, unfinished), 100)
    assert_archive_equals_truth(sqlite_store, sim)


def test_incremental_rechecks_unfinished_and_records_history(store: Store) -> None:
    """An old unfinished task is re-polled by id; every status it held appears in its events."""
    sim = Simulator(1_000, unfinished_per_mille=0)
    i = 3  # far below the head: only the unfinished re-check can see it change
    sim.overrides[i] = dict(sim.task(i), status="NOT_START", startTime=None, finishTime=None)
    tid = sim.task_id(i)
    client, src = setup(store, sim)
    pipeline.backfill(store, client, src)
    statuses = []
    for _ in range(8):
        sim.advance(i)
        statuses.append(sim.task(i)["status"])
        report = pipeline.incremental(store, client, src)
        assert report.pages == 1
    kinds = events(store, tid)
    assert [k[2] for k in kinds] == ["NOT_START", *[s for s in statuses if s][: len(kinds) - 1]]
    assert set(statuses) <= {k[2] for k in kinds}
    assert kinds[0][0] == "created" and all(k[0] == "changed" for k in kinds[1:])
    # A finished task's late change (a new image URL) is for the sweep to catch.
    pipeline.sweep(store, client, src)
    assert_archive_equals_truth(store, sim)


def test_incremental_does_not_mark_missing_unfinished_gone(sqlite_store: Store) -> None:
    """A task list-by-condition no longer returns stays in the archive, not gone."""
    sim = Simulator(200, unfinished_per_mille=0)
    client, src = setup(sqlite_store, sim)
    tid = sim.arrive(1)[0]
    pipeline.backfill(sqlite_store, client, src)
    i = sim.index_of(tid)
    assert i is not None
    sim.remove(i)
    pipeline.incremental(sqlite_store, client, src)
    assert archive(sqlite_store)[tid]["gone_at"] is None


def test_sweep_marks_gone_and_returned(store: Store) -> None:
    """A sweep marks dropped tasks gone (with an event); a returning task gets `returned`."""
    sim = Simulator(400)
    client, src = setup(store, sim)
    clock = Clock()
    pipeline.backfill(store, client, src, clock)
    dropped = sim.alive[10]
    saved = sim.task(dropped)
    sim.expire(5)
    sim.remove(dropped)
    report = pipeline.sweep(store, client, src, clock)
    assert report.gone == 6 and report.outcome == "ok"
    assert count(store, TaskEvent, kind="gone") == 6
    assert_archive_equals_truth(store, sim)
    assert archive(store)[sim.task_id(0)]["gone_at"] is not None
    sim.overrides[dropped] = saved
    sim.alive.insert(5, dropped)
    sim.alive.sort()
    report = pipeline.sweep(store, client, src, clock)
    assert report.returned == 1 and report.gone == 0
    assert [e[0] for e in events(store, sim.task_id(dropped))] == ["created", "gone", "returned"]


def test_sweep_refuses_mass_gone(sqlite_store: Store) -> None:
    """A server that lost most of its tasks: nothing is marked, the run fails, unless allowed."""
    sim = Simulator(500)
    client, src = setup(sqlite_store, sim)
    pipeline.backfill(sqlite_store, client, src)
    sim.expire(400)
    with pytest.raises(MassGoneRefused, match="--allow-mass-gone"):
        pipeline.sweep(sqlite_store, client, src)
    assert count(sqlite_store, Task) == 500
    assert sqlite_store.count_tasks("main", present_only=True) == 500
    with sqlite_store.engine.connect() as conn:
        outcome = conn.execute(SyncRun.__table__.select().order_by(SyncRun.id.desc())).first()
    assert outcome is not None and outcome.outcome == "failed"
    report = pipeline.sweep(sqlite_store, client, src, allow_mass_gone=True)
    assert report.gone == 400


def test_dry_run_writes_nothing_not_even_a_run(store: Store) -> None:
    """--dry-run reports inserts, changes and gone tasks and writes nothing at all."""
    sim = Simulator(300)
    client, src = setup(store, sim)
    pipeline.backfill(store, client, src)
    runs, evs = count(store, SyncRun), count(store, TaskEvent)
    sim.arrive(7)
    sim.advance(sim.unfinished()[0])
    sim.expire(3)
    inc = pipeline.incremental(store, client, src, dry_run=True)
    sw = pipeline.sweep(store, client, src, dry_run=True)
    assert inc.inserted == 7 and inc.changed >= 1
    assert sw.inserted == 7 and sw.gone == 3 and sw.changed >= 1
    assert (count(store, SyncRun), count(store, TaskEvent), count(store, Task)) == (runs, evs, 300)


def test_dry_run_stopped_by_a_signal_is_interrupted_not_an_error(sqlite_store: Store) -> None:
    """Ctrl-C during `sync --dry-run` ends the run as interrupted (no internal error)."""
    import threading

    sim = Simulator(300)
    client, src = setup(sqlite_store, sim)
    pipeline.backfill(sqlite_store, client, src)
    sim.arrive(5)
    stop = threading.Event()
    stop.set()
    for run in (pipeline.incremental, pipeline.sweep):
        report = run(sqlite_store, client, src, dry_run=True, stop=stop)  # type: ignore[operator]
        assert report.outcome == "interrupted" and report.pages == 1


def test_vanished_unfinished_tasks_back_off_and_the_bound_holds(sqlite_store: Store) -> None:
    """1,000 unfinished tasks the server stopped listing: the first sync asks for all of them,
    later syncs only on each task's backoff (1 min, 2 min, ...), so a sync's cost stays that
    of what is new and still moving; none is marked gone until a sweep."""
    from sync.archive.models import Recheck

    sim = Simulator(3_000, unfinished_per_mille=0)
    for i in sim.alive[:1_000]:
        sim.overrides[i] = dict(sim.task(i), status="SUBMITTED", startTime=None, finishTime=None)
    moving = sim.alive[2_000]  # one unfinished task that stays listed and keeps moving
    sim.overrides[moving] = dict(sim.task(moving), status="IN_PROGRESS", finishTime=None)
    client, src = setup(sqlite_store, sim)
    clock = Clock()
    pipeline.backfill(sqlite_store, client, src, clock)
    sim.expire(1_000)  # the server drops its stuck tasks

    def sync() -> int:
        before = sim.requests
        report = pipeline.incremental(sqlite_store, client, src, clock)
        assert report.requests == sim.requests - before
        return report.requests

    assert sync() == 1 + 11  # the head page, then 1,001 unfinished ids in 11 batches
    assert count(sqlite_store, Recheck) == 1_000
    for _ in range(5):  # inside the first backoff: only the head and the moving task
        assert sync() == 2 <= request_bound(0, 1, 100)
        clock.now += timedelta(seconds=5)
    clock.now += timedelta(seconds=40)
    assert sync() == 1 + 11  # 1 min after the miss: asked once more
    clock.now += timedelta(seconds=70)
    assert sync() == 2  # next ask only 2 min after the second miss
    clock.now += timedelta(seconds=60)
    assert sync() == 1 + 11
    with sqlite_store.engine.connect() as conn:
        misses = {m for (m,) in conn.execute(select(Recheck.misses))}
    assert misses == {3}
    assert all(row["gone_at"] is None for row in archive(sqlite_store).values())
    report = pipeline.sweep(sqlite_store, client, src, clock, allow_mass_gone=True)
    assert report.gone == 1_000 and count(sqlite_store, Recheck) == 0
    assert sync() == 2  # gone tasks are not asked for any more


def test_unfinished_task_returned_again_forgets_its_misses(sqlite_store: Store) -> None:
    """A task list-by-condition missed once and returns later is re-checked every sync again."""
    from sync.archive.models import Recheck

    sim = Simulator(500, unfinished_per_mille=0)
    i = sim.alive[5]
    sim.overrides[i] = dict(sim.task(i), status="SUBMITTED", finishTime=None)
    client, src = setup(sqlite_store, sim)
    clock = Clock()
    pipeline.backfill(sqlite_store, client, src, clock)
    saved = sim.task(i)
    sim.remove(i)
    pipeline.incremental(sqlite_store, client, src, clock)
    assert count(sqlite_store, Recheck) == 1
    sim.overrides[i] = saved
    sim.alive.insert(0, i)
    sim.alive.sort()
    clock.now += timedelta(minutes=2)
    pipeline.incremental(sqlite_store, client, src, clock)
    assert count(sqlite_store, Recheck) == 0
    before = sim.requests
    pipeline.incremental(sqlite_store, client, src, clock)
    assert sim.requests - before == 2  # the head page and the unfinished task, every time


def test_sweep_refreshes_last_seen_at_only_when_an_hour_old(store: Store) -> None:
    """A complete sweep moves last_seen_at of tasks it saw, but rows refreshed less than an
    hour ago are left alone: sweeps every minute do not rewrite the whole archive."""
    sim = Simulator(300)
    client, src = setup(store, sim)
    clock = Clock()
    pipeline.backfill(store, client, src, clock)
    first = {tid: row["last_seen_at"] for tid, row in archive(store).items()}
    clock.now += timedelta(minutes=30)
    pipeline.sweep(store, client, src, clock)
    assert {tid: row["last_seen_at"] for tid, row in archive(store).items()} == first
    clock.now += timedelta(minutes=45)
    pipeline.sweep(store, client, src, clock)
    later = {row["last_seen_at"] for row in archive(store).values()}
    assert len(later) == 1 and later.pop() > max(first.values()) + timedelta(hours=1)
