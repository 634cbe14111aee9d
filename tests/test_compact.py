"""The compact archive: every byte stored once (the columns, and `extra` for what they do not
give back exactly), yet the server's JSON comes back exactly (`records.join`, `tasksync
export`), on every database; migration 0009 converts an archive in place, resumably."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from sync.archive import export, schema
from sync.archive.store import Store
from sync.jobs import pipeline
from sync.server.client import connect
from sync.simulator import Simulator, SimulatorServer
from sync.tasks.records import MJ, NEWAPI, SHAPES, Record, Shape, build, fingerprint, join

from .helpers import (
    Run,
    archive,
    assert_archive_equals_truth,
    same_json,
    source_for,
    tasksync,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)
SUBMIT = 1_767_225_600_000
# Values a hostile or merely odd server sends, for any field.
ODD: list[Any] = [
    None,
    "",
    " ",
    0,
    -1,
    1,
    1.0,
    -0.0,
    1.5,
    True,
    False,
    "0",
    "²",
    "1767225600",
    1_767_225_600,  # seconds
    SUBMIT,
    SUBMIT + 0.5,
    2**63 - 1,
    -(2**63),
    253402300799000,  # 9999-12-31
    253402300799001,
    "x" * 65,
    "nul\x00inside",
    "é猫🐱\u200b",
    "trailing space ",
    [],
    {},
    [1, "a", None],
    {"k": None, "nested": [{"deep": True}]},
    '{"json": "in a string"}',
    "[]",
]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=5,
)


def task_objects(shape: Shape) -> st.SearchStrategy[dict[str, Any]]:
    """Task objects of a family's shape: each mapped key absent, typical or odd, plus keys
    the archive has no column for."""
    keys = list(shape.keys.values())
    value = st.sampled_from(ODD) | JSON_VALUES | st.integers(1, 2 * SUBMIT)
    return st.builds(
        lambda tid, fields, others: {shape.id: tid, **fields, **others},
        st.text(min_size=1, max_size=10).filter(str.strip) | st.integers(1, 10**12),
        st.dictionaries(st.sampled_from(keys), value, max_size=len(keys)),
        st.dictionaries(
            st.text(max_size=6).filter(lambda k: k not in keys), JSON_VALUES, max_size=3
        ),
    )


def stored(obj: dict[str, Any], shape: Shape) -> Record | None:
    fp = fingerprint(obj, shape)
    if not hasattr(fp, "hash"):
        return None
    rec = build("main", fp, shape)  # type: ignore[arg-type]
    return rec if isinstance(rec, Record) else None


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([MJ, NEWAPI]).flatmap(lambda s: st.tuples(st.just(s), task_objects(s))))
def test_join_gives_back_every_object_exactly(case: tuple[Shape, dict[str, Any]]) -> None:
    """Whatever the object holds, the columns and `extra` together are the object: same
    keys, same values, same types (1, 1.0 and true differ; so do "" and null)."""
    shape, obj = case
    rec = stored(obj, shape)
    if rec is None:
        return  # rejected (tested elsewhere): nothing is stored
    fp = fingerprint(obj, shape)
    assert same_json(join(rec.row), fp.raw)  # type: ignore[union-attr]


def test_typical_task_stores_nothing_twice() -> None:
    """A typical task: every key lives in its column, `extra` is empty; a value a column
    changes (a cut progress, a time in seconds, a number for an id) is kept in `extra`."""
    sim = Simulator(50, seed=3)
    for i in sim.alive:
        rec = stored(sim.task(i), MJ)
        assert rec is not None and rec.row["extra"] is None and rec.row["absent"] is None
    odd = dict(sim.task(sim.alive[0]), progress="9" * 70, startTime=1_767_225_600, id=12345)
    rec = stored(odd, MJ)
    assert rec is not None and rec.row["extra"] == {
        "progress": "9" * 70,
        "startTime": 1_767_225_600,
        "id": 12345,
    }
    assert join(rec.row) == odd


def test_hostile_values_come_back_exactly_from_every_database(store: Store) -> None:
    """Every odd value in every field, saved to a real database and exported: the object
    comes back as sent (NUL characters become U+FFFD, as documented)."""
    objs = []
    for n, value in enumerate(ODD):
        for shape in (MJ, NEWAPI):
            keys = [shape.id, *shape.keys.values()]
            obj = {key: value for key in keys[1:]}
            obj[shape.id] = f"t{n}-{shape.name}"
            obj["unknown" + str(n)] = value
            objs.append((shape, obj))
    for shape, obj in objs:
        store.save(store.prepare("main", [obj], NOW, shape=shape), None)
    by_id = {str(obj.get("mj_id", obj.get("id"))): obj for _src, obj in export.tasks(store, "main")}
    rejected = 0
    for shape, obj in objs:
        fp = fingerprint(obj, shape)
        rec = build("main", fp, shape) if hasattr(fp, "hash") else fp  # type: ignore[arg-type]
        if not isinstance(rec, Record):
            rejected += 1
            continue
        want = fp.raw  # type: ignore[union-attr]
        if store.dialect == "postgresql":  # jsonb has no negative zero (README: the archive)
            want = orjson.loads(orjson.dumps(want).replace(b"-0.0", b"0.0"))
        assert same_json(by_id[obj[shape.id]], want), (obj[shape.id], by_id[obj[shape.id]])
    assert rejected < len(objs) // 2


@pytest.mark.parametrize("api", ["plus", "trueai", "newapi"])
def test_export_gives_back_what_the_server_listed(
    run: Run, sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer], api: str
) -> None:
    """`tasksync export` streams every archived task as its server lists it (trueai's
    computed extra fields, new-api's JSON inside strings included), one object a line."""
    sim = Simulator(600, seed=5, api=api)
    src = source_for(serve(sim).url, api=api)
    with connect(src) as client:
        assert pipeline.backfill(sqlite_store, client, src).outcome == "ok"
    url = sqlite_store.url.render_as_string(hide_password=False)
    code, out, err = run("--db", url, "export", "--source", "main")
    assert code == 0, err
    lines = [orjson.loads(line) for line in out.splitlines()]
    shape = SHAPES[sim.api.shape]
    truth = sim.truth()
    assert len(lines) == len(truth)
    for obj in lines:
        tid = str(obj[shape.id])
        assert same_json(obj, fingerprint(truth[tid], shape).raw), tid  # type: ignore[union-attr]


def test_export_since_and_a_wrong_source(run: Run, sqlite_store: Store) -> None:
    """--since keeps tasks that changed at or after it; an unknown --source is one line."""
    old = {"id": "old", "status": "SUCCESS"}
    new = {"id": "new", "status": "SUCCESS"}
    sqlite_store.save(sqlite_store.prepare("main", [old], datetime(2026, 1, 1, tzinfo=UTC)), None)
    sqlite_store.save(sqlite_store.prepare("main", [new], datetime(2026, 3, 1, tzinfo=UTC)), None)
    url = sqlite_store.url.render_as_string(hide_password=False)
    code, out, _err = run("--db", url, "export", "--since", "2026-02-01")
    assert code == 0 and [orjson.loads(x) for x in out.splitlines()] == [new]
    code, out, err = run("--db", url, "export", "--source", "nope")
    assert code != 0 and out == ""
    assert (
        err.strip()
        == "tasksync: error: --source: the archive has no tasks of a source named 'nope'"
    )


def test_revision_0009_converts_an_archive_and_downgrade_restores_raw(
    db_url: str, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """An archive of the layout before (each object in `raw`) is converted in place: the
    objects come back exactly, every column as before; downgrading brings `raw` back."""
    store = Store(db_url)
    schema.upgrade(store)
    sim = Simulator(2_500, seed=9, api="trueai")
    src = source_for(serve(sim).url, api="trueai")
    with connect(src) as client:
        pipeline.backfill(store, client, src)
    before = archive(store)
    schema.downgrade(store, "0008")
    with store.engine.connect() as conn:
        raws = {r.id: r.raw for r in conn.execute(text("SELECT id, raw FROM tasks"))}
    assert len(raws) == len(before)
    for tid, raw in raws.items():
        raw = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
        assert same_json(raw, before[tid]["json"]), tid
    schema.upgrade(store)
    assert archive(store) == before
    assert_archive_equals_truth(store, sim)
    store.dispose()


def test_revision_0009_resumes_after_a_kill(tmp_path: Path, sqlite_url: str) -> None:
    """`kill -9` in the middle of the conversion: what was converted stays converted, the
    revision is not recorded, and `db upgrade` again finishes with every object intact."""
    store = Store(sqlite_url)
    schema.upgrade(store)
    sim = Simulator(40_000, seed=2)
    tasks = [sim.task(i) for i in sim.alive]
    for n in range(0, len(tasks), 5000):
        store.save(store.prepare("main", tasks[n : n + 5000], NOW), None)
    schema.downgrade(store, "0008")
    store.dispose()
    log = tmp_path / "upgrade.log"
    proc = tasksync("--db", sqlite_url, "db", "upgrade", cwd=tmp_path, log=log)
    deadline = time.monotonic() + 60
    while "compact archive: 10000 of 40000" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0008",)
        converted = conn.execute("SELECT count(*) FROM tasks WHERE raw = '{}'").fetchone()[0]
    assert 10_000 <= converted < 40_000
    done = tasksync("--db", sqlite_url, "db", "upgrade", cwd=tmp_path)
    _out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    assert "compact archive: tasks took" in err and "now" in err
    store = Store(sqlite_url)
    got = {tid: row["json"] for tid, row in archive(store).items()}
    assert len(got) == len(tasks)
    for obj in tasks:
        assert same_json(got[obj["id"]], obj), obj["id"]
    store.dispose()


def test_db_vacuum_moves_an_older_sqlite_file_to_8k_pages(run: Run, tmp_path: Path) -> None:
    """An archive created with 16 KiB pages (before this release) is rewritten with 8 KiB
    pages by `db vacuum`: smaller, every object intact, still in WAL mode."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA page_size=16384")
        conn.execute("CREATE TABLE x (y)")
        conn.execute("DROP TABLE x")
    store = Store(f"sqlite:///{path}")
    schema.upgrade(store)
    sim = Simulator(3_000, seed=4)
    store.save(store.prepare("main", [sim.task(i) for i in sim.alive], NOW), None)
    before = archive(store)
    size = schema.archive_bytes(store)
    store.dispose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA page_size").fetchone() == (16384,)
    code, out, err = run("--db", f"sqlite:///{path}", "db", "vacuum")
    assert code == 0, err
    assert out.startswith("archive: ") and " MB before, " in out
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA page_size").fetchone() == (8192,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store = Store(f"sqlite:///{path}")
    assert archive(store) == before
    assert schema.archive_bytes(store) < 0.9 * size
    store.dispose()


def test_db_vacuum_and_size_on_every_database(store: Store) -> None:
    """`vacuum` runs on each database (VACUUM, VACUUM FULL, OPTIMIZE TABLE) and leaves the
    archive as it was; `archive_bytes` counts the archive's tables on disk."""
    sim = Simulator(500, seed=6)
    store.save(store.prepare("main", [sim.task(i) for i in sim.alive], NOW), None)
    before = archive(store)
    assert schema.archive_bytes(store) > 500 * 200  # MariaDB's compressed pages included
    schema.vacuum(store)
    assert archive(store) == before
    assert schema.archive_bytes(store) > 500 * 200
