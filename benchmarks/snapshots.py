"""Benchmark: Hudi-like daily upserts into a 10-year, 500-ticker Delta snapshot table.

Prints, measured side by side in one run on this machine:
  1. daily upsert of 500 tickers (a correction of one day: 500 updates) into the 10-year table (goal < 0.5 s)
  2. the naive alternative: rewrite the whole table with the day's corrections applied -> ratio
  3. the full 10-year backfill: the lake MERGE alone, and prices -> price_snapshots as one Dagster run
     (single-run backfill, SQLite instance as `stock-platform demo` uses; --no-dagster to skip)

    python benchmarks/snapshots.py [--tickers 500] [--years 10] [--repeats 5] [--no-dagster]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickers", type=int, default=500)
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-dagster", action="store_true", help="skip the end-to-end Dagster backfill")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_snapshots_"))
    os.environ["STOCK_PLATFORM_HOME"] = str(work)
    os.environ["STOCK_PLATFORM_TICKERS"] = ",".join(f"T{i:03d}" for i in range(args.tickers))
    end = dt.date(2024, 12, 31)
    start = dt.date(end.year - args.years + 1, 1, 2)
    os.environ["STOCK_PLATFORM_START"] = start.isoformat()

    import polars as pl
    from deltalake import write_deltalake

    from stock_platform.assets.lake import ensure_snapshot_table

    from stock_platform.lib.tables import PRECOMBINE, SNAPSHOT_KEYS, SNAPSHOT_TABLE
    from stock_platform.lib.calendar import trading_days
    from stock_platform.lib.demo_market import generate
    from stock_platform.resources.lake import LakeResource

    tickers = os.environ["STOCK_PLATFORM_TICKERS"].split(",")
    days = trading_days(start, end)
    print(f"data: {len(tickers)} tickers x {len(days)} trading days ({start}..{end}); work dir {work}")
    t_gen, bars = timed(lambda: generate(tickers, start, end))
    bars = bars.with_columns(_is_deleted=pl.lit(False))
    print(f"  demo market generated: {bars.height:,} rows in {t_gen:.1f} s")

    lake = LakeResource(uri=str(work / "lake"))
    ensure_snapshot_table(lake)
    t_backfill, result = timed(lambda: lake.upsert(SNAPSHOT_TABLE, bars, keys=SNAPSHOT_KEYS, order_by=PRECOMBINE,
                                                   prune=("date", start, end)))
    assert result.counts.inserted == bars.height
    print(f"  {args.years}-year backfill MERGE into the empty table: {t_backfill:.2f} s ({bars.height / t_backfill:,.0f} rows/s)")

    # --- 1. daily upserts: a correction of one (different) day per repeat, 500 updated rows each
    upsert_times = []
    for i in range(args.repeats):
        day = days[-1 - i]
        fix = bars.filter(pl.col("date") == day).with_columns(
            close=pl.col("close") * 1.001, high=pl.col("high") * 1.001,
            ingested_at=pl.col("ingested_at") + pl.duration(hours=1))
        t, r = timed(lambda fix=fix, day=day: lake.upsert(SNAPSHOT_TABLE, fix, keys=SNAPSHOT_KEYS,
                                                          order_by=PRECOMBINE, prune=("date", day, day)))
        assert r.counts.updated == len(tickers), r.counts
        upsert_times.append(t)
    # a replay of the same day: no change, no commit
    t_replay, r = timed(lambda: lake.upsert(SNAPSHOT_TABLE, fix, keys=SNAPSHOT_KEYS, order_by=PRECOMBINE,
                                            prune=("date", days[-1 - args.repeats + 1], days[-1 - args.repeats + 1])))
    assert not r.committed

    # --- 2. the naive way: read everything, apply the day's corrections, rewrite the whole table
    naive_uri = str(work / "naive")
    write_deltalake(naive_uri, bars.to_arrow(), partition_by=["date"], mode="overwrite")
    rewrite_times = []
    for i in range(min(args.repeats, 3)):
        day = days[-1 - i]

        def rewrite(day=day):
            current = pl.read_delta(naive_uri)
            fixed = current.with_columns(
                close=pl.when(pl.col("date") == day).then(pl.col("close") * 1.001).otherwise(pl.col("close")))
            write_deltalake(naive_uri, fixed.to_arrow(), partition_by=["date"], mode="overwrite")

        rewrite_times.append(timed(rewrite)[0])

    up, rw = statistics.median(upsert_times), statistics.median(rewrite_times)
    print()
    print(f"{'operation':58} {'median s':>9}")
    print(f"{'daily upsert of ' + str(len(tickers)) + ' tickers (MERGE, partition-pruned)':58} {up:9.3f}"
          f"   goal < 0.5 s: {'met' if up < 0.5 else 'NOT met'}")
    print(f"{'replay of an upserted day (no commit)':58} {t_replay:9.3f}")
    print(f"{'rewrite the whole table with the same correction':58} {rw:9.3f}")
    print(f"{'ratio rewrite / upsert':58} {rw / up:9.1f}x")
    print(f"{str(args.years) + '-year backfill, lake MERGE only':58} {t_backfill:9.2f}")
    size = lake.size_bytes(SNAPSHOT_TABLE)
    print(f"table: {bars.height:,} rows, {size / 1e6:.1f} MB, version {lake.table(SNAPSHOT_TABLE).version()}")

    if not args.no_dagster:
        print()
        print("end to end: prices -> price_snapshots for every partition as ONE Dagster run "
              "(demo source, SQLite instance and warehouse) ...", flush=True)
        t, (ok, steps) = timed(lambda: dagster_backfill(work, start, end))
        print(f"  {'OK' if ok else 'FAILED'} in {t:.1f} s; step times: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
    return 0


def dagster_backfill(work: Path, start: dt.date, end: dt.date) -> tuple[bool, dict[str, float]]:
    import dagster as dg

    dagster_home = work / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    from stock_platform.definitions import defs
    from stock_platform.partitions import trading_days

    keys = trading_days.get_partition_keys_in_range(dg.PartitionKeyRange(start.isoformat(), end.isoformat()))
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("daily_assets").execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
        steps = {s.step_key: s.end_time - s.start_time for s in instance.get_run_step_stats(result.run_id)}
    return result.success, steps


if __name__ == "__main__":
    sys.exit(main())
