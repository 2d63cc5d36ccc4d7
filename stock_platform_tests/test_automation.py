"""Schedules, evaluated as the daemon would (build_schedule_context) against the real definitions."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from stock_platform.automation import daily_close, weekly_lake_maintenance, weekly_retrain_schedule
from stock_platform.definitions import defs

NY = ZoneInfo("America/New_York")


def tick(schedule, when: dt.datetime):
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                            repository_def=defs.get_repository_def())
        return schedule.evaluate_tick(context)


@pytest.mark.parametrize(("when", "partition"), [
    (dt.datetime(2024, 6, 18, 18, 0, tzinfo=NY), "2024-06-18"),
    # the same instant seen from UTC (already the next calendar day there) is still the NY session
    (dt.datetime(2024, 6, 18, 22, 0, tzinfo=dt.UTC), "2024-06-18"),
])
def test_daily_close_requests_the_days_partition(when, partition):
    [request] = tick(daily_close, when).run_requests
    assert request.partition_key == partition and request.run_key == f"daily_close:{partition}"
    assert daily_close.job_name == "daily_assets" and daily_close.execution_timezone == "America/New_York"
    assert partition in defs.resolve_job_def("daily_assets").partitions_def.get_partition_keys()


def test_daily_close_skips_an_exchange_holiday():
    result = tick(daily_close, dt.datetime(2024, 6, 19, 18, 0, tzinfo=NY))  # Juneteenth
    assert not result.run_requests and "2024-06-19 is not an NYSE trading day" in result.skip_message


def test_weekly_retrain_requests_the_week_that_just_finished():
    [request] = tick(weekly_retrain_schedule, dt.datetime(2024, 6, 24, 6, 0, tzinfo=NY)).run_requests
    assert request.partition_key == "2024-06-17"
    assert request.partition_key in defs.resolve_job_def("weekly_retrain").partitions_def.get_partition_keys()


def test_schedules_are_registered():
    assert {s.name for s in defs.schedules} == {"daily_close", "weekly_retrain_schedule", "weekly_lake_maintenance"}


@pytest.mark.parametrize("when", [dt.datetime(2024, 6, 23, 3, 0, tzinfo=NY), dt.datetime(2024, 6, 23, 7, 0, tzinfo=dt.UTC)])
def test_weekly_lake_maintenance_requests_one_run_per_new_york_sunday(when):
    [request] = tick(weekly_lake_maintenance, when).run_requests
    assert request.run_key == "lake_maintenance:2024-06-23" and weekly_lake_maintenance.job_name == "lake_maintenance"
