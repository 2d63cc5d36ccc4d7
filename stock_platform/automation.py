"""Jobs, schedules and sensors.

Downstream refreshes use explicit asset selections, not declarative automation: one run covers a day (or a
backfill range) from prices to its evaluation in dependency order, with its blocking checks, as a single
run whose run key makes a repeated tick harmless. Automation conditions would start one run per asset and
partition, and judge staleness per partition, which for a 10-year backfill means thousands of runs.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from stock_platform.alerts import without_freshness
from stock_platform.lib.calendar import EXCHANGE_TIMEZONE
from stock_platform.lib.families import FAMILIES
from stock_platform.partitions import CADENCE_TAG, DAILY_CADENCE, trading_days
from stock_platform.resources import PriceSourceResource, UniverseResource
from stock_platform.resources.landing import LandedFile, LandingResource, validate_key
from stock_platform.lake import Maintenance
from stock_platform.resources.lake import LakeResource

# At most this many new file versions are read per sensor tick (a backlog is taken over the next ticks).
MAX_FILES_PER_TICK = 500
# A landing file is read whole by the sensor and by its run: a larger one is quarantined unread (quote events
# for a day of 500 tickers take a few MB in any of the formats).
MAX_FILE_BYTES = 64 * 1024**2
# What a tick lists: the keys after the greatest one an earlier tick listed (the sensor's cursor; S3's
# StartAfter), so files keyed in time order (quotes/DAY/...) cost a tick only themselves, and every
# FULL_LISTING_EVERY ticks (about a minute) the whole zone, which finds a file keyed before that (a late file
# for an earlier day, a rewritten file's new version). The cursor bounds listing work only: the ledger decides.
FULL_LISTING_EVERY = 12

# Every asset tagged with the daily cadence (partitions.DAILY), with its checks, in dependency order:
# what a daily run or a backfill of trading days executes.
daily_assets_job = dg.define_asset_job(
    "daily_assets",
    selection=without_freshness(dg.AssetSelection.tag(CADENCE_TAG, DAILY_CADENCE)),
    description="Daily trading-day partitions of the daily assets (with their blocking checks).",
)

weekly_retrain_job = dg.define_asset_job(
    "weekly_retrain",
    selection=without_freshness(dg.AssetSelection.assets(*(f"{family}_model" for family in FAMILIES), "tuned_model")),
    description="Tune, train and register every model family's candidate of a finished week (Ray Tune + MLflow), "
    "then gate them against the naive random walk and the champion (`tuned_model`).",
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


def landing_run_request(day: dt.date, identities: list[tuple[str, str]]) -> dg.RunRequest:
    """The run of `day`'s partition that applies the file versions `(key, version)`; its run key names exactly
    those versions, so asking again (a re-evaluated tick, a replayed identical file) never starts a second run."""
    import hashlib

    keys = sorted({key for key, _ in identities})
    digest = hashlib.sha1("\n".join(sorted(f"{k}@{v}" for k, v in identities)).encode()).hexdigest()[:16]
    config = {"config": {"landing_files": keys}}
    return dg.RunRequest(
        run_key=f"landing:{day}:{digest}", partition_key=day.isoformat(),
        run_config={"ops": {"prices": config, "price_snapshots": config}},
        tags={"stock_platform/trigger": "landing_zone_sensor", "stock_platform/landing_files": str(len(keys))})


def pending_requests(ledger, instance: dg.DagsterInstance, sensor_name: str):
    """The ledger's `requested` rows, split by whether a run with their key exists yet: the run requests to
    ask again (a tick that recorded them may have ended before its runs were created), and the rows now
    `submitted`, with their run's id."""
    import polars as pl

    from stock_platform.resources.landing import REQUESTED, SUBMITTED

    again, submitted = [], []
    for (run_key, day), rows in ledger.filter(pl.col("status") == REQUESTED).group_by("run_key", "day"):
        runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/sensor_name": sensor_name,
                                                            "dagster/run_key": run_key}), limit=1)
        if runs:
            submitted.append(rows.with_columns(status=pl.lit(SUBMITTED), run_id=pl.lit(runs[0].dagster_run.run_id)))
        else:
            again.append(landing_run_request(dt.date.fromisoformat(day), list(zip(rows["key"], rows["version"]))))
    return again, submitted


# The sensor daemon evaluates sensors every 5 s at most (its fixed loop); a minimum interval of 5 s would skip
# every other loop whose start drifts a few ms early (measured: waits of up to 10 s), so allow every loop.
@dg.sensor(job=daily_assets_job, minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.STOPPED,
           description="New quote-event file versions in the landing zone (STOCK_PLATFORM_LANDING_URI), by the "
           "landing ledger -> one run per trading day they touch: upsert into prices/price_snapshots, refresh "
           "features, predictions and the evaluation. Unreadable or invalid files move to _quarantine/ with a "
           "reason file.")
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing: LandingResource, lake: LakeResource):
    """A file version is new when the ledger does not hold it: no clock is compared, so a file stamped in the
    future, copied in with an old mtime, or listed out of order is taken like any other, and a rewritten file
    (a new version) again; one keyed before the greatest key listed so far waits for the next full listing
    (FULL_LISTING_EVERY ticks). The ledger rows are recorded before the tick returns its run requests; a tick that
    ends between the two leaves `requested` rows whose runs do not exist, and the next tick asks for them again
    with the same run keys (Dagster starts one run per key): each file version is applied once."""
    import json

    import polars as pl

    from stock_platform.lib.calendar import is_trading_day
    from stock_platform.lib.events import EventFileError, event_days, read_events
    from stock_platform.resources.landing import QUARANTINED, REQUESTED, read_ledger, record_in_ledger

    first_day, last_day = (dt.date.fromisoformat(k) for k in (trading_days.get_first_partition_key(),
                                                               trading_days.get_last_partition_key()))
    listing = json.loads(context.cursor) if context.cursor else {"after": "", "tick": 0}
    listed = landing.list(after="" if listing["tick"] % FULL_LISTING_EVERY == 0 else listing["after"])
    ledger = read_ledger(lake)
    taken = set(zip(ledger["key"], ledger["version"]))
    fresh = [f for f in listed if (f.key, f.version) not in taken]
    backlog = max(0, len(fresh) - MAX_FILES_PER_TICK)
    context.update_cursor(json.dumps(  # with a backlog, the next tick lists the whole zone again
        {"after": listing["after"], "tick": 0} if backlog else
        {"after": max([listing["after"], *(f.key for f in listed)]), "tick": listing["tick"] + 1}))
    batches: dict[dt.date, list[LandedFile]] = {}
    rows = []
    now = dt.datetime.now(dt.UTC)

    def row(file: LandedFile, day: str, status: str, reason: str | None = None) -> dict:
        return {"key": file.key, "version": file.version, "day": day, "size": file.size, "modified": file.modified,
                "status": status, "run_key": None, "run_id": None, "reason": reason, "recorded_at": now}

    for file in fresh[:MAX_FILES_PER_TICK]:
        try:
            validate_key(file.key)
        except ValueError as exc:  # no safe path to move it to: recorded, left where it is, never read
            rows.append(row(file, "", QUARANTINED, f"{exc}; left in place"))
            context.log.warning(f"not taken: {exc}")
            continue
        try:
            if file.size > MAX_FILE_BYTES:
                raise EventFileError(f"{file.key}: {file.size:,} bytes is more than a landing file may hold "
                                     f"({MAX_FILE_BYTES:,}); split it")
            events = read_events(file.key, landing.read(file.key))
            days = sorted(set(event_days(events).to_list()))
            closed = [d for d in days if not is_trading_day(d)]
            if closed:
                raise EventFileError(f"{file.key}: events on non-trading day(s) {', '.join(map(str, closed))}")
            outside = [d for d in days if not first_day <= d <= last_day]
            if outside:  # no partition to run: in the future, or before STOCK_PLATFORM_START
                raise EventFileError(f"{file.key}: events on day(s) {', '.join(map(str, outside))} outside the "
                                     f"trading_days partitions ({first_day} .. {last_day})")
        except (EventFileError, pl.exceptions.PolarsError) as exc:
            landing.quarantine(file.key, str(exc))
            rows.append(row(file, "", QUARANTINED, str(exc)))
            context.log.warning(f"quarantined {file.key}: {exc}")
            continue
        for day in days:
            batches.setdefault(day, []).append(file)
    requests = []
    for day, files in sorted(batches.items()):
        request = landing_run_request(day, [(f.key, f.version) for f in files])
        requests.append(request)
        rows += [row(f, day.isoformat(), REQUESTED) | {"run_key": request.run_key} for f in files]
    again, submitted = pending_requests(ledger, context.instance, context.sensor_name)
    new_rows = pl.DataFrame(rows, schema=ledger.schema) if rows else ledger.clear()
    record_in_ledger(lake, pl.concat([new_rows, *(s.with_columns(recorded_at=pl.lit(now)) for s in submitted)],
                                     how="vertical_relaxed"))
    requests += again
    if not requests:
        quarantined = sum(r["status"] == QUARANTINED for r in rows)
        return dg.SkipReason(f"no new landing files ({quarantined} quarantined)" if quarantined
                             else "no new landing files")
    if backlog:
        context.log.info(f"{backlog} more new file version(s) wait for the next ticks")
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


@dg.op(description="Compact, checkpoint and vacuum every lake table (migrating tables of the earlier per-date "
       "layout): files and bytes before/after per table, as observations of the tables' assets.")
def maintain_lake(context, lake: LakeResource):
    from stock_platform.lib.markdown import markdown_table
    from stock_platform.lib.tables import ASSET_TABLES, LAKE_TABLES

    done = []
    for name in filter(lake.exists, LAKE_TABLES):
        m = lake.maintain(name)
        done.append(m)
        context.log.info(f"{name}: {m.files_before} -> {m.files_after} files, {m.bytes_before:,} -> "
                         f"{m.bytes_after:,} bytes, {m.files_vacuumed} vacuumed, {m.seconds} s")
        if name in ASSET_TABLES:
            context.log_event(dg.AssetObservation(asset_key=name, metadata={
                "table_files": m.files_after, "table_size_bytes": m.bytes_after, "files_compacted": m.files_compacted,
                "files_vacuumed": m.files_vacuumed, "maintenance_seconds": m.seconds}))
    columns = list(Maintenance.__dataclass_fields__)
    return dg.Output(None, metadata={
        "tables": dg.MetadataValue.md(markdown_table([[getattr(m, c) for c in columns] for m in done], columns)),
        "files_before": sum(m.files_before for m in done), "files_after": sum(m.files_after for m in done),
        "bytes_before": sum(m.bytes_before for m in done), "bytes_after": sum(m.bytes_after for m in done)})


@dg.job(description="Hudi's compaction and cleaner for the lake: OPTIMIZE, checkpoint and VACUUM within the "
        "retention that time travel and change-feed consumers need; safe beside the daily runs.")
def lake_maintenance():
    maintain_lake()


@dg.schedule(cron_schedule="0 3 * * 0", execution_timezone=EXCHANGE_TIMEZONE, job=lake_maintenance,
             name="weekly_lake_maintenance", description="Sunday 03:00 New York (no session, no retraining): "
             "compact the week's daily files, checkpoint, vacuum.")
def weekly_lake_maintenance(context: dg.ScheduleEvaluationContext):
    from zoneinfo import ZoneInfo

    day = context.scheduled_execution_time.astimezone(ZoneInfo(EXCHANGE_TIMEZONE)).date()
    return dg.RunRequest(run_key=f"lake_maintenance:{day}")


jobs = [daily_assets_job, weekly_retrain_job, lake_maintenance]
schedules = [daily_close, weekly_retrain_schedule, weekly_lake_maintenance]
sensors = [landing_zone_sensor, live_quotes_sensor]
