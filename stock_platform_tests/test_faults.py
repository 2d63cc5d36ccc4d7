"""Faults injected into real components (no mocks): what a failed run leaves, and that a rerun converges."""

from __future__ import annotations

import threading
import time

import dagster as dg
import polars as pl
import pytest

from stock_platform.assets.ingestion import prices
from stock_platform.assets.lake import SNAPSHOT_TABLE, price_snapshots
from stock_platform.automation import daily_assets_job
from stock_platform.checks import prices_schema_check
from stock_platform.resources.landing import LandingResource
from stock_platform.resources.warehouse import WarehouseResource
from stock_platform_tests.helpers import failure_message, run_range


@pytest.mark.postgres
def test_a_warehouse_connection_killed_mid_write_fails_the_run_and_a_rerun_heals_it(
        fresh_postgres_db, demo_source, lake, universe, instance, tmp_path):
    """The lake commits first, then the warehouse mirror (one transaction: COPY into a temporary table, then
    INSERT .. ON CONFLICT). Another session holds a SHARE lock on `stock_price`, so the writer has copied its
    rows and waits to insert them; its backend is then terminated (pg_terminate_backend). The run fails with
    Postgres's message, the warehouse keeps none of the day, and a rerun makes it equal to the lake."""
    from sqlalchemy import create_engine, text

    url = fresh_postgres_db.render_as_string(hide_password=False)
    warehouse = WarehouseResource(url=url)
    defs = dg.Definitions(
        assets=[prices, price_snapshots], asset_checks=[prices_schema_check], jobs=[daily_assets_job],
        resources={"source": demo_source, "lake": lake, "universe": universe, "warehouse": warehouse,
                   "landing": LandingResource(uri=str(tmp_path / "landing"))})
    assert run_range(defs, instance, "2024-06-03", "2024-06-04").success  # creates stock_price
    before = warehouse.count("stock_price")

    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    locker = create_engine(url).connect()
    results = []
    try:
        transaction = locker.begin()
        locker.execute(text("LOCK TABLE stock_price IN SHARE MODE"))  # lets COPY into a temp table, blocks INSERT
        writer = threading.Thread(target=lambda: results.append(run_range(defs, instance, "2024-06-05", "2024-06-05")))
        writer.start()
        killed, deadline = [], time.monotonic() + 60
        with admin.connect() as conn:
            while not killed and time.monotonic() < deadline:
                killed = conn.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO %stock_price%SELECT%'")).all()
                time.sleep(0.05)
        transaction.rollback()
        writer.join(timeout=120)
    finally:
        locker.close()
        admin.dispose()
    assert killed, "the writer never reached its INSERT"
    [failed] = results
    assert not failed.success
    message = failure_message(failed)
    assert "warehouse table stock_price: mirroring 2024-06-05..2024-06-05 failed after the lake committed" in message
    assert "OperationalError: server closed the connection unexpectedly" in message and "re-run these partitions" in message
    day = pl.col("date") == pl.date(2024, 6, 5)
    assert lake.snapshot(SNAPSHOT_TABLE).filter(day).height == len(universe.tickers)  # the lake committed
    assert warehouse.count("stock_price") == before  # the warehouse kept none of the day (one transaction)

    rerun = run_range(defs, instance, "2024-06-05", "2024-06-05")
    assert rerun.success, failure_message(rerun)
    mirrored = warehouse.read("stock_price").sort("ticker", "date")
    snapshot = lake.snapshot(SNAPSHOT_TABLE).sort("ticker", "date")
    assert mirrored.select("ticker", "date", "close").equals(snapshot.select("ticker", "date", "close"))
