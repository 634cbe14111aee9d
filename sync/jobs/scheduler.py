"""`tasksync run`: APScheduler wiring and signals.

One job per source for the incremental sync and one for the sweep, from cron expressions (or
an interval), with max_instances=1, coalesce=True and an explicit misfire grace time. Each job
calls the pipeline; the database lock in the pipeline keeps other processes and hosts out.
With `[images] enabled`, one more job fetches task pictures on its own schedule. SIGTERM and
SIGINT stop the scheduler; the runs under way finish their page and commit.

What is decided elsewhere: whose turn it is at a source (`turns`), what the metrics say
(`metrics`), schedule expressions (`crontab`), what a run does (`pipeline`).
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

from sync.archive.store import Store
from sync.config import Settings, SourceSettings
from sync.console import log_run
from sync.errors import ConfigError, LockHeld, TasksyncError
from sync.jobs import pipeline
from sync.jobs.crontab import cron_fields, interval_seconds
from sync.jobs.metrics import Archived, Metrics
from sync.jobs.turns import Turns
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


class Daemon:
    """The scheduler, the jobs it runs and a graceful stop."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.archived = Archived(lambda source: store.count_tasks(source, present_only=True))
        self.active = 0
        self.syncing = 0  # task runs under way: the image job waits for them to end
        self.idle = threading.Condition()
        self.turns = {src.name: Turns(src.name) for src in settings.sources}
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
        """One scheduled tick: its source's turn, taken or left (see `Turns.tick`)."""
        if self.stop.is_set():
            return
        with self.idle:
            self.active += 1
        try:
            self.turns[src.name].tick(
                kind,
                lambda todo: self._run(src, todo),
                self.stop,
                overlapped=lambda: self._overlap(src.name, kind),
                waited=lambda delay: self.metrics.delay(src.name, "sweep", delay),
            )
        finally:
            with self.idle:
                self.active -= 1
                self.idle.notify_all()

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
            self.metrics.observe(report, self.archived.after(report), time.time())
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
                images.sources_of(self.settings.sources),
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
