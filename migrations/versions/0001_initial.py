"""Initial archive: tasks keyed on (source, id), their change events, and the run ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


# The column types as they were at this revision, declared here so that a later change to the
# models never changes what this revision creates.
class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps (naive UTC on SQLite and MariaDB)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[datetime]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name != "postgresql" else value


LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
Json = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=True),
        sa.Column("status", sa.String(64), nullable=True),
        sa.Column("prompt", LongText, nullable=True),
        sa.Column("prompt_en", LongText, nullable=True),
        sa.Column("description", LongText, nullable=True),
        sa.Column("state", LongText, nullable=True),
        sa.Column("progress", sa.String(64), nullable=True),
        sa.Column("image_url", LongText, nullable=True),
        sa.Column("fail_reason", LongText, nullable=True),
        sa.Column("submit_time", UTCDateTime(), nullable=True),
        sa.Column("start_time", UTCDateTime(), nullable=True),
        sa.Column("finish_time", UTCDateTime(), nullable=True),
        sa.Column("queue_ms", sa.BigInteger(), nullable=True),
        sa.Column("run_ms", sa.BigInteger(), nullable=True),
        sa.Column("total_ms", sa.BigInteger(), nullable=True),
        sa.Column("properties", Json, nullable=True),
        sa.Column("buttons", Json, nullable=True),
        sa.Column("raw", Json, nullable=False),
        sa.Column("content_hash", sa.String(32), nullable=False),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_changed_at", UTCDateTime(), nullable=False),
        sa.Column("gone_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("source", "id", name=op.f("pk_tasks")),
        **MYSQL_TABLE,
    )
    op.create_index("ix_tasks_source_status", "tasks", ["source", "status"])
    op.create_index("ix_tasks_source_submit_time", "tasks", ["source", "submit_time"])
    op.create_index("ix_tasks_submit_time_action", "tasks", ["submit_time", "action"])
    op.create_index("ix_tasks_finish_time", "tasks", ["finish_time"])
    op.create_index("ix_tasks_source_gone_at", "tasks", ["source", "gone_at"])

    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("tasks_seen", sa.Integer(), nullable=False),
        sa.Column("inserted", sa.Integer(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("gone", sa.Integer(), nullable=False),
        sa.Column("returned", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
        **MYSQL_TABLE,
    )
    op.create_index("ix_sync_runs_source_started_at", "sync_runs", ["source", "started_at"])

    op.create_table(
        "task_events",
        sa.Column("id", EventId, autoincrement=True, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("observed_at", UTCDateTime(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(64), nullable=True),
        sa.Column("previous_status", sa.String(64), nullable=True),
        sa.Column("progress", sa.String(64), nullable=True),
        sa.Column("changed", Json, nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_task_events_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_events")),
        **MYSQL_TABLE,
    )
    op.create_index(
        "ix_task_events_source_task_id_observed_at",
        "task_events",
        ["source", "task_id", "observed_at"],
    )
    op.create_index("ix_task_events_observed_at", "task_events", ["observed_at"])
    op.create_index("ix_task_events_run_id", "task_events", ["run_id"])


def downgrade() -> None:
    op.drop_table("task_events")
    op.drop_table("sync_runs")
    op.drop_table("tasks")
