"""The schema comes from Alembic alone, and agrees with the models on every backend."""

from __future__ import annotations

from pytest_alembic.tests import (  # noqa: F401 - collected as tests
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from sqlalchemy import inspect

from sync.archive import schema
from sync.archive.store import Store


def test_alembic_check_finds_no_difference(store: Store) -> None:
    """`alembic check` (compare_metadata) reports nothing after upgrade to head."""
    assert schema.check(store) == []
    assert schema.current(store) == schema.head()


def test_migrations_create_views_and_tables(store: Store) -> None:
    """Head has the three archive tables, coordination tables and the history views."""
    insp = inspect(store.engine)
    tables = set(insp.get_table_names())
    assert {"tasks", "task_events", "sync_runs", "sync_checkpoints", "sync_leases"} <= tables
    assert {"task_timings", "daily_stats"} <= set(insp.get_view_names())


def test_downgrade_to_base_and_back(store: Store) -> None:
    """Every revision downgrades cleanly, and upgrading again restores head."""
    schema.downgrade(store, "base")
    assert schema.current(store) is None
    assert "tasks" not in inspect(store.engine).get_table_names()
    schema.upgrade(store)
    assert schema.current(store) == schema.head()


def test_postgresql_json_columns_use_lz4(store: Store) -> None:
    """Revision 0004: on a PostgreSQL with lz4, new JSON values in tasks compress with lz4
    (cheaper bulk upserts); downgrading restores pglz. Elsewhere it changes nothing."""
    if store.dialect != "postgresql":
        schema.downgrade(store, "0003")
        schema.upgrade(store)
        assert schema.check(store) == []
        return

    def methods() -> set[str]:
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT attcompression FROM pg_attribute WHERE attrelid = 'tasks'::regclass "
                "AND attname IN ('raw', 'buttons', 'properties')"
            )
            return {r[0] for r in rows}

    with store.engine.connect() as conn:
        lz4 = conn.exec_driver_sql(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        ).scalar()
    if not lz4:  # a server built without lz4: the revision leaves the default alone
        assert methods() == {""}
        return
    assert methods() == {"l"}
    schema.downgrade(store, "0003")
    assert methods() == {"p"}
    schema.upgrade(store)
    assert methods() == {"l"}


def test_revisions_import_nothing_from_the_package() -> None:
    """Each revision declares the column types it needs: none imports from `sync`, so a later
    change to the models never changes what an old revision creates (`db check` above proves
    the frozen types still match the models)."""
    import ast

    from sync.archive.schema import migrations_dir

    revisions = sorted((migrations_dir() / "versions").glob("[0-9]*.py"))
    assert len(revisions) >= 6
    for path in revisions:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any(n == "sync" or n.startswith("sync.") for n in names), (path.name, names)
