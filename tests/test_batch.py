"""Batches: a page of raw tasks prepared for one save (fingerprints, rejects, and bind
parameters in the compiled statement's order), without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from sync.tasks.batch import Binder, Built, prepare
from sync.tasks.records import Fingerprint, Record, Rejected, build, fingerprint

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ORDER = ["id", "status", "submit_time", "properties", "extra", "first_seen_at", "gone_at"]


def task(tid: str = "1", **kw: Any) -> dict[str, Any]:
    base = {
        "id": tid,
        "action": "IMAGINE",
        "status": "SUCCESS",
        "progress": "100%",
        "submitTime": 1_767_225_600_000,
        "startTime": 1_767_225_601_500,
        "finishTime": 1_767_225_661_500,
        "properties": {"finalPrompt": "a cat"},
        "buttons": [],
    }
    base.update(kw)
    return base


def record(obj: dict[str, Any]) -> Record:
    fp = fingerprint(obj)
    assert isinstance(fp, Fingerprint)
    rec = build("main", fp)
    assert isinstance(rec, Record)
    return rec


def test_prepare_keeps_the_later_copy_of_a_duplicate() -> None:
    """The same id twice in one batch: one record, the later copy's."""
    batch = prepare(
        Binder("sqlite", None), "main", [task(status="IN_PROGRESS"), task(status="SUCCESS")], NOW
    )
    assert list(batch.records) == ["1"]
    assert batch.records["1"].raw["status"] == "SUCCESS"
    assert (batch.source, batch.now, batch.rejected, batch.built) == ("main", NOW, 0, {})


def test_prepare_counts_and_keeps_rejects() -> None:
    """Tasks that cannot be stored are counted and kept with their reasons; the rest go on."""
    tasks = [task("1"), "not a task", {"status": "SUCCESS"}, task("x" * 256), task("2")]
    batch = prepare(Binder("sqlite", None), "main", tasks, NOW)
    assert list(batch.records) == ["1", "2"]
    assert batch.rejected == len(batch.rejects) == 3
    assert [r.reason for r in batch.rejects] == [
        "task is a JSON str, not an object",
        "task has no id",
        "id longer than 255 characters",
    ]


def test_prepare_build_rows_fills_built_in_the_binders_order() -> None:
    """With build_rows every record gets its status, progress and bind parameters, in the
    binder's column order, stamped with the batch's time as the driver wants it."""
    binder = Binder("sqlite", ORDER)
    tasks = [task("1"), task("2", status="FAILURE", progress="", properties=None)]
    assert prepare(binder, "main", tasks, NOW).built == {}  # only when asked
    batch = prepare(binder, "main", tasks, NOW, build_rows=True)
    at = "2026-11-27 12:00:00.000000"
    assert batch.built == {
        "1": Built(
            "SUCCESS",
            "100%",
            (
                "1",
                "SUCCESS",
                "2026-01-01 00:00:00.000000",
                '{"finalPrompt":"a cat"}',
                None,
                at,
                None,
            ),
        ),
        "2": Built(
            "FAILURE",
            "",
            ("2", "FAILURE", "2026-01-01 00:00:00.000000", None, None, at, None),
        ),
    }


def test_prepare_build_rows_skips_rejects() -> None:
    """Rejected tasks get no bind parameters; they stay in `rejects` only."""
    batch = prepare(Binder("sqlite", ORDER), "main", [task("1"), {}], NOW, build_rows=True)
    assert list(batch.built) == ["1"] and batch.rejected == 1


def test_prepare_task_whose_row_cannot_be_built_is_rejected() -> None:
    """A task whose bind parameters cannot be made (properties with a non-string key) is
    a Rejected in `built`, not an exception; the others are built."""
    odd = task("2", properties={1: "x"})
    batch = prepare(Binder("sqlite", ORDER), "main", [task("1"), odd], NOW, build_rows=True)
    assert isinstance(batch.built["1"], Built)
    assert batch.built["2"] == Rejected("2", "cannot be stored: TypeError")


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        pytest.param("sqlite", "2026-01-01 00:00:01.500000", id="sqlite"),
        pytest.param(
            "postgresql", datetime(2026, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC), id="postgresql"
        ),
        pytest.param("mysql", datetime(2026, 1, 1, 0, 0, 1, 500_000), id="mysql"),
    ],
)
def test_binder_ts_as_each_driver_wants_it(dialect: str, expected: Any) -> None:
    """SQLite: ISO text with microseconds; PostgreSQL: the aware datetime; MySQL: naive UTC."""
    binder = Binder(dialect, None)
    value = datetime(2026, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
    got = binder.ts(value)
    assert got == expected and type(got) is type(expected)
    if dialect == "mysql":
        assert got.tzinfo is None
    assert binder.ts(None) is None


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        pytest.param("sqlite", "2026-01-01 00:00:00.000000", id="sqlite"),
        pytest.param("mysql", datetime(2026, 1, 1), id="mysql"),
    ],
)
def test_binder_ts_converts_other_zones_to_utc(dialect: str, expected: Any) -> None:
    """A time in another zone is stored as its UTC wall time, microseconds always written."""
    cet = datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    assert Binder(dialect, None).ts(cet) == expected


def test_binder_ts_hands_postgresql_the_datetime_itself() -> None:
    """PostgreSQL gets the very datetime, zone and all (psycopg converts it)."""
    cet = datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    assert Binder("postgresql", None).ts(cet) is cet


def test_binder_params_without_order_is_every_column_by_name() -> None:
    """Without an order: a dict of every column, JSON as text, times as the driver wants,
    the seen/changed times `at` and gone_at None."""
    rec = record(task(buttons=None))
    params = Binder("sqlite", None).params(rec, "AT")
    assert params["id"] == "1" and params["status"] == "SUCCESS"
    assert params["submit_time"] == "2026-01-01 00:00:00.000000"
    assert params["start_time"] == "2026-01-01 00:00:01.500000"
    assert params["finish_time"] == "2026-01-01 00:01:01.500000"
    assert params["properties"] == '{"finalPrompt":"a cat"}' and params["buttons"] is None
    assert params["extra"] is None and params["shape"] is None  # every key as a column
    assert params["absent"] == "prompt,promptEn,description,state,imageUrl,failReason"
    assert params["first_seen_at"] == params["last_seen_at"] == params["last_changed_at"] == "AT"
    assert params["gone_at"] is None
    assert set(params) == {*rec.row, "first_seen_at", "last_seen_at", "last_changed_at", "gone_at"}


def test_binder_params_follow_the_statements_order() -> None:
    """With an order: a tuple of exactly those values, in that order."""
    rec = record(task())
    params = Binder("mysql", ["gone_at", "extra", "id", "submit_time", "last_seen_at"]).params(
        rec, "AT"
    )
    assert params == (None, None, "1", datetime(2026, 1, 1), "AT")
