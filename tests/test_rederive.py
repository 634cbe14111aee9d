"""Re-deriving columns from the stored object: a fix to how columns are read reaches tasks
archived before it (their JSON and content hash did not change, so no sync ever rewrites
them), through revision 0008 for this session's fix and `db rederive` for the next one. The
object itself (columns + `extra`) comes back the same before and after."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from sync.archive import export, schema
from sync.archive.models import Task, TaskEvent
from sync.archive.store import Store
from sync.tasks.records import NEWAPI

from .helpers import Run, archive, count

NOW = datetime(2026, 12, 1, tzinfo=UTC)
SUBMIT_S = 1_767_225_600  # 2026-01-01, in seconds as some relays send it


def task(tid: str, **kw: Any) -> dict[str, Any]:
    base = {
        "id": tid,
        "action": "IMAGINE",
        "status": "SUCCESS",
        "submitTime": SUBMIT_S,
        "startTime": SUBMIT_S + 2,
        "finishTime": SUBMIT_S + 62,
        "progress": "100%",
    }
    return {**base, **kw}


def _as_archived_before(store: Store, tid: str) -> None:
    """What tasksync wrote before the fix: seconds read as milliseconds (January 1970)."""
    wrong = datetime.fromtimestamp(SUBMIT_S / 1000, UTC)
    with store.engine.begin() as conn:
        conn.execute(
            update(Task)
            .where(Task.id == tid)
            .values(
                submit_time=wrong,
                start_time=wrong + timedelta(milliseconds=2),
                finish_time=wrong + timedelta(milliseconds=62),
                queue_ms=2,
                run_ms=60,
                total_ms=62,
            )
        )


def test_rederive_rewrites_only_rows_whose_columns_differ(store: Store) -> None:
    """Rows derived by an older rule are corrected from their JSON; the JSON, the hash and
    the events are untouched, and a second pass changes nothing."""
    store.save(store.prepare("main", [task("1"), task("2", submitTime=None)], NOW), None)
    before = archive(store)
    _as_archived_before(store, "1")
    assert archive(store)["1"]["submit_time"].year == 1970
    checked, updated = export.rederive(store)
    assert (checked, updated) == (2, 1)
    after = archive(store)
    assert after == before
    assert after["1"]["submit_time"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert (after["1"]["queue_ms"], after["1"]["run_ms"]) == (2000, 60000)
    assert export.rederive(store) == (2, 0)
    assert count(store, TaskEvent) == 2


def test_rederive_reads_each_row_in_its_own_shape(store: Store) -> None:
    """A new-api row is rebuilt as a new-api object (its `shape`), so its columns come out
    right; read as a Midjourney-proxy object it would have lost its prompt and times."""
    row = {
        "id": 9,
        "mj_id": "t1",
        "action": "IMAGINE",
        "status": "SUCCESS",
        "prompt": "a fox",
        "prompt_en": "",
        "submit_time": SUBMIT_S * 1000,
        "start_time": SUBMIT_S * 1000 + 1500,
        "finish_time": 0,
        "properties": '{"finalPrompt": "a fox --v 6"}',
        "buttons": "[]",
    }
    store.save(store.prepare("relay", [row], NOW, shape=NEWAPI), None)
    before = archive(store, "relay")["t1"]
    with store.engine.begin() as conn:
        conn.execute(update(Task).where(Task.id == "t1").values(queue_ms=None))
    assert export.rederive(store) == (1, 1)
    got = archive(store, "relay")["t1"]
    assert got == before and got["queue_ms"] == 1500 and got["json"] == row


def test_revision_0008_fixes_times_sent_in_seconds(store: Store) -> None:
    """Upgrading an archive written before this fix re-derives its 1970 times."""
    store.save(store.prepare("main", [task("1"), task("2", submitTime=SUBMIT_S * 1000)], NOW), None)
    schema.downgrade(store, "0007")  # the layout of then: `raw` holds each object
    _as_archived_before(store, "1")
    schema.upgrade(store)
    rows = archive(store)
    assert rows["1"]["submit_time"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert rows["1"]["total_ms"] == 62_000
    assert rows["2"]["submit_time"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert rows["1"]["json"] == task("1")


def test_db_rederive_command(run: Run, sqlite_store: Store) -> None:
    """`tasksync db rederive` reports what it checked and updated."""
    sqlite_store.save(sqlite_store.prepare("main", [task("1")], NOW), None)
    _as_archived_before(sqlite_store, "1")
    url = sqlite_store.url.render_as_string(hide_password=False)
    code, out, err = run("--db", url, "db", "rederive")
    assert code == 0, err
    assert "1 tasks checked, 1 updated" in out
