"""Stage `ingestion`: the `prices` asset (validated daily bars) and its quarantine."""


import datetime as dt

import dagster as dg

from stock_platform.assets.columns import column_schema
from stock_platform.lib.contracts import PRICES
from stock_platform.lib.tables import PRICES_TABLE, QUARANTINE_TABLE
from stock_platform.partitions import daily_asset, partition_dates
from stock_platform.resources import PriceSourceResource, UniverseResource
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.landing import LandingResource


class LandingConfig(dg.Config):
    """Set by `landing_zone_sensor`: apply these landed quote-event files to the partitions' rows instead of
    fetching the day from the source (empty: a normal fetch)."""

    landing_files: list[str] = []


def landed_events(landing: LandingResource, keys: list[str], dates: list[dt.date]):
    """The events of the named landing files that fall on `dates` (files were validated by the sensor)."""
    import polars as pl

    from stock_platform.lib.events import event_days, read_events

    events = pl.concat([read_events(key, landing.read(key)) for key in keys])
    return events.filter(event_days(events).is_in(dates))


def _landed_prices(lake: LakeResource, landing: LandingResource, keys: list[str], dates: list[dt.date]):
    """The stored rows of `dates` with the landed events applied (as a raw frame for validation), and the
    number of events."""
    from stock_platform.lib.events import apply_events, deletes, events_to_bars, with_adj_close
    from stock_platform.lib.prices import empty_prices

    import polars as pl

    start, end = dates[0], dates[-1]
    events = landed_events(landing, keys, dates)
    # the range's rows, and a few weeks before it for each ticker's last adjustment factor: one read
    history = (lake.read(PRICES_TABLE, start - dt.timedelta(days=15), end) if lake.exists(PRICES_TABLE)
               else empty_prices())
    current = history.filter(pl.col("date") >= start)
    bars = with_adj_close(events_to_bars(events), history)
    return apply_events(current, bars, deletes(events)), events.height


def quarantine_frame(parse_rejects, schema_rejects, *, start: dt.date, end: dt.date, source: str, run_id: str):
    """Rejected rows in the quarantine table's shape; each is filed under a date of the run's range."""
    import polars as pl

    now = dt.datetime.now(dt.UTC)
    return pl.concat([
        parse_rejects.with_columns(stage=pl.lit("parse")),
        schema_rejects.with_columns(stage=pl.lit("schema")),
    ]).with_columns(
        partition_date=pl.when(pl.col("date").is_between(start, end)).then(pl.col("date")).otherwise(pl.lit(start)),
        source=pl.lit(source),
        run_id=pl.lit(run_id),
        quarantined_at=pl.lit(now).cast(pl.Datetime("us", "UTC")),
    )


def fetch_or_retry(context: dg.AssetExecutionContext, source: PriceSourceResource, tickers, start: dt.date,
                   end: dt.date):
    """The source's bars; an outage that outlasted the adapter's retries asks Dagster to retry the step (the
    Dagster way for one kind of failure: a `RetryPolicy` would retry bad data and missing files too), after
    exponential backoff with jitter, `source.step_retries` times; then the step fails with the outage's error."""
    from stock_platform.resources.sources import SourceError, backoff_seconds

    try:
        return source.fetch(tickers, start, end)
    except SourceError as exc:
        if not exc.transient:
            raise
        if context.retry_number >= source.step_retries:
            raise dg.Failure(f"{exc} (an outage: {context.retry_number + 1} attempts of the step, each with the "
                             f"adapter's own retries; the next run tries again)", allow_retries=False) from exc
        wait = backoff_seconds(source.step_retry_seconds, context.retry_number)
        context.log.warning(f"{exc}; attempt {context.retry_number + 1} of {source.step_retries + 1}, "
                            f"next in {wait:.0f} s")
        raise dg.RetryRequested(max_retries=source.step_retries, seconds_to_wait=wait) from exc


def _top_reasons(quarantine, n: int = 5) -> str:
    counts = quarantine.group_by("reason").len().sort("len", descending=True).head(n)
    return "; ".join(f"{r['len']}x {r['reason']}" for r in counts.iter_rows(named=True)) or "-"


@daily_asset(
    group_name="ingestion",
    kinds={"polars", "deltalake"},
    description="Validated daily OHLCV bars for the universe. Rows that break the prices contract go to the "
    "`prices_quarantine` table with their reason; a multi-day backfill is one vectorised run.",
    metadata=column_schema(PRICES),
)
def prices(context: dg.AssetExecutionContext, config: LandingConfig, source: PriceSourceResource,
           lake: LakeResource, universe: UniverseResource, landing: LandingResource) -> dg.MaterializeResult:
    import polars as pl

    from stock_platform.lib.prices import empty_prices, empty_rejects, keep_accepted
    from stock_platform.lib.quality import dq_score
    from stock_platform.resources.sources import FetchResult
    from stock_platform.schemas import prices_schema, split_valid

    dates = partition_dates(context)
    if not dates:
        raise dg.Failure(f"partition range {context.partition_key_range} holds no trading day")
    start, end = dates[0], dates[-1]
    origin = source.source
    if config.landing_files:  # near-real-time: the day's stored rows updated by landed quote events
        rows, n_events = _landed_prices(lake, landing, config.landing_files, dates)
        fetched = FetchResult(prices=rows, rejects=empty_rejects(), missing_tickers=[])
        origin = f"landing ({len(config.landing_files)} file(s), {n_events} event(s))"
    else:
        fetched = fetch_or_retry(context, source, universe.tickers, start, end)
    valid, schema_rejects, _ = split_valid(prices_schema(universe.tickers, dates), fetched.prices)
    quarantine = quarantine_frame(fetched.rejects, schema_rejects, start=start, end=end,
                                  source=origin, run_id=context.run.run_id)
    if config.landing_files and lake.exists(QUARANTINE_TABLE):  # keep what the day's earlier runs quarantined
        earlier = lake.read(QUARANTINE_TABLE, start, end, date_column="partition_date")
        # once per rejected record: replaying a file adds nothing (the earliest run's row stays)
        quarantine = (pl.concat([earlier, quarantine.select(earlier.columns)], how="vertical_relaxed")
                      .unique(subset=["partition_date", "ticker", "date", "stage", "reason", "record"],
                              keep="first", maintain_order=True))
    # Replaced for the range even when empty: a clean rerun clears an earlier run's quarantine.
    lake.replace_dates(QUARANTINE_TABLE, quarantine, start, end, date_column="partition_date")

    if valid.is_empty():
        if quarantine.is_empty():
            raise dg.Failure(f"source {source.source!r} returned no rows for {', '.join(universe.tickers)} "
                             f"between {start} and {end}")
        raise dg.Failure(
            f"all {quarantine.height} rows for {start}..{end} failed validation and were quarantined in "
            f"{lake.table_uri(QUARANTINE_TABLE)}; reasons: {_top_reasons(quarantine)}",
            metadata={"quarantined_rows": quarantine.height},
        )
    # a rejected update never displaces the row accepted before it (nor does a ticker the source left out)
    stored = lake.read(PRICES_TABLE, start, end) if lake.exists(PRICES_TABLE) else empty_prices()
    valid, kept = keep_accepted(valid, pl.concat([fetched.rejects, schema_rejects]), stored, fetched.missing_tickers)
    version = lake.replace_dates(PRICES_TABLE, valid, start, end)

    expected = len(dates) * len(universe.tickers)
    if quarantine.height:
        context.log.warning(f"quarantined {quarantine.height} row(s): {_top_reasons(quarantine)}")
    if kept.height:
        context.log.warning(f"kept {kept.height} accepted row(s) that this run's data did not validly replace")
    if fetched.missing_tickers:
        context.log.warning(f"no data for ticker(s): {', '.join(fetched.missing_tickers)}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": valid.height,
            "dagster/uri": lake.table_uri(PRICES_TABLE),
            "table_version": version,
            "date_range": f"{start}..{end}",
            "trading_days": len(dates),
            "tickers": valid["ticker"].n_unique(),
            "coverage": dg.FloatMetadataValue(round(valid.height / expected, 4)),
            "quarantined_rows": quarantine.height,
            "kept_accepted_rows": kept.height,
            "dq_score": dg.FloatMetadataValue(round(dq_score(valid.height, quarantine.height), 4)),
            "missing_tickers": ", ".join(fetched.missing_tickers) or "-",
            "source": origin,
        }
    )
