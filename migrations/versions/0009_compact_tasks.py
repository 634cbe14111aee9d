"""Every byte once: `tasks.raw` (the whole server object, beside the columns that already held
most of it) gives way to `extra` (what the columns do not give back exactly), `absent` (the
mapped keys the object did not have) and `shape` (how the object maps onto the columns: NULL
for the Midjourney-proxy object, `newapi` for new-api rows). Columns + extra = the object.

In place, in keyset batches of 1,000 tasks, each committed: bounded memory, and a run that
is stopped resumes where it was (a converted row keeps `{}` in `raw` until the column goes).
Progress and the table's size before and after are logged. The split is frozen here as it
was decided: it compares the stored JSON with the values the columns hold now, so whatever
they hold, the object comes back exactly. Downgrading rebuilds `raw` from the same parts.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("tasksync.migrate")
BATCH = 1000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
COLUMNS = (
    "action",
    "status",
    "prompt",
    "prompt_en",
    "description",
    "state",
    "progress",
    "image_url",
    "fail_reason",
    "submit_time",
    "start_time",
    "finish_time",
    "properties",
    "buttons",
)
CAMEL = (
    "action",
    "status",
    "prompt",
    "promptEn",
    "description",
    "state",
    "progress",
    "imageUrl",
    "failReason",
    "submitTime",
    "startTime",
    "finishTime",
    "properties",
    "buttons",
)
TIMES = ("submit_time", "start_time", "finish_time")
JSONS = ("properties", "buttons")
# name -> (id key, column -> key, JSON inside strings, unset time, unset JSON), as at 0009.
SHAPES: dict[str | None, tuple[str, dict[str, str], bool, Any, Any]] = {
    None: ("id", dict(zip(COLUMNS, CAMEL, strict=True)), False, None, None),
    "newapi": ("mj_id", {c: c for c in COLUMNS}, True, 0, ""),
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps (naive UTC on SQLite and MariaDB), as at this revision."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[datetime]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONV = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TASKS = sa.table(
    "tasks",
    sa.column("source", sa.String),
    sa.column("id", sa.String),
    *(
        sa.column(c, UTCDateTime() if c in TIMES else JSONV if c in JSONS else sa.Text)
        for c in COLUMNS
    ),
    sa.column("raw", JSONV),
    sa.column("extra", JSONV),
    sa.column("absent", sa.String),
    sa.column("shape", sa.String),
)


def _given(column: str, value: Any, shape: str | None) -> Any:
    """The server's value a stored column value stands for (as records._given at 0009)."""
    _id, _keys, in_strings, unset_time, unset_json = SHAPES[shape]
    if column in TIMES:
        return unset_time if value is None else (value - EPOCH) // MS
    if column in JSONS and in_strings:
        if value is None:
            return unset_json
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return value


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict | list):
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    return bool(a == b)


def _shape_of(raw: dict[str, Any], tid: str) -> str | None:
    """Which family's object this is: the one whose id key holds the task's id."""
    if raw.get("id") is not None and str(raw["id"]).replace("\x00", "\ufffd") == tid:
        return None
    return "newapi" if raw.get("mj_id") is not None else None


def _split(row: Any) -> dict[str, Any]:
    raw: dict[str, Any] = row.raw
    shape = _shape_of(raw, row.id)
    id_key, keys, _in_strings, _ut, _uj = SHAPES[shape]
    mapped = {id_key: "id", **{key: col for col, key in keys.items()}}
    extra = {
        key: value
        for key, value in raw.items()
        if key not in mapped
        or not _same(_given(mapped[key], row._mapping[mapped[key]], shape), value)
    }
    absent = ",".join(key for key in mapped if key not in raw)
    return {
        "_s": row.source,
        "_i": row.id,
        "_extra": extra or None,
        "_absent": absent or None,
        "_shape": shape,
        "_raw": {},
    }


def _join(row: Any) -> dict[str, Any]:
    id_key, keys, _in_strings, _ut, _uj = SHAPES[row.shape]
    skip = set(row.absent.split(",")) if row.absent else set()
    obj: dict[str, Any] = {} if id_key in skip else {id_key: row.id}
    for col, key in keys.items():
        if key not in skip:
            obj[key] = _given(col, row._mapping[col], row.shape)
    obj.update(row.extra or {})
    return obj


def _size(bind: sa.Connection) -> int | None:
    """Bytes the tasks table (indexes and TOAST included) takes, as the database counts."""
    name = bind.dialect.name
    if name == "sqlite":
        pages = bind.exec_driver_sql("PRAGMA page_count").scalar_one()
        free = bind.exec_driver_sql("PRAGMA freelist_count").scalar_one()
        return int((pages - free) * bind.exec_driver_sql("PRAGMA page_size").scalar_one())
    if name == "postgresql":
        return int(bind.exec_driver_sql("SELECT pg_total_relation_size('tasks')").scalar_one())
    bind.exec_driver_sql("ANALYZE TABLE tasks").all()
    got = bind.exec_driver_sql(
        "SELECT data_length + index_length FROM information_schema.TABLES "
        "WHERE table_schema = DATABASE() AND table_name = 'tasks'"
    ).scalar()
    return None if got is None else int(got)


def _commit(bind: sa.Connection) -> None:
    """End this batch's transaction so a stopped upgrade keeps what it converted. Below
    SQLAlchemy: the migration's transaction goes on in a fresh one (SQLite's driver runs
    without implicit transactions here, so it is begun explicitly)."""
    bind.exec_driver_sql("COMMIT")
    if bind.dialect.name == "sqlite":
        bind.exec_driver_sql("BEGIN IMMEDIATE")


def _keyset(bind: sa.Connection, cols: list[Any]) -> Any:
    after = ("", "")
    while True:
        rows = bind.execute(
            sa.select(*cols)
            .where(
                (TASKS.c.source > after[0])
                | ((TASKS.c.source == after[0]) & (TASKS.c.id > after[1]))
            )
            .order_by(TASKS.c.source, TASKS.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        yield rows
        after = (rows[-1].source, rows[-1].id)


def _mb(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 1e6:,.1f} MB"


def upgrade() -> None:
    bind = op.get_bind()
    present = {c["name"] for c in sa.inspect(bind).get_columns("tasks")}
    if "raw" not in present:
        return
    before = _size(bind)
    for name, type_ in (("extra", JSONV), ("absent", sa.String(255)), ("shape", sa.String(16))):
        if name not in present:  # a stopped run may have added them already
            op.add_column("tasks", sa.Column(name, type_, nullable=True))
    if (
        bind.dialect.name == "postgresql"
        and bind.exec_driver_sql(
            "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
            "AND 'lz4' = ANY(enumvals)"
        ).first()
    ):
        op.execute("ALTER TABLE tasks ALTER COLUMN extra SET COMPRESSION lz4")
    total = bind.execute(sa.select(sa.func.count()).select_from(TASKS)).scalar_one()
    log.info("compact archive: %d tasks to convert (tasks take %s)", total, _mb(before))
    update = (
        sa.update(TASKS)
        .where(TASKS.c.source == sa.bindparam("_s"), TASKS.c.id == sa.bindparam("_i"))
        .values(
            extra=sa.bindparam("_extra", type_=JSONV),
            absent=sa.bindparam("_absent"),
            shape=sa.bindparam("_shape"),
            raw=sa.bindparam("_raw", type_=JSONV),
        )
    )
    cols = [TASKS.c.source, TASKS.c.id, TASKS.c.raw, *(TASKS.c[c] for c in COLUMNS)]
    _commit(bind)
    done = 0
    for rows in _keyset(bind, cols):
        todo = [_split(r) for r in rows if isinstance(r.raw, dict) and r.raw]
        if todo:
            bind.execute(update, todo)
            _commit(bind)
        done += len(rows)
        if done % (10 * BATCH) < BATCH or done == total:
            log.info(
                "compact archive: %d of %d tasks (%d%%)", done, total, 100 * done // max(total, 1)
            )
    # Rows a writer added meanwhile (none when the daemon was stopped, as it should be).
    unconverted = sa.select(*cols).where(sa.cast(TASKS.c.raw, sa.Text) != "{}").limit(BATCH)
    while left := [_split(r) for r in bind.execute(unconverted)]:
        bind.execute(update, left)
    op.drop_column("tasks", "raw")
    log.info(
        "compact archive: tasks took %s, now %s%s",
        _mb(before),
        _mb(_size(bind)),
        "" if bind.dialect.name == "sqlite" else " (`tasksync db vacuum` returns freed space)",
    )


def downgrade() -> None:
    bind = op.get_bind()
    op.add_column("tasks", sa.Column("raw", JSONV, nullable=True))
    cols = [
        TASKS.c.source,
        TASKS.c.id,
        TASKS.c.extra,
        TASKS.c.absent,
        TASKS.c.shape,
        *(TASKS.c[c] for c in COLUMNS),
    ]
    fill = (
        sa.update(TASKS)
        .where(TASKS.c.source == sa.bindparam("_s"), TASKS.c.id == sa.bindparam("_i"))
        .values(raw=sa.bindparam("_raw", type_=JSONV))
    )
    for rows in _keyset(bind, cols):
        bind.execute(fill, [{"_s": r.source, "_i": r.id, "_raw": _join(r)} for r in rows])
    sqlite = bind.dialect.name == "sqlite"
    if sqlite:  # the table is rebuilt and renamed; views on it are left for the rename to find
        bind.exec_driver_sql("PRAGMA legacy_alter_table = ON")
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column("raw", existing_type=JSONV, nullable=False)
        batch.drop_column("shape")
        batch.drop_column("absent")
        batch.drop_column("extra")
    if sqlite:
        bind.exec_driver_sql("PRAGMA legacy_alter_table = OFF")
    if (
        bind.dialect.name == "postgresql"
        and bind.exec_driver_sql(
            "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
            "AND 'lz4' = ANY(enumvals)"
        ).first()
    ):
        op.execute("ALTER TABLE tasks ALTER COLUMN raw SET COMPRESSION lz4")
