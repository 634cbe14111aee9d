"""Indexes that earn their place, and MariaDB's own page compression for tasks.

Each index left serves a documented query or a sync path (README: "The archive"):
- tasks (source, status, gone_at), replacing (source, status) and (source, gone_at): the
  unfinished tasks a sync re-checks, and `status`'s counts, read from the index alone;
- tasks (submit_time, action): reports and `daily_stats` over a period, newest-first lists;
- task_events (source, task_id, observed_at): a task's history; (run_id): the foreign key
  (MariaDB keeps one for it anyway).
Dropped: tasks (source, submit_time) and (finish_time), task_events (observed_at): no query
or sync path used them, and together they took about 180 bytes a task on SQLite.

MariaDB: `PAGE_COMPRESSED=1` on tasks and task_events (zlib pages, holes punched in the file):
about a quarter of the bytes on disk, measured. A no-op on MySQL, SQLite and PostgreSQL
(PostgreSQL compresses large values itself, with lz4 since 0004).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMPRESSED = ("tasks", "task_events")


def _mariadb() -> bool:
    bind = op.get_bind()
    if bind.dialect.name not in ("mysql", "mariadb"):
        return False
    return "mariadb" in str(bind.exec_driver_sql("SELECT VERSION()").scalar()).lower()


def upgrade() -> None:
    op.create_index("ix_tasks_source_status_gone_at", "tasks", ["source", "status", "gone_at"])
    op.drop_index("ix_tasks_source_status", table_name="tasks")
    op.drop_index("ix_tasks_source_gone_at", table_name="tasks")
    op.drop_index("ix_tasks_source_submit_time", table_name="tasks")
    op.drop_index("ix_tasks_finish_time", table_name="tasks")
    op.drop_index("ix_task_events_observed_at", table_name="task_events")
    if _mariadb():
        for table in COMPRESSED:
            op.execute(f"ALTER TABLE {table} PAGE_COMPRESSED=1")


def downgrade() -> None:
    if _mariadb():
        for table in COMPRESSED:
            op.execute(f"ALTER TABLE {table} PAGE_COMPRESSED=0")
    op.create_index("ix_task_events_observed_at", "task_events", ["observed_at"])
    op.create_index("ix_tasks_finish_time", "tasks", ["finish_time"])
    op.create_index("ix_tasks_source_submit_time", "tasks", ["source", "submit_time"])
    op.create_index("ix_tasks_source_gone_at", "tasks", ["source", "gone_at"])
    op.create_index("ix_tasks_source_status", "tasks", ["source", "status"])
    op.drop_index("ix_tasks_source_status_gone_at", table_name="tasks")
