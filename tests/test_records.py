"""Records: a server's task object becomes an id, a content hash and an archive row, or a
`Rejected` with its reason; pure functions, no database."""

from __future__ import annotations

import hashlib
import math
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest

from sync.tasks.records import (
    MAX_MS,
    Fingerprint,
    Record,
    Rejected,
    build,
    changed_fields,
    epoch_ms,
    fingerprint,
    is_digits,
    join,
    task_id,
)

SUBMIT = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC


def task(tid: Any = "1767225600000001", **kw: Any) -> dict[str, Any]:
    base = {
        "id": tid,
        "action": "IMAGINE",
        "status": "SUCCESS",
        "prompt": "a cat",
        "submitTime": SUBMIT,
        "startTime": SUBMIT + 1_500,
        "finishTime": SUBMIT + 61_500,
        "progress": "100%",
        "properties": {"finalPrompt": "a cat"},
        "buttons": [{"customId": "MJ::JOB::upsample::1", "label": "U1", "type": 2}],
    }
    base.update(kw)
    return base


def fp_of(obj: Any) -> Fingerprint:
    fp = fingerprint(obj)
    assert isinstance(fp, Fingerprint), fp
    return fp


def row_of(obj: Any) -> dict[str, Any]:
    rec = build("main", fp_of(obj))
    assert isinstance(rec, Record), rec
    return rec.row


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param({"id": "1767225600000001"}, "1767225600000001", id="string"),
        pytest.param({"id": 1767225600000001}, "1767225600000001", id="int"),
        pytest.param({"id": 0}, "0", id="zero"),
        pytest.param({"id": " b "}, " b ", id="spaces-kept"),
        pytest.param({"id": "a\x00b"}, "a\ufffdb", id="nul-replaced"),
    ],
)
def test_task_id_reads_string_and_int_ids(obj: dict[str, Any], expected: str) -> None:
    """String and integer ids become the same string; NUL characters become U+FFFD."""
    assert task_id(obj) == expected


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({}, id="missing"),
        pytest.param({"id": None}, id="null"),
        pytest.param({"id": ""}, id="empty"),
        pytest.param({"id": "   "}, id="blank"),
        pytest.param({"id": True}, id="bool"),
        pytest.param({"id": {"n": 1}}, id="dict"),
        pytest.param({"id": [1]}, id="list"),
        pytest.param(["id", "1"], id="not-an-object"),
    ],
)
def test_task_id_is_none_without_a_usable_id(obj: Any) -> None:
    """A missing, null, blank, boolean or structured id (or no object at all) is no id."""
    assert task_id(obj) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0123456789", True, id="ascii-digits"),
        pytest.param("", False, id="empty"),
        pytest.param("12a", False, id="letter"),
        pytest.param("-1", False, id="sign"),
        pytest.param(" 1", False, id="space"),
        pytest.param("²", False, id="superscript-two"),
        pytest.param("٣", False, id="arabic-indic-three"),
    ],
)
def test_is_digits_accepts_ascii_digits_only(text: str, expected: bool) -> None:
    """Only ASCII digits count: '²' and '٣' pass str.isdigit but not is_digits."""
    assert is_digits(text) is expected


class Millis(int):
    """An int subclass, as some JSON libraries return."""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(SUBMIT, SUBMIT, id="int"),
        pytest.param(Millis(SUBMIT), SUBMIT, id="int-subclass"),
        pytest.param(str(SUBMIT), SUBMIT, id="digit-string"),
        pytest.param(f" {SUBMIT} ", SUBMIT, id="digit-string-padded"),
        pytest.param(SUBMIT + 0.9, SUBMIT, id="float-truncated"),
        pytest.param(1, 1000, id="one-second"),
        pytest.param(SUBMIT // 1000, SUBMIT, id="seconds"),
        pytest.param(str(SUBMIT // 1000), SUBMIT, id="seconds-string"),
        pytest.param(10**11 - 1, (10**11 - 1) * 1000, id="last-value-read-as-seconds"),
        pytest.param(10**11, 10**11, id="first-value-read-as-ms"),
        pytest.param(MAX_MS - 1, MAX_MS - 1, id="last-ms-of-9999"),
        pytest.param(MAX_MS, None, id="year-10000"),
        pytest.param(1e300, None, id="huge-float"),
        pytest.param(math.inf, None, id="inf"),
        pytest.param(-math.inf, None, id="minus-inf"),
        pytest.param(math.nan, None, id="nan"),
        pytest.param(0, None, id="zero"),
        pytest.param("0", None, id="zero-string"),
        pytest.param(0.0, None, id="zero-float"),
        pytest.param(-5, None, id="negative"),
        pytest.param("-5", None, id="negative-string"),
        pytest.param(True, None, id="true"),
        pytest.param(False, None, id="false"),
        pytest.param(None, None, id="null"),
        pytest.param("junk", None, id="junk"),
        pytest.param("12.5", None, id="decimal-string"),
        pytest.param("٣", None, id="non-ascii-digit"),
        pytest.param([SUBMIT], None, id="list"),
        pytest.param({"ms": SUBMIT}, None, id="dict"),
    ],
)
def test_epoch_ms_reads_numbers_and_digit_strings(value: Any, expected: int | None) -> None:
    """Ints, digit strings and finite floats in 1970..9999 are epoch ms (a value below 10^11
    is seconds); the rest is None."""
    assert epoch_ms(value) == expected


def test_fingerprint_ignores_key_order() -> None:
    """The same task with its keys in another order has the same hash and canonical JSON."""
    one = fp_of({"id": "1", "b": {"y": 2, "x": 1}, "a": [1, 2]})
    two = fp_of({"a": [1, 2], "b": {"x": 1, "y": 2}, "id": "1"})
    assert (one.id, one.hash, one.text) == (two.id, two.hash, two.text)
    assert one.text == '{"a":[1,2],"b":{"x":1,"y":2},"id":"1"}'


def test_fingerprint_hash_changes_with_a_nested_value() -> None:
    """A change deep inside a task (a button's label) changes its hash."""
    before = fp_of(task())
    buttons = [{"customId": "MJ::JOB::upsample::1", "label": "U2", "type": 2}]
    after = fp_of(task(buttons=buttons))
    assert before.hash != after.hash and before.id == after.id


def test_fingerprint_hash_is_pinned() -> None:
    """The hash is 'x' and 31 hex digits of the canonical JSON's xxh3-128, stable across
    versions (archived hashes must keep matching)."""
    fp = fp_of({"id": "1", "a": 1})
    assert fp.hash == "xb167310769835445c8e3b55d421356e"
    assert len(fp.hash) == 32


def test_fingerprint_replaces_nul_everywhere() -> None:
    """NUL characters in the id, keys and values become U+FFFD in the id, raw and JSON."""
    fp = fp_of({"id": "a\x00", "k\x00": ["v\x00"]})
    assert fp.id == "a\ufffd"
    assert fp.raw == {"id": "a\ufffd", "k\ufffd": ["v\ufffd"]}
    assert "\\u0000" not in fp.text and "\x00" not in fp.text


def test_fingerprint_rejects_an_overlong_id() -> None:
    """An id of 255 characters is kept; one of 256 is rejected, named by its first 80."""
    assert fp_of({"id": "x" * 255}).id == "x" * 255
    rej = fingerprint({"id": "x" * 256})
    assert rej == Rejected("x" * 80 + "…", "id longer than 255 characters")


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        pytest.param([1], "task is a JSON list, not an object", id="list"),
        pytest.param("task", "task is a JSON str, not an object", id="string"),
        pytest.param(None, "task is a JSON NoneType, not an object", id="null"),
        pytest.param({"status": "SUCCESS"}, "task has no id", id="no-id"),
    ],
)
def test_fingerprint_rejects_what_is_not_a_task(obj: Any, reason: str) -> None:
    """Anything but an object with an id is rejected with the reason, without an id."""
    assert fingerprint(obj) == Rejected(None, reason)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(object(), id="object"),
        pytest.param(2**70, id="int-over-64-bits"),
        pytest.param({(1, 2): "tuple key"}, id="tuple-key"),
    ],
)
def test_fingerprint_rejects_what_cannot_be_serialised(value: Any) -> None:
    """A value JSON cannot hold rejects the task, named by its id, instead of raising."""
    rej = fingerprint({"id": "1", "x": value})
    assert isinstance(rej, Rejected) and rej.id == "1"
    assert rej.reason.startswith("task cannot be serialised: ")


def test_build_converts_times_to_utc_and_derives_durations() -> None:
    """Epoch ms become UTC datetimes (ms kept); queue, run and total are in ms."""
    row = row_of(task())
    assert row["submit_time"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert row["start_time"] == datetime(2026, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
    assert row["finish_time"] == datetime(2026, 1, 1, 0, 1, 1, 500_000, tzinfo=UTC)
    assert row["submit_time"].tzinfo is UTC
    assert (row["queue_ms"], row["run_ms"], row["total_ms"]) == (1_500, 60_000, 61_500)


def test_build_leaves_durations_without_both_ends_null() -> None:
    """A task not started yet has no start or finish time and no durations."""
    row = row_of(task(status="SUBMITTED", startTime=0, finishTime=None))
    assert row["submit_time"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert row["start_time"] is None and row["finish_time"] is None
    assert row["queue_ms"] is None and row["run_ms"] is None and row["total_ms"] is None


def test_build_cuts_progress_at_64_characters() -> None:
    """A progress text over 64 characters is cut to 64, not rejected."""
    assert row_of(task(progress="p" * 65))["progress"] == "p" * 64
    assert row_of(task(progress="p" * 64))["progress"] == "p" * 64


@pytest.mark.parametrize("field", ["status", "action"])
def test_build_rejects_status_or_action_over_64(field: str) -> None:
    """A status or action over 64 characters rejects the task with a reason; 64 is kept."""
    assert row_of(task(**{field: "S" * 64}))[field] == "S" * 64
    rej = build("main", fp_of(task(**{field: "S" * 65})))
    assert rej == Rejected("1767225600000001", f"{field} longer than 64 characters")


def test_build_passes_properties_and_buttons_through() -> None:
    """properties and buttons are kept as the server sent them; nothing is left over."""
    obj = task()
    fp = fp_of(obj)
    rec = build("main", fp)
    assert isinstance(rec, Record)
    assert rec.row["properties"] == {"finalPrompt": "a cat"}
    assert rec.row["buttons"] == obj["buttons"]
    assert rec.row["extra"] is None and rec.row["content_hash"] == fp.hash
    assert join(rec.row) == obj
    assert (rec.row["source"], rec.row["id"]) == ("main", obj["id"])


def test_build_stores_non_text_fields_as_text() -> None:
    """A number where text belongs is its string; an object or list is its JSON."""
    row = row_of(task(prompt={"text": "a cat"}, description=["a", 1], state=7))
    assert (row["prompt"], row["description"], row["state"]) == ('{"text":"a cat"}', '["a",1]', "7")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(None, {"b": 1, "a": 2}, ["a", "b"], id="no-old-version"),
        pytest.param({"a": 1}, {"a": 1}, [], id="equal"),
        pytest.param({"a": 1, "b": 2}, {"a": 1, "b": 3}, ["b"], id="changed-value"),
        pytest.param({"a": 1}, {"a": 1, "c": 0}, ["c"], id="key-added"),
        pytest.param({"a": 1, "d": 0}, {"a": 1}, ["d"], id="key-removed"),
        pytest.param({"p": {"x": 1}}, {"p": {"x": 2}}, ["p"], id="nested-change"),
        pytest.param({"s": None}, {}, [], id="null-and-missing-agree"),
    ],
)
def test_changed_fields_names_keys_that_differ(
    old: dict[str, Any] | None, new: dict[str, Any], expected: list[str]
) -> None:
    """The top-level keys whose values differ, sorted; every key when there is no old one."""
    assert changed_fields(old, new) == expected


def test_fingerprint_pickle_round_trip() -> None:
    """A fingerprint pickled (across the fetch process) keeps id, hash, JSON and raw, and
    builds the same row."""
    fp = fp_of(task(prompt="é\ufffd猫"))
    copy = pickle.loads(pickle.dumps(fp))
    assert (copy.id, copy.hash, copy.text) == (fp.id, fp.hash, fp.text)
    assert copy.raw == fp.raw
    assert build("main", copy) == build("main", fp)
    assert copy.legacy_hash() == fp.legacy_hash()


def test_legacy_hash_is_blake2b_of_the_canonical_json() -> None:
    """legacy_hash is the 32 hex digits of blake2b-128 over the canonical JSON, as stored
    by tasksync 0.1, never equal to the current hash."""
    fp = fp_of({"id": "1", "a": 1})
    expected = hashlib.blake2b(b'{"a":1,"id":"1"}', digest_size=16).hexdigest()
    assert fp.legacy_hash() == expected == "d09abcec78d519d0b4c0738a05e8e6bc"
    assert fp.legacy_hash() != fp.hash
