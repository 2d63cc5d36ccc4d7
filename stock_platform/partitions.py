"""Partitions: `trading_days` (NYSE sessions) and `model_weeks`."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from stock_platform.lib.calendar import EXCHANGE_TIMEZONE, exchange_date, nyse_holidays
from stock_platform.settings import get_settings

_settings = get_settings()


def _trading_days(start: dt.date) -> dg.TimeWindowPartitionsDefinition:
    # Weekday windows (Mon..Fri); NYSE holidays are excluded by Dagster itself. end_offset=1 makes
    # today's partition exist during the day, so the 18:00 close schedule can fill it. Holidays are listed
    # to well past New York's today (Dagster itself decides the last partition from its clock in New York).
    last = exchange_date() + dt.timedelta(days=400)
    return dg.TimeWindowPartitionsDefinition(
        start=start.isoformat(),
        fmt="%Y-%m-%d",
        cron_schedule="0 0 * * 1-5",
        timezone=EXCHANGE_TIMEZONE,
        end_offset=1,
        exclusions=[dt.datetime.combine(d, dt.time()) for d in nyse_holidays(start, last)],
    )


trading_days = _trading_days(_settings.start)
# Tag of the assets partitioned by trading day: the daily job and backfills select them by it.
CADENCE_TAG, DAILY_CADENCE = "stock_platform/cadence", "daily"
DAILY = {CADENCE_TAG: DAILY_CADENCE}

# Weeks start on Monday; a model trained on data up to the end of its week serves the next week.
model_weeks = dg.WeeklyPartitionsDefinition(
    start_date=(_settings.start - dt.timedelta(days=_settings.start.weekday())).isoformat(),
    day_offset=1,
    timezone=EXCHANGE_TIMEZONE,
)


def daily_asset(**kwargs):
    """`@dg.asset` for an asset partitioned by trading day: one run per backfill, selected by the daily job."""
    return dg.asset(partitions_def=trading_days, backfill_policy=dg.BackfillPolicy.single_run(), tags=DAILY, **kwargs)


def daily_check(*, asset, name: str, description: str):
    """A blocking `@dg.asset_check` over the same trading-day partitions as its asset."""
    return dg.asset_check(asset=asset, name=name, blocking=True, partitions_def=trading_days, description=description)


def partition_dates(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> list[dt.date]:
    """The trading days a (possibly multi-partition, single-run) execution covers."""
    keys = trading_days.get_partition_keys_in_range(context.partition_key_range)
    return [dt.date.fromisoformat(k) for k in keys]
