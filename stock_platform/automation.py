"""Jobs and schedules (sensors: issue 8, not built yet).

Downstream refreshes use explicit asset selections, not declarative automation: one run covers a day (or a
backfill range) from prices to its evaluation in dependency order, with its blocking checks, as a single
run whose run key makes a repeated tick harmless. Automation conditions would start one run per asset and
partition, and judge staleness per partition, which for a 10-year backfill means thousands of runs.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from stock_platform.lib.calendar import EXCHANGE_TIMEZONE
from stock_platform.partitions import CADENCE_TAG, DAILY_CADENCE

# Every asset tagged with the daily cadence (partitions.DAILY), with its checks, in dependency order:
# what a daily run or a backfill of trading days executes.
daily_assets_job = dg.define_asset_job(
    "daily_assets",
    selection=dg.AssetSelection.tag(CADENCE_TAG, DAILY_CADENCE),
    description="Daily trading-day partitions of the daily assets (with their blocking checks).",
)

weekly_retrain_job = dg.define_asset_job(
    "weekly_retrain",
    selection=dg.AssetSelection.assets("tuned_model"),
    description="Tune, train and register the model of a finished week (Ray Tune + LightGBM + MLflow).",
)


@dg.schedule(cron_schedule="0 18 * * 1-5", execution_timezone=EXCHANGE_TIMEZONE, job=daily_assets_job,
             name="daily_close", description="18:00 New York on trading days: the day's partition, prices to "
             "its predictions and the evaluation of yesterday's forecasts.")
def daily_close(context: dg.ScheduleEvaluationContext):
    from zoneinfo import ZoneInfo

    from stock_platform.lib.calendar import is_trading_day

    day = context.scheduled_execution_time.astimezone(ZoneInfo(EXCHANGE_TIMEZONE)).date()
    if not is_trading_day(day):
        return dg.SkipReason(f"{day} is not an NYSE trading day")
    return dg.RunRequest(run_key=f"daily_close:{day}", partition_key=day.isoformat())


@dg.schedule(cron_schedule="0 6 * * 1", execution_timezone=EXCHANGE_TIMEZONE, job=weekly_retrain_job,
             name="weekly_retrain_schedule", description="Monday 06:00 New York: retrain on the week that just "
             "finished (its model serves this week's predictions once the gate promotes it).")
def weekly_retrain_schedule(context: dg.ScheduleEvaluationContext):
    from zoneinfo import ZoneInfo

    monday = context.scheduled_execution_time.astimezone(ZoneInfo(EXCHANGE_TIMEZONE)).date()
    week = monday - dt.timedelta(days=7 + monday.weekday())
    return dg.RunRequest(run_key=f"weekly_retrain:{week}", partition_key=week.isoformat())


jobs = [daily_assets_job, weekly_retrain_job]
schedules = [daily_close, weekly_retrain_schedule]
sensors: list[dg.SensorDefinition] = []
