"""Turn-taking at one source inside one daemon (`Turns`): at most one run at a time, instead
of runs meeting the source's database lock. A sweep that falls due while a run of its source
is going is started as soon as that run ends (or in place of the next sync), never skipped; a
sync tick that finds its source busy is dropped, since the next one comes soon, and said to
the caller (the daemon counts such ticks once per tick and logs them once per source).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("tasksync.daemon")


class Turns:
    """Whose turn it is at one source: at most one run at a time, and a sweep that fell due
    waits for the current run to end instead of being dropped."""

    def __init__(self, source: str) -> None:
        self.source = source
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

    def tick(
        self,
        kind: str,
        run: Callable[[str], None],
        stop: threading.Event,
        *,
        overlapped: Callable[[], None],
        waited: Callable[[float], None],
    ) -> None:
        """One scheduled tick of `kind` ("sync" or "sweep"): `run` it, or leave it to the run
        in progress of the same source (a sweep stays due and is started as soon as that run
        ends; a sync is dropped, and `overlapped` told). `waited` hears how long a due sweep
        waited for its turn."""
        if kind == "sweep":
            self.want_sweep(time.time())
        while not stop.is_set():
            if not self.busy.acquire(blocking=False):
                if kind == "sync":
                    overlapped()
                return  # a due sweep is taken by the run in progress when it ends
            try:
                self._turn(kind, run, stop, waited)
            finally:
                self.busy.release()
            # A sweep that fell due just as the source was let go is not left waiting.
            if self.sweep_due is None:
                return
            kind = "sweep"

    def _turn(
        self,
        kind: str,
        run: Callable[[str], None],
        stop: threading.Event,
        waited: Callable[[float], None],
    ) -> None:
        """While holding the source: a due sweep first (in place of a sync), then any sweep
        that fell due meanwhile."""
        todo: str | None = kind
        while not stop.is_set():
            due = self.take_sweep()
            if due is not None:
                delay = max(0.0, time.time() - due)
                waited(delay)
                if delay >= 1:
                    log.info(
                        "source %s: sweep started %.1f s after it fell due (a run of the source "
                        "was going)",
                        self.source,
                        delay,
                    )
                run("sweep")
            elif todo == "sync":
                run("sync")
            todo = None
            if self.sweep_due is None:
                return
