"""The `prices` asset through real Dagster runs on a real (SQLite) instance and real Delta tables."""


import datetime as dt
import tempfile

import dagster as dg
import polars as pl
import pytest

from stock_platform.assets.ingestion import prices

from stock_platform.automation import daily_assets_job
from stock_platform.checks import prices_schema_check
from stock_platform.lib.tables import PRICES_TABLE, QUARANTINE_TABLE
from stock_platform.partitions import trading_days
from stock_platform.resources import PriceSourceResource
from stock_platform.resources.landing import LandingResource
from stock_platform_tests.helpers import failure_message, materialization_metadata, run_range as run

CHECK_KEY = dg.AssetCheckKey(dg.AssetKey("prices"), "prices_schema")


@dg.asset(partitions_def=trading_days, deps=[prices], backfill_policy=dg.BackfillPolicy.single_run())
def downstream(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Stands in for the next stage: it must not run when the blocking check fails with ERROR."""
    return dg.MaterializeResult()


verify_job = dg.define_asset_job(
    "verify", selection=dg.AssetSelection.checks(prices_schema_check) | dg.AssetSelection.assets(downstream)
)
everything_job = dg.define_asset_job("everything", selection=dg.AssetSelection.assets(prices, downstream))


def make_defs(source, lake, universe) -> dg.Definitions:
    return dg.Definitions(
        assets=[prices, downstream], asset_checks=[prices_schema_check],
        jobs=[daily_assets_job, verify_job, everything_job],
        resources={"source": source, "lake": lake, "universe": universe,
                   "landing": LandingResource(uri=tempfile.mkdtemp(prefix="landing_"))},
    )


def check_evaluations(result):
    return [e for e in result.get_asset_check_evaluations() if e.check_name == "prices_schema"]


def test_two_year_backfill_is_one_run_and_reruns_are_idempotent(instance, demo_source, lake, universe):
    defs = make_defs(demo_source, lake, universe)
    keys = trading_days.get_partition_keys_in_range(dg.PartitionKeyRange("2023-01-03", "2024-12-31"))
    assert len(keys) == 502

    result = run(defs, instance, keys[0], keys[-1])
    assert result.success
    assert len(instance.get_runs()) == 1, "a multi-year backfill is one run"
    assert instance.get_materialized_partitions(dg.AssetKey("prices")) == set(keys)
    [evaluation] = check_evaluations(result)
    assert evaluation.passed
    assert evaluation.metadata["rows_checked"].value == 502 * 3
    assert evaluation.metadata["quarantined_rows"].value == 0

    first = lake.read(PRICES_TABLE)
    assert first.height == 502 * 3
    assert first.select(pl.struct("ticker", "date").is_unique().all()).item()
    meta = materialization_metadata(result, "prices")
    assert meta["dagster/row_count"] == 502 * 3 and meta["dq_score"] == 1.0

    # a month inside the range again, then one day: identical table, no duplicates
    assert run(defs, instance, "2024-02-01", "2024-02-29").success
    assert lake.read(PRICES_TABLE).equals(first)
    assert run(defs, instance, "2024-06-14", "2024-06-14").success
    assert lake.read(PRICES_TABLE).equals(first)
    assert len(instance.get_runs()) == 3


def _csv(path, rows: list[tuple]) -> None:
    lines = ["Date,Open,High,Low,Close,Adj Close,Volume"] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")


GOOD_ROWS = [("2024-01-02", 10, 11, 9, 10.5, 10.4, 100), ("2024-01-03", 10, 11, 9, 10.5, 10.4, 100),
             ("2024-01-04", 10, 11, 9, 10.5, 10.4, 100), ("2024-01-05", 10, 11, 9, 10.5, 10.4, 100)]


@pytest.fixture
def files_dir(tmp_path):
    d = tmp_path / "files"
    d.mkdir()
    _csv(d / "MSFT.csv", GOOD_ROWS)
    _csv(d / "XOM.csv", GOOD_ROWS)
    _csv(d / "AAPL.csv", [GOOD_ROWS[0], ("2024-01-03", -10, 11, 9, 10.5, 10.4, 100),
                          ("2024-01-04", "abc", 11, 9, 10.5, 10.4, 100), GOOD_ROWS[3]])
    return d


def test_bad_rows_are_quarantined_and_the_check_warns_without_blocking(instance, lake, universe, files_dir):
    defs = make_defs(PriceSourceResource(source="files", files_dir=str(files_dir)), lake, universe)
    result = run(defs, instance, "2024-01-02", "2024-01-05", job="everything")
    assert result.success
    stored = lake.read(PRICES_TABLE)
    assert stored.height == 10  # 12 rows, 2 quarantined, every valid row kept
    quarantine = lake.read(QUARANTINE_TABLE, date_column="partition_date").sort("date")
    assert quarantine["reason"].to_list() == ["open: price must be > 0 (value: -10.0); low > min(open, close)",
                                              "open='abc' is not a number"]
    assert quarantine["stage"].to_list() == ["schema", "parse"]
    assert set(quarantine["run_id"]) == {result.run_id}

    [evaluation] = check_evaluations(result)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["quarantined_rows"].value == 2
    assert evaluation.metadata["dq_score"].value == pytest.approx(10 / 12, abs=1e-4)
    assert evaluation.metadata["min_partition_dq_score"].value == pytest.approx(2 / 3, abs=1e-4)
    # WARN does not block: the stored rows are valid, so the next stage ran
    assert instance.get_materialized_partitions(dg.AssetKey("downstream")) == {
        "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"}

    # rerun: the quarantine is replaced, not appended to
    assert run(defs, instance, "2024-01-02", "2024-01-05").success
    assert lake.read(QUARANTINE_TABLE, date_column="partition_date").height == 2


def test_partition_with_only_bad_rows_fails_clearly_and_keeps_earlier_data(instance, lake, universe, files_dir):
    defs = make_defs(PriceSourceResource(source="files", files_dir=str(files_dir)), lake, universe)
    assert run(defs, instance, "2024-01-05", "2024-01-05").success
    before = lake.read(PRICES_TABLE)
    for name in ("AAPL", "MSFT", "XOM"):
        _csv(files_dir / f"{name}.csv", [("2024-01-05", 10, 8, 9, 10.5, 10.4, 100)])  # high < low
    result = run(defs, instance, "2024-01-05", "2024-01-05")
    assert not result.success
    message = failure_message(result)
    assert "all 3 rows for 2024-01-05..2024-01-05 failed validation and were quarantined" in message
    assert "high < max(open, close)" in message
    assert lake.read(PRICES_TABLE).equals(before), "a failed run leaves the table as it was"


def test_a_bad_refetch_never_displaces_an_accepted_row(instance, lake, universe, files_dir):
    """A re-fetched bar that breaks the contract is quarantined and the row accepted before it stays; a ticker
    the source no longer delivers keeps its rows too (an outage is not a deletion)."""
    defs = make_defs(PriceSourceResource(source="files", files_dir=str(files_dir)), lake, universe)
    assert run(defs, instance, "2024-01-02", "2024-01-05").success
    before = lake.read(PRICES_TABLE).sort("ticker", "date")
    _csv(files_dir / "MSFT.csv", [GOOD_ROWS[0], ("2024-01-03", 10, 8, 9, 10.5, 10.4, 100), *GOOD_ROWS[2:]])  # high < low
    (files_dir / "XOM.csv").unlink()
    result = run(defs, instance, "2024-01-02", "2024-01-05")
    assert result.success, failure_message(result)
    after = lake.read(PRICES_TABLE).sort("ticker", "date")
    # the same rows and values (MSFT's other days were re-fetched from the rewritten file: a newer ingested_at)
    assert after.drop("ingested_at").equals(before.drop("ingested_at"))
    kept = (pl.col("ticker") == "XOM") | ((pl.col("ticker") == "MSFT") & (pl.col("date") == dt.date(2024, 1, 3)))
    assert after.filter(kept).equals(before.filter(kept))  # the accepted rows themselves, untouched
    quarantine = lake.read(QUARANTINE_TABLE, date_column="partition_date")
    msft = quarantine.filter(pl.col("ticker") == "MSFT")
    assert msft["date"].to_list() == [dt.date(2024, 1, 3)] and "high < max(open, close)" in msft["reason"][0]
    materialization = result.asset_materializations_for_node("prices")[0]  # one per partition, the same
    assert materialization.metadata["kept_accepted_rows"].value == 5  # MSFT's day and XOM's four
    assert materialization.metadata["missing_tickers"].value == "XOM"


def test_source_with_no_rows_for_the_range_fails_naming_it(instance, lake, universe, files_dir):
    defs = make_defs(PriceSourceResource(source="files", files_dir=str(files_dir)), lake, universe)
    result = run(defs, instance, "2024-02-01", "2024-02-02")
    assert not result.success
    assert "source 'files' returned no rows for AAPL, MSFT, XOM between 2024-02-01 and 2024-02-02" in failure_message(result)


def test_blocking_check_fails_on_bad_stored_rows_and_stops_downstream(instance, demo_source, lake, universe):
    defs = make_defs(demo_source, lake, universe)
    assert run(defs, instance, "2024-03-04", "2024-03-08").success
    # Someone writes around the asset: a negative close lands in the table.
    day = dt.date(2024, 3, 6)
    tampered = lake.read(PRICES_TABLE, day, day).with_columns(
        close=pl.when(pl.col("ticker") == "MSFT").then(-1.0).otherwise(pl.col("close")))
    lake.replace_dates(PRICES_TABLE, tampered, day, day)

    result = run(defs, instance, "2024-03-04", "2024-03-08", job="verify")
    [evaluation] = check_evaluations(result)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["failed_rows"].value == 1
    assert "price must be > 0" in evaluation.metadata["failure_cases"].value
    assert dg.AssetKey("downstream") not in {m.asset_key for m in result.get_asset_materialization_events()}
    assert instance.get_materialized_partitions(dg.AssetKey("downstream")) == set()
