"""`price_snapshots` through real Dagster runs: upsert metadata, idempotent reruns, corrections, warehouse."""

import datetime as dt

import dagster as dg
import polars as pl
import pytest

from stock_platform.assets.ingestion import prices

from stock_platform.assets.lake import price_snapshots
from stock_platform.automation import daily_assets_job
from stock_platform.checks import prices_schema_check
from stock_platform.lib.tables import PRICES_TABLE, SNAPSHOT_TABLE
from stock_platform.resources.landing import LandingResource
from stock_platform.resources.warehouse import WarehouseResource
from stock_platform_tests.helpers import failure_message, materialization_metadata, run_range

snapshots_only = dg.define_asset_job("snapshots_only", selection=dg.AssetSelection.assets(price_snapshots))


@pytest.fixture
def lake(any_lake):
    """Every test here runs on a local lake and on S3 (moto server)."""
    return any_lake


@pytest.fixture
def defs(demo_source, lake, universe, tmp_path):
    return dg.Definitions(
        assets=[prices, price_snapshots], asset_checks=[prices_schema_check], jobs=[daily_assets_job, snapshots_only],
        resources={"source": demo_source, "lake": lake, "universe": universe,
                   "landing": LandingResource(uri=str(tmp_path / "landing")),
                   "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}")},
    )


def test_snapshots_upsert_rerun_correct_and_mirror(defs, instance, lake):
    warehouse = defs.resources["warehouse"]
    first = run_range(defs, instance, "2024-05-01", "2024-05-10")
    assert first.success
    meta = materialization_metadata(first, "price_snapshots")
    assert meta["rows_inserted"] == 24 and meta["rows_updated"] == 0 and meta["committed"] is True
    assert meta["warehouse_rows_upserted"] == 24 and meta["table_size_bytes"] > 0
    assert lake.snapshot(SNAPSHOT_TABLE).height == lake.read(PRICES_TABLE).height == 24
    version = meta["table_version"]

    # re-materialize a partition three times: no new rows, no new table version
    for _ in range(3):
        again = run_range(defs, instance, "2024-05-06", "2024-05-06", job="snapshots_only")
        meta = materialization_metadata(again, "price_snapshots")
        assert meta["committed"] is False and meta["table_version"] == version
        assert meta["rows_unchanged"] == 3 and meta["rows_inserted"] == 0
        assert meta["files_scanned"] <= 3, "the merge must prune to the partition's files"
    assert lake.snapshot(SNAPSHOT_TABLE).height == 24 and warehouse.count("stock_price") == 24

    # a vendor correction lands in prices with a newer ingested_at: the snapshot updates, history keeps the old
    day = dt.date(2024, 5, 7)
    fixed = lake.read(PRICES_TABLE, day, day).with_columns(
        close=pl.col("close") * 1.01, high=pl.col("high") * 1.01,
        ingested_at=pl.col("ingested_at") + pl.duration(hours=12))
    lake.replace_dates(PRICES_TABLE, fixed, day, day)
    corrected = run_range(defs, instance, "2024-05-07", "2024-05-07", job="snapshots_only")
    meta = materialization_metadata(corrected, "price_snapshots")
    assert meta["rows_updated"] == 3 and meta["table_version"] == version + 1
    now = lake.snapshot(SNAPSHOT_TABLE, start=day, end=day).sort("ticker")["close"]
    then = lake.snapshot(SNAPSHOT_TABLE, start=day, end=day, as_of=version).sort("ticker")["close"]
    assert now.to_list() == pytest.approx((then * 1.01).to_list())
    mirrored = warehouse.read("stock_price", where={"date": day}).sort("ticker")["close"]
    assert mirrored.to_list() == pytest.approx(now.to_list())
    changed = lake.changed_keys(SNAPSHOT_TABLE, version)
    assert changed.height == 3 and set(changed["date"]) == {day}


def test_snapshots_without_prices_fail_clearly(defs, instance):
    result = run_range(defs, instance, "2024-05-01", "2024-05-02", job="snapshots_only")
    assert not result.success
    assert "no prices stored for 2024-05-01..2024-05-02: materialize `prices` for these partitions first" in \
        failure_message(result)
