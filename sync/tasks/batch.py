"""A page of tasks made ready to save: fingerprints, and for likely-new tasks their bind
parameters. Pure CPU work with no database access and no SQLAlchemy import, so it runs on the
walk's fetch thread or in its fetch process while the store writes the previous page.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from sync.tasks.records import MJ, Fingerprint, Record, Rejected, Shape, build, fingerprint


class Built(NamedTuple):
    """What saving one new or changed task needs: its status and progress (for events and
    results) and its bind parameters for the compiled upsert."""

    status: str | None
    progress: str | None
    params: Any


@dataclass
class Prepared:
    """Tasks fingerprinted (and, with `build_rows`, turned into bind parameters) for one save."""

    source: str
    now: datetime
    records: dict[str, Fingerprint]
    rejected: int
    shape: Shape = MJ
    built: dict[str, Built | Rejected] = field(default_factory=dict)
    rejects: list[Rejected] = field(default_factory=list)  # logged when the batch is saved


def json_or_none(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


class Binder:
    """Turns a `Record` into bind parameters for one dialect's compiled upsert: timestamps as
    the driver wants them, JSON as text, values in the statement's positional order."""

    def __init__(self, dialect: str, order: list[str] | None) -> None:
        self.dialect = dialect
        self.pick = None if order is None else operator.itemgetter(*order)

    def ts(self, value: datetime | None) -> Any:
        """A UTC datetime as this driver wants it (what UTCDateTime does, without overhead)."""
        if value is None:
            return None
        if self.dialect == "postgresql":
            return value
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        if self.dialect == "sqlite":  # SQLAlchemy's SQLite storage format, always with µs
            return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return value.replace(tzinfo=None)

    def params(self, rec: Record, at: Any) -> Any:
        ts, r = self.ts, rec.row
        p = {
            **r,
            "submit_time": ts(r["submit_time"]),
            "start_time": ts(r["start_time"]),
            "finish_time": ts(r["finish_time"]),
            "properties": json_or_none(r["properties"]),
            "buttons": json_or_none(r["buttons"]),
            "extra": json_or_none(r["extra"]),
            "first_seen_at": at,
            "last_seen_at": at,
            "last_changed_at": at,
            "gone_at": None,
        }
        return p if self.pick is None else self.pick(p)

    def built(self, source: str, fp: Fingerprint, at: Any, shape: Shape = MJ) -> Built | Rejected:
        try:
            rec = build(source, fp, shape)
            if isinstance(rec, Rejected):
                return rec
            return Built(rec.row["status"], rec.row["progress"], self.params(rec, at))
        except Exception as exc:  # one odd task is rejected alone, never the whole run
            return Rejected(fp.id, f"cannot be stored: {type(exc).__name__}")


def prepare(
    binder: Binder,
    source: str,
    tasks: Sequence[Any],
    now: datetime,
    *,
    build_rows: bool = False,
    shape: Shape = MJ,
) -> Prepared:
    """Fingerprint raw task objects; with `build_rows`, also build their bind parameters ahead
    of time, worth it when most tasks are expected to be new."""
    records: dict[str, Fingerprint] = {}
    rejects: list[Rejected] = []
    for obj in tasks:
        try:
            fp = fingerprint(obj, shape)
        except Exception as exc:  # one odd task is rejected alone, never the whole run
            fp = Rejected(None, f"cannot be read: {type(exc).__name__}")
        if isinstance(fp, Rejected):
            rejects.append(fp)
            continue
        records[fp.id] = fp  # the same id twice in one batch: the later copy wins
    batch = Prepared(source, now, records, len(rejects), shape, rejects=rejects)
    if build_rows:
        at = binder.ts(now)
        for tid, fp in records.items():
            batch.built[tid] = binder.built(source, fp, at, shape)
    return batch
