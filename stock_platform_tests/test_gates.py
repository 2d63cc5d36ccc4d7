"""Blocking across runs: a partition whose latest blocking check failed, in an earlier run, is refused.

(Excluding instead of refusing, for readers of a window, is tested where they are: `predictions` in
test_forecast.py, `tuned_model` in test_tuned_model.py; the demo re-running such partitions in test_cli.py.)
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import polars as pl
import pytest

from stock_platform.assets.ingestion import prices

from stock_platform.assets.lake import price_snapshots
from stock_platform.automation import daily_assets_job
from stock_platform.checks import prices_schema_check
from stock_platform.gates import PRICES_CHECK, check_status
from stock_platform.lib.tables import PRICES_TABLE
from stock_platform.resources.landing import LandingResource
from stock_platform.resources.warehouse import WarehouseResource
from stock_platform_tests.helpers import failure_message, run_range

pytestmark = pytest.mark.slow
FIRST, BAD, LAST = "2024-03-18", "2024-03-20", "2024-03-22"
KEYS = ["2024-03-18", "2024-03-19", "2024-03-20", "2024-03-21", "2024-03-22"]


@pytest.fixture
def defs(demo_source, lake, universe, tmp_path):
    return dg.Definitions(
        assets=[prices, price_snapshots], asset_checks=[prices_schema_check],
        jobs=[daily_assets_job,
              dg.define_asset_job("snapshots_only", selection=dg.AssetSelection.assets(price_snapshots)),
              dg.define_asset_job("prices_check", selection=dg.AssetSelection.checks(prices_schema_check))],
        resources={"source": demo_source, "lake": lake, "universe": universe,
                   "landing": LandingResource(uri=str(tmp_path / "landing")),
                   "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}")},
    )


def test_a_later_run_refuses_a_partition_whose_check_failed_in_an_earlier_run(defs, instance, lake):
    assert run_range(defs, instance, FIRST, LAST).success
    assert check_status(instance, PRICES_CHECK, KEYS).failed == []  # one range evaluation, resolved per day
    assert check_status(instance, PRICES_CHECK, ["2024-03-25"]).unchecked == ["2024-03-25"]

    # an operator's edit breaks one stored row; the check, run over the whole range, fails and names that day
    day = dt.date.fromisoformat(BAD)
    broken = lake.read(PRICES_TABLE, day, day).with_columns(
        high=pl.when(pl.col("ticker") == "MSFT").then(pl.col("low") / 2).otherwise(pl.col("high")))
    lake.replace_dates(PRICES_TABLE, broken, day, day)
    checked = run_range(defs, instance, FIRST, LAST, job="prices_check")
    [evaluation] = checked.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["failed_partitions"].value == [BAD]
    assert check_status(instance, PRICES_CHECK, KEYS).failed == [BAD]

    # a later run of the downstream asset alone: Dagster does not block it, the reader refuses, naming it all
    refused = run_range(defs, instance, FIRST, LAST, job="snapshots_only")
    assert not refused.success
    assert ("`price_snapshots` refuses 1 partition(s) of `prices` whose latest blocking check `prices_schema` "
            f"failed: {BAD}") in failure_message(refused)
    # the days around it are fine
    assert run_range(defs, instance, "2024-03-21", LAST, job="snapshots_only").success

    # re-materializing the day (its check runs with it) clears it
    fixed = run_range(defs, instance, BAD, BAD)
    assert fixed.success, failure_message(fixed)
    assert check_status(instance, PRICES_CHECK, KEYS).failed == []
    assert run_range(defs, instance, FIRST, LAST, job="snapshots_only").success
