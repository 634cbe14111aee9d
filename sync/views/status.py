"""`tasksync status`: per source, the archive's counts, the last run of each kind, the last
error, how far the archive lags its server (one request for the server's newest task), and
the image job's counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select

from sync.archive import sources
from sync.archive.models import SyncRun, Task, unfinished
from sync.archive.store import Store
from sync.config import SourceSettings
from sync.errors import TasksyncError
from sync.server.client import connect_quick
from sync.server.families.probing import resolve
from sync.tasks.records import SHAPES, epoch_ms, to_utc

KINDS = ("backfill", "sync", "sweep")


@dataclass
class LastRun:
    outcome: str
    started_at: datetime
    duration_s: float | None
    inserted: int
    changed: int
    gone: int


@dataclass
class SourceStatus:
    name: str
    archived: int = 0
    gone: int = 0
    unfinished: int = 0
    runs: dict[str, LastRun] = field(default_factory=dict)
    last_success: datetime | None = None
    last_error: tuple[datetime, str] | None = None
    newest_archived: datetime | None = None
    server_newest: datetime | None = None
    server_note: str = ""  # why the server's newest is not known
    images: dict[str, int] = field(default_factory=dict)  # slots per state, and bytes

    @property
    def lag(self) -> timedelta | None:
        """How much newer the server's newest task is than the archive's (0 when level)."""
        if self.server_newest is None or self.newest_archived is None:
            return None
        return max(self.server_newest - self.newest_archived, timedelta(0))


def gather(store: Store, names: list[str] | None) -> list[SourceStatus]:
    """Each source's counts and runs, from the archive alone."""
    with store.engine.connect() as conn:
        if names is None:
            known = select(SyncRun.source).union(select(Task.source))
            names = sorted(r[0] for r in conn.execute(known))
        out = []
        for name in names:
            st = SourceStatus(name)
            present = Task.gone_at.is_(None)
            archived, gone, moving, newest = conn.execute(
                select(
                    func.count(),
                    func.sum(case((present, 0), else_=1)),
                    func.sum(case((present & unfinished(Task.status), 1), else_=0)),
                    func.max(Task.submit_time),
                ).where(Task.source == name)
            ).one()
            st.archived, st.gone, st.unfinished = archived, int(gone or 0), int(moving or 0)
            st.newest_archived = _aware(newest)
            for kind in KINDS:
                row = conn.execute(
                    select(
                        SyncRun.outcome,
                        SyncRun.started_at,
                        SyncRun.duration_s,
                        SyncRun.inserted,
                        SyncRun.changed,
                        SyncRun.gone,
                    )
                    .where(SyncRun.source == name, SyncRun.kind == kind)
                    .order_by(SyncRun.id.desc())
                    .limit(1)
                ).first()
                if row is not None:
                    st.runs[kind] = LastRun(*row)
            st.last_success = conn.execute(
                select(func.max(SyncRun.finished_at)).where(
                    SyncRun.source == name, SyncRun.outcome == "ok"
                )
            ).scalar()
            err = conn.execute(
                select(SyncRun.started_at, SyncRun.error)
                .where(SyncRun.source == name, SyncRun.error.is_not(None))
                .order_by(SyncRun.id.desc())
                .limit(1)
            ).first()
            if err is not None:
                st.last_error = (err[0], err[1] or "")
            out.append(st)
    for st in out:
        st.images = store.images.counts(st.name)
    return out


def ask_server(store: Store, src: SourceSettings) -> tuple[datetime | None, str]:
    """The submit time of the newest task the server lists (one request, 5 s at most), or
    None and why not."""
    try:
        with connect_quick(src) as client:
            # As configured or remembered, else probed now (and not remembered: status only reads).
            family, _evidence = resolve(client, sources.remembered(store, src.name))
            if not family.guarantees.paged:
                why = "has no list" if family.name == "ids" else "lists every task at once"
                return None, f"{family.name} {why}; not asked"
            page = client.query_page(0, 1)
            if not page.tasks:
                return None, "it lists no tasks"
            newest = page.tasks[0]
            if not isinstance(newest, dict):
                return None, "its newest item is not a task object"
            shape = SHAPES[family.shape]
            return to_utc(epoch_ms(newest.get(shape.keys["submit_time"]))), ""
    except TasksyncError as exc:
        return None, str(exc)


def _aware(value: Any) -> datetime | None:
    """A max() over a UTC column comes back without the column's type on SQLite (text)."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def ago(delta: timedelta) -> str:
    s = int(delta.total_seconds())
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def render(statuses: list[SourceStatus], now: datetime) -> list[str]:
    out: list[str] = []
    for st in statuses:
        since = f"{ago(now - st.last_success)} ago" if st.last_success else "never"
        out.append(
            f"source {st.name}: {st.archived} tasks archived ({st.gone} gone, "
            f"{st.unfinished} unfinished); last success {since}"
        )
        for kind in KINDS:
            run = st.runs.get(kind)
            if run is None:
                out.append(f"  last {kind:<8} never")
                continue
            out.append(
                f"  last {kind:<8} {run.outcome:<11} {ago(now - run.started_at)} ago, "
                f"{(run.duration_s or 0):.1f}s, +{run.inserted} ~{run.changed} -{run.gone}"
            )
        if st.last_error is not None:
            at, text = st.last_error
            out.append(f"  last error   {ago(now - at)} ago: {text[:200]}")
        newest = f"{st.newest_archived:%Y-%m-%d %H:%M:%S} UTC" if st.newest_archived else "none"
        if st.server_newest is not None and st.lag is not None:
            behind = "level with the server" if not st.lag else f"{ago(st.lag)} behind"
            out.append(
                f"  newest task  archived {newest}, server "
                f"{st.server_newest:%Y-%m-%d %H:%M:%S} UTC: {behind}"
            )
        else:
            note = f" (server: {st.server_note})" if st.server_note else ""
            out.append(f"  newest task  archived {newest}{note}")
        im = st.images
        if any(im.get(k) for k in ("fetched", "pending", "failed", "expired")):
            out.append(
                f"  images       {im['fetched']} fetched ({im['bytes'] / 1e6:,.1f} MB on disk), "
                f"{im['pending']} pending, {im['failed']} failed, {im['expired']} expired"
            )
    return out
