"""Jobs, schedules and sensors.

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
from stock_platform.resources import PriceSourceResource, UniverseResource
from stock_platform.resources.landing import LandedFile, LandingResource

# Files modified within this many seconds of the newest one seen are remembered by identity in the cursor:
# a file whose timestamp lands just behind another's (clock skew, S3's 1 s resolution) is still picked up.
CURSOR_MARGIN_SECONDS = 120.0

# Every asset tagged with the daily cadence (partitions.DAILY), with its checks, in dependency order:
# what a daily run or a backfill of trading days executes.
daily_assets_job = dg.define_asset_job(
    "daily_assets",
    selection=dg.AssetSelection.tag(CADENCE_TAG, DAILY_CADENCE),
    description="Daily trading-day partitions of the daily assets (with their blocking checks).",
    # The assets form a chain: nothing runs in parallel, and a process per step cost ~2 s each (measured in
    # benchmarks/latency.py: 19.7 s per landing run with processes, most of it process start-up and imports).
    executor_def=dg.in_process_executor,
)

weekly_retrain_job = dg.define_asset_job(
    "weekly_retrain",
    selection=dg.AssetSelection.assets("tuned_model"),
    description="Tune, train and register the model of a finished week (Ray Tune + LightGBM + MLflow).",
    executor_def=dg.in_process_executor,  # one step; Ray does the parallel work (and must not start in a fork)
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


def new_files(files: list[LandedFile], cursor: str | None) -> tuple[list[LandedFile], str]:
    """Files not seen before the cursor, and the cursor after them."""
    import json

    state = json.loads(cursor) if cursor else {"watermark": 0.0, "recent": []}
    seen = set(state["recent"])
    low = state["watermark"] - CURSOR_MARGIN_SECONDS
    fresh = [f for f in files if f.modified > low and f.identity not in seen]
    watermark = max([state["watermark"], *(f.modified for f in fresh)])
    recent = sorted({f.identity for f in files if f.modified > watermark - CURSOR_MARGIN_SECONDS})
    return fresh, json.dumps({"watermark": watermark, "recent": recent})


def landing_run_requests(batches: dict[dt.date, list[LandedFile]]) -> list[dg.RunRequest]:
    """One run per trading day with that day's files; the run key names exactly those file versions, so a
    re-evaluated tick or a replayed identical file never starts a second run."""
    import hashlib

    requests = []
    for day, files in sorted(batches.items()):
        keys = sorted(f.key for f in files)
        digest = hashlib.sha1("\n".join(sorted(f.identity for f in files)).encode()).hexdigest()[:16]
        config = {"config": {"landing_files": keys}}
        requests.append(dg.RunRequest(
            run_key=f"landing:{day}:{digest}", partition_key=day.isoformat(),
            run_config={"ops": {"prices": config, "price_snapshots": config}},
            tags={"stock_platform/trigger": "landing_zone_sensor", "stock_platform/landing_files": str(len(keys))}))
    return requests


# The sensor daemon evaluates sensors every 5 s at most (its fixed loop); a minimum interval of 5 s would skip
# every other loop whose start drifts a few ms early (measured: waits of up to 10 s), so allow every loop.
@dg.sensor(job=daily_assets_job, minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.STOPPED,
           description="New quote-event files in the landing zone (STOCK_PLATFORM_LANDING_URI) -> one run per "
           "trading day they touch: upsert into prices/price_snapshots, refresh features, predictions and the "
           "evaluation. Unreadable or invalid files move to _quarantine/ with a reason file.")
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing: LandingResource):
    import polars as pl

    from stock_platform.lib.calendar import is_trading_day
    from stock_platform.lib.events import EventFileError, event_days, read_events

    fresh, cursor = new_files(landing.list(), context.cursor)
    batches: dict[dt.date, list[LandedFile]] = {}
    quarantined = []
    for file in fresh:
        try:
            events = read_events(file.key, landing.read(file.key))
            days = sorted(set(event_days(events).to_list()))
            closed = [d for d in days if not is_trading_day(d)]
            if closed:
                raise EventFileError(f"{file.key}: events on non-trading day(s) {', '.join(map(str, closed))}")
        except (EventFileError, pl.exceptions.PolarsError) as exc:
            quarantined.append(landing.quarantine(file.key, str(exc)))
            context.log.warning(f"quarantined {file.key}: {exc}")
            continue
        for day in days:
            batches.setdefault(day, []).append(file)
    context.update_cursor(cursor)
    requests = landing_run_requests(batches)
    if not requests:
        reason = f"no new landing files ({len(quarantined)} quarantined)" if quarantined else "no new landing files"
        return dg.SkipReason(reason)
    return requests


MARKET_OPEN, MARKET_CLOSE = dt.time(9, 30), dt.time(16, 0)


def poll_live_quotes(now: dt.datetime, source, tickers: list[str], landing: LandingResource) -> str | None:
    """During a session, land the source's latest bar of each ticker as one event file; return its key.

    Outside market hours (or on a non-trading day) nothing is polled and None is returned. The events are
    stamped `now`, so a later poll of the same session supersedes an earlier one in the snapshot."""
    from zoneinfo import ZoneInfo

    import polars as pl

    from stock_platform.lib.calendar import is_trading_day
    from stock_platform.lib.events import bars_to_events, encode

    local = now.astimezone(ZoneInfo(EXCHANGE_TIMEZONE))
    if not (is_trading_day(local.date()) and MARKET_OPEN <= local.time() <= MARKET_CLOSE):
        return None
    bars = source.fetch(tickers, local.date(), local.date()).prices
    if bars.is_empty():
        return None
    stamp = now.astimezone(dt.UTC).replace(tzinfo=None)
    events = bars_to_events(bars, f"live-{source.source}").with_columns(
        ts=pl.lit(stamp).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        event_id=pl.format("{}-{}", "event_id", pl.lit(f"{local:%H%M%S}")))
    key = f"live/{local:%Y/%m/%d}/{local:%H%M%S}.jsonl"
    landing.write(key, encode(events, "jsonl"))
    return key


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Off by default. During NYSE hours, polls the price source for the latest bars every "
           "minute and lands them as quote events; landing_zone_sensor takes it from there.")
def live_quotes_sensor(context: dg.SensorEvaluationContext, source: PriceSourceResource,
                       universe: UniverseResource, landing: LandingResource):
    key = poll_live_quotes(dt.datetime.now(dt.UTC), source, universe.tickers, landing)
    return dg.SkipReason(f"landed {key}" if key else "market closed: nothing polled")


jobs = [daily_assets_job, weekly_retrain_job]
schedules = [daily_close, weekly_retrain_schedule]
sensors = [landing_zone_sensor, live_quotes_sensor]
