"""Benchmark: the lake's file layout. Today's tables are partitioned by `date` (one folder and one small file per
trading day); this measures that layout side by side, in one run, with a table partitioned by `year` and an
unpartitioned table sorted by date (file statistics prune), on the demo market:

  backfill (replace by date range, `dates_per_commit` dates per commit, as LakeResource.replace_dates does),
  a full read, the features lookback window read, one ticker's history, the daily replace of one day,
  the daily MERGE of one day (a correction of every ticker), then `--daily` simulated daily runs (one day
  appended each), read again, compacted (delta-rs OPTIMIZE) and vacuumed, read again; files per table.

    python benchmarks/lake_layout.py [--tickers 500] [--years 10] [--daily 60] [--repeats 3]

The product is not changed by this script: it is the measurement issue 19's layout decision starts from.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYOUTS = {"date": ["date"], "year": ["year"], "none": []}
DATES_PER_COMMIT = 126


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def files(uri: str) -> int:
    from deltalake import DeltaTable

    return len(DeltaTable(uri).file_uris())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickers", type=int, default=500)
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--daily", type=int, default=60, help="simulated daily runs after the backfill")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import polars as pl
    from deltalake import DeltaTable, write_deltalake

    from stock_platform.assets.ml import LOOKBACK_MARGIN
    from stock_platform.lib.calendar import trading_days
    from stock_platform.lib.demo_market import generate
    from stock_platform.lib.indicators import LOOKBACK
    from stock_platform.resources.lake import date_range_sql

    end = dt.date(2024, 12, 31)
    start = dt.date(end.year - args.years + 1, 1, 2)
    days = trading_days(start, end)
    extra = trading_days(end + dt.timedelta(days=1), end + dt.timedelta(days=args.daily * 2))[:args.daily]
    tickers = [f"T{i:03d}" for i in range(args.tickers)]
    bars = generate(tickers, start, extra[-1]).with_columns(year=pl.col("date").dt.year().cast(pl.Int16),
                                                            _is_deleted=pl.lit(False))
    history = bars.filter(pl.col("date") <= end).sort("date", "ticker")
    work = Path(tempfile.mkdtemp(prefix="bench_lake_layout_"))
    window = days[-(LOOKBACK + LOOKBACK_MARGIN):]
    print(f"{args.tickers} tickers x {len(days)} sessions ({history.height:,} rows), {args.daily} daily runs after; "
          f"lookback window {len(window)} sessions; {work}", flush=True)

    def replace(uri: str, part: pl.DataFrame, first: dt.date, last: dt.date, layout: list[str]) -> None:
        write_deltalake(uri, part.sort("date", "ticker").to_arrow(), mode="overwrite", partition_by=layout or None,
                        predicate=date_range_sql("date", first, last))

    results: dict[str, dict[str, float]] = {}
    for name, layout in LAYOUTS.items():
        uri = str(work / name)
        r = results[name] = {}
        started = time.perf_counter()
        for i in range(0, len(days), DATES_PER_COMMIT):
            first, last = days[i], days[min(i + DATES_PER_COMMIT, len(days)) - 1]
            part = history.filter(pl.col("date").is_between(first, last))
            if i == 0:
                write_deltalake(uri, part.to_arrow(), mode="overwrite", partition_by=layout or None)
            else:
                replace(uri, part, first, last, layout)
        r["backfill (s)"] = time.perf_counter() - started
        r["files after backfill"] = files(uri)

        def reads(tag: str) -> None:
            r[f"full read{tag}"] = best_of(args.repeats, lambda: pl.read_delta(uri))
            r[f"lookback read{tag}"] = best_of(args.repeats, lambda: pl.scan_delta(uri).filter(
                pl.col("date").is_between(window[0], window[-1])).collect())
            r[f"one ticker{tag}"] = best_of(args.repeats, lambda: pl.scan_delta(uri).filter(
                pl.col("ticker") == tickers[0]).collect())

        reads("")
        last_day = history.filter(pl.col("date") == days[-1])
        r["daily replace"] = best_of(args.repeats, lambda: replace(uri, last_day, days[-1], days[-1], layout))
        corrected = last_day.with_columns(close=pl.col("close") * 1.001)

        def merge() -> None:
            prune = date_range_sql("date", days[-1], days[-1], alias="t")
            (DeltaTable(uri).merge(corrected.to_arrow(), predicate=f"t.ticker = s.ticker AND t.date = s.date AND {prune}",
                                   source_alias="s", target_alias="t")
             .when_matched_update_all().when_not_matched_insert_all().execute())

        r["daily merge"] = best_of(args.repeats, merge)
        started = time.perf_counter()
        for day in extra:
            replace(uri, bars.filter(pl.col("date") == day), day, day, layout)
        r[f"{args.daily} daily runs (s)"] = time.perf_counter() - started
        r["files after daily runs"] = files(uri)
        reads(" after daily runs")
        started = time.perf_counter()
        table = DeltaTable(uri)
        table.optimize.compact()
        table.create_checkpoint()
        table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
        r["compact+checkpoint+vacuum (s)"] = time.perf_counter() - started
        r["files after maintenance"] = files(uri)
        reads(" after maintenance")
        print(f"  {name}: done", flush=True)

    rows = list(results["date"])
    print(f"\n{'seconds (median of ' + str(args.repeats) + ') / files':44}" + "".join(f"{n:>12}" for n in LAYOUTS)
          + "   date/year   date/none")
    for row in rows:
        values = [results[n][row] for n in LAYOUTS]
        fmt = "{:>12,.0f}" if row.startswith("files") else "{:>12.3f}"
        ratios = "" if row.startswith("files") else "".join(
            f"{values[0] / v:>12.1f}" if v else f"{'-':>12}" for v in values[1:])
        print(f"{row:44}" + "".join(fmt.format(v) for v in values) + ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
