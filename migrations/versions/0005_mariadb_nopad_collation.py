"""MariaDB/MySQL: compare ids exactly, trailing spaces included (a NO PAD binary collation).

`utf8mb4_bin` is a PAD SPACE collation: 'b ' and 'b' compare equal, so two tasks whose ids
differ only by trailing spaces collapsed into one row, and every run saw a change. This converts
every archive table to `utf8mb4_nopad_bin` (MariaDB) or `utf8mb4_0900_bin` (MySQL 8), the
same bytes compared as bytes. A no-op on SQLite and PostgreSQL, which compare exactly already.

Downgrading restores `utf8mb4_bin`; it fails (duplicate key, nothing changed) if the archive
meanwhile holds two ids that differ only by trailing spaces.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("tasks", "task_events", "sync_runs", "sync_checkpoints", "sync_leases")
NO_PAD = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")


def _convert(collation: str) -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}")


def _no_pad() -> str:
    found = {
        row[0]
        for row in op.get_bind().execute(
            text(
                "SELECT COLLATION_NAME FROM information_schema.COLLATIONS "
                "WHERE COLLATION_NAME IN ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin')"
            )
        )
    }
    for name in NO_PAD:
        if name in found:
            return name
    raise RuntimeError("this server has no NO PAD binary collation for utf8mb4")


def upgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        _convert(_no_pad())


def downgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        _convert("utf8mb4_bin")
