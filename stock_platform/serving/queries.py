"""What the API and the dashboard show, read from the lake (never recomputed): one place for both.

Every function takes the `LakeResource` and returns polars frames or plain dicts; tickers and dates are
validated by the callers (the API's parameters, the dashboard's widgets).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING

import polars as pl

from stock_platform.lib.tables import EVALUATION_TABLE as EVALUATION
from stock_platform.lib.tables import FEATURES_TABLE as FEATURES
from stock_platform.lib.tables import PREDICTIONS_TABLE as PREDICTIONS
from stock_platform.lib.tables import QUARANTINE_TABLE as QUARANTINE
from stock_platform.lib.tables import SNAPSHOT_TABLE as SNAPSHOTS
from stock_platform.lib.tables import predictions_schema
from stock_platform.resources.lake import LakeResource

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


def tickers(lake: LakeResource) -> pl.DataFrame:
    """Each ticker in the snapshot table with its first and last date and its number of sessions."""
    if not lake.exists(SNAPSHOTS):
        return pl.DataFrame(schema={"ticker": pl.String, "first_date": pl.Date, "last_date": pl.Date,
                                    "sessions": pl.UInt32})
    return (lake.scan(SNAPSHOTS).filter(~pl.col("_is_deleted"))
            .group_by("ticker").agg(first_date=pl.col("date").min(), last_date=pl.col("date").max(),
                                    sessions=pl.len())
            .sort("ticker").collect())


def prices(lake: LakeResource, ticker: str, start: dt.date | None, end: dt.date | None) -> pl.DataFrame:
    """The ticker's current daily bars (soft-deleted rows left out), oldest first."""
    return (lake.snapshot(SNAPSHOTS, start=start, end=end, tickers=[ticker])
            .select("date", "open", "high", "low", "close", "adj_close", "volume", "source", "ingested_at"))


def indicators(lake: LakeResource, ticker: str, start: dt.date | None, end: dt.date | None) -> pl.DataFrame:
    """The chart's indicators for the ticker, as `features` stored them."""
    if not lake.exists(FEATURES):
        return pl.DataFrame(schema={"date": pl.Date} | dict.fromkeys(CHART_INDICATORS, pl.Float64))
    return lake.read(FEATURES, start, end, tickers=[ticker], columns=["ticker", "date", *CHART_INDICATORS]).drop(
        "ticker")


def predictions(lake: LakeResource, ticker: str, start: dt.date | None, end: dt.date | None) -> pl.DataFrame:
    """The ticker's forecasts made on days in [start, end]: predicted close, the naive forecast (the close of
    the day it was made) and, once known, the actual close of the target day."""
    if not lake.exists(PREDICTIONS):
        preds = pl.DataFrame(schema=predictions_schema())
    else:
        preds = lake.read(PREDICTIONS, start, end, tickers=[ticker])
    if preds.is_empty():
        closes = pl.DataFrame(schema={"date": pl.Date, "close": pl.Float64})
    else:
        closes = lake.snapshot(SNAPSHOTS, start=preds["date"].min(), end=preds["target_date"].max(),
                               tickers=[ticker]).select("date", "close")
    return (preds.join(closes.rename({"close": "naive_close"}), on="date", how="left")
            .join(closes.rename({"date": "target_date", "close": "actual_close"}), on="target_date", how="left")
            .select("date", "target_date", "pred_return", "pred_close", "naive_close", "actual_close", "model_name",
                    "model_version", "created_at")
            .sort("date"))


def evaluation(lake: LakeResource, window: int, tickers: Sequence[str] | None = None) -> dict:
    """Aggregate metrics of the evaluated forecasts over the last `window` target days (model vs naive)."""
    from stock_platform.lib.evaluation import summarize

    if not lake.exists(EVALUATION):
        return {"window_days": window, "first_target_date": None, "last_target_date": None, "metrics": {"rows": 0}}
    scan = lake.scan(EVALUATION)
    if tickers:
        scan = scan.filter(pl.col("ticker").is_in(list(tickers)))
    days = scan.select(pl.col("target_date").unique().sort(descending=True).head(window)).collect()["target_date"]
    table = scan.filter(pl.col("target_date").is_in(days.implode())).collect()
    return {"window_days": window, "first_target_date": clean(days.min()), "last_target_date": clean(days.max()),
            "metrics": {k: clean(v) for k, v in summarize(table).items()}}


def quality(lake: LakeResource, start: dt.date | None, end: dt.date | None) -> pl.DataFrame:
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


def versions(lake: LakeResource) -> dict[str, int]:
    """The current version of each table the update feed streams (-1: not created yet)."""
    return {name: lake.table(name).version() if lake.exists(name) else -1 for name in FEED_TABLES}


def changes(lake: LakeResource, table: str, since: int, until: int) -> pl.DataFrame:
    """Rows inserted or updated in `table` after version `since` up to `until` (deletes of a replaced
    prediction day and update pre-images left out), with their commit version."""
    if until <= since:
        return pl.DataFrame()
    feed = lake.changes(table, since, until)
    if feed.is_empty():
        return feed
    return (feed.filter(pl.col("_change_type").is_in(["insert", "update_postimage"]))
            .drop("_change_type", "_commit_timestamp").rename({"_commit_version": "version"}))
