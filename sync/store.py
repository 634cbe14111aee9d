"""The only door to the database: engines, migrations, bulk upserts with change detection,
events, the run ledger, checkpoints, writer locks and read-only queries."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL, make_url

from sync.batch import Binder, Built, Prepared, json_or_none, prepare
from sync.config import SECRET_URL_KEYS, redacted_url
from sync.errors import ConfigError, DatabaseError, LockHeld, MassGoneRefused, printable
from sync.models import (
    RUN_COUNTERS,
    TERMINAL_STATUSES,
    Checkpoint,
    Lease,
    Recheck,
    SyncRun,
    Task,
    TaskEvent,
)
from sync.records import Fingerprint, Rejected, changed_fields

log = logging.getLogger("tasksync.store")

TASK_COLUMNS = [c.name for c in Task.__table__.columns]
UPDATE_COLUMNS = [c for c in TASK_COLUMNS if c not in ("source", "id", "first_seen_at")]
EVENT_COLUMNS = [c.name for c in TaskEvent.__table__.columns if c.name != "id"]
LEASE_SECONDS = 60.0
SEEN_REFRESH = timedelta(hours=1)  # a sweep refreshes last_seen_at only when older than this
WAL_SIZE_LIMIT = 64 << 20  # bytes the SQLite WAL file is cut back to after a checkpoint
RECHECK_FIRST_S = 60.0  # an unfinished task list-by-condition missed is asked again after 1 min,
RECHECK_MAX_S = 6 * 3600.0  # then 2, 4, 8 ... minutes, at most every 6 hours until a sweep
WAL_BACKSTOP_PAGES = 16384  # auto-checkpoint only if the background checkpointer falls behind


def normalize_url(url: str) -> URL:
    """Pick our drivers for bare dialect names and make MySQL/MariaDB speak utf8mb4."""
    try:
        u = make_url(url)
    except sa_exc.ArgumentError:
        raise ConfigError(f"not a database URL: {url!r}") from None
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    elif u.drivername in ("mysql", "mariadb"):
        u = u.set(drivername=f"{u.drivername}+pymysql")
    if u.get_backend_name() in ("mysql", "mariadb") and "charset" not in u.query:
        u = u.update_query_dict({"charset": "utf8mb4"})
    return u


def _json_dumps(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()


def scrub(text: str, url: URL) -> str:
    """An error message with the database password removed, cut to its first line."""
    line = (text.strip().splitlines() or [""])[0]
    secrets = [str(url.password)] if url.password else []
    secrets += [str(v) for k, v in url.query.items() if k.lower() in SECRET_URL_KEYS and v]
    for secret in secrets:
        line = line.replace(secret, "***")
    return printable(line, 500)


def _log_rejected(source: str, tid: str | None, reason: str) -> None:
    """A task that could not be stored: one log line (its id and the reason may be anything a
    server sent, so both are made printable)."""
    log.warning("source %s: task %s not stored: %s", source, printable(tid, 100), printable(reason))


Event = tuple[str, Built, str, str | None, list[str] | None]  # id, row, kind, previous, fields


@dataclass
class SaveResult:
    """What one `save` did (or, in a dry run, would do)."""

    inserted: int = 0
    changed: int = 0
    unchanged: int = 0
    returned: int = 0
    rejected: int = 0
    seen: int = 0
    statuses: dict[str, str | None] = field(default_factory=dict)
    new_ids: set[str] = field(default_factory=set)

    def add(self, other: SaveResult) -> None:
        for name in ("inserted", "changed", "unchanged", "returned", "rejected", "seen"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Store:
    """A handle on one archive database."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        self.dialect = self.url.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "json_serializer": _json_dumps}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
            raise ConfigError(f"database URL {self.display_url}: {exc}") from None
        if self.dialect == "sqlite":
            _sqlite_pragmas(self.engine)
        elif self.dialect == "postgresql":
            _pg_async_commit(self.engine)
        database = self.url.database
        self.wal = (
            WalCheckpointer(database)
            if self.dialect == "sqlite" and database and database != ":memory:"
            else None
        )
        self.held: dict[str, WriterLock] = {}
        self._mark = "?" if self.dialect == "sqlite" else "%s"
        self._grown, self._analyze_at = 0, 1000
        self._upsert_sql = self._compile(_upsert_statement(self.dialect))
        self.binder = Binder(self.dialect, self._upsert_sql[1])
        self._ts = self.binder.ts
        self._event_sql = self._compile(insert(TaskEvent).values({c: None for c in EVENT_COLUMNS}))

    @property
    def display_url(self) -> str:
        return redacted_url(self.url.render_as_string(hide_password=False))

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction. On SQLite it starts with BEGIN IMMEDIATE: a deferred one that
        reads first and then writes fails at once ("database is locked", no busy wait) when
        another connection wrote in between; taking the write lock up front waits instead."""
        with self.engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
            yield conn
        if self.wal is not None:
            self.wal.poke()

    @contextlib.contextmanager
    def guarded(self, source: str) -> Iterator[Connection]:
        """A write transaction for a source's rows that first checks, inside it, that this
        run still holds the source's writer lock (when it holds one): every write of a run
        goes through here, so none happens after the lock was lost."""
        with self.write() as conn:
            if source in self.held:
                self.held[source].verify(conn)
            yield conn

    def db_error(self, exc: BaseException, doing: str) -> DatabaseError:
        """A one-line DatabaseError for `exc` that names the URL and never the password."""
        orig = getattr(exc, "orig", None) or exc
        return DatabaseError(
            f"database {self.display_url}: {doing} failed: {scrub(str(orig), self.url)}"
        )

    def ping(self) -> None:
        """Connect once, or raise a one-line DatabaseError."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa_exc.SQLAlchemyError as exc:
            raise self.db_error(exc, "connecting") from None

    def warnings(self) -> list[str]:
        """Settings of the database server that will hurt a long-running archive."""
        if self.dialect != "postgresql":
            return []
        with self.engine.connect() as conn:
            autovacuum = conn.exec_driver_sql("SHOW autovacuum").scalar()
        if autovacuum == "off":
            return [
                f"database {self.display_url}: autovacuum is off, so rows tasksync updates "
                "leave dead versions behind and the archive and its syncs grow slower over "
                "weeks; turn it on, or VACUUM ANALYZE the archive regularly"
            ]
        return []

    def dispose(self) -> None:
        if self.wal is not None:
            self.wal.stop()
        self.engine.dispose()

    # ---- migrations -------------------------------------------------------------------
    def _alembic(self, conn: Connection) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(migrations_dir()))
        cfg.attributes["connection"] = conn
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        try:
            with self.write() as conn:
                command.upgrade(self._alembic(conn), revision)
        except sa_exc.SQLAlchemyError as exc:
            raise self.db_error(exc, "migrating") from None

    def downgrade(self, revision: str) -> None:
        from alembic import command
        from alembic.util import CommandError

        try:
            with self.write() as conn:
                command.downgrade(self._alembic(conn), revision)
        except CommandError as exc:
            raise ConfigError(f"cannot downgrade to {revision!r}: {exc}") from None
        except sa_exc.SQLAlchemyError as exc:
            raise self.db_error(exc, "migrating") from None

    def current(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        try:
            with self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        except sa_exc.SQLAlchemyError as exc:
            raise self.db_error(exc, "reading the schema revision") from None

    def head(self) -> str:
        from alembic.script import ScriptDirectory

        with self.engine.connect() as conn:
            head = ScriptDirectory.from_config(self._alembic(conn)).get_current_head()
        assert head is not None
        return head

    def check(self) -> list[str]:
        """Differences between the models and the database (empty when in step)."""
        from alembic.autogenerate import compare_metadata
        from alembic.runtime.migration import MigrationContext

        from sync.models import Base

        with self.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return [str(d) for d in compare_metadata(ctx, Base.metadata)]

    def require_current(self) -> None:
        """Refuse to run against a database that is not migrated to head."""
        current, head = self.current(), self.head()
        if current != head:
            raise DatabaseError(
                f"database {self.display_url} is at schema revision {current or 'none'}, "
                f"tasksync needs {head}: run `tasksync db upgrade`"
            )

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
            **dict.fromkeys(RUN_COUNTERS, 0),
        )
        try:
            with self.write() as conn:
                result = conn.execute(insert(SyncRun).values(**values))
                pk = result.inserted_primary_key
                assert pk is not None
                return int(pk[0])
        except sa_exc.SQLAlchemyError as exc:
            raise self.db_error(exc, "recording the run") from None

    def finish_run(
        self, run_id: int, counts: dict[str, int], outcome: str, error: str | None, now: datetime
    ) -> None:
        with self.write() as conn:
            started = conn.execute(
                select(SyncRun.started_at).where(SyncRun.id == run_id)
            ).scalar_one()
            conn.execute(
                update(SyncRun)
                .where(SyncRun.id == run_id)
                .values(
                    finished_at=now,
                    outcome=outcome,
                    error=error and error[:2000],
                    duration_s=(now - started).total_seconds(),
                    **counts,
                )
            )

    # ---- saving tasks -----------------------------------------------------------------
    def prepare(
        self, source: str, tasks: Sequence[Any], now: datetime, *, build_rows: bool = False
    ) -> Prepared:
        """Fingerprint raw task objects (no I/O); see `sync.batch.prepare`."""
        return prepare(self.binder, source, tasks, now, build_rows=build_rows)

    def save(
        self,
        source: str,
        tasks: Sequence[Any] | Prepared,
        run_id: int | None,
        now: datetime,
        *,
        dry_run: bool = False,
        checkpoint: tuple[str, int, str | None, int | None] | None = None,
        checkpoint_if_unchanged: bool = True,
    ) -> SaveResult:
        """Store a batch of tasks; only new, changed or returned tasks are written.

        One transaction: rows, events and (optionally) the backfill checkpoint commit together.
        With `checkpoint_if_unchanged=False` a batch that wrote nothing leaves the checkpoint
        alone, so a walk over an unchanged archive does not write at all.
        `now` is when the tasks were observed (for a Prepared batch: when it was prepared).
        """
        batch = tasks if isinstance(tasks, Prepared) else self.prepare(source, tasks, now)
        for rej in batch.rejects:
            _log_rejected(source, rej.id, rej.reason)
        result = SaveResult(rejected=batch.rejected, seen=len(batch.records))
        try:

            def commit(conn: Connection, rows: list[Any], events: list[Event]) -> None:
                """Rows, events and the checkpoint (the lock was checked in this transaction)."""
                if rows:
                    self._write(conn, batch, rows, events, run_id, result.inserted)
                if checkpoint and (rows or checkpoint_if_unchanged):
                    self._write_checkpoint(conn, source, *checkpoint, run_id, now)

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
                    self._write_checkpoint(conn, source, *checkpoint, run_id, now)
        return result

    def _save_one_by_one(self, batch: Prepared, run_id: int | None, dry_run: bool) -> SaveResult:
        """After the database refused a batch: each task in its own transaction, so one bad
        task is logged and counted and the others are stored (or, in a dry run, counted)."""
        total = SaveResult(rejected=batch.rejected, seen=len(batch.records))
        for tid, fp in batch.records.items():
            one = SaveResult()
            single = Prepared(batch.source, batch.now, {tid: fp}, 0)
            try:
                with self.guarded(batch.source) as conn:
                    rows, events = self._plan(conn, single, one)
                    if rows and not dry_run:
                        self._write(conn, single, rows, events, run_id, one.inserted)
            except sa_exc.DBAPIError as exc:
                if isinstance(exc, sa_exc.OperationalError):
                    raise self.db_error(exc, "saving tasks") from None
                total.rejected += 1
                total.seen -= 1
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
            b = batch.built.get(tid) or self.binder.built(source, fp, at)
            if isinstance(b, Rejected):
                result.rejected += 1
                result.seen -= 1
                _log_rejected(source, b.id, b.reason)
                continue
            result.statuses[tid] = b.status
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
            old_raw: dict[str, Any] = {}
            for chunk in _chunks([tid for tid, _b in changed], 500):
                raws = select(Task.id, Task.raw).where(Task.source == source, Task.id.in_(chunk))
                old_raw.update({cid: raw for cid, raw in conn.execute(raws)})
            for tid, b in changed:
                fields = changed_fields(old_raw.get(tid), records[tid].raw)
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
        upsert_sql, event_sql = self._upsert_sql[0], self._event_sql[0]
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
            # A small sample is enough to pick the right index (30 ms instead of 450 ms at
            # 100k rows); autovacuum's own ANALYZE later refines the statistics.
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
                (Task.status.is_(None)) | (Task.status.not_in(TERMINAL_STATUSES)),
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

    def mark_gone(
        self,
        source: str,
        seen: set[str],
        run_id: int | None,
        now: datetime,
        *,
        max_share: float,
        allow_mass: bool = False,
        dry_run: bool = False,
    ) -> int:
        """After a complete sweep: mark archived tasks the server no longer lists as gone."""
        present = 0
        missing: list[str] = []
        for tid in self.iter_present_ids(source):
            present += 1
            if tid not in seen:
                missing.append(tid)
        if not missing:
            return 0
        share = len(missing) / present
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
        self,
        conn: Connection,
        source: str,
        kind: str,
        page: int,
        cursor: str | None,
        total: int | None,
        run_id: int | None,
        now: datetime,
    ) -> None:
        # Plain driver SQL: this runs with every page a walk saves.
        m = self._mark
        values = (page, cursor, total, run_id, self._ts(now), source, kind)
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

    def checkpoint(self, source: str, kind: str) -> tuple[int, str | None, int | None] | None:
        q = select(Checkpoint.page, Checkpoint.cursor_id, Checkpoint.cursor_total).where(
            Checkpoint.source == source, Checkpoint.kind == kind
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else (row[0], row[1], row[2])

    def clear_checkpoint(self, source: str, kind: str) -> None:
        with self.guarded(source) as conn:
            conn.execute(
                delete(Checkpoint).where(Checkpoint.source == source, Checkpoint.kind == kind)
            )

    # ---- one writer per source ----------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, source: str, now: datetime | None = None) -> Iterator[None]:
        """Hold the writer lock of a source for the duration of a run, or raise LockHeld."""
        lock = WriterLock(self, source)
        lock.acquire(now or datetime.now(UTC))
        self.held[source] = lock
        try:
            yield
        finally:
            self.held.pop(source, None)
            lock.release()

    def lease_holder(self, source: str) -> dict[str, Any] | None:
        """Who holds (or last held) the writer lock of a source."""
        q = select(Lease.holder, Lease.host, Lease.pid, Lease.acquired_at, Lease.expires_at)
        with self.engine.connect() as conn:
            row = conn.execute(q.where(Lease.source == source)).first()
        if row is None:
            return None
        return dict(zip(("holder", "host", "pid", "since", "expires_at"), row, strict=True))

    # ---- read-only access --------------------------------------------------------------
    def readonly_query(
        self, sql: str, timeout_s: float = 30.0
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """One read-only statement on a connection of its own (see `sync.readonly`), all rows."""
        from sync import readonly

        with readonly.run(self.url.render_as_string(hide_password=False), sql, timeout_s) as (
            cols,
            rows,
        ):
            return cols, list(rows)

    def grant_reader(
        self, name: str, password: str | None, *, host: str = "%", execute: bool = True
    ) -> list[str]:
        """Create (or update) a login that can only read the archive's tables and views; the
        statements (the password shown as '***'), run unless `execute` is False. Re-run it
        after `db upgrade` adds tables."""
        from sqlalchemy import inspect

        from sync.readonly import grant_reader_sql, with_password

        try:
            with self.engine.connect() as conn:
                insp = inspect(conn)
                relations = sorted(set(insp.get_table_names()) - {"alembic_version"}) + sorted(
                    insp.get_view_names()
                )
                exists = self.dialect == "postgresql" and bool(
                    conn.exec_driver_sql(
                        "SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)
                    ).first()
                )
            sql = grant_reader_sql(
                self.dialect,
                name,
                self.url.database or "",
                relations,
                exists=exists,
                password=password,
                host=host,
            )
            if execute:
                with self.write() as conn:
                    for stmt in sql:
                        conn.exec_driver_sql(
                            with_password(stmt, password, self.dialect).replace("%", "%%")
                        )
        except sa_exc.DBAPIError as exc:
            raise self.db_error(exc, "granting read access") from None
        return sql


class WriterLock:
    """One writer per source: advisory lock (PostgreSQL), GET_LOCK (MariaDB), lease (SQLite).

    The PostgreSQL and MariaDB locks live on a connection held for the run, so a crashed
    holder releases them as soon as its connection drops. SQLite has no such thing: a lease
    row with an expiry, extended by a heartbeat thread, is taken over once it has expired.
    """

    def __init__(self, store: Store, source: str) -> None:
        self.store = store
        self.source = source
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.key = int.from_bytes(
            hashlib.blake2b(f"tasksync:{source}".encode(), digest_size=8).digest(),
            "big",
            signed=True,
        )
        # GET_LOCK names are server-wide: two archives in different databases of one MariaDB
        # server must not block each other. (PostgreSQL advisory locks are per database.)
        scope = f"{store.url.database}:{source}".encode()
        self.name = "tasksync:" + hashlib.blake2b(scope, digest_size=16).hexdigest()
        self.conn: Connection | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.renewed = 0.0  # monotonic time of the last successful lease write (SQLite)
        self.lost = False
        self.backend: Any = None  # server session id of the lock's connection

    def _held(self) -> LockHeld:
        info = self.store.lease_holder(self.source)
        if info:
            who = (
                f"host {info['host']} pid {info['pid']} since {info['since']:%Y-%m-%d %H:%M:%S} UTC"
            )
        else:
            who = "another process"
        return LockHeld(f"source {self.source!r} is being synced by {who}; skipped")

    def acquire(self, now: datetime) -> None:
        store = self.store
        try:
            if store.dialect == "sqlite":
                self._take_lease(now, require_free=True)
                self._beat = threading.Thread(target=self._heartbeat, daemon=True)
                self._beat.start()
                return
            self.conn = store.engine.connect()
            if store.dialect == "postgresql":
                got = self.conn.exec_driver_sql(
                    "SELECT pg_try_advisory_lock(%s)", (self.key,)
                ).scalar()
            else:
                got = self.conn.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (self.name,)).scalar()
            if got:
                self.backend = self.conn.exec_driver_sql(
                    "SELECT pg_backend_pid()"
                    if store.dialect == "postgresql"
                    else "SELECT CONNECTION_ID()"
                ).scalar()
            self.conn.commit()
            if not got:
                self._drop_connection()
                raise self._held()
            self._take_lease(now, require_free=False)
        except sa_exc.SQLAlchemyError as exc:
            self._drop_connection()
            raise store.db_error(exc, "taking the writer lock") from None

    def _drop_connection(self) -> None:
        """Close the lock's session for real (never back to the pool), so the server releases
        a session lock even if unlocking failed."""
        if self.conn is not None:
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                self.conn.invalidate()
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                self.conn.close()
            self.conn = None

    def verify(self, conn: Connection) -> None:
        """Raise DatabaseError if the lock may have been lost (its session died, or the lease
        was taken over), so a run never writes without holding it. Checked from the writing
        transaction itself: if the check passes, the write is covered."""
        try:
            if self.store.dialect == "postgresql":
                held = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = %s AND classid = %s AND objid = %s AND objsubid = 1",
                    (self.backend, (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF),
                ).scalar()
                if held:
                    return
                raise DatabaseError(
                    f"source {self.source!r}: lost the writer lock (its database session ended)"
                )
            if self.store.dialect != "sqlite":
                if conn.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (self.name,)).scalar() == (
                    self.backend
                ):
                    return
                raise DatabaseError(
                    f"source {self.source!r}: lost the writer lock (its database session ended)"
                )
            if not self.lost and time.monotonic() - self.renewed < LEASE_SECONDS / 2:
                return  # renewed recently: nobody else can have taken an unexpired lease
            holder = conn.execute(select(Lease.holder).where(Lease.source == self.source)).scalar()
        except sa_exc.SQLAlchemyError as exc:
            raise self.store.db_error(exc, "checking the writer lock") from None
        if holder != self.holder:
            raise DatabaseError(f"source {self.source!r}: the writer lease was taken over")

    def _take_lease(self, now: datetime, require_free: bool) -> None:
        values = dict(
            source=self.source,
            holder=self.holder,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            acquired_at=now,
            heartbeat_at=now,
            expires_at=now + timedelta(seconds=LEASE_SECONDS),
        )
        conn = self.store.engine.connect().execution_options(sqlite_immediate=True)
        with conn, conn.begin():
            row = conn.execute(
                select(Lease.holder, Lease.expires_at, Lease.host, Lease.pid).where(
                    Lease.source == self.source
                )
            ).first()
            if (
                row is not None
                and require_free
                and row.expires_at > now
                and row.holder != self.holder
                and not _dead_here(row.host, row.pid)
            ):
                raise self._held()
            conn.execute(delete(Lease).where(Lease.source == self.source))
            conn.execute(insert(Lease).values(**values))
        self.renewed = time.monotonic()

    def _heartbeat(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 4):
            now = datetime.now(UTC)
            try:
                with self.store.write() as conn:
                    done = conn.execute(
                        update(Lease)
                        .where(Lease.source == self.source, Lease.holder == self.holder)
                        .values(heartbeat_at=now, expires_at=now + timedelta(seconds=LEASE_SECONDS))
                    )
                if done.rowcount == 1:
                    self.renewed = time.monotonic()
                else:
                    self.lost = True
            except sa_exc.SQLAlchemyError as exc:
                log.warning(
                    "source %s: lease heartbeat failed: %s",
                    self.source,
                    scrub(str(exc), self.store.url),
                )

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        with contextlib.suppress(sa_exc.SQLAlchemyError), self.store.write() as conn:
            conn.execute(
                delete(Lease).where(Lease.source == self.source, Lease.holder == self.holder)
            )
        if self.conn is not None:
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                if self.store.dialect == "postgresql":
                    self.conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (self.key,))
                else:
                    self.conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (self.name,))
                self.conn.commit()
            self._drop_connection()


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


def _dead_here(host: str, pid: int) -> bool:
    """A lease holder on this host whose process is gone (crashed, kill -9) holds nothing."""
    if host != socket.gethostname()[:255] or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _chunks(items: Sequence[str], n: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL and a busy timeout, so readers never block the writer for long; explicit BEGIN."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # Tasks are ~3 KB rows: 16 KiB pages avoid overflow chains (about 1.5x faster bulk
        # writes). Takes effect only on a new, empty file; existing archives keep theirs.
        cur.execute("PRAGMA page_size=16384")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        # Commits leave the log to WalCheckpointer's thread; this is only a backstop.
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
        # A backfill grows the WAL to hundreds of MB; without a limit it never shrinks.
        cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class WalCheckpointer:
    """Copies SQLite's write-ahead log into the database file on a background thread.

    A commit that crosses the auto-checkpoint mark otherwise does that copy, and its fsync, on
    the writer's own time: about half of what a page cost to save. Here a passive checkpoint
    (which never blocks readers or writers) runs at most every `interval` seconds after a
    write, and sqlite releases the GIL while it works, so it overlaps with the next page.
    Durability is unchanged: `synchronous=NORMAL` still syncs the log before the file.
    """

    def __init__(self, path: str, interval: float = 0.5) -> None:
        self.path = path
        self.interval = interval
        self.wake = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def poke(self) -> None:
        with self.lock:
            if self.thread is None and not self.stopping:
                self.thread = threading.Thread(target=self._run, name="tasksync-wal", daemon=True)
                self.thread.start()
        self.wake.set()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        except sqlite3.Error as exc:
            log.debug("WAL checkpointer not started: %s", exc)
            return
        try:
            while True:
                self.wake.wait()
                if self.stopping:
                    return
                self.wake.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy or gone: the next poke tries again
                    log.debug("WAL checkpoint skipped: %s", exc)
                time.sleep(self.interval)
        finally:
            conn.close()

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            thread, self.thread = self.thread, None
        self.wake.set()
        if thread is not None:
            thread.join(timeout=self.interval + 5)


def _pg_async_commit(engine: Engine) -> None:
    """synchronous_commit = off: a commit returns before its WAL reaches disk. Atomicity is
    unchanged (rows, events and checkpoint still commit together); a PostgreSQL crash can lose
    the last fraction of a second of commits, which the next run simply fetches again."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
        dbapi_conn.commit()


def migrations_dir() -> Path:
    """The Alembic script folder: the installed `sync.migrations`, or the checkout's."""
    spec = importlib.util.find_spec("sync.migrations")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent
    return Path(__file__).resolve().parent.parent / "migrations"
