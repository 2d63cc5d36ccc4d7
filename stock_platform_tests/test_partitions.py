from __future__ import annotations

import datetime as dt

import dagster as dg

from stock_platform.lib.calendar import is_trading_day, nyse_holidays, trading_days as calendar_days
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


def test_todays_partition_exists_for_the_close_schedule():
    today = dt.date.today()
    last = dt.date.fromisoformat(trading_days.get_last_partition_key())
    assert last <= today
    if is_trading_day(today):
        assert last == today


def test_holiday_list_has_the_fixed_holidays():
    days = nyse_holidays(dt.date(2025, 1, 1), dt.date(2025, 12, 31))
    assert dt.date(2025, 1, 1) in days and dt.date(2025, 7, 4) in days and dt.date(2025, 12, 25) in days
    assert len(days) == 11  # ten regular holidays + the national day of mourning for President Carter


def test_model_weeks_start_on_monday():
    keys = model_weeks.get_partition_keys()
    assert all(dt.date.fromisoformat(k).weekday() == 0 for k in keys)
    window = model_weeks.time_window_for_partition_key("2024-07-01")
    assert (window.end - window.start).days == 7
