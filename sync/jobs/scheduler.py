"""`tasksync run`: APScheduler wiring and signals, no business logic.

One job per source for the incremental sync and one for the sweep, from cron expressions (or
an interval), with max_instances=1, coalesce=True and an explicit misfire grace time. Each job
calls the pipeline; the database lock in the pipeline keeps other processes and hosts out.
With `[images] enabled`, one more job fetches task pictures on its own schedule.

Inside one daemon the runs of a source take turns (`Turns`) instead of meeting that lock: a
sweep that falls due while a sync of its source runs is started as soon as that run ends (or
in place of the next sync), never skipped; a sync tick that finds its source busy is
dropped, since the next one comes soon. Ticks that overlap a run are counted
(`tasksync_ticks_overlapped_total`) and logged once per source and kind, not once per tick.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from sync.archive.runs import RunReport
from sync.archive.store import Store
from sync.config import Settings, SourceSettings
from sync.console import log_run
from sync.errors import ConfigError, LockHeld, TasksyncError
from sync.jobs import pipeline
from sync.jobs.crontab import cron_fields, interval_seconds
from sync.jobs.metrics import Metrics
from sync.server.client import connect

log = logging.getLogger("tasksync.daemon")


class _NoMaxInstancesWarning(logging.Filter):
    """APScheduler warns on every tick that meets a job still running; the daemon says it
    once itself (see `Daemon._overlap`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def trigger(cron: str, every: str | None, tz: ZoneInfo) -> Any:
    """An interval trigger for `every`, else a cron trigger in the configured zone.

    Runs start with a little random jitter (half an interval, at most 10 s) so that replicas
    ticking on the same schedule take turns at a source instead of one always winning.
    """
    if every:
        seconds = interval_seconds(every)
        return IntervalTrigger(seconds=seconds, timezone=tz, jitter=min(seconds / 2, 10))
    try:
        return CronTrigger(**cron_fields(cron), timezone=tz, jitter=10)
    except ValueError as exc:
        raise ConfigError(f"bad cron expression {cron!r}: {exc}") from None


class Turns:
    """Whose turn it is at one source: at most one run at a time, and a sweep that fell due
    waits for the current run to end instead of being dropped."""

    def __init__(self) -> None:
        self.busy = threading.Lock()
        self._due = threading.Lock()
        self.sweep_due: float | None = None  # time.time() when a sweep fell due

    def want_sweep(self, at: float) -> None:
        with self._due:
            if self.sweep_due is None:
                self.sweep_due = at

    def take_sweep(self) -> float | None:
        """The due time of a pending sweep, now taken (None if none is pending)."""
        with self._due:
            due, self.sweep_due = self.sweep_due, None
            return due


class Daemon:
    """The scheduler, the jobs it runs and a graceful stop."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.archived: dict[str, int] = {}  # the tasks_archived gauge per source (_archived)
        self.active = 0
        self.syncing = 0  # task runs under way: the image job waits for them to end
        self.idle = threading.Condition()
        self.turns = {src.name: Turns() for src in settings.sources}
        self.overlap_said: set[tuple[str, str]] = set()
        sched = settings.schedule
        try:
            self.tz = ZoneInfo(sched.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"schedule.timezone: unknown time zone {sched.timezone!r}") from None
        if settings.images.enabled:
            from sync.images.job import require_folder

            require_folder(settings.images)  # said once, at start, not on every tick
        workers = max(2, 2 * len(settings.sources)) + (1 if settings.images.enabled else 0)
        self.scheduler = BlockingScheduler(
            timezone=self.tz, executors={"default": ThreadPoolExecutor(workers)}
        )
        self.scheduler.add_listener(self._crashed, EVENT_JOB_ERROR)
        self.scheduler.add_listener(self._missed, EVENT_JOB_MAX_INSTANCES)
        logging.getLogger("apscheduler.scheduler").addFilter(_NoMaxInstancesWarning())
        for src in settings.sources:
            common = dict(
                max_instances=1,
                coalesce=True,
                misfire_grace_time=sched.misfire_grace_s,
                replace_existing=True,
            )
            first = datetime.now(self.tz) if sched.run_at_start else None
            self.scheduler.add_job(
                self._job,
                trigger(src.sync or sched.sync, sched.every, self.tz),
                args=[src, "sync"],
                id=f"{src.name}:sync",
                next_run_time=first,
                **common,
            )
            # A sweep tick that comes while the previous sweep still runs must still land (it
            # marks the sweep due and returns at once), so the sweep job may start twice.
            self.scheduler.add_job(
                self._job,
                trigger(src.sweep or sched.sweep, sched.sweep_every, self.tz),
                args=[src, "sweep"],
                id=f"{src.name}:sweep",
                **{**common, "max_instances": 2},
            )
        if settings.images.enabled:
            # Its own job and thread, apart from the sources' turns: fetching pictures never
            # holds up a sync, and a slow image host only delays the next images run.
            self.scheduler.add_job(
                self._images,
                trigger(sched.images, sched.images_every, self.tz),
                id="images",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=sched.misfire_grace_s,
                replace_existing=True,
            )

    def _crashed(self, event: JobExecutionEvent) -> None:
        log.error("job %s crashed: %r", event.job_id, event.exception)

    def _missed(self, event: JobEvent) -> None:
        """APScheduler skipped a tick because the job's previous run is still going."""
        name, _, kind = event.job_id.rpartition(":")
        self._overlap(name, kind)

    def _overlap(self, name: str, kind: str) -> None:
        """A tick that found its source still busy: counted, and said once per source and
        kind (the schedule is tighter than the runs take), not once per tick."""
        self.metrics.overlap(name, kind)
        if (name, kind) not in self.overlap_said:
            self.overlap_said.add((name, kind))
            log.warning(
                "source %s: a %s tick came while a run of the source was still going; such "
                "ticks are skipped (the schedule is tighter than the runs take; counted in "
                "tasksync_ticks_overlapped_total, not logged again)",
                name,
                kind,
            )

    def _job(self, src: SourceSettings, kind: str) -> None:
        """One scheduled tick: run it, or leave it to the run in progress of the same source
        (a sweep stays due and is started as soon as that run ends)."""
        if self.stop.is_set():
            return
        turns = self.turns[src.name]
        if kind == "sweep":
            turns.want_sweep(time.time())
        with self.idle:
            self.active += 1
        try:
            while not self.stop.is_set():
                if not turns.busy.acquire(blocking=False):
                    if kind == "sync":
                        self._overlap(src.name, kind)
                    return  # a due sweep is taken by the run in progress when it ends
                try:
                    self._turn(src, kind, turns)
                finally:
                    turns.busy.release()
                # A sweep that fell due just as the source was let go is not left waiting.
                if turns.sweep_due is None:
                    return
                kind = "sweep"
        finally:
            with self.idle:
                self.active -= 1
                self.idle.notify_all()

    def _turn(self, src: SourceSettings, kind: str, turns: Turns) -> None:
        """While holding the source: a due sweep first (in place of a sync), then any sweep
        that fell due meanwhile."""
        todo: str | None = kind
        while not self.stop.is_set():
            due = turns.take_sweep()
            if due is not None:
                delay = max(0.0, time.time() - due)
                self.metrics.delay(src.name, "sweep", delay)
                if delay >= 1:
                    log.info(
                        "source %s: sweep started %.1f s after it fell due (a run of the source "
                        "was going)",
                        src.name,
                        delay,
                    )
                self._run(src, "sweep")
            elif todo == "sync":
                self._run(src, "sync")
            todo = None
            if turns.sweep_due is None:
                return

    def _archived(self, report: RunReport) -> int | None:
        """Tasks present in the archive, for the gauge: counted at a source's first run and
        after each sweep (which reads the whole list anyway); after a sync, the last count plus
        what it inserted or saw return (a sync never marks gone). Counting after every sync
        would make each one cost more as the archive grows: ~60-110 ms at 1M tasks on SQLite,
        more than the sync itself."""
        known = self.archived.get(report.source)
        if known is None or report.kind == "sweep":
            try:
                known = self.store.count_tasks(report.source, present_only=True)
            except TasksyncError:
                return None
        else:
            known += report.inserted + report.returned
        self.archived[report.source] = known
        return known

    def _run(self, src: SourceSettings, kind: str) -> None:
        with self.idle:
            self.syncing += 1
        try:
            with connect(src) as client:
                if kind == "sweep":
                    report = pipeline.sweep(
                        self.store, client, src, stop=self.stop, fetch_process=True
                    )
                else:
                    report = pipeline.incremental(self.store, client, src, stop=self.stop)
            log_run(report)
            self.metrics.observe(report, self._archived(report), time.time())
        except LockHeld as exc:
            log.info("source %s %s skipped: %s", src.name, kind, exc)
            self.metrics.failed(src.name, kind, "skipped")
        except TasksyncError as exc:
            log.error("source %s %s failed: %s", src.name, kind, exc)
            self.metrics.failed(src.name, kind, "failed")
        except Exception as exc:  # a bug must not stop the daemon either
            log.error(
                "source %s %s failed unexpectedly: %s: %s", src.name, kind, type(exc).__name__, exc
            )
            self.metrics.failed(src.name, kind, "failed")
        finally:
            with self.idle:
                self.syncing -= 1

    def _images(self) -> None:
        """One run of the image job over every source."""
        if self.stop.is_set():
            return
        from sync.images import job as images

        with self.idle:
            self.active += 1
        try:
            report = images.run(
                self.store,
                self.settings.images,
                images.sources_of(self.settings),
                stop=self.stop,
                yield_to=lambda: self.syncing > 0,  # never compete with a task sync
            )
            log.info("%s", report.line())
        except TasksyncError as exc:
            log.error("images failed: %s", exc)
        except Exception as exc:  # a bug must not stop the daemon either
            log.error("images failed unexpectedly: %s: %s", type(exc).__name__, exc)
        finally:
            with self.idle:
                self.active -= 1
                self.idle.notify_all()

    def _signal(self, signum: int, _frame: Any) -> None:
        log.info(
            "%s received: stopping (the current run finishes its page and commits)",
            signal.Signals(signum).name,
        )
        self.stop.set()
        threading.Thread(target=self.scheduler.shutdown, kwargs={"wait": False}).start()

    def run(self) -> None:
        """Block until SIGTERM/SIGINT, then wait (bounded) for the current runs to commit."""
        m = self.settings.metrics
        if m.port is not None:
            try:
                self.metrics.serve(m.host, m.port)
            except OSError as exc:
                raise ConfigError(
                    f"metrics: cannot listen on {m.host}:{m.port}: {exc.strerror}"
                ) from None
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._signal)
        names = ", ".join(s.name for s in self.settings.sources)
        log.info("daemon started (pid %d) for %s", os.getpid(), names)
        try:
            for warning in self.store.warnings():
                log.warning("%s", warning)
        except Exception as exc:  # a check, never a reason not to start
            log.debug("server settings not checked: %s", exc)
        self.scheduler.start()
        deadline = time.monotonic() + self.settings.schedule.shutdown_timeout_s
        with self.idle:
            while self.active and time.monotonic() < deadline:
                self.idle.wait(timeout=max(0.0, deadline - time.monotonic()))
        self.metrics.close()
        if self.active:
            log.warning(
                "%d run(s) still busy after %.0fs; exiting anyway",
                self.active,
                self.settings.schedule.shutdown_timeout_s,
            )
            logging.shutdown()
            os._exit(0)
        log.info("daemon stopped")
