"""`tasksync report`'s figures on a simulator archive equal the same figures worked out
independently from the simulator's own tasks (standard library statistics, no SQL), on
SQLite, PostgreSQL and MariaDB, and in a time zone with daylight saving."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sync.archive.store import Store
from sync.jobs import pipeline
from sync.server.client import connect
from sync.simulator import Simulator, SimulatorServer
from sync.views import report

from .helpers import source_for

HOUR_MS = 3_600_000


def quantiles(values: list[int]) -> tuple[float | None, float | None, int | None]:
    if not values:
        return None, None, None
    if len(values) == 1:
        return float(values[0]), float(values[0]), values[0]
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return cuts[9], cuts[18], max(values)


def expected(
    tasks: list[dict[str, Any]], by: str, tz: Any
) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Per (period, action), straight from the task objects."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for t in tasks:
        local = datetime.fromtimestamp(t["submitTime"] / 1000, UTC).astimezone(tz)
        day = local.date()
        if by == "week":
            day -= timedelta(days=day.weekday())
        period = day.strftime("%Y-%m") if by == "month" else day.isoformat()
        groups[(period, t["action"])].append(t)
        groups[(period, "*")].append(t)
    out = {}
    for key, group in groups.items():
        status = Counter(t["status"] for t in group)
        queue = [t["startTime"] - t["submitTime"] for t in group if t["startTime"]]
        run = [
            t["finishTime"] - t["startTime"] for t in group if t["startTime"] and t["finishTime"]
        ]
        finished = status["SUCCESS"] + status["FAILURE"] + status["CANCEL"]
        out[key] = (
            len(group),
            status["SUCCESS"],
            status["FAILURE"],
            status["CANCEL"],
            len(group) - finished,
            round(100 * status["SUCCESS"] / finished, 1) if finished else None,
            *quantiles(queue),
            *quantiles(run),
        )
    return out


def got(rep: report.Report) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {
        (r.period, r.action): (
            r.tasks,
            r.succeeded,
            r.failed,
            r.cancelled,
            r.unfinished,
            r.success_rate,
            r.queue.p50,
            r.queue.p95,
            r.queue.max,
            r.run.p50,
            r.run.p95,
            r.run.max,
        )
        for r in rep.rows
    }


def archived(
    store: Store, serve: Callable[[Simulator], SimulatorServer], gap_h: float
) -> Simulator:
    """A simulator's tasks, two to a few hundred a day, backfilled, then moved on and synced."""
    sim = Simulator(3_000, seed=12, gap_ms=int(gap_h * HOUR_MS), unfinished_per_mille=60)
    src = source_for(serve(sim).url)
    with connect(src) as client:
        pipeline.backfill(store, client, src)
        for i in sim.unfinished()[:40]:
            sim.advance(i)
        pipeline.incremental(store, client, src)
    return sim


def test_report_equals_the_simulators_truth(
    store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """Every period and action: counts, success rate, p50/p95/max of queue and run time,
    exactly; failure reasons and the weekday-hour counts too."""
    sim = archived(store, serve, gap_h=0.1)
    truth = list(sim.truth().values())
    rep = report.build_report(store, source="main")
    assert got(rep) == expected(truth, "day", UTC)
    reasons = Counter(
        report.normalize_reason(t["failReason"]) for t in truth if t["status"] == "FAILURE"
    )
    assert dict(rep.reasons["main"]) == dict(reasons.most_common(report.TOP_REASONS))
    heat = [[0] * 24 for _ in range(7)]
    for t in truth:
        when = datetime.fromtimestamp(t["submitTime"] / 1000, UTC)
        heat[when.weekday()][when.hour] += 1
    assert rep.heat["main"] == heat


@pytest.mark.parametrize("by", ["day", "week", "month"])
def test_report_in_a_zone_with_daylight_saving_equals_truth(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer], by: str
) -> None:
    """New York, across the March change to summer time: periods counted in local time."""
    sim = Simulator(3_000, seed=3, gap_ms=int(1.0 * HOUR_MS))  # 1 Jan .. 5 May 2026
    src = source_for(serve(sim).url)
    with connect(src) as client:
        pipeline.backfill(sqlite_store, client, src)
    zone = ZoneInfo("America/New_York")
    rep = report.build_report(sqlite_store, by=by, tz=zone, tz_name="America/New_York")  # type: ignore[arg-type]
    assert got(rep) == expected(list(sim.truth().values()), by, zone)
