"""Faults injected into real components (no mocks): what a failed run leaves, and that a rerun converges."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from stock_platform.assets.ingestion import prices
from stock_platform.assets.lake import price_snapshots
from stock_platform.automation import daily_assets_job
from stock_platform.checks import prices_schema_check
from stock_platform.lib.tables import SNAPSHOT_TABLE
from stock_platform.resources.landing import LandingResource
from stock_platform.resources.warehouse import WarehouseResource
from stock_platform_tests.deployment import compose_dagster_env
from stock_platform_tests.helpers import failure_message, run_range


def orphans(lake, table: str) -> set[str]:
    """Data files in a local table's folder that no version of the table references: a killed writer's."""
    from deltalake import DeltaTable

    root = Path(lake.table_uri(table))
    latest = DeltaTable(str(root)).version()
    referenced = set()
    for version in range(latest + 1):
        referenced |= {uri.removeprefix("file://") for uri in DeltaTable(str(root), version=version).file_uris()}
    on_disk = {str(p) for p in root.rglob("*.parquet") if not {"_delta_log", "_change_data"} & set(p.parts)}
    return {str(Path(f).relative_to(root)) for f in on_disk - referenced}


@pytest.mark.slow
@pytest.mark.parametrize("zone", ["s3"])  # (a local lake's atomic commits: test_snapshots' killed writer)
def test_a_dagster_run_killed_mid_backfill_leaves_readable_tables_and_a_rerun_converges(tmp_path, zone, request):
    """`dagster asset materialize` of a year and a half (three date chunks per table, one commit each) is killed
    with SIGKILL after its first snapshot chunk committed: every table still loads at its last commit, holds
    no duplicate key, and the same command run again completes the range with the rows of a clean run. The
    files the killed write left unreferenced are the ones vacuum deletes once past the retention."""
    import os
    import signal
    import subprocess
    import sys

    from stock_platform.lib.calendar import trading_days
    from stock_platform.lib.demo_market import generate
    from stock_platform.resources.lake import LakeResource

    tickers = [f"T{i:03d}" for i in range(60)]
    start, end = "2022-07-01", "2023-12-29"
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCK_PLATFORM_", "DAGSTER_"))}
    env |= {"STOCK_PLATFORM_HOME": str(home), "STOCK_PLATFORM_TICKERS": ",".join(tickers),
            "STOCK_PLATFORM_START": start, "DAGSTER_HOME": str(home / "dagster"),
            # the deployment's Dagster settings (docker/compose.yaml): one planned event per asset, not per day
            **compose_dagster_env()}
    lake = LakeResource(uri=str(home / "lake"))
    if zone == "s3":
        import boto3

        endpoint = request.getfixturevalue("s3_endpoint")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="killed")
        env |= {"STOCK_PLATFORM_LAKE_URI": "s3://killed/lake", "AWS_ENDPOINT_URL": endpoint,
                **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}}
        lake = LakeResource(uri="s3://killed/lake", aws_endpoint_url=endpoint)
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m", "stock_platform.definitions",
               "--select", "prices,price_snapshots", "--partition-range", f"{start}...{end}"]

    def committed() -> int:
        try:
            return lake.table(SNAPSHOT_TABLE).version()
        except Exception:  # noqa: BLE001 - not created yet
            return -1

    log = (tmp_path / "killed-run.log").open("w")  # (a pipe nobody reads would fill up and stall the run)
    # its own process group: the kill takes the run's step processes with it, as a container's end does
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while committed() < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed-run.log").read_text()[-3000:]
    sessions = len(trading_days(dt.date.fromisoformat(start), dt.date.fromisoformat(end)))
    partial = lake.scan(SNAPSHOT_TABLE).collect()
    assert 0 < partial.height < len(tickers) * sessions  # killed between its chunk commits
    for table in ("prices", SNAPSHOT_TABLE):
        rows = lake.scan(table).collect()  # loads at its last commit
        assert rows.select("ticker", "date").is_duplicated().sum() == 0, table
    left = {table: orphans(lake, table) for table in ("prices", SNAPSHOT_TABLE)} if zone == "local" else {}

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    expected = generate(tickers, dt.date.fromisoformat(start), dt.date.fromisoformat(end)).sort("ticker", "date")
    for table in ("prices", SNAPSHOT_TABLE):
        rows = lake.scan(table).collect().sort("ticker", "date")
        assert rows.height == len(tickers) * sessions and rows.select("ticker", "date").is_duplicated().sum() == 0
        assert rows.select("ticker", "date", "close").equals(expected.select("ticker", "date", "close")), table
    for table, files in left.items():  # no commit refers to them: once older than the retention, vacuum takes them
        root = Path(lake.table_uri(table))
        month_ago = time.time() - (lake.retention_hours + 24) * 3600
        for name in files:
            os.utime(root / name, (month_ago, month_ago))
        assert files <= set(lake.vacuum(table, dry_run=True)), table
        lake.vacuum(table)
        assert not any((root / name).exists() for name in files)
        assert lake.scan(table).collect().height == len(tickers) * sessions


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
