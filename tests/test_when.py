"""Times people type (`sync.when`): relative and absolute, in a time zone, as UTC instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from sync.when import Span, WhenError, instant, span

NOW = datetime(2026, 12, 9, 15, 30, tzinfo=UTC)  # a Wednesday
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("7d", NOW - timedelta(days=7)),
        ("24h", NOW - timedelta(hours=24)),
        ("90m", NOW - timedelta(minutes=90)),
        ("2w", NOW - timedelta(weeks=2)),
        ("last 7 days", NOW - timedelta(days=7)),
        ("  Past 3 Hours ", NOW - timedelta(hours=3)),
        ("10 days ago", NOW - timedelta(days=10)),
    ],
    ids=lambda v: str(v),
)
def test_when_durations_count_back_from_now(text: str, start: datetime) -> None:
    """A duration is exact, back from `now`, and open-ended."""
    assert span(text, NOW) == Span(start, None)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("today", utc(2026, 12, 9), utc(2026, 12, 10)),
        ("yesterday", utc(2026, 12, 8), utc(2026, 12, 9)),
        ("this week", utc(2026, 12, 7), utc(2026, 12, 14)),
        ("last week", utc(2026, 11, 30), utc(2026, 12, 7)),
        ("this month", utc(2026, 12, 1), utc(2027, 1, 1)),
        ("last month", utc(2026, 11, 1), utc(2026, 12, 1)),
        ("this year", utc(2026, 1, 1), utc(2027, 1, 1)),
        ("last year", utc(2025, 1, 1), utc(2026, 1, 1)),
        ("2026-02-28", utc(2026, 2, 28), utc(2026, 3, 1)),
    ],
    ids=lambda v: str(v),
)
def test_when_calendar_words_and_dates_name_whole_periods_in_utc(
    text: str, start: datetime, end: datetime
) -> None:
    """Calendar words and dates give [first instant, first instant after) in UTC."""
    assert span(text, NOW) == Span(start, end)


def test_when_reads_calendar_days_in_the_zone_across_daylight_saving() -> None:
    """In Berlin, 'yesterday' on the day after the spring change was 23 hours, and 'today'
    starts at local midnight (23:00 UTC the day before in winter)."""
    now = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)
    assert span("yesterday", now, BERLIN) == Span(utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))
    assert span("today", utc(2026, 12, 9, 23, 30), BERLIN).start == utc(2026, 12, 9, 23)
    assert span("this week", NOW, BERLIN) == Span(utc(2026, 12, 6, 23), utc(2026, 12, 13, 23))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T08:00", utc(2026, 12, 1, 7)),
        ("2026-12-01 08:00:30", utc(2026, 12, 1, 7, 0, 30)),
        ("2026-12-01T08:00Z", utc(2026, 12, 1, 8)),
        ("2026-12-01T08:00+02:00", utc(2026, 12, 1, 6)),
        ("2026-12-01", utc(2026, 11, 30, 23)),
    ],
    ids=lambda v: str(v),
)
def test_when_instant_reads_times_in_the_zone_unless_they_carry_an_offset(
    text: str, expected: datetime
) -> None:
    """A time without an offset is local to the zone; one with an offset or Z is that."""
    assert instant(text, NOW, BERLIN) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no time given"),
        ("soon", "'soon' is not a time tasksync reads"),
        ("7 parsecs", "is not a time tasksync reads"),
        ("2026-02-30", "'2026-02-30' is not a date of the calendar"),
        ("2026-12-01T25:00", "is not a time; write 2026-12-01T08:00"),
        ("999999d", "reaches back more than a century"),
        ("x" * 65, "a time of 65 characters is too long"),
        ("\x1b[31m", "'\\\\x1b[31m' is not a time"),
        ("9999-12-31", "too far out for the calendar"),
    ],
    ids=["empty", "word", "unit", "feb-30", "hour-25", "century", "long", "escape", "overflow"],
)
def test_when_bad_text_is_one_clear_line(text: str, message: str) -> None:
    """Anything else is a WhenError of one line naming what was typed and what is accepted."""
    with pytest.raises(WhenError) as caught:
        span(text, NOW, BERLIN if text == "9999-12-31" else UTC)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


def test_when_refuses_a_naive_now() -> None:
    """`now` must say its zone: a naive clock would silently be read as local time."""
    with pytest.raises(ValueError, match="timezone-aware"):
        span("7d", datetime(2026, 12, 9))
