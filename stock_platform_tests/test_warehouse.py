"""The warehouse table `stock_price` on SQLite and on the real Postgres server: idempotent upserts."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from stock_platform.resources.warehouse import WarehouseResource
from stock_platform_tests.lake_writer import batch


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse(request, tmp_path) -> WarehouseResource:
    if request.param == "sqlite":
        return WarehouseResource(url=f"sqlite:///{tmp_path / 'warehouse.db'}")
    url = request.getfixturevalue("fresh_postgres_db")
    return WarehouseResource(url=url.render_as_string(hide_password=False))


def snapshot_rows(**kw) -> pl.DataFrame:
    return batch(3, dt.date(2024, 3, 4), dt.date(2024, 3, 8), **kw)


def test_schema_is_created_on_first_use_and_reruns_keep_the_count(warehouse):
    rows = snapshot_rows()
    assert warehouse.sync_prices(rows) == {"upserted": 15, "deleted": 0}
    assert warehouse.count("stock_price") == 15
    for _ in range(2):
        warehouse.sync_prices(rows)
    assert warehouse.count("stock_price") == 15
    stored = warehouse.read("stock_price")
    assert stored.columns == ["date", "ticker", "open", "high", "low", "close", "adj_close", "volume", "dividends",
                              "stock_splits", "ingested_at"]
    expected = rows.sort("date", "ticker")
    assert stored["close"].to_list() == pytest.approx(expected["close"].to_list())
    assert stored["volume"].to_list() == expected["volume"].to_list()
    assert stored["ingested_at"].to_list() == expected["ingested_at"].to_list()


def test_a_correction_updates_and_a_soft_delete_removes(warehouse):
    warehouse.sync_prices(snapshot_rows())
    fixed = snapshot_rows(hours_later=1, close_bump=0.75).filter(pl.col("date") == dt.date(2024, 3, 5))
    warehouse.sync_prices(fixed)
    row = warehouse.read("stock_price", where={"ticker": "T001", "date": dt.date(2024, 3, 5)})
    assert row["close"][0] == pytest.approx(fixed.filter(pl.col("ticker") == "T001")["close"][0])
    assert warehouse.count("stock_price") == 15

    gone = fixed.filter(pl.col("ticker") == "T002").with_columns(_is_deleted=pl.lit(True))
    assert warehouse.sync_prices(gone) == {"upserted": 0, "deleted": 1}
    assert warehouse.count("stock_price") == 14
    assert warehouse.sync_prices(gone) == {"upserted": 0, "deleted": 0}  # deleting again is a no-op


def test_hostile_ticker_is_refused_before_it_reaches_sql(warehouse):
    warehouse.sync_prices(snapshot_rows())
    rows = snapshot_rows().head(2).with_columns(ticker=pl.lit("X'); DROP TABLE stock_price;--"))
    with pytest.raises(ValueError, match=r"invalid ticker\(s\) \[\"X'\); DROP TABLE stock_price;--\"\]"):
        warehouse.upsert("stock_price", rows.rename({"splits": "stock_splits"}))
    assert warehouse.count("stock_price") == 15


def test_unknown_table_is_refused(warehouse):
    with pytest.raises(KeyError, match="unknown warehouse table 'users'"):
        warehouse.count("users")
