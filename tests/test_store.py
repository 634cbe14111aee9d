"""The store on every backend: upserts, change detection, events, hostile data, read-only SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import update

from sync.archive import readonly
from sync.archive.models import Lease, Task, TaskEvent
from sync.archive.runs import SaveResult
from sync.archive.store import ResumePoint, Store
from sync.errors import DatabaseError, LockHeld, QueryRefused
from sync.tasks.records import Rejected, fingerprint

from .helpers import archive, count, events, fresh_database, migrated, normalize

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def save(
    store: Store, source: str, tasks: list[Any], run_id: int | None, now: datetime, **kw: Any
) -> SaveResult:
    """Prepare raw task objects as the read side would, and save them."""
    return store.save(store.prepare(source, tasks, now), run_id, **kw)


def query_all(store: Store, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    return readonly.query_all(store.url.render_as_string(hide_password=False), sql)


def task(tid: Any = "1767225600000001", **kw: Any) -> dict[str, Any]:
    base = {
        "id": tid,
        "action": "IMAGINE",
        "status": "SUCCESS",
        "prompt": "a cat",
        "submitTime": 1_767_225_600_000,
        "startTime": 1_767_225_601_500,
        "finishTime": 1_767_225_661_500,
        "progress": "100%",
        "imageUrl": "https://cdn.example.com/a.png",
        "properties": {"finalPrompt": "a cat"},
        "buttons": [{"customId": "MJ::JOB::upsample::1", "label": "U1", "type": 2}],
    }
    base.update(kw)
    return base


def test_store_converts_times_and_derives_durations(store: Store) -> None:
    """Epoch ms become UTC timestamps with ms kept; queue/run/total are derived."""
    res = save(store, "main", [task()], None, NOW)
    assert res.inserted == 1
    row = archive(store)["1767225600000001"]
    assert row["submit_time"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert row["start_time"] == datetime(2026, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
    assert (row["queue_ms"], row["run_ms"], row["total_ms"]) == (1500, 60_000, 61_500)
    assert row["first_seen_at"] == row["last_seen_at"] == row["last_changed_at"] == NOW
    assert row["buttons"][0]["label"] == "U1" and row["json"]["prompt"] == "a cat"


@pytest.mark.parametrize("unset", [None, 0, "0", "junk"])
def test_store_null_zero_and_junk_times_are_null(store: Store, unset: Any) -> None:
    """null, 0 (new-api) and junk times are NULL, and so are the durations that need them."""
    save(store, "main", [task(startTime=unset, finishTime=unset, status="SUBMITTED")], None, NOW)
    row = archive(store)["1767225600000001"]
    assert row["start_time"] is None and row["finish_time"] is None
    assert row["queue_ms"] is None and row["run_ms"] is None and row["total_ms"] is None


def test_store_unchanged_task_writes_nothing(store: Store) -> None:
    """Saving the same task again writes no row and no event."""
    save(store, "main", [task()], None, NOW)
    res = save(store, "main", [task()], None, NOW + timedelta(hours=1))
    assert (res.inserted, res.changed, res.unchanged) == (0, 0, 1)
    assert archive(store)["1767225600000001"]["last_seen_at"] == NOW
    assert count(store, TaskEvent) == 1


def test_store_recognises_hashes_written_before_xxh3(store: Store) -> None:
    """Archives written by tasksync 0.1 hold blake2b content hashes: their unchanged tasks
    stay unchanged (no write, no event), and a real change is still one `changed` event."""
    tasks = [task(), task("1767225600000002", prompt="a dog")]
    save(store, "main", tasks, None, NOW)
    fp = fingerprint(tasks[0])
    assert not isinstance(fp, Rejected) and fp.hash.startswith("x") and len(fp.hash) == 32
    with store.engine.begin() as conn:
        for obj in tasks:
            old = fingerprint(obj)
            assert not isinstance(old, Rejected)
            conn.execute(
                update(Task).where(Task.id == old.id).values(content_hash=old.legacy_hash())
            )
    res = save(store, "main", [tasks[0], task("1767225600000002", prompt="a fox")], None, NOW)
    assert (res.inserted, res.changed, res.unchanged) == (0, 1, 1)
    assert [e[0] for e in events(store, "1767225600000001")] == ["created"]
    assert [e[0] for e in events(store, "1767225600000002")] == ["created", "changed"]
    assert archive(store)["1767225600000001"]["content_hash"] == fp.legacy_hash()


def test_store_change_writes_one_event_with_fields(store: Store) -> None:
    """A change is one `changed` event with previous status and the changed field names."""
    save(store, "main", [task(status="IN_PROGRESS", progress="40%", finishTime=None)], None, NOW)
    later = NOW + timedelta(minutes=1)
    res = save(store, "main", [task()], None, later)
    assert res.changed == 1
    assert events(store, "1767225600000001") == [
        ("created", None, "IN_PROGRESS"),
        ("changed", "IN_PROGRESS", "SUCCESS"),
    ]
    with store.engine.connect() as conn:
        changed = (
            conn.execute(TaskEvent.__table__.select().where(TaskEvent.kind == "changed"))
            .mappings()
            .one()["changed"]
        )
    assert changed == ["finishTime", "progress", "status"]
    row = archive(store)["1767225600000001"]
    assert row["first_seen_at"] == NOW and row["last_changed_at"] == later


def test_store_keys_on_source_and_id(store: Store) -> None:
    """The same id from two sources is two tasks."""
    save(store, "a", [task()], None, NOW)
    save(store, "b", [task()], None, NOW)
    assert count(store, Task) == 2


HOSTILE = [
    pytest.param(
        task(prompt="nul\x00inside", properties={"k\x00": "v\x00"}),
        "nul\ufffdinside",
        id="nul-chars",
    ),
    pytest.param(task(prompt="🐉🌸 emoji 𝕏 four-byte"), "🐉🌸 emoji 𝕏 four-byte", id="emoji"),
    pytest.param(task(prompt="长" * 20_000), "长" * 20_000, id="very-long"),
    pytest.param(task(status="WEIRD_NEW_STATUS", action="EDITS"), "a cat", id="unknown-enums"),
    pytest.param(task(properties=[1, "two", {"3": None}]), "a cat", id="properties-list"),
    pytest.param(task(properties="just a string"), "a cat", id="properties-string"),
    pytest.param({"id": "1767225600000001"}, None, id="only-an-id"),
    pytest.param(task(prompt=None, status=None, action=None, buttons=None), None, id="nulls"),
]


@pytest.mark.parametrize(("obj", "prompt"), HOSTILE)
def test_store_survives_hostile_fields(store: Store, obj: dict[str, Any], prompt: Any) -> None:
    """Odd but valid tasks are stored intact (NUL becomes U+FFFD everywhere)."""
    res = save(store, "main", [obj], None, NOW)
    assert (res.inserted, res.rejected) == (1, 0)
    row = archive(store)["1767225600000001"]
    assert row["prompt"] == prompt
    assert "\x00" not in str(row["json"])
    again = save(store, "main", [obj], None, NOW)
    assert again.unchanged == 1


def test_store_numeric_and_long_ids(store: Store) -> None:
    """Numeric ids are kept as strings; a 255-char id fits; a longer one is rejected alone."""
    long_ok, too_long = "x" * 255, "y" * 300
    tasks = [
        task(14001929738841620),
        task("0741798445574458"),
        task(long_ok),
        task(too_long),
        {"no": "id"},
        "not-an-object",
    ]
    res = save(store, "main", tasks, None, NOW)
    assert (res.inserted, res.rejected) == (3, 3)
    assert set(archive(store)) == {"14001929738841620", "0741798445574458", long_ok}


def test_store_same_id_twice_in_a_batch(store: Store) -> None:
    """The same id twice in one page is stored once (the later copy wins)."""
    res = save(store, "main", [task(progress="1%"), task(progress="2%")], None, NOW)
    assert res.inserted == 1 and archive(store)["1767225600000001"]["progress"] == "2%"


def test_store_dry_run_writes_nothing(store: Store) -> None:
    """dry_run counts what would happen and writes nothing."""
    res = save(store, "main", [task()], None, NOW, dry_run=True)
    assert res.inserted == 1 and count(store, Task) == 0 and count(store, TaskEvent) == 0


def test_store_gone_and_returned(store: Store) -> None:
    """mark_gone sets gone_at with a `gone` event; a task seen again gets `returned`."""
    save(store, "main", [task("1"), task("2"), task("3"), task("4"), task("5")], None, NOW)
    missing = store.missing_ids("main", {"1", "2", "3", "4"})
    assert missing == ["5"]
    assert store.mark_gone("main", missing, None, NOW, max_share=0.2) == 1
    assert archive(store)["5"]["gone_at"] == NOW
    res = save(store, "main", [task("5")], None, NOW + timedelta(hours=1))
    assert res.returned == 1 and archive(store)["5"]["gone_at"] is None
    assert [e[0] for e in events(store, "5")] == ["created", "gone", "returned"]


def test_store_readonly_query_refuses_writes_at_database_level(store: Store) -> None:
    """A write hidden in a WITH is refused by the database's read-only mode too."""
    save(store, "main", [task()], None, NOW)
    sneaky = {
        "postgresql": "WITH d AS (DELETE FROM tasks RETURNING id) SELECT * FROM d",
        "sqlite": "WITH d AS (SELECT 1) DELETE FROM tasks",
        "mysql": "SELECT * FROM tasks INTO OUTFILE '/tmp/tasksync-leak.txt'",
    }
    with pytest.raises(QueryRefused):
        query_all(store, sneaky[store.dialect])
    assert count(store, Task) == 1
    cols, rows = query_all(store, "SELECT id, status FROM tasks")
    assert cols == ["id", "status"] and rows == [("1767225600000001", "SUCCESS")]


def test_normalize_rejects_overlong_status() -> None:
    """A status longer than 64 characters is rejected with a reason."""
    rec = normalize("main", task(status="S" * 65))
    assert getattr(rec, "reason", "").startswith("status longer")


def test_store_ids_differing_by_trailing_spaces_stay_apart(store: Store) -> None:
    """'b ' and 'b' are two tasks on every database (MariaDB: a NO PAD collation), and a
    second save of both changes nothing and writes no event."""
    tasks = [task("b"), task("b "), task("b  ", prompt="three")]
    assert save(store, "main", tasks, None, NOW).inserted == 3
    again = save(store, "main", tasks, None, NOW + timedelta(hours=1))
    assert (again.inserted, again.changed, again.unchanged) == (0, 0, 3)
    assert set(archive(store)) == {"b", "b ", "b  "} and count(store, TaskEvent) == 3


def _lose_lock(store: Store, source: str) -> None:
    """Make this run lose its writer lock the way it happens for real: the lock's session
    dies (PostgreSQL, MariaDB) or another process takes the lease over (SQLite)."""
    lock = store.held[source]
    if store.dialect == "sqlite":
        with store.engine.begin() as conn:
            conn.execute(update(Lease).where(Lease.source == source).values(holder="thief"))
        lock.lost = True
    else:
        assert lock.conn is not None
        lock.conn.invalidate()


def test_every_write_path_checks_the_lock(store: Store) -> None:
    """Once the lock is lost, no write path writes: saves, the one-by-one fallback, gone
    marks, the sweep's last-seen touch and checkpoints all refuse."""
    save(store, "main", [task("1"), task("2")], None, NOW)
    before = archive(store)
    with store.lock("main"):
        _lose_lock(store, "main")
        attempts = [
            lambda: save(store, "main", [task("3")], None, NOW),
            lambda: save(
                store, "main", [task("4")], None, NOW, checkpoint=ResumePoint("backfill", 1, "4", 4)
            ),
            lambda: store.mark_gone("main", ["1"], None, NOW, max_share=1.0),
            lambda: store.touch_seen("main", NOW + timedelta(days=1)),
            lambda: store.clear_checkpoint("main", "backfill"),
        ]
        for write in attempts:
            with pytest.raises(DatabaseError, match=r"lock|lease"):
                write()
    assert archive(store) == before and count(store, TaskEvent) == 2


def test_fallback_after_a_refused_batch_checks_lock_and_dry_run(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch the database refuses is retried task by task: in a dry run that writes
    nothing, and without the lock it refuses like every other write."""
    real_plan = store._plan
    calls = {"n": 0}

    def refuse_first(conn: Any, batch: Any, result: Any) -> Any:
        calls["n"] += 1
        if len(batch.records) > 1:
            raise sa_exc.IntegrityError("INSERT ...", {}, Exception("refused batch"))
        return real_plan(conn, batch, result)

    monkeypatch.setattr(store, "_plan", refuse_first)
    res = save(store, "main", [task("1"), task("2")], None, NOW, dry_run=True)
    assert res.inserted == 2 and count(store, Task) == 0 and count(store, TaskEvent) == 0
    with store.lock("main"):
        _lose_lock(store, "main")
        with pytest.raises(DatabaseError, match=r"lock|lease"):
            save(store, "main", [task("1"), task("2")], None, NOW)
    assert count(store, Task) == 0


@pytest.mark.mariadb
def test_mariadb_writer_locks_are_per_database(tmp_path: Any) -> None:
    """Two archives in different databases of one MariaDB server lock a source of the same
    name independently (GET_LOCK names are server-wide)."""
    with fresh_database("mariadb", tmp_path) as a, fresh_database("mariadb", tmp_path) as b:
        one, two = migrated(a), migrated(b)
        with one.lock("main"), two.lock("main"):
            pass
        with one.lock("main"), pytest.raises(LockHeld), Store(a).lock("main"):
            pass
        one.dispose()
        two.dispose()


def test_sweep_compares_ids_as_stored(store: Store) -> None:
    """A task id with a NUL is stored cleaned; sweeps compare the stored form, so it is
    neither marked gone nor 'returned' on every other sweep."""
    from sync.jobs import pipeline
    from sync.server.client import connect
    from sync.simulator import Simulator

    from .helpers import sim_transport, source_for

    sim = Simulator(50, seed=2)
    sim.overrides[10] = dict(sim.task(10), id="bad\x00id")
    src = source_for("http://sim.test")
    client = connect(src, transport=sim_transport(sim))
    pipeline.backfill(store, client, src)
    assert "bad\ufffdid" in archive(store)
    for _ in range(2):
        report = pipeline.sweep(store, client, src)
        assert (report.gone, report.returned) == (0, 0)
    assert archive(store)["bad\ufffdid"]["gone_at"] is None
