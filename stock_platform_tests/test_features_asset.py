"""`features` through real Dagster runs: backfill, daily run from a lookback window, blocking check."""

import datetime as dt

import dagster as dg
import numpy as np
import polars as pl
import pytest

from stock_platform.assets.ingestion import prices
from stock_platform.assets.lake import price_snapshots
from stock_platform.assets.ml import features, lookback_start
from stock_platform.automation import daily_assets_job
from stock_platform.checks import features_schema_check, prices_schema_check
from stock_platform.lib.calendar import trading_days as sessions
from stock_platform.lib.indicators import WARM_ROWS, feature_columns
from stock_platform.lib.tables import FEATURES_TABLE
from stock_platform.resources.landing import LandingResource
from stock_platform.resources.warehouse import WarehouseResource
from stock_platform_tests.helpers import failure_message, materialization_metadata, run_range

features_only = dg.define_asset_job("features_only", selection=dg.AssetSelection.assets(features))
check_only = dg.define_asset_job("features_check", selection=dg.AssetSelection.checks(features_schema_check))


@pytest.fixture
def defs(demo_source, lake, universe, tmp_path):
    return dg.Definitions(
        assets=[prices, price_snapshots, features], asset_checks=[prices_schema_check, features_schema_check],
        jobs=[daily_assets_job, features_only, check_only],
        resources={"source": demo_source, "lake": lake, "universe": universe,
                   "landing": LandingResource(uri=str(tmp_path / "landing")),
                   "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}")},
    )


def test_backfill_then_daily_run_agree_and_the_check_blocks_bad_rows(defs, instance, lake):
    result = run_range(defs, instance, "2023-01-03", "2024-03-28")
    assert result.success, failure_message(result)
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == "features_schema"]
    assert evaluation.passed
    meta = materialization_metadata(result, "features")
    stored = lake.read(FEATURES_TABLE)
    n = len(sessions(dt.date(2023, 1, 3), dt.date(2024, 3, 28)))
    assert stored.height == meta["dagster/row_count"] == 3 * n
    assert stored.columns == ["ticker", "date", *feature_columns(), "warm"]
    # history starts 2023-01-03: the first WARM_ROWS - 1 sessions of each ticker are warm-up
    assert meta["warm_up_rows"] == 3 * (WARM_ROWS - 1) and meta["warm_rows"] == 3 * (n - WARM_ROWS + 1)
    backfilled = lake.read(FEATURES_TABLE, dt.date(2024, 3, 25), dt.date(2024, 3, 28))

    # a daily run of the last days reads only its lookback window and gives the same values
    daily = run_range(defs, instance, "2024-03-25", "2024-03-28", job="features_only")
    assert daily.success
    window = materialization_metadata(daily, "features")["history_read"]
    assert window.startswith(f"{lookback_start(dt.date(2024, 3, 25))}..2024-03-28")
    again = lake.read(FEATURES_TABLE, dt.date(2024, 3, 25), dt.date(2024, 3, 28))
    assert again.select("ticker", "date", "warm").equals(backfilled.select("ticker", "date", "warm"))
    for col in feature_columns():
        np.testing.assert_allclose(again[col].to_numpy(), backfilled[col].to_numpy(), rtol=1e-9, atol=1e-9)
    assert lake.read(FEATURES_TABLE).height == stored.height  # replaced, not appended

    # stored rows that break the contract fail the blocking check with ERROR
    day = dt.date(2024, 3, 27)
    bad = lake.read(FEATURES_TABLE, day, day).with_columns(
        rsi_14=pl.when(pl.col("ticker") == "MSFT").then(120.0).otherwise(pl.col("rsi_14")),
        dist_sma_10=pl.when(pl.col("ticker") == "XOM").then(float("inf")).otherwise(pl.col("dist_sma_10")))
    lake.replace_dates(FEATURES_TABLE, bad, day, day)
    checked = run_range(defs, instance, "2024-03-25", "2024-03-28", job="features_check")
    [evaluation] = checked.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["failed_rows"].value == 2
    cases = evaluation.metadata["failure_cases"].value
    assert "rsi_14" in cases and "dist_sma_10" in cases

    # every evaluation is in the lake's check_results table too (what the dashboard shows), newest last
    from stock_platform.lib.tables import CHECKS_TABLE

    recorded = lake.read(CHECKS_TABLE, date_column="partition_end").filter(
        pl.col("check") == "features:features_schema").sort("evaluated_at")
    assert recorded.select("passed", "partition_start", "partition_end", "run_id").rows() == [
        (True, dt.date(2023, 1, 3), dt.date(2024, 3, 28), result.run_id),
        (True, dt.date(2024, 3, 25), dt.date(2024, 3, 28), daily.run_id),
        (False, dt.date(2024, 3, 25), dt.date(2024, 3, 28), checked.run_id)]
    assert recorded["severity"][-1] == "ERROR" and '"failed_rows": 2' in recorded["details"][-1]


def test_features_without_snapshots_fail_clearly(defs, instance):
    result = run_range(defs, instance, "2024-03-25", "2024-03-28", job="features_only")
    assert not result.success
    assert "no price snapshots for 2024-03-25..2024-03-28: materialize `price_snapshots` first" in failure_message(result)
