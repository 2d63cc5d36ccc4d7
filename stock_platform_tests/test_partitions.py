from __future__ import annotations

import datetime as dt

from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from stock_platform.cli.demo import demo_range
from stock_platform.lib.calendar import (exchange_date, is_trading_day, nyse_holidays,
                                         trading_days as calendar_days)
from stock_platform.settings import SettingsError, load_settings
from stock_platform.partitions import model_weeks, trading_days


def test_trading_days_exclude_weekends_and_nyse_holidays():
    keys = trading_days.get_partition_keys_in_range(dg.PartitionKeyRange("2024-07-01", "2024-07-10"))
    assert keys == ["2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05", "2024-07-08", "2024-07-09", "2024-07-10"]
    all_keys = set(trading_days.get_partition_keys())
    # Good Friday, Juneteenth, Thanksgiving, Christmas, and special closures (Bush 2018, Carter 2025)
    for closed in ["2024-03-29", "2024-06-19", "2024-11-28", "2024-12-25", "2018-12-05", "2025-01-09"]:
        assert closed not in all_keys
    assert "2024-11-29" in all_keys  # the half day after Thanksgiving trades
    assert trading_days.timezone == "America/New_York"


def test_trading_days_match_the_calendar_every_year():
    keys = trading_days.get_partition_keys()
    assert keys[0] == "2015-01-02"
    days = calendar_days(dt.date(2015, 1, 2), dt.date.fromisoformat(keys[-1]))
    assert keys == [d.isoformat() for d in days]
    per_year = {y: sum(k.startswith(str(y)) for k in keys) for y in range(2015, 2026)}
    assert all(250 <= n <= 253 for n in per_year.values()), per_year


UTC, NY = dt.UTC, ZoneInfo("America/New_York")
# (instant, New York's date then, the last trading-day partition then): the date logic at fixed instants,
# never at the hour the suite happens to run.
INSTANTS = [
    pytest.param(dt.datetime(2026, 12, 2, 2, 0, tzinfo=UTC), "2026-12-01", "2026-12-01",
                 id="02:00 UTC Wednesday is Tuesday evening in New York"),
    pytest.param(dt.datetime(2026, 12, 4, 21, 0, tzinfo=NY), "2026-12-04", "2026-12-04",
                 id="21:00 New York Friday (Saturday in UTC)"),
    pytest.param(dt.datetime(2026, 12, 5, 12, 0, tzinfo=NY), "2026-12-05", "2026-12-04", id="Saturday"),
    # On a holiday Dagster's end_offset=1 counts the next non-excluded window: the next session's partition
    # exists a day early (as a session's own partition exists from its midnight, before its bars do).
    pytest.param(dt.datetime(2026, 11, 26, 12, 0, tzinfo=NY), "2026-11-26", "2026-11-27", id="Thanksgiving"),
    pytest.param(dt.datetime(2026, 3, 8, 7, 30, tzinfo=UTC), "2026-03-08", "2026-03-06",
                 id="03:30 EDT, just after the spring DST switch"),
    pytest.param(dt.datetime(2026, 3, 9, 4, 30, tzinfo=UTC), "2026-03-09", "2026-03-09",
                 id="00:30 EDT Monday (still Sunday in EST terms)"),
    pytest.param(dt.datetime(2026, 11, 2, 4, 30, tzinfo=UTC), "2026-11-01", "2026-10-30",
                 id="23:30 EST Sunday after the fall DST switch (Monday in UTC)"),
    pytest.param(dt.datetime(2026, 11, 2, 5, 30, tzinfo=UTC), "2026-11-02", "2026-11-02", id="00:30 EST Monday"),
]


@pytest.mark.parametrize(("instant", "ny_date", "last_partition"), INSTANTS)
def test_date_logic_at_fixed_instants(instant, ny_date, last_partition):
    today = dt.date.fromisoformat(ny_date)
    previous_session = calendar_days(today - dt.timedelta(days=10), today - dt.timedelta(days=1))[-1]
    next_session = calendar_days(today + dt.timedelta(days=1), today + dt.timedelta(days=10))[0]
    assert exchange_date(instant) == today
    with dg.partition_loading_context(instant):  # Dagster's "now" for the partitions
        assert trading_days.get_last_partition_key() == last_partition
    if is_trading_day(today):  # the 18:00 close schedule's partition exists all day
        assert last_partition == ny_date
    else:
        assert dt.date.fromisoformat(last_partition) in (previous_session, next_session)
    # the demo's default range ends at the last session before New York's today
    assert demo_range(0.5, now=instant)[1] == previous_session
    # STOCK_PLATFORM_START may be New York's today, not the day after
    assert load_settings({"STOCK_PLATFORM_START": ny_date}, now=instant).start == today
    with pytest.raises(SettingsError, match=f"today in New York \\({ny_date}\\)"):
        load_settings({"STOCK_PLATFORM_START": (today + dt.timedelta(days=1)).isoformat()}, now=instant)


def test_an_instant_without_a_time_zone_is_refused():
    with pytest.raises(ValueError, match="has no time zone"):
        exchange_date(dt.datetime(2026, 12, 2, 2, 0))


def test_holiday_list_has_the_fixed_holidays():
    days = nyse_holidays(dt.date(2025, 1, 1), dt.date(2025, 12, 31))
    assert dt.date(2025, 1, 1) in days and dt.date(2025, 7, 4) in days and dt.date(2025, 12, 25) in days
    assert len(days) == 11  # ten regular holidays + the national day of mourning for President Carter


def test_model_weeks_start_on_monday():
    keys = model_weeks.get_partition_keys()
    assert all(dt.date.fromisoformat(k).weekday() == 0 for k in keys)
    window = model_weeks.time_window_for_partition_key("2024-07-01")
    assert (window.end - window.start).days == 7
