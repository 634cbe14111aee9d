"""Schedule expressions, checked and translated for APScheduler: crontab lines (five fields,
crontab's own day-of-week numbers), intervals such as "30s" or "5m", and time zones.

A leaf: it imports nothing of tasksync but the errors, so the settings can check a schedule
without loading the daemon; APScheduler is imported only when a crontab line is checked.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sync.errors import ConfigError

INTERVAL_RE = re.compile(r"^(\d+)\s*(s|m|h)$")
MAX_INTERVAL_S = 366 * 86_400  # further apart is no schedule (and overflows the calendar)


def check_timezone(v: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r}") from None
    return v


DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_DOW_NAMES = {d: i for i, d in enumerate(DAYS)}


def _dow_number(text: str) -> int:
    if text.isascii() and text.isdigit() and int(text) <= 7:
        return int(text) % 7
    if text.lower() in _DOW_NAMES:
        return _DOW_NAMES[text.lower()]
    raise ValueError(f"bad day of week {text!r} (0-7 or sun-sat)")


def _dow_field(dow: str) -> str:
    """Crontab's day-of-week field as APScheduler 3 names. Numbers follow crontab (0 or 7 =
    Sunday, 1 = Monday), not APScheduler's own (0 = Monday), so every element is expanded to
    day names: `1-5` is mon..fri, `0-6` every day, `*/2` sun,tue,thu,sat."""
    if dow == "*":
        return dow
    days: set[int] = set()
    for part in dow.split(","):
        rng, _, step_text = part.partition("/")
        if step_text and not (step_text.isascii() and step_text.isdigit() and int(step_text) > 0):
            raise ValueError(f"bad step in day of week {part!r}")
        step = int(step_text) if step_text else 1
        if rng == "*":
            lo, hi = 0, 6
        elif "-" in rng:
            a, _, b = rng.partition("-")
            lo, hi = _dow_number(a), _dow_number(b)
            if b.strip() == "7":
                hi = 7  # 5-7: Friday to Sunday
            if hi < lo:
                raise ValueError(f"day-of-week range {rng!r} runs backwards")
        else:
            lo = _dow_number(rng)
            hi = 6 if step_text else lo
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(DAYS[d] for d in sorted(days))


def cron_fields(cron: str) -> dict[str, str]:
    """The five crontab fields as APScheduler CronTrigger arguments."""
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, dow = fields
    return {
        "minute": minute,
        "hour": hour,
        "day": day,
        "month": month,
        "day_of_week": _dow_field(dow),
    }


def check_cron(v: str) -> str:
    """A crontab expression APScheduler accepts (checked by building its trigger)."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        trigger = CronTrigger(**cron_fields(v), timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"bad cron expression {v!r}: {exc}") from None
    if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
        raise ValueError(f"cron expression {v!r} never fires (a day no month has?)")
    return v


def interval_seconds(text: str) -> int:
    """'30s' → 30, '5m' → 300, '1h' → 3600."""
    m = INTERVAL_RE.match(text)
    if not m:
        raise ConfigError(f"bad interval {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def check_interval(v: str) -> str:
    """An interval like '30s', '5m' or '1h', at most MAX_INTERVAL_S."""
    if not INTERVAL_RE.match(v) or not 0 < interval_seconds(v) <= MAX_INTERVAL_S:
        raise ValueError("an interval like '30s', '5m' or '1h', at most 8784h (366 days)")
    return v
