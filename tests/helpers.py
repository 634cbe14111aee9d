"""Shared test helpers: compare the archive with the simulator's truth, field by field."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from sync.models import SyncRun, Task, TaskEvent
from sync.records import normalize
from sync.simulator import Simulator
from sync.store import Store

COMPARED = [
    c.name
    for c in Task.__table__.columns
    if c.name not in ("first_seen_at", "last_seen_at", "last_changed_at", "gone_at")
]


def archive(store: Store, source: str = "main") -> dict[str, dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(Task).where(Task.source == source).with_only_columns(*Task.__table__.c)
        ).mappings()
        return {r["id"]: dict(r) for r in rows}


def assert_archive_equals_truth(store: Store, sim: Simulator, source: str = "main") -> None:
    """Every listed task is archived with exactly the expected columns; nothing else present."""
    truth = sim.truth()
    got = archive(store, source)
    present = {tid for tid, row in got.items() if row["gone_at"] is None}
    assert present == set(truth), (
        f"missing {sorted(set(truth) - present)[:5]}, extra {sorted(present - set(truth))[:5]}"
    )
    for tid, task in truth.items():
        expected = normalize(source, task)
        assert not hasattr(expected, "reason"), expected
        row = got[tid]
        for col in COMPARED:
            assert row[col] == expected.row[col], (tid, col, row[col], expected.row[col])  # type: ignore[union-attr]


def count(store: Store, model: Any, **where: Any) -> int:
    q = select(func.count()).select_from(model)
    for k, v in where.items():
        q = q.where(getattr(model, k) == v)
    with store.engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def events(store: Store, task_id: str) -> list[tuple[str, str | None, str | None]]:
    q = (
        select(TaskEvent.kind, TaskEvent.previous_status, TaskEvent.status)
        .where(TaskEvent.task_id == task_id)
        .order_by(TaskEvent.id)
    )
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(q)]  # type: ignore[misc]


def last_run(store: Store) -> dict[str, Any]:
    with store.engine.connect() as conn:
        row = conn.execute(select(*SyncRun.__table__.c).order_by(SyncRun.id.desc())).mappings()
        return dict(row.first() or {})


def sim_transport(sim: Simulator) -> Any:
    """An httpx MockTransport that answers from the simulator in-process (no sockets)."""
    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        reply = sim.handle(request.method, request.url.path, dict(request.headers), request.content)
        if reply.drop:
            raise httpx.RemoteProtocolError("server closed the connection", request=request)
        headers = {"Content-Type": reply.content_type, **reply.headers}
        return httpx.Response(reply.status, content=reply.body, headers=headers)

    return httpx.MockTransport(handler)
