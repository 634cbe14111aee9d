"""From a server's task object to an archive row: parsing, derived times, content hash.

Pure functions, no I/O. Anything odd is either repaired in a documented way (NUL characters
become U+FFFD; a progress text longer than 64 characters is cut) or turns the task into a
`Rejected` with a reason, so one bad task never poisons the batch it came in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

MAX_ID = 255
MAX_ENUM = 64

# API field → column, for plain text fields.
TEXT_FIELDS = {
    "prompt": "prompt",
    "promptEn": "prompt_en",
    "description": "description",
    "state": "state",
    "imageUrl": "image_url",
    "failReason": "fail_reason",
}
TIME_FIELDS = {"submitTime": "submit_time", "startTime": "start_time", "finishTime": "finish_time"}


@dataclass(slots=True)
class Record:
    """A task ready to store: its column values and its content hash."""

    id: str
    row: dict[str, Any]
    hash: str
    raw: dict[str, Any]


@dataclass(slots=True)
class Rejected:
    """A task that cannot be stored, and why."""

    id: str | None
    reason: str


def _clean(value: Any) -> Any:
    """Replace NUL characters (PostgreSQL refuses them in text and JSON) everywhere."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)


def epoch_ms(value: Any) -> int | None:
    """Epoch milliseconds from an int, float or digit string; None, 0 and junk give None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.lstrip("-").isdigit():
            return None
        value = int(value)
    if not isinstance(value, int | float):
        return None
    ms = int(value)
    # 0 means unset (new-api); outside years 1970..9999 is junk we keep only in `raw`.
    if ms <= 0 or ms >= 253402300799000:
        return None
    return ms


def to_utc(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _span(start: int | None, end: int | None) -> int | None:
    return None if start is None or end is None else end - start


def content_hash(raw: dict[str, Any]) -> str:
    """A stable hash of the whole task object: equal content, equal hash."""
    blob = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def normalize(source: str, obj: Any) -> Record | Rejected:
    """Turn one task object from the server into a `Record`, or say why it can't be stored."""
    if not isinstance(obj, dict):
        return Rejected(None, f"task is a JSON {type(obj).__name__}, not an object")
    raw_id = obj.get("id")
    if raw_id is None or isinstance(raw_id, bool | dict | list) or str(raw_id).strip() == "":
        return Rejected(None, "task has no id")
    task_id = _clean(str(raw_id))
    if len(task_id) > MAX_ID:
        return Rejected(task_id[:80] + "…", f"id longer than {MAX_ID} characters")
    raw = _clean(obj)
    if not isinstance(raw, dict):  # pragma: no cover - _clean keeps dicts dicts
        raise TypeError
    action, status = _text(raw.get("action")), _text(raw.get("status"))
    for name, val in (("action", action), ("status", status)):
        if val is not None and len(val) > MAX_ENUM:
            return Rejected(task_id, f"{name} longer than {MAX_ENUM} characters")
    progress = _text(raw.get("progress"))
    if progress is not None and len(progress) > MAX_ENUM:
        progress = progress[:MAX_ENUM]
    submit, start, finish = (epoch_ms(raw.get(k)) for k in TIME_FIELDS)
    try:
        hashed = content_hash(raw)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return Rejected(task_id, f"task cannot be serialised: {exc}")
    row: dict[str, Any] = {
        "source": source,
        "id": task_id,
        "action": action,
        "status": status,
        "progress": progress,
        "submit_time": to_utc(submit),
        "start_time": to_utc(start),
        "finish_time": to_utc(finish),
        "queue_ms": _span(submit, start),
        "run_ms": _span(start, finish),
        "total_ms": _span(submit, finish),
        "properties": raw.get("properties"),
        "buttons": raw.get("buttons"),
        "raw": raw,
        "content_hash": hashed,
    }
    for field, column in TEXT_FIELDS.items():
        row[column] = _text(raw.get(field))
    return Record(task_id, row, hashed, raw)


def changed_fields(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The API field names whose values differ between two versions of a task."""
    if not isinstance(old, dict):
        return sorted(new)
    keys = set(old) | set(new)
    return sorted(k for k in keys if old.get(k) != new.get(k))
