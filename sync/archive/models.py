"""The archive's schema, declared once (the README's "The archive" documents it). Alembic
revisions create it; tests check that the migrations and these models agree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TERMINAL_STATUSES = ("SUCCESS", "FAILURE", "CANCEL")


def unfinished(status: Any) -> Any:
    """Whether a task with this status column is not finished: any status but SUCCESS,
    FAILURE and CANCEL, a missing one included (MODAL, "" and unknown ones too). The one
    definition the store and the reports use; the `daily_stats` view spells it the same way."""
    return status.is_(None) | status.not_in(TERMINAL_STATUSES)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every dialect (SQLite and MariaDB store naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name != "postgresql" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
Json = JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
EventId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class Task(Base):
    """One task as last seen on one source's server."""

    __tablename__ = "tasks"
    __table_args__ = (
        # Each serves a documented query or a sync path (README: "The archive").
        Index("ix_tasks_source_status_gone_at", "source", "status", "gone_at"),
        Index("ix_tasks_submit_time_action", "submit_time", "action"),
    )

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    action: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(64))
    prompt: Mapped[str | None] = mapped_column(LongText)
    prompt_en: Mapped[str | None] = mapped_column(LongText)
    description: Mapped[str | None] = mapped_column(LongText)
    state: Mapped[str | None] = mapped_column(LongText)
    progress: Mapped[str | None] = mapped_column(String(64))
    image_url: Mapped[str | None] = mapped_column(LongText)
    fail_reason: Mapped[str | None] = mapped_column(LongText)
    submit_time: Mapped[datetime | None]
    start_time: Mapped[datetime | None]
    finish_time: Mapped[datetime | None]
    queue_ms: Mapped[int | None] = mapped_column(BigInteger)
    run_ms: Mapped[int | None] = mapped_column(BigInteger)
    total_ms: Mapped[int | None] = mapped_column(BigInteger)
    properties: Mapped[Any | None] = mapped_column(Json)
    buttons: Mapped[Any | None] = mapped_column(Json)
    extra: Mapped[Any | None] = mapped_column(Json)
    absent: Mapped[str | None] = mapped_column(String(255))
    shape: Mapped[str | None] = mapped_column(String(16))
    content_hash: Mapped[str] = mapped_column(String(32))
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    last_changed_at: Mapped[datetime]
    gone_at: Mapped[datetime | None]


class SyncRun(Base):
    """One backfill, sync or sweep of one source: its counts and outcome."""

    __tablename__ = "sync_runs"
    __table_args__ = (Index("ix_sync_runs_source_started_at", "source", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(16))
    pages: Mapped[int] = mapped_column(Integer, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    tasks_seen: Mapped[int] = mapped_column(Integer, default=0)
    inserted: Mapped[int] = mapped_column(Integer, default=0)
    changed: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    gone: Mapped[int] = mapped_column(Integer, default=0)
    returned: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    duration_s: Mapped[float | None] = mapped_column(Float)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class TaskEvent(Base):
    """One observed change of one task: created, changed, gone or returned."""

    __tablename__ = "task_events"
    __table_args__ = (
        Index("ix_task_events_source_task_id_observed_at", "source", "task_id", "observed_at"),
        Index("ix_task_events_run_id", "run_id"),
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(String(255))
    observed_at: Mapped[datetime]
    run_id: Mapped[int | None] = mapped_column(ForeignKey("sync_runs.id"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str | None] = mapped_column(String(64))
    previous_status: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[str | None] = mapped_column(String(64))
    changed: Mapped[Any | None] = mapped_column(Json)


class Checkpoint(Base):
    """Where an interrupted backfill of a source resumes: anchored on an id, not a page."""

    __tablename__ = "sync_checkpoints"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    page: Mapped[int] = mapped_column(Integer)
    cursor_id: Mapped[str | None] = mapped_column(String(255))
    cursor_total: Mapped[int | None] = mapped_column(BigInteger)
    run_id: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime]


class Lease(Base):
    """Who holds a source's writer lock (the lock itself on SQLite; a name tag elsewhere)."""

    __tablename__ = "sync_leases"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class Recheck(Base):
    """An unfinished task that `list-by-condition` stopped returning, and when to ask again
    (with backoff); only a sweep decides whether it is gone."""

    __tablename__ = "task_rechecks"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    misses: Mapped[int] = mapped_column(Integer)
    first_missed_at: Mapped[datetime]
    next_check_at: Mapped[datetime]


class SourceApi(Base):
    """For `api = "auto"`: the family probing found for a source, and what showed it;
    forgotten (and probed again) when a reply stops fitting it."""

    __tablename__ = "source_apis"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    api: Mapped[str] = mapped_column(String(16))
    evidence: Mapped[str] = mapped_column(String(255))
    detected_at: Mapped[datetime]


IMAGE_STATES = ("pending", "fetched", "failed", "expired")


class TaskImage(Base):
    """One picture or video of a task (a slot: source, task, role, position), its link, and
    what fetching it did: the file's hash, size, type and dimensions once fetched; attempts
    and the last error until then. `state`: pending, fetched, failed (given up) or expired
    (the link's own expiry passed and the one try after it failed)."""

    __tablename__ = "task_images"
    __table_args__ = (
        UniqueConstraint("source", "task_id", "role", "position"),
        # The fetch queue: pending slots, soonest-expiring first.
        Index("ix_task_images_state_url_expires_at", "state", "url_expires_at"),
        # status: counts and bytes per source and state.
        Index("ix_task_images_source_state", "source", "state"),
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(LongText)
    url_expires_at: Mapped[datetime | None]
    submitted_at: Mapped[datetime | None]
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_try_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    content_type: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str | None] = mapped_column(String(255))
    fetched_at: Mapped[datetime | None]
    discovered_at: Mapped[datetime]


class ImageScan(Base):
    """How far the image job has looked for new image links: tasks that changed at or after
    `changed_since` are looked at again (an hour's overlap, so a sync committing late is not
    missed)."""

    __tablename__ = "image_scans"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    changed_since: Mapped[datetime]
    scanned_at: Mapped[datetime]
