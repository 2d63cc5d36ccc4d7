"""The lake's layout (tables partitioned by year, rows sorted by date), its maintenance (compaction, checkpoint,
vacuum) and the migration of tables written in the earlier one-partition-per-date layout: local and S3."""

from __future__ import annotations

import datetime as dt
import logging

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from stock_platform.assets.lake import ensure_snapshot_table
from stock_platform.lib.calendar import trading_days
from stock_platform.lib.demo_market import generate
from stock_platform.lib.tables import PRECOMBINE, PREDICTIONS_TABLE, PRICES_TABLE, SNAPSHOT_KEYS, SNAPSHOT_TABLE
from stock_platform.resources.lake import LakeResource
from stock_platform_tests.lake_writer import batch, predictions
from stock_platform_tests.test_snapshots import _finish

TICKERS = [f"T{i:03d}" for i in range(12)]


def upsert(lake: LakeResource, rows: pl.DataFrame):
    start, end = rows["date"].min(), rows["date"].max()
    return lake.upsert(SNAPSHOT_TABLE, rows, keys=SNAPSHOT_KEYS, order_by=PRECOMBINE, prune=("date", start, end))


def bars(start: dt.date, end: dt.date) -> pl.DataFrame:
    return generate(TICKERS, start, end).with_columns(_is_deleted=pl.lit(False))


def files(lake: LakeResource, name: str) -> int:
    return lake.table(name).get_add_actions(flatten=True).num_rows


def partition_years(lake: LakeResource, name: str) -> set[int]:
    actions = pl.DataFrame(lake.table(name).get_add_actions(flatten=True))
    return set(actions["partition.date_year"].to_list())


def test_tables_are_partitioned_by_year_and_read_with_their_own_columns(any_lake):
    prices = generate(TICKERS, dt.date(2022, 11, 1), dt.date(2023, 2, 28))
    any_lake.replace_dates(PRICES_TABLE, prices, dt.date(2022, 11, 1), dt.date(2023, 2, 28))
    table = any_lake.table(PRICES_TABLE)
    assert table.metadata().partition_columns == ["date_year"]
    assert partition_years(any_lake, PRICES_TABLE) == {2022, 2023}
    assert files(any_lake, PRICES_TABLE) == 2  # one file per year, not one per date (81 sessions)
    read = any_lake.read(PRICES_TABLE)
    assert read.columns == prices.columns and read.equals(prices.sort("ticker", "date"))
    assert any_lake.scan(PRICES_TABLE).collect_schema().names() == prices.columns
    window = any_lake.read(PRICES_TABLE, dt.date(2022, 12, 28), dt.date(2023, 1, 4), tickers=["T003"])
    assert window["date"].to_list() == trading_days(dt.date(2022, 12, 28), dt.date(2023, 1, 4))

    # a rerun of the range gives the same rows; a rerun of one day rewrites only the file holding that day
    any_lake.replace_dates(PRICES_TABLE, prices, dt.date(2022, 11, 1), dt.date(2023, 2, 28))
    assert any_lake.read(PRICES_TABLE).equals(read)
    day = dt.date(2023, 1, 5)
    any_lake.replace_dates(PRICES_TABLE, prices.filter(pl.col("date") == day), day, day)
    assert any_lake.read(PRICES_TABLE).equals(read)
    [commit] = any_lake.table(PRICES_TABLE).history(1)
    assert commit["operationMetrics"]["num_removed_files"] == 1  # the 2023 file; 2022's is untouched


def test_maintenance_compacts_the_daily_files_and_keeps_time_travel_and_the_change_feed(any_lake):
    history = bars(dt.date(2023, 10, 2), dt.date(2023, 12, 29))
    ensure_snapshot_table(any_lake)
    upsert(any_lake, history)
    days = trading_days(dt.date(2024, 1, 2), dt.date(2024, 1, 16))
    for day in days:  # the daily runs: one small file each in the 2024 partition
        upsert(any_lake, bars(day, day))
    corrected = bars(days[3], days[3]).with_columns(close=pl.col("close") + 1, ingested_at=pl.col("ingested_at")
                                                    + pl.duration(hours=1))
    upsert(any_lake, corrected)
    cursor = any_lake.table(SNAPSHOT_TABLE).version() - 5
    before_correction = any_lake.table(SNAPSHOT_TABLE).version() - 1
    latest, feed = any_lake.snapshot(SNAPSHOT_TABLE), any_lake.changes(SNAPSHOT_TABLE, cursor)
    old = any_lake.snapshot(SNAPSHOT_TABLE, as_of=before_correction)
    assert files(any_lake, SNAPSHOT_TABLE) >= len(days)

    done = any_lake.maintain(SNAPSHOT_TABLE)

    assert done.files_before >= len(days) + 1 and done.files_after == 2  # one per year
    assert done.files_compacted >= len(days) and done.files_vacuumed == 0  # nothing is older than the retention
    assert done.bytes_after < done.bytes_before and done.migrated_version is None
    assert files(any_lake, SNAPSHOT_TABLE) == 2
    assert any_lake.snapshot(SNAPSHOT_TABLE).equals(latest)
    assert any_lake.snapshot(SNAPSHOT_TABLE, as_of=before_correction).equals(old)  # time travel across compaction
    order = ["_commit_version", "ticker", "date", "_change_type"]
    assert any_lake.changes(SNAPSHOT_TABLE, cursor).sort(order).equals(feed.sort(order))  # compaction adds no change
    assert any_lake.changed_keys(SNAPSHOT_TABLE, before_correction).height == len(TICKERS)

    # a replay after compaction changes nothing and commits nothing; a new day lands beside the compacted file
    version = any_lake.table(SNAPSHOT_TABLE).version()
    assert not upsert(any_lake, corrected).committed and any_lake.table(SNAPSHOT_TABLE).version() == version
    new_day = dt.date(2024, 2, 1)
    assert upsert(any_lake, bars(new_day, new_day)).counts.inserted == len(TICKERS)
    assert any_lake.snapshot(SNAPSHOT_TABLE).height == latest.height + len(TICKERS)
    # maintenance again: the year's two files become one, the 2023 file is left alone
    assert any_lake.maintain(SNAPSHOT_TABLE).files_after == 2


# each store and each kind of write once (two runs, not four: the suite has 8 minutes; predictions on S3 is left out)
@pytest.mark.parametrize(("any_lake", "table"), [("s3", SNAPSHOT_TABLE), ("local", PREDICTIONS_TABLE)],
                         indirect=["any_lake"])
def test_maintenance_beside_a_writer_committing_all_the_time_both_land(any_lake, table, writer_process):
    """The daily run's two kinds of write (snapshot MERGE, predictions replace) commit in a loop in another process
    while maintenance compacts, checkpoints and vacuums the same table: every commit of both lands."""
    start, end = dt.date(2024, 3, 4), dt.date(2024, 3, 8)
    ensure_snapshot_table(any_lake)
    for day in trading_days(dt.date(2024, 1, 2), dt.date(2024, 1, 16)):  # daily commits: small files to compact
        upsert(any_lake, batch(8, day, day))
        if table == PREDICTIONS_TABLE:
            any_lake.replace_dates(table, predictions(batch(8, day, day + dt.timedelta(days=4)), 0).filter(
                pl.col("date") == day), day, day, change_data_feed=True)
    proc = writer_process(any_lake, start, end, tickers=8, for_seconds=5, predictions=table == PREDICTIONS_TABLE)
    rounds = []
    while proc.poll() is None:
        rounds.append(any_lake.maintain(table))
    commits = _finish(proc)["commits"]
    rounds.append(any_lake.maintain(table))
    assert len(rounds) >= 2 and commits >= 3
    assert sum(r.files_compacted for r in rounds) > 0, "maintenance must have compacted something while the writer ran"
    if table == SNAPSHOT_TABLE:  # commit k wrote close = demo close + k: the last commit's rows are the table's
        got = any_lake.snapshot(SNAPSHOT_TABLE, start=start, end=end).sort("ticker", "date")
        want = batch(8, start, end, close_bump=commits)
        assert got["close"].to_list() == want.sort("ticker", "date")["close"].to_list()
        assert any_lake.snapshot(SNAPSHOT_TABLE).height == 8 * (10 + 5)
    else:
        got = any_lake.read(PREDICTIONS_TABLE, start, end)
        assert got["model_version"].unique().to_list() == [commits] and got.height == 8 * 4
        assert any_lake.read(PREDICTIONS_TABLE).height == 8 * (10 + 4)


# ------------------------------------------------------------------------------------------------ migration
def old_layout(lake: LakeResource, name: str, commits: list[pl.DataFrame], *, date_column: str = "date",
               change_data_feed: bool = False) -> None:
    """A table as the code before the year layout wrote it: partitioned by `date_column` (one folder per day),
    the same table properties, each frame a commit replacing its dates."""
    config = {"delta.logRetentionDuration": "interval 720 hours",
              "delta.deletedFileRetentionDuration": "interval 720 hours"}
    if change_data_feed:
        config["delta.enableChangeDataFeed"] = "true"
    DeltaTable.create(lake.table_uri(name), commits[0].to_arrow().schema, partition_by=[date_column],
                      configuration=config, storage_options=lake.storage_options())
    for rows in commits:
        first, last = rows[date_column].min(), rows[date_column].max()
        write_deltalake(lake.table_uri(name), rows.to_arrow(), mode="overwrite", storage_options=lake.storage_options(),
                        predicate=f"{date_column} >= '{first}' AND {date_column} <= '{last}'")


def test_maintenance_migrates_an_old_layout_table_keeping_rows_history_and_change_feed(any_lake):
    history = bars(dt.date(2023, 12, 1), dt.date(2024, 1, 12))
    jan = history.filter(pl.col("date") >= dt.date(2024, 1, 2))
    corrected = jan.with_columns(close=pl.col("close") * 1.01)
    old_layout(any_lake, SNAPSHOT_TABLE, [history, corrected], change_data_feed=True)
    assert any_lake.table(SNAPSHOT_TABLE).metadata().partition_columns == ["date"]
    before_version = any_lake.table(SNAPSHOT_TABLE).version()
    before = any_lake.snapshot(SNAPSHOT_TABLE)
    assert before.height == history.height

    done = any_lake.maintain(SNAPSHOT_TABLE)

    assert done.migrated_version == before_version + 1
    table = any_lake.table(SNAPSHOT_TABLE)
    assert table.metadata().partition_columns == ["date_year"]
    assert table.metadata().configuration.get("delta.enableChangeDataFeed") == "true"
    assert done.files_before == 29 and done.files_after == 2  # 29 sessions -> 2 years
    assert any_lake.snapshot(SNAPSHOT_TABLE).equals(before)  # every row kept
    assert any_lake.snapshot(SNAPSHOT_TABLE, as_of=0).is_empty()
    assert any_lake.snapshot(SNAPSHOT_TABLE, as_of=before_version - 1).height == history.height  # time travel
    # a change-feed consumer whose cursor predates the migration reads on: the migration commit is left out
    feed = any_lake.changes(SNAPSHOT_TABLE, before_version - 1)
    assert set(feed["_commit_version"].to_list()) == {before_version} and "date_year" not in feed.columns
    # writes after it land in the year layout
    day = dt.date(2024, 1, 16)
    upsert(any_lake, bars(day, day))
    after = any_lake.changes(SNAPSHOT_TABLE, before_version - 1)
    assert set(after["_commit_version"].to_list()) == {before_version, done.migrated_version + 1}
    assert any_lake.snapshot(SNAPSHOT_TABLE).height == history.height + len(TICKERS)
    assert any_lake.maintain(SNAPSHOT_TABLE).migrated_version is None  # once


def test_the_first_write_migrates_an_old_layout_table_and_says_so(lake, caplog):
    prices = generate(TICKERS, dt.date(2023, 12, 1), dt.date(2024, 1, 31)).drop("ingested_at")
    old_layout(lake, PRICES_TABLE, [prices])
    day = dt.date(2024, 2, 1)
    with caplog.at_level(logging.WARNING):
        lake.replace_dates(PRICES_TABLE, generate(TICKERS, day, day).drop("ingested_at"), day, day)
    assert f"lake table {PRICES_TABLE}: migrated {prices.height} rows from one partition per date" in caplog.text
    assert lake.table(PRICES_TABLE).metadata().partition_columns == ["date_year"]
    assert lake.read(PRICES_TABLE).height == prices.height + len(TICKERS)
    assert lake.read(PRICES_TABLE, end=dt.date(2024, 1, 31)).equals(prices.sort("ticker", "date"))


def test_a_column_newer_code_writes_is_added_and_older_rows_read_null(lake):
    day1, day2 = dt.date(2024, 3, 1), dt.date(2024, 3, 4)
    rows = generate(TICKERS, day1, day1).drop("ingested_at")
    lake.replace_dates(PRICES_TABLE, rows, day1, day1)
    lake.replace_dates(PRICES_TABLE, generate(TICKERS, day2, day2).drop("ingested_at").with_columns(
        vendor=pl.lit("x")), day2, day2)
    read = lake.read(PRICES_TABLE)
    assert read.filter(pl.col("date") == day1)["vendor"].null_count() == len(TICKERS)
    assert set(read.filter(pl.col("date") == day2)["vendor"]) == {"x"}
    with pytest.raises(Exception, match="(?i)cast|schema|type"):  # a column of another type is refused
        lake.replace_dates(PRICES_TABLE, rows.with_columns(volume=pl.lit("many")), day1, day1)
    assert lake.read(PRICES_TABLE).equals(read)
