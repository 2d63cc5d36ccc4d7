"""Stage `ml`: `features` (technical indicators, no look-ahead)."""

import dagster as dg

from stock_platform.assets.columns import column_lineage, column_schema
from stock_platform.assets.lake import price_snapshots
from stock_platform.lib.contracts import FEATURES
from stock_platform.lib.feature_set import LOOKBACK, feature_inputs
from stock_platform.lib.tables import FEATURES_TABLE, SNAPSHOT_TABLE
from stock_platform.partitions import daily_asset, partition_dates
from stock_platform.resources.lake import LakeResource

# Sessions read before a partition beyond the indicators' LOOKBACK rows: room for a few days a ticker missed.
LOOKBACK_MARGIN = 20


def lookback_start(start):
    """The first session of the window a partition starting at `start` reads."""
    import datetime as dt

    from stock_platform.lib.calendar import trading_days as sessions

    n = LOOKBACK + LOOKBACK_MARGIN
    window = sessions(start - dt.timedelta(days=n * 2), start)
    return window[-(n + 1)] if len(window) > n else window[0]


@daily_asset(
    deps=[price_snapshots],
    group_name="ml",
    kinds={"polars", "deltalake"},
    description="Technical indicators per (ticker, date) from snapshot prices adjusted by the platform's own "
    "point-in-time split/dividend factor, computed for all tickers in one polars pass. A value at date d uses only "
    "rows up to d's close (at most 1,152 of them, the EMA-200's window); each indicator is null until its window "
    "is full, and `warm` marks rows whose model inputs (the scale-free columns) are all defined.",
    metadata=column_schema(FEATURES)
    | column_lineage({"ticker": {SNAPSHOT_TABLE: ["ticker"]}, "date": {SNAPSHOT_TABLE: ["date"]}}
                     | {c: {SNAPSHOT_TABLE: inputs} for c, inputs in feature_inputs().items()}),
)
def features(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    import polars as pl

    from stock_platform.lib.indicators import compute_features, feature_columns

    dates = partition_dates(context)
    start, end = dates[0], dates[-1]
    read_from = lookback_start(start)
    history = lake.snapshot(SNAPSHOT_TABLE, start=read_from, end=end) if lake.exists(SNAPSHOT_TABLE) else None
    if history is None or history.filter(pl.col("date") >= start).is_empty():
        raise dg.Failure(f"no price snapshots for {start}..{end}: materialize `price_snapshots` first")
    table = compute_features(history, since=start).filter(pl.col("date") <= end)
    version = lake.replace_dates(FEATURES_TABLE, table, start, end)
    warm = int(table["warm"].sum())
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.height,
            "dagster/uri": lake.table_uri(FEATURES_TABLE),
            "table_version": version,
            "warm_rows": warm,
            "warm_up_rows": table.height - warm,
            "tickers": table["ticker"].n_unique(),
            "features": len(feature_columns()),
            "history_read": f"{read_from}..{end} ({history.height:,} snapshot rows)",
            "lookback_rows": LOOKBACK,
        }
    )
