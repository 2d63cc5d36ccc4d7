"""The NYSE trading calendar: weekdays without the exchange's holidays and special closures, and the exchange's date.

"Today" is New York's date, never the host's: `exchange_date(instant)` turns an instant into it, and
`exchange_now()` is the one place product code reads the wall clock (tests pass instants instead).

Holidays come from the maintained `holidays` package (its NYSE calendar matches exchange_calendars'
XNYS sessions, special closures included). Its answer is cached on disk per package version, so loading
the Dagster definitions does not pay the ~0.25 s of importing and computing it every time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from zoneinfo import ZoneInfo

EXCHANGE_TIMEZONE = "America/New_York"
_EXCHANGE_TZ = ZoneInfo(EXCHANGE_TIMEZONE)


def session_close_utc(date):
    """A polars expression: the instant (UTC) of 16:00 New York on each day of the date expression `date`."""
    import polars as pl

    return (date.cast(pl.Datetime("us")).dt.offset_by("16h")
            .dt.replace_time_zone(EXCHANGE_TIMEZONE).dt.convert_time_zone("UTC"))


def following_sessions(sessions):
    """A polars frame `date, target_date`: each of the consecutive `sessions` and the session after it."""
    import polars as pl

    return pl.DataFrame({"date": sessions[:-1], "target_date": sessions[1:]},
                        schema={"date": pl.Date, "target_date": pl.Date})


def exchange_now() -> dt.datetime:
    """The current instant in New York time (the only wall-clock read of the date logic)."""
    return dt.datetime.now(_EXCHANGE_TZ)


def exchange_date(instant: dt.datetime | None = None) -> dt.date:
    """New York's calendar date at `instant` (default: now). A naive instant is refused: it has no time zone."""
    instant = exchange_now() if instant is None else instant
    if instant.tzinfo is None:
        raise ValueError(f"exchange_date: {instant.isoformat()} has no time zone (pass an aware instant)")
    return instant.astimezone(_EXCHANGE_TZ).date()


def _cache_file(first_year: int, last_year: int) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stock_platform"
    return root / f"nyse-holidays-{version('holidays')}-{first_year}-{last_year}.json"


@lru_cache(maxsize=64)
def _holidays_for_years(first_year: int, last_year: int) -> frozenset[dt.date]:
    cache = _cache_file(first_year, last_year)
    try:
        return frozenset(dt.date.fromisoformat(d) for d in json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    import holidays

    days = frozenset(holidays.financial_holidays("NYSE", years=range(first_year, last_year + 1)))
    try:  # best effort: an unwritable cache only costs time
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, delete=False, suffix=".tmp") as tmp:
            json.dump(sorted(d.isoformat() for d in days), tmp)
        os.replace(tmp.name, cache)
    except OSError:
        pass
    return days


def nyse_holidays(start: dt.date, end: dt.date) -> list[dt.date]:
    """NYSE full-day closures on weekdays between start and end (inclusive), sorted."""
    days = _holidays_for_years(start.year, end.year)
    return sorted(d for d in days if start <= d <= end and d.weekday() < 5)


def trading_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """NYSE sessions between start and end (inclusive)."""
    if end < start:
        return []
    closed = _holidays_for_years(start.year, end.year)
    out, day = [], start
    one = dt.timedelta(days=1)
    while day <= end:
        if day.weekday() < 5 and day not in closed:
            out.append(day)
        day += one
    return out


def is_trading_day(day: dt.date) -> bool:
    return day.weekday() < 5 and day not in _holidays_for_years(day.year, day.year)
