"""Reading the whole archive back, task by task: `tasks` (what `tasksync export` prints: each
task as the server sent it) and `rederive` (today's column rules applied to tasks archived
before them), both over `batches`, the keyset batches over `tasks` they share with the image
job's scan. Bounded memory whatever the archive's size; each batch is its own short read, so
a long export never holds the writer back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, RowMapping, bindparam, select, update

from sync.archive.engine import Database
from sync.archive.models import Task
from sync.tasks.records import JOINED, SHAPES, Fingerprint, Rejected, build, fingerprint, join

TASK_COLUMNS = [c.name for c in Task.__table__.columns]
# Columns derived from a task's JSON (what `rederive` recomputes, `extra` included); the rest
# are its identity, its content hash and what the archive observed.
OBSERVED = ("source", "id", "content_hash", "first_seen_at", "last_seen_at")
DERIVED = [c for c in TASK_COLUMNS if c not in (*OBSERVED, "last_changed_at", "gone_at")]


def batches(
    db: Database,
    columns: Sequence[str],
    *where: ColumnElement[bool],
    source: str | None = None,
    size: int = 1000,
) -> Iterator[list[RowMapping]]:
    """Rows of `tasks` (`columns`, and always `source` and `id`) matching `where`, in key
    order, `size` at a time: each batch starts after the last key of the one before (keyset
    paging, never OFFSET). With `source`, that source's tasks only."""
    names = dict.fromkeys(["source", "id", *columns])
    cols = [Task.__table__.c[c] for c in names]
    after = ("", "")
    while True:
        if source is None:
            keyset = (Task.source > after[0]) | ((Task.source == after[0]) & (Task.id > after[1]))
            q = select(*cols).where(keyset).order_by(Task.source, Task.id)
        else:
            q = select(*cols).where(Task.source == source, Task.id > after[1]).order_by(Task.id)
        with db.engine.connect() as conn:
            rows = [row._mapping for row in conn.execute(q.where(*where).limit(size))]
        if not rows:
            return
        yield rows
        after = (rows[-1]["source"], rows[-1]["id"])


def tasks(
    db: Database, source: str | None = None, since: datetime | None = None, size: int = 1000
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every archived task as (source, the server's object), in key order, streamed in
    keyset batches; `since`: tasks observed changing at or after it."""
    where = [] if since is None else [Task.last_changed_at >= since]
    for rows in batches(db, JOINED, *where, source=source, size=size):
        for row in rows:
            yield row["source"], join(row)


def rederive(db: Database, size: int = 1000, progress: Any = None) -> tuple[int, int]:
    """Recompute every task's derived columns from its server object (rebuilt from the
    row) with today's rules and write the rows that differ: how a fix to column
    derivation reaches tasks archived before it (their JSON, and so their content hash,
    did not change). Keyset batches: bounded memory, safe to stop and run again.
    Returns (rows checked, rows updated)."""
    checked = updated = 0
    stmt = (
        update(Task)
        .where(Task.source == bindparam("_source"), Task.id == bindparam("_id"))
        .values({c: bindparam(f"_{c}") for c in DERIVED})
    )
    for rows in batches(db, [*JOINED, *DERIVED], size=size):
        changes: list[dict[str, Any]] = []
        for row in rows:
            shape = SHAPES[row["shape"] or "mj"]
            fp = fingerprint(join(row), shape)
            rec = build(row["source"], fp, shape) if isinstance(fp, Fingerprint) else fp
            if isinstance(rec, Rejected):
                continue
            new = {c: rec.row[c] for c in DERIVED}
            if any(not _equal(new[c], row[c]) for c in DERIVED):
                changes.append(
                    {"_source": row["source"], "_id": row["id"]} | {f"_{c}": new[c] for c in new}
                )
        if changes:
            with db.write() as conn:
                conn.execute(stmt, changes)
        checked += len(rows)
        updated += len(changes)
        if progress:
            progress(checked, updated)
    return checked, updated


def _equal(a: Any, b: Any) -> bool:
    """Stored and recomputed values alike, type for type (JSON: 1 and true differ)."""
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
            b, option=orjson.OPT_SORT_KEYS
        )
    return type(a) is type(b) and a == b
