"""SQL over the lake (resources/sql.py, `stock-platform sql`): DuckDB's delta extension from PyPI reading the real
Delta tables, on a local lake and on S3 (the moto server); answers checked against polars and the warehouse."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import duckdb
import polars as pl
import pytest

from stock_platform.lib.demo_market import generate
from stock_platform.lib.indicators import compute_features
from stock_platform.lib.tables import FEATURES_TABLE, PRECOMBINE, SNAPSHOT_TABLE, WAREHOUSE_PRICES
from stock_platform.resources.lake import LakeResource
from stock_platform.resources.sql import SQLError, connect, query
from stock_platform.resources.warehouse import WarehouseResource
from stock_platform_tests.conftest import user_env
from stock_platform_tests.helpers import ensure_snapshot_table

START, END = dt.date(2024, 1, 2), dt.date(2024, 4, 30)
TICKERS = ["AAPL", "MSFT", "NVDA", "JPM"]


def fill(lake: LakeResource) -> pl.DataFrame:
    """Snapshots (one row soft-deleted) and features of a small demo market; the live snapshot rows."""
    prices = generate(TICKERS, START, END)
    ensure_snapshot_table(lake)
    lake.upsert(SNAPSHOT_TABLE, prices.with_columns(_is_deleted=pl.lit(False)), keys=["ticker", "date"],
                order_by=PRECOMBINE)
    gone = prices.filter((pl.col("ticker") == "JPM") & (pl.col("date") == dt.date(2024, 3, 1))).with_columns(
        _is_deleted=pl.lit(True), **{PRECOMBINE: pl.col(PRECOMBINE) + dt.timedelta(hours=1)})
    lake.upsert(SNAPSHOT_TABLE, gone, keys=["ticker", "date"], order_by=PRECOMBINE)
    lake.replace_dates(FEATURES_TABLE, compute_features(prices), START, END)
    return lake.snapshot(SNAPSHOT_TABLE)


def test_counts_and_aggregates_equal_polars_and_the_warehouse(any_lake, tmp_path):
    live = fill(any_lake)
    warehouse = WarehouseResource(url=f"sqlite:///{tmp_path}/warehouse.db")
    warehouse.sync_prices(any_lake.snapshot(SNAPSHOT_TABLE, include_deleted=True))  # as price_snapshots mirrors
    # the view shows the live rows, as the warehouse mirror does: the soft-deleted row is hidden
    [(count,)] = query(any_lake, "SELECT count(*) FROM price_snapshots").rows()
    assert count == live.height == warehouse.count(WAREHOUSE_PRICES) == len(TICKERS) * 83 - 1
    got = query(any_lake, "SELECT ticker, avg(close) AS mean_close, max(volume) AS top FROM price_snapshots "
                          "GROUP BY ticker ORDER BY ticker")
    want = live.group_by("ticker").agg(mean_close=pl.col("close").mean(), top=pl.col("volume").max()).sort("ticker")
    assert got["ticker"].to_list() == want["ticker"].to_list()
    assert got["mean_close"].to_list() == pytest.approx(want["mean_close"].to_list(), rel=1e-12)
    assert got["top"].to_list() == want["top"].to_list()
    stored = warehouse.read(WAREHOUSE_PRICES).group_by("ticker").agg(pl.col("close").mean()).sort("ticker")
    assert got["mean_close"].to_list() == pytest.approx(stored["close"].to_list(), rel=1e-9)
    # a join across tables; the year partition columns are not part of any view
    joined = query(any_lake, "SELECT p.ticker, count(*) AS n FROM price_snapshots p JOIN features f USING (ticker, date) "
                             "WHERE f.warm IS NOT NULL GROUP BY 1 ORDER BY 1")
    assert joined["n"].to_list() == [83, 82, 83, 83]  # AAPL, JPM (one row deleted), MSFT, NVDA
    columns = query(any_lake, "SELECT * FROM features LIMIT 1").columns
    assert "date_year" not in columns and "rsi_14" in columns


def test_writes_are_refused_and_a_bad_query_names_the_problem(any_lake):
    fill(any_lake)
    for statement in ("DELETE FROM price_snapshots", "CREATE TABLE x AS SELECT 1", "COPY prices TO 'out.csv'",
                      "ATTACH 'other.db'", "SET enable_external_access = true"):
        with pytest.raises(SQLError, match="read-only: only SELECT runs over the lake"):
            query(any_lake, statement)
    with pytest.raises(SQLError, match="one statement at a time, got 2"):
        query(any_lake, "SELECT 1; DROP VIEW features")
    with pytest.raises(SQLError, match="cannot parse the query"):
        query(any_lake, "SELEC ticker FROM prices")
    with pytest.raises(SQLError, match="Referenced column \"no_such\" not found|no_such"):
        query(any_lake, "SELECT no_such FROM features")
    # the notebook's connection is sandboxed too: DuckDB itself refuses files outside the lake
    con = connect(any_lake)
    with pytest.raises(duckdb.Error, match="disabled by configuration|locked"):
        con.sql("COPY (SELECT 1) TO '/tmp/stock_platform_sql_escape.csv'")
    with pytest.raises(duckdb.Error, match="locked"):
        con.sql("SET enable_external_access = true")
    assert con.sql("SELECT count(DISTINCT ticker) FROM features").fetchone() == (len(TICKERS),)


def test_the_sql_command_prints_a_result_and_a_clear_error(tmp_path):
    fill(LakeResource(uri=str(tmp_path / "lake")))

    def sql(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-W", "ignore", "-m", "stock_platform.cli", "sql", "--home",
                               str(tmp_path), *args], capture_output=True, text=True, env=user_env(), timeout=300)

    ok = sql("SELECT ticker, count(*) AS n FROM price_snapshots GROUP BY 1 ORDER BY 1", "--csv")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == ["ticker,n", "AAPL,83", "JPM,82", "MSFT,83", "NVDA,83"]
    bad = sql("SELECT * FROM nowhere")
    assert bad.returncode == 1 and bad.stderr.startswith("error: sql: Catalog Error: Table with name nowhere")
    assert "Traceback" not in bad.stderr
    refused = sql("DROP VIEW prices")
    assert refused.returncode == 1 and "read-only: only SELECT runs over the lake, not DROP" in refused.stderr
