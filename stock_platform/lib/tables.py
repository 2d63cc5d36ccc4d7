"""The catalog of tables: every lake table's name and keys, and the warehouse's mirrors (no Dagster here).

Assets, checks, resources, serving and the CLI name tables from here only, so nothing above the Dagster layer
imports an asset module to learn a table's name. Schemas live beside the logic that builds the rows
(`lib/prices.py`, `lib/indicators.py`, ...); the predictions' shape, read by the asset, its check and the API,
is here.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------------------------ lake
PRICES_TABLE = "prices"  # validated daily bars, replaced by date range
QUARANTINE_TABLE = "prices_quarantine"  # rejected records with their reason; dated by `partition_date`
SNAPSHOT_TABLE = "price_snapshots"  # the Hudi-like upsert table
SNAPSHOT_KEYS = ("ticker", "date")
PRECOMBINE = "ingested_at"  # the newest record of a key wins
FEATURES_TABLE = "features"
MODELS_TABLE = "model_versions"  # every registered model's serving copy
MODELS_KEYS = ("model_name", "version")
MODEL_SELECTION_TABLE = "model_selection"  # the gate's decision table of each week; dated by `train_end`
PREDICTIONS_TABLE = "predictions"
EVALUATION_TABLE = "prediction_evaluation"  # dated by `target_date`
LEDGER_TABLE = "landing_ledger"  # landed file versions taken or quarantined
LEDGER_KEYS = ("key", "version", "day")  # day: the trading day a run applies the file to ("" when quarantined)
# Every lake table, in the order the daily run writes them (what the `lake_maintenance` job maintains), and those
# named like the asset that writes them (their maintenance shows on the asset's page).
LAKE_TABLES = (PRICES_TABLE, QUARANTINE_TABLE, SNAPSHOT_TABLE, FEATURES_TABLE, MODELS_TABLE, MODEL_SELECTION_TABLE,
               PREDICTIONS_TABLE, EVALUATION_TABLE, LEDGER_TABLE)
ASSET_TABLES = (PRICES_TABLE, SNAPSHOT_TABLE, FEATURES_TABLE, PREDICTIONS_TABLE, EVALUATION_TABLE)

# The prices table's columns (`lib/prices.py` types them) and what each means: the Dagster UI's column schema
# shows the descriptions, and price_snapshots' column lineage maps each to its own column of prices.
PRICE_DESCRIPTIONS = {
    "ticker": "the listing's symbol (upper case)",
    "date": "the NYSE session (America/New_York)",
    "open": "as traded, in the share basis of its own day", "high": "as traded", "low": "as traded",
    "close": "as traded (the platform adjusts for splits and dividends itself)",
    "adj_close": "the vendor's adjusted close, kept for reference only",
    "volume": "shares traded, as reported that day",
    "dividends": "cash dividend per share going ex that day (0: none)",
    "splits": "split ratio effective that day (2.0: 2-for-1; 0: none)",
    "source": "where the row came from (demo, yfinance, files, landing)",
    "ingested_at": "when the platform received the record (UTC)",
}

# ------------------------------------------------------------------------------------------- warehouse
WAREHOUSE_PRICES = "stock_price"  # mirrors price_snapshots' live rows
WAREHOUSE_PREDICTIONS = "stock_pred"
WAREHOUSE_EVALUATION = "stock_pred_eval"



def predictions_schema() -> dict:
    """The predictions table's columns (what `predictions` writes, its check and the API read). A function:
    polars is imported when used (loading the Dagster definitions imports no polars)."""
    import polars as pl

    return {"ticker": pl.String, "date": pl.Date, "target_date": pl.Date, "pred_return": pl.Float64,
            "pred_close": pl.Float64, "model_name": pl.String, "model_version": pl.Int32,
            "created_at": pl.Datetime("us", "UTC")}
