"""Jobs, schedules and sensors."""

from __future__ import annotations

import dagster as dg

DAILY_ASSETS = ("prices", "price_snapshots", "features")

# Every daily asset, with its checks, in dependency order: what a daily run or a backfill executes.
daily_assets_job = dg.define_asset_job(
    "daily_assets",
    selection=dg.AssetSelection.assets(*DAILY_ASSETS),
    description="Daily trading-day partitions of the daily assets (with their blocking checks).",
)

jobs = [daily_assets_job]
schedules: list[dg.ScheduleDefinition] = []
sensors: list[dg.SensorDefinition] = []
