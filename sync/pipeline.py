"""backfill, sync and sweep: plain functions taking (store, client, source, clock).

Data flows one way: the client fetches pages, the read side (`sync.reader`) prepares them, the
walker decides which page comes next, the store saves. Every run is recorded in `sync_runs`
(unless it is a dry run) and guarded by the source's writer lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sync.client import BY_IDS_MAX, Client
from sync.config import SourceSettings
from sync.errors import TasksyncError
from sync.reader import PageReader
from sync.records import task_id
from sync.runs import RunReport, SaveResult
from sync.store import ResumePoint, Store
from sync.walk import Cursor, Runaway, WalkStats, walk

log = logging.getLogger("tasksync.pipeline")

Clock = Callable[[], datetime]
CHECKPOINT_EVERY_S = 2.0
Progress = Callable[[int, int, int | None], None]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Interrupted(Exception):
    """A stop was requested; the run ends after the page it was on."""


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Interrupted


def run_recorded(
    store: Store,
    client: Client,
    src: SourceSettings,
    kind: str,
    clock: Clock,
    body: Callable[[RunReport], None],
    *,
    dry_run: bool = False,
) -> RunReport:
    """Lock the source, record the run, run `body`, record the outcome (also on failure)."""
    report = RunReport(source=src.name, kind=kind, dry_run=dry_run)
    t0 = time.monotonic()
    req0, ret0 = client.requests, client.retries
    if dry_run:
        try:
            body(report)
            report.outcome = "ok"
        except Interrupted:
            report.outcome = "interrupted"
        finally:
            report.requests, report.retries = client.requests - req0, client.retries - ret0
            report.duration_s = time.monotonic() - t0
        return report
    with store.lock(src.name, clock()):
        report.run_id = store.start_run(src.name, kind, clock())
        try:
            body(report)
            report.outcome = "ok"
        except Interrupted:
            report.outcome = "interrupted"
        except TasksyncError as exc:
            report.outcome, report.error = "failed", str(exc)
            raise
        except Exception as exc:
            report.outcome, report.error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            report.requests, report.retries = client.requests - req0, client.retries - ret0
            report.duration_s = time.monotonic() - t0
            try:
                store.finish_run(report, clock())
            except Exception as exc:  # the database may be what failed; keep the first error
                log.warning(
                    "source %s: could not record the run's outcome: %s",
                    src.name,
                    store.db_error(exc, "recording the outcome"),
                )
    return report


def _reader(
    store: Store, client: Client, src: SourceSettings, clock: Clock, fetch_process: bool
) -> PageReader:
    return PageReader(
        client,
        src,
        store.binder,
        clock,
        process=fetch_process,
        bind_in_child=store.dialect != "sqlite",
    )


def backfill(
    store: Store,
    client: Client,
    src: SourceSettings,
    clock: Clock = utcnow,
    *,
    restart: bool = False,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    fetch_process: bool = False,
) -> RunReport:
    """A complete walk of everything the server lists, resumable from its checkpoint.

    `fetch_process`: a long walk may move its reading to a fetch process (sync.reader), as
    the command line and the daemon allow. It stamps pages with the real time, so leave it
    off with a test's clock."""

    def body(report: RunReport) -> None:
        if restart:
            store.clear_checkpoint(src.name, "backfill")
        saved = store.checkpoint(src.name, "backfill")
        start = Cursor(saved.page, saved.last_id, saved.total) if saved else None
        if start:
            report.notes.append(f"resumed at page {start.page} after id {start.last_id}")
        stats = WalkStats()
        pages = _reader(store, client, src, clock, fetch_process)
        try:
            last_checkpoint = time.monotonic()
            for page, cursor in walk(pages, start, stats, where=f"source {src.name}"):
                at = ResumePoint("backfill", cursor.page, cursor.last_id, cursor.total)
                # Pages that change nothing move the checkpoint only every few seconds: a
                # re-walk of an unchanged archive then writes (almost) nothing.
                due = time.monotonic() - last_checkpoint >= CHECKPOINT_EVERY_S
                res = store.save(
                    page.batch, report.run_id, checkpoint=at, checkpoint_if_unchanged=due
                )
                if due or res.inserted + res.changed + res.returned:
                    last_checkpoint = time.monotonic()
                report.pages += 1
                report.add(res)
                pages.saw(res)
                if progress:
                    progress(report.pages, report.tasks_seen, page.total)
                _check(stop)
        finally:
            pages.close()
        if start:
            # Tasks that arrived while the backfill was stopped sit above where it began.
            _head_pass(store, client, src, report, set(), clock, False, stop)
        store.clear_checkpoint(src.name, "backfill")
        if stats.repairs:
            report.notes.append(f"{stats.repairs} drift repairs")

    return run_recorded(store, client, src, "backfill", clock, body)


def _save_unseen(
    store: Store,
    src: SourceSettings,
    tasks: list[Any],
    seen: set[str],
    report: RunReport,
    clock: Clock,
    dry_run: bool,
) -> SaveResult:
    """Save tasks not already handled in this run (so dry-run counts are not doubled)."""
    fresh = [t for t in tasks if task_id(t) not in seen]
    res = store.save(store.prepare(src.name, fresh, clock()), report.run_id, dry_run=dry_run)
    report.add(res)
    seen.update(res.statuses)
    return res


def _head_pass(
    store: Store,
    client: Client,
    src: SourceSettings,
    report: RunReport,
    seen: set[str],
    clock: Clock,
    dry_run: bool,
    stop: threading.Event | None,
) -> None:
    """Read the newest pages until `head_margin` archived tasks follow the newest new one.

    The margin absorbs out-of-order ids from several server instances; the request count
    depends on how many tasks are new, never on the archive's size.
    """
    known_run = 0
    page_no = 0
    runaway = Runaway(f"source {src.name}")
    while True:
        page = client.query_page(page_no, src.page_size)
        report.pages += 1
        ids = page.ids
        runaway.check(page_no, page.total, ids)
        res = _save_unseen(store, src, page.tasks, seen, report, clock, dry_run)
        for tid in ids:
            known_run = 0 if tid in res.new_ids else known_run + 1
        _check(stop)
        if page.last or not ids or known_run >= src.head_margin:
            return
        page_no += 1


def incremental(
    store: Store,
    client: Client,
    src: SourceSettings,
    clock: Clock = utcnow,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
) -> RunReport:
    """New tasks from the head of the list, plus a re-check of the unfinished tasks that are
    due (those list-by-condition stopped returning are asked again with backoff)."""

    def body(report: RunReport) -> None:
        seen: set[str] = set()
        _head_pass(store, client, src, report, seen, clock, dry_run, stop)
        due = store.recheck_due(src.name, clock())
        pending = [i for i in due if i not in seen]
        not_returned = 0
        for i in range(0, len(pending), BY_IDS_MAX):
            batch = pending[i : i + BY_IDS_MAX]
            tasks = client.list_by_ids(batch)
            _save_unseen(store, src, tasks, seen, report, clock, dry_run)
            got = {task_id(t) for t in tasks}
            missing = [t for t in batch if t not in got]
            back = [t for t in batch if t in got and due[t]]
            not_returned += len(missing)
            if (missing or back) and not dry_run:
                store.note_rechecks(src.name, back, missing, clock())
            _check(stop)
        if not_returned:
            report.notes.append(
                f"{not_returned} unfinished tasks not returned by list-by-condition; "
                "asked again after a backoff, and only a sweep marks them gone"
            )

    return run_recorded(store, client, src, "sync", clock, body, dry_run=dry_run)


def sweep(
    store: Store,
    client: Client,
    src: SourceSettings,
    clock: Clock = utcnow,
    *,
    dry_run: bool = False,
    allow_mass_gone: bool = False,
    stop: threading.Event | None = None,
    fetch_process: bool = False,
) -> RunReport:
    """A full drift-aware walk; after a sound one, tasks no longer listed are marked gone.
    (`fetch_process` as for `backfill`.)"""

    def body(report: RunReport) -> None:
        seen: set[str] = set()
        stats = WalkStats()
        pages = _reader(store, client, src, clock, fetch_process)
        try:
            for page, _cursor in walk(pages, None, stats, where=f"source {src.name}"):
                report.pages += 1
                fresh = {k: v for k, v in page.batch.records.items() if k not in seen}
                if len(fresh) < len(page.batch.records):  # repeats: count each task once
                    page.batch.records = fresh
                res = store.save(page.batch, report.run_id, dry_run=dry_run)
                report.add(res)
                pages.saw(res)
                seen.update(page.ids)
                _check(stop)
        finally:
            pages.close()
        if stats.repairs:
            report.notes.append(f"{stats.repairs} drift repairs")
        if not stats.complete or stats.unrepaired or not stats.verified:
            why = (
                "drift could not be repaired"
                if stats.unrepaired
                else "the list is not sorted by id or has no totalElements"
            )
            report.notes.append(f"nothing marked gone: {why}")
            log.warning("source %s: sweep marks nothing gone: %s", src.name, why)
            return
        report.gone = store.mark_gone(
            src.name,
            seen,
            report.run_id,
            clock(),
            max_share=src.mass_gone_share,
            allow_mass=allow_mass_gone,
            dry_run=dry_run,
        )
        if not dry_run:
            store.touch_seen(src.name, clock())

    return run_recorded(store, client, src, "sweep", clock, body, dry_run=dry_run)
