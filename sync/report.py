"""History answers over the archive, computed with portable SQL plus a little Python."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, text

from sync.models import SyncRun, Task, TaskEvent, unfinished
from sync.store import Store


def timings_by_action_day(store: Store, source: str | None = None) -> list[dict[str, Any]]:
    """Median queue and run time (seconds) per day and action, from the task_timings view."""
    sql = "SELECT day, action, queue_ms, run_ms FROM task_timings"
    params: dict[str, Any] = {}
    if source:
        sql += " WHERE source = :source"
        params["source"] = source
    groups: dict[tuple[str, str], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    with store.engine.connect() as conn:
        for day, action, queue_ms, run_ms in conn.execute(text(sql), params):
            q, r = groups[(str(day), action or "?")]
            if queue_ms is not None:
                q.append(queue_ms)
            if run_ms is not None:
                r.append(run_ms)
    out = []
    for (day, action), (q, r) in sorted(groups.items()):
        out.append(
            {
                "day": day,
                "action": action,
                "tasks_timed": len(r),
                "median_queue_s": round(statistics.median(q) / 1000, 1) if q else None,
                "median_run_s": round(statistics.median(r) / 1000, 1) if r else None,
            }
        )
    return out


def failure_rate_by_day(store: Store, source: str | None = None) -> list[dict[str, Any]]:
    """Finished tasks per day and the share that failed, from the daily_stats view."""
    sql = (
        "SELECT day, SUM(succeeded), SUM(failed), SUM(cancelled) FROM daily_stats"
        + (" WHERE source = :source" if source else "")
        + " GROUP BY day ORDER BY day"
    )
    out = []
    with store.engine.connect() as conn:
        for day, ok, failed, cancelled in conn.execute(text(sql), {"source": source}):
            finished = int(ok or 0) + int(failed or 0) + int(cancelled or 0)
            rate = round(100 * int(failed or 0) / finished, 1) if finished else None
            out.append(
                {
                    "day": str(day),
                    "finished": finished,
                    "failed": int(failed or 0),
                    "failure_rate_pct": rate,
                }
            )
    return out


def status_history(store: Store, source: str, task_id: str) -> list[dict[str, Any]]:
    """Every observed change of one task, oldest first."""
    q = (
        select(
            TaskEvent.observed_at,
            TaskEvent.kind,
            TaskEvent.previous_status,
            TaskEvent.status,
            TaskEvent.progress,
        )
        .where(TaskEvent.source == source, TaskEvent.task_id == task_id)
        .order_by(TaskEvent.observed_at, TaskEvent.id)
    )
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def source_status(store: Store, names: list[str] | None, now: datetime | None = None) -> list[str]:
    """A few lines per source: archive size, unfinished tasks, last runs, last success."""
    now = now or datetime.now(UTC)
    with store.engine.connect() as conn:
        if names is None:
            names = [r[0] for r in conn.execute(text("SELECT DISTINCT source FROM sync_runs"))]
        out = []
        for name in names:
            present = Task.gone_at.is_(None)
            archived, gone, moving = conn.execute(
                select(
                    func.count(),
                    func.sum(case((present, 0), else_=1)),
                    func.sum(case((present & unfinished(Task.status), 1), else_=0)),
                ).where(Task.source == name)
            ).one()
            runs = conn.execute(
                select(
                    SyncRun.kind,
                    SyncRun.outcome,
                    SyncRun.started_at,
                    SyncRun.duration_s,
                    SyncRun.inserted,
                    SyncRun.changed,
                    SyncRun.gone,
                    SyncRun.error,
                )
                .where(SyncRun.source == name)
                .order_by(SyncRun.id.desc())
                .limit(5)
            ).all()
            ok = conn.execute(
                select(func.max(SyncRun.finished_at)).where(
                    SyncRun.source == name, SyncRun.outcome == "ok"
                )
            ).scalar()
            since = f"{_ago(now - ok)} ago" if ok else "never"
            out.append(
                f"source {name}: {archived} tasks archived ({int(gone or 0)} gone, "
                f"{int(moving or 0)} unfinished); last success {since}"
            )
            for kind, outcome, started, dur, ins, chg, gn, err in runs:
                line = (
                    f"  {started:%Y-%m-%d %H:%M:%S} {kind:<8} {outcome:<11} "
                    f"{(dur or 0):6.1f}s  +{ins} ~{chg} -{gn}"
                )
                if err:
                    line += f"  {err[:120]}"
                out.append(line)
    return out


def _ago(delta: timedelta) -> str:
    s = int(delta.total_seconds())
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"
