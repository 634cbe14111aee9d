"""The archive's side of image fetching (`task_images`, `image_scans`): tasks whose links to
look at, the slots found in them, what is due for fetching (soonest-expiring first), what each
try did, and the counts `status` shows. Reached as `Store.images`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, delete, func, insert, select, update

from sync.archive.engine import Database
from sync.archive.export import batches
from sync.archive.models import ImageScan, Task, TaskImage
from sync.tasks.records import JOINED


@dataclass(frozen=True)
class Link:
    """A picture or video a task links to: its slot (role, position) and where it is."""

    task_id: str
    role: str
    position: int
    url: str
    expires_at: datetime | None
    submitted_at: datetime | None


@dataclass
class Slot:
    """A slot due for fetching."""

    id: int
    source: str
    task_id: str
    role: str
    url: str
    expires_at: datetime | None
    attempts: int


@dataclass
class Outcome:
    """What one try did: fetched (with the file's facts) or not (why, and what state)."""

    id: int
    url: str  # the link tried: recorded only while the slot still has it
    state: str  # fetched, pending (try again at next_try_at), failed or expired
    attempts: int
    error: str | None = None
    next_try_at: datetime | None = None
    sha256: str | None = None
    size: int | None = None
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    path: str | None = None
    fetched_at: datetime | None = None


class ImageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- finding links ------------------------------------------------------------------------
    def watermark(self, source: str) -> datetime | None:
        with self.db.engine.connect() as conn:
            q = select(ImageScan.changed_since).where(ImageScan.source == source)
            return conn.execute(q).scalar()

    def set_watermark(self, source: str, changed_since: datetime, now: datetime) -> None:
        with self.db.write() as conn:
            conn.execute(delete(ImageScan).where(ImageScan.source == source))
            conn.execute(
                insert(ImageScan).values(source=source, changed_since=changed_since, scanned_at=now)
            )

    def changed_tasks(
        self, source: str, since: datetime | None, statuses: Sequence[str], batch: int = 1000
    ) -> Iterator[list[Any]]:
        """Rows (the columns `records.join` reads, and submit_time) of the source's tasks in
        one of `statuses` that changed at or after `since`, in keyset batches."""
        where: list[ColumnElement[bool]] = [Task.status.in_(list(statuses))]
        if since is not None:
            where.append(Task.last_changed_at >= since)
        yield from batches(self.db, [*JOINED, "submit_time"], *where, source=source, size=batch)

    def add_links(self, source: str, links: Sequence[Link], now: datetime) -> tuple[int, int]:
        """New slots are added (pending); a slot whose link changed before it was fetched
        takes the new link, with a fresh set of tries. Returns (added, relinked)."""
        if not links:
            return 0, 0
        added = relinked = 0
        with self.db.write() as conn:
            ids = sorted({link.task_id for link in links})
            known: dict[tuple[str, str, int], tuple[int, str, str]] = {}
            for n in range(0, len(ids), 500):
                q = select(
                    TaskImage.id,
                    TaskImage.task_id,
                    TaskImage.role,
                    TaskImage.position,
                    TaskImage.url,
                    TaskImage.state,
                ).where(TaskImage.source == source, TaskImage.task_id.in_(ids[n : n + 500]))
                for sid, tid, role, pos, url, state in conn.execute(q):
                    known[(tid, role, pos)] = (sid, url, state)
            fresh = []
            for link in links:
                have = known.get((link.task_id, link.role, link.position))
                if have is None:
                    fresh.append(
                        {
                            "source": source,
                            "task_id": link.task_id,
                            "role": link.role,
                            "position": link.position,
                            "url": link.url,
                            "url_expires_at": link.expires_at,
                            "submitted_at": link.submitted_at,
                            "state": "pending",
                            "attempts": 0,
                            "discovered_at": now,
                        }
                    )
                elif have[1] != link.url and have[2] != "fetched":
                    conn.execute(
                        update(TaskImage)
                        .where(TaskImage.id == have[0])
                        .values(
                            url=link.url,
                            url_expires_at=link.expires_at,
                            state="pending",
                            attempts=0,
                            next_try_at=None,
                            last_error=None,
                        )
                    )
                    relinked += 1
            if fresh:
                conn.execute(insert(TaskImage), fresh)
                added = len(fresh)
        return added, relinked

    # ---- fetching -----------------------------------------------------------------------------
    def due(self, now: datetime, limit: int, sources: Sequence[str] | None = None) -> list[Slot]:
        """Pending slots whose next try is due: live links that expire soonest first, then
        links with no known expiry, then links already expired; newest tasks first within."""
        q = select(
            TaskImage.id,
            TaskImage.source,
            TaskImage.task_id,
            TaskImage.role,
            TaskImage.url,
            TaskImage.url_expires_at,
            TaskImage.attempts,
        ).where(
            TaskImage.state == "pending",
            TaskImage.next_try_at.is_(None) | (TaskImage.next_try_at <= now),
        )
        if sources is not None:
            q = q.where(TaskImage.source.in_(list(sources)))
        q = q.order_by(
            case(
                (TaskImage.url_expires_at > now, 0),
                (TaskImage.url_expires_at.is_(None), 1),
                else_=2,  # expired already: tried once, after every link that may still work
            ),
            case((TaskImage.url_expires_at > now, TaskImage.url_expires_at), else_=None),
            TaskImage.submitted_at.desc(),
            TaskImage.id,
        ).limit(limit)
        with self.db.engine.connect() as conn:
            return [Slot(*row) for row in conn.execute(q)]

    def record(self, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        with self.db.write() as conn:
            for o in outcomes:
                conn.execute(
                    update(TaskImage)
                    # A slot given a new link meanwhile (a concurrent discover) keeps it.
                    .where(TaskImage.id == o.id, TaskImage.url == o.url)
                    .values(
                        state=o.state,
                        attempts=o.attempts,
                        last_error=o.error,
                        next_try_at=o.next_try_at,
                        sha256=o.sha256,
                        bytes=o.size,
                        content_type=o.content_type,
                        width=o.width,
                        height=o.height,
                        path=o.path,
                        fetched_at=o.fetched_at,
                    )
                )

    # ---- what there is ------------------------------------------------------------------------
    def counts(self, source: str | None = None) -> dict[str, int]:
        """Slots per state, and `bytes` on disk (each distinct file once)."""
        q = select(TaskImage.state, func.count()).group_by(TaskImage.state)
        files = (
            select(TaskImage.sha256, func.max(TaskImage.bytes).label("size"))
            .where(TaskImage.state == "fetched")
            .group_by(TaskImage.sha256)
        )
        if source is not None:
            q = q.where(TaskImage.source == source)
            files = files.where(TaskImage.source == source)
        out = dict.fromkeys(("fetched", "pending", "failed", "expired"), 0)
        with self.db.engine.connect() as conn:
            out.update({state: int(n) for state, n in conn.execute(q)})
            sub = files.subquery()
            total = conn.execute(select(func.coalesce(func.sum(sub.c.size), 0))).scalar()
        out["bytes"] = int(total or 0)
        return out

    def files(self) -> Iterator[tuple[str, str, int]]:
        """(sha256, path, bytes) of every distinct fetched file."""
        q = (
            select(TaskImage.sha256, func.min(TaskImage.path), func.max(TaskImage.bytes))
            .where(TaskImage.state == "fetched")
            .group_by(TaskImage.sha256)
            .order_by(TaskImage.sha256)
        )
        with self.db.engine.connect() as conn:
            for sha, path, size in conn.execute(q):
                if sha and path:
                    yield sha, path, int(size or 0)
