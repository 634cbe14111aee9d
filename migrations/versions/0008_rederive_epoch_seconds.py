"""Data: times a server sent in seconds (a value below 10^11) were read as milliseconds, so
they landed in January 1970. Re-derives the time columns and durations of those tasks from
their stored JSON (`raw`). The rule is frozen here as it was decided; `tasksync db rederive`
applies today's rules for whatever is fixed next.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000
SECONDS_BELOW = 10**11
MAX_MS = 253402300799000
# Where each family's objects keep the times (camelCase; new-api's snake_case rows).
KEYS = (("submitTime", "startTime", "finishTime"), ("submit_time", "start_time", "finish_time"))


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps (naive UTC on SQLite and MariaDB), as at this revision."""

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


TASKS = sa.table(
    "tasks",
    sa.column("source", sa.String),
    sa.column("id", sa.String),
    sa.column("raw", sa.JSON),
    sa.column("submit_time", UTCDateTime()),
    sa.column("start_time", UTCDateTime()),
    sa.column("finish_time", UTCDateTime()),
    sa.column("queue_ms", sa.BigInteger),
    sa.column("run_ms", sa.BigInteger),
    sa.column("total_ms", sa.BigInteger),
)


def _number(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            return None
        return int(text)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value) if isinstance(value, int | float) else None


def _ms(value: Any) -> int | None:
    n = _number(value)
    if n is None or n <= 0:
        return None
    if n < SECONDS_BELOW:
        n *= 1000
    return n if n < MAX_MS else None


def _in_seconds(raw: dict[str, Any]) -> tuple[str, str, str] | None:
    for keys in KEYS:
        values = [_number(raw.get(k)) for k in keys]
        if any(v is not None and 0 < v < SECONDS_BELOW for v in values):
            return keys
    return None


def upgrade() -> None:
    bind = op.get_bind()
    after = ("", "")
    while True:
        rows = bind.execute(
            sa.select(TASKS.c.source, TASKS.c.id, TASKS.c.raw)
            .where(
                (TASKS.c.source > after[0])
                | ((TASKS.c.source == after[0]) & (TASKS.c.id > after[1]))
            )
            .order_by(TASKS.c.source, TASKS.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        for source, tid, raw in rows:
            keys = _in_seconds(raw) if isinstance(raw, dict) else None
            if keys is None:
                continue
            submit, start, finish = (_ms(raw.get(k)) for k in keys)

            def when(ms: int | None) -> datetime | None:
                return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)

            def span(a: int | None, b: int | None) -> int | None:
                return None if a is None or b is None else b - a

            bind.execute(
                sa.update(TASKS)
                .where(TASKS.c.source == source, TASKS.c.id == tid)
                .values(
                    submit_time=when(submit),
                    start_time=when(start),
                    finish_time=when(finish),
                    queue_ms=span(submit, start),
                    run_ms=span(start, finish),
                    total_ms=span(submit, finish),
                )
            )
        after = (rows[-1][0], rows[-1][1])


def downgrade() -> None:
    """Nothing to undo: the re-derived values are what the stored JSON says."""
