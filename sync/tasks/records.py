"""From a server's task object to an archive row and back: parsing, derived times, content
hash, and the split that stores every byte once (`build`) with its inverse (`join`).

Pure functions, no I/O. Anything odd is either repaired in a documented way (NUL characters
become U+FFFD; a progress text longer than 64 characters is cut) or turns the task into a
`Rejected` with a reason, so one bad task never poisons the batch it came in.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import xxhash

MAX_ID = 255
MAX_ENUM = 64


class Fingerprint:
    """A task as received: its id, its content hash and its canonical JSON. Cheap to make;
    enough to tell an unchanged task from a new or changed one without normalizing it.

    Pickled (to cross from the fetch process) without the parsed object, which is rebuilt
    from the canonical JSON only if the task needs it."""

    __slots__ = ("_blob", "_raw", "_text", "hash", "id")

    def __init__(
        self, id: str, hash: str, raw: dict[str, Any] | None, blob: bytes | None, text: str | None
    ) -> None:
        self.id, self.hash, self._raw, self._blob, self._text = id, hash, raw, blob, text

    @property
    def text(self) -> str:
        """The canonical JSON, decoded only for tasks that get written."""
        if self._text is None:
            assert self._blob is not None
            self._text = self._blob.decode()
        return self._text

    @property
    def raw(self) -> dict[str, Any]:
        if self._raw is None:
            self._raw = orjson.loads(self._blob if self._blob is not None else self.text)
        return self._raw

    def legacy_hash(self) -> str:
        """The content hash tasksync 0.1 stored (blake2b), to recognise unchanged tasks in an
        archive written before the switch to xxh3."""
        blob = self._blob if self._blob is not None else self.text.encode()
        return hashlib.blake2b(blob, digest_size=16).hexdigest()

    def __reduce__(self) -> tuple[Any, ...]:
        # `text` is the very object in the row's bind parameters: pickle sends it once.
        return (Fingerprint, (self.id, self.hash, None, None, self.text))

    def __repr__(self) -> str:
        return f"Fingerprint({self.id!r}, {self.hash!r})"


@dataclass(slots=True)
class Record:
    """A task ready to store: its column values (`extra`, `absent` and `shape` included)."""

    row: dict[str, Any]


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
    if value is None or type(value) is str:
        return value
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)


MAX_MS = 253402300799000  # 9999-12-31


def is_digits(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also accepts '²' or '٣', which `int()` then refuses."""
    return text.isascii() and text.isdigit()


SECONDS_BELOW = 10**11  # an epoch value below this is seconds: in ms it would be 1970..1973


def epoch_ms(value: Any) -> int | None:
    """Epoch milliseconds from an int, float or digit string (a value below 10^11 is taken as
    seconds, as some relays and look-alike servers send); None, 0 and junk give None."""
    if type(value) is int:
        ms = value
    elif value is None or isinstance(value, bool):
        return None
    elif isinstance(value, str):
        value = value.strip()
        if not is_digits(value.removeprefix("-")) or len(value) > 20:  # > 20 digits: junk
            return None  # (and int() would refuse more than 4,300)
        ms = int(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        ms = int(value)
    elif isinstance(value, int):
        ms = int(value)
    else:
        return None
    if 0 < ms < SECONDS_BELOW:
        ms *= 1000
    # 0 means unset (new-api); outside years 1970..9999 is junk we keep only in `raw`.
    return ms if 0 < ms < MAX_MS else None


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def to_utc(ms: int | None) -> datetime | None:
    """Exact (integer arithmetic, no float rounding): `to_ms` gives the same value back."""
    return None if ms is None else EPOCH + ms * MS


def to_ms(value: datetime) -> int:
    return (value - EPOCH) // MS


def _span(start: int | None, end: int | None) -> int | None:
    return None if start is None or end is None else end - start


JSON_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


@dataclass(frozen=True)
class Shape:
    """Where a server family's task objects keep the archive's fields: the key of each column's
    value, the key of the task's id, and whether `properties` and `buttons` arrive as JSON
    inside strings. The object itself is archived as sent; only the columns are mapped."""

    name: str
    id: str
    keys: dict[str, str]
    json_in_strings: bool = False
    unset_time: Any = None  # what the family sends for a time it has not got
    unset_json: Any = None  # ... and for `properties` or `buttons` it has not got


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
# The Midjourney-proxy task object (plus, trueai, novicezk, relays): camelCase.
MJ = Shape(
    "mj",
    "id",
    dict(
        zip(
            COLUMNS,
            (
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
            ),
            strict=True,
        )
    ),
)
# new-api's dashboard rows: snake_case, the task's id in `mj_id` (`id` is the row's own).
NEWAPI = Shape(
    "newapi", "mj_id", {c: c for c in COLUMNS}, json_in_strings=True, unset_time=0, unset_json=""
)
SHAPES = {s.name: s for s in (MJ, NEWAPI)}


def content_hash(blob: bytes) -> str:
    """The letter x and 31 hex digits of the canonical JSON's xxh3-128: 32 characters, like
    the blake2b hashes of archives written before, which never start with an x."""
    return "x" + xxhash.xxh3_128_hexdigest(blob)[:31]


def task_id(obj: Any, shape: Shape = MJ) -> str | None:
    """A task's id as the archive stores it (a string, NUL characters replaced), or None when
    it has none. The one place ids are read: saving, walking and sweeping agree on them."""
    if type(obj) is not dict:
        return None
    raw_id = obj.get(shape.id)
    if raw_id is None or isinstance(raw_id, bool | dict | list):
        return None
    text: str = _clean(raw_id if type(raw_id) is str else str(raw_id))
    return text if text.strip() else None


def fingerprint(obj: Any, shape: Shape = MJ) -> Fingerprint | Rejected:
    """Id, content hash and canonical JSON of one task object, or why it can't be stored."""
    if type(obj) is not dict:
        return Rejected(None, f"task is a JSON {type(obj).__name__}, not an object")
    tid = task_id(obj, shape)
    if tid is None:
        return Rejected(None, "task has no id")
    if len(tid) > MAX_ID:
        return Rejected(tid[:80] + "…", f"id longer than {MAX_ID} characters")
    try:
        blob = orjson.dumps(obj, option=JSON_OPTS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return Rejected(tid, f"task cannot be serialised: {exc}")
    raw: dict[str, Any] = obj
    if b"\\u0000" in blob:  # rare: only then walk the object to replace NULs
        raw = _clean(obj)
        blob = orjson.dumps(raw, option=JSON_OPTS)
    return Fingerprint(tid, content_hash(blob), raw, blob, None)


def _json_value(value: Any) -> Any:
    """A JSON value that may arrive as JSON text (new-api): parsed when it is JSON, None when
    empty, else kept as it is."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def build(source: str, fp: Fingerprint, shape: Shape = MJ) -> Record | Rejected:
    """The archive row of a fingerprinted task, its columns read where `shape` keeps them,
    and what the columns do not give back exactly in `extra` (see `split`)."""
    raw = fp.raw
    k = shape.keys

    def g(column: str) -> Any:
        return raw.get(k[column])

    action, status = _text(g("action")), _text(g("status"))
    if action is not None and len(action) > MAX_ENUM:
        return Rejected(fp.id, f"action longer than {MAX_ENUM} characters")
    if status is not None and len(status) > MAX_ENUM:
        return Rejected(fp.id, f"status longer than {MAX_ENUM} characters")
    progress = _text(g("progress"))
    if progress is not None and len(progress) > MAX_ENUM:
        progress = progress[:MAX_ENUM]
    submit, start, finish = (
        epoch_ms(g("submit_time")),
        epoch_ms(g("start_time")),
        epoch_ms(g("finish_time")),
    )
    row: dict[str, Any] = {
        "source": source,
        "id": fp.id,
        "action": action,
        "status": status,
        "prompt": _text(g("prompt")),
        "prompt_en": _text(g("prompt_en")),
        "description": _text(g("description")),
        "state": _text(g("state")),
        "progress": progress,
        "image_url": _text(g("image_url")),
        "fail_reason": _text(g("fail_reason")),
        "submit_time": to_utc(submit),
        "start_time": to_utc(start),
        "finish_time": to_utc(finish),
        "queue_ms": _span(submit, start),
        "run_ms": _span(start, finish),
        "total_ms": _span(submit, finish),
        "properties": _json_value(g("properties")) if shape.json_in_strings else g("properties"),
        "buttons": _json_value(g("buttons")) if shape.json_in_strings else g("buttons"),
        "content_hash": fp.hash,
    }
    row["extra"], row["absent"] = split(raw, row, shape)
    row["shape"] = None if shape.name == MJ.name else shape.name
    return Record(row)


# ---- every byte once: the object = the columns + `extra` -------------------------------------
TIMES = ("submit_time", "start_time", "finish_time")
JSONS = ("properties", "buttons")


def _given(column: str, value: Any, shape: Shape) -> Any:
    """The server's value that a stored column value stands for, as `shape`'s family sends
    it: the text itself, a time as epoch milliseconds, a JSON value (as JSON text for
    new-api), or the family's unset value for a NULL time or JSON column."""
    if column in TIMES:
        return shape.unset_time if value is None else to_ms(value)
    if column in JSONS and shape.json_in_strings:
        # As Go's encoding/json writes it (keys sorted, no spaces): what new-api stores. Key
        # order could not be kept anyway (PostgreSQL's jsonb keeps its own).
        if value is None:
            return shape.unset_json
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON, type for type: 1, 1.0 and true differ; so do "" and null."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict | list):
        return orjson.dumps(a, option=JSON_OPTS) == orjson.dumps(b, option=JSON_OPTS)
    return bool(a == b)


def split(
    obj: dict[str, Any], row: dict[str, Any], shape: Shape
) -> tuple[dict[str, Any] | None, str | None]:
    """What the columns of `row` do not give back exactly: `extra`, the object's other keys
    and every value a column holds differently (a cut progress, a time in seconds, an id
    sent as a number ...), and `absent`, the mapped keys the object did not have, comma
    separated. `join` of the stored row is then the object, exactly."""
    extra: dict[str, Any] = {}
    mapped = {shape.id: "id", **{key: col for col, key in shape.keys.items()}}
    for key, value in obj.items():
        col = mapped.get(key)
        if col is None:
            extra[key] = value
        elif col in JSONS and not shape.json_in_strings:
            # Stored as the very value sent. A bare number, text or boolean is kept in
            # `extra` too: SQLite's JSON columns have numeric affinity (1.0 reads back as 1).
            if value is not None and not isinstance(value, dict | list):
                extra[key] = value
        elif not _same(_given(col, row[col], shape), value):
            extra[key] = value
    absent = ",".join(key for key in mapped if key not in obj)
    return extra or None, absent or None


JOINED = ("id", *COLUMNS, "extra", "absent", "shape")  # the columns `join` reads


def join(row: Any) -> dict[str, Any]:
    """A task's server object from its stored row (a mapping with the JOINED columns): the
    inverse of `build`'s split, so `tasksync export` gives back what the server sent."""
    shape = SHAPES[row["shape"] or MJ.name]
    skip = set(row["absent"].split(",")) if row["absent"] else set()
    obj: dict[str, Any] = {}
    if shape.id not in skip:
        obj[shape.id] = row["id"]
    for col, key in shape.keys.items():
        if key not in skip:
            obj[key] = _given(col, row[col], shape)
    if row["extra"]:
        obj.update(row["extra"])
    return obj


def changed_fields(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The API field names whose values differ between two versions of a task."""
    if not isinstance(old, dict):
        return sorted(new)
    keys = set(old) | set(new)
    return sorted(k for k in keys if old.get(k) != new.get(k))
