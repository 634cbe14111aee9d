"""backfill, sync and sweep: plain functions taking (store, client, source, clock), and the
steps runs are made of (`_Run`).

Data flows one way: the client fetches (through its family's adapter), the read side
(`sync.server.reader`) prepares pages, the walker decides which page comes next, the store saves.
Every run is recorded in `sync_runs` (unless it is a dry run) and guarded by the source's
writer lock. What a run can promise depends on the family (`sync.server.families.base.Guarantees`):
paged lists are walked with drift repair where the order allows it, a whole list is read as
one stream, and relays without a list refresh the ids they are given.

What a run needs besides: the source's family (`family`), a relay's ids (`ids`); how a list is
walked and when it never ends (`sync.server.walk`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sync.archive import sources
from sync.archive.runs import RunReport, SaveResult
from sync.archive.store import ResumePoint, Store
from sync.config import SourceSettings
from sync.errors import BadResponse, ConfigError, HTTPStatusError, TasksyncError
from sync.jobs.family import family_of
from sync.jobs.ids import wanted_ids
from sync.server.client import BY_IDS_MAX, Client
from sync.server.families.base import Family
from sync.server.families.ids import NO_LIST
from sync.server.reader import PageReader
from sync.server.walk import Cursor, Runaway, WalkStats, WholeRunaway, id_key, walk
from sync.tasks.records import task_id

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
    body: Callable[[RunReport, Family], None],
    *,
    dry_run: bool = False,
) -> RunReport:
    """Lock the source, record the run, run `body`, record the outcome (also on failure)."""
    report = RunReport(source=src.name, kind=kind, dry_run=dry_run)
    t0 = time.monotonic()
    req0, ret0 = client.requests, client.retries

    def run() -> None:
        family = family_of(store, client, src, clock(), remember=not dry_run)
        report.api = family.name
        try:
            body(report, family)
        except (BadResponse, HTTPStatusError):
            # A reply that no longer fits the family: for `auto`, probe again next time.
            if src.api == "auto" and not dry_run:
                sources.forget(store, src.name)
            raise
        finally:
            report.notes.extend(family.notes())

    if dry_run:
        try:
            run()
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
            run()
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


# ---- the three runs -------------------------------------------------------------------------


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
    ids: Iterable[str] = (),
) -> RunReport:
    """Everything the server lists into the archive: a walk of a paged list, resumable from
    its checkpoint; the whole list of a family that serves it at once; for a relay without a
    list, the ids given (`ids`, or the source's `ids_query`).

    `fetch_process`: a long walk may move its reading to a fetch process (sync.server.reader), as
    the command line and the daemon allow. It stamps pages with the real time, so leave it
    off with a test's clock."""

    given = list(ids)

    def body(report: RunReport, family: Family) -> None:
        _ids_only_for_relays(src, family, given)
        run = _Run(store, client, src, clock, report, stop, False)
        if not family.guarantees.paged:
            if family.name == "ids":
                run.refresh(wanted_ids(store, src, given))
            else:
                run.whole(progress)
            return
        if restart:
            store.clear_checkpoint(src.name, "backfill")
        saved = store.checkpoint(src.name, "backfill")
        start = Cursor(saved.page, saved.last_id, saved.total) if saved else None
        if start:
            report.notes.append(f"resumed at page {start.page} after {start.last_id}")
        run.walk(start, fetch_process, progress, checkpoint=True)
        if start:
            # Tasks that arrived while the backfill was stopped sit above where it began.
            run.head_pass()
        store.clear_checkpoint(src.name, "backfill")

    return run_recorded(store, client, src, "backfill", clock, body)


def incremental(
    store: Store,
    client: Client,
    src: SourceSettings,
    clock: Clock = utcnow,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    ids: Iterable[str] = (),
) -> RunReport:
    """What is new, plus a re-check of the unfinished tasks that are due (those the server
    stopped returning are asked again with backoff): the head of a paged list, the whole list
    of a family that serves it at once, or a relay's given ids."""

    given = list(ids)

    def body(report: RunReport, family: Family) -> None:
        _ids_only_for_relays(src, family, given)
        run = _Run(store, client, src, clock, report, stop, dry_run)
        due = store.recheck_due(src.name, clock())
        if family.name == "ids":
            run.refresh(wanted_ids(store, src, given))
        elif not family.guarantees.paged:
            run.whole(None)
        elif family.guarantees.by_ids:
            run.head_pass()
        else:
            # No list-by-condition: read on down to the oldest unfinished task that is due.
            run.moved = set()
            run.head_pass(down_to=_oldest_key(store, src, due, run.seen))
        run.recheck(due, family.guarantees.by_ids)

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
    """A complete read of the list; what it no longer holds is marked gone when the family
    can prove it (a sound drift-checked walk, the whole list at once, or a confirmation by
    id). A relay without a list refreshes every archived task and marks nothing gone.
    (`fetch_process` as for `backfill`.)"""

    def body(report: RunReport, family: Family) -> None:
        run = _Run(store, client, src, clock, report, stop, dry_run)
        g = family.guarantees
        if family.name == "ids":
            run.refresh(store.iter_present_ids(src.name))
            report.notes.append("nothing marked gone: a relay has no list to compare with")
            return
        stats = run.whole(None) if not g.paged else run.walk(None, fetch_process, None)
        sound = stats.complete and not stats.unrepaired and (stats.verified or g.gone != "walk")
        if g.gone == "never" or not sound:
            why = (
                "drift could not be repaired"
                if stats.unrepaired
                else "the list is not sorted or has no total"
                if stats.complete
                else "the walk did not complete"
            )
            report.notes.append(f"nothing marked gone: {why}")
            log.warning("source %s: sweep marks nothing gone: %s", src.name, why)
            return
        missing = store.missing_ids(src.name, run.seen)
        if g.gone == "confirm" and missing:
            missing = run.confirm_gone(missing)
        report.gone = store.mark_gone(
            src.name,
            missing,
            report.run_id,
            clock(),
            max_share=src.mass_gone_share,
            allow_mass=allow_mass_gone,
            dry_run=dry_run,
        )
        if not dry_run:
            store.touch_seen(src.name, clock())

    return run_recorded(store, client, src, "sweep", clock, body, dry_run=dry_run)


def _ids_only_for_relays(src: SourceSettings, family: Family, given: list[str]) -> None:
    if given and family.name != "ids":
        raise ConfigError(
            f"source {src.name!r}: --ids-from is for servers without a task list "
            f"(api = ids); this one is {family.name}, whose list is read instead"
        )


def _oldest_key(
    store: Store, src: SourceSettings, due: dict[str, bool], seen: set[str]
) -> str | None:
    """The walk key (new-api's row id) of the oldest unfinished task due for a re-check."""
    keys = [k for k in store.walk_keys(src.name, [i for i in due if i not in seen]) if k]
    return min(keys, key=id_key) if keys else None


# ---- what runs are made of --------------------------------------------------------------------


class _Run:
    """One run's working state: what it has seen, and the steps runs are built from."""

    def __init__(
        self,
        store: Store,
        client: Client,
        src: SourceSettings,
        clock: Clock,
        report: RunReport,
        stop: threading.Event | None,
        dry_run: bool,
    ) -> None:
        self.store, self.client, self.src, self.clock = store, client, src, clock
        self.report, self.stop, self.dry_run = report, stop, dry_run
        self.seen: set[str] = set()
        # Tasks seen new, changed or returned: kept only by a sync that re-checks unfinished
        # tasks on its pages (no list-by-condition); a walk of millions keeps no such set.
        self.moved: set[str] | None = None

    def save(self, tasks: Sequence[Any], ids: list[str | None] | None = None) -> SaveResult:
        """Save tasks not already handled in this run (so dry-run counts are not doubled).
        `ids`: the tasks' ids, when the caller has them already."""
        shape = self.client.shape
        if ids is None:
            ids = [task_id(t, shape) for t in tasks]
        fresh = [t for t, i in zip(tasks, ids, strict=True) if i not in self.seen]
        batch = self.store.prepare(self.src.name, fresh, self.clock(), shape=shape)
        res = self.store.save(batch, self.report.run_id, dry_run=self.dry_run)
        self.report.add(res)
        self.seen.update(res.statuses)
        # Listed is listed, even when this version of a task was rejected: a sweep must not
        # mark it gone.
        self.seen.update(i for i in ids if i is not None)
        if self.moved is not None:
            self.moved.update(res.moved)
        return res

    def walk(
        self,
        start: Cursor | None,
        fetch_process: bool,
        progress: Progress | None,
        *,
        checkpoint: bool = False,
    ) -> WalkStats:
        """A drift-aware walk of a paged list, every page saved (with the checkpoint, for a
        backfill); tasks seen twice (drift) are counted once."""
        store, src, report = self.store, self.src, self.report
        stats = WalkStats()
        pages = PageReader(
            self.client,
            src,
            store.binder,
            self.clock,
            process=fetch_process,
            bind_in_child=store.dialect != "sqlite",
        )
        try:
            last_checkpoint = time.monotonic()
            for page, cursor in walk(pages, start, stats, where=f"source {src.name}"):
                if not checkpoint:
                    fresh = {k: v for k, v in page.batch.records.items() if k not in self.seen}
                    if len(fresh) < len(page.batch.records):  # repeats: count each task once
                        page.batch.records = fresh
                    res = store.save(page.batch, report.run_id, dry_run=self.dry_run)
                else:
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
                if not checkpoint:  # a sweep: what it saw decides what is gone
                    self.seen.update(page.ids)
                if progress:
                    progress(report.pages, report.tasks_seen, page.total)
                _check(self.stop)
        finally:
            pages.close()
        if stats.repairs:
            report.notes.append(f"{stats.repairs} drift repairs")
        return stats

    def whole(self, progress: Progress | None) -> WalkStats:
        """The whole list of a family that serves it at once, batch by batch; a list that
        never ends stops with one line (`walk.WholeRunaway`), and nothing is marked gone."""
        shape = self.client.shape
        runaway = WholeRunaway(f"source {self.src.name}")
        for tasks in self.client.whole_list():
            self.report.pages += 1
            ids = [task_id(t, shape) for t in tasks]
            runaway.check({i for i in ids if i is not None}, self.seen)
            self.save(tasks, ids)
            if progress:
                progress(self.report.pages, self.report.tasks_seen, None)
            _check(self.stop)
        return WalkStats(verified=True, complete=True)

    def head_pass(self, down_to: str | None = None) -> None:
        """Read the newest pages until `head_margin` archived tasks follow the newest new one
        (and, with `down_to`, until the walk keys pass that one).

        The margin absorbs out-of-order ids from several server instances; the request count
        depends on how many tasks are new, never on the archive's size."""
        src, report = self.src, self.report
        known_run = 0
        page_no = 0
        runaway = Runaway(f"source {src.name}")
        while True:
            page = self.client.query_page(page_no, src.page_size)
            report.pages += 1
            ids, keys = page.ids, page.keys
            runaway.check(page_no, page.total, keys)
            res = self.save(page.tasks)
            for tid in ids:
                known_run = 0 if tid in res.new_ids else known_run + 1
            _check(self.stop)
            deeper = down_to is not None and bool(keys) and id_key(keys[-1]) > id_key(down_to)
            if page.last or not ids or (known_run >= src.head_margin and not deeper):
                return
            page_no += 1

    def recheck(self, due: dict[str, bool], by_ids: bool) -> None:
        """Unfinished tasks due for a re-check and not seen yet in this run: asked for by id
        (families with list-by-condition), and those not returned are asked again after a
        backoff; only a sweep marks them gone.

        Without list-by-condition the head pass reads down to the oldest due task, so a task
        stuck unfinished would make every sync read deep: one met unchanged and unfinished
        backs off as a miss does, and one not met at all waits the same way."""
        src, store = self.src, self.store
        pending = [i for i in due if i not in self.seen]
        missed = 0
        if not by_ids:
            moved = self.moved or set()
            stuck = [i for i in due if i in self.seen and i not in moved]
            back = [i for i in due if i in moved and due[i]]
            missing = pending + stuck
            if (missing or back) and not self.dry_run:
                store.note_rechecks(src.name, back, missing, self.clock())
            missed = len(pending)
        for n in range(0, len(pending) if by_ids else 0, BY_IDS_MAX):
            batch = pending[n : n + BY_IDS_MAX]
            tasks = self.client.list_by_ids(batch)
            self.save(tasks)
            got = {task_id(t, self.client.shape) for t in tasks}
            missing = [t for t in batch if t not in got]
            back = [t for t in batch if t in got and due[t]]
            missed += len(missing)
            if (missing or back) and not self.dry_run:
                store.note_rechecks(src.name, back, missing, self.clock())
            _check(self.stop)
        if missed:
            self.report.notes.append(
                f"{missed} unfinished tasks not returned; asked again after a backoff, and "
                "only a sweep marks them gone"
            )

    def refresh(self, ids: Iterable[str]) -> None:
        """Ask for these ids in batches of 100 (a relay's whole job); ids not returned are
        said, never marked gone."""
        batch: list[str] = []
        missing = 0

        def flush() -> int:
            tasks = self.client.list_by_ids(batch)
            self.report.pages += 1
            self.save(tasks)
            got = {task_id(t, self.client.shape) for t in tasks}
            _check(self.stop)
            return sum(1 for t in batch if t not in got)

        for tid in ids:
            batch.append(tid)
            if len(batch) == BY_IDS_MAX:
                missing += flush()
                batch = []
        if batch:
            missing += flush()
        if not self.report.pages and self.report.kind != "sweep":
            self.report.notes.append(NO_LIST)
        if missing:
            self.report.notes.append(f"{missing} of the ids asked for are not on the server")

    def confirm_gone(self, candidates: list[str]) -> list[str]:
        """Of tasks a complete walk did not see, those list-by-condition does not return
        either: gone. Those it does return are saved (the walk missed them)."""
        gone: list[str] = []
        for n in range(0, len(candidates), BY_IDS_MAX):
            batch = candidates[n : n + BY_IDS_MAX]
            tasks = self.client.list_by_ids(batch)
            self.save(tasks)
            got = {task_id(t, self.client.shape) for t in tasks}
            gone += [t for t in batch if t not in got]
            _check(self.stop)
        return gone
