"""task_images: the pictures and videos of tasks, fetched before their links expire; and
image_scans: how far the image job has looked for new links.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


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


LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _mysql_table() -> dict[str, str]:
    bind = op.get_bind()
    if bind.dialect.name not in ("mysql", "mariadb"):
        return {}
    found = {
        r[0]
        for r in bind.execute(
            sa.text(
                "SELECT COLLATION_NAME FROM information_schema.COLLATIONS "
                "WHERE COLLATION_NAME IN ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin')"
            )
        )
    }
    collate = "utf8mb4_nopad_bin" if "utf8mb4_nopad_bin" in found else "utf8mb4_0900_bin"
    return {"mysql_charset": "utf8mb4", "mysql_collate": collate}


def upgrade() -> None:
    op.create_table(
        "task_images",
        sa.Column("id", EventId, autoincrement=True, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("url", LongText, nullable=False),
        sa.Column("url_expires_at", UTCDateTime(), nullable=True),
        sa.Column("submitted_at", UTCDateTime(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("content_type", sa.String(64), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("path", sa.String(255), nullable=True),
        sa.Column("fetched_at", UTCDateTime(), nullable=True),
        sa.Column("discovered_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_images")),
        sa.UniqueConstraint(
            "source",
            "task_id",
            "role",
            "position",
            name=op.f("uq_task_images_source_task_id_role_position"),
        ),
        **_mysql_table(),
    )
    op.create_index(
        "ix_task_images_state_url_expires_at", "task_images", ["state", "url_expires_at"]
    )
    op.create_index("ix_task_images_source_state", "task_images", ["source", "state"])
    op.create_table(
        "image_scans",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("changed_since", UTCDateTime(), nullable=False),
        sa.Column("scanned_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_image_scans")),
        **_mysql_table(),
    )


def downgrade() -> None:
    op.drop_table("image_scans")
    op.drop_index("ix_task_images_source_state", table_name="task_images")
    op.drop_index("ix_task_images_state_url_expires_at", table_name="task_images")
    op.drop_table("task_images")
