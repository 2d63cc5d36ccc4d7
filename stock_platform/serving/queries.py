"""What the API and the dashboard show, read from the lake (never recomputed): one place for both.

Every function takes the `Lake` (`stock_platform.lake`) and returns polars frames or plain dicts; tickers and dates are
validated by the callers (the API's parameters, the dashboard's widgets).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING

import polars as pl

from stock_platform.lib.tables import CHECKS_TABLE as CHECKS
from stock_platform.lib.tables import EVALUATION_TABLE as EVALUATION
from stock_platform.lib.tables import FEATURES_TABLE as FEATURES
from stock_platform.lib.tables import PREDICTIONS_TABLE as PREDICTIONS
from stock_platform.lib.tables import QUARANTINE_TABLE as QUARANTINE
from stock_platform.lib.tables import SNAPSHOT_TABLE as SNAPSHOTS
from stock_platform.lib.tables import predictions_schema
from stock_platform.lake import Lake

if TYPE_CHECKING:
    from collections.abc import Sequence

FEED_TABLES = (SNAPSHOTS, PREDICTIONS)  # what /ws/updates streams from the change data feed
CHART_INDICATORS = ("sma_50", "sma_200", "bb_mid", "bb_upper", "bb_lower", "rsi_14", "macd", "macd_signal",
                    "macd_hist")


def clean(value):
    """JSON-ready: dates as ISO strings, NaN/inf as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def records(df: pl.DataFrame) -> list[dict]:
    return [{k: clean(v) for k, v in row.items()} for row in df.iter_rows(named=True)]


BAR_COLUMNS = ("date", "open", "high", "low", "close", "adj_close", "volume", "source", "ingested_at")
SERVED_PREDICTION_COLUMNS = ("date", "target_date", "pred_return", "pred_close", "naive_close", "actual_close",
                             "model_name", "model_version", "created_at")


def empty_bars() -> pl.DataFrame:
    from stock_platform.lib.prices import PRICES_SCHEMA

    return pl.DataFrame(schema=PRICES_SCHEMA).select("ticker", *BAR_COLUMNS)


def ticker_index(live: pl.DataFrame) -> pl.DataFrame:
    """Each ticker of the live snapshot rows with its first and last date and its number of sessions."""
    return (live.group_by("ticker").agg(first_date=pl.col("date").min(), last_date=pl.col("date").max(),
                                        sessions=pl.len().cast(pl.UInt32))
            .sort("ticker"))


def tickers(lake: Lake, *, version: int | None = None) -> pl.DataFrame:
    """Each ticker in the snapshot table (as of `version`) with its first and last date and its number of sessions."""
    if version is None and not lake.exists(SNAPSHOTS):
        return ticker_index(empty_bars())
    return ticker_index(lake.scan(SNAPSHOTS, version=version).filter(~pl.col("_is_deleted"))
                        .select("ticker", "date").collect())


def prices(lake: Lake, ticker: str, start: dt.date | None, end: dt.date | None, *,
           version: int | None = None) -> pl.DataFrame:
    """The ticker's current (or `version`'s) daily bars (soft-deleted rows left out), oldest first."""
    return lake.snapshot(SNAPSHOTS, as_of=version, start=start, end=end, tickers=[ticker]).select(*BAR_COLUMNS)


def indicators(lake: Lake, ticker: str, start: dt.date | None, end: dt.date | None) -> pl.DataFrame:
    """The chart's indicators for the ticker, as `features` stored them."""
    if not lake.exists(FEATURES):
        return pl.DataFrame(schema={"date": pl.Date} | dict.fromkeys(CHART_INDICATORS, pl.Float64))
    return lake.read(FEATURES, start, end, tickers=[ticker], columns=["ticker", "date", *CHART_INDICATORS]).drop(
        "ticker")


def empty_predictions() -> pl.DataFrame:
    return with_closes(pl.DataFrame(schema=predictions_schema()), None).drop("ticker")


def with_closes(preds: pl.DataFrame, closes: pl.DataFrame | None) -> pl.DataFrame:
    """Forecasts beside the naive forecast (the close of the day each was made) and, once known, the actual
    close of its target day; `closes` holds (ticker, date, close)."""
    if closes is None:
        closes = pl.DataFrame(schema={"ticker": pl.String, "date": pl.Date, "close": pl.Float64})
    elif preds.height:  # only the days the forecasts name
        closes = closes.filter(pl.col("date").is_between(preds["date"].min(), preds["target_date"].max()))
    return (preds.join(closes.rename({"close": "naive_close"}), on=["ticker", "date"], how="left")
            .join(closes.rename({"date": "target_date", "close": "actual_close"}), on=["ticker", "target_date"],
                  how="left")
            .select("ticker", *SERVED_PREDICTION_COLUMNS))


def predictions(lake: Lake, ticker: str, start: dt.date | None, end: dt.date | None, *,
                version: int | None = None, snapshot_version: int | None = None) -> pl.DataFrame:
    """The ticker's forecasts made on days in [start, end] (as of the tables' versions, default the latest):
    predicted close, the naive forecast and, once known, the actual close of the target day."""
    if version is None and not lake.exists(PREDICTIONS):
        return empty_predictions()
    preds = lake.read(PREDICTIONS, start, end, tickers=[ticker], version=version)
    closes = None if preds.is_empty() else lake.snapshot(
        SNAPSHOTS, as_of=snapshot_version, start=preds["date"].min(), end=preds["target_date"].max(),
        tickers=[ticker]).select("ticker", "date", "close")
    return with_closes(preds, closes).sort("date").drop("ticker")


def no_evaluation(window: int) -> dict:
    """The evaluation's answer before the table exists."""
    return {"window_days": window, "first_target_date": None, "last_target_date": None, "metrics": {"rows": 0}}


def evaluation(lake: Lake, window: int, tickers: Sequence[str] | None = None, *,
               table: pl.DataFrame | None = None, version: int | None = None) -> dict:
    """Aggregate metrics of the evaluated forecasts over the last `window` target days (model vs naive), of the
    table as of `version` (default the latest) or of `table` when given (the API's read model holds it)."""
    from stock_platform.lib.evaluation import summarize

    if table is None and (version is None and not lake.exists(EVALUATION)):
        return no_evaluation(window)
    scan = table.lazy() if table is not None else lake.scan(EVALUATION, version=version)
    if tickers:
        scan = scan.filter(pl.col("ticker").is_in(list(tickers)))
    days = scan.select(pl.col("target_date").unique().sort(descending=True).head(window)).collect()["target_date"]
    chosen = scan.filter(pl.col("target_date").is_in(days.implode())).collect()
    return {"window_days": window, "first_target_date": clean(days.min()), "last_target_date": clean(days.max()),
            "metrics": {k: clean(v) for k, v in summarize(chosen).items()}}


def quality(lake: Lake, start: dt.date | None, end: dt.date | None) -> pl.DataFrame:
    """Per partition day: stored rows, quarantined rows and the DQ score (stored / (stored + quarantined))."""
    if not lake.exists(SNAPSHOTS):
        return pl.DataFrame(schema={"date": pl.Date, "rows": pl.UInt32, "quarantined": pl.UInt32,
                                    "dq_score": pl.Float64})
    rows = lake.snapshot(SNAPSHOTS, start=start, end=end).group_by("date").agg(rows=pl.len())
    bad = (lake.read(QUARANTINE, start, end, date_column="partition_date").group_by("partition_date")
           .agg(quarantined=pl.len()).rename({"partition_date": "date"}) if lake.exists(QUARANTINE)
           else pl.DataFrame(schema={"date": pl.Date, "quarantined": pl.UInt32}))
    return (rows.join(bad, on="date", how="full", coalesce=True)
            .with_columns(pl.col("rows", "quarantined").fill_null(0))
            .with_columns(dq_score=pl.col("rows") / (pl.col("rows") + pl.col("quarantined")))
            .sort("date"))


def check_results(lake: Lake, limit: int = 20) -> pl.DataFrame:
    """The latest evaluations of each blocking check (at most `limit` each, newest first), from the lake's
    `check_results` table (the checks append every evaluation there: no Dagster instance to open)."""
    if not lake.exists(CHECKS):
        return pl.DataFrame(schema={"check": pl.String, "status": pl.String, "partition": pl.String,
                                    "at": pl.Datetime("us", "UTC"), "details": pl.String})
    return (lake.scan(CHECKS).sort("evaluated_at", descending=True).group_by("check", maintain_order=True)
            .head(limit)
            .select("check", status=pl.when("passed").then(pl.lit("SUCCEEDED")).otherwise(pl.lit("FAILED")),
                    partition=pl.when(pl.col("partition_start") == pl.col("partition_end"))
                    .then(pl.col("partition_end").cast(pl.String))
                    .otherwise(pl.format("{}..{}", "partition_start", "partition_end")),
                    at="evaluated_at", details="details")
            .sort("at", descending=True)
            .collect())


def versions(lake: Lake) -> dict[str, int]:
    """The current version of each table the update feed streams (-1: not created yet)."""
    return {name: lake.table(name).version() if lake.exists(name) else -1 for name in FEED_TABLES}


def changes(lake: Lake, table: str, since: int, until: int) -> pl.DataFrame:
    """Rows inserted or updated in `table` after version `since` up to `until` (deletes of a replaced
    prediction day and update pre-images left out), with their commit version."""
    if until <= since:
        return pl.DataFrame()
    feed = lake.changes(table, since, until)
    if feed.is_empty():
        return feed
    return (feed.filter(pl.col("_change_type").is_in(["insert", "update_postimage"]))
            .drop("_change_type", "_commit_timestamp").rename({"_commit_version": "version"}))
