"""`tasksync report` and `status` over a small real SQLite archive: the numbers are worked
out by hand from the handful of tasks and runs each test saves."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.archive.runs import RunReport
from sync.archive.store import Store
from sync.jobs import pipeline
from sync.server.client import connect
from sync.simulator import Simulator, SimulatorServer
from sync.views import report, status

from .helpers import Run, source_for, write_config

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


def rows_of(rep: report.Report, source: str = "main") -> list[tuple[Any, ...]]:
    """(period, action, tasks, ok, failed, cancelled, unfinished, success %, queue p50/p95/max,
    run p50/p95/max) with times in seconds."""
    out = []
    for r in rep.rows:
        if r.source != source:
            continue
        times = [
            None if v is None else v / 1000 for t in (r.queue, r.run) for v in (t.p50, t.p95, t.max)
        ]
        out.append(
            (
                r.period,
                r.action,
                r.tasks,
                r.succeeded,
                r.failed,
                r.cancelled,
                r.unfinished,
                r.success_rate,
                *times,
            )
        )
    return out


def test_report_per_day_and_action_worked_by_hand(archive: Store) -> None:
    """Per day: a row per action and one over all (`*`); counts by outcome; the success rate
    of finished tasks; p50/p95/max of queue and run time, interpolated between ranks."""
    got = rows_of(report.build_report(archive, source="main"))
    assert got == [
        # queues 2, 4, 1 s; runs 60, 30, 10 s: p95 of (1, 2, 4) = 2 + (4 - 2) * 0.9 = 3.8
        ("2026-01-01", "*", 3, 2, 1, 0, 0, 66.7, 2.0, 3.8, 4.0, 30.0, 57.0, 60.0),
        ("2026-01-01", "IMAGINE", 2, 1, 1, 0, 0, 50.0, 3.0, 3.9, 4.0, 45.0, 58.5, 60.0),
        ("2026-01-01", "UPSCALE", 1, 1, 0, 0, 0, 100.0, 1.0, 1.0, 1.0, 10.0, 10.0, 10.0),
        # "4" queued 3 s, still running; "5" cancelled untimed; "6" 5 s + 20 s; "7" 1 + 1 s
        ("2026-01-02", "*", 4, 2, 0, 1, 1, 66.7, 3.0, 4.8, 5.0, 10.5, 19.05, 20.0),
        ("2026-01-02", "?", 1, 1, 0, 0, 0, 100.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
        ("2026-01-02", "IMAGINE", 3, 1, 0, 1, 1, 50.0, 4.0, 4.9, 5.0, 20.0, 20.0, 20.0),
        ("2026-01-03", "*", 1, 0, 0, 0, 1, None, None, None, None, None, None, None),
        ("2026-01-03", "IMAGINE", 1, 0, 0, 0, 1, None, None, None, None, None, None, None),
    ]


def test_report_covers_every_source_separately(archive: Store) -> None:
    """Without --source, each source has its own rows, reasons and hours."""
    rep = report.build_report(archive)
    assert rep.sources == ["main", "other"]
    assert rows_of(rep, "other") == [
        ("2026-01-01", "*", 1, 0, 1, 0, 0, 0.0, 6.0, 6.0, 6.0, 1.0, 1.0, 1.0),
        ("2026-01-01", "IMAGINE", 1, 0, 1, 0, 0, 0.0, 6.0, 6.0, 6.0, 1.0, 1.0, 1.0),
    ]
    assert rep.heat["other"][3][3] == 1  # 2026-01-01 is a Thursday; 03:00 UTC
    assert sum(map(sum, rep.heat["main"])) == len(MAIN)


def test_report_in_a_time_zone_moves_days_and_hours(sqlite_store: Store) -> None:
    """--tz: 2026-01-01 23:30 UTC is 08:30 on Friday 2 January in Tokyo; the report says
    which zone it counted in."""
    save(sqlite_store, "main", [task("1", "SUCCESS", JAN1 + 23 * HOUR + 1_800_000, 1, 1)])
    from zoneinfo import ZoneInfo

    utc = report.build_report(sqlite_store)
    tokyo = report.build_report(sqlite_store, tz=ZoneInfo("Asia/Tokyo"), tz_name="Asia/Tokyo")
    assert [r.period for r in utc.rows] == ["2026-01-01"] * 2
    assert [r.period for r in tokyo.rows] == ["2026-01-02"] * 2
    assert utc.heat["main"][3][23] == 1 and tokyo.heat["main"][4][8] == 1
    assert "Asia/Tokyo" in report.heading(tokyo) and "--tz" in report.heading(utc)


def test_report_by_week_and_month(archive: Store) -> None:
    """Weeks start on Monday (2025-12-29 holds 1 to 3 January 2026); months are YYYY-MM."""
    week = report.build_report(archive, source="main", by="week")
    month = report.build_report(archive, source="main", by="month")
    assert {r.period for r in week.rows} == {"2025-12-29"}
    assert {r.period for r in month.rows} == {"2026-01"}
    assert [r.tasks for r in week.rows if r.action == "*"] == [len(MAIN)]


def test_report_since_and_until_bound_submit_times(archive: Store) -> None:
    """[since, until): tasks submitted on 2 January only."""
    jan2 = datetime(2026, 1, 2, tzinfo=UTC)
    rep = report.build_report(archive, source="main", since=jan2, until=jan2 + timedelta(days=1))
    assert {r.period for r in rep.rows} == {"2026-01-02"}


def test_failure_reasons_are_normalised_and_counted() -> None:
    """Ids, numbers and URLs inside a message do not split one reason into many."""
    assert report.normalize_reason("Banned prompt 12 detected in job 1767225600000001") == (
        "Banned prompt <n> detected in job <id>"  # eight digits or more: an id
    )
    assert report.normalize_reason(
        "upstream https://cdn.example.com/a/b.png failed for 3f2b9c1e-0a4d-4c1b-9f00-1234567890ab"
    ) == ("upstream <url> failed for <id>")
    assert report.normalize_reason("hash deadbeef99 refused\n  twice") == "hash <id> refused twice"
    assert report.normalize_reason(None) == report.normalize_reason("  ") == "(no reason given)"
    assert len(report.normalize_reason("x" * 1000)) == 200


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=60))
def test_percentiles_equal_statistics_quantiles_exactly(values: list[int]) -> None:
    """p50 and p95 are the same floats as the standard library's inclusive quantiles."""
    ordered = sorted(values)
    if len(values) == 1:
        expected = [float(values[0])] * 2
    else:
        cuts = statistics.quantiles(values, n=20, method="inclusive")
        expected = [cuts[9], cuts[18]]
    assert [report.percentile(ordered, 50), report.percentile(ordered, 95)] == expected


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


def test_status_sums_up_the_archive_the_last_runs_and_the_last_error(archive: Store) -> None:
    """Tasks archived, gone and unfinished, the time since the last success, the last run
    of each kind, the last error, and the newest archived task."""
    seen = {"1", "2", "3", "5", "6", "7", "8"}
    archive.mark_gone("main", archive.missing_ids("main", seen), None, NOW, max_share=1.0)
    run(archive, "main", "backfill", NOW, at=NOW + timedelta(seconds=90), outcome="ok", inserted=8)
    error = "server http://mj.test/mj/task/query returned 502 " + "x" * 300
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
    run(
        archive, "main", "sync", NOW + timedelta(hours=2), at=NOW + timedelta(hours=2), outcome="ok"
    )
    later = NOW + timedelta(hours=2, minutes=45)
    found = status.gather(archive, ["main"])
    # 8 tasks; "4" (IN_PROGRESS) is gone, so of the unfinished only "8" (SUBMITTED) counts.
    assert status.render(found, later) == [
        "source main: 8 tasks archived (1 gone, 1 unfinished); last success 45m ago",
        "  last backfill ok          2h ago, 90.0s, +8 ~0 -0",
        "  last sync     ok          45m ago, 0.0s, +0 ~0 -0",
        "  last sweep    never",
        "  last error   105m ago: " + error[:200],
        "  newest task  archived 2026-01-03 00:00:00 UTC",
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
def test_status_says_how_long_since_the_last_success(
    sqlite_store: Store, after: timedelta, said: str
) -> None:
    """The time since the last successful run, in s, m, h or d."""
    run(sqlite_store, "main", "sync", NOW, at=NOW, outcome="ok")
    line = status.render(status.gather(sqlite_store, ["main"]), NOW + after)[0]
    assert line.endswith(f"last success {said} ago"), line


def test_status_without_names_lists_every_source(sqlite_store: Store) -> None:
    """With no names, every source that ran or has tasks; one that never succeeded says so."""
    run(sqlite_store, "a", "sync", NOW, at=NOW, outcome="ok")
    run(sqlite_store, "b", "sync", NOW, at=NOW, outcome="failed", error="boom")
    save(sqlite_store, "c", [task("1", "SUCCESS", JAN1)])
    lines = status.render(status.gather(sqlite_store, None), NOW + timedelta(seconds=5))
    assert sorted(line for line in lines if line.startswith("source ")) == [
        "source a: 0 tasks archived (0 gone, 0 unfinished); last success 5s ago",
        "source b: 0 tasks archived (0 gone, 0 unfinished); last success never",
        "source c: 1 tasks archived (0 gone, 0 unfinished); last success never",
    ]


def test_status_says_how_far_the_archive_lags_the_server(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """The server's newest task against the archive's: level after a backfill, behind by
    the arrivals' submit times after new tasks arrive; an unreachable server is said."""
    sim = Simulator(300, seed=8)
    src = source_for(serve(sim).url)
    with connect(src) as client:
        pipeline.backfill(sqlite_store, client, src)
    now = datetime.now(UTC)
    found = status.gather(sqlite_store, ["main"])
    found[0].server_newest, found[0].server_note = status.ask_server(sqlite_store, src)
    assert found[0].lag == timedelta(0)
    assert "level with the server" in status.render(found, now)[-1]
    archived_ms = sim.task(sim.newest(0, 1)[0])["submitTime"]
    sim.arrive(3)
    newest_ms = sim.task(sim.newest(0, 1)[0])["submitTime"]
    found[0].server_newest, _ = status.ask_server(sqlite_store, src)
    assert newest_ms > archived_ms
    assert found[0].lag == timedelta(milliseconds=newest_ms - archived_ms)
    assert status.render(found, now)[-1].endswith(f"{(newest_ms - archived_ms) // 1000}s behind")
    down = source_for("http://127.0.0.1:9", retry_budget_s=0.5)
    newest, note = status.ask_server(sqlite_store, down)
    assert newest is None and "127.0.0.1:9" in note


def test_report_command_formats_and_bad_input(run: Run, archive: Store, tmp_path: Path) -> None:
    """table, CSV and JSON carry the same rows; a bad zone, range, source or output path is
    one line and a non-zero exit."""
    url = archive.url.render_as_string(hide_password=False)
    code, out, err = run("--db", url, "report", "--source", "main")
    assert code == 0, err
    assert out.splitlines()[0] == (
        "tasksync report: days and hours in UTC; --tz changes it; tasks counted by submit time"
    )
    assert "2026-01-01 (all)" in out and "top failure reasons" in out
    code, out, _ = run("--db", url, "report", "--format", "csv")
    lines = out.splitlines()
    assert lines[0] == ",".join(report.COLUMNS)
    assert lines[1] == "main,2026-01-01,*,3,2,1,0,0,66.7,2.0,3.8,4.0,30.0,57.0,60.0"
    code, out, _ = run("--db", url, "report", "--format", "json", "--tz", "Europe/Berlin")
    doc = json.loads(out)
    assert doc["tz"] == "Europe/Berlin" and len(doc["rows"]) == len(lines) - 1
    assert doc["failure_reasons"]["main"] == {
        "top": [{"reason": "(no reason given)", "failed": 1}],
        "other": 0,
    }
    bad = {
        ("--tz", "Mars/Olympus"): "--tz: unknown time zone 'Mars/Olympus'",
        ("--since", "2026-02-01", "--until", "2026-01-01"): "--since must be before --until",
        ("--source", "nope"): "--source: the archive has no tasks of a source named 'nope'",
        (
            "--html",
            str(tmp_path / "no" / "such" / "dir.html"),
        ): f"--html {tmp_path}/no/such/dir.html",
    }
    for args, said in bad.items():
        code, out, err = run("--db", url, "report", *args)
        assert code != 0 and out == "" and len(err.strip().splitlines()) == 1, (args, err)
        assert err.startswith(f"tasksync: error: {said}"), err


def test_status_command_asks_the_server_unless_told_not_to(
    run: Run, tmp_path: Path, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    sim = Simulator(200, seed=1)
    cfg = write_config(tmp_path / "t.toml", f"sqlite:///{tmp_path}/a.db", serve(sim).url)
    assert run("--config", str(cfg), "db", "upgrade")[0] == 0
    assert run("--config", str(cfg), "backfill")[0] == 0
    code, out, err = run("--config", str(cfg), "status")
    assert code == 0, err
    assert "level with the server" in out and "last backfill ok" in out
    code, out, _ = run("--config", str(cfg), "status", "--no-server")
    assert code == 0 and "(server: not asked (--no-server))" in out
