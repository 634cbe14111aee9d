"""History answers over a small real SQLite archive: the numbers are worked out by hand from
the handful of tasks and runs each test saves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync import report
from sync.runs import RunReport
from sync.store import Store

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
JAN1 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC, in epoch ms
HOUR, DAY = 3_600_000, 86_400_000


def task(
    tid: str,
    status: str,
    submit: int,
    queue_s: float | None = None,
    run_s: float | None = None,
    action: str | None = "IMAGINE",
    progress: str = "100%",
) -> dict[str, Any]:
    """A task submitted at `submit`, started `queue_s` later and finished `run_s` after that."""
    start = None if queue_s is None else submit + int(queue_s * 1000)
    finish = None if start is None or run_s is None else start + int(run_s * 1000)
    t = {
        "id": tid,
        "status": status,
        "progress": progress,
        "submitTime": submit,
        "startTime": start,
        "finishTime": finish,
    }
    if action is not None:
        t["action"] = action
    return t


def save(store: Store, source: str, tasks: list[dict[str, Any]], now: datetime = NOW) -> None:
    store.save(store.prepare(source, tasks, now), None)


# Two days of `main`, one unfinished-only day, and one task of another source.
MAIN = [
    task("1", "SUCCESS", JAN1, queue_s=2, run_s=60),
    task("2", "FAILURE", JAN1 + HOUR, queue_s=4, run_s=30),
    task("3", "SUCCESS", JAN1 + 2 * HOUR, queue_s=1, run_s=10, action="UPSCALE"),
    task("4", "IN_PROGRESS", JAN1 + DAY, queue_s=3, progress="40%"),
    task("5", "CANCEL", JAN1 + DAY),
    task("6", "SUCCESS", JAN1 + DAY + HOUR, queue_s=5, run_s=20),
    task("7", "SUCCESS", JAN1 + DAY + 2 * HOUR, queue_s=1, run_s=1, action=None),
    task("8", "SUBMITTED", JAN1 + 2 * DAY, progress="0%"),
]
OTHER = [task("1", "FAILURE", JAN1 + 3 * HOUR, queue_s=6, run_s=1)]


@pytest.fixture
def archive(sqlite_store: Store) -> Store:
    """The tasks above, saved."""
    save(sqlite_store, "main", MAIN)
    save(sqlite_store, "other", OTHER)
    return sqlite_store


def timing(day: str, action: str, timed: int, queue: float | None, run: float | None) -> Any:
    return {
        "day": day,
        "action": action,
        "tasks_timed": timed,
        "median_queue_s": queue,
        "median_run_s": run,
    }


def test_timings_by_action_day_medians_per_day_and_action(archive: Store) -> None:
    """Per day and action: tasks with a run time, median queue and run seconds; a task
    without an action is '?', a day without times has None."""
    assert report.timings_by_action_day(archive, "main") == [
        timing("2026-01-01", "IMAGINE", 2, 3.0, 45.0),  # queues 2 s, 4 s; runs 60 s, 30 s
        timing("2026-01-01", "UPSCALE", 1, 1.0, 10.0),
        timing("2026-01-02", "?", 1, 1.0, 1.0),
        timing("2026-01-02", "IMAGINE", 1, 4.0, 20.0),  # queues 3 s, 5 s (5: none); run 20 s
        timing("2026-01-03", "IMAGINE", 0, None, None),
    ]


def test_timings_by_action_day_without_source_takes_every_source(archive: Store) -> None:
    """With no source, the other source's task joins the medians of its day and action."""
    rows = report.timings_by_action_day(archive)
    assert rows[0] == timing("2026-01-01", "IMAGINE", 3, 4.0, 30.0)  # + queue 6 s, run 1 s
    assert rows[1:] == report.timings_by_action_day(archive, "main")[1:]


def test_failure_rate_by_day_counts_finished_and_failed(archive: Store) -> None:
    """Finished = succeeded + failed + cancelled; the rate is failed over finished, in %,
    one decimal; a day with nothing finished has no rate."""
    assert report.failure_rate_by_day(archive, "main") == [
        {"day": "2026-01-01", "finished": 3, "failed": 1, "failure_rate_pct": 33.3},
        {"day": "2026-01-02", "finished": 3, "failed": 0, "failure_rate_pct": 0.0},
        {"day": "2026-01-03", "finished": 0, "failed": 0, "failure_rate_pct": None},
    ]


def test_failure_rate_by_day_without_source_takes_every_source(archive: Store) -> None:
    """With no source, every source's tasks count: 2 of 4 failed on the first day."""
    first = report.failure_rate_by_day(archive)[0]
    assert first == {"day": "2026-01-01", "finished": 4, "failed": 2, "failure_rate_pct": 50.0}


def test_status_history_lists_one_tasks_changes_oldest_first(sqlite_store: Store) -> None:
    """Created, then each change with the status before it; an unchanged save adds nothing,
    and other tasks and sources are left out."""
    t = [NOW + timedelta(minutes=m) for m in range(4)]
    save(sqlite_store, "main", [task("9", "SUBMITTED", JAN1, progress="0%")], t[0])
    save(sqlite_store, "other", [task("9", "FAILURE", JAN1, progress="")], t[0])
    save(sqlite_store, "main", [task("9", "IN_PROGRESS", JAN1, queue_s=2, progress="40%")], t[1])
    save(sqlite_store, "main", [task("9", "IN_PROGRESS", JAN1, queue_s=2, progress="40%")], t[2])
    save(sqlite_store, "main", [task("10", "SUBMITTED", JAN1, progress="0%")], t[2])
    save(sqlite_store, "main", [task("9", "SUCCESS", JAN1, queue_s=2, run_s=9)], t[3])
    assert report.status_history(sqlite_store, "main", "9") == [
        {
            "observed_at": t[0],
            "kind": "created",
            "previous_status": None,
            "status": "SUBMITTED",
            "progress": "0%",
        },
        {
            "observed_at": t[1],
            "kind": "changed",
            "previous_status": "SUBMITTED",
            "status": "IN_PROGRESS",
            "progress": "40%",
        },
        {
            "observed_at": t[3],
            "kind": "changed",
            "previous_status": "IN_PROGRESS",
            "status": "SUCCESS",
            "progress": "100%",
        },
    ]
    assert report.status_history(sqlite_store, "main", "nope") == []


def run(store: Store, source: str, kind: str, started: datetime, **end: Any) -> None:
    """Record a run started at `started`; with `at=` it ends then, with the other keys."""
    run_id = store.start_run(source, kind, started)
    if "at" in end:
        at = end.pop("at")
        store.finish_run(RunReport(source=source, kind=kind, run_id=run_id, **end), at)


def test_source_status_sums_up_the_archive_and_the_last_runs(archive: Store) -> None:
    """One line with tasks archived, gone and unfinished and the time since the last success,
    then the newest runs first: start, kind, outcome, duration, counts and error."""
    seen = {"1", "2", "3", "5", "6", "7", "8"}
    archive.mark_gone("main", archive.missing_ids("main", seen), None, NOW, max_share=1.0)
    run(archive, "main", "backfill", NOW, at=NOW + timedelta(seconds=90), outcome="ok", inserted=8)
    error = "server http://mj.test/mj/task/query returned 502 " + "x" * 200
    run(
        archive,
        "main",
        "sync",
        NOW + timedelta(hours=1),
        at=NOW + timedelta(hours=1, seconds=2.5),
        outcome="failed",
        changed=2,
        gone=1,
        error=error,
    )
    run(archive, "main", "sweep", NOW + timedelta(hours=2))
    lines = report.source_status(archive, ["main"], now=NOW + timedelta(minutes=46, seconds=30))
    # 8 tasks; "4" (IN_PROGRESS) is gone, so of the unfinished only "8" (SUBMITTED) counts.
    assert lines == [
        "source main: 8 tasks archived (1 gone, 1 unfinished); last success 45m ago",
        "  2026-11-27 14:00:00 sweep    running        0.0s  +0 ~0 -0",
        "  2026-11-27 13:00:00 sync     failed         2.5s  +0 ~2 -1  " + error[:120],
        "  2026-11-27 12:00:00 backfill ok            90.0s  +8 ~0 -0",
    ]


@pytest.mark.parametrize(
    ("after", "said"),
    [
        pytest.param(timedelta(seconds=119), "119s", id="seconds"),
        pytest.param(timedelta(seconds=120), "2m", id="minutes"),
        pytest.param(timedelta(hours=2), "2h", id="hours"),
        pytest.param(timedelta(hours=47, minutes=59), "47h", id="hours-below-two-days"),
        pytest.param(timedelta(days=2), "2d", id="days"),
    ],
)
def test_source_status_says_how_long_since_the_last_success(
    sqlite_store: Store, after: timedelta, said: str
) -> None:
    """The time since the last successful run, in s, m, h or d."""
    run(sqlite_store, "main", "sync", NOW, at=NOW, outcome="ok")
    line = report.source_status(sqlite_store, ["main"], now=NOW + after)[0]
    assert line.endswith(f"last success {said} ago"), line


def test_source_status_without_names_lists_every_source_that_ran(sqlite_store: Store) -> None:
    """With no names, every source in the run ledger; one that never succeeded says never."""
    run(sqlite_store, "a", "sync", NOW, at=NOW, outcome="ok")
    run(sqlite_store, "b", "sync", NOW, at=NOW, outcome="failed", error="boom")
    run(sqlite_store, "a", "sync", NOW, at=NOW, outcome="failed", error="boom")
    later = NOW + timedelta(seconds=5)
    lines = report.source_status(sqlite_store, None, now=later)
    heads = sorted(line for line in lines if line.startswith("source "))
    assert heads == [
        "source a: 0 tasks archived (0 gone, 0 unfinished); last success 5s ago",
        "source b: 0 tasks archived (0 gone, 0 unfinished); last success never",
    ]
    assert len(lines) == 5  # a's two runs and b's one


def test_source_status_shows_the_five_newest_runs(sqlite_store: Store) -> None:
    """Only the five newest runs of a source are listed, newest first."""
    for n in range(7):
        started = NOW + timedelta(minutes=n)
        run(sqlite_store, "main", "sync", started, at=started, outcome="ok", inserted=n)
    lines = report.source_status(sqlite_store, ["main"], now=NOW + timedelta(minutes=7))
    assert [line.split("+")[1].split()[0] for line in lines[1:]] == ["6", "5", "4", "3", "2"]
