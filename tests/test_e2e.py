"""End to end through a real HTTP server on loopback into each real database."""

from __future__ import annotations

from collections.abc import Callable

from sync.archive.models import Task, TaskEvent
from sync.archive.store import Store
from sync.jobs import pipeline
from sync.server.client import connect
from sync.simulator import Simulator, SimulatorServer

from .helpers import assert_archive_equals_truth, count, last_run, source_for


def test_backfill_10k_equals_simulator_field_by_field(
    store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """A backfill of 10,000 simulator tasks archives every one of them exactly."""
    sim = Simulator(10_000, seed=3)
    server = serve(sim)
    src = source_for(server.url)
    with connect(src) as client:
        report = pipeline.backfill(store, client, src)
    assert report.outcome == "ok"
    assert (report.inserted, report.pages, report.rejected) == (10_000, 100, 0)
    assert_archive_equals_truth(store, sim)
    assert count(store, TaskEvent, kind="created") == 10_000
    run = last_run(store)
    assert (run["kind"], run["outcome"], run["inserted"], run["requests"]) == (
        "backfill",
        "ok",
        10_000,
        100,
    )


def test_second_backfill_writes_nothing(
    store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """Against an unchanged server, a second backfill writes no task rows and no events."""
    sim = Simulator(1_500, seed=4)
    src = source_for(serve(sim).url)
    with connect(src) as client:
        pipeline.backfill(store, client, src)
        with store.engine.connect() as conn:
            before = sorted(map(tuple, conn.execute(Task.__table__.select())))
        events_before = count(store, TaskEvent)
        again = pipeline.backfill(store, client, src)
    assert (again.inserted, again.changed, again.unchanged) == (0, 0, 1_500)
    assert count(store, TaskEvent) == events_before
    with store.engine.connect() as conn:
        after = sorted(map(tuple, conn.execute(Task.__table__.select())))
    assert after == before
