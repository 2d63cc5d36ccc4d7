"""Jobs, schedules and sensors."""

from __future__ import annotations

import dagster as dg

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

jobs = [daily_assets_job, weekly_retrain_job]
schedules: list[dg.ScheduleDefinition] = []
sensors: list[dg.SensorDefinition] = []
