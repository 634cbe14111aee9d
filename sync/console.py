"""What a person sees: logging (text or JSON lines), the one log line per run, progress bars,
query results rendered as table, CSV or JSON, and Ctrl-C / SIGTERM handling for a run.

Used by the command line, the daemon and the demo; nothing here decides what a run does.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sync.archive.runs import COUNTERS, RunReport
from sync.errors import printable

log = logging.getLogger("tasksync")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created).astimezone().isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        return json.dumps(doc, default=str, ensure_ascii=False)


def setup_logging(verbose: int, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    # httpx logs every request at INFO; URLs are fine, but keep the noise for -vv.
    for name in ("httpx", "httpcore", "apscheduler", "alembic"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set an event; the run finishes its page, commits and stops."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second signal: the user really means it
            raise KeyboardInterrupt
        log.info(
            "%s received: finishing the current page, then stopping", signal.Signals(signum).name
        )
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def log_run(report: RunReport) -> None:
    """One line per run, text or JSON (the fields go into the JSON record)."""
    names = ("source", "kind", "outcome", "api", *(c for c in COUNTERS if c != "tasks_seen"))
    fields = {k: getattr(report, k) for k in names}
    fields["duration_s"] = round(report.duration_s, 2)
    if report.dry_run:
        fields["dry_run"] = True
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    if report.error:
        text += f" error={report.error!r}"
    for note in report.notes:
        text += f" ({note})"
    log.info("run %s", text, extra={"fields": fields})


class ProgressDisplay:
    """A rich progress bar on a terminal; a plain log line every few seconds otherwise."""

    def __init__(self, label: str, unit: str = "tasks") -> None:
        self.label = label
        self.unit = unit
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.last_log = 0.0

    def __enter__(self) -> ProgressDisplay:
        if self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(f"{self.unit} · {{task.fields[pages]}} pages"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=None, pages=0)
        return self

    def __call__(self, pages: int, tasks: int, total: int | None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=tasks, total=total, pages=pages)
            return
        now = time.monotonic()
        if now - self.last_log >= 5 or pages == 1:
            self.last_log = now
            of = f" of about {total}" if total is not None else ""
            log.info("%s: %d pages, %d %s%s", self.label, pages, tasks, self.unit, of)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextmanager
def reader_may_leave() -> Iterator[None]:
    """Output piped into `head` and the like: when the reader has all it wanted and closes
    the pipe, stop writing and exit 0 quietly (no traceback, no error line)."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()


def silence_stdout() -> None:
    """Output that can no longer be written (a reader gone, a full disk): Python flushes
    stdout again at exit, so point it at /dev/null to keep that flush quiet."""
    with suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _cell(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


def _unique(cols: list[str]) -> list[str]:
    """Column names as JSON keys: a repeated name gets a suffix (`a`, `a_2`, ...) that no
    other column has, instead of silently replacing the earlier column's value."""
    taken: set[str] = set()
    out: list[str] = []
    for c in cols:
        name, k = c, 1
        while name in taken or (name != c and name in cols):
            k += 1
            name = f"{c}_{k}"
        taken.add(name)
        out.append(name)
    return out


def _finite(v: Any) -> Any:
    """JSON has no NaN or infinities: they are written as strings, as PostgreSQL's to_json
    does."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    return v


TABLE_SAMPLE = 500  # rows read before a table's column widths are fixed


def render(cols: list[str], rows: Iterable[tuple[Any, ...]], fmt: str) -> Iterator[str]:
    """Rows as table, CSV or JSON text, produced as they come (never all in memory)."""
    it = (tuple(_cell(v) for v in r) for r in rows)
    if fmt == "json":
        keys = _unique(cols)
        yield "["
        for n, r in enumerate(it):
            doc = json.dumps(
                dict(zip(keys, map(_finite, r), strict=True)),
                ensure_ascii=False,
                default=str,
                allow_nan=False,
            )
            yield (" " if n == 0 else ",") + doc
        yield "]"
        return
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in it:
            w.writerow(r)
            if buf.tell() > 65536:
                yield buf.getvalue().rstrip("\n")
                buf.seek(0)
                buf.truncate()
        rest = buf.getvalue().rstrip("\n")
        if rest:
            yield rest
        return

    def cells(r: tuple[Any, ...]) -> list[str]:
        # For a terminal: control characters (escape sequences a task may carry) are shown
        # escaped, never sent. CSV and JSON carry the values as they are.
        return [printable(("" if v is None else str(v)).replace("\n", " "), 60) for v in r]

    head = [cells(r) for r in itertools.islice(it, TABLE_SAMPLE)]
    widths = [max([len(c)] + [len(r[i]) for r in head]) for i, c in enumerate(cols)]

    def line(values: list[str]) -> str:
        return "  ".join(v[:w].ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    yield line(cols)
    yield "  ".join("-" * w for w in widths)
    n = 0
    for values in itertools.chain(head, map(cells, it)):
        n += 1
        yield line(values)
    yield f"({n} row{'s' if n != 1 else ''})"
