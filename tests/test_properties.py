"""Property tests: random interleavings of arrivals, updates and removals between page requests,
through backfill, incremental syncs and sweeps, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from sync.archive.models import Task, TaskEvent
from sync.archive.store import Store
from sync.jobs import pipeline
from sync.server.client import connect
from sync.simulator import Simulator

from .helpers import OPS, apply, assert_archive_equals_truth, migrated, sim_transport, source_for

SOURCES = itertools.count()
RUN_KINDS = st.lists(st.sampled_from(["sync", "sync", "sweep", "backfill"]), min_size=1, max_size=5)


def statuses_by_task(store: Store, source: str) -> dict[str, set[str | None]]:
    out: dict[str, set[str | None]] = {}
    with store.engine.connect() as conn:
        for tid, status in conn.execute(
            select(TaskEvent.task_id, TaskEvent.status).where(TaskEvent.source == source)
        ):
            out.setdefault(tid, set()).add(status)
    return out


def check_run_sequence(store: Store, size: int, page: int, ops: list[Any], runs: list[str]) -> None:
    source = f"p{next(SOURCES)}"
    sim = Simulator(size, seed=size + len(ops), unfinished_per_mille=150)
    src = source_for("http://sim.test", name=source, page_size=page, head_margin=page)
    client = connect(src, transport=sim_transport(sim))
    queue = list(ops)
    sim.on_request = lambda s: apply(s, queue.pop(0)) if queue else None
    snapshots: list[dict[str, str]] = []
    ever: set[str] = set()
    pipeline.backfill(store, client, src)
    for kind in runs:
        snapshots.append({tid: t["status"] for tid, t in sim.truth().items()})
        ever |= set(snapshots[-1])
        if kind == "sync":
            pipeline.incremental(store, client, src)
        elif kind == "sweep":
            pipeline.sweep(store, client, src, allow_mass_gone=True)
        else:
            pipeline.backfill(store, client, src)
    sim.on_request = None
    snapshots.append({tid: t["status"] for tid, t in sim.truth().items()})
    pipeline.sweep(store, client, src, allow_mass_gone=True)  # the final quiet sweep
    assert_archive_equals_truth(store, sim, source)
    with store.engine.connect() as conn:
        rows = conn.execute(select(Task.id, Task.gone_at).where(Task.source == source)).all()
        created = conn.execute(
            select(func.count())
            .select_from(TaskEvent)
            .where(TaskEvent.source == source, TaskEvent.kind == "created")
        ).scalar_one()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == created, "a task archived or created twice"
    truth = set(sim.listing())
    for tid, gone_at in rows:
        assert (gone_at is None) == (tid in truth), tid
    history = statuses_by_task(store, source)
    for before, after in itertools.pairwise(snapshots):
        for tid, status in before.items():
            if after.get(tid) == status and tid in history:
                assert status in history[tid], (tid, status, history[tid])


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(size=st.integers(0, 350), page=st.sampled_from([10, 50, 100]), ops=OPS, runs=RUN_KINDS)
def test_archive_converges_to_server_truth(
    db_url_sp: str, size: int, page: int, ops: list[Any], runs: list[str]
) -> None:
    """After any interleaving and a final quiet sweep: archive == server, no dupes, gone set."""
    store = migrated(db_url_sp)  # a no-op after the first example; each uses its own source
    try:
        check_run_sequence(store, size, page, ops, runs)
    finally:
        store.dispose()
