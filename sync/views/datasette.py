"""Datasette metadata for a SQLite archive (`tasksync report --datasette-metadata`): titles and
descriptions for the tables and views people read, the bookkeeping tables hidden, and canned
queries for the common questions."""

from __future__ import annotations

from typing import Any

TABLES: dict[str, str] = {
    "tasks": "One row per task as last seen on its server (source, id); `extra` holds what no "
    "column does; `gone_at` is set when the server stopped listing it.",
    "task_events": "One row per observed change of a task: created, changed, gone, returned.",
    "sync_runs": "Every backfill, sync and sweep, with its counts and outcome.",
    "task_timings": "View: one row per task with its UTC day, queue, run and total time (ms).",
    "daily_stats": "View: per source, UTC day and action, tasks by outcome and mean times (ms).",
    "task_images": "Pictures and videos of tasks: link, state, and the fetched file's hash, "
    "size, type and dimensions (`path` is relative to the images folder).",
}
HIDDEN = (
    "alembic_version",
    "sync_checkpoints",
    "sync_leases",
    "source_apis",
    "task_rechecks",
    "image_scans",
)
QUERIES: dict[str, dict[str, str]] = {
    "failure_rate_by_day": {
        "title": "Failure rate by day",
        "sql": "SELECT day, sum(failed) AS failed, sum(succeeded + failed + cancelled) AS "
        "finished, round(100.0 * sum(failed) / nullif(sum(succeeded + failed + cancelled), 0), "
        "1) AS failure_pct FROM daily_stats GROUP BY day ORDER BY day DESC",
    },
    "median_run_time_by_day_and_action": {
        "title": "Median run time by day and action (seconds)",
        "sql": "WITH ranked AS (SELECT day, action, run_ms, row_number() OVER (PARTITION BY "
        "day, action ORDER BY run_ms) AS k, count(*) OVER (PARTITION BY day, action) AS n "
        "FROM task_timings WHERE run_ms IS NOT NULL) SELECT day, action, n AS tasks, "
        "avg(run_ms) / 1000.0 AS median_run_s FROM ranked WHERE k IN ((n + 1) / 2, (n + 2) / 2) "
        "GROUP BY day, action ORDER BY day DESC, action",
    },
    "task_history": {
        "title": "A task's status history",
        "sql": "SELECT observed_at, kind, previous_status, status, progress, changed FROM "
        "task_events WHERE task_id = :task_id ORDER BY observed_at, id",
    },
    "what_a_prompt_produced": {
        "title": "What a prompt produced",
        "sql": "SELECT source, id, status, image_url, finish_time FROM tasks WHERE prompt LIKE "
        "'%' || :words || '%' ORDER BY submit_time DESC",
    },
}


def metadata(database: str) -> dict[str, Any]:
    """Datasette's metadata for the archive served as `database` (its file name without the
    `.db`)."""
    tables: dict[str, Any] = {name: {"description": text} for name, text in TABLES.items()}
    tables["tasks"]["sort_desc"] = "submit_time"
    tables["task_events"]["sort_desc"] = "observed_at"
    tables["sync_runs"]["sort_desc"] = "started_at"
    for name in HIDDEN:
        tables[name] = {"hidden": True}
    return {
        "title": "tasksync archive",
        "description": "Tasks archived from Midjourney-proxy servers by tasksync. Times are UTC.",
        "databases": {
            database: {
                "tables": tables,
                "queries": QUERIES,
            }
        },
    }
