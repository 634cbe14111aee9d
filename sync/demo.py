"""`tasksync demo`: the whole pipeline against the built-in simulator, offline, in seconds."""

from __future__ import annotations

import time
from pathlib import Path

import click

from sync.archive import schema
from sync.archive.store import Store
from sync.config import SourceSettings
from sync.console import ProgressDisplay
from sync.errors import ConfigError
from sync.jobs import pipeline
from sync.server.client import connect
from sync.simulator import Simulator, SimulatorServer
from sync.views.report import ALL, build_report, status_history
from sync.views.report_html import render_html


def run_demo(path: Path, tasks: int, api: str = "plus") -> None:
    """Start the simulator (playing the `api` family), archive it into a fresh SQLite file
    with `api = "auto"`, sync, show answers."""
    t0 = time.monotonic()
    _refuse_to_replace(path)
    for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    # Spread the tasks over the last 30 days so the daily answers have several days.
    gap = max(1000, 30 * 86_400_000 // max(tasks, 1))
    sim = Simulator(tasks, seed=42, gap_ms=gap, api=api)
    with SimulatorServer(sim) as server:
        src = SourceSettings(
            name="demo", base_url=server.url, api="auto", max_requests_per_second=1000
        )
        # A relay has no list: the demo plays its user, who knows which ids it submitted.
        ids = sim.listing() if api == "ids" else []
        store = Store(f"sqlite:///{path}")
        schema.upgrade(store)
        click.echo(f"simulator at {server.url} with {tasks} tasks; archive {path}")
        with connect(src) as client:
            with ProgressDisplay("backfill demo") as progress:
                first = pipeline.backfill(
                    store, client, src, progress=progress, fetch_process=True, ids=ids
                )
            click.echo(
                f"backfill ({first.api}): {first.inserted} tasks in {first.pages} pages, "
                f"{first.requests} requests, {first.duration_s:.1f}s"
            )
            # The server moves on: new tasks arrive and progress. (Only they: a task left
            # unfinished weeks ago that started now would queue for weeks in the report.)
            new = sim.arrive(25)
            arrived = [i for i in map(sim.index_of, new) if i is not None]
            watched = arrived[0]
            for _ in range(3):
                for i in arrived:
                    sim.advance(i)
                sim.advance(watched)
                again = pipeline.incremental(store, client, src, ids=new if ids else ())
                click.echo(
                    f"sync: {again.inserted} new, {again.changed} changed, "
                    f"{again.requests} requests, {again.duration_s:.2f}s"
                )
        report = build_report(store, source="demo")
        # The newest day with a fair number of finished tasks (today may hold a handful).
        ran = {r.period: r.run.n for r in report.rows if r.action == ALL and r.run.n}
        last_day = max([d for d, n in ran.items() if n >= 10] or ran, default=None)
        if last_day is not None:
            click.echo(f"\nMedian queue and run time on {last_day} (UTC), by action:")
        for r in report.rows:
            if r.period == last_day and r.action != ALL and r.run.n:
                queue, run = (r.queue.p50 or 0) / 1000, (r.run.p50 or 0) / 1000
                click.echo(
                    f"  {r.period} {r.action:<10} {r.run.n:>4} tasks  "
                    f"queue {queue:>5.1f}s  run {run:>5.1f}s"
                )
        click.echo("\nFailure rate, last 5 days:")
        days = [r for r in report.rows if r.action == ALL and r.succeeded + r.failed + r.cancelled]
        for r in days[-5:]:
            finished = r.succeeded + r.failed + r.cancelled
            click.echo(
                f"  {r.period}  {r.failed:>3} of {finished:>4} failed "
                f"({100 * r.failed / finished:.1f}%)"
            )
        html = path.with_suffix(".html")
        html.write_text(render_html(report), encoding="utf-8")
        tid = sim.task_id(watched)
        click.echo(f"\nStatus history of task {tid}:")
        for e in status_history(store, "demo", tid):
            click.echo(
                f"  {e['observed_at']:%H:%M:%S} {e['kind']:<8} "
                f"{e['previous_status'] or '-':>11} → {e['status']} ({e['progress']})"
            )
        store.dispose()
    click.echo(
        f"\ndone in {time.monotonic() - t0:.1f}s. Charts: {html}. Explore: "
        f'tasksync --db sqlite:///{path} query "SELECT * FROM daily_stats LIMIT 5"'
    )


def _refuse_to_replace(path: Path) -> None:
    """The demo recreates its file: never one that holds anything but an earlier demo (an
    archive given by mistake, or any other file), and never its own report page."""
    if path.suffix == ".html" or path.is_dir():
        raise ConfigError(
            f"--path {path}: a SQLite file name is needed (the report goes beside it)"
        )
    try:
        head = path.read_bytes()[:16] if path.stat().st_size else b""
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"--path {path}: {exc.strerror or exc}") from None
    if not head:
        return
    if head != b"SQLite format 3\x00":
        raise ConfigError(f"--path {path}: not a demo archive (not SQLite), not replaced")
    import sqlite3

    con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        sources = {r[0] for r in con.execute("SELECT DISTINCT source FROM tasks")}
    except sqlite3.DatabaseError:  # no tasks table: only an empty file is the demo's
        empty = not con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        sources = set() if empty else {"?"}
    finally:
        con.close()
    if sources - {"demo"}:
        raise ConfigError(f"--path {path}: not a demo archive (it holds other data), not replaced")
