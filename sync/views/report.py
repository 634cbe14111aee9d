"""History answers over the archive: `tasksync report` (per period, source and action:
counts, success rate, queue and run time percentiles; failure reasons; tasks by hour and
weekday) and a task's status history.

The report reads the archive once, as a stream ordered by submit time, and keeps one period's
queue and run times at a time: memory depends on the busiest period, never on the archive's
size. Percentiles are exact on every database (computed here from integers, not by the
database's floating point): linear interpolation between the closest ranks, as PostgreSQL's
`percentile_cont` and `statistics.quantiles(method="inclusive")` define it.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, Literal

from sqlalchemy import literal_column, select

from sync.archive.models import TERMINAL_STATUSES, Task, TaskEvent
from sync.archive.store import Store

By = Literal["day", "week", "month"]
ALL = "*"  # the action of a period's row over every action
TOP_REASONS = 10
PERCENTILES = (50, 95)


@dataclass
class Times:
    """One measure (queue or run time) over a group: how many tasks had it, p50, p95 and max
    in milliseconds (None without any)."""

    n: int = 0
    p50: float | None = None
    p95: float | None = None
    max: int | None = None


@dataclass
class Row:
    source: str
    period: str
    action: str
    tasks: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    unfinished: int = 0
    queue: Times = field(default_factory=Times)
    run: Times = field(default_factory=Times)

    @property
    def success_rate(self) -> float | None:
        """Succeeded of the finished tasks, in percent (None when none finished)."""
        finished = self.succeeded + self.failed + self.cancelled
        return None if not finished else round(100 * self.succeeded / finished, 1)


@dataclass
class Report:
    """What `tasksync report` shows, per source: a row per period and action (and one over
    every action, `action == "*"`), the top failure reasons, tasks by weekday and hour."""

    by: By
    tz: str
    since: datetime | None
    until: datetime | None
    rows: list[Row] = field(default_factory=list)
    reasons: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    other_reasons: dict[str, int] = field(default_factory=dict)
    # heat[source][weekday][hour], weekday 0 = Monday, in the report's time zone
    heat: dict[str, list[list[int]]] = field(default_factory=dict)
    undated: int = 0  # tasks without a submit time: in no period
    # images[source]: the image job's slots per state and bytes on disk (when it has any)
    images: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def sources(self) -> list[str]:
        return sorted({r.source for r in self.rows} | set(self.heat))


def percentile(values: Any, pct: int) -> float | None:
    """The pct-th percentile of sorted integers, linear between the closest ranks, exact:
    the rational result rounded once to a float."""
    n = len(values)
    if n == 0:
        return None
    lo, rem = divmod((n - 1) * pct, 100)
    if rem == 0:
        return float(values[lo])
    return float((values[lo] * 100 + (values[lo + 1] - values[lo]) * rem) / 100)


def _times(values: array[int]) -> Times:
    ordered = sorted(values)
    if not ordered:
        return Times()
    return Times(len(ordered), percentile(ordered, 50), percentile(ordered, 95), ordered[-1])


_URL = re.compile(r"https?://\S+")
_UUID = re.compile(
    r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
)
_HEX = re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SPACE = re.compile(r"\s+")


def normalize_reason(text: str | None) -> str:
    """One failure reason for messages that differ only in ids, numbers or URLs inside them:
    those become <url>, <id> and <n>; whitespace is collapsed; at most 200 characters."""
    if not text or not text.strip():
        return "(no reason given)"
    text = _URL.sub("<url>", text)
    text = _UUID.sub("<id>", text)
    text = _HEX.sub("<id>", text)
    text = _NUMBER.sub("<n>", text)
    return _SPACE.sub(" ", text).strip()[:200]


class _Group:
    __slots__ = ("cancelled", "failed", "queue", "run", "succeeded", "tasks", "unfinished")

    def __init__(self) -> None:
        self.tasks = self.succeeded = self.failed = self.cancelled = self.unfinished = 0
        self.queue: array[int] = array("q")
        self.run: array[int] = array("q")

    def add(self, status: str | None, queue_ms: int | None, run_ms: int | None) -> None:
        self.tasks += 1
        if status == "SUCCESS":
            self.succeeded += 1
        elif status == "FAILURE":
            self.failed += 1
        elif status == "CANCEL":
            self.cancelled += 1
        elif status not in TERMINAL_STATUSES:
            self.unfinished += 1
        if queue_ms is not None:
            self.queue.append(queue_ms)
        if run_ms is not None:
            self.run.append(run_ms)

    def row(self, source: str, period: str, action: str) -> Row:
        return Row(
            source,
            period,
            action,
            self.tasks,
            self.succeeded,
            self.failed,
            self.cancelled,
            self.unfinished,
            _times(self.queue),
            _times(self.run),
        )


def period_of(local: datetime, by: By) -> date:
    """The first day of the period a local time falls in (weeks start on Monday)."""
    day = local.date()
    if by == "week":
        return day - timedelta(days=day.weekday())
    if by == "month":
        return day.replace(day=1)
    return day


def label(start: date, by: By) -> str:
    return start.strftime("%Y-%m") if by == "month" else start.isoformat()


def _stream(
    store: Store, source: str | None, since: datetime | None, until: datetime | None
) -> Iterator[tuple[Any, ...]]:
    """(source, action, status, submit_time, queue_ms, run_ms, failure reason) of every
    dated task in range, ordered by submit time, streamed in batches."""
    t = Task.__table__.c
    # SQLite keeps times as text: read it as is (parsed below) rather than through the ORM
    # type's regular expression, a third of the report's time at a million tasks.
    when = literal_column("submit_time") if store.dialect == "sqlite" else t.submit_time
    q = select(
        t.source,
        t.action,
        t.status,
        when,
        t.queue_ms,
        t.run_ms,
        t.fail_reason,
    ).where(t.submit_time.is_not(None))
    if source is not None:
        q = q.where(t.source == source)
    if since is not None:
        q = q.where(t.submit_time >= since)
    if until is not None:
        q = q.where(t.submit_time < until)
    with store.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=5000).execute(
            q.order_by(t.submit_time)
        )
        for part in result.partitions():
            yield from part


def _utc(value: Any) -> datetime:
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    when: datetime = value
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def undated_count(store: Store, source: str | None) -> int:
    from sqlalchemy import func

    q = select(func.count()).select_from(Task).where(Task.submit_time.is_(None))
    if source is not None:
        q = q.where(Task.source == source)
    with store.engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def build_report(
    store: Store,
    *,
    source: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    by: By = "day",
    tz: tzinfo = UTC,
    tz_name: str = "UTC",
) -> Report:
    """The report over tasks submitted in [since, until) (UTC instants; open when None),
    periods and hours counted in `tz`."""
    report = Report(by, tz_name, since, until)
    groups: dict[tuple[str, str], _Group] = {}
    current: date | None = None
    reasons: dict[str, Counter[str]] = {}
    utc = tz is UTC

    def flush() -> None:
        if current is None:
            return
        name = label(current, by)
        for (src, action), group in sorted(groups.items()):
            report.rows.append(group.row(src, name, action))
        groups.clear()

    for src, action, status, when, queue_ms, run_ms, reason in _stream(store, source, since, until):
        local = _utc(when) if utc else _utc(when).astimezone(tz)
        start = period_of(local, by)
        if start != current:
            flush()
            current = start
        for key in ((src, action or "?"), (src, ALL)):
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group()
            group.add(status, queue_ms, run_ms)
        heat = report.heat.get(src)
        if heat is None:
            heat = report.heat[src] = [[0] * 24 for _ in range(7)]
        heat[local.weekday()][local.hour] += 1
        if status == "FAILURE":
            reasons.setdefault(src, Counter())[normalize_reason(reason)] += 1
    flush()
    for src, counter in reasons.items():
        top = counter.most_common(TOP_REASONS)
        report.reasons[src] = top
        report.other_reasons[src] = sum(counter.values()) - sum(n for _r, n in top)
    if since is None and until is None:
        report.undated = undated_count(store, source)
    for src in report.sources:
        counts = store.images.counts(src)
        if any(counts[k] for k in ("fetched", "pending", "failed", "expired")):
            report.images[src] = counts
    return report


def status_history(store: Store, source: str, task_id: str) -> list[dict[str, Any]]:
    """Every observed change of one task, oldest first."""
    q = (
        select(
            TaskEvent.observed_at,
            TaskEvent.kind,
            TaskEvent.previous_status,
            TaskEvent.status,
            TaskEvent.progress,
        )
        .where(TaskEvent.source == source, TaskEvent.task_id == task_id)
        .order_by(TaskEvent.observed_at, TaskEvent.id)
    )
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


# ---- text, CSV and JSON -------------------------------------------------------------------------
COLUMNS = (
    "source",
    "period",
    "action",
    "tasks",
    "succeeded",
    "failed",
    "cancelled",
    "unfinished",
    "success_pct",
    "queue_p50_s",
    "queue_p95_s",
    "queue_max_s",
    "run_p50_s",
    "run_p95_s",
    "run_max_s",
)


def _s(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 3)


def row_values(r: Row) -> list[Any]:
    return [
        r.source,
        r.period,
        r.action,
        r.tasks,
        r.succeeded,
        r.failed,
        r.cancelled,
        r.unfinished,
        r.success_rate,
        _s(r.queue.p50),
        _s(r.queue.p95),
        _s(r.queue.max),
        _s(r.run.p50),
        _s(r.run.p95),
        _s(r.run.max),
    ]


def heading(report: Report) -> str:
    unit = {"day": "days", "week": "weeks (from Monday)", "month": "months"}[report.by]
    tz = "UTC" if report.tz == "UTC" else report.tz
    hint = "; --tz changes it" if report.tz == "UTC" else ""
    return f"{unit} and hours in {tz}{hint}; tasks counted by submit time"


def as_json(report: Report) -> dict[str, Any]:
    return {
        "by": report.by,
        "tz": report.tz,
        "since": report.since and report.since.isoformat(),
        "until": report.until and report.until.isoformat(),
        "note": heading(report),
        "rows": [dict(zip(COLUMNS, row_values(r), strict=True)) for r in report.rows],
        "failure_reasons": {
            src: {
                "top": [{"reason": t, "failed": n} for t, n in top],
                "other": report.other_reasons[src],
            }
            for src, top in report.reasons.items()
        },
        "by_weekday_and_hour": report.heat,
        "undated_tasks": report.undated,
        "images": report.images,
    }


def as_lines(report: Report) -> Iterator[str]:
    """The report as text: per source, a table per period and action, the top failure
    reasons, and tasks by weekday and hour."""
    yield f"tasksync report: {heading(report)}"
    if report.undated:
        yield f"({report.undated} tasks have no submit time and are in no period)"
    if not report.rows:
        yield "no tasks in this range"
    head = (
        f"{'period':<10} {'action':<12} {'tasks':>7} {'ok':>7} {'failed':>6} {'cancel':>6} "
        f"{'open':>6} {'ok %':>6}  {'queue p50/p95/max s':>22}  {'run p50/p95/max s':>22}"
    )
    for src in report.sources:
        yield ""
        yield f"source {src}"
        yield head
        for r in (r for r in report.rows if r.source == src):
            q = "/".join(_fmt(_s(v)) for v in (r.queue.p50, r.queue.p95, r.queue.max))
            run = "/".join(_fmt(_s(v)) for v in (r.run.p50, r.run.p95, r.run.max))
            action = "(all)" if r.action == ALL else r.action
            rate = "-" if r.success_rate is None else f"{r.success_rate:.1f}"
            yield (
                f"{r.period:<10} {action[:12]:<12} {r.tasks:>7} {r.succeeded:>7} {r.failed:>6} "
                f"{r.cancelled:>6} {r.unfinished:>6} {rate:>6}  {q:>22}  {run:>22}"
            )
        top = report.reasons.get(src, [])
        if top:
            yield ""
            yield "top failure reasons (ids and numbers as <id>, <n>):"
            for text, n in top:
                yield f"  {n:>7}  {text}"
            if report.other_reasons.get(src):
                yield f"  {report.other_reasons[src]:>7}  (other reasons)"
        im = report.images.get(src)
        if im:
            yield ""
            yield (
                f"images (all time): {im['fetched']} fetched ({im['bytes'] / 1e6:,.1f} MB on "
                f"disk), {im['pending']} pending, {im['failed']} failed, {im['expired']} expired"
            )
        heat = report.heat.get(src)
        if heat:
            yield ""
            yield f"tasks by weekday and hour ({report.tz}):"
            yield "       " + "".join(f"{h:>6}" for h in range(24))
            for d, name in enumerate(("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")):
                yield f"  {name}  " + "".join(f"{n:>6}" for n in heat[d])


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"
