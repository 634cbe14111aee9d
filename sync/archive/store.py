"""Saving tasks and what runs need from the archive: change-detecting bulk upserts with their
events, the run ledger, backfill checkpoints, unfinished-task re-checks, gone marks and the
reads syncs and sweeps make. `Store` is a `Database` (`engine`) with these operations.

Elsewhere in the archive: schema changes (`schema`), writer locks (`locks`), export and
re-derivation (`export`), the remembered families (`sources`), the image job's rows
(`images`, reached as `Store.images`), read-only SQL (`readonly`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Table, delete, func, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql, postgresql, sqlite

from sync.archive import locks
from sync.archive.engine import Database
from sync.archive.images import ImageStore
from sync.archive.models import (
    Checkpoint,
    Recheck,
    SyncRun,
    Task,
    TaskEvent,
    unfinished,
)
from sync.archive.runs import RunCounts, RunReport, SaveResult
from sync.archive.urls import scrub
from sync.errors import MassGoneRefused, printable
from sync.tasks.batch import Binder, Built, Prepared, json_or_none, prepare
from sync.tasks.records import (
    JOINED,
    MJ,
    Fingerprint,
    Rejected,
    Shape,
    changed_fields,
    join,
)

log = logging.getLogger("tasksync.store")

TASK_COLUMNS = [c.name for c in Task.__table__.columns]
UPDATE_COLUMNS = [c for c in TASK_COLUMNS if c not in ("source", "id", "first_seen_at")]
EVENT_COLUMNS = [c.name for c in TaskEvent.__table__.columns if c.name != "id"]
SEEN_REFRESH = timedelta(hours=1)  # a sweep refreshes last_seen_at only when older than this
RECHECK_FIRST_S = 60.0  # an unfinished task list-by-condition missed is asked again after 1 min,
RECHECK_MAX_S = 6 * 3600.0  # then 2, 4, 8 ... minutes, at most every 6 hours until a sweep


class ResumePoint(NamedTuple):
    """Where a walk resumes (`sync_checkpoints`): the next page, the last id of the contiguous
    prefix read before it, and the list's total at that moment."""

    kind: str
    page: int
    last_id: str | None
    total: int | None


def _log_rejected(source: str, tid: str | None, reason: str) -> None:
    """A task that could not be stored: one log line (its id and the reason may be anything a
    server sent, so both are made printable)."""
    log.warning("source %s: task %s not stored: %s", source, printable(tid, 100), printable(reason))


Event = tuple[str, Built, str, str | None, list[str] | None]  # id, row, kind, previous, fields


class Store(Database):
    """A handle on one archive: the database, and what the pipeline does with it."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        super().__init__(url, echo=echo)
        self._mark = "?" if self.dialect == "sqlite" else "%s"
        self._grown, self._analyze_at = 0, 1000
        # The task upsert, compiled once for this dialect; `binder` makes its parameters.
        self.upsert_sql, order = self._compile(_upsert_statement(self.dialect))
        self.binder = Binder(self.dialect, order)
        self._ts = self.binder.ts
        self._event_sql = self._compile(insert(TaskEvent).values({c: None for c in EVENT_COLUMNS}))
        self.images = ImageStore(self)  # task_images: the image job's side of the archive

    def lock(
        self, source: str, now: datetime | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Hold the writer lock of a source for a run, or raise LockHeld (see `locks`)."""
        return locks.hold(self, source, now)

    # ---- the run ledger ---------------------------------------------------------------
    def start_run(self, source: str, kind: str, now: datetime) -> int:
        """Record a run as `running` and commit at once, so even a crash leaves a trace."""
        values = dict(
            source=source,
            kind=kind,
            started_at=now,
            outcome="running",
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            **RunCounts().counts(),
        )
        try:
            with self.write() as conn:
                result = conn.execute(insert(SyncRun).values(**values))
                pk = result.inserted_primary_key
                assert pk is not None
                return int(pk[0])
        except sa_exc.SQLAlchemyError as exc:
            raise self.db_error(exc, "recording the run") from None

    def finish_run(self, report: RunReport, now: datetime) -> None:
        """Record how a run ended: outcome, error, duration and counts."""
        with self.write() as conn:
            started = conn.execute(
                select(SyncRun.started_at).where(SyncRun.id == report.run_id)
            ).scalar_one()
            conn.execute(
                update(SyncRun)
                .where(SyncRun.id == report.run_id)
                .values(
                    finished_at=now,
                    outcome=report.outcome,
                    error=report.error and report.error[:2000],
                    duration_s=(now - started).total_seconds(),
                    **report.counts(),
                )
            )

    # ---- saving tasks -----------------------------------------------------------------
    def prepare(
        self,
        source: str,
        tasks: Sequence[Any],
        now: datetime,
        *,
        build_rows: bool = False,
        shape: Shape = MJ,
    ) -> Prepared:
        """Fingerprint raw task objects (no I/O); see `sync.tasks.batch.prepare`."""
        return prepare(self.binder, source, tasks, now, build_rows=build_rows, shape=shape)

    def save(
        self,
        batch: Prepared,
        run_id: int | None,
        *,
        dry_run: bool = False,
        checkpoint: ResumePoint | None = None,
        checkpoint_if_unchanged: bool = True,
    ) -> SaveResult:
        """Store a prepared batch of one source's tasks (see `prepare`), observed at
        `batch.now`; only new, changed or returned tasks are written.

        One transaction: rows, events and (optionally) the walk's checkpoint commit together.
        With `checkpoint_if_unchanged=False` a batch that wrote nothing leaves the checkpoint
        alone, so a walk over an unchanged archive does not write at all.
        """
        source, now = batch.source, batch.now
        for rej in batch.rejects:
            _log_rejected(source, rej.id, rej.reason)
        result = SaveResult(rejected=batch.rejected, tasks_seen=len(batch.records))
        try:

            def commit(conn: Connection, rows: list[Any], events: list[Event]) -> None:
                """Rows, events and the checkpoint (the lock was checked in this transaction)."""
                if rows:
                    self._write(conn, batch, rows, events, run_id, result.inserted)
                if checkpoint and (rows or checkpoint_if_unchanged):
                    self._write_checkpoint(conn, source, checkpoint, run_id, now)

            if batch.built and not dry_run:
                # Built ahead because most tasks were new: plan and write in one transaction.
                with self.guarded(source) as conn:
                    commit(conn, *self._plan(conn, batch, result))
                return result
            # Plan on a plain read; open a write transaction only when there is something to
            # write. The source's writer lock keeps other writers away in between.
            with self.engine.connect() as reader:
                rows, events = self._plan(reader, batch, result)
                reader.rollback()
            if not dry_run and (rows or (checkpoint and checkpoint_if_unchanged)):
                with self.guarded(source) as conn:
                    commit(conn, rows, events)
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError):
                raise self.db_error(exc, "saving tasks") from None
            # One task the database refuses must not sink the others: isolate it.
            log.warning(
                "source %s: batch refused (%s); retrying task by task",
                source,
                scrub(str(exc.orig), self.url),
            )
            result = self._save_one_by_one(batch, run_id, dry_run)
            if checkpoint and not dry_run:
                with self.guarded(source) as conn:
                    self._write_checkpoint(conn, source, checkpoint, run_id, now)
        return result

    def _save_one_by_one(self, batch: Prepared, run_id: int | None, dry_run: bool) -> SaveResult:
        """After the database refused a batch: each task in its own transaction, so one bad
        task is logged and counted and the others are stored (or, in a dry run, counted)."""
        total = SaveResult(rejected=batch.rejected, tasks_seen=len(batch.records))
        for tid, fp in batch.records.items():
            one = SaveResult()
            single = Prepared(batch.source, batch.now, {tid: fp}, 0, batch.shape)
            try:
                with self.guarded(batch.source) as conn:
                    rows, events = self._plan(conn, single, one)
                    if rows and not dry_run:
                        self._write(conn, single, rows, events, run_id, one.inserted)
            except sa_exc.DBAPIError as exc:
                if isinstance(exc, sa_exc.OperationalError):
                    raise self.db_error(exc, "saving tasks") from None
                total.rejected += 1
                total.tasks_seen -= 1
                _log_rejected(batch.source, tid, scrub(str(exc.orig), self.url))
                continue
            total.add(one)
        return total

    def _plan(
        self, conn: Connection, batch: Prepared, result: SaveResult
    ) -> tuple[list[Any], list[Event]]:
        """Reads only: which tasks are new, changed or returned; their rows and events."""
        source, records = batch.source, batch.records
        if not records:
            return [], []
        ids = list(records)
        existing: dict[str, tuple[str, str | None, bool]] = {}
        head = f"SELECT id, content_hash, status, gone_at FROM tasks WHERE source = {self._mark}"
        driver = conn.connection.driver_connection  # this runs for every page: no wrappers
        assert driver is not None
        cur = driver.cursor()
        try:
            for chunk in _chunks(ids, 500):
                if self.dialect == "postgresql":
                    cur.execute(f"{head} AND id = ANY(%s)", (source, list(chunk)))
                else:
                    marks = ", ".join([self._mark] * len(chunk))
                    cur.execute(f"{head} AND id IN ({marks})", (source, *chunk))
                for tid, h, status, gone_at in cur.fetchall():
                    existing[tid] = (h, status, gone_at is not None)
        finally:
            cur.close()
        rows: list[Any] = []
        events: list[Event] = []
        changed: list[tuple[str, Built]] = []
        at = self._ts(batch.now)
        for tid, fp in records.items():
            old = existing.get(tid)
            if old is not None and not old[2] and _same(old[0], fp):
                result.unchanged += 1
                result.statuses[tid] = old[1]
                continue
            b = batch.built.get(tid) or self.binder.built(source, fp, at, batch.shape)
            if isinstance(b, Rejected):
                result.rejected += 1
                result.tasks_seen -= 1
                _log_rejected(source, b.id, b.reason)
                continue
            result.statuses[tid] = b.status
            result.moved.add(tid)
            rows.append(b.params)
            if old is None:
                result.inserted += 1
                result.new_ids.add(tid)
                events.append((tid, b, "created", None, None))
            elif old[2]:
                result.returned += 1
                events.append((tid, b, "returned", old[1], None))
            else:
                result.changed += 1
                changed.append((tid, b))
        if changed:
            before = self._objects(conn, source, [tid for tid, _b in changed])
            for tid, b in changed:
                fields = changed_fields(before.get(tid), records[tid].raw)
                events.append((tid, b, "changed", existing[tid][1], fields))
        return rows, events

    def _write(
        self,
        conn: Connection,
        batch: Prepared,
        rows: list[Any],
        events: list[Event],
        run_id: int | None,
        inserted: int,
    ) -> None:
        """Bulk upsert and event insert: statements compiled once by SQLAlchemy Core for this
        dialect, rows handed to the driver's executemany (sqlite3 prepared statement, psycopg
        pipeline mode, PyMySQL multi-row VALUES)."""
        at = self._ts(batch.now)
        event_rows = [
            {
                "source": batch.source,
                "task_id": tid,
                "observed_at": at,
                "run_id": run_id,
                "kind": kind,
                "status": b.status,
                "previous_status": prev,
                "progress": b.progress,
                "changed": json_or_none(fields),
            }
            for tid, b, kind, prev, fields in events
        ]
        upsert_sql, event_sql = self.upsert_sql, self._event_sql[0]
        if self.dialect == "postgresql":
            # One pipeline for both statements: no round trip waits between them.
            driver = conn.connection.driver_connection
            assert driver is not None
            with driver.pipeline(), driver.cursor() as cur:
                cur.executemany(upsert_sql, rows)
                cur.executemany(event_sql, event_rows)
        else:
            conn.exec_driver_sql(upsert_sql, rows)
            order = self._event_sql[1]
            if order is not None:
                conn.exec_driver_sql(event_sql, [tuple(e[k] for k in order) for e in event_rows])
            else:
                conn.exec_driver_sql(event_sql, event_rows)
        self._grown += inserted
        if self.dialect == "postgresql" and self._grown >= self._analyze_at:
            # A table filling from empty has no statistics yet; without them PostgreSQL looks
            # tasks up through the wrong index and every page costs a scan of the source.
            # A small sample is enough to pick the right index, at a fraction of a full
            # ANALYZE's cost; autovacuum's own ANALYZE later refines the statistics.
            conn.exec_driver_sql("SET LOCAL default_statistics_target = 10")
            conn.exec_driver_sql("ANALYZE tasks")
            self._analyze_at = self._grown * 4

    def _compile(self, stmt: Any) -> tuple[str, list[str] | None]:
        compiled = stmt.compile(dialect=self.engine.dialect)
        return str(compiled), (list(compiled.positiontup) if compiled.positional else None)

    # ---- reads the pipeline needs -------------------------------------------------------
    def unfinished_ids(self, source: str) -> list[str]:
        """Archived tasks that are not finished (any status but SUCCESS, FAILURE, CANCEL)."""
        return list(self.recheck_due(source, None))

    def recheck_due(self, source: str, now: datetime | None) -> dict[str, bool]:
        """Unfinished tasks to re-check now: all of them, except those `list-by-condition`
        stopped returning whose next check (backoff) is later than `now`. The value says
        whether the task has a miss on record."""
        q = (
            select(Task.id, Recheck.task_id.is_not(None))
            .outerjoin(Recheck, (Recheck.source == Task.source) & (Recheck.task_id == Task.id))
            .where(
                Task.source == source,
                Task.gone_at.is_(None),
                unfinished(Task.status),
            )
        )
        if now is not None:
            q = q.where(Recheck.next_check_at.is_(None) | (Recheck.next_check_at <= now))
        with self.engine.connect() as conn:
            return {tid: bool(missed) for tid, missed in conn.execute(q)}

    def note_rechecks(
        self, source: str, back: Sequence[str], missing: Sequence[str], now: datetime
    ) -> None:
        """After a re-check: tasks `list-by-condition` returned again forget their misses;
        tasks it did not return are asked again after a backoff that doubles with each miss
        (RECHECK_FIRST_S up to RECHECK_MAX_S). Nothing is marked gone here."""
        with self.guarded(source) as conn:
            for chunk in _chunks(list(back), 500):
                conn.execute(
                    delete(Recheck).where(Recheck.source == source, Recheck.task_id.in_(chunk))
                )
            known: dict[str, int] = {}
            for chunk in _chunks(list(missing), 500):
                q = select(Recheck.task_id, Recheck.misses).where(
                    Recheck.source == source, Recheck.task_id.in_(chunk)
                )
                known.update({tid: n for tid, n in conn.execute(q)})

            def after(misses: int) -> datetime:
                return now + timedelta(
                    seconds=min(RECHECK_FIRST_S * 2 ** min(misses - 1, 30), RECHECK_MAX_S)
                )

            fresh = [
                dict(
                    source=source, task_id=t, misses=1, first_missed_at=now, next_check_at=after(1)
                )
                for t in missing
                if t not in known
            ]
            if fresh:
                conn.execute(insert(Recheck), fresh)
            for tid, misses in known.items():
                conn.execute(
                    update(Recheck)
                    .where(Recheck.source == source, Recheck.task_id == tid)
                    .values(misses=misses + 1, next_check_at=after(misses + 1))
                )

    def sources(self) -> list[str]:
        """The sources the archive holds tasks of."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(Task.source).distinct()).scalars())

    def count_tasks(self, source: str, *, present_only: bool = False) -> int:
        q = select(func.count()).select_from(Task).where(Task.source == source)
        if present_only:
            q = q.where(Task.gone_at.is_(None))
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def iter_present_ids(self, source: str) -> Iterator[str]:
        """Every archived id of a source not marked gone, streamed."""
        q = select(Task.id).where(Task.source == source, Task.gone_at.is_(None))
        with self.engine.connect() as conn:
            for part in conn.execution_options(yield_per=5000).execute(q).scalars().partitions():
                yield from part

    @staticmethod
    def _objects(conn: Connection, source: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Archived tasks' server objects, rebuilt from their rows (`records.join`)."""
        cols = [Task.__table__.c[c] for c in JOINED]
        objects: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(ids), 500):
            q = select(*cols).where(Task.source == source, Task.id.in_(chunk))
            objects.update({row.id: join(row._mapping) for row in conn.execute(q)})
        return objects

    def walk_keys(self, source: str, ids: Sequence[str]) -> list[str]:
        """The walk keys of archived tasks: the `id` their server object carries (the task
        id itself, or for new-api the row id its list is ordered by)."""
        with self.engine.connect() as conn:
            objects = self._objects(conn, source, ids)
        return [str(obj["id"]) for obj in objects.values() if obj.get("id") is not None]

    def missing_ids(self, source: str, seen: set[str]) -> list[str]:
        """Archived tasks (not gone) that a complete read of the list did not see."""
        return [tid for tid in self.iter_present_ids(source) if tid not in seen]

    def mark_gone(
        self,
        source: str,
        missing: Sequence[str],
        run_id: int | None,
        now: datetime,
        *,
        max_share: float,
        allow_mass: bool = False,
        dry_run: bool = False,
    ) -> int:
        """After a complete sweep: mark these archived tasks, which the server no longer
        lists, as gone (each with a `gone` event), unless they are too large a share."""
        if not missing:
            return 0
        present = self.count_tasks(source, present_only=True)
        share = len(missing) / max(1, present)
        if share > max_share and not allow_mass:
            raise MassGoneRefused(
                f"source {source!r}: the sweep would mark {len(missing)} of {present} archived "
                f"tasks gone ({share:.0%} > {max_share:.0%}); nothing marked. If the server "
                "really dropped them, re-run with --allow-mass-gone"
            )
        if dry_run:
            return len(missing)
        with self.guarded(source) as conn:
            statuses: dict[str, tuple[str | None, str | None]] = {}
            for chunk in _chunks(missing, 500):
                q = select(Task.id, Task.status, Task.progress).where(
                    Task.source == source, Task.id.in_(chunk)
                )
                statuses.update({tid: (st, pr) for tid, st, pr in conn.execute(q)})
                conn.execute(
                    update(Task)
                    .where(Task.source == source, Task.id.in_(chunk), Task.gone_at.is_(None))
                    .values(gone_at=now)
                )
            conn.execute(
                insert(TaskEvent),
                [
                    dict(
                        source=source,
                        task_id=tid,
                        observed_at=now,
                        run_id=run_id,
                        kind="gone",
                        status=statuses[tid][0],
                        previous_status=statuses[tid][0],
                        progress=statuses[tid][1],
                        changed=None,
                    )
                    for tid in missing
                ],
            )
        return len(missing)

    def touch_seen(self, source: str, now: datetime) -> None:
        """After a complete sweep every present task was seen now: one statement, not a row each,
        and only for rows whose `last_seen_at` is more than SEEN_REFRESH old, so frequent
        sweeps do not rewrite the whole archive each time (on PostgreSQL every rewritten row
        is a dead version for vacuum). The sweep has also settled every missed re-check (seen,
        or marked gone): forgotten."""
        with self.guarded(source) as conn:
            conn.execute(
                update(Task)
                .where(
                    Task.source == source,
                    Task.gone_at.is_(None),
                    Task.last_seen_at < now - SEEN_REFRESH,
                )
                .values(last_seen_at=now)
            )
            conn.execute(delete(Recheck).where(Recheck.source == source))

    # ---- checkpoints ------------------------------------------------------------------
    def _write_checkpoint(
        self, conn: Connection, source: str, at: ResumePoint, run_id: int | None, now: datetime
    ) -> None:
        # Plain driver SQL: this runs with every page a walk saves.
        m = self._mark
        values = (at.page, at.last_id, at.total, run_id, self._ts(now), source, at.kind)
        moved = conn.exec_driver_sql(
            f"UPDATE sync_checkpoints SET page = {m}, cursor_id = {m}, cursor_total = {m}, "
            f"run_id = {m}, updated_at = {m} WHERE source = {m} AND kind = {m}",
            values,
        )
        if moved.rowcount == 0:
            conn.exec_driver_sql(
                "INSERT INTO sync_checkpoints (page, cursor_id, cursor_total, run_id, updated_at, "
                f"source, kind) VALUES ({m}, {m}, {m}, {m}, {m}, {m}, {m})",
                values,
            )

    def checkpoint(self, source: str, kind: str) -> ResumePoint | None:
        """Where an interrupted walk of this kind resumes, if one was left unfinished."""
        q = select(Checkpoint.page, Checkpoint.cursor_id, Checkpoint.cursor_total).where(
            Checkpoint.source == source, Checkpoint.kind == kind
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else ResumePoint(kind, row[0], row[1], row[2])

    def clear_checkpoint(self, source: str, kind: str) -> None:
        with self.guarded(source) as conn:
            conn.execute(
                delete(Checkpoint).where(Checkpoint.source == source, Checkpoint.kind == kind)
            )


def _upsert_statement(dialect: str) -> Any:
    """INSERT … ON CONFLICT DO UPDATE (SQLite, PostgreSQL) / ON DUPLICATE KEY UPDATE (MariaDB)."""
    table = cast(Table, Task.__table__)
    values = {c: None for c in TASK_COLUMNS}
    if dialect == "postgresql":
        pg = postgresql.insert(table).values(values)
        return pg.on_conflict_do_update(
            index_elements=["source", "id"], set_={c: pg.excluded[c] for c in UPDATE_COLUMNS}
        )
    if dialect == "sqlite":
        sq = sqlite.insert(table).values(values)
        return sq.on_conflict_do_update(
            index_elements=["source", "id"], set_={c: sq.excluded[c] for c in UPDATE_COLUMNS}
        )
    my = mysql.insert(table).values(values)
    return my.on_duplicate_key_update({c: my.inserted[c] for c in UPDATE_COLUMNS})


def _same(stored: str, fp: Fingerprint) -> bool:
    """Whether a stored content hash matches a fingerprint (also a pre-xxh3 hash)."""
    return stored == fp.hash or (stored[:1] != "x" and stored == fp.legacy_hash())


def _chunks(items: Sequence[str], n: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
