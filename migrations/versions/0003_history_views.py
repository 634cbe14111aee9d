"""Views for history questions: task_timings (one row per task with its day) and daily_stats.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The UTC calendar day of submit_time, spelled per dialect; everything else is portable SQL.
DAY = {
    "sqlite": "date(submit_time)",
    "postgresql": "CAST(submit_time AT TIME ZONE 'UTC' AS DATE)",
    "mysql": "DATE(submit_time)",
    "mariadb": "DATE(submit_time)",
}


def upgrade() -> None:
    day = DAY[op.get_bind().dialect.name]
    op.execute(
        f"""CREATE VIEW task_timings AS
        SELECT source, id, action, status, {day} AS day, submit_time, start_time, finish_time,
               queue_ms, run_ms, total_ms, gone_at
        FROM tasks"""
    )
    op.execute(
        """CREATE VIEW daily_stats AS
        SELECT source, day, action,
               COUNT(*) AS tasks,
               SUM(CASE WHEN status = 'SUCCESS' THEN 1 ELSE 0 END) AS succeeded,
               SUM(CASE WHEN status = 'FAILURE' THEN 1 ELSE 0 END) AS failed,
               SUM(CASE WHEN status = 'CANCEL' THEN 1 ELSE 0 END) AS cancelled,
               SUM(CASE WHEN status IN ('SUCCESS', 'FAILURE', 'CANCEL') THEN 0 ELSE 1 END)
                   AS unfinished,
               AVG(queue_ms) AS avg_queue_ms,
               AVG(run_ms) AS avg_run_ms
        FROM task_timings
        GROUP BY source, day, action"""
    )


def downgrade() -> None:
    op.execute("DROP VIEW daily_stats")
    op.execute("DROP VIEW task_timings")
