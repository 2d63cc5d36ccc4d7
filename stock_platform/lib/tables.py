"""The catalog of tables: every lake table's name and keys, and the warehouse's mirrors (no Dagster here).

Assets, checks, resources, serving and the CLI name tables from here only, so nothing above the Dagster layer
imports an asset module to learn a table's name. The columns' types, meanings and rules are the contracts in
`lib/contracts.py`.
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
CHECKS_TABLE = "check_results"  # every evaluation of a blocking check, appended; dated by `partition_end`
LEDGER_TABLE = "landing_ledger"  # landed file versions taken or quarantined
LEDGER_KEYS = ("key", "version", "day")  # day: the trading day a run applies the file to ("" when quarantined)
# Every lake table, in the order the daily run writes them (what the `lake_maintenance` job maintains), and those
# named like the asset that writes them (their maintenance shows on the asset's page).
LAKE_TABLES = (PRICES_TABLE, QUARANTINE_TABLE, SNAPSHOT_TABLE, FEATURES_TABLE, MODELS_TABLE, MODEL_SELECTION_TABLE,
               PREDICTIONS_TABLE, EVALUATION_TABLE, CHECKS_TABLE, LEDGER_TABLE)
ASSET_TABLES = (PRICES_TABLE, SNAPSHOT_TABLE, FEATURES_TABLE, PREDICTIONS_TABLE, EVALUATION_TABLE)

# ------------------------------------------------------------------------------------------- warehouse
WAREHOUSE_PRICES = "stock_price"  # mirrors price_snapshots' live rows
WAREHOUSE_PREDICTIONS = "stock_pred"
WAREHOUSE_EVALUATION = "stock_pred_eval"


def predictions_schema() -> dict:
    """The predictions table's polars schema (what `predictions` writes, its check and the API read). A function:
    polars is imported when used (loading the Dagster definitions imports no polars)."""
    from stock_platform.lib.contracts import PREDICTIONS, polars_schema

    return polars_schema(PREDICTIONS)
