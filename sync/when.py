"""Times people type, read in a time zone, as UTC instants: absolute (`2026-12-01`,
`2026-12-01T08:00`, `2026-12-01 08:00:00`, with an offset or `Z` when given) and relative
(`7d`, `24h`, `90m`, `2w`, `last 7 days`, `today`, `yesterday`, `this week`, `last week`,
`this month`, `last month`, `this year`, `last year`).

Pure: `now` and the zone are passed in, nothing reads the clock. Weeks start on Monday (as in
`tasksync report`); days are local calendar days, so a day across a daylight-saving change is
23 or 25 hours long. A duration (`7d`) is exact: 168 hours back from `now`.

Used by `serve` (the time range of a list), and meant for `report` and `export` (`--since`).
Errors are `WhenError` (a ValueError) with one line naming what was typed and what is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

ACCEPTED = (
    "a date (2026-12-01), a time (2026-12-01T08:00), a duration back from now (7d, 24h, 90m, "
    "2w, 'last 7 days'), or today, yesterday, this/last week, this/last month, this/last year"
)
MAX_TEXT = 64
MAX_DAYS = 36_600  # a duration past a century is a typo, and overflows the calendar soon after

_UNITS = {
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86_400,
    "day": 86_400,
    "days": 86_400,
    "w": 604_800,
    "wk": 604_800,
    "week": 604_800,
    "weeks": 604_800,
}
_DURATION = re.compile(r"(?:last|past)?\s*(\d{1,6})\s*([a-z]+)(?:\s+ago)?")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


class WhenError(ValueError):
    """Text that is not a time this module reads; the message is one line for the user."""


@dataclass(frozen=True)
class Span:
    """A range of UTC instants, [start, end); `end` None: up to now and on."""

    start: datetime
    end: datetime | None


def _midnight(day: date, tz: tzinfo) -> datetime:
    """The first instant of a local calendar day, in UTC."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def _calendar(word: str, today: date) -> tuple[date, date] | None:
    """The local days [first, after last) a calendar word names."""
    monday = today - timedelta(days=today.weekday())
    month = today.replace(day=1)
    last_month = (month - timedelta(days=1)).replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    year = today.replace(month=1, day=1)
    spans = {
        "today": (today, today + timedelta(days=1)),
        "yesterday": (today - timedelta(days=1), today),
        "this week": (monday, monday + timedelta(days=7)),
        "last week": (monday - timedelta(days=7), monday),
        "this month": (month, next_month),
        "last month": (last_month, month),
        "this year": (year, year.replace(year=year.year + 1)),
        "last year": (year.replace(year=year.year - 1), year),
    }
    return spans.get(word)


def _absolute(text: str, tz: tzinfo) -> Span | None:
    """A date (the whole local day) or a time (from that instant on), or None."""
    day = _DATE.fullmatch(text)
    if day:
        try:
            first = date(int(day[1]), int(day[2]), int(day[3]))
        except ValueError:
            raise WhenError(f"{text!r} is not a date of the calendar") from None
        try:
            return Span(_midnight(first, tz), _midnight(first + timedelta(days=1), tz))
        except OverflowError:
            raise WhenError(f"{text!r} is too far out for the calendar") from None
    if not _DATE.match(text):
        return None
    iso = text.replace(" ", "T", 1)
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        raise WhenError(f"{text!r} is not a time; write 2026-12-01T08:00 (or a date)") from None
    try:
        when = when.replace(tzinfo=tz) if when.tzinfo is None else when
        return Span(when.astimezone(UTC), None)
    except OverflowError:
        raise WhenError(f"{text!r} is too far out for the calendar") from None


def span(text: str, now: datetime, tz: tzinfo = UTC) -> Span:
    """What `text` names, read in `tz`, as UTC instants: a calendar word or a date gives the
    whole period, a time or a duration an open range from then on."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if len(text) > MAX_TEXT:
        raise WhenError(f"a time of {len(text)} characters is too long; use {ACCEPTED}")
    words = " ".join(text.strip().lower().split())
    if not words:
        raise WhenError(f"no time given; use {ACCEPTED}")
    today = now.astimezone(tz).date()
    days = _calendar(words, today)
    if days is not None:
        try:
            return Span(_midnight(days[0], tz), _midnight(days[1], tz))
        except OverflowError:
            raise WhenError(f"{text!r} is too far out for the calendar") from None
    found = _absolute(text.strip(), tz)
    if found is not None:
        return found
    m = _DURATION.fullmatch(words)
    if m and m[2] in _UNITS:
        seconds = int(m[1]) * _UNITS[m[2]]
        if seconds > MAX_DAYS * 86_400:
            raise WhenError(f"{text!r} reaches back more than a century")
        try:
            return Span((now - timedelta(seconds=seconds)).astimezone(UTC), None)
        except OverflowError:
            raise WhenError(f"{text!r} reaches back past the calendar") from None
    shown = text if text.isprintable() else text.encode("unicode_escape").decode()
    raise WhenError(f"{shown!r} is not a time tasksync reads; use {ACCEPTED}")


def instant(text: str, now: datetime, tz: tzinfo = UTC) -> datetime:
    """The first instant `text` names (what `--since` means by it), in UTC."""
    return span(text, now, tz).start
